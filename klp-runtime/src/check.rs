//! Cross-item checks: what one attribute macro cannot see because it needs the whole crate.
//! Run when the simulator loads a patch and by `cargo klp build`.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::reader::{ObjectName, Origin, Patch};

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
    #[error("shadow type {type_name} (at {origin}) has id {shadow:#x}, wider than 24 bits: klp-rs shadow ids go up to {max:#x}, under the klp-rs namespace that keeps them apart from C patches' ids")]
    ShadowIdTooWide {
        shadow: u64,
        type_name: String,
        origin: String,
        max: u64,
    },
}

/// The two origins of a clash, earlier declaration first (the linker's order is not the
/// source order).
fn in_source_order(a: Origin<'_>, b: Origin<'_>) -> (String, String) {
    let (a, b) = if b.source_order() < a.source_order() {
        (b, a)
    } else {
        (a, b)
    };
    (a.to_string(), b.to_string())
}

/// All cross-item problems of a patch (empty when it is sound).
pub fn check<F>(patch: &Patch<'_, F>) -> Vec<CheckError> {
    let mut errors = Vec::new();
    for (i, s) in patch.sets.iter().enumerate() {
        if s.id == 0 {
            errors.push(CheckError::ZeroSetId {
                origin: s.origin.to_string(),
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
        if t.id > crate::abi::SHADOW_ID_MAX {
            errors.push(CheckError::ShadowIdTooWide {
                shadow: t.id,
                type_name: t.type_name.into(),
                origin: t.origin.to_string(),
                max: crate::abi::SHADOW_ID_MAX,
            });
        }
        if patch.set(t.owner).is_none() {
            errors.push(CheckError::UnknownOwner {
                shadow: t.id,
                type_name: t.type_name.into(),
                owner: t.owner,
                origin: t.origin.to_string(),
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
                object: f.object.as_str().into(),
                name: f.old_name.into(),
                sympos: f.sympos,
                first,
                second,
            });
        }
    }
    errors
}

/// A shadow type's layout, as a replace must keep it for the variables to carry over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShadowLayout<'a> {
    pub type_name: &'a str,
    pub size: u32,
    pub align: u32,
}

impl core::fmt::Display for ShadowLayout<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = if self.size == 1 { "" } else { "s" };
        write!(
            f,
            "`{}` ({} byte{s}, align {})",
            self.type_name, self.size, self.align
        )
    }
}

/// Why one patch cannot take over from another: checked before anything runs, by the kernel
/// runtime (which refuses the load), the simulator and `cargo klp inspect --against`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict<'a> {
    /// A replace: a shadow id both patches declare, with different layouts. Variables carry
    /// over by id, so the incoming code would read the outgoing layout.
    ShadowLayout {
        id: u64,
        old: ShadowLayout<'a>,
        new: ShadowLayout<'a>,
    },
    /// A replace: a shadow id both patches declare, which the outgoing patch's table format
    /// handed to the kernel as it was and the incoming one puts in the klp-rs namespace
    /// ([`crate::abi::shadow_key`]): its variables would not carry over.
    ShadowNamespace { id: u64, old_format: u32 },
    /// A replace: a callback set id both patches have, on different objects. A set id names
    /// one object and one behaviour; the kernel refuses it too where its core runs the sets.
    SetMoved {
        id: u32,
        old: ObjectName<'a>,
        new: ObjectName<'a>,
    },
    /// A stacking patch (`replace = false`) has a callback set id the patch below it has:
    /// disabling it would tear down the set the patch below keeps.
    StackedSet { id: u32 },
    /// A stacking patch has a shadow id the patch below it has: disabling it would free the
    /// variables the patch below still uses.
    StackedShadow { id: u64 },
}

impl core::fmt::Display for Conflict<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Conflict::ShadowLayout { id, old, new } => write!(
                f,
                "shadow {id:#x} is {old} in the outgoing patch and {new} in the incoming one, \
                 and its variables would pass from one layout to the other; give the new \
                 layout a new shadow id"
            ),
            Conflict::ShadowNamespace { id, old_format } => write!(
                f,
                "shadow {id:#x} is shared, but the outgoing patch's tables (format \
                 {old_format}) keyed its variables by the bare id, which this format keeps \
                 apart from C patches' ids, so they would not carry over; give the type a new \
                 shadow id (the outgoing one's variables are then freed with its set)"
            ),
            Conflict::SetMoved { id, old, new } => write!(
                f,
                "callback set {id} is on {old} in the outgoing patch and on {new} in the \
                 incoming one, and a set is taken over as it is, on its object; give the set on \
                 {new} a new id"
            ),
            Conflict::StackedSet { id } => write!(
                f,
                "callback set {id} is also in the patch below, and disabling the stacked patch \
                 would tear it down; give the stacked patch's sets ids the patch below does \
                 not use, or build it with replace = true"
            ),
            Conflict::StackedShadow { id } => write!(
                f,
                "shadow {id:#x} is also in the patch below, and disabling the stacked patch \
                 would free the variables it still uses; give the stacked patch's shadow \
                 types ids the patch below does not use, or build it with replace = true"
            ),
        }
    }
}

fn layout<'a, F>(t: &crate::reader::ShadowType<'a, F>) -> ShadowLayout<'a> {
    ShadowLayout {
        type_name: t.type_name,
        size: t.size,
        align: t.align,
    }
}

/// What keeps `new` from replacing `old` (empty when nothing does).
pub fn replace_conflicts<'p, 'a, F, G>(
    old: &'p Patch<'a, F>,
    new: &'p Patch<'a, G>,
) -> impl Iterator<Item = Conflict<'a>> + 'p {
    let moved = new.sets.iter().filter_map(move |n| {
        let o = old.sets.iter().find(|o| o.id == n.id)?;
        (o.object != n.object).then_some(Conflict::SetMoved {
            id: n.id,
            old: o.object,
            new: n.object,
        })
    });
    moved.chain(new.shadows.iter().filter_map(move |n| {
        let o = old.shadows.iter().find(|o| o.id == n.id)?;
        let key = |format| crate::abi::shadow_key(format, n.id);
        if key(old.format_version) != key(new.format_version) {
            return Some(Conflict::ShadowNamespace {
                id: n.id,
                old_format: old.format_version,
            });
        }
        let (old_layout, new_layout) = (layout(o), layout(n));
        (old_layout != new_layout).then_some(Conflict::ShadowLayout {
            id: n.id,
            old: old_layout,
            new: new_layout,
        })
    }))
}

/// What keeps `top` (built with `replace = false`) from stacking on `below`.
pub fn stack_conflicts<'p, 'a, F, G>(
    below: &'p Patch<'a, F>,
    top: &'p Patch<'a, G>,
) -> impl Iterator<Item = Conflict<'a>> + 'p {
    let sets = top
        .sets
        .iter()
        .filter(|s| below.set(s.id).is_some())
        .map(|s| Conflict::StackedSet { id: s.id });
    let shadows = top
        .shadows
        .iter()
        .filter(|t| below.shadows.iter().any(|b| b.id == t.id))
        .map(|t| Conflict::StackedShadow { id: t.id });
    sets.chain(shadows)
}
