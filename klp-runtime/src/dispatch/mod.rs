//! The dispatcher: the kernel calls it (through the C init's trampolines) for every object
//! and hook of our patch; it runs the planner's steps. The simulator runs this same code for
//! each patch module it loads, over its model of the livepatch core: only the [`Platform`]
//! differs.
//!
//! The kernel calls pre_patch/post_patch/... once per object, vmlinux first (the C init puts
//! it first, even when the patch changes nothing there). The whole before-part of a plan runs
//! at vmlinux's `pre_patch`, the after-part at vmlinux's `post_patch` (or `post_unpatch`);
//! the calls for the other objects of the same transition do nothing. That is also how the
//! sets of objects the *outgoing* patch has and we lack get their unpatch callbacks: the
//! kernel gives those objects no callbacks of ours ("dynamic" nop objects), but vmlinux's
//! hooks always come.
//!
//! Which target modules are loaded is decided when a transition starts, and each one a plan
//! counts on is pinned until the transition completes or is reversed (see the C init): by
//! the time the after-part runs, `klp_complete_transition()` has discarded the nop objects
//! (`klp_discard_nops()` before the post callbacks), so the kernel's object list no longer
//! knows the modules only the outgoing patch patches. A module that loads during a
//! transition is pinned when it comes (`klp_module_coming` calls the transition patch's
//! `pre_patch`, nops included since we give them the callback); one that goes although
//! pinned (its init failed, or `rmmod -f`) is unpinned in the `post_unpatch` that
//! `klp_module_going` calls, after what our side set up on it is torn down.
//!
//! Outside a transition, a hook for a module object means that module is coming or going.

mod exec;
mod modules;

// `HookAt` is for platforms that wrap hook calls: the simulator's.
#[cfg_attr(target_os = "none", allow(unused_imports))]
pub(crate) use exec::{HookAt, Platform, Report};

use alloc::vec::Vec;

use crate::abi::{self, PatchHeader};
use crate::fallible;
use crate::hook::Errno;
use crate::plan::{self, Hook, Plan, Side, Transition};
use crate::reader::{self, LiveFn, ObjectName, Patch, ReadError};
use exec::Executor;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Loaded, not yet enabled.
    Idle,
    /// The patching transition runs (enable or replace).
    Enabling,
    Enabled,
    /// The unpatching transition runs.
    Disabling,
    /// Disabled, cancelled or reversed before completion: the kernel frees the patch.
    Gone,
}

/// One patch module's dispatcher state: a static in the kernel module, one per loaded patch
/// module in the simulator.
pub(crate) struct Dispatcher {
    phase: Phase,
    own: Option<Patch<'static, LiveFn>>,
    /// The outgoing patch's tables; valid only while its module is pinned by the kernel,
    /// which is until our transition completes or is reversed. Dropped then.
    old: Option<Patch<'static, LiveFn>>,
    plan: Option<Plan<'static>>,
    /// Plans for target modules that loaded during the transition in flight, by module.
    late: Vec<(ObjectName<'static>, Plan<'static>)>,
    /// A target module between its pre_patch and post_patch, with the plan its pre_patch
    /// made. After an enable completes at vmlinux, the kernel still calls post_patch for the
    /// other objects: those calls must not look like a module coming.
    coming: Option<(ObjectName<'static>, Plan<'static>)>,
    /// A target module between its pre_unpatch and post_unpatch.
    going: Option<ObjectName<'static>>,
    /// Plans for the callbacks that cannot report a failure, made in the enable's pre_patch,
    /// which can: nothing that runs where a failure cannot be reported allocates. The
    /// disable, made for every module object (the runner skips the sets of modules that are
    /// not loaded then), and each of our module objects going while we are enabled.
    disable: Option<Plan<'static>>,
    going_plans: Vec<(ObjectName<'static>, Plan<'static>)>,
    /// Module objects that went during the disable in flight (room reserved at enable time):
    /// the disable plan is kept for the next disable should this one be reversed, so their
    /// steps are skipped rather than removed from it.
    gone: Vec<ObjectName<'static>>,
}

/// What `own()` answers before our tables are read, which never happens when dispatching.
static NO_TABLES: Patch<'static, LiveFn> = Patch {
    name: "",
    format_version: 0,
    funcs: Vec::new(),
    sets: Vec::new(),
    shadows: Vec::new(),
};

