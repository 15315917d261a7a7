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
//! kept set no longer owns in the new patch is freed after the leaving sets' teardown.

use alloc::vec::Vec;
use core::fmt;

use crate::reader::Patch;

/// The four callbacks of a set, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    PrePatch = 0,
    PostPatch = 1,
    PreUnpatch = 2,
    PostUnpatch = 3,
}

impl Hook {
    pub const fn name(self) -> &'static str {
        match self {
            Hook::PrePatch => "pre_patch",
            Hook::PostPatch => "post_patch",
            Hook::PreUnpatch => "pre_unpatch",
            Hook::PostUnpatch => "post_unpatch",
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

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
        object: &'a str,
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
}

impl<'a> Plan<'a> {
    /// The steps that undo `before` when step `failed` (a `pre_patch`) fails: the failing
    /// set's shadow types are freed (it may have allocated some before failing), then
    /// everything done so far is undone in reverse order. The kernel does not call
    /// `post_unpatch` for a set whose `pre_patch` failed, and neither do we.
    pub fn cancel(&self, failed: usize) -> Vec<Step<'a>> {
        let frees = self.before[failed]
            .undo
            .iter()
            .filter(|s| matches!(s, Step::FreeShadow { .. }));
        frees
            .copied()
            .chain(unwind(&self.before[..failed]))
            .collect()
    }

