//! The replace planner: pure functions from tables to ordered steps. The kernel dispatcher,
//! the simulator and `cargo klp inspect --against` all call these, so what `inspect` predicts
//! is what the kernel runs.
//!
//! A callback set is known by its id. On replace OLD -> NEW, sets whose id is in both patches
//! run nothing; the others run:
//!
//! ```text
//! before:  NEW-only pre_patch (ascending id), OLD-only pre_unpatch (descending id)
//!          -- transition --
//! after:   OLD-only post_unpatch (descending id), each followed by freeing the shadow
//!          types that set owns; NEW-only post_patch (ascending id)
//! ```
//!
//! A set's hooks run only while its object is loaded; a leaving set's shadow types are freed
//! whether or not its object is loaded. A shadow id that a surviving set also owns is not
//! freed: the kernel keys shadow variables by id, so they carry over. A shadow type that a
//! kept set no longer owns in the new patch is freed in that set's place among the outgoing
//! sets (descending id), as the kernel does where its core runs the sets.

mod run;
mod transition;

use alloc::vec::Vec;

pub use run::{run, run_before, Runner, StepLine};
pub use transition::Transition;

use crate::fallible::{self, AllocError};
use crate::reader::{ObjectName, Patch};

pub use crate::abi::Hook;

/// Whose tables a step belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The patch being replaced (or disabled, or whose module object comes and goes).
    Old,
    /// The incoming patch.
    New,
}

/// One thing the runtime does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<'a> {
    /// Call a set's hook. `defined` is false when the set has no such hook: nothing is called,
    /// but the step still marks where the set is set up or torn down.
    Hook {
        side: Side,
        set: u32,
        object: ObjectName<'a>,
        hook: Hook,
        defined: bool,
    },
    /// `klp_shadow_free_all(shadow, dtor)` for a shadow type owned by `set`.
    FreeShadow { side: Side, set: u32, shadow: u64 },
}

/// A step of the part before the transition, with what undoes it should the plan be cancelled
/// (a later `pre_patch` fails) or the transition reversed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned<'a> {
    pub step: Step<'a>,
    pub undo: Vec<Step<'a>>,
}

/// What an operation runs: `before` the transition, then (if `transition`) the kernel's
/// transition, then `after`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan<'a> {
    pub before: Vec<Planned<'a>>,
    pub transition: bool,
    pub after: Vec<Step<'a>>,
    /// For a [`replace_object`] plan: shadow ids that sets on the late module keep alive, which
    /// the main plan (made before the module loaded) would otherwise free.
    pub keeps: Vec<u64>,
    /// Shadow types of the incoming patch that no undo of `before` frees and that the
    /// outgoing patch does not keep (types of sets both patches have, or of sets whose module
    /// is not loaded): the incoming patched code may have attached them during the
    /// transition, so a reversal frees them too.
    pub reverse_frees: Vec<Step<'a>>,
}

impl<'a> Plan<'a> {
    /// The steps that undo `before` when step `failed` (a `pre_patch`) fails: the failing
    /// set's shadow types are freed (it may have allocated some before failing), then
    /// everything done so far is undone in reverse order. The kernel does not call
    /// `post_unpatch` for a set whose `pre_patch` failed, and neither do we.
    pub fn cancel(&self, failed: usize) -> impl Iterator<Item = Step<'a>> + '_ {
        let (done, failing) = self.before.split_at(failed.min(self.before.len()));
        let frees = failing
            .first()
            .into_iter()
            .flat_map(|p| p.undo.iter())
            .filter(|s| matches!(s, Step::FreeShadow { .. }));
        frees.copied().chain(unwind(done))
    }

    /// The steps of `before`, for plans whose before-part cannot fail (no `pre_patch`).
    pub fn before_steps(&self) -> impl Iterator<Item = Step<'a>> + '_ {
        self.before.iter().map(|p| p.step)
    }

    /// The steps that undo all of `before`: the transition was reversed before it completed.
    pub fn reverse(&self) -> impl Iterator<Item = Step<'a>> + '_ {
        unwind(&self.before).chain(self.reverse_frees.iter().copied())
    }

