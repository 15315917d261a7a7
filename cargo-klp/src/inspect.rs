//! `cargo klp inspect`: what is inside a kernel module, from the file alone — its modinfo,
//! signature, and livepatch tables (ours, upstream klp-build's, or a hand-written C patch's
//! static structures) — and, with `--against`, what a replace will run.
//!
//! Every file gives a [`Report`] or an error naming the file and what is wrong where; nothing
//! panics on malformed input, and decompression is bounded.

use std::path::{Path, PathBuf};

use klp_runtime::plan::{self, Side, StepLine};
use klp_runtime::reader::{Patch, ReadError};
use object::read::{Object as _, ObjectSection, ObjectSymbol};
use object::SectionIndex;
use serde::Serialize;

use crate::elf::{self, SectionRelocs};

/// The JSON schema version (docs/inspect-json.md).
pub const SCHEMA: u32 = 1;

/// Decompressed modules larger than this are refused: no real module comes close.
pub const MAX_MODULE: usize = 512 << 20;

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
        if self.0.len() + buf.len() > MAX_MODULE {
            return Err(std::io::Error::other("decompresses to more than 512 MiB"));
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
        let mut out = Bounded(Vec::new());
        lzma_rs::xz_decompress(&mut std::io::BufReader::new(&map[..]), &mut out)
            .map_err(|e| bad(format!("corrupt xz data: {e}")))?;
        return Ok((Bytes::Owned(out.0), Some("xz")));
    }
    if map.starts_with(b"\x28\xb5\x2f\xfd") {
        let mut dec = ruzstd::decoding::StreamingDecoder::new(&map[..])
            .map_err(|e| bad(format!("corrupt zstd data: {e}")))?;
        let mut out = Bounded(Vec::new());
        std::io::copy(&mut dec, &mut out).map_err(|e| bad(format!("corrupt zstd data: {e}")))?;
        return Ok((Bytes::Owned(out.0), Some("zstd")));
    }
    Ok((Bytes::Mapped(map), None))
}

const SIGNATURE_MAGIC: &[u8] = b"~Module signature appended~\n";

fn modinfo<'d>(file: &object::File<'d>) -> Vec<(&'d str, &'d str)> {
    let Some(sec) = file.section_by_name(".modinfo") else {
        return Vec::new();
    };
    let data = sec.data().unwrap_or(&[]);
    data.split(|b| *b == 0)
        .filter_map(|f| std::str::from_utf8(f).ok()?.split_once('='))
        .collect()
}

fn hook_names<F: Copy + ToString>(hooks: &[Option<F>; 4]) -> CallbackSet {
    let h = |i: usize| hooks[i].map(|f| f.to_string());
    CallbackSet {
        id: 0,
        pre_patch: h(0),
        post_patch: h(1),
        pre_unpatch: h(2),
        post_unpatch: h(3),
    }
}

