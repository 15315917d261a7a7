//! A host model of the kernel's livepatch core, for `cargo test` without a kernel: patch
//! modules (each with its own tables) come and go, patches are enabled, atomically replaced
//! and disabled, transitions complete or are reversed, target modules load and unload, and
//! shadow variables behave as `klp_shadow_*` does. The patch crates' real callbacks run, in
//! the order the shared planner gives — the same planner the kernel module runs.
//!
//! Every step is recorded; [`Kernel::lines`] renders the log in the format the kernel
//! runtime prints to dmesg, so the two can be compared line for line.

pub mod store;

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fmt;

use crate::abi::{self, PatchHeader};
use crate::check::{check, CheckError};
use crate::plan::{self, Hook, Plan, Runner, Side, Step, StepLine};
use crate::reader::{self, Patch, ReadError};

/// Why the simulated kernel refused an operation (what insmod or a sysfs write would return).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SimError {
    #[error("cannot read the tables of the patch: {0}")]
    Read(#[from] ReadError),
    #[error("patch {patch} breaks cross-item rules: {}", .errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Check {
        patch: String,
        errors: Vec<CheckError>,
    },
    #[error("module {0} is already loaded")]
    AlreadyLoaded(String),
    #[error("no patch module {0} is loaded")]
    NoSuchPatch(String),
    #[error("patch {0} is not enabled")]
    NotEnabled(String),
    #[error("patch {0} is enabled: disable it before removing the module (EBUSY)")]
    Busy(String),
    #[error("a transition is in progress (EBUSY)")]
    InTransition,
    #[error("no transition is in progress")]
    NoTransition,
    #[error("{patch} cannot replace {old}: {conflict}")]
    Conflict {
        patch: String,
        old: String,
        conflict: String,
    },
    #[error("out of memory")]
    NoMemory(#[from] crate::fallible::AllocError),
    #[error("pre_patch of {patch} set {set} failed with {errno}; the patch was not enabled")]
    PrePatchFailed { patch: String, set: u32, errno: i32 },
}

/// What happened, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A plan step; `step` names the patch's tables by side, `patch` resolves it. Steps of
    /// hooks a set does not define are kept (they mark set-up and tear-down) but are not
    /// printed by [`Kernel::lines`], as the kernel runtime prints nothing for them.
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
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
                write!(
                    f,
                    "'{to}': starting {} transition",
                    if *patching { "patching" } else { "unpatching" }
                )
            }
            Event::TransitionComplete { to, patching } => {
                write!(
                    f,
                    "'{to}': {} complete",
                    if *patching { "patching" } else { "unpatching" }
                )
            }
            Event::TransitionReversed { to } => write!(f, "'{to}': reversing transition"),
            Event::Message(m) => f.write_str(m),
        }
    }
}

struct PatchModule {
    name: &'static str,
    tables: Patch<'static, usize>,
    enabled: bool,
}

/// A transition in progress: what to run when it completes or is reversed.
struct Transition {
    /// Index of the patch being enabled or disabled.
    target: usize,
    /// Index of the patch being replaced.
    replaced: Option<usize>,
    patching: bool,
    plan: Plan<'static>,
    /// Parts for target modules that loaded during the transition ([`plan::replace_object`]).
    late: Vec<Plan<'static>>,
}

/// The simulated kernel. Shadow variables live in a per-thread store shared by all patches,
/// as in the kernel (see [`store`]).
#[derive(Default)]
pub struct Kernel {
    modules: Vec<PatchModule>,
    objects: BTreeSet<String>,
    transition: Option<Transition>,
    log: Vec<Event>,
    failures: Vec<(String, u32, i32)>,
}

