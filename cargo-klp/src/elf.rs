//! Reading our tables out of an object file (the crate's object or a linked `.ko`), and the
//! checks that decide whether the kernel's module loader will take an object.
//!
//! In a file, a table's pointer fields are relocations rather than values; this module is the
//! [`Resolver`] that turns them into strings and symbol names. The decoding itself is
//! `klp_runtime::reader`'s, shared with the kernel runtime and the simulator.

use std::collections::BTreeMap;
use std::ffi::CStr;

use klp_runtime::abi::{layout, section};
use klp_runtime::reader::{self, Patch, ReadError, Resolver, TableKind};
use object::elf;
use object::read::{Object, ObjectSection, ObjectSymbol, RelocationTarget};
use object::{RelocationFlags, SectionFlags, SectionIndex, SymbolIndex};

/// A relocation: the symbol and the addend.
type Reloc = (SymbolIndex, i64);

/// The sections holding one table in this file: the single merged section of a `.ko`, or
/// in a crate's object the sections the compiler emitted (one per entry, all the same name).
fn table_sections<'d, 'f>(
    file: &'f object::File<'d>,
    table: section::Section,
) -> Vec<object::Section<'d, 'f>> {
    let merged: Vec<_> = file
        .sections()
        .filter(|s| s.name() == Ok(table.ko))
        .collect();
    if !merged.is_empty() {
        return merged;
    }
    file.sections()
        .filter(|s| s.name().is_ok_and(|n| table.crate_of(n).is_some()))
        .collect()
}

/// One section's bytes and relocations: pointer fields resolved to what they point to.
/// Shared by the table reader and `inspect`'s decoders of C structures.
pub struct SectionRelocs<'d, 'f> {
    file: &'f object::File<'d>,
    relocs: BTreeMap<u64, Reloc>,
    data: &'d [u8],
}

impl<'d, 'f> SectionRelocs<'d, 'f> {
    pub fn of(file: &'f object::File<'d>, section: &object::Section<'d, 'f>) -> Self {
        let relocs = section
            .relocations()
            .filter_map(|(offset, r)| match r.target() {
                RelocationTarget::Symbol(sym) => Some((offset, (sym, r.addend()))),
                _ => None,
            })
            .collect();
        SectionRelocs {
            file,
            relocs,
            data: section.data().unwrap_or(&[]),
        }
    }

    pub fn of_index(file: &'f object::File<'d>, index: SectionIndex) -> Option<Self> {
        Some(Self::of(file, &file.section_by_index(index).ok()?))
    }

    /// Offsets in `range` that carry a relocation (none if the range is empty or reversed).
    pub fn offsets(&self, range: std::ops::Range<u64>) -> impl Iterator<Item = u64> + '_ {
        let end = range.end.max(range.start);
        self.relocs.range(range.start..end).map(|(o, _)| *o)
    }

    /// How many bytes of the section are in the file (none for `SHT_NOBITS`, whatever its
    /// header says its size is).
    pub fn data_len(&self) -> u64 {
        self.data.len() as u64
    }

    /// Whether the relocation at `offset` targets the symbol `sym`.
    pub fn targets_symbol(&self, offset: u64, sym: SymbolIndex) -> bool {
        self.relocs.get(&offset).is_some_and(|(s, _)| *s == sym)
    }

    pub fn u64_at(&self, offset: u64) -> Option<u64> {
        let o = usize::try_from(offset).ok()?;
        Some(u64::from_le_bytes(
            self.data.get(o..o.checked_add(8)?)?.try_into().ok()?,
        ))
    }

    pub fn byte_at(&self, offset: u64) -> Option<u8> {
        self.data.get(usize::try_from(offset).ok()?).copied()
    }

    fn symbol(&self, offset: u64) -> Result<(object::Symbol<'d, 'f>, i64), &'static str> {
        let &(sym, addend) = self
            .relocs
            .get(&offset)
            .ok_or("no relocation for the field")?;
        Ok((
            self.file
                .symbol_by_index(sym)
                .map_err(|_| "bad symbol index")?,
            addend,
        ))
    }

    /// The section and offset a pointer field points to.
    pub fn target(&self, offset: u64) -> Option<(SectionIndex, u64)> {
        let (sym, addend) = self.symbol(offset).ok()?;
        Some((
            sym.section_index()?,
            sym.address().checked_add_signed(addend)?,
        ))
    }

    /// A string pointer field: it must point into read-only data (a pointer into writable
    /// data or code is something else).
    pub fn string(&self, offset: u64) -> Result<&'d str, &'static str> {
        self.c_string(offset)?.to_str().map_err(|_| "not UTF-8")
    }

    /// A string field, as the C string (NUL-terminated) it points to.
    pub fn c_string(&self, offset: u64) -> Result<&'d CStr, &'static str> {
        let (sym, addend) = self.symbol(offset)?;
        let sec = self
            .file
            .section_by_index(sym.section_index().ok_or("symbol has no section")?)
            .map_err(|_| "bad section")?;
        let wx = u64::from(elf::SHF_WRITE | elf::SHF_EXECINSTR);
        if matches!(sec.flags(), SectionFlags::Elf { sh_flags } if sh_flags & wx != 0) {
            return Err("points into writable data or code, not a string");
        }
        let data = sec.data().map_err(|_| "section has no data")?;
        let start = sym
            .address()
            .checked_add_signed(addend)
            .and_then(|a| usize::try_from(a).ok())
            .ok_or("offset outside the address space")?;
        let bytes = data.get(start..).ok_or("offset past its section")?;
        CStr::from_bytes_until_nul(bytes).map_err(|_| "no NUL")
    }

    /// A function pointer field, as the name of the function it points to; `None` if null.
    pub fn function(&self, offset: u64) -> Result<Option<&'d str>, &'static str> {
        if !self.relocs.contains_key(&offset) {
            return Ok(None);
        }
        let (sym, addend) = self.symbol(offset)?;
        if sym.kind() != object::SymbolKind::Section && addend == 0 {
            return sym.name().map(Some).map_err(|_| "symbol name");
        }
        // A section symbol plus an offset: name the function that starts there.
        let index = sym
            .section_index()
            .ok_or("function symbol has no section")?;
        let at = sym
            .address()
            .checked_add_signed(addend)
            .ok_or("offset outside the address space")?;
        self.file
            .symbols()
            .find(|s| {
                s.section_index() == Some(index)
                    && s.address() == at
                    && s.kind() == object::SymbolKind::Text
            })
            .and_then(|s| s.name().ok())
            .map(Some)
            .ok_or("no function symbol at the target")
    }
}

