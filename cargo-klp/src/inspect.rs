//! `cargo klp inspect`: what is inside a kernel module, from the file alone — its modinfo,
//! signature, and livepatch tables (ours, upstream klp-build's, or a hand-written C patch's
//! static structures) — and, with `--against`, what a replace will run.
//!
//! Every file gives a [`Report`] or an error naming the file and what is wrong where; nothing
//! panics on malformed input. What a file can make us allocate is bounded by its size:
//! decompression is capped (and xz checked before decoding), counts and sizes read from the
//! file are checked against the bytes that would hold what they count, the sections of a
//! file may not add up to more than the file, and names copied into a report are limited
//! in total.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use klp_runtime::plan::{self, Side, Step, StepLine};
use klp_runtime::reader::{Patch, ReadError};
use object::read::{Object as _, ObjectSection, ObjectSymbol};
use object::SectionIndex;
use serde::Serialize;

use crate::elf::{self, SectionRelocs};

/// The JSON schema version (docs/inspect-json.md).
pub const SCHEMA: u32 = 1;

/// Decompressed modules larger than this are refused: the largest module of Debian's 6.12
/// image, amdgpu, is 28 MiB. Decoding an xz module holds up to three times its size (the
/// decoder's buffers, then ours).
pub const MAX_MODULE: usize = 128 << 20;

/// Why a file cannot be inspected.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("{file}: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {what}")]
    Decompress { file: String, what: String },
    #[error("{file}: not an ELF object: {what}")]
    Elf { file: String, what: String },
    #[error("{file}: {what}")]
    Tables { file: String, what: String },
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Function {
    pub old: String,
    pub sympos: u64,
    pub new: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CallbackSet {
    pub id: u32,
    pub pre_patch: Option<String>,
    pub post_patch: Option<String>,
    pub pre_unpatch: Option<String>,
    pub post_unpatch: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KlpObject {
    pub name: String,
    pub functions: Vec<Function>,
    /// klp-rs callback sets on this object.
    pub callback_sets: Vec<CallbackSet>,
    /// A C patch's per-object callbacks (klp-build and static C patches).
    pub callbacks: Option<CallbackSet>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ShadowType {
    pub id: u64,
    pub owner: u32,
    #[serde(rename = "type")]
    pub type_name: String,
    pub size: u32,
    pub align: u32,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct State {
    pub id: u64,
    pub version: u32,
}

/// What kind of module this is.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Built by `cargo klp build`: klp-rs tables.
    KlpRs,
    /// Built by upstream klp-build: `.init.klp_objects` / `.init.klp_funcs`.
    KlpBuild,
    /// A hand-written C livepatch module (static `klp_patch`/`klp_object`/`klp_func`).
    CStatic,
    /// `livepatch: Y` but no structures could be decoded.
    Livepatch,
    NotLivepatch,
}

/// Everything `inspect` reports about one file.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub file: String,
    pub compression: Option<&'static str>,
    pub name: Option<String>,
    pub license: Option<String>,
    pub vermagic: Option<String>,
    pub srcversion: Option<String>,
    pub description: Option<String>,
    pub depends: Vec<String>,
    pub livepatch: bool,
    pub signed: bool,
    pub kind: Kind,
    /// klp-rs table format version.
    pub format_version: Option<u32>,
    pub replace: Option<bool>,
    pub objects: Vec<KlpObject>,
    pub shadow_types: Vec<ShadowType>,
    pub states: Vec<State>,
    pub klp_rela_sections: Vec<String>,
    pub klp_symbols: Vec<String>,
    /// What could not be read, with the reason (the rest of the report stands).
    pub warnings: Vec<String>,
}

/// A module's bytes: mapped, or decompressed into memory.
pub enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// A writer that refuses to grow past a limit (decompression bombs).
struct Bounded(Vec<u8>);

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len().saturating_add(buf.len()) > MAX_MODULE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                format!("decompresses to more than {} MiB", MAX_MODULE >> 20),
            ));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads a module, decompressing `.ko.xz` and `.ko.zst` as distributions ship them.