    /// The steps that undo what `before` did on `object` for `side`'s sets, in reverse: a
    /// target module goes in the middle of a transition (its init failed after it came, or
    /// it was forced out), and those sets must be torn down while it is still there.
    pub fn undo_on<'p>(
        &'p self,
        object: ObjectName<'p>,
        side: Side,
    ) -> impl Iterator<Item = Step<'a>> + 'p {
        let on = move |s: &Step<'_>| matches!(s, Step::Hook { object: o, side: d, .. } if *o == object && *d == side);
        self.before
            .iter()
            .rev()
            .filter(move |p| on(&p.step))
            .flat_map(|p| p.undo.iter().copied())
    }

    /// Drops every hook step on `object` (a module that went in the middle of the
    /// transition, whose part was already undone): nothing more runs for it from this plan.
    /// Shadow frees stay; freeing what is already gone frees nothing.
    pub fn forget(&mut self, object: ObjectName<'_>) {
        let on = |s: &Step<'_>| matches!(s, Step::Hook { object: o, .. } if *o == object);
        self.before.retain(|p| !on(&p.step));
        for p in &mut self.before {
            p.undo.retain(|s| !on(s));
        }
        self.after.retain(|s| !on(s));
    }

    /// The steps after the transition, given the plans of target modules that loaded during
    /// it: their `after` steps merged in, in the rule's order (every outgoing set, descending
    /// id, then every incoming one, ascending), and the shadow types their sets keep alive
    /// not freed.
    pub fn after_with<'p, L>(&'p self, late: L) -> impl Iterator<Item = Step<'a>> + 'p
    where
        'a: 'p,
        L: Iterator<Item = &'p Plan<'a>> + Clone + 'p,
    {
        let keeps = {
            let late = late.clone();
            move |id: &u64| late.clone().any(|l| l.keeps.contains(id))
        };
        // A set a late plan tears down has its shadow types freed there, after its
        // post_unpatch; freeing them here would free them before it runs.
        let torn_down_late = {
            let late = late.clone();
            move |side: Side, set: u32| {
                late.clone().flat_map(|l| l.after.iter()).any(
                    |s| matches!(s, Step::Hook { side: d, set: t, .. } if *d == side && *t == set),
                )
            }
        };
        let main = self.after.iter().filter(move |s| match s {
            Step::FreeShadow { side, set, shadow } => {
                !keeps(shadow) && !torn_down_late(*side, *set)
            }
            Step::Hook { .. } => true,
        });
        // The late modules' steps take their place in the rule's order: every outgoing set
        // (descending id) before any incoming one (ascending), as the kernel runs them
        // where its core runs the sets.
        let all = move || {
            main.clone()
                .chain(late.clone().flat_map(|l| l.after.iter()))
                .copied()
        };
        ranked(all, |s| match s.side() {
            Side::Old => u64::from(u32::MAX - s.set()),
            Side::New => (1 << 32) | u64::from(s.set()),
        })
    }

    /// Every step in order, the transition marked by `None`; for display.
    pub fn steps(&self) -> impl Iterator<Item = Option<Step<'a>>> + '_ {
        let before = self.before.iter().map(|p| Some(p.step));
        let transition = self.transition.then_some(None);
        before
            .chain(transition)
            .chain(self.after.iter().map(|s| Some(*s)))
    }
}

impl Step<'_> {
    /// Whose tables the step belongs to.
    pub fn side(&self) -> Side {
        match self {
            Step::Hook { side, .. } | Step::FreeShadow { side, .. } => *side,
        }
    }

    /// The callback set the step belongs to.
    pub fn set(&self) -> u32 {
        match self {
            Step::Hook { set, .. } | Step::FreeShadow { set, .. } => *set,
        }
    }
}

