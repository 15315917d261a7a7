//! The dispatcher: the kernel calls it (through the C init's trampolines) for every object
//! and hook of our patch; it runs the planner's steps.
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

use core::cell::UnsafeCell;
use core::ffi::{c_char, c_int, CStr};

use alloc::vec::Vec;

use crate::abi::{self, PatchHeader};
use crate::fallible;
use crate::plan::{self, Hook, Plan, Runner, Side, Step, StepLine};
use crate::reader::ReadError;
use crate::reader::{self, Patch};

use super::{
    klp_rs_pin, klp_rs_pin_begin, klp_rs_pinned, klp_rs_prev_header, klp_rs_replaces,
    klp_rs_shadow_free_all, klp_rs_unpin, klp_rs_unpin_all,
};

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

struct Dispatcher {
    phase: Phase,
    own: Option<Patch<'static, usize>>,
    /// The outgoing patch's tables; valid only while its module is pinned by the kernel,
    /// which is until our transition completes or is reversed. Dropped then.
    old: Option<Patch<'static, usize>>,
    plan: Option<Plan<'static>>,
    /// Plans for target modules that loaded during the transition in flight, by module.
    late: Vec<(&'static str, Plan<'static>)>,
    /// A target module between its pre_patch and post_patch, with the plan its pre_patch
    /// made. After an enable completes at vmlinux, the kernel still calls post_patch for the
    /// other objects: those calls must not look like a module coming.
    coming: Option<(&'static str, Plan<'static>)>,
    /// A target module between its pre_unpatch and post_unpatch.
    going: Option<&'static str>,
    /// Plans for the callbacks that cannot report a failure, made in the enable's pre_patch,
    /// which can: nothing that runs where a failure cannot be reported allocates. The
    /// disable, made for every module object (the runner skips the sets of modules that are
    /// not loaded then), and each of our module objects going while we are enabled.
    disable: Option<Plan<'static>>,
    going_plans: Vec<(&'static str, Plan<'static>)>,
    /// Module objects that went during the disable in flight (room reserved at enable time):
    /// the disable plan is kept for the next disable should this one be reversed, so their
    /// steps are skipped rather than removed from it.
    gone: Vec<&'static str>,
}

/// Mutable global state, serialized by the kernel.
struct Global<T>(UnsafeCell<T>);

// SAFETY: every livepatch callback, module notifier and sysfs write that reaches the
// dispatcher runs under the kernel's `klp_mutex`, so accesses never overlap.
unsafe impl<T> Sync for Global<T> {}

static STATE: Global<Dispatcher> = Global(UnsafeCell::new(Dispatcher {
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
}));

/// What `own()` answers before our tables are read, which never happens when dispatching.
static NO_TABLES: Patch<'static, usize> = Patch {
    name: "",
    format_version: 0,
    funcs: Vec::new(),
    sets: Vec::new(),
    shadows: Vec::new(),
};

const EINVAL: c_int = 22;
const ENOMEM: c_int = 12;

/// Called by the C init's module exit, after the kernel freed the patch: nothing of ours
/// runs any more, so what the dispatcher still holds goes.
#[unsafe(no_mangle)]
pub extern "C" fn klp_rs_release() {
    // SAFETY: no callback can run any more (the patch is freed before the module exits).
    let d = unsafe { &mut *STATE.0.get() };
    d.release();
    d.own = None;
}

/// The table format this module's runtime reads: the C init checks the tables against it.
#[unsafe(no_mangle)]
pub extern "C" fn klp_rs_format_version() -> u32 {
    abi::FORMAT_VERSION
}

/// Called by the C init's trampolines: `hook` is a [`Hook`] number, `object` the object's
/// name (`vmlinux` spelled out).
///
/// # Safety
/// `header` is this module's patch header; `object` a NUL-terminated name. Called only from
/// livepatch callbacks (under `klp_mutex`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn klp_rs_dispatch(
    header: *const PatchHeader,
    hook: u32,
    object: *const c_char,
) -> c_int {
    // SAFETY: see `Global`'s Sync impl: calls are serialized.
    let d = unsafe { &mut *STATE.0.get() };
    if d.own.is_none() {
        // SAFETY: our own header and tables live as long as this module.
        match unsafe { reader::read_memory(&*header) } {
            Ok(p) => d.own = Some(p),
            Err(e) => {
                crate::pr_info!("klp-rs: cannot read this module's tables: {e}");
                return read_errno(&e);
            }
        }
    }
    // SAFETY: per the contract. A `&str` made from a `CStr` keeps its NUL after it, so it
    // may go back to C (`c_name`); module names are ASCII, anything else is not ours.
    let Ok(object) = unsafe { CStr::from_ptr(object) }.to_str() else {
        return 0;
    };
    let Some(hook) = Hook::from_raw(hook) else {
        crate::pr_info!("klp-rs: unknown hook number {hook} from the C init");
        return -EINVAL;
    };
    d.dispatch(hook, object)
}

