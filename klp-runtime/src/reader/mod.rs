//! The one decoder of the table format. It walks the raw bytes of each table; what differs
//! between consumers is only how a pointer field is resolved — live memory (kernel runtime,
//! simulator) or relocations in a file (`cargo klp inspect`) — which a [`Resolver`] supplies.

use alloc::vec::Vec;
use core::ffi::CStr;
use core::fmt;

use crate::abi::{self, layout};

mod names;

pub use names::{LiveFn, ObjectName, Origin};

/// Which table a position refers to, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    Header,
    Funcs,
    Sets,
    Shadows,
}

impl fmt::Display for TableKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TableKind::Header => "patch header",
            TableKind::Funcs => "function table",
            TableKind::Sets => "callback-set table",
            TableKind::Shadows => "shadow-type table",
        })
    }
}

/// What can be wrong with tables. Offsets are within the named table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("not a klp-rs patch header (bad magic); was this module built by cargo klp?")]
    BadMagic,
    #[error("out of memory reading the tables")]
    NoMemory(#[from] crate::fallible::AllocError),
    #[error("table format version {found} is newer than this reader understands (up to {supported}); use a newer klp-rs to read or replace it")]
    TooNew { found: u32, supported: u32 },
    #[error(
        "{table} is truncated at offset {offset:#x}: an entry needs {need} bytes, {have} remain"
    )]
    Truncated {
        table: TableKind,
        offset: usize,
        need: usize,
        have: usize,
    },
    #[error(
        "{table} entry at offset {offset:#x} declares size {size}, below the minimum {min} or not a multiple of 8"
    )]
    BadEntrySize {
        table: TableKind,
        offset: usize,
        size: u32,
        min: usize,
    },
    #[error("{table}: the string at field offset {offset:#x} cannot be read ({why})")]
    BadString {
        table: TableKind,
        offset: usize,
        why: &'static str,
    },
    #[error("{table}: the pointer at offset {offset:#x} cannot be resolved ({why})")]
    Unresolved {
        table: TableKind,
        offset: usize,
        why: &'static str,
    },
}

/// Resolves pointer fields. `offset` is the field's byte offset within its table, `raw` the
/// 8 bytes stored there (an address in memory; usually 0 in an unlinked file).
pub trait Resolver<'a> {
    /// How a function pointer is presented: an address, or a symbol name.
    type Func: Copy + fmt::Debug;
    /// A string field: the NUL-terminated string it points to.
    fn string(&self, table: TableKind, offset: usize, raw: u64) -> Result<&'a CStr, ReadError>;
    fn func(
        &self,
        table: TableKind,
        offset: usize,
        raw: u64,
    ) -> Result<Option<Self::Func>, ReadError>;
}

/// A patched function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Func<'a, F> {
    pub object: ObjectName<'a>,
    pub old_name: &'a str,
    pub sympos: u32,
    pub new_func: Option<F>,
    pub origin: Origin<'a>,
}

/// A callback set; `hooks` in [`crate::plan::Hook`] order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackSet<'a, F> {
    pub id: u32,
    pub object: ObjectName<'a>,
    pub hooks: [Option<F>; 4],
    pub origin: Origin<'a>,
}

/// A shadow variable type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowType<'a, F> {
    pub id: u64,
    pub owner: u32,
    pub type_name: &'a str,
    pub size: u32,
    pub align: u32,
    pub ctor: Option<F>,
    pub dtor: Option<F>,
    pub origin: Origin<'a>,
}

/// A patch's decoded tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch<'a, F> {
    pub name: &'a str,
    pub format_version: u32,
    pub funcs: Vec<Func<'a, F>>,
    pub sets: Vec<CallbackSet<'a, F>>,
    pub shadows: Vec<ShadowType<'a, F>>,
}

