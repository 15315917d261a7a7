//! Carrying out a plan: the [`Runner`] that does each step, the order steps run in, and the
//! line each one logs.

use core::fmt;

use super::{Plan, Step};
use crate::hook::Errno;

/// Carries out a plan's steps. Its one implementation, [`crate::dispatch`]'s executor, runs
/// in the kernel and in the simulator; tests may implement it to watch a plan.
pub trait Runner<'a> {
    /// Carries out one step: calls a set's hook (a step whose hook the set does not define
    /// calls nothing) or frees a shadow type. Only a `pre_patch` may fail.
    fn step(&mut self, step: &Step<'a>) -> Result<(), Errno>;
}

/// Runs steps that cannot fail (everything but `pre_patch`). Takes them as they come, so
/// that running a plan never allocates: the kernel runs these from callbacks that cannot
/// report a failure.
pub fn run<'a>(runner: &mut impl Runner<'a>, steps: impl IntoIterator<Item = Step<'a>>) {
    for step in steps {
        // Only pre_patch can fail, and no list built here for `run` contains one.
        let _ = runner.step(&step);
    }
}

/// Runs the part before the transition. If a `pre_patch` fails, runs [`Plan::cancel`] and
/// returns the errno, with everything as it was before.
pub fn run_before<'a>(runner: &mut impl Runner<'a>, plan: &Plan<'a>) -> Result<(), Errno> {
    for (i, p) in plan.before.iter().enumerate() {
        if let Err(errno) = runner.step(&p.step) {
            run(runner, plan.cancel(i));
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
