//! What the simulator records, in order, and how each event reads in the log: the same
//! words the kernel runtime and the livepatch core print.

use std::fmt;

use crate::plan::{Hook, Step, StepLine};

/// What happened, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A plan step the runtime carried out; `step` names the patch's tables by side, `patch`
    /// resolves it. Steps of hooks a set does not define are kept (they mark set-up and
    /// tear-down) but are not printed by [`super::Kernel::lines`], as the kernel runtime
    /// prints nothing for them.
    Step {
        patch: &'static str,
        step: Step<'static>,
    },
    /// A hook returned an error.
    HookFailed {
        patch: &'static str,
        set: u32,
        object: &'static str,
        hook: Hook,
        errno: i32,
    },
    /// A transition started (`to` is the patch being enabled or disabled).
    TransitionStart {
        to: &'static str,
        patching: bool,
    },
    TransitionComplete {
        to: &'static str,
        patching: bool,
    },
    TransitionReversed {
        to: &'static str,
    },
    /// A patch's code logged something (`klp_runtime::pr_info!`).
    Message(String),
    /// The runtime's other lines: hooks skipped, shadow variables counted, refusals.
    Runtime(String),
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = |patching: bool| if patching { "patching" } else { "unpatching" };
        match self {
            Event::Step { patch, step } => StepLine { patch, step }.fmt(f),
            Event::HookFailed {
                patch,
                set,
                object,
                hook,
                errno,
            } => {
                write!(f, "{patch}: set {set} {object} {hook} failed: {errno}")
            }
            Event::TransitionStart { to, patching } => {
                write!(f, "'{to}': starting {} transition", verb(*patching))
            }
            Event::TransitionComplete { to, patching } => {
                write!(f, "'{to}': {} complete", verb(*patching))
            }
            Event::TransitionReversed { to } => write!(f, "'{to}': reversing transition"),
            Event::Message(m) | Event::Runtime(m) => f.write_str(m),
        }
    }
}

impl Event {
    /// Whether [`super::Kernel::lines`] shows it: not the marks of undefined hooks, not the
    /// runtime's bookkeeping lines.
    pub(crate) fn shown(&self) -> bool {
        !matches!(
            self,
            Event::Step {
                step: Step::Hook { defined: false, .. },
                ..
            } | Event::Runtime(_)
        )
    }
}
