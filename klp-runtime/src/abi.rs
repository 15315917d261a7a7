//! The table format: the one byte layout that the macros write and that the kernel runtime,
//! the simulator and `cargo klp inspect` read (docs/table-format.md describes it byte by byte;
//! `include/klp_rs_abi.h` mirrors it for the C init, and tests hold all three together).
//!
//! Every entry starts with its own size, and the header carries the format version: a reader
//! walks a table by each entry's `size`, reads the prefix it knows, and refuses a
//! `format_version` above [`FORMAT_VERSION`]. Compatible additions append fields (entries grow);
//! incompatible ones bump the version.

use core::ffi::{c_char, c_int, c_void};
use core::mem::{offset_of, size_of};

/// The object name of the kernel proper, in the tables and in the dispatcher's calls (the
/// kernel's `klp_object` for it has no name).
pub const VMLINUX: &str = match VMLINUX_C.to_str() {
    Ok(name) => name,
    Err(_) => panic!("ASCII"),
};
/// The same, NUL-terminated: what `reader::ObjectName::VMLINUX` hands to C.
pub const VMLINUX_C: &core::ffi::CStr = c"vmlinux";

/// Whether an object name is the kernel proper's rather than a module's.
pub fn is_vmlinux(object: &str) -> bool {
    object == VMLINUX
}

/// `b"KLPRSPT\0"`: marks a patch header.
pub const MAGIC: [u8; 8] = *b"KLPRSPT\0";
/// The format this crate writes and the highest one it reads.
///
/// Format 2 puts shadow ids in the klp-rs namespace ([`shadow_key`]); format 1 handed them
/// to the kernel as they were declared. Both are read.
#[cfg(not(klp_rs_next_format))]
pub const FORMAT_VERSION: u32 = 2;
/// Tests build a module with `--cfg klp_rs_next_format` to check that older modules refuse
/// to replace a module whose tables they cannot read.
#[cfg(klp_rs_next_format)]
pub const FORMAT_VERSION: u32 = 3;

/// The kernel keys shadow variables by (object, id) across every livepatch module, C ones
/// included, which commonly use small ids. A klp-rs shadow id (declared as at most
/// [`SHADOW_ID_MAX`]) reaches the kernel as this prefix ("klprs", as in [`KLP_STATE_ID`])
/// or'ed with it, so the two never meet.
pub const SHADOW_NAMESPACE: u64 = 0x6b6c_7072_7300_0000;
/// The largest shadow id a patch may declare: 24 bits under [`SHADOW_NAMESPACE`].
pub const SHADOW_ID_MAX: u64 = 0xff_ffff;

/// The id `klp_shadow_*` gets for shadow id `id` of tables of format `format_version`.
pub const fn shadow_key(format_version: u32, id: u64) -> u64 {
    if format_version >= 2 {
        SHADOW_NAMESPACE | (id & SHADOW_ID_MAX)
    } else {
        id
    }
}

/// The `klp_state` id every module of ours registers; its `data` points to the module's
/// [`PatchHeader`]. See docs/kernel-runtime.md for what it means to other livepatch tools.
pub const KLP_STATE_ID: u64 = 0x6b6c_7072_7300_0001; // "klprs" + 1
/// Constant, so the kernel's state-version check lets any of our patches replace any other.
pub const KLP_STATE_VERSION: u32 = 1;
/// The `klp_state` a patch built with `replace = false` registers besides [`KLP_STATE_ID`]
/// (version [`KLP_STATE_VERSION`], no data). Replacing patches lack it, so the kernel refuses
/// to load one while a stacking klp-rs patch is enabled: through `klp_get_prev_state` it
/// would see only the topmost patch's tables and leave the ones below set up forever.
pub const KLP_STACK_STATE_ID: u64 = 0x6b6c_7072_7300_0002; // "klprs" + 2
/// The `klp_state` a module registers instead of [`KLP_STATE_ID`] when the kernel runs its
/// callback sets itself (the livepatch-core series in the repository's `kernel/`), with the
/// same data. The kernel refuses a replace between a module of either kind and one of the
/// other (`klp_is_patch_compatible`): each would leave the other's sets to the wrong party.
pub const KLP_NATIVE_STATE_ID: u64 = 0x6b6c_7072_7300_0003; // "klprs" + 3