impl<'d> Resolver<'d> for SectionRelocs<'d, '_> {
    type Func = &'d str;

    fn string(&self, table: TableKind, offset: usize, _raw: u64) -> Result<&'d CStr, ReadError> {
        SectionRelocs::c_string(self, offset as u64).map_err(|why| ReadError::BadString {
            table,
            offset,
            why,
        })
    }

    fn func(
        &self,
        table: TableKind,
        offset: usize,
        _raw: u64,
    ) -> Result<Option<&'d str>, ReadError> {
        self.function(offset as u64)
            .map_err(|why| ReadError::Unresolved { table, offset, why })
    }
}

/// Why a file's tables cannot be read: the table and offset inside the named section.
#[derive(Debug, thiserror::Error)]
pub enum TablesError {
    #[error("section {section}: {source}")]
    Read { section: String, source: ReadError },
    #[error("section {section} cannot be read: {why}")]
    Section { section: String, why: String },
    #[error(
        "{count} patch headers (sections {section}); a patch crate has one `klp_runtime::patch!()`"
    )]
    Headers { count: usize, section: String },
}

/// A section's name for a message: a crafted file's names can be as long as the file.
fn section_name(sec: &object::Section<'_, '_>) -> String {
    const SHOWN: usize = 80;
    let name = sec.name().unwrap_or("?");
    match name.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}...", &name[..cut]),
        None => name.to_string(),
    }
}

fn section_data<'d>(sec: &object::Section<'d, '_>) -> Result<&'d [u8], TablesError> {
    sec.data().map_err(|e| TablesError::Section {
        section: section_name(sec),
        why: e.to_string(),
    })
}