thread_local! {
    static MESSAGES: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
    static CURRENT: std::cell::Cell<Option<(&'static str, u32, Hook)>> = const { std::cell::Cell::new(None) };
}

/// Where patch code's log messages go on the host.
pub(crate) fn log_message(args: fmt::Arguments<'_>) {
    MESSAGES.with(|m| m.borrow_mut().push(args.to_string()));
}

/// The hook running now, as (patch, set, hook); for test patches that record what runs.
pub fn current_hook() -> Option<(&'static str, u32, Hook)> {
    CURRENT.with(|c| c.get())
}

/// Runs plan steps against real hooks, logging each.
struct Exec<'k> {
    old: Option<&'k PatchModule>,
    new: &'k PatchModule,
    log: &'k mut Vec<Event>,
    failures: &'k [(String, u32, i32)],
}

impl Exec<'_> {
    fn module(&self, side: Side) -> &PatchModule {
        match side {
            Side::New => self.new,
            Side::Old => self.old.unwrap_or(self.new),
        }
    }

    fn drain_messages(&mut self) {
        let msgs = MESSAGES.with(|m| std::mem::take(&mut *m.borrow_mut()));
        self.log.extend(msgs.into_iter().map(Event::Message));
    }
}

impl Runner<'static> for Exec<'_> {
    fn observe(&mut self, step: &Step<'static>) {
        let side = match step {
            Step::Hook { side, .. } | Step::FreeShadow { side, .. } => *side,
        };
        self.log.push(Event::Step {
            patch: self.module(side).name,
            step: *step,
        });
    }

    fn hook(&mut self, side: Side, set: u32, object: &'static str, hook: Hook) -> Result<(), i32> {
        let m = self.module(side);
        let (patch, addr) = (
            m.name,
            m.tables
                .set(set)
                .and_then(|s| s.hooks[hook as usize])
                .expect("planned hook"),
        );
        if hook == Hook::PrePatch {
            if let Some(&(_, _, errno)) = self.failures.iter().find(|f| f.0 == patch && f.1 == set)
            {
                self.log.push(Event::HookFailed {
                    patch,
                    set,
                    object,
                    hook,
                    errno,
                });
                return Err(errno);
            }
        }
        let obj = CString::new(object).expect("object names have no NUL");
        CURRENT.with(|c| c.set(Some((patch, set, hook))));
        let r = if hook == Hook::PrePatch {
            // SAFETY: the address comes from a pre_patch slot of tables linked into this
            // program, which the macros fill with `PrePatchFn`s.
            let f: abi::PrePatchFn = unsafe { std::mem::transmute::<usize, abi::PrePatchFn>(addr) };
            // SAFETY: `obj` is NUL-terminated and outlives the call.
            unsafe { f(obj.as_ptr()) }
        } else {
            // SAFETY: as above, for the other three slots, which hold `HookFn`s.
            let f: abi::HookFn = unsafe { std::mem::transmute::<usize, abi::HookFn>(addr) };
            // SAFETY: as above.
            unsafe { f(obj.as_ptr()) };
            0
        };
        CURRENT.with(|c| c.set(None));
        self.drain_messages();
        if r != 0 {
            self.log.push(Event::HookFailed {
                patch,
                set,
                object,
                hook,
                errno: -r,
            });
            return Err(-r);
        }
        Ok(())
    }

    fn free_shadow(&mut self, side: Side, _set: u32, shadow: u64) {
        let m = self.module(side);
        let dtor = m
            .tables
            .shadows
            .iter()
            .find(|t| t.id == shadow)
            .and_then(|t| t.dtor);
        // SAFETY: the dtor slot of linked tables holds a `ShadowDtorFn`.
        let dtor = dtor.map(|a| unsafe { std::mem::transmute::<usize, abi::ShadowDtorFn>(a) });
        store::free_all(shadow, dtor);
        self.drain_messages();
    }
}

fn printed(e: &Event) -> bool {
    !matches!(
        e,
        Event::Step {
            step: Step::Hook { defined: false, .. },
            ..
        }
    )
}

/// The patches a transition's plan calls `Old` and `New`.
fn sides<'m>(
    modules: &'m [PatchModule],
    t: &Transition,
) -> (Option<&'m PatchModule>, &'m PatchModule) {
    let target = &modules[t.target];
    if t.patching {
        (t.replaced.map(|r| &modules[r]), target)
    } else {
        (Some(target), target)
    }
}