    /// The steps of `before`, for plans whose before-part cannot fail (no `pre_patch`).
    pub fn before_steps(&self) -> Vec<Step<'a>> {
        self.before.iter().map(|p| p.step).collect()
    }

    /// The steps that undo all of `before`: the transition was reversed before it completed.
    pub fn reverse(&self) -> Vec<Step<'a>> {
        unwind(&self.before).collect()
    }

    /// The steps that undo what `before` did on `object` for `side`'s sets, in reverse: a
    /// target module goes in the middle of a transition (its init failed after it came, or
    /// it was forced out), and those sets must be torn down while it is still there.
    pub fn undo_on(&self, object: &str, side: Side) -> Vec<Step<'a>> {
        let on = |s: &Step<'_>| matches!(s, Step::Hook { object: o, side: d, .. } if *o == object && *d == side);
        self.before
            .iter()
            .rev()
            .filter(|p| on(&p.step))
            .flat_map(|p| p.undo.iter().copied())
            .collect()
    }

    /// Drops every hook step on `object` (a module that went in the middle of the
    /// transition, whose part was already undone): nothing more runs for it from this plan.
    /// Shadow frees stay; freeing what is already gone frees nothing.
    pub fn forget(&mut self, object: &str) {
        let on = |s: &Step<'_>| matches!(s, Step::Hook { object: o, .. } if *o == object);
        self.before.retain(|p| !on(&p.step));
        for p in &mut self.before {
            p.undo.retain(|s| !on(s));
        }
        self.after.retain(|s| !on(s));
    }

    /// The steps after the transition, given the plans of target modules that loaded during
    /// it: their `after` steps follow, and the shadow types their sets keep alive are not
    /// freed.
    pub fn after_with(&self, late: &[Plan<'a>]) -> Vec<Step<'a>> {
        let keeps = |id: &u64| late.iter().any(|l| l.keeps.contains(id));
        // A set a late plan tears down has its shadow types freed there, after its
        // post_unpatch; freeing them here would free them before it runs.
        let torn_down_late = |side: Side, set: u32| {
            late.iter()
                .flat_map(|l| l.after.iter())
                .any(|s| matches!(s, Step::Hook { side: d, set: t, .. } if *d == side && *t == set))
        };
        let main = self.after.iter().filter(|s| match s {
            Step::FreeShadow { side, set, shadow } => {
                !keeps(shadow) && !torn_down_late(*side, *set)
            }
            Step::Hook { .. } => true,
        });
        main.chain(late.iter().flat_map(|l| l.after.iter()))
            .copied()
            .collect()
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
}

fn unwind<'p, 'a>(done: &'p [Planned<'a>]) -> impl Iterator<Item = Step<'a>> + 'p {
    done.iter().rev().flat_map(|p| p.undo.iter().copied())
}

/// Sets of `patch` (by id, ascending), optionally only those not in `other`.
fn sets_not_in<'p, 'a, F, G>(
    patch: &'p Patch<'a, F>,
    other: Option<&'p Patch<'a, G>>,
) -> Vec<&'p crate::reader::CallbackSet<'a, F>> {
    let mut v: Vec<_> = patch
        .sets
        .iter()
        .filter(|s| other.is_none_or(|o| !o.sets.iter().any(|t| t.id == s.id)))
        .collect();
    v.sort_by_key(|s| s.id);
    v
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
type Survivor<'p, 'a, G> = Option<(&'p Patch<'a, G>, &'p dyn Fn(&str) -> bool)>;

/// Shadow ids owned by `set` in `patch` that no set-up set of the survivor owns.
fn frees<'a, F, G>(
    side: Side,
    patch: &Patch<'a, F>,
    set: u32,
    survivor: Survivor<'_, 'a, G>,
) -> Vec<Step<'a>> {
    let kept = |id: u64| {
        survivor.is_some_and(|(s, loaded)| {
            s.shadows
                .iter()
                .any(|t| t.id == id && s.set(t.owner).is_some_and(|o| loaded(o.object)))
        })
    };
    patch
        .shadows
        .iter()
        .filter(|t| t.owner == set && !kept(t.id))
        .map(|t| Step::FreeShadow {
            side,
            set,
            shadow: t.id,
        })
        .collect()
}

/// Enable `new`, replacing `old` if there is one. `loaded` says whether a module object is
/// loaded (`vmlinux` always is).
pub fn replace<'a, F, G>(
    old: Option<&Patch<'a, F>>,
    new: &Patch<'a, G>,
    loaded: &dyn Fn(&str) -> bool,
) -> Plan<'a> {
    let is_loaded = |o: &str| o == "vmlinux" || loaded(o);
    let new_only = sets_not_in(new, old);
    let old_only: Vec<_> = old.map(|o| sets_not_in(o, Some(new))).unwrap_or_default();
    let mut plan = Plan {
        transition: true,
        ..Plan::default()
    };

    for s in new_only.iter().filter(|s| is_loaded(s.object)) {
        let mut undo = Vec::from([hook(Side::New, s, Hook::PostUnpatch)]);
        undo.extend(frees(
            Side::New,
            new,
            s.id,
            old.map(|o| (o, &is_loaded as &dyn Fn(&str) -> bool)),
        ));
        plan.before.push(Planned {
            step: hook(Side::New, s, Hook::PrePatch),
            undo,
        });
    }
    for s in old_only.iter().rev().filter(|s| is_loaded(s.object)) {
        let undo = Vec::from([hook(Side::Old, s, Hook::PostPatch)]);
        plan.before.push(Planned {
            step: hook(Side::Old, s, Hook::PreUnpatch),
            undo,
        });
    }
    if let Some(old) = old {
        for s in old_only.iter().rev() {
            if is_loaded(s.object) {
                plan.after.push(hook(Side::Old, s, Hook::PostUnpatch));
            }
            plan.after
                .extend(frees(Side::Old, old, s.id, Some((new, &is_loaded))));
        }
        // A set both patches keep runs nothing, but if the new patch no longer owns one of
        // its shadow types, that type is gone with the old patch.
        let mut kept: Vec<u32> = old
            .sets
            .iter()
            .filter(|s| new.set(s.id).is_some())
            .map(|s| s.id)
            .collect();
        kept.sort_unstable();
        for id in kept.into_iter().rev() {
            plan.after
                .extend(frees(Side::Old, old, id, Some((new, &is_loaded))));
        }
    }
    for s in new_only.iter().filter(|s| is_loaded(s.object)) {
        plan.after.push(hook(Side::New, s, Hook::PostPatch));
    }
    plan
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
    object: &str,
) -> Plan<'a> {
    let whole = replace(old, new, &|o| o == object);
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
    let keeps = new
        .shadows
        .iter()
        .filter(|t| new.set(t.owner).is_some_and(|s| s.object == object))
        .map(|t| t.id)
        .collect();
    Plan {
        keeps,
        before: whole
            .before
            .into_iter()
            .filter(|p| on_object(&p.step))
            .collect(),
        transition: false,
        after: whole.after.into_iter().filter(after_on_object).collect(),
    }
}

/// Enable `patch` with nothing to replace.
pub fn enable<'a, F>(patch: &Patch<'a, F>, loaded: &dyn Fn(&str) -> bool) -> Plan<'a> {
    replace::<F, F>(None, patch, loaded)
}

/// Disable `patch` (it is `Side::Old`: it is going away): every set tears down, then every
/// shadow type of the patch is freed.
pub fn disable<'a, F>(patch: &Patch<'a, F>, loaded: &dyn Fn(&str) -> bool) -> Plan<'a> {
    let is_loaded = |o: &str| o == "vmlinux" || loaded(o);
    let sets = sets_not_in::<F, F>(patch, None);
    let mut plan = Plan {
        transition: true,
        ..Plan::default()
    };
    for s in sets.iter().rev().filter(|s| is_loaded(s.object)) {
        let undo = Vec::from([hook(Side::Old, s, Hook::PostPatch)]);
        plan.before.push(Planned {
            step: hook(Side::Old, s, Hook::PreUnpatch),
            undo,
        });
    }
    for s in sets.iter().rev() {
        if is_loaded(s.object) {
            plan.after.push(hook(Side::Old, s, Hook::PostUnpatch));
        }
        plan.after
            .extend(frees::<F, F>(Side::Old, patch, s.id, None));
    }
    // Shadow types whose owner is not a set of this patch (tables that failed the cross-item
    // check still must not leak).
    for t in patch
        .shadows
        .iter()
        .filter(|t| patch.set(t.owner).is_none())
    {
        plan.after.push(Step::FreeShadow {
            side: Side::Old,
            set: t.owner,
            shadow: t.id,
        });
    }
    plan
}