/// A module object's name for C. Table strings are followed by their NUL in memory (the
/// macros write them so, and the reader checks it).
fn c_name(name: &str) -> *const c_char {
    name.as_ptr().cast()
}

/// Whether a target module is loaded, as the transition in flight knows it: pinned.
fn pinned(name: &str) -> bool {
    // SAFETY: `c_name`.
    name == "vmlinux" || unsafe { klp_rs_pinned(c_name(name)) } != 0
}

/// Pins the module if it is loaded; whether it is.
fn pin(name: &str) -> bool {
    // SAFETY: `c_name`; called under klp_mutex, as every pin operation.
    unsafe { klp_rs_pin(c_name(name)) != 0 }
}

fn unpin(name: &str) {
    // SAFETY: as `pin`.
    unsafe { klp_rs_unpin(c_name(name)) }
}

fn unpin_all() {
    // SAFETY: under klp_mutex.
    unsafe { klp_rs_unpin_all() }
}

impl Dispatcher {
    fn dispatch(&mut self, hook: Hook, object: &str) -> c_int {
        let vmlinux = object == "vmlinux";
        match (hook, self.phase, vmlinux) {
            (Hook::PrePatch, Phase::Idle, true) => self.start_enable(),
            (Hook::PostPatch, Phase::Enabling, true) => {
                self.finish(false, |r, p, late| {
                    plan::run(r, p.after_with(late.iter().map(|(_, l)| l)))
                });
                self.phase = Phase::Enabled;
                0
            }
            // Cancelled after our pre_patch succeeded, or reversed: undo, the old patch stays.
            (Hook::PostUnpatch, Phase::Enabling, true) => {
                self.finish(false, |r, p, late| {
                    for (_, l) in late.iter().rev() {
                        plan::run(r, l.reverse());
                    }
                    plan::run(r, p.reverse());
                });
                self.phase = Phase::Gone;
                self.release();
                0
            }
            // A target module comes or goes during our transition.
            (Hook::PrePatch, Phase::Enabling | Phase::Disabling, false) => {
                self.coming_in_transition(object)
            }
            (Hook::PostUnpatch, Phase::Enabling | Phase::Disabling, false) => {
                self.going_in_transition(object);
                0
            }
            (Hook::PreUnpatch, Phase::Enabled, true) => {
                self.start_disable();
                0
            }
            (Hook::PostUnpatch, Phase::Disabling, true) => {
                // The sets of modules that came during the disable had only their pre_patch.
                let gone = core::mem::take(&mut self.gone);
                self.finish(false, |r, p, late| {
                    for (_, l) in late.iter().rev() {
                        plan::run(r, l.reverse());
                    }
                    plan::run(
                        r,
                        p.after.iter().copied().filter(|s| !skipped(s, &gone, late)),
                    );
                });
                self.phase = Phase::Gone;
                self.release();
                0
            }
            // The unpatching transition was reversed: the patch stays, and the sets of
            // modules that came meanwhile finish setting up (while still pinned).
            (Hook::PostPatch, Phase::Disabling, true) => {
                let gone = core::mem::take(&mut self.gone);
                self.finish(true, |r, p, late| {
                    plan::run(r, p.reverse().filter(|s| !skipped(s, &gone, late)));
                    for (_, l) in late {
                        plan::run(r, l.after.iter().copied());
                    }
                });
                self.gone = gone;
                self.gone.clear();
                self.phase = Phase::Enabled;
                0
            }
            // A target module comes or goes while we are the enabled patch.
            (Hook::PrePatch, Phase::Enabled, false) => {
                let Some(object) = self.own_object(object) else {
                    return 0;
                };
                let Ok(plan) = plan::module_coming(self.own(), object) else {
                    return -ENOMEM;
                };
                match plan::run_before(&mut self.runner(), &plan) {
                    Ok(()) => {
                        self.coming = Some((object, plan));
                        0
                    }
                    Err(errno) => errno_to_kernel(errno),
                }
            }
            (Hook::PostPatch, Phase::Enabled, false)
                if self.coming.as_ref().is_some_and(|(o, _)| *o == object) =>
            {
                if let Some((_, plan)) = self.coming.take() {
                    plan::run(&mut self.runner(), plan.after.iter().copied());
                }
                0
            }
            // klp_module_coming could not patch the module after our pre_patch: it calls our
            // post_unpatch and the load fails. Undo what the pre_patch set up.
            (Hook::PostUnpatch, Phase::Enabled, false)
                if self.coming.as_ref().is_some_and(|(o, _)| *o == object) =>
            {
                if let Some((_, plan)) = self.coming.take() {
                    plan::run(&mut self.runner(), plan.reverse());
                }
                0
            }
            (Hook::PreUnpatch, Phase::Enabled, false) => {
                if let Some((o, plan)) = self.going_plan(object) {
                    plan::run(&mut self.runner(), plan.before_steps());
                    self.going = Some(o);
                }
                0
            }
            (Hook::PostUnpatch, Phase::Enabled, false) if self.going == Some(object) => {
                self.going = None;
                if let Some((_, plan)) = self.going_plan(object) {
                    plan::run(&mut self.runner(), plan.after.iter().copied());
                }
                0
            }
            // The other objects' post callbacks at the end of a transition whose steps ran at
            // vmlinux; anything after the patch is gone.
            _ => 0,
        }
    }