impl Kernel {
    pub fn new() -> Kernel {
        Kernel::default()
    }

    /// Loads a patch module and enables it, replacing the enabled patch if there is one;
    /// the transition completes. A failing `pre_patch` fails the load, as insmod would.
    pub fn insmod(&mut self, header: &'static PatchHeader) -> Result<(), SimError> {
        self.insmod_pending(header)?;
        self.complete_transition()
    }

    /// As [`Kernel::insmod`], but the transition stays in progress until
    /// [`Kernel::complete_transition`] or [`Kernel::reverse_transition`].
    pub fn insmod_pending(&mut self, header: &'static PatchHeader) -> Result<(), SimError> {
        if self.transition.is_some() {
            return Err(SimError::InTransition);
        }
        // SAFETY: a `&'static PatchHeader` is the header of a crate linked into this program.
        let tables = unsafe { reader::read_memory(header) }?;
        let errors = check(&tables);
        if !errors.is_empty() {
            return Err(SimError::Check {
                patch: tables.name.into(),
                errors,
            });
        }
        if self.modules.iter().any(|m| m.name == tables.name) {
            return Err(SimError::AlreadyLoaded(tables.name.into()));
        }
        self.modules.push(PatchModule {
            name: tables.name,
            tables,
            enabled: false,
        });
        let new = self.modules.len() - 1;
        match self.start(new, self.enabled(), true) {
            Ok(()) => Ok(()),
            Err(e) => {
                // The kernel unloads a module whose init failed.
                self.modules.pop();
                Err(e)
            }
        }
    }

    /// `echo 0 > /sys/kernel/livepatch/NAME/enabled`; the transition completes.
    pub fn disable(&mut self, name: &str) -> Result<(), SimError> {
        self.disable_pending(name)?;
        self.complete_transition()
    }

    /// As [`Kernel::disable`], leaving the transition in progress.
    pub fn disable_pending(&mut self, name: &str) -> Result<(), SimError> {
        if self.transition.is_some() {
            return Err(SimError::InTransition);
        }
        let i = self.index(name)?;
        if !self.modules[i].enabled {
            return Err(SimError::NotEnabled(name.into()));
        }
        self.start(i, None, false)
    }

    /// `rmmod NAME`: only a patch that is not enabled can go.
    pub fn rmmod(&mut self, name: &str) -> Result<(), SimError> {
        let i = self.index(name)?;
        if self.modules[i].enabled
            || self
                .transition
                .as_ref()
                .is_some_and(|t| t.target == i || t.replaced == Some(i))
        {
            return Err(SimError::Busy(name.into()));
        }
        self.modules.remove(i);
        Ok(())
    }

    /// A target module loads (the kernel's `klp_module_coming`): the enabled patch's sets for
    /// it set up. During a replace, the outgoing patch (still enabled) sets them up, and the
    /// incoming one runs its part of the replace for this module now and after the
    /// transition; during a disable, nothing runs for it.
    pub fn load_object(&mut self, object: &str) -> Result<(), SimError> {
        if !self.objects.insert(object.into()) {
            return Err(SimError::AlreadyLoaded(object.into()));
        }
        if let Some(i) = self.enabled() {
            let plan = plan::module_coming(&self.modules[i].tables, object)?;
            let mut exec = Exec {
                old: Some(&self.modules[i]),
                new: &self.modules[i],
                log: &mut self.log,
                failures: &self.failures,
            };
            match plan::run_before(&mut exec, &plan) {
                Ok(()) => plan::run(&mut exec, plan.after.iter().copied()),
                // The kernel refuses the module load when a pre_patch fails; the cancel ran.
                Err(_) => {
                    self.objects.remove(object);
                    return Ok(());
                }
            }
        }
        let Some(t) = self.transition.as_ref().filter(|t| t.patching) else {
            return Ok(());
        };
        let (old, new) = sides(&self.modules, t);
        let late = plan::replace_object(old.map(|o| &o.tables), &new.tables, object)?;
        let mut exec = Exec {
            old,
            new,
            log: &mut self.log,
            failures: &self.failures,
        };
        if plan::run_before(&mut exec, &late).is_err() {
            // The load fails: the enabled patch tears down what it set up for the module.
            if let Some(i) = self.enabled() {
                self.module_going(i, object);
            }
            self.objects.remove(object);
            return Ok(());
        }
        self.transition.as_mut().expect("checked").late.push(late);
        Ok(())
    }

