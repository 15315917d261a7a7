//! Cross-item checks: what one attribute macro cannot see because it needs the whole crate.
//! Run when the simulator loads a patch and by `cargo klp build`.

use alloc::string::String;
use alloc::vec::Vec;

use crate::reader::Patch;

/// A rule broken across items; each message names both places.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    #[error("callback set id {id} is declared twice: at {first} and at {second}; give each set its own id")]
    DuplicateSet { id: u32, first: String, second: String },
    #[error("shadow type {type_name} (id {shadow:#x}, at {origin}) is owned by callback set {owner}, which this patch does not declare; declare `#[klp_callbacks(id = {owner})]` or change `callbacks = {owner}`")]
    UnknownOwner { shadow: u64, type_name: String, owner: u32, origin: String },
    #[error("shadow id {shadow:#x} is declared twice: at {first} and at {second}; each shadow type needs its own id")]
    DuplicateShadow { shadow: u64, first: String, second: String },
    #[error("{object}:{name} (sympos {sympos}) is patched twice: at {first} and at {second}; keep one replacement")]
    DuplicateFunc { object: String, name: String, sympos: u32, first: String, second: String },
    #[error("callback set id 0 at {origin}: ids start at 1")]
    ZeroSetId { origin: String },
}

/// All cross-item problems of a patch (empty when it is sound).
pub fn check<F>(patch: &Patch<'_, F>) -> Vec<CheckError> {
    let mut errors = Vec::new();
    for (i, s) in patch.sets.iter().enumerate() {
        if s.id == 0 {
            errors.push(CheckError::ZeroSetId { origin: s.origin.into() });
        }
        if let Some(first) = patch.sets[..i].iter().find(|t| t.id == s.id) {
            errors.push(CheckError::DuplicateSet { id: s.id, first: first.origin.into(), second: s.origin.into() });
        }
    }
    for (i, t) in patch.shadows.iter().enumerate() {
        if patch.set(t.owner).is_none() {
            errors.push(CheckError::UnknownOwner {
                shadow: t.id,
                type_name: t.type_name.into(),
                owner: t.owner,
                origin: t.origin.into(),
            });
        }
        if let Some(first) = patch.shadows[..i].iter().find(|u| u.id == t.id) {
            errors.push(CheckError::DuplicateShadow { shadow: t.id, first: first.origin.into(), second: t.origin.into() });
        }
    }
    for (i, f) in patch.funcs.iter().enumerate() {
        let same = |g: &&crate::reader::Func<'_, F>| g.object == f.object && g.old_name == f.old_name && g.sympos == f.sympos;
        if let Some(first) = patch.funcs[..i].iter().find(same) {
            errors.push(CheckError::DuplicateFunc {
                object: f.object.into(),
                name: f.old_name.into(),
                sympos: f.sympos,
                first: first.origin.into(),
                second: f.origin.into(),
            });
        }
    }
    errors
}