/// The steps `steps` yields, lowest `rank` first; steps of one rank in the order they come.
/// Without allocating (the callbacks that run these cannot fail): each rank is a pass over
/// the steps, and a plan has a handful.
pub(crate) fn ranked<'a, I, S>(
    steps: S,
    rank: fn(&Step<'a>) -> u64,
) -> impl Iterator<Item = Step<'a>>
where
    S: Fn() -> I,
    I: Iterator<Item = Step<'a>>,
{
    let mut done: Option<u64> = None;
    let mut current: Option<(u64, usize)> = None;
    core::iter::from_fn(move || loop {
        if let Some((r, from)) = current {
            let next = steps().enumerate().skip(from).find(|(_, s)| rank(s) == r);
            if let Some((i, s)) = next {
                current = Some((r, i + 1));
                return Some(s);
            }
            done = Some(r);
        }
        let r = steps()
            .map(|s| rank(&s))
            .filter(|r| done.is_none_or(|d| *r > d))
            .min()?;
        current = Some((r, 0));
    })
}

fn unwind<'p, 'a>(done: &'p [Planned<'a>]) -> impl Iterator<Item = Step<'a>> + 'p {
    done.iter().rev().flat_map(|p| p.undo.iter().copied())
}

/// Sets of `patch` (by id, ascending), optionally only those not in `other`.
fn sets_not_in<'p, 'a, F, G>(
    patch: &'p Patch<'a, F>,
    other: Option<&'p Patch<'a, G>>,
) -> Result<Vec<&'p crate::reader::CallbackSet<'a, F>>, AllocError> {
    let mut v = fallible::collect(
        patch
            .sets
            .iter()
            .filter(|s| other.is_none_or(|o| !o.sets.iter().any(|t| t.id == s.id))),
    )?;
    // Insertion sort: a handful of sets, and nothing here may allocate or panic.
    for i in 1..v.len() {
        let mut j = i;
        while j > 0 && v.get(j - 1).map(|s| s.id) > v.get(j).map(|s| s.id) {
            v.swap(j - 1, j);
            j -= 1;
        }
    }
    Ok(v)
}

fn hook<'a, F>(side: Side, set: &crate::reader::CallbackSet<'a, F>, hook: Hook) -> Step<'a> {
    Step::Hook {
        side,
        set: set.id,
        object: set.object,
        hook,
        defined: set.hooks[hook as usize].is_some(),
    }
}

/// The patch that stays (if any) and which objects are loaded: a shadow id is kept while a
/// set of the survivor that is set up (its object loaded) owns it.
type Survivor<'p, 'a, G> = Option<(&'p Patch<'a, G>, &'p dyn Fn(ObjectName<'_>) -> bool)>;

/// Shadow ids owned by `set` in `patch` that no set-up set of the survivor owns.
fn frees<'p, 'a, F, G>(
    side: Side,
    patch: &'p Patch<'a, F>,
    set: u32,
    survivor: Survivor<'p, 'a, G>,
) -> impl Iterator<Item = Step<'a>> + 'p {
    let kept = move |id: u64| {
        survivor.is_some_and(|(s, loaded)| {
            s.shadows
                .iter()
                .any(|t| t.id == id && s.set(t.owner).is_some_and(|o| loaded(o.object)))
        })
    };
    patch
        .shadows
        .iter()
        .filter(move |t| t.owner == set && !kept(t.id))
        .map(move |t| Step::FreeShadow {
            side,
            set,
            shadow: t.id,
        })
}

/// A before-step and what undoes it.
fn planned<'a>(
    step: Step<'a>,
    undo: impl IntoIterator<Item = Step<'a>>,
) -> Result<Planned<'a>, AllocError> {
    Ok(Planned {
        step,
        undo: fallible::collect(undo)?,
    })
}

