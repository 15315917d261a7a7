//! Kernel symbols the kernel does not export, reached through livepatch relocations in the
//! kernel's format (Documentation/livepatch/module-elf-format.rst): the patch's references to
//! them live in `.klp.rela.<object>.<section>` sections (`SHF_ALLOC | SHF_RELA_LIVEPATCH`)
//! against `.klp.sym.<object>.<name>,<sympos>` symbols (`SHN_LIVEPATCH`), which the livepatch
//! core resolves with `klp_find_object_symbol` and applies: vmlinux's while the module loads
//! (`apply_relocations` -> `klp_apply_section_relocs`), a module object's whenever that module
//! is loaded (`klp_init_object_loaded` -> `klp_apply_object_relocs`).
//!
//! Two steps, around the Kbuild link. Before it ([`prepare_object`]), each such undefined
//! symbol of the Rust object takes its `.klp.sym` name and becomes weak: modpost refuses an
//! undefined global symbol no export list has, and passes over weak ones (`check_exports`),
//! and `ld -r` keeps the relocations against it. After it ([`convert_module`]), the symbols get
//! `SHN_LIVEPATCH` and the relocations against them move into klp relocation sections, which
//! the module loader leaves to livepatch (`simplify_symbols`, `apply_relocations`). Signing
//! comes after, as the kernel's format requires.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use object::build::elf::{Builder, Relocation, SectionData, SectionId};
use object::build::Id;
use object::elf;

/// The kernel's prefix of a livepatch symbol's name.
pub const SYM_PREFIX: &str = ".klp.sym.";
/// The kernel's prefix of a livepatch relocation section's name.
pub const RELA_PREFIX: &str = ".klp.rela.";
/// `klp_resolve_symbols` reads the object with `%55[^.]` and the name with `%511[^,]`.
const OBJECT_MAX: usize = 55;
const NAME_MAX: usize = 511;
/// include/uapi/linux/elf.h: a livepatch symbol's section index, and a livepatch relocation
/// section's flag (the ELF crate knows neither).
pub const SHN_LIVEPATCH: u16 = 0xff20;
pub const SHF_RELA_LIVEPATCH: u32 = 0x0010_0000;

/// A kernel symbol as a livepatch symbol names it: which object, which name, and which of
/// the object's symbols of that name in kallsyms order (0: the only one).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KlpSym {
    pub object: String,
    pub name: String,
    pub sympos: u32,
}

impl KlpSym {
    /// Reads `.klp.sym.<object>.<name>,<sympos>` as `klp_resolve_symbols` does; `None` for
    /// any other name, or one the kernel would refuse.
    pub fn parse(symbol: &str) -> Option<KlpSym> {
        let rest = symbol.strip_prefix(SYM_PREFIX)?;
        let (object, rest) = rest.split_once('.')?;
        let (name, sympos) = rest.rsplit_once(',')?;
        let valid = !object.is_empty()
            && object.len() <= OBJECT_MAX
            && !name.is_empty()
            && name.len() <= NAME_MAX
            && !name.contains(',')
            && sympos.bytes().all(|b| b.is_ascii_digit());
        valid.then_some(KlpSym {
            object: object.to_string(),
            name: name.to_string(),
            sympos: sympos.parse().ok()?,
        })
    }
}

impl fmt::Display for KlpSym {
    /// The symbol's name in the module.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SYM_PREFIX}{}.{},{}",
            self.object, self.name, self.sympos
        )
    }
}

