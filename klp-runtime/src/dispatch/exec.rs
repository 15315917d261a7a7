//! How a step is carried out, once for the kernel and the simulator: the [`Platform`] face
//! each of them implements, what the runtime reports ([`Report`]), and the one [`Runner`]
//! that calls hooks and destructors from live tables.

use core::ffi::c_int;
use core::fmt;

use crate::abi::{self, PatchHeader};
use crate::hook::Errno;
use crate::plan::{Hook, Runner, Side, Step, StepLine};
use crate::reader::{LiveFn, ObjectName, Patch};

/// What the dispatcher needs from where it runs. The kernel's implementation calls the C
/// init (kernel/dispatch.rs); the simulator's models the livepatch core (sim/).
pub(crate) trait Platform {
    /// Whether a target module is pinned for the transition in flight: loaded, as far as
    /// the transition knows. Never asked for vmlinux.
    fn pinned(&self, object: ObjectName<'_>) -> bool;
    /// Pins the module if it is loaded; whether it is.
    fn pin(&mut self, object: ObjectName<'static>) -> bool;
    fn unpin(&mut self, object: ObjectName<'static>);
    fn unpin_all(&mut self);
    /// Makes room for a pin per object of the patch (nop objects included) and has the nop
    /// objects call us (their `pre_patch` and `post_unpatch`).
    fn pin_begin(&mut self) -> Result<(), Errno>;
    /// The header of the topmost klp-rs patch below ours, through our `klp_state`
    /// (`klp_get_prev_state`); `Err` when that state's data is not klp-rs tables.
    fn below(&mut self) -> Result<Option<&'static PatchHeader>, Errno>;
    /// The name of the patch below, for a message when its tables cannot be read: copied
    /// into `buf` without trusting its memory; `None` if it cannot be.
    fn below_name<'b>(&mut self, buf: &'b mut [u8; 64]) -> Option<&'b str>;
    /// Whether our patch replaces (`replace = true`) rather than stacks.
    fn replaces(&self) -> bool;
    /// `klp_shadow_free_all(key, dtor)` (the id as the kernel knows it: [`abi::shadow_key`]):
    /// how many variables it freed.
    fn free_all(&mut self, shadow: u64, dtor: Option<abi::ShadowDtorFn>) -> usize;
    /// Calls a hook of the tables: `call` does it; the platform may wrap it (the simulator
    /// injects failures and collects what the hook logged).
    fn call_hook(&mut self, at: HookAt, call: &mut dyn FnMut() -> c_int) -> c_int {
        let _ = at;
        call()
    }
    /// What the runtime did, in order.
    fn report(&mut self, report: Report<'_>);
}

/// A hook call, for [`Platform::call_hook`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct HookAt {
    pub patch: &'static str,
    pub set: u32,
    pub object: ObjectName<'static>,
    pub hook: Hook,
}

/// What the runtime reports. The kernel prints each as one line (`Display`); the
/// simulator records them as events.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Report<'s> {
    /// A step carried out. A hook step whose hook the set lacks called nothing, and prints
    /// nothing: it marks where the set was set up or torn down.
    Ran {
        patch: &'static str,
        step: Step<'static>,
    },
    /// A hook not called: its module is not loaded (it went during the transition).
    Skipped { at: HookAt },
    /// A hook that failed (only `pre_patch` can).
    Failed { at: HookAt, errno: Errno },
    /// A shadow type freed, with how many variables it had.
    Freed {
        patch: &'static str,
        shadow: u64,
        count: usize,
    },
    /// Anything else the runtime says.
    Note(fmt::Arguments<'s>),
}

impl Report<'_> {
    /// Whether the kernel prints it.
    #[cfg_attr(not(target_os = "none"), allow(dead_code))]
    pub fn printed(&self) -> bool {
        !matches!(
            self,
            Report::Ran {
                step: Step::Hook { defined: false, .. },
                ..
            }
        )
    }
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Report::Ran { patch, step } => StepLine { patch, step }.fmt(f),
            Report::Skipped { at } => write!(
                f,
                "klp-rs: {}: set {} {} {} skipped: {} is not loaded",
                at.patch, at.set, at.object, at.hook, at.object
            ),
            Report::Failed { at, errno } => write!(
                f,
                "{}: set {} {} {} failed: {}",
                at.patch,
                at.set,
                at.object,
                at.hook,
                errno.get()
            ),
            Report::Freed {
                patch,
                shadow,
                count,
            } => write!(f, "{patch}: shadow {shadow:#x}: {count} freed"),
            Report::Note(args) => args.fmt(f),
        }
    }
}

