//! Reading our tables out of an object file (the crate's object or a linked `.ko`), and the
//! checks that decide whether the kernel's module loader will take an object.
//!
//! In a file, a table's pointer fields are relocations rather than values; this module is the
//! [`Resolver`] that turns them into strings and symbol names. The decoding itself is
//! `klp_runtime::reader`'s, shared with the kernel runtime and the simulator.

use std::collections::BTreeMap;

use klp_runtime::abi::{layout, section};
use klp_runtime::reader::{self, Patch, ReadError, Resolver, TableKind};
use object::elf;
use object::read::{Object, ObjectSection, ObjectSymbol, RelocationTarget};
use object::{RelocationFlags, SectionFlags, SectionIndex, SymbolIndex};

/// A relocation: the symbol and the addend.
type Reloc = (SymbolIndex, i64);

/// The tables' section of one kind in this file: the `.ko` name or a crate object's.
fn table_section<'d, 'f>(file: &'f object::File<'d>, ko: &str, prefix: &str) -> Option<object::Section<'d, 'f>> {
    file.section_by_name(ko).or_else(|| {
        file.sections().find(|s| s.name().is_ok_and(|n| n.strip_prefix(prefix).is_some_and(|r| r.starts_with('_'))))
    })
}

/// Resolves pointer fields through the relocations of the table sections.
struct Relocations<'d, 'f> {
    file: &'f object::File<'d>,
    relocs: BTreeMap<(u8, u64), Reloc>,
}

fn kind_key(t: TableKind) -> u8 {
    t as u8
}

impl<'d> Relocations<'d, '_> {
    fn reloc(&self, table: TableKind, offset: usize) -> Result<Option<Reloc>, ReadError> {
        Ok(self.relocs.get(&(kind_key(table), offset as u64)).copied())
    }

    fn section_bytes(&self, index: SectionIndex) -> Option<&'d [u8]> {
        self.file.section_by_index(index).ok()?.data().ok()
    }
}

impl<'d> Resolver<'d> for Relocations<'d, '_> {
    type Func = &'d str;

    fn string(&self, table: TableKind, offset: usize, _raw: u64) -> Result<&'d str, ReadError> {
        let unresolved = |why| ReadError::Unresolved { table, offset, why };
        let (sym, addend) = self.reloc(table, offset)?.ok_or(unresolved("no relocation for a string field"))?;
        let sym = self.file.symbol_by_index(sym).map_err(|_| unresolved("bad symbol index"))?;
        let index = sym.section_index().ok_or(unresolved("string symbol has no section"))?;
        let data = self.section_bytes(index).ok_or(unresolved("string section has no data"))?;
        let start = usize::try_from(sym.address() as i64 + addend).map_err(|_| unresolved("negative string offset"))?;
        let bytes = data.get(start..).ok_or(unresolved("string offset past its section"))?;
        let end = bytes.iter().position(|b| *b == 0).ok_or(ReadError::BadString { table, offset, why: "no NUL" })?;
        std::str::from_utf8(&bytes[..end]).map_err(|_| ReadError::BadString { table, offset, why: "not UTF-8" })
    }

    fn func(&self, table: TableKind, offset: usize, _raw: u64) -> Result<Option<&'d str>, ReadError> {
        let unresolved = |why| ReadError::Unresolved { table, offset, why };
        let Some((sym, addend)) = self.reloc(table, offset)? else { return Ok(None) };
        let sym = self.file.symbol_by_index(sym).map_err(|_| unresolved("bad symbol index"))?;
        if sym.kind() != object::SymbolKind::Section && addend == 0 {
            return sym.name().map(Some).map_err(|_| unresolved("symbol name"));
        }
        // A section symbol plus an offset: name the function that starts there.
        let index = sym.section_index().ok_or(unresolved("function symbol has no section"))?;
        let at = sym.address() as i64 + addend;
        self.file
            .symbols()
            .find(|s| {
                s.section_index() == Some(index) && s.address() as i64 == at && s.kind() == object::SymbolKind::Text
            })
            .and_then(|s| s.name().ok())
            .map(Some)
            .ok_or(unresolved("no function symbol at the target"))
    }
}

/// Why a file's tables cannot be read: the table and offset inside the named section.
#[derive(Debug, thiserror::Error)]
pub enum TablesError {
    #[error("section {section}: {source}")]
    Read { section: String, source: ReadError },
    #[error("section {section} cannot be read: {why}")]
    Section { section: String, why: String },
}