pub fn load(path: &Path) -> Result<(Bytes, Option<&'static str>), InspectError> {
    let file = path.display().to_string();
    let io = |source| InspectError::Io {
        file: file.clone(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    // SAFETY: the map is read-only and private to this process; a file changed under us
    // can only yield wrong bytes, which the parser treats like any malformed input.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(io)?;
    let bad = |what: String| InspectError::Decompress {
        file: file.clone(),
        what,
    };
    if map.starts_with(b"\xfd7zXZ\x00") {
        // lzma-rs holds a whole block in memory before writing any of it: the size is
        // checked first, from the chunk headers.
        let size = xz_size(&map).map_err(bad)?;
        let mut out = Bounded(Vec::new());
        lzma_rs::xz_decompress(&mut std::io::BufReader::new(&map[..]), &mut out)
            .map_err(|e| bad(format!("corrupt xz data: {e}")))?;
        if out.0.len() as u64 != size {
            return Err(bad(format!(
                "corrupt xz data: its chunk headers declare {size} bytes, it decodes to {}",
                out.0.len()
            )));
        }
        return Ok((Bytes::Owned(out.0), Some("xz")));
    }
    if map.starts_with(b"\x28\xb5\x2f\xfd") {
        let mut dec = ruzstd::decoding::StreamingDecoder::new(&map[..])
            .map_err(|e| bad(format!("corrupt zstd data: {e}")))?;
        let mut out = Bounded(Vec::new());
        std::io::copy(&mut dec, &mut out).map_err(|e| match e.kind() {
            std::io::ErrorKind::FileTooLarge => bad(e.to_string()),
            _ => bad(format!("corrupt zstd data: {e}")),
        })?;
        return Ok((Bytes::Owned(out.0), Some("zstd")));
    }
    Ok((Bytes::Mapped(map), None))
}

/// What an xz stream decompresses to, from its LZMA2 chunk headers (each declares the bytes
/// it decodes to; the decoder stops a chunk there), refused above [`MAX_MODULE`]. Walks
/// what lzma-rs decodes: one stream, blocks of one filter, up to the index. lzma-rs has no
/// memory limit for xz; it reads the chunks as these headers say as long as each chunk's
/// compressed data ends where its header says, which a decoded size other than the one
/// declared reveals (checked after decoding): only a stream crafted against lzma-rs itself
/// could still make it buffer more.
fn xz_size(data: &[u8]) -> Result<u64, String> {
    let byte = |at: usize| {
        data.get(at)
            .copied()
            .ok_or_else(|| format!("corrupt xz data: truncated at offset {at:#x}"))
    };
    let be16 = |at: usize| Ok::<_, String>((u64::from(byte(at)?) << 8) | u64::from(byte(at + 1)?));
    // Stream header: magic, flags (the check type), CRC32.
    let check = match byte(7)? & 0x0f {
        0 => 0,
        1 => 4,
        4 => 8,
        0x0a => 32,
        c => return Err(format!("corrupt xz data: check type {c} at offset 0x7")),
    };
    let (mut at, mut total) = (12usize, 0u64);
    loop {
        let block = at;
        let size = byte(block)?;
        if size == 0 {
            return Ok(total); // the index
        }
        let filters = (byte(block + 1)? & 0x03) + 1;
        if filters != 1 {
            return Err(format!(
                "xz block at offset {block:#x} has {filters} filters; modules use LZMA2 alone"
            ));
        }
        at = block + (usize::from(size) + 1) * 4;
        loop {
            let control = byte(at)?;
            let (unpacked, next) = match control {
                0 => break,
                // Uncompressed: its size, then the bytes.
                1 | 2 => {
                    let n = be16(at + 1)? + 1;
                    (n, at + 3 + n as usize)
                }
                // LZMA: unpacked size (21 bits), packed size, and new properties from 0xc0.
                0x80.. => {
                    let n = ((u64::from(control & 0x1f) << 16) | be16(at + 1)?) + 1;
                    let packed = be16(at + 3)? as usize + 1;
                    (n, at + 5 + usize::from(control >= 0xc0) + packed)
                }
                _ => {
                    return Err(format!(
                        "corrupt xz data: LZMA2 control byte {control:#x} at offset {at:#x}"
                    ))
                }
            };
            total += unpacked;
            if total > MAX_MODULE as u64 {
                return Err(format!(
                    "decompresses to more than {} MiB (its LZMA2 chunks say so by offset {at:#x})",
                    MAX_MODULE >> 20
                ));
            }
            at = next;
        }
        // The end marker, padding to 4 bytes from the block's start, the check.
        at = block + (at + 1 - block).next_multiple_of(4) + check;
    }
}

const SIGNATURE_MAGIC: &[u8] = b"~Module signature appended~\n";

/// Copies of names out of a file into its report, limited in total to twice the file: a
/// crafted file can point many entries (table fields, symbols, section headers) at one long
/// string, and each copy would cost all of it. Past the limit names are left empty and the
/// file is an error.
struct Names {
    left: Cell<usize>,
    exhausted: Cell<bool>,
}

impl Names {
    fn for_file(len: usize) -> Self {
        Names {
            left: Cell::new(len.saturating_mul(2).saturating_add(64 << 10)),
            exhausted: Cell::new(false),
        }
    }

    fn own(&self, s: &str) -> String {
        match self.left.get().checked_sub(s.len()) {
            Some(left) => {
                self.left.set(left);
                s.to_string()
            }
            None => {
                self.exhausted.set(true);
                String::new()
            }
        }
    }

    fn check(&self, len: usize) -> Result<(), String> {
        if self.exhausted.get() {
            return Err(format!(
                "the names its tables, symbols and sections give add up to more than twice its \
                 {len} bytes: many entries point at the same long string"
            ));
        }
        Ok(())
    }
}

fn modinfo<'d>(file: &object::File<'d>) -> Vec<(&'d str, &'d str)> {
    let Some(sec) = file.section_by_name(".modinfo") else {
        return Vec::new();
    };
    let data = sec.data().unwrap_or(&[]);
    data.split(|b| *b == 0)
        .filter_map(|f| std::str::from_utf8(f).ok()?.split_once('='))
        .collect()
}

fn hook_names(hooks: &[Option<&str>; 4], names: &Names) -> CallbackSet {
    let h = |i: usize| hooks[i].map(|f| names.own(f));
    CallbackSet {
        id: 0,
        pre_patch: h(0),
        post_patch: h(1),
        pre_unpatch: h(2),
        post_unpatch: h(3),
    }
}

/// Groups a klp-rs patch's entries by object, `vmlinux` first.
fn klp_rs_objects(p: &Patch<'_, &str>, names: &Names) -> Vec<KlpObject> {
    let mut objects: Vec<&str> = vec!["vmlinux"];
    for n in p
        .funcs
        .iter()
        .map(|f| f.object)
        .chain(p.sets.iter().map(|s| s.object))
    {
        if !objects.contains(&n) {
            objects.push(n);
        }
    }
    objects
        .into_iter()
        .map(|name| {
            let mut sets: Vec<CallbackSet> = p
                .sets
                .iter()
                .filter(|s| s.object == name)
                .map(|s| CallbackSet {
                    id: s.id,
                    ..hook_names(&s.hooks, names)
                })
                .collect();
            sets.sort_by_key(|s| s.id);
            KlpObject {
                name: names.own(name),
                functions: p
                    .funcs
                    .iter()
                    .filter(|f| f.object == name)
                    .map(|f| Function {
                        old: names.own(f.old_name),
                        sympos: f.sympos.into(),
                        new: f.new_func.map(|n| names.own(n)),
                    })
                    .collect(),
                callback_sets: sets,
                callbacks: None,
            }
        })
        .filter(|o| o.name == "vmlinux" || !o.functions.is_empty() || !o.callback_sets.is_empty())
        .collect()
}

/// upstream klp-build's compact tables (include/linux/livepatch_external.h):
/// `klp_object_ext` { name, funcs, callbacks{4 fn ptrs, bool}, nr_funcs } is 64 bytes,
/// `klp_func_ext` { old_name, new_func, sympos } is 24. An object's functions must lie in
/// `.init.klp_funcs`: a count past its end is an error, not that many entries.
fn klp_build_objects(
    file: &object::File<'_>,
    names: &Names,
) -> Result<Option<Vec<KlpObject>>, String> {
    const OBJECT: u64 = 64;
    const FUNC: u64 = 24;
    let (Some(objs), Some(funcs)) = (
        file.section_by_name(".init.klp_objects"),
        file.section_by_name(".init.klp_funcs"),
    ) else {
        return Ok(None);
    };
    let (or, fr) = (
        SectionRelocs::of(file, &objs),
        SectionRelocs::of(file, &funcs),
    );
    let mut out = Vec::new();
    // The objects in the file: an SHT_NOBITS section's size is no count of anything.
    for base in (0..or.data_len() / OBJECT).map(|i| i * OBJECT) {
        // nr_funcs is a u32 at 56, followed by padding.
        let nr = or.u64_at(base + 56).map_or(0, |v| u64::from(v as u32));
        let first = match or.target(base + 8) {
            Some((sec, at)) if sec == funcs.index() => at,
            _ if nr == 0 => 0,
            _ => {
                return Err(format!(
                    ".init.klp_objects: the object at offset {base:#x} has {nr} functions but \
                     its funcs pointer (offset {:#x}) does not point into .init.klp_funcs",
                    base + 8
                ))
            }
        };
        let have = fr.data_len().saturating_sub(first) / FUNC;
        if nr > have {
            return Err(format!(
                ".init.klp_objects: the object at offset {base:#x} has {nr} functions from \
                 offset {first:#x} of .init.klp_funcs, which holds {have} from there ({:#x} bytes)",
                fr.data_len()
            ));
        }
        let functions = (0..nr)
            .map(|i| {
                let f = first + i * FUNC;
                Function {
                    old: names.own(fr.string(f).unwrap_or_default()),
                    sympos: fr.u64_at(f + 16).unwrap_or(0),
                    new: fr.function(f + 8).ok().flatten().map(|n| names.own(n)),
                }
            })
            .collect();
        let cb = |i: u64| {
            or.function(base + 16 + 8 * i)
                .ok()
                .flatten()
                .map(|n| names.own(n))
        };
        let callbacks = CallbackSet {
            id: 0,
            pre_patch: cb(0),
            post_patch: cb(1),
            pre_unpatch: cb(2),
            post_unpatch: cb(3),
        };
        let any = callbacks.pre_patch.is_some()
            || callbacks.post_patch.is_some()
            || callbacks.pre_unpatch.is_some()
            || callbacks.post_unpatch.is_some();
        out.push(KlpObject {
            name: names.own(or.string(base).unwrap_or("vmlinux")),
            functions,
            callback_sets: vec![],
            callbacks: any.then_some(callbacks),
        });
    }
    Ok(Some(out))
}

/// A hand-written C patch (samples/livepatch style): its static `klp_patch` is the data
/// that points to `__this_module` and, 8 bytes on, to the `klp_object` array. Struct sizes
/// depend on the kernel config, so arrays are walked through the symbols' sizes and the
/// relocations in them; the leading fields (`old_name`, `new_func`, `old_sympos`; `name`,
/// `funcs`; `id`, `version`) have the same place in every version.
fn c_static_patch(
    file: &object::File<'_>,
    names: &Names,
) -> Option<(Vec<KlpObject>, Vec<State>, bool)> {
    let this_module = file
        .symbols()
        .find(|s| s.name() == Ok("__this_module"))?
        .index();
    // Offsets come from relocations and symbols: any u64.
    let at = |base: u64, field: u64| base.checked_add(field);
    for sec in file.sections() {
        let Some(r) = SectionRelocs::of_index(file, sec.index()) else {
            continue;
        };
        if sec.name().ok() == Some(".gnu.linkonce.this_module") {
            continue;
        }
        let Some(patch_at) = r
            .offsets(0..u64::MAX)
            .find(|o| r.targets_symbol(*o, this_module))
        else {
            continue;
        };
        let (objs_sec, objs_at) = r.target(at(patch_at, 8)?)?;
        let replace = at(patch_at, 24)
            .and_then(|o| r.byte_at(o))
            .is_some_and(|b| b != 0);
        let states = at(patch_at, 16)
            .and_then(|o| r.target(o))
            .and_then(|(s, start)| {
                let sr = SectionRelocs::of_index(file, s)?;
                // Only what the file holds: a symbol's size can claim anything.
                let end = symbol_end(file, s, start)?.min(sr.data_len());
                Some(
                    (start..end)
                        .step_by(24)
                        .filter_map(|o| {
                            let id = sr.u64_at(o)?;
                            let version = sr.u64_at(at(o, 8)?)? as u32;
                            (id != 0).then_some(State { id, version })
                        })
                        .collect::<Vec<_>>(),
                )
            })
            .unwrap_or_default();
        let or = SectionRelocs::of_index(file, objs_sec)?;
        let objs_end = symbol_end(file, objs_sec, objs_at)?;
        let mut objects = Vec::new();
        // Each object's `funcs` is the relocation that points to a klp_func array.
        let funcs_fields: Vec<u64> = or
            .offsets(objs_at..objs_end)
            .filter(|o| or.target(*o).is_some() && or.string(*o).is_err())
            .collect();
        // The relocations of each section the arrays are in, read once.
        let mut arrays: Vec<(SectionIndex, SectionRelocs<'_, '_>)> = Vec::new();
        for f in funcs_fields {
            let (fsec, fat) = or.target(f)?;
            let i = match arrays.iter().position(|(s, _)| *s == fsec) {
                Some(i) => i,
                None => {
                    arrays.push((fsec, SectionRelocs::of_index(file, fsec)?));
                    arrays.len() - 1
                }
            };
            let fr = &arrays[i].1;
            let fend = symbol_end(file, fsec, fat)?;
            let functions = fr
                .offsets(fat..fend)
                .filter_map(|o| {
                    let old = fr.string(o).ok()?;
                    let new = fr.function(at(o, 8)?).ok().flatten();
                    Some(Function {
                        old: names.own(old),
                        sympos: at(o, 16).and_then(|o| fr.u64_at(o)).unwrap_or(0),
                        new: new.map(|n| names.own(n)),
                    })
                })
                .collect();
            let name = f.checked_sub(8).and_then(|o| or.string(o).ok());
            objects.push(KlpObject {
                name: names.own(name.unwrap_or("vmlinux")),
                functions,
                callback_sets: vec![],
                callbacks: None,
            });
        }
        return Some((objects, states, replace));
    }
    None
}

/// The end of the symbol that covers `at` in section `sec` (arrays are sized symbols).
fn symbol_end(file: &object::File<'_>, sec: SectionIndex, at: u64) -> Option<u64> {
    file.symbols()
        .filter(|s| s.section_index() == Some(sec) && s.size() > 0)
        .map(|s| (s.address(), s.address().saturating_add(s.size())))
        .filter(|(start, end)| *start <= at && at < *end)
        .map(|(_, end)| end)
        .min()
}

/// Where an ELF file's section headers say its sections are, against its length: a
/// truncated file is reported with the offsets involved. The sections that occupy file space
/// may not add up to more than the file (in real modules they never share bytes): headers
/// that all describe the same bytes would have the decoders read them once per header.
fn check_extent(data: &[u8]) -> Result<(), String> {
    const SHT_NOBITS: u64 = 8;
    if data.len() < 64 || !data.starts_with(b"\x7fELF") {
        return Err(format!(
            "no ELF header: the file is {} bytes and does not start with \\x7fELF",
            data.len()
        ));
    }
    let len = data.len() as u64;
    let big_endian = data[5] == 2;
    let u = |at: u64, n: u64| -> Option<u64> {
        let at = usize::try_from(at).ok()?;
        let b = data.get(at..at.checked_add(usize::try_from(n).ok()?)?)?;
        let fold = |v: u64, x: &u8| (v << 8) | u64::from(*x);
        Some(if big_endian {
            b.iter().fold(0, fold)
        } else {
            b.iter().rev().fold(0, fold)
        })
    };
    // ELF64 or ELF32: where e_shoff and e_shnum are, a section header's size, and where its
    // sh_offset and sh_size are, with their width.
    let (shoff, shnum_at, entry, off_at, size_at, w) = if data[4] == 2 {
        (u(0x28, 8), 0x3c, 64, 0x18, 0x20, 8)
    } else {
        (u(0x20, 4), 0x30, 40, 0x10, 0x14, 4)
    };
    let shoff = shoff.unwrap_or(0);
    let mut shnum = u(shnum_at, 2).unwrap_or(0);
    if shnum == 0 && shoff != 0 {
        // More sections than e_shnum holds: the count is section 0's sh_size.
        shnum = shoff
            .checked_add(size_at)
            .and_then(|at| u(at, w))
            .ok_or_else(|| {
                format!(
                    "truncated: the section header table at offset {shoff:#x} is past the end of \
                     the file ({len:#x} bytes)"
                )
            })?;
    }
    let end = shoff.saturating_add(shnum.saturating_mul(entry));
    if end > len {
        return Err(format!(
            "truncated: the section header table at offset {shoff:#x} ({shnum} entries) ends at offset {end:#x}, \
             past the end of the file ({len:#x} bytes)"
        ));
    }
    let mut total = 0u64;
    // Section 0 describes no section (with many sections, it holds their count).
    for i in 1..shnum {
        let h = shoff + i * entry;
        let (kind, off, size) = (
            u(h + 4, 4).unwrap_or(0),
            u(h + off_at, w).unwrap_or(0),
            u(h + size_at, w).unwrap_or(0),
        );
        // SHT_NOBITS occupies no file space.
        if kind == SHT_NOBITS {
            continue;
        }
        if off.saturating_add(size) > len {
            return Err(format!(
                "truncated or corrupt: section {i} spans offsets {off:#x}..{:#x}, past the end of the file ({len:#x} bytes)",
                off.saturating_add(size),
            ));
        }
        total = total.saturating_add(size);
    }
    if total > len {
        return Err(format!(
            "corrupt: its sections add up to {total:#x} bytes, more than the file's {len:#x}: \
             section headers describe the same bytes more than once"
        ));
    }
    Ok(())
}

/// Parses a module's bytes as ELF, reporting truncation with its offsets.
fn parse<'d>(path: &str, data: &'d [u8]) -> Result<object::File<'d>, InspectError> {
    check_extent(data).map_err(|what| InspectError::Elf {
        file: path.into(),
        what,
    })?;
    object::File::parse(data).map_err(|e| InspectError::Elf {
        file: path.into(),
        what: e.to_string(),
    })
}

