//! What the kernel object must satisfy before it is linked (undefined symbols, IBT landing
//! pads, sections), and objtool over it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::elf;
use crate::funcs::{Role, Wanted};
use crate::klp_rela::KlpSym;
use crate::status::Shell;

use super::*;

/// What the object needs of the kernel, for the check in the booted kernel.
#[derive(Debug, Default)]
pub(super) struct Needs {
    /// The functions the tables replace (none when the tables are of a format this cargo-klp
    /// cannot read).
    pub replaced: Vec<Wanted>,
    /// The kernel symbols the code uses that no export list has, by their name in the
    /// object: they are reached through livepatch relocations ([`crate::klp_rela`]).
    pub livepatch_symbols: BTreeMap<String, KlpSym>,
    /// The objects with a `pre_patch` hook, which can refuse the object when it loads.
    pub vetoing_objects: Vec<String>,
    /// The objects of the patch's tables.
    pub objects: Vec<String>,
    /// The livepatch symbols (by their name in the object) whose address the code takes,
    /// on a kernel with IBT; see [`Role::Used`].
    pub address_taken_under_ibt: BTreeSet<String>,
}

impl Needs {
    /// The modules the patch patches or uses symbols of, once each.
    pub fn module_objects(&self) -> Vec<String> {
        let mut modules: Vec<String> = self
            .objects
            .iter()
            .cloned()
            .chain(self.livepatch_symbols.values().map(|s| s.object.clone()))
            .filter(|o| o != klp_runtime::abi::VMLINUX)
            .collect();
        modules.sort();
        modules.dedup();
        modules
    }

    /// Every symbol to check in the kernel.
    pub fn wanted(&self) -> Vec<Wanted> {
        let used = self.livepatch_symbols.iter().map(|(in_object, s)| Wanted {
            object: s.object.clone(),
            name: s.name.clone(),
            sympos: s.sympos,
            role: Role::Used {
                address_taken_under_ibt: self.address_taken_under_ibt.contains(in_object),
            },
        });
        self.replaced.iter().cloned().chain(used).collect()
    }
}

/// A Rust symbol (legacy `_ZN` or v0 `_R` mangling), the Rust runtime's (`__rust_*`,
/// `rust_*`), or a compiler builtin (`__udivti3`, `__muloti4`): an undefined one is something
/// the module should carry and does not, never a kernel symbol to bind to (a kernel with
/// Rust has its own copies).
fn not_a_kernel_symbol(sym: &str) -> bool {
    sym.starts_with("_ZN")
        || sym.starts_with("_R")
        || sym.starts_with("__rust")
        || sym.starts_with("rust_")
        || (sym.starts_with("__") && (sym.ends_with("ti3") || sym.ends_with("ti4")))
}