/// A module `object` loads while `patch` is enabled: its sets set up.
pub fn module_coming<'a, F>(patch: &Patch<'a, F>, object: &str) -> Plan<'a> {
    let sets: Vec<_> = sets_not_in::<F, F>(patch, None)
        .into_iter()
        .filter(|s| s.object == object)
        .collect();
    let mut plan = Plan::default();
    for s in &sets {
        let mut undo = Vec::from([hook(Side::Old, s, Hook::PostUnpatch)]);
        undo.extend(frees::<F, F>(Side::Old, patch, s.id, None));
        plan.before.push(Planned {
            step: hook(Side::Old, s, Hook::PrePatch),
            undo,
        });
    }
    plan.after
        .extend(sets.iter().map(|s| hook(Side::Old, s, Hook::PostPatch)));
    plan
}

/// A module `object` unloads while `patch` is enabled: its sets tear down and free their
/// shadow types (what they hung on the module's objects would dangle).
pub fn module_going<'a, F>(patch: &Patch<'a, F>, object: &str) -> Plan<'a> {
    let sets: Vec<_> = sets_not_in::<F, F>(patch, None)
        .into_iter()
        .filter(|s| s.object == object)
        .collect();
    let mut plan = Plan::default();
    for s in sets.iter().rev() {
        let undo = Vec::from([hook(Side::Old, s, Hook::PostPatch)]);
        plan.before.push(Planned {
            step: hook(Side::Old, s, Hook::PreUnpatch),
            undo,
        });
    }
    for s in sets.iter().rev() {
        plan.after.push(hook(Side::Old, s, Hook::PostUnpatch));
        plan.after
            .extend(frees::<F, F>(Side::Old, patch, s.id, None));
    }
    plan
}

/// Carries out a plan's steps; implemented by the kernel dispatcher and the simulator.
pub trait Runner<'a> {
    /// Runs a defined hook; only `pre_patch` may fail (with a negative errno).
    fn hook(&mut self, side: Side, set: u32, object: &'a str, hook: Hook) -> Result<(), i32>;
    fn free_shadow(&mut self, side: Side, set: u32, shadow: u64);
    /// Sees every step, run or not (the simulator's trace).
    fn observe(&mut self, _step: &Step<'a>) {}
}

fn run_step<'a>(runner: &mut impl Runner<'a>, step: &Step<'a>) -> Result<(), i32> {
    runner.observe(step);
    match *step {
        Step::Hook {
            side,
            set,
            object,
            hook,
            defined: true,
        } => runner.hook(side, set, object, hook),
        Step::Hook { defined: false, .. } => Ok(()),
        Step::FreeShadow { side, set, shadow } => {
            runner.free_shadow(side, set, shadow);
            Ok(())
        }
    }
}

/// Runs `steps` that cannot fail (everything but `pre_patch`).
pub fn run<'a>(runner: &mut impl Runner<'a>, steps: &[Step<'a>]) {
    for step in steps {
        // Only pre_patch can fail, and no list built here for `run` contains one.
        let _ = run_step(runner, step);
    }
}

/// Runs the part before the transition. If a `pre_patch` fails, runs [`Plan::cancel`] and
/// returns the errno, with everything as it was before.
pub fn run_before<'a>(runner: &mut impl Runner<'a>, plan: &Plan<'a>) -> Result<(), i32> {
    for (i, p) in plan.before.iter().enumerate() {
        if let Err(errno) = run_step(runner, &p.step) {
            run(runner, &plan.cancel(i));
            return Err(errno);
        }
    }
    Ok(())
}

/// The log line of a step, shared by the kernel's dmesg and the simulator's log so the two
/// can be compared: `p3: set 2 vmlinux pre_unpatch`, `p3: set 2 free shadow 0x20`.
pub struct StepLine<'s, 'a> {
    pub patch: &'s str,
    pub step: &'s Step<'a>,
}

impl fmt::Display for StepLine<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self.step {
            Step::Hook {
                set, object, hook, ..
            } => write!(f, "{}: set {set} {object} {hook}", self.patch),
            Step::FreeShadow { set, shadow, .. } => {
                write!(f, "{}: set {set} free shadow {shadow:#x}", self.patch)
            }
        }
    }
}