/// Reads the patch tables of an object or `.ko`; `None` if it has no klp-rs header.
pub fn read_patch<'d>(file: &object::File<'d>) -> Result<Option<Patch<'d, &'d str>>, TablesError> {
    let Some(header) = table_section(file, section::KO_PATCH, section::PATCH) else { return Ok(None) };
    let header_name = header.name().unwrap_or("?").to_string();
    let kinds = [
        (TableKind::Header, Some(header)),
        (TableKind::Funcs, table_section(file, section::KO_FUNCS, section::FUNCS)),
        (TableKind::Sets, table_section(file, section::KO_SETS, section::SETS)),
        (TableKind::Shadows, table_section(file, section::KO_SHADOWS, section::SHADOWS)),
    ];
    let mut relocs = BTreeMap::new();
    let mut data: [&'d [u8]; 4] = [&[]; 4];
    for (i, (kind, sec)) in kinds.iter().enumerate() {
        let Some(sec) = sec else { continue };
        let name = sec.name().unwrap_or("?").to_string();
        let bad = |why: String| TablesError::Section { section: name.clone(), why };
        data[i] = sec.data().map_err(|e| bad(e.to_string()))?;
        for (offset, r) in sec.relocations() {
            if let RelocationTarget::Symbol(sym) = r.target() {
                relocs.insert((kind_key(*kind), offset), (sym, r.addend()));
            }
        }
    }
    let wrap = |section: &str| {
        let section = section.to_string();
        move |source| TablesError::Read { section, source }
    };
    let version = reader::header_version(data[0]).map_err(wrap(&header_name))?;
    let r = Relocations { file, relocs };
    let name = r.string(TableKind::Header, layout::HEADER_NAME, 0).map_err(wrap(&header_name))?;
    let patch = reader::read_tables(&r, name, version, data[1], data[2], data[3]).map_err(wrap("klp-rs tables"))?;
    Ok(Some(patch))
}

/// Relocation types the x86-64 module loader applies (arch/x86/kernel/module.c).
pub const LOADER_RELOCATIONS: [u32; 7] = [
    elf::R_X86_64_NONE,
    elf::R_X86_64_64,
    elf::R_X86_64_PC32,
    elf::R_X86_64_PLT32,
    elf::R_X86_64_32,
    elf::R_X86_64_32S,
    elf::R_X86_64_PC64,
];

/// Relocations in loaded sections that the module loader would refuse, as
/// `(section, offset, type)`.
pub fn bad_relocations(file: &object::File<'_>) -> Vec<(String, u64, u32)> {
    let mut bad = Vec::new();
    for sec in file.sections() {
        let alloc = matches!(sec.flags(), SectionFlags::Elf { sh_flags } if sh_flags & u64::from(elf::SHF_ALLOC) != 0);
        if !alloc {
            continue;
        }
        for (offset, r) in sec.relocations() {
            if let RelocationFlags::Elf { r_type } = r.flags() {
                if !LOADER_RELOCATIONS.contains(&r_type) {
                    bad.push((sec.name().unwrap_or("?").to_string(), offset, r_type));
                }
            }
        }
    }
    bad
}

/// Sections that are both writable and executable.
pub fn writable_executable(file: &object::File<'_>) -> Vec<String> {
    let wx = u64::from(elf::SHF_WRITE | elf::SHF_EXECINSTR);
    file.sections()
        .filter(|s| matches!(s.flags(), SectionFlags::Elf { sh_flags } if sh_flags & wx == wx))
        .map(|s| s.name().unwrap_or("?").to_string())
        .collect()
}

/// Undefined global symbols, sorted.
pub fn undefined_symbols<'d>(file: &object::File<'d>) -> Vec<&'d str> {
    let mut v: Vec<&str> =
        file.symbols().filter(|s| s.is_undefined() && s.is_global()).filter_map(|s| s.name().ok()).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The first bytes of a function symbol, if it is defined here.
pub fn function_prefix<'d>(file: &object::File<'d>, name: &str, len: usize) -> Option<&'d [u8]> {
    let sym = file.symbols().find(|s| s.name() == Ok(name) && !s.is_undefined())?;
    let sec = file.section_by_index(sym.section_index()?).ok()?;
    let data = sec.data().ok()?;
    let start = usize::try_from(sym.address()).ok()?;
    data.get(start..start + len)
}

/// `endbr64`.
pub const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];

/// Name of a relocation type, for messages.
pub fn relocation_name(r_type: u32) -> String {
    match r_type {
        elf::R_X86_64_GOTPCREL => "R_X86_64_GOTPCREL".into(),
        elf::R_X86_64_REX_GOTPCRELX => "R_X86_64_REX_GOTPCRELX".into(),
        elf::R_X86_64_GOTPCRELX => "R_X86_64_GOTPCRELX".into(),
        elf::R_X86_64_TPOFF32 => "R_X86_64_TPOFF32".into(),
        other => format!("type {other}"),
    }
}