/// Everything the module loader, modpost and the livepatch core would trip over, found
/// before linking, each with the fix. Returns what the object needs of the kernel.
pub(super) fn validate(
    shell: &Shell,
    path: &Path,
    tree: &KernelTree,
    license: &str,
    crate_name: &str,
) -> Result<Needs> {
    let data = std::fs::read(path)?;
    let file = object::File::parse(&*data)
        .with_context(|| format!("{}: not an object file", path.display()))?;
    let mut problems = Vec::new();

    // Each crate's items land in sections named after it; the module carries the patch
    // crate's only (the link script), so another crate's would be silently dropped.
    for (sec, other) in elf::foreign_tables(&file, crate_name) {
        problems.push(format!(
            "{}: section {sec}: crate `{other}` declares #[klp_func], #[klp_callbacks] or \
             #[klp_shadow] items, which the module would not carry: only the patch crate's \
             (`{crate_name}`) become its tables; move them into the patch crate (a dependency \
             may hold the code they call)",
            path.display()
        ));
    }

    for (sec, offset, ty) in elf::bad_relocations(&file) {
        problems.push(format!(
            "{}: section {sec} offset {offset:#x}: relocation {} is not applied by the kernel's module loader \
             (it takes 64, PC32, PLT32, 32, 32S, PC64); a GOT relocation means code was built without \
             -Crelocation-model=static",
            path.display(),
            elf::relocation_name(ty)
        ));
    }
    for sec in elf::writable_executable(&file) {
        problems.push(format!(
            "{}: section {sec} is writable and executable; the kernel refuses W+X",
            path.display()
        ));
    }

    let exports = tree.exports()?;
    let gpl = license.contains("GPL");
    let mut needs = Needs::default();
    let mut missing = Vec::new();
    for sym in elf::undefined_symbols(&file) {
        // The bounds the link script defines for each table section.
        let bound = sym
            .strip_prefix("__start_")
            .or_else(|| sym.strip_prefix("__stop_"))
            .is_some_and(|s| {
                klp_runtime::abi::section::TABLES
                    .iter()
                    .any(|t| t.crate_of(s).is_some())
            });
        let provided = klp_runtime::abi::INIT_PROVIDES.contains(&sym) || bound;
        match exports.get(sym) {
            _ if provided => {}
            Some((_, kind)) if kind.ends_with("_GPL") && !gpl => problems.push(format!(
                "`{sym}` is exported GPL-only ({kind}) but the module's license is `{license}`; \
                 set license = \"GPL\" in [package.metadata.klp]"
            )),
            Some(_) => {}
            None if not_a_kernel_symbol(sym) => missing.push(sym),
            // `#[klp_extern]` names the symbol as the kernel will.
            None if sym.starts_with(crate::klp_rela::SYM_PREFIX) => match KlpSym::parse(sym) {
                Some(klp) => {
                    needs.livepatch_symbols.insert(sym.to_string(), klp);
                }
                None => problems.push(format!(
                    "undefined symbol `{sym}` is not a livepatch symbol the kernel can read \
                     (.klp.sym.<object>.<name>,<sympos>); declare kernel symbols with \
                     #[klp_extern] instead of writing such names by hand"
                )),
            },
            // Not exported: a kernel symbol of vmlinux, reached through a livepatch
            // relocation if the kernel has exactly one of that name (checked in the kernel).
            None => {
                needs.livepatch_symbols.insert(
                    sym.to_string(),
                    KlpSym {
                        object: klp_runtime::abi::VMLINUX.to_string(),
                        name: sym.to_string(),
                        sympos: 0,
                    },
                );
            }
        }
    }
    if tree.config.ibt() {
        needs.address_taken_under_ibt = elf::address_uses(&file, &needs.livepatch_symbols);
    }
    if !missing.is_empty() {
        problems.push(format!(
            "{} Rust or compiler symbol(s) undefined: {}\n  (a `core`/`alloc` symbol or a \
             compiler builtin means it was not linked in; another crate's means the patch calls \
             code the module does not carry)",
            missing.len(),
            missing.join(", ")
        ));
    }

    match elf::read_patch(&file) {
        Ok(Some(patch)) => {
            needs.replaced = patch
                .funcs
                .iter()
                .map(|f| Wanted {
                    object: f.object.as_str().to_string(),
                    name: f.old_name.to_string(),
                    sympos: f.sympos,
                    role: Role::Replaced,
                })
                .collect();
            // A module's livepatch relocations are applied when the livepatch core sets up
            // that object of the patch (`klp_init_object_loaded`); for an object the patch
            // does not have, never, and the code would call or read address zero.
            let objects: Vec<&str> = patch
                .funcs
                .iter()
                .map(|f| f.object.as_str())
                .chain(patch.sets.iter().map(|s| s.object.as_str()))
                .collect();
            needs.objects = objects.iter().map(|o| o.to_string()).collect();
            needs.vetoing_objects = patch
                .sets
                .iter()
                .filter(|s| s.hooks[klp_runtime::abi::Hook::PrePatch as usize].is_some())
                .map(|s| s.object.as_str().to_string())
                .collect();
            for sym in needs.livepatch_symbols.values() {
                if sym.object != klp_runtime::abi::VMLINUX && !objects.contains(&sym.object.as_str()) {
                    problems.push(format!(
                        "kernel symbol `{}` of module {}: the patch has no #[klp_func] or \
                         #[klp_callbacks] for {}, so the livepatch core would never resolve it; \
                         use a module's symbols only in code that runs for that module's object",
                        sym.name, sym.object, sym.object
                    ));
                }
            }
            if let Some(max) = tree.max_symbol_name() {
                let long = patch
                    .funcs
                    .iter()
                    .map(|f| f.old_name)
                    .chain(needs.livepatch_symbols.values().map(|s| s.name.as_str()))
                    .filter(|n| n.len() > max);
                for name in long {
                    problems.push(format!(
                        "kernel symbol `{name}` is {} characters long; Linux {} takes names of \
                         at most {max} (KSYM_NAME_LEN in include/linux/kallsyms.h), and its \
                         kallsyms holds none longer",
                        name.len(),
                        tree.release
                    ));
                }
            }
            for e in klp_runtime::check::check(&patch) {
                problems.push(e.to_string());
            }
            if patch.funcs.is_empty() && patch.sets.is_empty() {
                problems.push("the patch declares no #[klp_func] and no #[klp_callbacks]: nothing to do".into());
            }
            if tree.config.ibt() {
                problems.extend(missing_endbr(&file, &patch));
            }
        }
        Ok(None) => problems.push(format!(
            "{}: no patch header; add `klp_runtime::patch!();` at the root of the crate",
            path.display()
        )),
        // The crate uses a klp-runtime newer than this cargo-klp. The module is consistent
        // (its init checks its tables against its own runtime), but the checks here cannot
        // read them.
        Err(elf::TablesError::Read { source: klp_runtime::reader::ReadError::TooNew { found, supported }, .. }) => {
            shell.warn(format!(
                "the crate's tables are format {found}; this cargo-klp reads up to {supported}, so the \
                 cross-item checks were skipped: update cargo-klp"
            ))
        }
        Err(e) => problems.push(format!("{}: {e}", path.display())),
    }

    if problems.is_empty() {
        Ok(needs)
    } else {
        bail!(
            "the kernel object is not loadable as it is:\n  - {}",
            problems.join("\n  - ")
        )
    }
}