/// Inspects one module's bytes.
pub fn inspect_bytes(
    path: &str,
    data: &[u8],
    compression: Option<&'static str>,
) -> Result<Report, InspectError> {
    let file = parse(path, data)?;
    report(path, data, &file, compression).map(|(r, _)| r)
}

/// The report of a parsed module, and its klp-rs tables when this reader can read them
/// (`None` for other modules, and for klp-rs tables of a newer format, which the report
/// then warns about).
fn report<'d>(
    path: &str,
    data: &[u8],
    file: &object::File<'d>,
    compression: Option<&'static str>,
) -> Result<(Report, Option<Patch<'d, &'d str>>), InspectError> {
    let names = Names::for_file(data.len());
    let info = modinfo(file);
    let field = |k: &str| info.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    let get = |k: &str| field(k).map(|v| names.own(v));
    let livepatch = field("livepatch") == Some("Y");
    let replace = || field("klp_rs_replace").map(|v| v == "Y");
    let mut report = Report {
        file: path.into(),
        compression,
        name: get("name"),
        license: get("license"),
        vermagic: get("vermagic"),
        srcversion: get("srcversion"),
        description: get("description"),
        depends: field("depends")
            .map(|d| {
                d.split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| names.own(s))
                    .collect()
            })
            .unwrap_or_default(),
        livepatch,
        signed: data.ends_with(SIGNATURE_MAGIC),
        kind: if livepatch {
            Kind::Livepatch
        } else {
            Kind::NotLivepatch
        },
        format_version: None,
        replace: None,
        objects: vec![],
        shadow_types: vec![],
        states: vec![],
        klp_rela_sections: file
            .sections()
            .filter_map(|s| {
                s.name()
                    .ok()
                    .filter(|n| n.starts_with(".klp.rela."))
                    .map(|n| names.own(n))
            })
            .collect(),
        klp_symbols: vec![],
        warnings: vec![],
    };
    let tables = |what: String| InspectError::Tables {
        file: path.into(),
        what,
    };
    if !livepatch && report.klp_rela_sections.is_empty() {
        names.check(data.len()).map_err(tables)?;
        return Ok((report, None));
    }
    report.klp_symbols = file
        .symbols()
        .filter_map(|s| {
            s.name()
                .ok()
                .filter(|n| n.starts_with(".klp.sym."))
                .map(|n| names.own(n))
        })
        .collect();
    match elf::read_patch(file) {
        Ok(Some(p)) => {
            report.kind = Kind::KlpRs;
            report.format_version = Some(p.format_version);
            report.replace = replace();
            report.objects = klp_rs_objects(&p, &names);
            report.shadow_types = p
                .shadows
                .iter()
                .map(|t| ShadowType {
                    id: t.id,
                    owner: t.owner,
                    type_name: names.own(t.type_name),
                    size: t.size,
                    align: t.align,
                })
                .collect();
            report.states = vec![State {
                id: klp_runtime::abi::KLP_STATE_ID,
                version: klp_runtime::abi::KLP_STATE_VERSION,
            }];
            names.check(data.len()).map_err(tables)?;
            return Ok((report, Some(p)));
        }
        Ok(None) => {}
        Err(elf::TablesError::Read {
            source: ReadError::TooNew { found, supported },
            ..
        }) => {
            report.kind = Kind::KlpRs;
            report.format_version = Some(found);
            report.replace = replace();
            report.states = vec![State {
                id: klp_runtime::abi::KLP_STATE_ID,
                version: klp_runtime::abi::KLP_STATE_VERSION,
            }];
            report.warnings.push(format!(
                "klp-rs tables of format {found}; this cargo-klp reads up to {supported}: update it to see them"
            ));
            names.check(data.len()).map_err(tables)?;
            return Ok((report, None));
        }
        Err(e) => return Err(tables(e.to_string())),
    }
    if let Some(objects) = klp_build_objects(file, &names).map_err(tables)? {
        report.kind = Kind::KlpBuild;
        report.objects = objects;
    } else if let Some((objects, states, replace)) = c_static_patch(file, &names) {
        report.kind = Kind::CStatic;
        report.objects = objects;
        report.states = states;
        report.replace = Some(replace);
    }
    names.check(data.len()).map_err(tables)?;
    Ok((report, None))
}