/// Section names. Each patch crate gets its own sections (suffixed with the crate name) so that
/// several patch crates linked into one host test binary keep separate tables, as separate
/// modules do in the kernel. In a `.ko`, the link script gathers them under the fixed names
/// below, which is what `inspect` looks for.
///
/// `klp_runtime::__section!` spells the per-crate names as literals (an attribute needs them);
/// a test holds it to these.
pub mod section {
    /// One of the sections the tables live in.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Section {
        /// A crate's section is `{prefix}_{crate}`.
        pub prefix: &'static str,
        /// The name in a linked `.ko`, where the link script gathers a crate's sections.
        pub ko: &'static str,
    }

    impl Section {
        /// The crate's own section of this kind.
        pub fn of_crate(self, crate_name: &str) -> alloc::string::String {
            alloc::format!("{}_{crate_name}", self.prefix)
        }

        /// Whether `name` is some crate's section of this kind; that crate's name.
        pub fn crate_of(self, name: &str) -> Option<&str> {
            name.strip_prefix(self.prefix)?.strip_prefix('_')
        }
    }

    pub const PATCH: Section = Section {
        prefix: "klp_rs_patch",
        ko: ".klp_rs.patch",
    };
    pub const FUNCS: Section = Section {
        prefix: "klp_rs_funcs",
        ko: ".klp_rs.funcs",
    };
    pub const SETS: Section = Section {
        prefix: "klp_rs_sets",
        ko: ".klp_rs.sets",
    };
    pub const SHADOWS: Section = Section {
        prefix: "klp_rs_shadows",
        ko: ".klp_rs.shadows",
    };
    /// The entry tables, in the header's order (funcs, sets, shadows).
    pub const TABLES: [Section; 3] = [FUNCS, SETS, SHADOWS];
    /// Every section, the header's first.
    pub const ALL: [Section; 4] = [PATCH, FUNCS, SETS, SHADOWS];
}

/// The four callbacks of a set, in table order: also the hook number the C init's
/// trampolines pass to the dispatcher (`KLP_RS_HOOK_*` in the C header).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    PrePatch = 0,
    PostPatch = 1,
    PreUnpatch = 2,
    PostUnpatch = 3,
}

impl Hook {
    pub const ALL: [Hook; 4] = [
        Hook::PrePatch,
        Hook::PostPatch,
        Hook::PreUnpatch,
        Hook::PostUnpatch,
    ];

    /// The hook a number from C stands for; `None` for anything else.
    pub fn from_raw(raw: u32) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| *h as u32 == raw)
    }

    pub const fn name(self) -> &'static str {
        match self {
            Hook::PrePatch => "pre_patch",
            Hook::PostPatch => "post_patch",
            Hook::PreUnpatch => "pre_unpatch",
            Hook::PostUnpatch => "post_unpatch",
        }
    }
}

impl core::fmt::Display for Hook {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// How an allocation may wait, as the kernel's `gfp_t` says it; the C init maps each to its
/// flags (`KLP_RS_GFP_*` in the C header).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gfp {
    /// May sleep (`GFP_KERNEL`): hooks, and patched code in process context that holds no
    /// spinlock and is not in an RCU read-side section.
    Kernel = 0,
    /// Never sleeps (`GFP_ATOMIC`): patched code under a spinlock, in an RCU read-side
    /// section, with interrupts off or in interrupt context. Fails more readily.
    Atomic = 1,
}

/// `pre_patch`: returns 0 or a negative errno. The argument is the object's name
/// (`"vmlinux"` or a module name), NUL-terminated.
pub type PrePatchFn = unsafe extern "C" fn(object: *const c_char) -> c_int;
/// `post_patch`, `pre_unpatch`, `post_unpatch`.
pub type HookFn = unsafe extern "C" fn(object: *const c_char);
/// The kernel's `klp_shadow_ctor_t`.
pub type ShadowCtorFn = unsafe extern "C" fn(
    obj: *mut c_void,
    shadow_data: *mut c_void,
    ctor_data: *mut c_void,
) -> c_int;
/// The kernel's `klp_shadow_dtor_t`.
pub type ShadowDtorFn = unsafe extern "C" fn(obj: *mut c_void, shadow_data: *mut c_void);

/// Bounds of one table: `[start, end)`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Table {
    pub start: *const u8,
    pub end: *const u8,
}

/// One per patch crate, emitted by `klp_runtime::patch!()`.
#[repr(C)]
#[derive(Debug)]
pub struct PatchHeader {
    pub magic: [u8; 8],
    pub format_version: u32,
    /// `size_of::<PatchHeader>()` as written.
    pub size: u32,
    /// The patch (crate) name, NUL-terminated.
    pub name: *const c_char,
    pub funcs: Table,
    pub sets: Table,
    pub shadows: Table,
}

/// A patched function (`#[klp_func]`).
#[repr(C)]
#[derive(Debug)]
pub struct FuncEntry {
    pub size: u32,
    /// Position of the symbol among same-named local symbols; 0 = it must be unique.
    pub sympos: u32,
    /// `"vmlinux"` or a module name.
    pub object: *const c_char,
    pub old_name: *const c_char,
    pub new_func: *const c_void,
    /// Where it was declared (`path::item (file:line)`), for messages.
    pub origin: *const c_char,
}