/// Enable `new`, replacing `old` if there is one. `loaded` says whether a module object is
/// loaded (`vmlinux` always is).
pub fn replace<'a, F, G>(
    old: Option<&Patch<'a, F>>,
    new: &Patch<'a, G>,
    loaded: &dyn Fn(ObjectName<'_>) -> bool,
) -> Result<Plan<'a>, AllocError> {
    let is_loaded = |o: ObjectName<'_>| o.is_vmlinux() || loaded(o);
    let new_only = sets_not_in(new, old)?;
    let old_only = match old {
        Some(o) => sets_not_in(o, Some(new))?,
        None => Vec::new(),
    };
    let mut plan = Plan {
        transition: true,
        ..Plan::default()
    };
    let old_survivor = old.map(|o| (o, &is_loaded as &dyn Fn(ObjectName<'_>) -> bool));

    for s in new_only.iter().filter(|s| is_loaded(s.object)) {
        let undo = core::iter::once(hook(Side::New, s, Hook::PostUnpatch)).chain(frees(
            Side::New,
            new,
            s.id,
            old_survivor,
        ));
        let p = planned(hook(Side::New, s, Hook::PrePatch), undo)?;
        fallible::push(&mut plan.before, p)?;
    }
    for s in old_only.iter().rev().filter(|s| is_loaded(s.object)) {
        let undo = core::iter::once(hook(Side::Old, s, Hook::PostPatch));
        let p = planned(hook(Side::Old, s, Hook::PreUnpatch), undo)?;
        fallible::push(&mut plan.before, p)?;
    }
    if let Some(old) = old {
        let new_survivor = Some((new, &is_loaded as &dyn Fn(ObjectName<'_>) -> bool));
        // Every set of the old patch, descending id: one only it has gets post_unpatch and
        // its shadow types freed; one both keep runs nothing, but those of its shadow types
        // the new patch no longer owns are gone with the old patch.
        for s in sets_not_in(old, None::<&Patch<'a, G>>)?.iter().rev() {
            if new.set(s.id).is_none() && is_loaded(s.object) {
                fallible::push(&mut plan.after, hook(Side::Old, s, Hook::PostUnpatch))?;
            }
            fallible::extend(&mut plan.after, frees(Side::Old, old, s.id, new_survivor))?;
        }
    }
    for s in new_only.iter().filter(|s| is_loaded(s.object)) {
        fallible::push(&mut plan.after, hook(Side::New, s, Hook::PostPatch))?;
    }
    // On reversal the outgoing patch stays with every id it declares (its sets may set up
    // later, as their modules load): only ids it lacks are the incoming patch's alone.
    let undone = |owner: u32| {
        new_only
            .iter()
            .any(|s| s.id == owner && is_loaded(s.object))
    };
    let declared_by_old = |id: u64| old.is_some_and(|o| o.shadows.iter().any(|t| t.id == id));
    for t in new.shadows.iter() {
        if undone(t.owner) || declared_by_old(t.id) {
            continue;
        }
        let step = Step::FreeShadow {
            side: Side::New,
            set: t.owner,
            shadow: t.id,
        };
        fallible::push(&mut plan.reverse_frees, step)?;
    }
    Ok(plan)
}

/// A module `object` loads while `new` is replacing `old` (the transition is in progress):
/// the part of the replace that concerns `object`'s sets, which the plan made at the start
/// could not include. The kernel has just set up `old`'s sets on it (`old` is still the
/// enabled patch), so this is the replace restricted to `object`: `new`-only `pre_patch`,
/// `old`-only `pre_unpatch`, and after the transition their counterparts, each leaving set's
/// `post_unpatch` followed by freeing its shadow types (the main plan, which would free them
/// whether or not their object was loaded, leaves those to this plan: [`Plan::after_with`]);
/// undoing a `new`-only set here (reversal) frees its types, which the main plan never saw
/// set up.
pub fn replace_object<'a, F, G>(
    old: Option<&Patch<'a, F>>,
    new: &Patch<'a, G>,
    object: ObjectName<'_>,
) -> Result<Plan<'a>, AllocError> {
    let mut whole = replace(old, new, &|o| o == object)?;
    let on_object = |s: &Step<'_>| matches!(s, Step::Hook { object: o, .. } if *o == object);
    let old_set_on_object = |set: u32| {
        old.and_then(|o| o.set(set))
            .is_some_and(|s| s.object == object)
    };
    let after_on_object = |s: &Step<'_>| match s {
        Step::FreeShadow {
            side: Side::Old,
            set,
            ..
        } => old_set_on_object(*set) && new.set(*set).is_none(),
        _ => on_object(s),
    };
    let keeps = fallible::collect(
        new.shadows
            .iter()
            .filter(|t| new.set(t.owner).is_some_and(|s| s.object == object))
            .map(|t| t.id),
    )?;
    whole.before.retain(|p| on_object(&p.step));
    whole.after.retain(after_on_object);
    // The main plan frees on reversal what no late plan's undo does.
    Ok(Plan {
        keeps,
        before: whole.before,
        transition: false,
        after: whole.after,
        reverse_frees: Vec::new(),
    })
}

/// Enable `patch` with nothing to replace.
pub fn enable<'a, F>(
    patch: &Patch<'a, F>,
    loaded: &dyn Fn(ObjectName<'_>) -> bool,
) -> Result<Plan<'a>, AllocError> {
    replace::<F, F>(None, patch, loaded)
}

/// Disable `patch` (it is `Side::Old`: it is going away): every set tears down, then every
/// shadow type of the patch is freed.
pub fn disable<'a, F>(
    patch: &Patch<'a, F>,
    loaded: &dyn Fn(ObjectName<'_>) -> bool,
) -> Result<Plan<'a>, AllocError> {
    let is_loaded = |o: ObjectName<'_>| o.is_vmlinux() || loaded(o);
    let sets = sets_not_in::<F, F>(patch, None)?;
    let mut plan = Plan {
        transition: true,
        ..Plan::default()
    };
    for s in sets.iter().rev().filter(|s| is_loaded(s.object)) {
        let undo = core::iter::once(hook(Side::Old, s, Hook::PostPatch));
        let p = planned(hook(Side::Old, s, Hook::PreUnpatch), undo)?;
        fallible::push(&mut plan.before, p)?;
    }
    for s in sets.iter().rev() {
        if is_loaded(s.object) {
            fallible::push(&mut plan.after, hook(Side::Old, s, Hook::PostUnpatch))?;
        }
        fallible::extend(&mut plan.after, frees::<F, F>(Side::Old, patch, s.id, None))?;
    }
    // Shadow types whose owner is not a set of this patch (tables that failed the cross-item
    // check still must not leak).
    for t in patch
        .shadows
        .iter()
        .filter(|t| patch.set(t.owner).is_none())
    {
        let step = Step::FreeShadow {
            side: Side::Old,
            set: t.owner,
            shadow: t.id,
        };
        fallible::push(&mut plan.after, step)?;
    }
    Ok(plan)
}