/// Inspects one file.
pub fn inspect(path: &Path) -> Result<Report, InspectError> {
    let (data, compression) = load(path)?;
    inspect_bytes(&path.display().to_string(), &data, compression)
}

/// [`inspect`], with a panic (a bug: malformed input is meant to give an error) reported as
/// this file's error, so that the other files of a batch are still inspected.
fn inspect_isolated(path: &Path) -> Result<Report, InspectError> {
    std::panic::catch_unwind(|| inspect(path)).unwrap_or_else(|_| {
        Err(InspectError::Tables {
            file: path.display().to_string(),
            what: "cargo-klp panicked reading it (a bug: please report it with the file)".into(),
        })
    })
}

/// Inspects many files on all cores; results in the order given.
pub fn inspect_all(paths: &[PathBuf]) -> Vec<Result<Report, InspectError>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(paths.len().max(1));
    let mut results: Vec<Option<Result<Report, InspectError>>> =
        (0..paths.len()).map(|_| None).collect();
    let chunks: Vec<Vec<(usize, Result<Report, InspectError>)>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(p) = paths.get(i) else { break };
                        done.push((i, inspect_isolated(p)));
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_default())
            .collect()
    });
    for (i, r) in chunks.into_iter().flatten() {
        results[i] = Some(r);
    }
    results
        .into_iter()
        .map(|r| r.expect("every index done"))
        .collect()
}