    /// A target module unloads (`klp_module_going`).
    pub fn unload_object(&mut self, object: &str) -> Result<(), SimError> {
        if self.transition.is_some() {
            return Err(SimError::InTransition);
        }
        if !self.objects.contains(object) {
            return Ok(());
        }
        if let Some(i) = self.enabled() {
            self.module_going(i, object);
        }
        self.objects.remove(object);
        Ok(())
    }

    /// The enabled patch `i` tears down its sets on `object` (`klp_module_going`); nothing
    /// in it can fail.
    fn module_going(&mut self, i: usize, object: &str) {
        // Host memory: a failure here is the process's, as for any allocation.
        let Ok(plan) = plan::module_going(&self.modules[i].tables, object) else {
            return;
        };
        let m = &self.modules[i];
        let mut exec = Exec {
            old: Some(m),
            new: m,
            log: &mut self.log,
            failures: &self.failures,
        };
        plan::run(&mut exec, plan.before_steps());
        plan::run(&mut exec, plan.after.iter().copied());
    }

    /// Makes `pre_patch` of `patch`'s set `set` fail with `errno` from now on.
    pub fn fail_pre_patch(&mut self, patch: &str, set: u32, errno: i32) {
        self.failures.push((patch.into(), set, errno));
    }

    /// Undoes [`Kernel::fail_pre_patch`] for every set.
    pub fn clear_failures(&mut self) {
        self.failures.clear();
    }

    /// Completes the transition in progress.
    pub fn complete_transition(&mut self) -> Result<(), SimError> {
        let t = self.transition.take().ok_or(SimError::NoTransition)?;
        let to = self.modules[t.target].name;
        if let Some(r) = t.replaced {
            self.modules[r].enabled = false;
        }
        self.modules[t.target].enabled = t.patching;
        let (old, new) = sides(&self.modules, &t);
        let mut exec = Exec {
            old,
            new,
            log: &mut self.log,
            failures: &self.failures,
        };
        plan::run(&mut exec, t.plan.after_with(t.late.iter()));
        // The kernel announces completion after the post callbacks (klp_complete_transition).
        self.log.push(Event::TransitionComplete {
            to,
            patching: t.patching,
        });
        Ok(())
    }

    /// Reverses the transition in progress (writing the opposite value to `enabled`): the
    /// patch being enabled unwinds and the replaced one stays; or the disable is undone.
    pub fn reverse_transition(&mut self) -> Result<(), SimError> {
        let t = self.transition.take().ok_or(SimError::NoTransition)?;
        let to = self.modules[t.target].name;
        self.log.push(Event::TransitionReversed { to });
        self.modules[t.target].enabled = !t.patching;
        let (old, new) = sides(&self.modules, &t);
        let mut exec = Exec {
            old,
            new,
            log: &mut self.log,
            failures: &self.failures,
        };
        for late in t.late.iter().rev() {
            plan::run(&mut exec, late.reverse());
        }
        plan::run(&mut exec, t.plan.reverse());
        Ok(())
    }