/// The object a klp relocation section applies for: `.klp.rela.<object>.<section>`.
pub fn rela_object(section: &str) -> Option<&str> {
    section
        .strip_prefix(RELA_PREFIX)?
        .split_once('.')
        .map(|(o, _)| o)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Writes the edited file next to `path` and renames it into place: never half-written.
fn write(path: &Path, builder: Builder<'_>) -> Result<()> {
    let mut out = Vec::new();
    builder
        .write(&mut out)
        .with_context(|| format!("{}: cannot write the ELF file back", path.display()))?;
    let tmp = path.with_extension("klp-rela.tmp");
    std::fs::write(&tmp, out).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

fn builder<'d>(path: &Path, data: &'d [u8]) -> Result<Builder<'d>> {
    let mut b = Builder::read(data)
        .with_context(|| format!("{}: not an ELF file object can edit", path.display()))?;
    // LLVM keeps section names in the symbols' string table; the builder writes them
    // apart.
    if !b
        .sections
        .iter()
        .any(|s| matches!(s.data, SectionData::SectionString))
    {
        let names = b.sections.add();
        names.name = b".shstrtab"[..].into();
        names.sh_type = elf::SHT_STRTAB;
        names.sh_addralign = 1;
        names.data = SectionData::SectionString;
    }
    Ok(b)
}

fn undefined(sym: &object::build::elf::Symbol<'_>) -> bool {
    sym.section.is_none() && sym.st_shndx == elf::SHN_UNDEF
}

/// Before the link: renames each undefined symbol of the Rust object that `symbols` maps to
/// its livepatch symbol, and makes every livepatch symbol weak (see the module's comment).
pub fn prepare_object(path: &Path, symbols: &BTreeMap<String, KlpSym>) -> Result<()> {
    let data = read(path)?;
    let mut b = builder(path, &data)?;
    for sym in b.symbols.iter_mut() {
        if !undefined(sym) {
            continue;
        }
        let name = String::from_utf8_lossy(&sym.name).into_owned();
        if let Some(klp) = symbols.get(&name) {
            sym.name = klp.to_string().into_bytes().into();
        } else if !name.starts_with(SYM_PREFIX) {
            continue;
        }
        sym.set_st_info(elf::STB_WEAK, sym.st_type());
    }
    write(path, b)
}

/// One klp relocation section the module got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converted {
    pub section: String,
    pub relocations: usize,
}