/// `patch`'s sets on `object`, by ascending id.
fn sets_on<'p, 'a, F>(
    patch: &'p Patch<'a, F>,
    object: ObjectName<'_>,
) -> Result<Vec<&'p crate::reader::CallbackSet<'a, F>>, AllocError> {
    let mut sets = sets_not_in::<F, F>(patch, None)?;
    sets.retain(|s| s.object == object);
    Ok(sets)
}

/// A module `object` loads while `patch` is enabled: its sets set up.
pub fn module_coming<'a, F>(
    patch: &Patch<'a, F>,
    object: ObjectName<'_>,
) -> Result<Plan<'a>, AllocError> {
    let sets = sets_on(patch, object)?;
    let mut plan = Plan::default();
    for s in &sets {
        let undo = core::iter::once(hook(Side::Old, s, Hook::PostUnpatch)).chain(frees::<F, F>(
            Side::Old,
            patch,
            s.id,
            None,
        ));
        let p = planned(hook(Side::Old, s, Hook::PrePatch), undo)?;
        fallible::push(&mut plan.before, p)?;
    }
    fallible::extend(
        &mut plan.after,
        sets.iter().map(|s| hook(Side::Old, s, Hook::PostPatch)),
    )?;
    Ok(plan)
}

/// A module `object` unloads while `patch` is enabled: its sets tear down and free their
/// shadow types (what they hung on the module's objects would dangle).
pub fn module_going<'a, F>(
    patch: &Patch<'a, F>,
    object: ObjectName<'_>,
) -> Result<Plan<'a>, AllocError> {
    let sets = sets_on(patch, object)?;
    let mut plan = Plan::default();
    for s in sets.iter().rev() {
        let undo = core::iter::once(hook(Side::Old, s, Hook::PostPatch));
        let p = planned(hook(Side::Old, s, Hook::PreUnpatch), undo)?;
        fallible::push(&mut plan.before, p)?;
    }
    for s in sets.iter().rev() {
        fallible::push(&mut plan.after, hook(Side::Old, s, Hook::PostUnpatch))?;
        fallible::extend(&mut plan.after, frees::<F, F>(Side::Old, patch, s.id, None))?;
    }
    Ok(plan)
}