/// A callback set (`#[klp_callbacks]`): each hook is optional (null).
#[repr(C)]
#[derive(Debug)]
pub struct CallbackSetEntry {
    pub size: u32,
    /// Non-zero, unique within the patch.
    pub id: u32,
    pub object: *const c_char,
    pub pre_patch: Option<PrePatchFn>,
    pub post_patch: Option<HookFn>,
    pub pre_unpatch: Option<HookFn>,
    pub post_unpatch: Option<HookFn>,
    pub origin: *const c_char,
}

/// A shadow variable type (`#[klp_shadow]`), owned by a callback set.
#[repr(C)]
#[derive(Debug)]
pub struct ShadowEntry {
    pub size: u32,
    /// The id of the owning callback set.
    pub owner: u32,
    /// The `klp_shadow` id.
    pub id: u64,
    pub type_name: *const c_char,
    pub type_size: u32,
    pub type_align: u32,
    pub ctor: Option<ShadowCtorFn>,
    pub dtor: Option<ShadowDtorFn>,
    pub origin: *const c_char,
}

// SAFETY: the tables are immutable after link time; the pointers are to static data and code.
unsafe impl Sync for PatchHeader {}
// SAFETY: as above.
unsafe impl Sync for FuncEntry {}
// SAFETY: as above.
unsafe impl Sync for CallbackSetEntry {}
// SAFETY: as above.
unsafe impl Sync for ShadowEntry {}

/// Byte offsets and sizes of the format, in one place for readers that work on bytes
/// (the file reader of `inspect`) and for the layout tests against docs/table-format.md.
pub mod layout {
    use super::*;

    pub const HEADER_SIZE: usize = size_of::<PatchHeader>();
    pub const HEADER_FORMAT_VERSION: usize = offset_of!(PatchHeader, format_version);
    pub const HEADER_SIZE_FIELD: usize = offset_of!(PatchHeader, size);
    pub const HEADER_NAME: usize = offset_of!(PatchHeader, name);
    pub const HEADER_FUNCS: usize = offset_of!(PatchHeader, funcs);
    pub const HEADER_SETS: usize = offset_of!(PatchHeader, sets);
    pub const HEADER_SHADOWS: usize = offset_of!(PatchHeader, shadows);

    pub const FUNC_SIZE: usize = size_of::<FuncEntry>();
    pub const FUNC_SYMPOS: usize = offset_of!(FuncEntry, sympos);
    pub const FUNC_OBJECT: usize = offset_of!(FuncEntry, object);
    pub const FUNC_OLD_NAME: usize = offset_of!(FuncEntry, old_name);
    pub const FUNC_NEW_FUNC: usize = offset_of!(FuncEntry, new_func);
    pub const FUNC_ORIGIN: usize = offset_of!(FuncEntry, origin);

    pub const SET_SIZE: usize = size_of::<CallbackSetEntry>();
    pub const SET_ID: usize = offset_of!(CallbackSetEntry, id);
    pub const SET_OBJECT: usize = offset_of!(CallbackSetEntry, object);
    /// The four hooks, in [`crate::plan::Hook`] order.
    pub const SET_HOOKS: [usize; 4] = [
        offset_of!(CallbackSetEntry, pre_patch),
        offset_of!(CallbackSetEntry, post_patch),
        offset_of!(CallbackSetEntry, pre_unpatch),
        offset_of!(CallbackSetEntry, post_unpatch),
    ];
    pub const SET_ORIGIN: usize = offset_of!(CallbackSetEntry, origin);

    pub const SHADOW_SIZE: usize = size_of::<ShadowEntry>();
    pub const SHADOW_OWNER: usize = offset_of!(ShadowEntry, owner);
    pub const SHADOW_ID: usize = offset_of!(ShadowEntry, id);
    pub const SHADOW_TYPE_NAME: usize = offset_of!(ShadowEntry, type_name);
    pub const SHADOW_TYPE_SIZE: usize = offset_of!(ShadowEntry, type_size);
    pub const SHADOW_TYPE_ALIGN: usize = offset_of!(ShadowEntry, type_align);
    pub const SHADOW_CTOR: usize = offset_of!(ShadowEntry, ctor);
    pub const SHADOW_DTOR: usize = offset_of!(ShadowEntry, dtor);
    pub const SHADOW_ORIGIN: usize = offset_of!(ShadowEntry, origin);

    /// Entries are 8-aligned and a multiple of 8 long, so the linker packs them without gaps.
    pub const ENTRY_ALIGN: usize = 8;
}