/// What a replace NEW-over-OLD will do.
#[derive(Debug, Clone, Serialize)]
pub struct ReplacePlan {
    pub old: String,
    pub new: String,
    /// Why the kernel or our runtime would refuse it; the steps are then what would have run.
    pub refused: Option<String>,
    /// The steps in order, as the kernel log will print them; the transition as `transition`.
    pub steps: Vec<String>,
    pub shadow_types_freed: Vec<u64>,
    pub functions_added: Vec<String>,
    pub functions_removed: Vec<String>,
    pub functions_kept: Vec<String>,
}

fn func_keys(r: &Report) -> Vec<String> {
    r.objects
        .iter()
        .flat_map(|o| {
            o.functions
                .iter()
                .map(move |f| format!("{}:{},{}", o.name, f.old, f.sympos))
        })
        .collect()
}

/// The plan for NEW replacing OLD, from the files: the same planner the module runs.
pub fn against(new_path: &Path, old_path: &Path) -> Result<ReplacePlan, InspectError> {
    let (new_data, new_z) = load(new_path)?;
    let (old_data, old_z) = load(old_path)?;
    let (new_name, old_name) = (
        new_path.display().to_string(),
        old_path.display().to_string(),
    );
    let (new_file, old_file) = (parse(&new_name, &new_data)?, parse(&old_name, &old_data)?);
    let (new_r, new_p) = report(&new_name, &new_data, &new_file, new_z)?;
    let (old_r, old_p) = report(&old_name, &old_data, &old_file, old_z)?;
    let name = |r: &Report| r.name.clone().unwrap_or_else(|| r.file.clone());
    let (nf, of) = (func_keys(&new_r), func_keys(&old_r));
    let (in_new, in_old): (BTreeSet<_>, BTreeSet<_>) = (nf.iter().collect(), of.iter().collect());
    let mut plan = ReplacePlan {
        old: name(&old_r),
        new: name(&new_r),
        refused: None,
        steps: vec![],
        shadow_types_freed: vec![],
        functions_added: nf.iter().filter(|f| !in_old.contains(f)).cloned().collect(),
        functions_removed: of.iter().filter(|f| !in_new.contains(f)).cloned().collect(),
        functions_kept: nf.iter().filter(|f| in_old.contains(f)).cloned().collect(),
    };
    // The kernel refuses a patch that lacks a state an installed one has (or has it older).
    for s in &old_r.states {
        if !new_r
            .states
            .iter()
            .any(|n| n.id == s.id && n.version >= s.version)
        {
            plan.refused = Some(format!(
                "the kernel refuses it: {} lacks klp_state {:#x} (version {}) that {} has{}",
                plan.new,
                s.id,
                s.version,
                plan.old,
                if s.id == klp_runtime::abi::KLP_STATE_ID {
                    " (a patch not built by klp-rs cannot replace a klp-rs patch)"
                } else {
                    ""
                }
            ));
        }
    }
    if !new_r.livepatch {
        plan.refused = Some(format!("{} is not a livepatch module", plan.new));
    }
    if new_r.replace == Some(false) {
        plan.refused.get_or_insert(format!(
            "{} does not replace (replace = false): it stacks on {}",
            plan.new, plan.old
        ));
    }
    // Tables this reader cannot read: too new for cargo-klp, and so for every runtime that
    // reads no further than it (ours refuses before running anything).
    let unreadable = |r: &Report, p: &Option<Patch<'_, &str>>| r.kind == Kind::KlpRs && p.is_none();
    if unreadable(&new_r, &new_p) {
        return Err(InspectError::Tables {
            file: new_r.file.clone(),
            what: new_r.warnings.join("; "),
        });
    }
    if unreadable(&old_r, &old_p) {
        plan.refused = Some(format!(
            "the runtime of {} refuses it: {}'s tables are format {}, it reads up to {}",
            plan.new,
            plan.old,
            old_r.format_version.unwrap_or(0),
            klp_runtime::abi::FORMAT_VERSION
        ));
        return Ok(plan);
    }
    let Some(new_p) = new_p else {
        plan.refused.get_or_insert(format!(
            "{} has no klp-rs tables: it runs only its own callbacks",
            plan.new
        ));
        return Ok(plan);
    };
    (plan.steps, plan.shadow_types_freed) =
        step_lines(old_p.as_ref(), &new_p).map_err(|what| InspectError::Tables {
            file: new_r.file.clone(),
            what,
        })?;
    Ok(plan)
}

