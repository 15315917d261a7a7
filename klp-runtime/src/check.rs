//! Cross-item checks: what one attribute macro cannot see because it needs the whole crate.
//! Run when the simulator loads a patch and by `cargo klp build`.

use alloc::string::String;
use alloc::vec::Vec;

use crate::reader::Patch;

/// A rule broken across items; each message names both places.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    #[error("callback set id {id} is declared twice: at {first} and at {second}; give each set its own id")]
    DuplicateSet {
        id: u32,
        first: String,
        second: String,
    },
    #[error("shadow type {type_name} (id {shadow:#x}, at {origin}) is owned by callback set {owner}, which this patch does not declare; declare `#[klp_callbacks(id = {owner})]` or change `callbacks = {owner}`")]
    UnknownOwner {
        shadow: u64,
        type_name: String,
        owner: u32,
        origin: String,
    },
    #[error("shadow id {shadow:#x} is declared twice: at {first} and at {second}; each shadow type needs its own id")]
    DuplicateShadow {
        shadow: u64,
        first: String,
        second: String,
    },
    #[error("{object}:{name} (sympos {sympos}) is patched twice: at {first} and at {second}; keep one replacement")]
    DuplicateFunc {
        object: String,
        name: String,
        sympos: u32,
        first: String,
        second: String,
    },
    #[error("callback set id 0 at {origin}: ids start at 1")]
    ZeroSetId { origin: String },
}

/// The two origins of a clash, earlier declaration first (the linker's order is not the
/// source order). Origins end in `(file:line)`.
fn in_source_order(a: &str, b: &str) -> (String, String) {
    let key = |o: &str| {
        let loc = o
            .rsplit_once(" (")
            .map_or(o, |(_, l)| l.trim_end_matches(')'));
        let (file, line) = loc.rsplit_once(':').unwrap_or((loc, "0"));
        (String::from(file), line.parse::<u32>().unwrap_or(0))
    };
    if key(b) < key(a) {
        (b.into(), a.into())
    } else {
        (a.into(), b.into())
    }
}

/// All cross-item problems of a patch (empty when it is sound).
pub fn check<F>(patch: &Patch<'_, F>) -> Vec<CheckError> {
    let mut errors = Vec::new();
    for (i, s) in patch.sets.iter().enumerate() {
        if s.id == 0 {
            errors.push(CheckError::ZeroSetId {
                origin: s.origin.into(),
            });
        }
        if let Some(first) = patch.sets[..i].iter().find(|t| t.id == s.id) {
            let (first, second) = in_source_order(first.origin, s.origin);
            errors.push(CheckError::DuplicateSet {
                id: s.id,
                first,
                second,
            });
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
            let (first, second) = in_source_order(first.origin, t.origin);
            errors.push(CheckError::DuplicateShadow {
                shadow: t.id,
                first,
                second,
            });
        }
    }
    for (i, f) in patch.funcs.iter().enumerate() {
        let same = |g: &&crate::reader::Func<'_, F>| {
            g.object == f.object && g.old_name == f.old_name && g.sympos == f.sympos
        };
        if let Some(first) = patch.funcs[..i].iter().find(same) {
            let (first, second) = in_source_order(first.origin, f.origin);
            errors.push(CheckError::DuplicateFunc {
                object: f.object.into(),
                name: f.old_name.into(),
                sympos: f.sympos,
                first,
                second,
            });
        }
    }
    errors
}