    /// The plan made at enable time for one of our module objects going.
    fn going_plan(&self, object: &str) -> Option<(&'static str, &Plan<'static>)> {
        self.going_plans
            .iter()
            .find(|(o, _)| *o == object)
            .map(|(o, p)| (*o, p))
    }

    /// A target module loads during our transition: `klp_module_coming` calls our
    /// `pre_patch` for it, never `post_patch` (we are the transition patch), and at the end
    /// `post_patch` or `post_unpatch` comes with the rest.
    fn coming_in_transition(&mut self, object: &str) -> c_int {
        // The enable itself calls pre_patch for every loaded object; those were counted and
        // pinned when the plan was made.
        if pinned(object) {
            return 0;
        }
        // Only modules our sets or the outgoing patch's sets live on matter.
        let Some(object) = self.set_object(object) else {
            return 0;
        };
        if !pin(object) {
            return 0;
        }
        let late = match self.phase {
            // The outgoing patch, still the enabled one, has just set up its own sets on it
            // (it comes before us in klp_patches): this is the replace restricted to it.
            Phase::Enabling => plan::replace_object(self.old.as_ref(), self.own(), object),
            // Our sets on it set up, to be torn down with the rest (or finished, if the
            // disable is reversed), as the kernel does for a C patch's callbacks.
            _ => plan::module_coming(self.own(), object),
        };
        let Ok(late) = late else {
            unpin(object);
            return -ENOMEM;
        };
        if self.late.try_reserve(1).is_err() {
            unpin(object);
            return -ENOMEM;
        }
        match plan::run_before(&mut self.runner(), &late) {
            Ok(()) => {
                // Room was reserved above: this does not allocate.
                if let Err((_, late)) =
                    fallible::push_within_capacity(&mut self.late, (object, late))
                {
                    plan::run(&mut self.runner(), late.reverse());
                    unpin(object);
                    return -ENOMEM;
                }
                0
            }
            Err(errno) => {
                // The load fails: the kernel frees the module, so our pin must go now.
                unpin(object);
                errno_to_kernel(errno)
            }
        }
    }