/// Functions the kernel or the runtime call through a pointer must start with `endbr64`
/// under IBT. qemu does not enforce IBT, so this is checked here, statically.
pub(super) fn missing_endbr(
    file: &object::File<'_>,
    patch: &klp_runtime::reader::Patch<'_, &str>,
) -> Vec<String> {
    let mut referenced: Vec<&str> = patch.funcs.iter().filter_map(|f| f.new_func).collect();
    referenced.extend(
        patch
            .sets
            .iter()
            .flat_map(|s| s.hooks.iter().flatten().copied()),
    );
    referenced.extend(
        patch
            .shadows
            .iter()
            .flat_map(|t| [t.ctor, t.dtor])
            .flatten(),
    );
    referenced.sort_unstable();
    referenced.dedup();
    referenced
        .into_iter()
        .filter(|name| elf::function_prefix(file, name, 4) != Some(&elf::ENDBR64[..]))
        .map(|name| {
            format!("`{name}` is called through a pointer but does not start with endbr64 (IBT)")
        })
        .collect()
}

/// Runs objtool as Kbuild would; it must have nothing to say.
pub(super) fn objtool(
    shell: &Shell,
    tree: &KernelTree,
    object: &Path,
    staging: &Path,
) -> Result<()> {
    // When Kbuild runs objtool on the linked module (IBT kernels), it adds the ORC data
    // there; here we only check, on a copy.
    let target = if tree.config.objtool_on_link() {
        let copy = staging.join("objtool-check.o");
        std::fs::copy(object, &copy)?;
        copy
    } else {
        object.to_path_buf()
    };
    let mut cmd = tree
        .toolchain
        .command(tree.dir.join("tools/objtool/objtool"));
    // Debian's 6.12 objtool is a wrapper that picks the binary by SRCARCH, as Kbuild sets it.
    cmd.env("SRCARCH", "x86")
        .args(tree.config.objtool_args())
        .arg(&target);
    let out = run(shell, &mut cmd, "objtool")?;
    if !out.trim().is_empty() {
        bail!(
            "objtool reported problems in the Rust object:\n{}",
            out.trim_end()
        );
    }
    Ok(())
}
