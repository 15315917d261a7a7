//! The module's livepatch relocations (`crate::klp_rela`), each with what it resolves to:
//! the kernel object, symbol and sympos the livepatch core will look up, and where in the
//! patch's code the address goes.

use object::elf;
use object::read::elf::{ElfFile64, SectionHeader, Sym};
use object::read::{Object, ObjectSection, ObjectSymbol};
use object::{LittleEndian, SectionIndex, SymbolIndex};
use serde::Serialize;

use crate::klp_rela::{rela_object, KlpSym};

/// One relocation of a `.klp.rela.<object>.<section>` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KlpRelocation {
    /// The object whose loading applies it (the section's).
    pub applied_with: String,
    /// What the livepatch core resolves: `None` fields when the symbol's name is not one
    /// it can read (the kernel refuses the module).
    pub object: Option<String>,
    pub symbol: String,
    pub sympos: Option<u32>,
    /// The patch's function the address is written into, and the offset in it.
    pub function: Option<String>,
    pub offset: u64,
    pub r_type: String,
}

/// Every livepatch relocation of a 64-bit little-endian ELF file (a `.ko` for x86-64);
/// problems (a relocation whose symbol is not a livepatch symbol, which the kernel
/// refuses) as warnings.
/// Every string it keeps is counted against `names` (a crafted file can point many
/// symbols at one long name).
pub(super) fn read(data: &[u8], names: &super::decode::Names) -> (Vec<KlpRelocation>, Vec<String>) {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    let Ok(file) = ElfFile64::<LittleEndian>::parse(data) else {
        return (out, warnings);
    };
    let endian = file.endian();
    for sym in file.symbols() {
        let name = sym.name().unwrap_or_default();
        if name.starts_with(crate::klp_rela::SYM_PREFIX)
            && sym.elf_symbol().st_shndx(endian) != crate::klp_rela::SHN_LIVEPATCH
        {
            warnings.push(format!(
                "symbol `{}` is not marked SHN_LIVEPATCH: the module loader would bind it to \
                 address 0 (a module cargo klp build did not finish)",
                names.own(name)
            ));
        }
    }
    let mut table: Option<Functions<'_>> = None;
    for sec in file.sections() {
        let Ok(name) = sec.name() else { continue };
        let Some(applied_with) = rela_object(name) else {
            continue;
        };
        let header = sec.elf_section_header();
        if header.sh_type(endian) != elf::SHT_RELA {
            continue;
        }
        let target = SectionIndex(header.sh_info(endian) as usize);
        let Ok(relas) = header.data_as_array::<elf::Rela64<LittleEndian>, _>(endian, data) else {
            warnings.push(format!("{}: relocations cannot be read", names.own(name)));
            continue;
        };
        for rela in relas {
            let offset = rela.r_offset.get(endian);
            let sym_index = SymbolIndex(rela.r_sym(endian, false) as usize);
            let symbol = file
                .symbol_by_index(sym_index)
                .ok()
                .and_then(|s| s.name().ok())
                .unwrap_or_default();
            let parsed = KlpSym::parse(symbol);
            if parsed.is_none() {
                warnings.push(format!(
                    "{} offset {offset:#x}: symbol `{}` is not a livepatch symbol \
                     (.klp.sym.<object>.<name>,<sympos>); the kernel refuses the module",
                    names.own(name),
                    names.own(symbol)
                ));
            }
            out.push(KlpRelocation {
                applied_with: names.own(applied_with),
                object: parsed.as_ref().map(|p| names.own(&p.object)),
                sympos: parsed.as_ref().map(|p| p.sympos),
                symbol: names.own(parsed.as_ref().map_or(symbol, |p| p.name.as_str())),
                function: function_at(
                    table.get_or_insert_with(|| functions(&file)),
                    target,
                    offset,
                )
                .map(|f| names.own(&f)),
                offset,
                r_type: crate::elf::relocation_name(rela.r_type(endian, false)),
            });
        }
    }
    (out, warnings)
}

/// The module's function symbols, `(section, start, end, name)`: read once, searched for
/// each relocation.
type Functions<'d> = Vec<(SectionIndex, u64, u64, &'d str)>;

fn functions<'d>(file: &ElfFile64<'d, LittleEndian>) -> Functions<'d> {
    file.symbols()
        .filter(|s| s.kind() == object::SymbolKind::Text)
        .filter_map(|s| {
            let start = s.address();
            let end = start.saturating_add(s.size().max(1));
            Some((s.section_index()?, start, end, s.name().ok()?))
        })
        .collect()
}

/// The function of `section` that covers `offset`, demangled, with the offset in it.
fn function_at(functions: &Functions<'_>, section: SectionIndex, offset: u64) -> Option<String> {
    let &(_, start, _, name) = functions
        .iter()
        .find(|&&(sec, start, end, _)| sec == section && (start..end).contains(&offset))?;
    let name = rustc_demangle::try_demangle(name)
        .map(|d| format!("{d:#}"))
        .unwrap_or_else(|_| name.to_string());
    Some(format!("{name}+{:#x}", offset - start))
}