    /// A pinned target module goes during our transition all the same (its init failed
    /// after it came, or `rmmod -f`): `klp_cleanup_module_patches_limited` calls only our
    /// `post_unpatch`, after the outgoing patch's own teardown of its sets there (it is
    /// earlier in klp_patches and not the transition patch, so it gets both unpatch
    /// callbacks). What this transition set up on the module for us is torn down now; its
    /// remaining steps are skipped at the end, the module being unpinned.
    fn going_in_transition(&mut self, object: &str) {
        let Some(object) = self.set_object(object) else {
            return;
        };
        if !pinned(object) {
            return;
        }
        crate::pr_info!("klp-rs: {object} goes during the transition");
        let side = self.own_side();
        let mut main = false;
        if let Some(entry) = self.late.iter_mut().find(|(o, _)| *o == object) {
            // Emptied in place (no removal, which could reach the panic handler): an entry
            // with no name and no steps runs nothing.
            let (_, late) = core::mem::take(entry);
            plan::run(&mut self.runner(), late.undo_on(object, side));
        } else if let Some(plan) = &self.plan {
            main = true;
            match self.phase {
                // Disabling: pre_unpatch ran for its sets; finish their teardown.
                Phase::Disabling => {
                    if let Some((_, going)) = self.going_plan(object) {
                        plan::run(&mut self.runner(), going.after.iter().copied());
                    }
                }
                _ => plan::run(&mut self.runner(), plan.undo_on(object, Side::New)),
            }
        }
        // Should it come back before the transition ends, it is a late module then: the main
        // plan must not run its steps a second time. The disable plan is kept for a later
        // disable, so there the module is only noted (room was reserved for every object).
        if self.phase == Phase::Disabling {
            if main && !self.gone.contains(&object) {
                let _ = fallible::push_within_capacity(&mut self.gone, object);
            }
        } else if let Some(plan) = &mut self.plan {
            plan.forget(object);
        }
        unpin(object);
    }

    /// The side our own sets are on in the plans of the transition in flight.
    fn own_side(&self) -> Side {
        match self.phase {
            Phase::Enabling => Side::New,
            _ => Side::Old,
        }
    }