/// When a step of a replace runs, the module objects being loaded or not.
#[derive(Debug, Clone, PartialEq, Eq)]
enum When<'a> {
    Always,
    /// A hook on a module object: it runs only where the module is loaded.
    Loaded(&'a str),
    /// A shadow type freed only where none of these modules is loaded: the incoming patch
    /// owns the id through a set on them, which keeps it while set up.
    NoneLoaded(Vec<&'a str>),
}

/// The steps of replacing `old` by `new` whichever module objects are loaded: the plan with
/// every module object loaded, each of its hooks on a module object conditional on that
/// module; and, where they fall, the shadow frees that only the plan with none loaded has
/// (a loaded module's set keeps more ids alive, never fewer, so every other step is in both).
fn conditional_steps<'a, F, G>(
    old: Option<&Patch<'a, F>>,
    new: &Patch<'a, G>,
) -> Result<Vec<(Option<Step<'a>>, When<'a>)>, String> {
    let planning = |e: klp_runtime::fallible::AllocError| format!("planning the replace: {e}");
    let all = plan::replace(old, new, &|_| true).map_err(planning)?;
    let none = plan::replace(old, new, &|_| false).map_err(planning)?;
    let none: Vec<_> = none.steps().collect();
    let keepers = |step: &Option<Step<'a>>| {
        let mut objects: Vec<&'a str> = match step {
            Some(Step::FreeShadow { shadow, .. }) => new
                .shadows
                .iter()
                .filter(|t| t.id == *shadow)
                .filter_map(|t| new.sets.iter().find(|s| s.id == t.owner))
                .map(|s| s.object)
                .filter(|o| *o != "vmlinux")
                .collect(),
            _ => vec![],
        };
        objects.sort_unstable();
        objects.dedup();
        When::NoneLoaded(objects)
    };
    let all: Vec<_> = all.steps().collect();
    let module_hook = |s: &Option<Step<'a>>| match s {
        Some(Step::Hook { object, .. }) if *object != "vmlinux" => Some(*object),
        _ => None,
    };
    // For each step, the next step of `all` that `none` has too (None: no more).
    let mut next_common = vec![None; all.len()];
    for k in (0..all.len().saturating_sub(1)).rev() {
        next_common[k] = match module_hook(&all[k + 1]) {
            None => Some(all[k + 1]),
            Some(_) => next_common[k + 1],
        };
    }
    let mut out = Vec::new();
    let mut rest = none.iter().peekable();
    for (k, step) in all.iter().enumerate() {
        if let Some(object) = module_hook(step) {
            out.push((*step, When::Loaded(object)));
            continue;
        }
        // `none`'s extra steps go where `none` has them: right after the step before.
        while let Some(extra) = rest.next_if(|s| *s != step) {
            out.push((*extra, keepers(extra)));
        }
        rest.next();
        out.push((*step, When::Always));
        while let Some(extra) = rest.next_if(|s| Some(**s) != next_common[k]) {
            out.push((*extra, keepers(extra)));
        }
    }
    Ok(out)
}

/// The plan's lines, as the modules log them, a conditional step followed by
/// ` (if MODULE is loaded)` or ` (if MODULE is not loaded)`; and the shadow ids freed.
fn step_lines<F, G>(
    old: Option<&Patch<'_, F>>,
    new: &Patch<'_, G>,
) -> Result<(Vec<String>, Vec<u64>), String> {
    let patch = |side| match (side, old) {
        (Side::Old, Some(o)) => o.name,
        (Side::Old, None) => "?",
        (Side::New, _) => new.name,
    };
    let (mut lines, mut freed) = (Vec::new(), Vec::new());
    for (step, when) in conditional_steps(old, new)? {
        let Some(step) = step else {
            lines.push("transition".to_string());
            continue;
        };
        if let Step::Hook { defined: false, .. } = step {
            continue;
        }
        if let Step::FreeShadow { shadow, .. } = step {
            freed.push(shadow);
        }
        let line = StepLine {
            patch: patch(step.side()),
            step: &step,
        };
        lines.push(match when {
            When::Always => line.to_string(),
            When::NoneLoaded(m) if m.is_empty() => line.to_string(),
            When::Loaded(m) => format!("{line} (if {m} is loaded)"),
            When::NoneLoaded(m) if m.len() == 1 => format!("{line} (if {} is not loaded)", m[0]),
            When::NoneLoaded(m) => format!("{line} (if none of {} is loaded)", m.join(", ")),
        });
    }
    Ok((lines, freed))
}

