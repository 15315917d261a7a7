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
//! Outside a transition, a hook for a module object means that module is coming or going.

use core::cell::UnsafeCell;
use core::ffi::{c_char, c_int, CStr};

use crate::abi::{self, PatchHeader};
use crate::plan::{self, Hook, Plan, Runner, Side, Step, StepLine};
use crate::reader::{self, Patch};

use super::{klp_rs_object_loaded, klp_rs_prev_header, klp_rs_shadow_free_all};

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
    /// A target module between its pre_patch and post_patch (coming) or pre_unpatch and
    /// post_unpatch (going). After an enable completes at vmlinux, the kernel still calls
    /// post_patch for the other objects: those calls must not look like a module coming.
    module: Option<&'static str>,
    /// Module objects that were loaded when the plan in flight was made.
    loaded_at_start: alloc::vec::Vec<&'static str>,
    /// Plans for target modules that loaded during our enabling transition.
    late: alloc::vec::Vec<Plan<'static>>,
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
    module: None,
    loaded_at_start: alloc::vec::Vec::new(),
    late: alloc::vec::Vec::new(),
}));

const EINVAL: c_int = 22;

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
    hook: c_int,
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
                return -EINVAL;
            }
        }
    }
    // SAFETY: per the contract.
    let object = unsafe { CStr::from_ptr(object) }.to_str().unwrap_or("?");
    let hook = match hook {
        0 => Hook::PrePatch,
        1 => Hook::PostPatch,
        2 => Hook::PreUnpatch,
        _ => Hook::PostUnpatch,
    };
    d.dispatch(hook, object)
}

fn loaded(name: &str) -> bool {
    // SAFETY: names come from tables in memory, where each is followed by its NUL.
    name == "vmlinux" || unsafe { klp_rs_object_loaded(name.as_ptr().cast()) } != 0
}

impl Dispatcher {
    fn dispatch(&mut self, hook: Hook, object: &str) -> c_int {
        let vmlinux = object == "vmlinux";
        match (hook, self.phase, vmlinux) {
            (Hook::PrePatch, Phase::Idle, true) => self.start_enable(),
            (Hook::PostPatch, Phase::Enabling, true) => {
                let late = core::mem::take(&mut self.late);
                self.finish(|p| p.after_with(&late));
                self.phase = Phase::Enabled;
                0
            }
            // Cancelled after our pre_patch succeeded, or reversed: undo, the old patch stays.
            (Hook::PostUnpatch, Phase::Enabling, true) => {
                let late = core::mem::take(&mut self.late);
                for l in late.iter().rev() {
                    plan::run(&mut self.runner(), &l.reverse());
                }
                self.finish(Plan::reverse);
                self.phase = Phase::Gone;
                0
            }
            // A target module loads during our enabling transition (the kernel calls our
            // pre_patch for it now, post_patch at the end): its part of the replace, which
            // the plan made at the start could not include. The outgoing patch, still the
            // enabled one, has just set up its own sets on it.
            (Hook::PrePatch, Phase::Enabling, false) if !self.loaded_at_start.contains(&object) => {
                let late = plan::replace_object(self.old.as_ref(), self.own(), object);
                match plan::run_before(&mut self.runner(), &late) {
                    Ok(()) => {
                        self.late.push(late);
                        0
                    }
                    Err(errno) => errno_to_kernel(errno),
                }
            }
            (Hook::PreUnpatch, Phase::Enabled, true) => {
                let plan = plan::disable(self.own(), &loaded);
                plan::run(&mut self.runner(), &plan.before_steps());
                self.plan = Some(plan);
                self.phase = Phase::Disabling;
                0
            }
            (Hook::PostUnpatch, Phase::Disabling, true) => {
                self.finish(|p| p.after.clone());
                self.phase = Phase::Gone;
                0
            }
            // The unpatching transition was reversed: the patch stays.
            (Hook::PostPatch, Phase::Disabling, true) => {
                self.finish(Plan::reverse);
                self.phase = Phase::Enabled;
                0
            }
            // A target module comes or goes while we are the enabled patch.
            (Hook::PrePatch, Phase::Enabled, false) => {
                let plan = plan::module_coming(self.own(), object);
                match plan::run_before(&mut self.runner(), &plan) {
                    Ok(()) => {
                        self.module = self.own_object(object);
                        0
                    }
                    Err(errno) => errno_to_kernel(errno),
                }
            }
            (Hook::PostPatch, Phase::Enabled, false) if self.module == Some(object) => {
                self.module = None;
                let plan = plan::module_coming(self.own(), object);
                plan::run(&mut self.runner(), &plan.after);
                0
            }
            (Hook::PreUnpatch, Phase::Enabled, false) => {
                let plan = plan::module_going(self.own(), object);
                plan::run(&mut self.runner(), &plan.before_steps());
                self.module = self.own_object(object);
                0
            }
            (Hook::PostUnpatch, Phase::Enabled, false) if self.module == Some(object) => {
                self.module = None;
                let plan = plan::module_going(self.own(), object);
                plan::run(&mut self.runner(), &plan.after);
                0
            }
            // The other objects of a transition whose steps ran at vmlinux.
            _ => 0,
        }
    }