    fn start(
        &mut self,
        target: usize,
        replaced: Option<usize>,
        patching: bool,
    ) -> Result<(), SimError> {
        // The runtime refuses before anything runs (kernel/dispatch.rs: read_below).
        if let Some(r) = replaced.filter(|_| patching) {
            let (old, new) = (&self.modules[r].tables, &self.modules[target].tables);
            if let Some(c) = crate::check::replace_conflicts(old, new).next() {
                return Err(SimError::Conflict {
                    patch: new.name.into(),
                    old: old.name.into(),
                    conflict: c.to_string(),
                });
            }
        }
        let objects = &self.objects;
        let loaded = |o: &str| objects.contains(o);
        let plan = if patching {
            plan::replace(
                replaced.map(|r| &self.modules[r].tables),
                &self.modules[target].tables,
                &loaded,
            )?
        } else {
            plan::disable(&self.modules[target].tables, &loaded)?
        };
        let t = Transition {
            target,
            replaced,
            patching,
            plan,
            late: Vec::new(),
        };
        let (old, new) = sides(&self.modules, &t);
        let mut exec = Exec {
            old,
            new,
            log: &mut self.log,
            failures: &self.failures,
        };
        if let Err(errno) = plan::run_before(&mut exec, &t.plan) {
            let set = self.log.iter().rev().find_map(|e| match e {
                Event::HookFailed { set, .. } => Some(*set),
                _ => None,
            });
            let patch = self.modules[target].name.to_string();
            return Err(SimError::PrePatchFailed {
                patch,
                set: set.unwrap_or(0),
                errno,
            });
        }
        self.log.push(Event::TransitionStart {
            to: self.modules[target].name,
            patching,
        });
        self.transition = Some(t);
        Ok(())
    }

    fn index(&self, name: &str) -> Result<usize, SimError> {
        self.modules
            .iter()
            .position(|m| m.name == name)
            .ok_or_else(|| SimError::NoSuchPatch(name.into()))
    }

    /// The enabled patch (all our patches replace, so there is at most one).
    fn enabled(&self) -> Option<usize> {
        self.modules.iter().position(|m| m.enabled)
    }

    /// The name of the enabled patch.
    pub fn enabled_patch(&self) -> Option<&'static str> {
        self.enabled().map(|i| self.modules[i].name)
    }

    /// The loaded patch modules, in load order.
    pub fn patch_modules(&self) -> Vec<&'static str> {
        self.modules.iter().map(|m| m.name).collect()
    }

    /// Whether a transition is in progress.
    pub fn in_transition(&self) -> bool {
        self.transition.is_some()
    }

    pub fn log(&self) -> &[Event] {
        &self.log
    }

    /// The log as text, one line per event.
    pub fn lines(&self) -> Vec<String> {
        self.log
            .iter()
            .filter(|e| printed(e))
            .map(|e| e.to_string())
            .collect()
    }

    /// Only the plan steps, as text: what the kernel runtime prints for each step.
    pub fn step_lines(&self) -> Vec<String> {
        self.log
            .iter()
            .filter(|e| matches!(e, Event::Step { .. }) && printed(e))
            .map(|e| e.to_string())
            .collect()
    }

    /// Drops the log so far.
    pub fn clear_log(&mut self) {
        self.log.clear();
    }
}

/// The host side of [`crate::sys`].
pub(crate) mod sys {
    use core::ffi::c_void;

    use crate::abi::{Gfp, ShadowCtorFn, ShadowDtorFn};

    pub fn shadow_get(obj: *const c_void, id: u64) -> *mut c_void {
        super::store::get(obj, id)
    }

    pub fn shadow_alloc(
        obj: *const c_void,
        id: u64,
        size: usize,
        ctor: ShadowCtorFn,
        data: *mut c_void,
        or_get: bool,
        gfp: Gfp,
    ) -> *mut c_void {
        // SAFETY: `crate::shadow` pairs `data` with `ctor`.
        unsafe { super::store::alloc(obj, id, size, ctor, data, or_get, gfp) }
    }

    pub fn shadow_free(obj: *const c_void, id: u64, dtor: ShadowDtorFn) {
        super::store::free(obj, id, dtor)
    }

    pub fn shadow_free_all(id: u64, dtor: ShadowDtorFn) {
        super::store::free_all(id, Some(dtor));
    }

    pub fn log(args: core::fmt::Arguments<'_>) {
        super::log_message(args)
    }
}