impl Default for Dispatcher {
    fn default() -> Dispatcher {
        Dispatcher::new()
    }
}

impl Dispatcher {
    pub const fn new() -> Dispatcher {
        Dispatcher {
            phase: Phase::Idle,
            own: None,
            old: None,
            plan: None,
            late: Vec::new(),
            coming: None,
            going: None,
            disable: None,
            going_plans: Vec::new(),
            gone: Vec::new(),
        }
    }

    /// A callback of ours: `hook` for `object` (`vmlinux` spelled out). Reads our tables at
    /// the first call.
    ///
    /// # Safety
    /// `header` is this patch module's header, whose tables live as long as the dispatcher;
    /// `object` is followed by a NUL in memory (the platform passes it to C).
    pub unsafe fn dispatch<P: Platform>(
        &mut self,
        sys: &mut P,
        header: &'static PatchHeader,
        hook: Hook,
        object: ObjectName<'_>,
    ) -> Result<(), Errno> {
        if self.own.is_none() {
            // SAFETY: per the contract.
            match unsafe { reader::read_memory(header) } {
                Ok(p) => self.own = Some(p),
                Err(e) => {
                    note(
                        sys,
                        format_args!("klp-rs: cannot read this module's tables: {e}"),
                    );
                    return Err(read_errno(&e));
                }
            }
        }
        self.dispatch_hook(sys, hook, object)
    }

    /// The module exits, after the kernel freed the patch: nothing of ours runs any more.
    pub fn unload(&mut self) {
        self.release();
        self.own = None;
    }

    fn dispatch_hook<P: Platform>(
        &mut self,
        sys: &mut P,
        hook: Hook,
        object: ObjectName<'_>,
    ) -> Result<(), Errno> {
        let vmlinux = object.is_vmlinux();
        match (hook, self.phase, vmlinux) {
            (Hook::PrePatch, Phase::Idle, true) => self.start_enable(sys),
            (Hook::PostPatch, Phase::Enabling, true) => {
                self.finish(sys, false, |r, t| plan::run(r, t.patched()));
                self.phase = Phase::Enabled;
                Ok(())
            }
            // Cancelled after our pre_patch succeeded, or reversed: undo, the old patch stays.
            (Hook::PostUnpatch, Phase::Enabling, true) => {
                self.finish(sys, false, |r, t| plan::run(r, t.patching_reversed()));
                self.phase = Phase::Gone;
                self.release();
                Ok(())
            }
            // A target module comes or goes during our transition.
            (Hook::PrePatch, Phase::Enabling | Phase::Disabling, false) => {
                self.coming_in_transition(sys, object)
            }
            (Hook::PostUnpatch, Phase::Enabling | Phase::Disabling, false) => {
                self.going_in_transition(sys, object);
                Ok(())
            }
            (Hook::PreUnpatch, Phase::Enabled, true) => {
                self.start_disable(sys);
                Ok(())
            }
            (Hook::PostUnpatch, Phase::Disabling, true) => {
                self.finish(sys, false, |r, t| plan::run(r, t.unpatched()));
                self.phase = Phase::Gone;
                self.release();
                Ok(())
            }
            // The unpatching transition was reversed: the patch stays, and the sets of
            // modules that came meanwhile finish setting up (while still pinned).
            (Hook::PostPatch, Phase::Disabling, true) => {
                self.finish(sys, true, |r, t| plan::run(r, t.unpatching_reversed()));
                self.phase = Phase::Enabled;
                Ok(())
            }
            // A target module comes or goes while we are the enabled patch.
            (Hook::PrePatch, Phase::Enabled, false) => {
                let Some(object) = self.own_object(object) else {
                    return Ok(());
                };
                let Ok(plan) = plan::module_coming(self.own(), object) else {
                    return Err(Errno::ENOMEM);
                };
                match plan::run_before(&mut self.runner(sys), &plan) {
                    Ok(()) => {
                        self.coming = Some((object, plan));
                        Ok(())
                    }
                    Err(errno) => Err(errno),
                }
            }
            (Hook::PostPatch, Phase::Enabled, false)
                if self.coming.as_ref().is_some_and(|(o, _)| *o == object) =>
            {
                if let Some((_, plan)) = self.coming.take() {
                    plan::run(&mut self.runner(sys), plan.after.iter().copied());
                }
                Ok(())
            }
            // klp_module_coming could not patch the module after our pre_patch: it calls our
            // post_unpatch and the load fails. Undo what the pre_patch set up.
            (Hook::PostUnpatch, Phase::Enabled, false)
                if self.coming.as_ref().is_some_and(|(o, _)| *o == object) =>
            {
                if let Some((_, plan)) = self.coming.take() {
                    plan::run(&mut self.runner(sys), plan.reverse());
                }
                Ok(())
            }
            (Hook::PreUnpatch, Phase::Enabled, false) => {
                if let Some((o, plan)) = self.going_plan(object) {
                    plan::run(&mut self.runner(sys), plan.before_steps());
                    self.going = Some(o);
                }
                Ok(())
            }
            (Hook::PostUnpatch, Phase::Enabled, false) if self.going == Some(object) => {
                self.going = None;
                if let Some((_, plan)) = self.going_plan(object) {
                    plan::run(&mut self.runner(sys), plan.after.iter().copied());
                }
                Ok(())
            }
            // The other objects' post callbacks at the end of a transition whose steps ran at
            // vmlinux; anything after the patch is gone.
            _ => Ok(()),
        }
    }