impl<F> Patch<'_, F> {
    pub fn set(&self, id: u32) -> Option<&CallbackSet<'_, F>> {
        self.sets.iter().find(|s| s.id == id)
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// Checks the magic and version of a header and returns its format version.
pub fn header_version(bytes: &[u8]) -> Result<u32, ReadError> {
    let need = layout::HEADER_SIZE_FIELD + 4;
    if bytes.len() < need {
        return Err(ReadError::Truncated {
            table: TableKind::Header,
            offset: 0,
            need,
            have: bytes.len(),
        });
    }
    if bytes[..8] != abi::MAGIC {
        return Err(ReadError::BadMagic);
    }
    let found = u32_at(bytes, layout::HEADER_FORMAT_VERSION);
    if found > abi::FORMAT_VERSION {
        return Err(ReadError::TooNew {
            found,
            supported: abi::FORMAT_VERSION,
        });
    }
    let size = u32_at(bytes, layout::HEADER_SIZE_FIELD) as usize;
    if size < layout::HEADER_SIZE || bytes.len() < layout::HEADER_SIZE {
        return Err(ReadError::Truncated {
            table: TableKind::Header,
            offset: 0,
            need: layout::HEADER_SIZE,
            have: bytes.len().min(size),
        });
    }
    Ok(found)
}

/// The entries of a table: `(offset, bytes)` of each, walked by each entry's own size.
fn entries(
    table: TableKind,
    bytes: &[u8],
    min: usize,
) -> impl Iterator<Item = Result<(usize, &[u8]), ReadError>> {
    let mut off = 0;
    core::iter::from_fn(move || {
        if off >= bytes.len() {
            return None;
        }
        let rest = &bytes[off..];
        if rest.len() < min {
            let e = ReadError::Truncated {
                table,
                offset: off,
                need: min,
                have: rest.len(),
            };
            off = bytes.len();
            return Some(Err(e));
        }
        let size = u32_at(rest, 0);
        if (size as usize) < min || !(size as usize).is_multiple_of(layout::ENTRY_ALIGN) {
            let e = ReadError::BadEntrySize {
                table,
                offset: off,
                size,
                min,
            };
            off = bytes.len();
            return Some(Err(e));
        }
        if rest.len() < size as usize {
            let e = ReadError::Truncated {
                table,
                offset: off,
                need: size as usize,
                have: rest.len(),
            };
            off = bytes.len();
            return Some(Err(e));
        }
        let item = (off, &rest[..size as usize]);
        off += size as usize;
        Some(Ok(item))
    })
}

/// Decodes the three tables of a patch whose header has already been checked.
pub fn read_tables<'a, R: Resolver<'a>>(
    r: &R,
    name: &'a str,
    format_version: u32,
    funcs: &'a [u8],
    sets: &'a [u8],
    shadows: &'a [u8],
) -> Result<Patch<'a, R::Func>, ReadError> {
    use TableKind::*;
    let c = |t, base: usize, field: usize, e: &[u8]| r.string(t, base + field, u64_at(e, field));
    let not_utf8 = |table, base: usize, field: usize| ReadError::BadString {
        table,
        offset: base + field,
        why: "not UTF-8",
    };
    let s = |t, base: usize, field: usize, e: &[u8]| {
        c(t, base, field, e)?
            .to_str()
            .map_err(|_| not_utf8(t, base, field))
    };
    let object = |t, base: usize, field: usize, e: &[u8]| {
        ObjectName::new(c(t, base, field, e)?).ok_or_else(|| not_utf8(t, base, field))
    };
    let f = |t, base: usize, field: usize, e: &[u8]| r.func(t, base + field, u64_at(e, field));

    let mut patch = Patch {
        name,
        format_version,
        funcs: Vec::new(),
        sets: Vec::new(),
        shadows: Vec::new(),
    };
    for item in entries(Funcs, funcs, layout::FUNC_SIZE) {
        let (o, e) = item?;
        let func = Func {
            object: object(Funcs, o, layout::FUNC_OBJECT, e)?,
            old_name: s(Funcs, o, layout::FUNC_OLD_NAME, e)?,
            sympos: u32_at(e, layout::FUNC_SYMPOS),
            new_func: f(Funcs, o, layout::FUNC_NEW_FUNC, e)?,
            origin: Origin::new(s(Funcs, o, layout::FUNC_ORIGIN, e)?),
        };
        crate::fallible::push(&mut patch.funcs, func)?;
    }
    for item in entries(Sets, sets, layout::SET_SIZE) {
        let (o, e) = item?;
        let mut hooks = [None; 4];
        for (hook, field) in hooks.iter_mut().zip(layout::SET_HOOKS) {
            *hook = f(Sets, o, field, e)?;
        }
        let set = CallbackSet {
            id: u32_at(e, layout::SET_ID),
            object: object(Sets, o, layout::SET_OBJECT, e)?,
            hooks,
            origin: Origin::new(s(Sets, o, layout::SET_ORIGIN, e)?),
        };
        crate::fallible::push(&mut patch.sets, set)?;
    }
    for item in entries(Shadows, shadows, layout::SHADOW_SIZE) {
        let (o, e) = item?;
        let shadow = ShadowType {
            id: u64_at(e, layout::SHADOW_ID),
            owner: u32_at(e, layout::SHADOW_OWNER),
            type_name: s(Shadows, o, layout::SHADOW_TYPE_NAME, e)?,
            size: u32_at(e, layout::SHADOW_TYPE_SIZE),
            align: u32_at(e, layout::SHADOW_TYPE_ALIGN),
            ctor: f(Shadows, o, layout::SHADOW_CTOR, e)?,
            dtor: f(Shadows, o, layout::SHADOW_DTOR, e)?,
            origin: Origin::new(s(Shadows, o, layout::SHADOW_ORIGIN, e)?),
        };
        crate::fallible::push(&mut patch.shadows, shadow)?;
    }
    Ok(patch)
}