/// Reads the patch tables of an object or `.ko`; `None` if it has no klp-rs header.
pub fn read_patch<'d>(file: &object::File<'d>) -> Result<Option<Patch<'d, &'d str>>, TablesError> {
    let headers: Vec<_> = table_sections(file, section::PATCH)
        .into_iter()
        .filter(|s| s.size() > 0)
        .collect();
    let header = match headers.as_slice() {
        [] => return Ok(None),
        [h] => h,
        more => {
            let mut section = more
                .iter()
                .take(4)
                .map(section_name)
                .collect::<Vec<_>>()
                .join(", ");
            if more.len() > 4 {
                section += ", ...";
            }
            return Err(TablesError::Headers {
                count: more.len(),
                section,
            });
        }
    };
    let wrap = |sec: &object::Section<'d, '_>| {
        let section = section_name(sec);
        move |source| TablesError::Read { section, source }
    };
    let data = section_data(header)?;
    let version = reader::header_version(data).map_err(wrap(header))?;
    let name = SectionRelocs::of(file, header)
        .string(layout::HEADER_NAME as u64)
        .map_err(|why| ReadError::BadString {
            table: TableKind::Header,
            offset: layout::HEADER_NAME,
            why,
        })
        .map_err(wrap(header))?;
    let mut patch = Patch {
        name,
        format_version: version,
        funcs: vec![],
        sets: vec![],
        shadows: vec![],
    };
    // Each section is decoded on its own (its relocations are its own), then merged: the
    // section's bytes go in its table's place, the others are empty.
    for (i, table) in section::TABLES.into_iter().enumerate() {
        for sec in table_sections(file, table) {
            let mut tables: [&[u8]; 3] = [&[]; 3];
            tables[i] = section_data(&sec)?;
            let [funcs, sets, shadows] = tables;
            let relocs = SectionRelocs::of(file, &sec);
            let p = reader::read_tables(&relocs, name, version, funcs, sets, shadows)
                .map_err(wrap(&sec))?;
            patch.funcs.extend(p.funcs);
            patch.sets.extend(p.sets);
            patch.shadows.extend(p.shadows);
        }
    }
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
    let mut v: Vec<&str> = file
        .symbols()
        .filter(|s| s.is_undefined() && s.is_global())
        .filter_map(|s| s.name().ok())
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The first bytes of a function symbol, if it is defined here.
pub fn function_prefix<'d>(file: &object::File<'d>, name: &str, len: usize) -> Option<&'d [u8]> {
    let sym = file
        .symbols()
        .find(|s| s.name() == Ok(name) && !s.is_undefined())?;
    let sec = file.section_by_index(sym.section_index()?).ok()?;
    let data = sec.data().ok()?;
    let start = usize::try_from(sym.address()).ok()?;
    data.get(start..start.checked_add(len)?)
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
        elf::R_X86_64_64 => "R_X86_64_64".into(),
        elf::R_X86_64_PC32 => "R_X86_64_PC32".into(),
        elf::R_X86_64_PLT32 => "R_X86_64_PLT32".into(),
        elf::R_X86_64_32 => "R_X86_64_32".into(),
        elf::R_X86_64_32S => "R_X86_64_32S".into(),
        elf::R_X86_64_PC64 => "R_X86_64_PC64".into(),
        other => format!("type {other}"),
    }
}

/// Table sections of crates other than `crate_name` (section name, crate name): the macros
/// name each crate's sections `klp_rs_<kind>_<crate>` (see `klp_runtime::abi::section`).
pub fn foreign_tables(file: &object::File<'_>, crate_name: &str) -> Vec<(String, String)> {
    use klp_runtime::abi::section;
    use object::{Object, ObjectSection};
    file.sections()
        .filter_map(|s| s.name().ok().map(str::to_string))
        .filter_map(|name| {
            let other = section::ALL
                .iter()
                .find_map(|t| t.crate_of(&name))?
                .to_string();
            (other != crate_name).then_some((name, other))
        })
        .collect()
}

/// Of the undefined symbols named in `symbols`, those some loaded code or data uses other
/// than as the target of a direct `call`/`jmp` (an `R_X86_64_PLT32`, or a `PC32` right after
/// the `e8`/`e9` opcode): their address is taken.
pub fn address_uses<V>(
    file: &object::File<'_>,
    symbols: &BTreeMap<String, V>,
) -> std::collections::BTreeSet<String> {
    let mut taken = std::collections::BTreeSet::new();
    for section in file.sections() {
        let loaded = matches!(section.flags(), SectionFlags::Elf { sh_flags }
            if sh_flags & u64::from(elf::SHF_ALLOC) != 0);
        if !loaded {
            continue;
        }
        let data = section.data().unwrap_or(&[]);
        for (offset, r) in section.relocations() {
            let RelocationTarget::Symbol(index) = r.target() else {
                continue;
            };
            let Some(name) = file
                .symbol_by_index(index)
                .ok()
                .and_then(|s| s.name().ok())
                .filter(|n| symbols.contains_key(*n))
            else {
                continue;
            };
            let RelocationFlags::Elf { r_type } = r.flags() else {
                continue;
            };
            let opcode = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_sub(1))
                .and_then(|o| data.get(o));
            let direct = r_type == elf::R_X86_64_PLT32
                || (r_type == elf::R_X86_64_PC32 && matches!(opcode, Some(0xe8 | 0xe9)));
            if !direct {
                taken.insert(name.to_string());
            }
        }
    }
    taken
}