    /// `object` as the tables spell it, if a set of ours or of the outgoing patch is on it.
    fn set_object(&self, object: &str) -> Option<&'static str> {
        self.set_objects().find(|o| *o == object)
    }

    /// The objects the sets of ours and of the outgoing patch live on, as the tables spell
    /// them (repeats included).
    fn set_objects(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.own()
            .sets
            .iter()
            .chain(self.old.iter().flat_map(|o| o.sets.iter()))
            .map(|s| s.object)
    }

    /// `object` as our tables spell it, if one of our sets is on it.
    fn own_object(&self, object: &str) -> Option<&'static str> {
        self.own()
            .sets
            .iter()
            .map(|s| s.object)
            .find(|o| *o == object)
    }

    /// Our tables, read at the first call (`klp_rs_dispatch` does not dispatch before they
    /// are); no tables at all otherwise, rather than a path to the panic handler.
    fn own(&self) -> &Patch<'static, usize> {
        self.own.as_ref().unwrap_or(&NO_TABLES)
    }

    fn runner(&self) -> KernelRunner<'_> {
        KernelRunner {
            own: self.own(),
            old: self.old.as_ref(),
            // In a transition, a module object's hooks run only while it is pinned; outside
            // one, the hooks are those of the module coming or going, which is there.
            in_transition: matches!(self.phase, Phase::Enabling | Phase::Disabling),
        }
    }

    fn start_enable(&mut self) -> c_int {
        let result = self.prepare_enable();
        if let Err(errno) = result {
            self.phase = Phase::Gone;
            self.release();
            return errno;
        }
        self.phase = Phase::Enabling;
        self.pin_set_objects();
        let Ok(plan) = plan::replace(self.old.as_ref(), self.own(), &pinned) else {
            unpin_all();
            self.phase = Phase::Gone;
            self.release();
            return -ENOMEM;
        };
        match plan::run_before(&mut self.runner(), &plan) {
            Ok(()) => {
                self.plan = Some(plan);
                0
            }
            Err(errno) => {
                // The kernel cancels without calling our post_unpatch for vmlinux.
                unpin_all();
                self.phase = Phase::Gone;
                self.release();
                errno_to_kernel(errno)
            }
        }
    }

    /// Everything the enable needs that can fail, before anything runs: the tables below,
    /// room for the pins, and the plans for the callbacks that cannot fail later.
    fn prepare_enable(&mut self) -> Result<(), c_int> {
        self.read_below()?;
        // SAFETY: under klp_mutex, in our pre_patch.
        if unsafe { klp_rs_pin_begin() } != 0 {
            return Err(-ENOMEM);
        }
        let own = self.own();
        let disable = plan::disable(own, &|_| true).map_err(|_| -ENOMEM)?;
        let mut going_plans = Vec::new();
        for s in own.sets.iter().filter(|s| s.object != "vmlinux") {
            if going_plans.iter().any(|(o, _)| *o == s.object) {
                continue;
            }
            let p = plan::module_going(own, s.object).map_err(|_| -ENOMEM)?;
            fallible::push(&mut going_plans, (s.object, p)).map_err(|_| -ENOMEM)?;
        }
        let mut gone = Vec::new();
        gone.try_reserve_exact(going_plans.len())
            .map_err(|_| -ENOMEM)?;
        self.disable = Some(disable);
        self.going_plans = going_plans;
        self.gone = gone;
        Ok(())
    }

    /// Reads the tables of the klp-rs patch below ours and decides what we do with them: a
    /// replace takes them over (`self.old`), unless a shadow type changed layout; a stacking
    /// patch plans alone, unless it shares a set or a shadow id with the patch below.
    fn read_below(&mut self) -> Result<(), c_int> {
        let me = self.own().name;
        let mut prev = core::ptr::null();
        // SAFETY: called from our pre_patch, during our transition: the previous patch's
        // klp_state (if any) is reachable and its module pinned until we complete.
        if unsafe { klp_rs_prev_header(&mut prev) } != 0 {
            crate::pr_info!(
                "klp-rs: {me} cannot take over from the patch below: its klp-rs state does not \
                 point to klp-rs tables (another tool registered id {:#x}?)",
                abi::KLP_STATE_ID
            );
            return Err(-EINVAL);
        }
        if prev.is_null() {
            return Ok(());
        }
        // SAFETY: under klp_mutex.
        let replaces = unsafe { klp_rs_replaces() } != 0;
        let verb = if replaces { "replace" } else { "stack on" };
        // SAFETY: the C side checked the magic; the header and its tables stay valid until we
        // drop what we read (the module is pinned until we complete).
        let below = match unsafe { reader::read_memory(&*prev) } {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: the magic is ours, and the name field's position and meaning are
                // the same in every format version.
                let name = unsafe { CStr::from_ptr((*prev).name) }
                    .to_str()
                    .unwrap_or("the patch below");
                crate::pr_info!("klp-rs: {me} cannot {verb} {name}: {e}");
                return Err(read_errno(&e));
            }
        };
        let mut refused = false;
        let mut report = |c: crate::check::Conflict<'_>| {
            crate::pr_info!("klp-rs: {me} cannot {verb} {}: {c}", below.name);
            refused = true;
        };
        if replaces {
            crate::check::replace_conflicts(&below, self.own()).for_each(&mut report);
        } else {
            crate::check::stack_conflicts(&below, self.own()).for_each(&mut report);
        }
        if refused {
            return Err(-EINVAL);
        }
        if replaces {
            self.old = Some(below);
        }
        Ok(())
    }

    /// The disable runs the plan made at enable time: a pre_unpatch callback cannot fail,
    /// so nothing here allocates. Sets on modules that are not loaded now are skipped.
    fn start_disable(&mut self) {
        // Room for every static object was made at init: this cannot fail (the C init).
        // SAFETY: under klp_mutex, in our pre_unpatch.
        let _ = unsafe { klp_rs_pin_begin() };
        self.phase = Phase::Disabling;
        self.pin_set_objects();
        self.plan = self.disable.take();
        if let Some(plan) = &self.plan {
            plan::run(&mut self.runner(), plan.before_steps());
        }
    }

    /// Pins every loaded module that a set of ours or of the outgoing patch lives on.
    fn pin_set_objects(&self) {
        for o in self.set_objects().filter(|o| *o != "vmlinux") {
            pin(o);
        }
    }

    /// Runs what remains of the transition in flight (`rest` gets the runner, the main plan
    /// and the late modules' plans), then lets go of the outgoing patch and the pins.
    /// `keep_disable`: a reversed disable, whose plan serves the next disable.
    fn finish(
        &mut self,
        keep_disable: bool,
        rest: impl FnOnce(&mut KernelRunner<'_>, &Plan<'static>, &[(&'static str, Plan<'static>)]),
    ) {
        let late = core::mem::take(&mut self.late);
        if let Some(plan) = self.plan.take() {
            rest(&mut self.runner(), &plan, &late);
            if keep_disable {
                self.disable = Some(plan);
            }
        }
        self.old = None;
        self.gone.clear();
        unpin_all();
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

/// Whether a step of the main disable plan is left out: a hook on a module that went during
/// the disable, or on one that came during it (its own plan runs its sets).
fn skipped(step: &Step<'_>, gone: &[&str], late: &[(&str, Plan<'_>)]) -> bool {
    matches!(step, Step::Hook { object, .. }
        if gone.contains(object) || late.iter().any(|(o, _)| o == object))
}