/// Resolves pointers as live addresses in this address space. Making one is `unsafe`: it
/// takes any `u64` it is given for a live string.
pub struct Memory(());

impl Memory {
    /// # Safety
    /// Every string field this resolver is given must point to NUL-terminated data that
    /// lives for `'a` (the tables of a loaded module, or of a crate linked into this
    /// program).
    pub unsafe fn new() -> Memory {
        Memory(())
    }
}

impl<'a> Resolver<'a> for Memory {
    type Func = LiveFn;

    fn string(&self, table: TableKind, offset: usize, raw: u64) -> Result<&'a CStr, ReadError> {
        if raw == 0 {
            return Err(ReadError::BadString {
                table,
                offset,
                why: "null pointer",
            });
        }
        // SAFETY: `Memory::new`'s caller vouches that the tables are live, linked tables whose
        // string fields point to NUL-terminated static data.
        Ok(unsafe { CStr::from_ptr(raw as usize as *const core::ffi::c_char) })
    }

    fn func(&self, _: TableKind, _: usize, raw: u64) -> Result<Option<LiveFn>, ReadError> {
        Ok((raw != 0).then_some(LiveFn(raw as usize)))
    }
}

/// Reads a patch's tables from memory.
///
/// # Safety
/// `header` must be a linked patch header whose table bounds and pointers are valid for `'a`
/// (the tables of a loaded module, or of a crate linked into this program).
pub unsafe fn read_memory<'a>(
    header: &'a abi::PatchHeader,
) -> Result<Patch<'a, LiveFn>, ReadError> {
    // SAFETY: a PatchHeader is plain data; viewing it as bytes is always valid.
    let hdr = unsafe {
        core::slice::from_raw_parts(
            header as *const abi::PatchHeader as *const u8,
            layout::HEADER_SIZE,
        )
    };
    let version = header_version(hdr)?;
    let table = |t: abi::Table| -> &'a [u8] {
        let len = (t.end as usize).saturating_sub(t.start as usize);
        if len == 0 {
            return &[];
        }
        // SAFETY: per this function's contract, [start, end) is a live table.
        unsafe { core::slice::from_raw_parts(t.start, len) }
    };
    // SAFETY: per this function's contract, the tables' strings are live.
    let memory = unsafe { Memory::new() };
    let name = memory
        .string(TableKind::Header, layout::HEADER_NAME, header.name as u64)?
        .to_str()
        .map_err(|_| ReadError::BadString {
            table: TableKind::Header,
            offset: layout::HEADER_NAME,
            why: "not UTF-8",
        })?;
    read_tables(
        &memory,
        name,
        version,
        table(header.funcs),
        table(header.sets),
        table(header.shadows),
    )
}