// The format is for 64-bit kernels; pin it so a layout change cannot go unnoticed.
const _: () = {
    assert!(layout::HEADER_SIZE == 72);
    assert!(layout::FUNC_SIZE == 40);
    assert!(layout::SET_SIZE == 56);
    assert!(layout::SHADOW_SIZE == 56);
    assert!(core::mem::align_of::<FuncEntry>() == layout::ENTRY_ALIGN);
};

impl FuncEntry {
    /// Used by `#[klp_func]`'s expansion.
    pub const fn new(
        object: &'static core::ffi::CStr,
        old_name: &'static core::ffi::CStr,
        sympos: u32,
        new_func: *const c_void,
        origin: &'static core::ffi::CStr,
    ) -> Self {
        FuncEntry {
            size: size_of::<Self>() as u32,
            sympos,
            object: object.as_ptr(),
            old_name: old_name.as_ptr(),
            new_func,
            origin: origin.as_ptr(),
        }
    }
}

impl CallbackSetEntry {
    /// Used by `#[klp_callbacks]`'s expansion.
    pub const fn new(
        id: u32,
        object: &'static core::ffi::CStr,
        hooks: (
            Option<PrePatchFn>,
            Option<HookFn>,
            Option<HookFn>,
            Option<HookFn>,
        ),
        origin: &'static core::ffi::CStr,
    ) -> Self {
        CallbackSetEntry {
            size: size_of::<Self>() as u32,
            id,
            object: object.as_ptr(),
            pre_patch: hooks.0,
            post_patch: hooks.1,
            pre_unpatch: hooks.2,
            post_unpatch: hooks.3,
            origin: origin.as_ptr(),
        }
    }
}

impl ShadowEntry {
    /// Used by `#[klp_shadow]`'s expansion.
    #[allow(clippy::too_many_arguments)]
    pub const fn new(
        id: u64,
        owner: u32,
        type_name: &'static core::ffi::CStr,
        type_size: usize,
        type_align: usize,
        ctor: ShadowCtorFn,
        dtor: ShadowDtorFn,
        origin: &'static core::ffi::CStr,
    ) -> Self {
        ShadowEntry {
            size: size_of::<Self>() as u32,
            owner,
            id,
            type_name: type_name.as_ptr(),
            type_size: type_size as u32,
            type_align: type_align as u32,
            ctor: Some(ctor),
            dtor: Some(dtor),
            origin: origin.as_ptr(),
        }
    }
}

impl PatchHeader {
    /// Used by `patch!()`'s expansion.
    pub const fn new(
        name: &'static core::ffi::CStr,
        funcs: Table,
        sets: Table,
        shadows: Table,
    ) -> Self {
        PatchHeader {
            magic: MAGIC,
            format_version: FORMAT_VERSION,
            size: size_of::<Self>() as u32,
            name: name.as_ptr(),
            funcs,
            sets,
            shadows,
        }
    }
}

/// `&'static str` with a trailing NUL to `&CStr`, at compile time (for generated code).
pub const fn cstr(s: &'static str) -> &'static core::ffi::CStr {
    match core::ffi::CStr::from_bytes_with_nul(s.as_bytes()) {
        Ok(c) => c,
        Err(_) => panic!("string is not NUL-terminated or has an inner NUL"),
    }
}

/// The C side of the format and the generic init, for `cargo klp build` to hand to Kbuild.
pub mod c {
    /// `klp_rs_abi.h`: the table format for C.
    pub const ABI_H: &str = include_str!("../include/klp_rs_abi.h");
    /// `klp_rs_init.c`: builds the kernel's structures from the tables and enables the patch.
    pub const INIT_C: &str = include_str!("../c/klp_rs_init.c");
}

/// Symbols the generic C init (`c::INIT_C`) and the link script define for the Rust object:
/// the only undefined symbols besides kernel exports that a patch object may have.
pub const INIT_PROVIDES: &[&str] = &[
    "klp_rs_log",
    "klp_rs_current",
    "klp_rs_alloc",
    "klp_rs_free",
    "klp_rs_shadow_alloc",
    "klp_rs_shadow_free_all",
    "klp_rs_prev_header",
    "klp_rs_prev_name",
    "klp_rs_replaces",
    "klp_rs_pin_begin",
    "klp_rs_pin",
    "klp_rs_pinned",
    "klp_rs_unpin",
    "klp_rs_unpin_all",
    "klp_rs_rcu_read_lock",
    "klp_rs_rcu_read_unlock",
    "klp_rs_spin_lock",
    "klp_rs_spin_unlock",
    "klp_rs_spin_lock_irqsave",
    "klp_rs_spin_unlock_irqrestore",
];
