//! The decoders: klp-rs tables, upstream klp-build's `.klp.*` sections, and a C patch's
//! static `klp_patch` structures, into a report's objects.

use std::cell::Cell;

use klp_runtime::reader::Patch;
use object::read::{Object as _, ObjectSection, ObjectSymbol};
use object::SectionIndex;

use crate::elf::SectionRelocs;

use super::*;

/// Copies of names out of a file into its report, limited in total to twice the file: a
/// crafted file can point many entries (table fields, symbols, section headers) at one long
/// string, and each copy would cost all of it. Past the limit names are left empty and the
/// file is an error.
pub(super) struct Names {
    pub(super) left: Cell<usize>,
    pub(super) exhausted: Cell<bool>,
}

impl Names {
    pub(super) fn for_file(len: usize) -> Self {
        Names {
            left: Cell::new(len.saturating_mul(2).saturating_add(64 << 10)),
            exhausted: Cell::new(false),
        }
    }

    pub(super) fn own(&self, s: &str) -> String {
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

    pub(super) fn check(&self, len: usize) -> Result<(), String> {
        if self.exhausted.get() {
            return Err(format!(
                "the names its tables, symbols and sections give add up to more than twice its \
                 {len} bytes: many entries point at the same long string"
            ));
        }
        Ok(())
    }
}

pub(super) fn hook_names(hooks: &[Option<&str>; 4], names: &Names) -> CallbackSet {
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
pub(super) fn klp_rs_objects(p: &Patch<'_, &str>, names: &Names) -> Vec<KlpObject> {
    let mut objects: Vec<&str> = vec![klp_runtime::abi::VMLINUX];
    for n in p
        .funcs
        .iter()
        .map(|f| f.object.as_str())
        .chain(p.sets.iter().map(|s| s.object.as_str()))
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
        .filter(|o| {
            klp_runtime::abi::is_vmlinux(&o.name)
                || !o.functions.is_empty()
                || !o.callback_sets.is_empty()
        })
        .collect()
}

/// upstream klp-build's compact tables (include/linux/livepatch_external.h):
/// `klp_object_ext` { name, funcs, callbacks{4 fn ptrs, bool}, nr_funcs } is 64 bytes,
/// `klp_func_ext` { old_name, new_func, sympos } is 24. An object's functions must lie in
/// `.init.klp_funcs`: a count past its end is an error, not that many entries.
pub(super) fn klp_build_objects(
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
            name: names.own(or.string(base).unwrap_or(klp_runtime::abi::VMLINUX)),
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
pub(super) fn c_static_patch(
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
                name: names.own(name.unwrap_or(klp_runtime::abi::VMLINUX)),
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
pub(super) fn symbol_end(file: &object::File<'_>, sec: SectionIndex, at: u64) -> Option<u64> {
    file.symbols()
        .filter(|s| s.section_index() == Some(sec) && s.size() > 0)
        .map(|s| (s.address(), s.address().saturating_add(s.size())))
        .filter(|(start, end)| *start <= at && at < *end)
        .map(|(_, end)| end)
        .min()
}
