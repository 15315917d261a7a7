//! What remains of a transition when it ends: from the plan made when it started, the plans
//! of target modules that loaded during it, and the modules that went during it. The kernel's
//! `klp_complete_transition` ends a transition either way (completed, or reversed by
//! `klp_reverse_transition` and then completed the other way); these are the steps for each.

use super::{ranked, Plan, Side, Step};
use crate::reader::ObjectName;

/// A transition in flight, as the dispatcher holds it.
pub struct Transition<'p, 'a> {
    /// The plan made at the start: a replace (or enable) when patching, a disable when not.
    pub main: &'p Plan<'a>,
    /// Plans of target modules that loaded during the transition, by module.
    pub late: &'p [(ObjectName<'a>, Plan<'a>)],
    /// Modules that went during a disable, whose steps the main plan keeps but must skip.
    pub gone: &'p [ObjectName<'a>],
}

impl<'p, 'a> Transition<'p, 'a> {
    /// Patching completed: the main plan's second half, less the shadow types the late
    /// modules' sets keep or tear down themselves, merged with theirs ([`Plan::after_with`]).
    pub fn patched(&self) -> impl Iterator<Item = Step<'a>> + 'p {
        self.main.after_with(self.late.iter().map(|(_, l)| l))
    }

    /// Patching reversed (or cancelled after our `pre_patch`): the late modules' parts and
    /// the main plan's undone, in the rule's order: the outgoing sets set up again
    /// (ascending id), then the incoming ones torn down (descending).
    pub fn patching_reversed(&self) -> impl Iterator<Item = Step<'a>> + 'p {
        let (late, main) = (self.late, self.main);
        let all = move || {
            late.iter()
                .rev()
                .flat_map(|(_, l)| l.reverse())
                .chain(main.reverse())
        };
        ranked(all, |s| match s.side() {
            Side::Old => u64::from(s.set()),
            Side::New => (1 << 32) | u64::from(u32::MAX - s.set()),
        })
    }

    /// Unpatching completed (a disable): the sets of modules that came during it had only
    /// their `pre_patch`, and are torn down; then the main plan's second half, without the
    /// steps of modules that came (done just now) or went (done when they went).
    pub fn unpatched(&self) -> impl Iterator<Item = Step<'a>> + 'p {
        let late = self.late.iter().rev().flat_map(|(_, l)| l.reverse());
        let (gone, late_plans) = (self.gone, self.late);
        let main = self.main.after.iter().copied();
        late.chain(main.filter(move |s| !skipped(s, gone, late_plans)))
    }

    /// Unpatching reversed: the main plan's first half undone (without the modules that came
    /// or went), then the sets of modules that came finish setting up.
    pub fn unpatching_reversed(&self) -> impl Iterator<Item = Step<'a>> + 'p {
        let (gone, late_plans) = (self.gone, self.late);
        let main = self
            .main
            .reverse()
            .filter(move |s| !skipped(s, gone, late_plans));
        main.chain(self.late.iter().flat_map(|(_, l)| l.after.iter().copied()))
    }
}

/// Whether a step of the main disable plan is left out: a hook on a module that went during
/// the disable, or on one that came during it (its own plan runs its sets).
fn skipped(step: &Step<'_>, gone: &[ObjectName<'_>], late: &[(ObjectName<'_>, Plan<'_>)]) -> bool {
    matches!(step, Step::Hook { object, .. }
        if gone.contains(object) || late.iter().any(|(o, _)| o == object))
}