/// Human-readable output, in the spirit of `cargo tree`.
pub fn render(r: &Report) -> String {
    // (depth, text) lines, then connectors drawn from what follows each line.
    let mut lines: Vec<(usize, String)> = Vec::new();
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    lines.push((
        1,
        format!(
            "module: {}  license: {}  signed: {}",
            opt(&r.name),
            opt(&r.license),
            if r.signed { "yes" } else { "no" }
        ),
    ));
    lines.push((1, format!("vermagic: {}", opt(&r.vermagic).trim_end())));
    if let Some(v) = &r.srcversion {
        lines.push((1, format!("srcversion: {v}")));
    }
    lines.push((
        1,
        match r.kind {
            Kind::KlpRs => format!(
                "klp-rs live patch, table format {}{}",
                r.format_version.unwrap_or(0),
                match r.replace {
                    Some(false) => ", stacks (replace = false)",
                    _ => "",
                }
            ),
            Kind::KlpBuild => "live patch built by klp-build".into(),
            Kind::CStatic => format!(
                "C live patch (static structures), replace: {}",
                r.replace.unwrap_or(false)
            ),
            Kind::Livepatch => "live patch (structures not decoded)".into(),
            Kind::NotLivepatch => "not a livepatch".into(),
        },
    ));
    let hooks = |c: &CallbackSet| {
        [
            ("pre_patch", &c.pre_patch),
            ("post_patch", &c.post_patch),
            ("pre_unpatch", &c.pre_unpatch),
            ("post_unpatch", &c.post_unpatch),
        ]
        .iter()
        .filter_map(|(n, v)| v.as_ref().map(|_| *n))
        .collect::<Vec<_>>()
        .join(", ")
    };
    for o in &r.objects {
        lines.push((1, format!("object {}", o.name)));
        for f in &o.functions {
            let pos = if f.sympos != 0 {
                format!(",{}", f.sympos)
            } else {
                String::new()
            };
            lines.push((
                2,
                format!("func {}{pos} -> {}", f.old, f.new.as_deref().unwrap_or("?")),
            ));
        }
        for c in &o.callback_sets {
            lines.push((2, format!("callback set {}: {}", c.id, hooks(c))));
        }
        if let Some(c) = &o.callbacks {
            lines.push((2, format!("callbacks: {}", hooks(c))));
        }
    }
    for t in &r.shadow_types {
        let unit = if t.size == 1 { "byte" } else { "bytes" };
        lines.push((
            1,
            format!(
                "shadow {:#x}: {}, {} {unit}, owned by set {}",
                t.id, t.type_name, t.size, t.owner
            ),
        ));
    }
    for st in &r.states {
        lines.push((1, format!("klp_state {:#x} version {}", st.id, st.version)));
    }
    for k in &r.klp_rela_sections {
        lines.push((1, k.clone()));
    }
    if !r.klp_symbols.is_empty() {
        lines.push((1, format!("{} .klp.sym symbols", r.klp_symbols.len())));
    }
    for w in &r.warnings {
        lines.push((1, format!("warning: {w}")));
    }
    let mut s = format!(
        "{}{}\n",
        r.file,
        r.compression
            .map(|c| format!(" ({c}-compressed)"))
            .unwrap_or_default()
    );
    for (i, (depth, text)) in lines.iter().enumerate() {
        // Is there a later sibling at this depth before the parent ends?
        let more = |d: usize| {
            lines[i + 1..]
                .iter()
                .take_while(|(e, _)| *e >= d)
                .any(|(e, _)| *e == d)
        };
        if *depth == 2 {
            s += if more(1) { "│   " } else { "    " };
        }
        s += if more(*depth) {
            "├── "
        } else {
            "└── "
        };
        s += text;
        s += "\n";
    }
    s
}