/// Groups a klp-rs patch's entries by object, `vmlinux` first.
fn klp_rs_objects(p: &Patch<'_, &str>) -> Vec<KlpObject> {
    let mut names: Vec<&str> = vec!["vmlinux"];
    for n in p
        .funcs
        .iter()
        .map(|f| f.object)
        .chain(p.sets.iter().map(|s| s.object))
    {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    names
        .into_iter()
        .map(|name| {
            let mut sets: Vec<CallbackSet> = p
                .sets
                .iter()
                .filter(|s| s.object == name)
                .map(|s| CallbackSet {
                    id: s.id,
                    ..hook_names(&s.hooks)
                })
                .collect();
            sets.sort_by_key(|s| s.id);
            KlpObject {
                name: name.to_string(),
                functions: p
                    .funcs
                    .iter()
                    .filter(|f| f.object == name)
                    .map(|f| Function {
                        old: f.old_name.into(),
                        sympos: f.sympos.into(),
                        new: f.new_func.map(str::to_string),
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
/// `klp_func_ext` { old_name, new_func, sympos } is 24.
fn klp_build_objects(file: &object::File<'_>) -> Option<Vec<KlpObject>> {
    let objs = file.section_by_name(".init.klp_objects")?;
    let funcs = file.section_by_name(".init.klp_funcs")?;
    let (or, fr) = (
        SectionRelocs::of(file, &objs),
        SectionRelocs::of(file, &funcs),
    );
    let mut out = Vec::new();
    for base in (0..objs.size()).step_by(64) {
        // nr_funcs is a u32 at 56, followed by padding.
        let nr = or.u64_at(base + 56).map_or(0, |v| v as u32);
        let first = or.target(base + 8).map_or(0, |(_, o)| o);
        let functions = (0..u64::from(nr))
            .map(|i| {
                let f = first + i * 24;
                Function {
                    old: fr.string(f).unwrap_or_default().into(),
                    sympos: fr.u64_at(f + 16).unwrap_or(0),
                    new: fr.function(f + 8).ok().flatten().map(str::to_string),
                }
            })
            .collect();
        let cb = |i: u64| {
            or.function(base + 16 + 8 * i)
                .ok()
                .flatten()
                .map(str::to_string)
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
            name: or.string(base).unwrap_or("vmlinux").into(),
            functions,
            callback_sets: vec![],
            callbacks: any.then_some(callbacks),
        });
    }
    Some(out)
}

/// A hand-written C patch (samples/livepatch style): its static `klp_patch` is the data
/// that points to `__this_module` and, 8 bytes on, to the `klp_object` array. Struct sizes
/// depend on the kernel config, so arrays are walked through the symbols' sizes and the
/// relocations in them; the leading fields (`old_name`, `new_func`, `old_sympos`; `name`,
/// `funcs`; `id`, `version`) have the same place in every version.
fn c_static_patch(file: &object::File<'_>) -> Option<(Vec<KlpObject>, Vec<State>, bool)> {
    let this_module = file
        .symbols()
        .find(|s| s.name() == Ok("__this_module"))?
        .index();
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
        let (objs_sec, objs_at) = r.target(patch_at + 8)?;
        let replace = r.byte_at(patch_at + 24).is_some_and(|b| b != 0);
        let states = r
            .target(patch_at + 16)
            .and_then(|(s, at)| {
                let sr = SectionRelocs::of_index(file, s)?;
                let end = symbol_end(file, s, at)?;
                Some(
                    (at..end)
                        .step_by(24)
                        .filter_map(|o| {
                            let id = sr.u64_at(o)?;
                            let version = sr.u64_at(o + 8)? as u32;
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
        for f in funcs_fields {
            let (fsec, fat) = or.target(f)?;
            let fr = SectionRelocs::of_index(file, fsec)?;
            let fend = symbol_end(file, fsec, fat)?;
            let functions = fr
                .offsets(fat..fend)
                .filter_map(|o| {
                    let old = fr.string(o).ok()?;
                    let new = fr.function(o + 8).ok().flatten().map(str::to_string);
                    Some(Function {
                        old: old.into(),
                        sympos: fr.u64_at(o + 16).unwrap_or(0),
                        new,
                    })
                })
                .collect();
            let name = or.string(f - 8).unwrap_or("vmlinux").into();
            objects.push(KlpObject {
                name,
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
        .filter(|s| {
            s.section_index() == Some(sec)
                && s.size() > 0
                && s.address() <= at
                && at < s.address() + s.size()
        })
        .map(|s| s.address() + s.size())
        .min()
}

/// Where an ELF64 file's section headers say its parts are, against its length: a
/// truncated file is reported with the offsets involved.
fn check_extent(data: &[u8]) -> Result<(), String> {
    let u = |at: usize, n: usize| -> Option<u64> {
        let b = data.get(at..at + n)?;
        Some(b.iter().rev().fold(0u64, |v, x| (v << 8) | u64::from(*x)))
    };
    if data.len() < 64 || !data.starts_with(b"\x7fELF") {
        return Err(format!(
            "no ELF header: the file is {} bytes and does not start with \\x7fELF",
            data.len()
        ));
    }
    let (shoff, shentsize, shnum) = (
        u(0x28, 8).unwrap_or(0),
        u(0x3a, 2).unwrap_or(0),
        u(0x3c, 2).unwrap_or(0),
    );
    let end = shoff.saturating_add(shentsize.saturating_mul(shnum));
    if end > data.len() as u64 {
        return Err(format!(
            "truncated: the section header table at offset {shoff:#x} ({shnum} entries) ends at offset {end:#x}, \
             past the end of the file ({:#x} bytes)",
            data.len()
        ));
    }
    for i in 0..shnum {
        let h = (shoff + i * shentsize) as usize;
        let (kind, off, size) = (
            u(h + 4, 4).unwrap_or(0),
            u(h + 0x18, 8).unwrap_or(0),
            u(h + 0x20, 8).unwrap_or(0),
        );
        // SHT_NOBITS occupies no file space.
        if kind != 8 && off.saturating_add(size) > data.len() as u64 {
            return Err(format!(
                "truncated or corrupt: section {i} spans offsets {off:#x}..{:#x}, past the end of the file ({:#x} bytes)",
                off.saturating_add(size),
                data.len()
            ));
        }
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
    let info = modinfo(file);
    let get = |k: &str| {
        info.iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.to_string())
    };
    let livepatch = get("livepatch").as_deref() == Some("Y");
    let mut report = Report {
        file: path.into(),
        compression,
        name: get("name"),
        license: get("license"),
        vermagic: get("vermagic"),
        srcversion: get("srcversion"),
        description: get("description"),
        depends: get("depends")
            .map(|d| {
                d.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
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
                    .map(str::to_string)
            })
            .collect(),
        klp_symbols: vec![],
        warnings: vec![],
    };
    if !livepatch && report.klp_rela_sections.is_empty() {
        return Ok((report, None));
    }
    report.klp_symbols = file
        .symbols()
        .filter_map(|s| {
            s.name()
                .ok()
                .filter(|n| n.starts_with(".klp.sym."))
                .map(str::to_string)
        })
        .collect();
    match elf::read_patch(file) {
        Ok(Some(p)) => {
            report.kind = Kind::KlpRs;
            report.format_version = Some(p.format_version);
            report.replace = get("klp_rs_replace").map(|v| v == "Y");
            report.objects = klp_rs_objects(&p);
            report.shadow_types = p
                .shadows
                .iter()
                .map(|t| ShadowType {
                    id: t.id,
                    owner: t.owner,
                    type_name: t.type_name.into(),
                    size: t.size,
                    align: t.align,
                })
                .collect();
            report.states = vec![State {
                id: klp_runtime::abi::KLP_STATE_ID,
                version: klp_runtime::abi::KLP_STATE_VERSION,
            }];
            return Ok((report, Some(p)));
        }
        Ok(None) => {}
        Err(elf::TablesError::Read {
            source: ReadError::TooNew { found, supported },
            ..
        }) => {
            report.kind = Kind::KlpRs;
            report.format_version = Some(found);
            report.replace = get("klp_rs_replace").map(|v| v == "Y");
            report.states = vec![State {
                id: klp_runtime::abi::KLP_STATE_ID,
                version: klp_runtime::abi::KLP_STATE_VERSION,
            }];
            report.warnings.push(format!(
                "klp-rs tables of format {found}; this cargo-klp reads up to {supported}: update it to see them"
            ));
            return Ok((report, None));
        }
        Err(e) => {
            return Err(InspectError::Tables {
                file: path.into(),
                what: e.to_string(),
            })
        }
    }
    if let Some(objects) = klp_build_objects(file) {
        report.kind = Kind::KlpBuild;
        report.objects = objects;
    } else if let Some((objects, states, replace)) = c_static_patch(file) {
        report.kind = Kind::CStatic;
        report.objects = objects;
        report.states = states;
        report.replace = Some(replace);
    }
    Ok((report, None))
}

/// Inspects one file.
pub fn inspect(path: &Path) -> Result<Report, InspectError> {
    let (data, compression) = load(path)?;
    inspect_bytes(&path.display().to_string(), &data, compression)
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
                        done.push((i, inspect(p)));
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
    let mut plan = ReplacePlan {
        old: name(&old_r),
        new: name(&new_r),
        refused: None,
        steps: vec![],
        shadow_types_freed: vec![],
        functions_added: nf.iter().filter(|f| !of.contains(f)).cloned().collect(),
        functions_removed: of.iter().filter(|f| !nf.contains(f)).cloned().collect(),
        functions_kept: nf.iter().filter(|f| of.contains(f)).cloned().collect(),
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
    let p = plan::replace(old_p.as_ref(), &new_p, &|_| false);
    let patch_name = |side| {
        if side == Side::Old {
            old_p.as_ref().map_or("?", |o| o.name)
        } else {
            new_p.name
        }
    };
    for step in p.steps() {
        match step {
            None => plan.steps.push("transition".into()),
            Some(plan::Step::Hook { defined: false, .. }) => {}
            Some(s) => {
                let side = match s {
                    plan::Step::Hook { side, .. } | plan::Step::FreeShadow { side, .. } => side,
                };
                if let plan::Step::FreeShadow { shadow, .. } = s {
                    plan.shadow_types_freed.push(shadow);
                }
                plan.steps.push(
                    StepLine {
                        patch: patch_name(side),
                        step: &s,
                    }
                    .to_string(),
                );
            }
        }
    }
    Ok(plan)
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