/// The errno for tables that cannot be read.
fn read_errno(e: &ReadError) -> c_int {
    match e {
        ReadError::NoMemory(_) => -ENOMEM,
        _ => -EINVAL,
    }
}

/// What a failed `pre_patch` returns to the kernel: a negative errno it can report. A hook
/// that returned anything else (a positive value, `i32::MIN`, beyond `MAX_ERRNO`) fails the
/// load with `-EINVAL`.
fn errno_to_kernel(errno: i32) -> c_int {
    const MAX_ERRNO: i32 = 4095;
    if (-MAX_ERRNO..0).contains(&errno) {
        errno
    } else {
        -EINVAL
    }
}

/// Runs steps against the tables of this module and the outgoing one. A step's line is
/// printed when the step is carried out, so the log never claims a hook that did not run.
struct KernelRunner<'d> {
    own: &'d Patch<'static, usize>,
    old: Option<&'d Patch<'static, usize>>,
    in_transition: bool,
}

impl KernelRunner<'_> {
    fn patch(&self, side: Side) -> &Patch<'static, usize> {
        match side {
            Side::New => self.own,
            Side::Old => self.old.unwrap_or(self.own),
        }
    }

    fn line(&self, step: &Step<'static>) {
        crate::pr_info!(
            "{}",
            StepLine {
                patch: self.patch(step.side()).name,
                step
            }
        );
    }
}

impl Runner<'static> for KernelRunner<'_> {
    fn hook(&mut self, side: Side, set: u32, object: &'static str, hook: Hook) -> Result<(), i32> {
        let p = self.patch(side);
        let step = Step::Hook {
            side,
            set,
            object,
            hook,
            defined: true,
        };
        // A module that went away during the transition gets no more calls.
        if self.in_transition && !pinned(object) {
            crate::pr_info!(
                "klp-rs: {}: set {set} {object} {hook} skipped: {object} is not loaded",
                p.name
            );
            return Ok(());
        }
        self.line(&step);
        let Some(addr) = p.set(set).and_then(|s| s.hooks[hook as usize]) else {
            return Ok(());
        };
        let obj = c_name(object);
        if hook == Hook::PrePatch {
            // SAFETY: a pre_patch slot holds a `PrePatchFn` (the macros write it); `obj` is
            // a table string, NUL-terminated in memory.
            let f = unsafe { core::mem::transmute::<usize, abi::PrePatchFn>(addr) };
            // SAFETY: as above.
            let r = unsafe { f(obj) };
            if r != 0 {
                crate::pr_info!(
                    "{}: set {set} {object} {hook} failed: {}",
                    p.name,
                    r.unsigned_abs()
                );
                return Err(r);
            }
        } else {
            // SAFETY: the other slots hold `HookFn`s.
            let f = unsafe { core::mem::transmute::<usize, abi::HookFn>(addr) };
            // SAFETY: as above.
            unsafe { f(obj) };
        }
        Ok(())
    }

    fn free_shadow(&mut self, side: Side, set: u32, shadow: u64) {
        self.line(&Step::FreeShadow { side, set, shadow });
        let p = self.patch(side);
        let dtor = p
            .shadows
            .iter()
            .find(|t| t.id == shadow)
            .and_then(|t| t.dtor);
        // SAFETY: a dtor slot holds a `ShadowDtorFn` of the type stored under this id.
        let dtor = dtor.map(|a| unsafe { core::mem::transmute::<usize, abi::ShadowDtorFn>(a) });
        // SAFETY: runs under klp_mutex after the transition: no patched code uses them.
        let n = unsafe { klp_rs_shadow_free_all(shadow, dtor) };
        crate::pr_info!("{}: shadow {shadow:#x}: {n} freed", p.name);
    }
}