/// Human-readable plan.
pub fn render_plan(p: &ReplacePlan) -> String {
    let mut s = format!("replace {} by {}\n", p.old, p.new);
    if let Some(r) = &p.refused {
        s += &format!("REFUSED: {r}\n");
    }
    for (i, step) in p.steps.iter().enumerate() {
        s += &format!("{:>3}. {step}\n", i + 1);
    }
    if !p.shadow_types_freed.is_empty() {
        let ids: Vec<String> = p
            .shadow_types_freed
            .iter()
            .map(|i| format!("{i:#x}"))
            .collect();
        s += &format!("shadow types freed: {}\n", ids.join(", "));
    }
    s += &format!(
        "functions: {} added, {} removed, {} kept\n",
        p.functions_added.len(),
        p.functions_removed.len(),
        p.functions_kept.len()
    );
    for f in &p.functions_added {
        s += &format!("  + {f}\n");
    }
    for f in &p.functions_removed {
        s += &format!("  - {f}\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use klp_runtime::reader::{CallbackSet as Set, ShadowType as Shadow};

    /// An xz stream header (CRC32 check) and one block of LZMA2 chunks, each declaring
    /// `unpacked` bytes: what the size check reads, without data that would decode.
    fn xz_declaring(chunks: usize, unpacked: u32) -> Vec<u8> {
        let mut x = b"\xfd7zXZ\x00\x00\x01\x69\x22\xde\x36".to_vec();
        x.extend([0x02, 0x00, 0x21, 0x01, 0x16, 0, 0, 0, 0, 0, 0, 0]); // block header
        let u = unpacked - 1;
        for i in 0..chunks {
            let control = if i == 0 { 0xe0 } else { 0x80 } | (u >> 16) as u8;
            x.extend([control, (u >> 8) as u8, u as u8, 0, 0]);
            if i == 0 {
                x.push(0x5d); // properties
            }
            x.push(0); // one packed byte
        }
        x.push(0); // end of the chunks
        while !(x.len() - 12).is_multiple_of(4) {
            x.push(0); // block padding
        }
        x.extend([0; 4]); // CRC32
        x.push(0); // the index follows
        x
    }

    #[test]
    fn xz_declaring_more_than_a_module_is_refused_before_decoding() {
        let two_mib = 1 << 21;
        let fits = MAX_MODULE / two_mib;
        assert_eq!(
            xz_size(&xz_declaring(fits, two_mib as u32)),
            Ok(MAX_MODULE as u64)
        );
        let e = xz_size(&xz_declaring(fits + 1, two_mib as u32)).unwrap_err();
        assert!(e.starts_with("decompresses to more than 128 MiB"), "{e}");
        let e = xz_size(&xz_declaring(3, 100)[..40]).unwrap_err();
        assert!(e.contains("truncated at offset 0x28"), "{e}");
    }

    #[test]
    fn xz_size_is_what_lzma_rs_decodes() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut &data[..], &mut xz).unwrap();
        assert_eq!(xz_size(&xz), Ok(data.len() as u64));
        let path = std::env::temp_dir().join(format!("klp-inspect-{}.ko.xz", std::process::id()));
        std::fs::write(&path, &xz).unwrap();
        let loaded = load(&path);
        std::fs::remove_file(&path).unwrap();
        let (bytes, compression) = loaded.unwrap();
        assert_eq!((&bytes[..], compression), (&data[..], Some("xz")));
    }

    /// An ELF64 file of `len` bytes whose section headers (after the null one) give these
    /// (type, offset, size); `extended` puts the count in section 0 as for many sections.
    fn elf(len: usize, sections: &[(u32, u64, u64)], extended: bool) -> Vec<u8> {
        let mut d = vec![0u8; len];
        d[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let shoff = len - 64 * (sections.len() + 1);
        let shnum = sections.len() as u64 + 1;
        d[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        if extended {
            d[shoff + 0x20..shoff + 0x28].copy_from_slice(&shnum.to_le_bytes());
        } else {
            d[0x3c..0x3e].copy_from_slice(&(shnum as u16).to_le_bytes());
        }
        for (i, (kind, off, size)) in sections.iter().enumerate() {
            let h = shoff + 64 * (i + 1);
            d[h + 4..h + 8].copy_from_slice(&kind.to_le_bytes());
            d[h + 0x18..h + 0x20].copy_from_slice(&off.to_le_bytes());
            d[h + 0x20..h + 0x28].copy_from_slice(&size.to_le_bytes());
        }
        d
    }

    #[test]
    fn sections_sharing_bytes_are_refused() {
        let apart = [(1, 64, 256), (1, 320, 256)];
        let shared = [(1, 64, 512), (1, 64, 512), (4, 64, 512)];
        for extended in [false, true] {
            assert_eq!(check_extent(&elf(1024, &apart, extended)), Ok(()));
            let e = check_extent(&elf(1024, &shared, extended)).unwrap_err();
            assert!(
                e.contains("add up to 0x600 bytes, more than the file's 0x400"),
                "{e}"
            );
        }
        // SHT_NOBITS claims no file space, however large.
        assert_eq!(check_extent(&elf(1024, &[(8, 0, 1 << 40)], false)), Ok(()));
        let e = check_extent(&elf(1024, &[(1, 1000, 100)], false)).unwrap_err();
        assert!(e.contains("section 1 spans offsets 0x3e8..0x44c"), "{e}");
    }

    fn patch<'a>(
        name: &'a str,
        sets: &[(u32, &'a str)],
        shadows: &[(u64, u32)],
    ) -> Patch<'a, &'a str> {
        Patch {
            name,
            format_version: 1,
            funcs: vec![],
            sets: sets
                .iter()
                .map(|&(id, object)| Set {
                    id,
                    object,
                    hooks: [Some("hook"); 4],
                    origin: "",
                })
                .collect(),
            shadows: shadows
                .iter()
                .map(|&(id, owner)| Shadow {
                    id,
                    owner,
                    type_name: "T",
                    size: 8,
                    align: 8,
                    ctor: None,
                    dtor: None,
                    origin: "",
                })
                .collect(),
        }
    }

    #[test]
    fn a_shadow_type_kept_by_a_set_on_a_module_is_freed_only_without_it() {
        // Old set 3 (vmlinux) leaves; new set 4, on binfmt_misc, owns old set 3's 0x30: with
        // binfmt_misc loaded set 4 is set up and keeps it, without it 0x30 goes after set 3.
        let old = patch("old", &[(3, "vmlinux")], &[(0x30, 3)]);
        let new = patch("new", &[(4, "binfmt_misc")], &[(0x30, 4)]);
        let (lines, freed) = step_lines(Some(&old), &new).unwrap();
        assert_eq!(
            lines,
            [
                "new: set 4 binfmt_misc pre_patch (if binfmt_misc is loaded)",
                "old: set 3 vmlinux pre_unpatch",
                "transition",
                "old: set 3 vmlinux post_unpatch",
                "old: set 3 free shadow 0x30 (if binfmt_misc is not loaded)",
                "new: set 4 binfmt_misc post_patch (if binfmt_misc is loaded)",
            ]
        );
        assert_eq!(freed, [0x30]);
    }

    #[test]
    fn vmlinux_only_plans_are_the_planners_steps() {
        let old = patch("old", &[(1, "vmlinux"), (3, "vmlinux")], &[(0x30, 3)]);
        let new = patch("new", &[(1, "vmlinux"), (2, "vmlinux")], &[]);
        let (lines, _) = step_lines(Some(&old), &new).unwrap();
        let planned: Vec<String> = plan::replace(Some(&old), &new, &|_| false)
            .unwrap()
            .steps()
            .map(|s| match s {
                None => "transition".to_string(),
                Some(s) => StepLine {
                    patch: if s.side() == Side::Old { "old" } else { "new" },
                    step: &s,
                }
                .to_string(),
            })
            .collect();
        assert_eq!(lines, planned);
        assert_eq!(lines.len(), 6);
    }
}