    /// `object` as our tables spell it, if one of our sets is on it.
    fn own_object(&self, object: &str) -> Option<&'static str> {
        self.own()
            .sets
            .iter()
            .map(|s| s.object)
            .find(|o| *o == object)
    }

    fn own(&self) -> &Patch<'static, usize> {
        self.own.as_ref().expect("read at the first call")
    }

    fn runner(&self) -> KernelRunner<'_> {
        KernelRunner {
            own: self.own(),
            old: self.old.as_ref(),
        }
    }

    fn start_enable(&mut self) -> c_int {
        // SAFETY: called from our pre_patch, during our transition: the previous patch's
        // klp_state (if any) is reachable and its module pinned until we complete.
        let prev = unsafe { klp_rs_prev_header() };
        if !prev.is_null() {
            // SAFETY: as above; the header stays valid until we drop `old`.
            match unsafe { reader::read_memory(&*prev) } {
                Ok(p) => self.old = Some(p),
                Err(e) => {
                    // SAFETY: the name field's position is fixed in every format version.
                    let name = unsafe { CStr::from_ptr((*prev).name) }
                        .to_str()
                        .unwrap_or("?");
                    crate::pr_info!("klp-rs: {} cannot replace {name}: {e}", self.own().name);
                    return -EINVAL;
                }
            }
        }
        let plan = plan::replace(self.old.as_ref(), self.own(), &loaded);
        let objects = self.own().sets.iter().map(|s| s.object);
        let old_objects = self
            .old
            .iter()
            .flat_map(|o| o.sets.iter().map(|s| s.object));
        self.loaded_at_start = objects
            .chain(old_objects)
            .filter(|o| *o != "vmlinux" && loaded(o))
            .collect();
        let result = plan::run_before(&mut self.runner(), &plan);
        match result {
            Ok(()) => {
                self.plan = Some(plan);
                self.phase = Phase::Enabling;
                0
            }
            Err(errno) => {
                self.old = None;
                self.phase = Phase::Gone;
                errno_to_kernel(errno)
            }
        }
    }

    /// Runs what remains of the plan in flight and lets go of the outgoing patch.
    fn finish(&mut self, rest: impl FnOnce(&Plan<'static>) -> alloc::vec::Vec<Step<'static>>) {
        if let Some(plan) = self.plan.take() {
            let steps = rest(&plan);
            plan::run(&mut self.runner(), &steps);
        }
        self.old = None;
    }
}

fn errno_to_kernel(errno: i32) -> c_int {
    -errno.abs()
}

/// Runs steps against the tables of this module and the outgoing one.
struct KernelRunner<'d> {
    own: &'d Patch<'static, usize>,
    old: Option<&'d Patch<'static, usize>>,
}

impl KernelRunner<'_> {
    fn patch(&self, side: Side) -> &Patch<'static, usize> {
        match side {
            Side::New => self.own,
            Side::Old => self.old.unwrap_or(self.own),
        }
    }
}

impl Runner<'static> for KernelRunner<'_> {
    fn observe(&mut self, step: &Step<'static>) {
        let side = match step {
            Step::Hook { side, .. } | Step::FreeShadow { side, .. } => *side,
        };
        if !matches!(step, Step::Hook { defined: false, .. }) {
            crate::pr_info!(
                "{}",
                StepLine {
                    patch: self.patch(side).name,
                    step
                }
            );
        }
    }

    fn hook(&mut self, side: Side, set: u32, object: &'static str, hook: Hook) -> Result<(), i32> {
        // A module that went away during a transition gets no more calls.
        if !loaded(object) {
            crate::pr_info!("klp-rs: {object} is not loaded: set {set} {hook} skipped");
            return Ok(());
        }
        let p = self.patch(side);
        let Some(addr) = p.set(set).and_then(|s| s.hooks[hook as usize]) else {
            return Ok(());
        };
        let obj = object.as_ptr().cast::<c_char>();
        if hook == Hook::PrePatch {
            // SAFETY: a pre_patch slot holds a `PrePatchFn` (the macros write it); `obj` is
            // a table string, NUL-terminated in memory.
            let f = unsafe { core::mem::transmute::<usize, abi::PrePatchFn>(addr) };
            // SAFETY: as above.
            let r = unsafe { f(obj) };
            if r != 0 {
                crate::pr_info!("{}: set {set} {object} {hook} failed: {}", p.name, -r);
                return Err(-r);
            }
        } else {
            // SAFETY: the other slots hold `HookFn`s.
            let f = unsafe { core::mem::transmute::<usize, abi::HookFn>(addr) };
            // SAFETY: as above.
            unsafe { f(obj) };
        }
        Ok(())
    }

    fn free_shadow(&mut self, side: Side, _set: u32, shadow: u64) {
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