/// Runs steps against the tables of our patch and the outgoing one. A step is reported as
/// it is carried out, so the log never claims a hook that did not run.
pub(crate) struct Executor<'d, P> {
    pub own: &'d Patch<'static, LiveFn>,
    pub old: Option<&'d Patch<'static, LiveFn>>,
    /// In a transition, a module object's hooks run only while it is pinned; outside one,
    /// the hooks are those of the module coming or going, which is there.
    pub in_transition: bool,
    pub sys: &'d mut P,
}

impl<P: Platform> Executor<'_, P> {
    fn patch(&self, side: Side) -> &Patch<'static, LiveFn> {
        match side {
            Side::New => self.own,
            Side::Old => self.old.unwrap_or(self.own),
        }
    }

    fn hook(&mut self, step: &Step<'static>, at: HookAt) -> Result<(), Errno> {
        let object_loaded = at.object.is_vmlinux() || self.sys.pinned(at.object);
        if self.in_transition && !object_loaded {
            // Only a hook that would have been called is worth a line.
            if matches!(step, Step::Hook { defined: true, .. }) {
                self.sys.report(Report::Skipped { at });
            }
            return Ok(());
        }
        let p = self.patch(step.side());
        let slot = p.set(at.set).and_then(|s| s.hooks[at.hook as usize]);
        self.sys.report(Report::Ran {
            patch: at.patch,
            step: *step,
        });
        let Some(f) = slot else {
            return Ok(());
        };
        // SAFETY: `f` is the hook's slot of live tables (ours, or the outgoing module's,
        // pinned by the kernel until our transition ends); the object name is a table
        // string, NUL-terminated in memory (the reader checks it).
        let ret = self
            .sys
            .call_hook(at, &mut || unsafe { call(f, at.hook, at.object) });
        if ret == 0 {
            return Ok(());
        }
        let errno = Errno::from_kernel(ret);
        self.sys.report(Report::Failed { at, errno });
        Err(errno)
    }

    fn free_shadow(&mut self, step: &Step<'static>, shadow: u64) {
        let p = self.patch(step.side());
        let patch = p.name;
        // The id as the kernel knows it, by the convention of the tables that own it.
        let key = abi::shadow_key(p.format_version, shadow);
        let dtor = p
            .shadows
            .iter()
            .find(|t| t.id == shadow)
            .and_then(|t| t.dtor)
            // SAFETY: a dtor slot of live tables holds the `ShadowDtorFn` of the type stored
            // under this id.
            .map(|f| unsafe { f.dtor() });
        self.sys.report(Report::Ran { patch, step: *step });
        let count = self.sys.free_all(key, dtor);
        self.sys.report(Report::Freed {
            patch,
            shadow,
            count,
        });
    }
}

impl<P: Platform> Runner<'static> for Executor<'_, P> {
    fn step(&mut self, step: &Step<'static>) -> Result<(), Errno> {
        match *step {
            Step::Hook {
                side,
                set,
                object,
                hook,
                ..
            } => {
                let patch = self.patch(side).name;
                let at = HookAt {
                    patch,
                    set,
                    object,
                    hook,
                };
                self.hook(step, at)
            }
            Step::FreeShadow { shadow, .. } => {
                self.free_shadow(step, shadow);
                Ok(())
            }
        }
    }
}

/// Calls a set's hook: the one place a table's hook becomes a call.
///
/// # Safety
/// `f` is `hook`'s slot of live tables (which the macros fill with a [`abi::PrePatchFn`]
/// for `pre_patch`, a [`abi::HookFn`] otherwise), and `object` is followed by a NUL in
/// memory.
unsafe fn call(f: LiveFn, hook: Hook, object: ObjectName<'_>) -> c_int {
    let object = object.as_ptr();
    if hook == Hook::PrePatch {
        // SAFETY: per the contract.
        unsafe { f.pre_patch()(object) }
    } else {
        // SAFETY: per the contract.
        unsafe { f.hook()(object) };
        0
    }
}