    /// The plan made at enable time for one of our module objects going.
    fn going_plan(&self, object: ObjectName<'_>) -> Option<(ObjectName<'static>, &Plan<'static>)> {
        self.going_plans
            .iter()
            .find(|(o, _)| *o == object)
            .map(|(o, p)| (*o, p))
    }

    /// Our tables, read at the first call (`klp_rs_dispatch` does not dispatch before they
    /// are); no tables at all otherwise, rather than a path to the panic handler.
    fn own(&self) -> &Patch<'static, LiveFn> {
        self.own.as_ref().unwrap_or(&NO_TABLES)
    }

    fn runner<'d, P: Platform>(&'d self, sys: &'d mut P) -> Executor<'d, P> {
        Executor {
            own: self.own(),
            old: self.old.as_ref(),
            in_transition: matches!(self.phase, Phase::Enabling | Phase::Disabling),
            sys,
        }
    }

    fn start_enable<P: Platform>(&mut self, sys: &mut P) -> Result<(), Errno> {
        let result = self.prepare_enable(sys);
        if let Err(errno) = result {
            self.phase = Phase::Gone;
            self.release();
            return Err(errno);
        }
        self.phase = Phase::Enabling;
        self.pin_set_objects(sys);
        let loaded = |o: ObjectName<'_>| sys.pinned(o);
        let plan = plan::replace(self.old.as_ref(), self.own(), &loaded);
        let Ok(plan) = plan else {
            sys.unpin_all();
            self.phase = Phase::Gone;
            self.release();
            return Err(Errno::ENOMEM);
        };
        match plan::run_before(&mut self.runner(sys), &plan) {
            Ok(()) => {
                self.plan = Some(plan);
                Ok(())
            }
            Err(errno) => {
                // The kernel cancels without calling our post_unpatch for vmlinux.
                sys.unpin_all();
                self.phase = Phase::Gone;
                self.release();
                Err(errno)
            }
        }
    }

    /// Everything the enable needs that can fail, before anything runs: the tables below,
    /// room for the pins, and the plans for the callbacks that cannot fail later.
    fn prepare_enable<P: Platform>(&mut self, sys: &mut P) -> Result<(), Errno> {
        self.read_below(sys)?;
        sys.pin_begin()?;
        let own = self.own();
        let disable = plan::disable(own, &|_| true).map_err(|_| Errno::ENOMEM)?;
        let mut going_plans = Vec::new();
        for s in own.sets.iter().filter(|s| !s.object.is_vmlinux()) {
            if going_plans.iter().any(|(o, _)| *o == s.object) {
                continue;
            }
            let p = plan::module_going(own, s.object).map_err(|_| Errno::ENOMEM)?;
            fallible::push(&mut going_plans, (s.object, p)).map_err(|_| Errno::ENOMEM)?;
        }
        let mut gone = Vec::new();
        gone.try_reserve_exact(going_plans.len())
            .map_err(|_| Errno::ENOMEM)?;
        self.disable = Some(disable);
        self.going_plans = going_plans;
        self.gone = gone;
        Ok(())
    }

    /// Reads the tables of the klp-rs patch below ours and decides what we do with them: a
    /// replace takes them over (`self.old`), unless a shadow type changed layout; a stacking
    /// patch plans alone, unless it shares a set or a shadow id with the patch below.
    fn read_below<P: Platform>(&mut self, sys: &mut P) -> Result<(), Errno> {
        let me = self.own().name;
        let Ok(below) = sys.below() else {
            note(
                sys,
                format_args!(
                    "klp-rs: {me} cannot take over from the patch below: its klp-rs state does \
                     not point to klp-rs tables (another tool registered id {:#x}?)",
                    abi::KLP_STATE_ID
                ),
            );
            return Err(Errno::EINVAL);
        };
        let Some(below) = below else {
            return Ok(());
        };
        let replaces = sys.replaces();
        let verb = if replaces { "replace" } else { "stack on" };
        // SAFETY: the platform checked the magic; the header and its tables stay valid until
        // we drop what we read (the kernel pins the module until our transition ends).
        let below = match unsafe { reader::read_memory(below) } {
            Ok(p) => p,
            Err(e) => {
                let mut buf = [0; 64];
                let name = sys.below_name(&mut buf).unwrap_or("the patch below");
                note(sys, format_args!("klp-rs: {me} cannot {verb} {name}: {e}"));
                return Err(read_errno(&e));
            }
        };
        let mut refused = false;
        let mut report = |c: crate::check::Conflict<'_>| {
            note(
                sys,
                format_args!("klp-rs: {me} cannot {verb} {}: {c}", below.name),
            );
            refused = true;
        };
        if replaces {
            crate::check::replace_conflicts(&below, self.own()).for_each(&mut report);
        } else {
            crate::check::stack_conflicts(&below, self.own()).for_each(&mut report);
        }
        if refused {
            return Err(Errno::EINVAL);
        }
        if replaces {
            self.old = Some(below);
        }
        Ok(())
    }

    /// The disable runs the plan made at enable time: a pre_unpatch callback cannot fail,
    /// so nothing here allocates. Sets on modules that are not loaded now are skipped.
    fn start_disable<P: Platform>(&mut self, sys: &mut P) {
        // Room for every static object was made at init: this cannot fail (the C init).
        let _ = sys.pin_begin();
        self.phase = Phase::Disabling;
        self.pin_set_objects(sys);
        self.plan = self.disable.take();
        if let Some(plan) = &self.plan {
            plan::run(&mut self.runner(sys), plan.before_steps());
        }
    }

    /// Pins every loaded module that a set of ours or of the outgoing patch lives on.
    fn pin_set_objects<P: Platform>(&self, sys: &mut P) {
        for o in self.set_objects().filter(|o| !o.is_vmlinux()) {
            sys.pin(o);
        }
    }

    /// Runs what remains of the transition in flight (`rest` gets the runner and the
    /// transition: [`Transition`] says what remains each way), then lets go of the outgoing
    /// patch and the pins.
    /// `keep_disable`: a reversed disable, whose plan serves the next disable.
    fn finish<P: Platform>(
        &mut self,
        sys: &mut P,
        keep_disable: bool,
        rest: impl FnOnce(&mut Executor<'_, P>, &Transition<'_, 'static>),
    ) {
        let late = core::mem::take(&mut self.late);
        if let Some(plan) = self.plan.take() {
            let transition = Transition {
                main: &plan,
                late: &late,
                gone: &self.gone,
            };
            rest(&mut self.runner(sys), &transition);
            if keep_disable {
                self.disable = Some(plan);
            }
        }
        self.old = None;
        self.gone.clear();
        sys.unpin_all();
    }

    /// Drops everything but our own tables: the patch is gone (disabled, cancelled or
    /// reversed), and the kernel will not call us again.
    fn release(&mut self) {
        self.plan = None;
        self.old = None;
        self.late = Vec::new();
        self.coming = None;
        self.going = None;
        self.disable = None;
        self.going_plans = Vec::new();
        self.gone = Vec::new();
    }
}

/// The errno for tables that cannot be read.
fn read_errno(e: &ReadError) -> Errno {
    match e {
        ReadError::NoMemory(_) => Errno::ENOMEM,
        _ => Errno::EINVAL,
    }
}

fn note<P: Platform>(sys: &mut P, args: core::fmt::Arguments<'_>) {
    sys.report(Report::Note(args));
}