/// After the link: marks the module's livepatch symbols `SHN_LIVEPATCH` and moves every
/// relocation against them in an allocated section into `.klp.rela.<object>.<section>`.
/// Relocations of sections the kernel does not load (debug info) stay where they are: the
/// module loader skips them (`apply_relocations`), and a klp section applied to a section
/// that is not in memory would write into freed memory.
pub fn convert_module(path: &Path) -> Result<Vec<Converted>> {
    let data = read(path)?;
    let mut b = builder(path, &data)?;
    // By symbol index (the builder's ids are not ordered).
    let mut klp: BTreeMap<usize, KlpSym> = BTreeMap::new();
    for sym in b.symbols.iter_mut() {
        let name = String::from_utf8_lossy(&sym.name).into_owned();
        if !name.starts_with(SYM_PREFIX) {
            continue;
        }
        let Some(parsed) = KlpSym::parse(&name) else {
            bail!(
                "{}: symbol `{name}` is not a livepatch symbol the kernel can read \
                 (.klp.sym.<object>.<name>,<sympos>)",
                path.display()
            );
        };
        if !undefined(sym) && sym.st_shndx != SHN_LIVEPATCH {
            bail!(
                "{}: `{name}` is defined in the module, but the livepatch core would overwrite \
                 it with the kernel's address; a livepatch symbol names a kernel symbol",
                path.display()
            );
        }
        sym.st_shndx = SHN_LIVEPATCH;
        sym.set_st_info(elf::STB_GLOBAL, sym.st_type());
        klp.insert(sym.id().index(), parsed);
    }
    if klp.is_empty() {
        return Ok(Vec::new());
    }
    let symtab = b
        .sections
        .iter()
        .find(|s| matches!(s.data, SectionData::Symbol))
        .map(|s| s.id())
        .with_context(|| format!("{}: no symbol table", path.display()))?;
    let mut moved: BTreeMap<(String, usize), (SectionId, Vec<Relocation>)> = BTreeMap::new();
    let loaded: Vec<SectionId> = b
        .sections
        .iter()
        .filter(|s| s.is_alloc())
        .map(|s| s.id())
        .collect();
    for sec in b.sections.iter_mut() {
        let Some(target) = sec.sh_info_section.filter(|t| loaded.contains(t)) else {
            continue;
        };
        if sec.name.starts_with(RELA_PREFIX.as_bytes()) {
            continue;
        }
        let SectionData::Relocation(relocs) = &mut sec.data else {
            continue;
        };
        relocs.retain(|r| match r.symbol.and_then(|s| klp.get(&s.index())) {
            Some(sym) => {
                moved
                    .entry((sym.object.clone(), target.index()))
                    .or_insert_with(|| (target, Vec::new()))
                    .1
                    .push(*r);
                false
            }
            None => true,
        });
    }
    // Whatever was not moved must not reach a livepatch symbol: the module loader would
    // apply it with the symbol's value 0 (a relocation section without SHF_INFO_LINK,
    // which the builder does not link to its target, would be one).
    for sec in b.sections.iter() {
        let SectionData::Relocation(relocs) = &sec.data else {
            continue;
        };
        let moved_here = sec.sh_info_section.is_some_and(|t| loaded.contains(&t));
        let into_unloaded = sec.sh_info_section.is_some() && !moved_here;
        if into_unloaded || sec.name.starts_with(RELA_PREFIX.as_bytes()) {
            continue;
        }
        if let Some(r) = relocs
            .iter()
            .find(|r| r.symbol.is_some_and(|s| klp.contains_key(&s.index())))
        {
            bail!(
                "{}: section {} has a relocation at {:#x} against a livepatch symbol that could \
                 not be moved into a klp relocation section (it does not name the section it \
                 applies to)",
                path.display(),
                String::from_utf8_lossy(&sec.name),
                r.r_offset
            );
        }
    }
    let mut converted = Vec::new();
    for ((object, _), (target, relocs)) in moved {
        let target_name = String::from_utf8_lossy(&b.sections.get(target).name).into_owned();
        let name = format!("{RELA_PREFIX}{object}.{target_name}");
        converted.push(Converted {
            section: name.clone(),
            relocations: relocs.len(),
        });
        let sec = b.sections.add();
        sec.name = name.into_bytes().into();
        sec.sh_type = elf::SHT_RELA;
        sec.sh_flags = u64::from(elf::SHF_ALLOC | elf::SHF_INFO_LINK | SHF_RELA_LIVEPATCH);
        sec.sh_link_section = Some(symtab);
        sec.sh_info_section = Some(target);
        sec.sh_addralign = 8;
        sec.sh_entsize = std::mem::size_of::<elf::Rela64<object::LittleEndian>>() as u64;
        sec.data = SectionData::Relocation(relocs);
    }
    write(path, b)?;
    Ok(converted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_as_the_kernel_reads_them() {
        let s = KlpSym::parse(".klp.sym.vmlinux.saved_command_line,0").unwrap();
        assert_eq!(
            s,
            KlpSym {
                object: "vmlinux".into(),
                name: "saved_command_line".into(),
                sympos: 0
            }
        );
        assert_eq!(s.to_string(), ".klp.sym.vmlinux.saved_command_line,0");
        let isra = KlpSym::parse(".klp.sym.btrfs.can_modify_feature.isra.3,2").unwrap();
        assert_eq!(
            (isra.object.as_str(), isra.name.as_str(), isra.sympos),
            ("btrfs", "can_modify_feature.isra.3", 2)
        );
        for bad in [
            "saved_command_line",
            ".klp.sym.vmlinux.name",
            ".klp.sym.vmlinux.name,x",
            ".klp.sym..name,0",
            ".klp.sym.vmlinux.,0",
        ] {
            assert_eq!(KlpSym::parse(bad), None, "{bad}");
        }
        assert_eq!(rela_object(".klp.rela.vmlinux..text.foo"), Some("vmlinux"));
        assert_eq!(rela_object(".rela.text"), None);
    }
}
