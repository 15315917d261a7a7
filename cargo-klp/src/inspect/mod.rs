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

mod against;
mod decode;
mod headline;
mod load;
mod relocations;
mod render;
#[cfg(test)]
mod tests;

pub use against::{against, ReplacePlan};
pub use load::{load, Bytes};
pub use relocations::KlpRelocation;
pub use render::{render, render_plan};

use std::path::{Path, PathBuf};

use klp_runtime::reader::{Patch, ReadError};
use object::read::{Object as _, ObjectSymbol};
use serde::Serialize;

use crate::elf::{self};

use decode::*;
use headline::Headline;

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
    /// Each livepatch relocation and what it resolves to.
    pub klp_relocations: Vec<KlpRelocation>,
    /// With `--btf`: the kernel's prototype of each vmlinux function the patch replaces or
    /// reaches through a livepatch relocation, by name.
    pub kernel_prototypes: std::collections::BTreeMap<String, String>,
    /// What could not be read, with the reason (the rest of the report stands).
    pub warnings: Vec<String>,
}

/// Inspects one module's bytes.
pub fn inspect_bytes(
    path: &str,
    data: &[u8],
    compression: Option<&'static str>,
) -> Result<Report, InspectError> {
    report(path, data, compression).map(|(r, _)| r)
}

/// The report of a parsed module, and its klp-rs tables when this reader can read them
/// (`None` for other modules, and for klp-rs tables of a newer format, which the report
/// then warns about).
fn report<'d>(
    path: &str,
    data: &'d [u8],
    compression: Option<&'static str>,
) -> Result<(Report, Option<Patch<'d, &'d str>>), InspectError> {
    let names = Names::for_file(data.len());
    let head = headline::read(path, data, &names)?;
    if !head.needs_tables() {
        return Ok((
            headline_report(path, &head, &names, data.len(), compression)?,
            None,
        ));
    }
    let file = object::File::parse(data).map_err(|e| InspectError::Elf {
        file: path.into(),
        what: e.to_string(),
    })?;
    tables_report(path, data, &file, &head, &names, compression)
}

/// The report of a module that has no livepatch tables, from its headline alone.
fn headline_report(
    path: &str,
    head: &Headline,
    names: &Names,
    len: usize,
    compression: Option<&'static str>,
) -> Result<Report, InspectError> {
    let report = head_fields(path, head, names, compression);
    names.check(len).map_err(|what| InspectError::Tables {
        file: path.into(),
        what,
    })?;
    Ok(report)
}

/// The report's fields that come from the headline.
fn head_fields(
    path: &str,
    head: &Headline,
    names: &Names,
    compression: Option<&'static str>,
) -> Report {
    let info = head.modinfo();
    let field = |k: &str| info.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    let get = |k: &str| field(k).map(|v| names.own(v));
    let livepatch = head.livepatch;
    Report {
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
        signed: head.signed,
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
        klp_rela_sections: head.klp_rela_sections.clone(),
        klp_symbols: vec![],
        klp_relocations: vec![],
        kernel_prototypes: Default::default(),
        warnings: vec![],
    }
}

/// The report of a module with livepatch tables of some kind, decoded from the whole file.
fn tables_report<'d>(
    path: &str,
    data: &'d [u8],
    file: &object::File<'d>,
    head: &Headline,
    names: &Names,
    compression: Option<&'static str>,
) -> Result<(Report, Option<Patch<'d, &'d str>>), InspectError> {
    let info = head.modinfo();
    let field = |k: &str| info.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    let replace = || field("klp_rs_replace").map(|v| v == "Y");
    let mut report = head_fields(path, head, names, compression);
    let tables = |what: String| InspectError::Tables {
        file: path.into(),
        what,
    };
    report.klp_symbols = file
        .symbols()
        .filter_map(|s| {
            s.name()
                .ok()
                .filter(|n| n.starts_with(".klp.sym."))
                .map(|n| names.own(n))
        })
        .collect();
    let (relocations, problems) = relocations::read(data, names);
    report.klp_relocations = relocations;
    report.warnings.extend(problems);
    match elf::read_patch(file) {
        Ok(Some(p)) => {
            report.kind = Kind::KlpRs;
            report.format_version = Some(p.format_version);
            report.replace = replace();
            report.objects = klp_rs_objects(&p, names);
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
    if let Some(objects) = klp_build_objects(file, names).map_err(tables)? {
        report.kind = Kind::KlpBuild;
        report.objects = objects;
    } else if let Some((objects, states, replace)) = c_static_patch(file, names) {
        report.kind = Kind::CStatic;
        report.objects = objects;
        report.states = states;
        report.replace = Some(replace);
    }
    names.check(data.len()).map_err(tables)?;
    Ok((report, None))
}

/// Inspects one file. An uncompressed module is read by range ([`headline`]): its headers,
/// section names, `.modinfo` and signature marker, and only a live patch is read whole.
pub fn inspect(path: &Path) -> Result<Report, InspectError> {
    let name = path.display().to_string();
    let disk = headline::OnDisk::open(path).map_err(|source| InspectError::Io {
        file: name.clone(),
        source,
    })?;
    let magic = disk.head();
    let compressed = magic.starts_with(b"\xfd7zXZ\x00") || magic.starts_with(b"\x28\xb5\x2f\xfd");
    if !compressed {
        let len = usize::try_from(headline::ReadAt::len(&disk)).unwrap_or(usize::MAX);
        let names = Names::for_file(len);
        let head = headline::read(&name, &disk, &names)?;
        if !head.needs_tables() {
            return headline_report(&name, &head, &names, len, None);
        }
    }
    let (data, compression) = load(path)?;
    inspect_bytes(&name, &data, compression)
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
    use rayon::prelude::*;
    paths.par_iter().map(|p| inspect_isolated(p)).collect()
}

/// Adds the kernel's prototypes, from vmlinux's BTF, of the vmlinux functions the report
/// names: those it replaces and those its livepatch relocations reach. A name BTF lacks,
/// or has with several different prototypes, gets none.
pub fn add_prototypes(report: &mut Report, btf: &klp_btf::Kernel) {
    let vmlinux = klp_runtime::abi::VMLINUX;
    let replaced = report
        .objects
        .iter()
        .filter(|o| o.name == vmlinux)
        .flat_map(|o| o.functions.iter().map(|f| f.old.clone()));
    let used = report
        .klp_relocations
        .iter()
        .filter(|r| r.object.as_deref() == Some(vmlinux))
        .map(|r| r.symbol.clone());
    let names: std::collections::BTreeSet<String> = replaced.chain(used).collect();
    for name in names {
        let Ok(protos) = klp_btf::functions(btf, &name) else {
            continue;
        };
        let rendered: std::collections::BTreeSet<String> =
            protos.iter().map(|p| p.render(&name)).collect();
        if rendered.len() == 1 {
            report
                .kernel_prototypes
                .insert(name, rendered.into_iter().next().expect("one"));
        }
    }
}
