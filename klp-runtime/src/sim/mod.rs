//! A host model of the kernel's livepatch core, for `cargo test` without a kernel. Patch
//! modules (each with its own tables) come and go, patches are enabled, atomically replaced
//! and disabled, transitions complete or are reversed, target modules load and unload, and
//! shadow variables behave as `klp_shadow_*` does.
//!
//! What runs is the kernel module's own dispatcher ([`crate::dispatch`]), one per patch
//! module, called per object and hook in the order the 5.10, 6.1 and 6.12 livepatch cores
//! call callbacks, the same in all three (kernel/livepatch/core.c, transition.c):
//!
//! - `klp_enable_patch`: `klp_init_patch` adds a nop object (`klp_add_nops`, no callbacks)
//!   for each object of the patches already in `klp_patches` that the new one lacks;
//!   `__klp_enable_patch` calls `pre_patch` of each loaded object in list order (vmlinux
//!   first), and on failure `klp_cancel_transition`;
//! - `klp_complete_transition`: for a replace, the replaced patches are unpatched and the
//!   nop objects discarded (`klp_discard_nops`) *before* the post callbacks of the loaded
//!   objects that remain; `post_unpatch` only where `pre_patch` succeeded
//!   (`post_unpatch_enabled`); then the replaced or disabled patches leave `klp_patches`;
//! - `klp_reverse_transition`: the target flips, and the transition later completes the
//!   other way (here at once);
//! - `klp_module_coming`: each patch in `klp_patches` order runs `pre_patch` of its object
//!   for the module, and `post_patch` unless it is the transition patch; a failure refuses
//!   the module and tears down the patches before (`klp_cleanup_module_patches_limited`);
//! - `klp_module_going`: each patch's object gets `pre_unpatch` (not the transition patch)
//!   and `post_unpatch`.
//!
//! The runtime's platform (pins, the patch below) is modelled as the C init implements it
//! (see [`platform`]): a target module the runtime pins cannot be unloaded, short of
//! [`Kernel::force_unload_object`].
//!
//! Every step is recorded; [`Kernel::lines`] renders the log in the format the kernel
//! runtime prints to dmesg, so the two can be compared line for line.

mod event;
mod modules;
mod platform;
pub mod store;
pub(crate) mod sys;

use std::collections::BTreeMap;

pub use event::Event;
pub use platform::current_hook;
pub(crate) use platform::log_message;
pub use sys::{rcu_read_depth, set_current_task, spin_held, SeqFile};

use crate::abi::PatchHeader;
use crate::check::{check, CheckError};
use crate::dispatch::Dispatcher;
use crate::hook::Errno;
use crate::plan::Hook;
use crate::reader::{self, LiveFn, ObjectName, Patch, ReadError};

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
    #[error("module {0} is in use (EBUSY): a patch pins it for its transition")]
    ModuleInUse(String),
    #[error("{0}.ko: invalid module name (EINVAL)")]
    InvalidModuleName(String),
    #[error("a transition is in progress (EBUSY)")]
    InTransition,
    #[error("no transition is in progress")]
    NoTransition,
    #[error("the runtime of {patch} refused to enable it ({errno}): {}", .why.join("; "))]
    Refused {
        patch: String,
        errno: Errno,
        why: Vec<String>,
    },
    #[error("out of memory")]
    NoMemory(#[from] crate::fallible::AllocError),
    #[error("pre_patch of {patch} set {set} failed with {errno}; the patch was not enabled")]
    PrePatchFailed { patch: String, set: u32, errno: i32 },
}

/// A `struct klp_object` of a registered patch.
struct KlpObject {
    name: ObjectName<'static>,
    /// A nop object `klp_add_nops` made for an object only the replaced patch has.
    dynamic: bool,
    /// Which of the four callbacks the object has (nop objects: none, until the runtime's
    /// `klp_rs_pin_begin` gives them `pre_patch` and `post_unpatch`).
    callbacks: [bool; 4],
    patched: bool,
    post_unpatch_enabled: bool,
}

impl KlpObject {
    fn new(name: ObjectName<'static>, dynamic: bool) -> KlpObject {
        KlpObject {
            name,
            dynamic,
            callbacks: [!dynamic; 4],
            patched: false,
            post_unpatch_enabled: false,
        }
    }
}

struct PatchModule {
    name: &'static str,
    header: &'static PatchHeader,
    dispatcher: Dispatcher,
    /// The patch's objects while it is in `klp_patches`, as the C init builds them (vmlinux,
    /// then the functions' objects, then the sets'), then the nop objects.
    objects: Vec<KlpObject>,
    enabled: bool,
    /// Target modules the runtime pinned (the C init's `pinned` array).
    pins: Vec<ObjectName<'static>>,
}

/// `klp_target_state` and `klp_transition_patch`.
struct Transition {
    patch: &'static str,
    patching: bool,
}

/// The simulated kernel. Shadow variables live in a per-thread store shared by all patches,
/// as in the kernel (see [`store`]).
#[derive(Default)]
pub struct Kernel {
    modules: Vec<PatchModule>,
    /// Registered patches, oldest first.
    klp_patches: Vec<&'static str>,
    /// Loaded target modules, with the references pins hold on each.
    loaded: BTreeMap<String, usize>,
    transition: Option<Transition>,
    log: Vec<Event>,
    failures: Vec<(String, u32, i32)>,
}

/// The objects the C init gives a patch (klp_rs_init.c): vmlinux first, then each object a
/// function or a set names, once.
fn static_objects(tables: &Patch<'static, LiveFn>) -> Vec<KlpObject> {
    let names = tables.funcs.iter().map(|f| f.object);
    let names = names.chain(tables.sets.iter().map(|s| s.object));
    let mut objects = vec![KlpObject::new(ObjectName::VMLINUX, false)];
    for n in names {
        if !objects.iter().any(|o| o.name == n) {
            objects.push(KlpObject::new(n, false));
        }
    }
    objects
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
        let name = tables.name;
        if self.modules.iter().any(|m| m.name == name) {
            return Err(SimError::AlreadyLoaded(name.into()));
        }
        // klp_init_patch: the static objects, then klp_add_nops (every patch replaces).
        let mut objects = static_objects(&tables);
        for p in &self.klp_patches {
            for o in &self.modules[self.index(p)?].objects {
                if !objects.iter().any(|n| n.name == o.name) {
                    objects.push(KlpObject::new(o.name, true));
                }
            }
        }
        self.modules.push(PatchModule {
            name,
            header,
            dispatcher: Dispatcher::new(),
            objects,
            enabled: false,
            pins: Vec::new(),
        });
        self.klp_patches.push(name);
        let m = self.modules.len() - 1;
        let log_start = self.log.len();
        // __klp_enable_patch.
        self.transition = Some(Transition {
            patch: name,
            patching: true,
        });
        for o in 0..self.modules[m].objects.len() {
            if !self.is_loaded(m, o) {
                continue;
            }
            let r = self.pre_patch(m, o);
            if let Err(errno) = r {
                // klp_cancel_transition, then the module's init fails and it is freed.
                self.transition = Some(Transition {
                    patch: name,
                    patching: false,
                });
                self.complete();
                self.unload_module(m);
                return Err(self.refusal(name, errno, log_start));
            }
            self.modules[m].objects[o].patched = true;
        }
        self.log.push(Event::TransitionStart {
            to: name,
            patching: true,
        });
        self.modules[m].enabled = true;
        Ok(())
    }

    /// Why an enable failed: the hook that failed, or what the runtime said.
    fn refusal(&self, patch: &'static str, errno: Errno, since: usize) -> SimError {
        let log = &self.log[since.min(self.log.len())..];
        if let Some(Event::HookFailed { set, errno, .. }) =
            log.iter().find(|e| matches!(e, Event::HookFailed { .. }))
        {
            return SimError::PrePatchFailed {
                patch: patch.into(),
                set: *set,
                errno: *errno,
            };
        }
        let why = log
            .iter()
            .filter_map(|e| match e {
                Event::Runtime(l) => Some(l.clone()),
                _ => None,
            })
            .collect();
        SimError::Refused {
            patch: patch.into(),
            errno,
            why,
        }
    }

    /// `echo 0 > /sys/kernel/livepatch/NAME/enabled`; the transition completes.
    pub fn disable(&mut self, name: &str) -> Result<(), SimError> {
        self.disable_pending(name)?;
        self.complete_transition()
    }

    /// As [`Kernel::disable`], leaving the transition in progress (`__klp_disable_patch`).
    pub fn disable_pending(&mut self, name: &str) -> Result<(), SimError> {
        if self.transition.is_some() {
            return Err(SimError::InTransition);
        }
        let m = self.index(name)?;
        if !self.modules[m].enabled {
            return Err(SimError::NotEnabled(name.into()));
        }
        let patch = self.modules[m].name;
        self.transition = Some(Transition {
            patch,
            patching: false,
        });
        for o in 0..self.modules[m].objects.len() {
            if self.modules[m].objects[o].patched {
                let _ = self.callback(m, o, Hook::PreUnpatch);
            }
        }
        self.log.push(Event::TransitionStart {
            to: patch,
            patching: false,
        });
        self.modules[m].enabled = false;
        Ok(())
    }

    /// `rmmod NAME`: only a patch the kernel has let go of can go.
    pub fn rmmod(&mut self, name: &str) -> Result<(), SimError> {
        let m = self.index(name)?;
        if self.klp_patches.contains(&self.modules[m].name) {
            return Err(SimError::Busy(name.into()));
        }
        self.unload_module(m);
        Ok(())
    }

    /// A patch module leaves (rmmod, or its init failed): the C init releases what its
    /// dispatcher holds. Every transition unpins at its end, so a pin left here is a runtime
    /// bug (the C init WARNs).
    fn unload_module(&mut self, m: usize) {
        let mut module = self.modules.remove(m);
        assert!(
            module.pins.is_empty(),
            "klp-rs runtime bug: {} leaves with {:?} still pinned",
            module.name,
            module.pins
        );
        module.dispatcher.unload();
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
        if self.transition.is_none() {
            return Err(SimError::NoTransition);
        }
        self.complete();
        Ok(())
    }

    /// Reverses the transition in progress (writing the opposite value to `enabled`,
    /// `klp_reverse_transition`), which then completes: the patch being enabled unwinds
    /// and the replaced one stays; or the disable is undone.
    pub fn reverse_transition(&mut self) -> Result<(), SimError> {
        let t = self.transition.as_mut().ok_or(SimError::NoTransition)?;
        t.patching = !t.patching;
        let to = t.patch;
        self.log.push(Event::TransitionReversed { to });
        let m = self.index(to)?;
        self.modules[m].enabled = !self.modules[m].enabled;
        self.complete();
        Ok(())
    }

    /// `klp_complete_transition`, then what `klp_try_complete_transition` frees.
    fn complete(&mut self) {
        let Some(t) = self.transition.as_ref() else {
            return;
        };
        let (to, patching) = (t.patch, t.patching);
        let Ok(m) = self.index(to) else {
            return;
        };
        if patching {
            // klp_unpatch_replaced_patches, klp_discard_nops.
            for other in self.modules.iter_mut().filter(|o| o.name != to) {
                if self.klp_patches.contains(&other.name) {
                    other.enabled = false;
                    other.objects.iter_mut().for_each(|o| o.patched = false);
                }
            }
            self.modules[m].objects.retain(|o| !o.dynamic);
        } else {
            self.modules[m]
                .objects
                .iter_mut()
                .for_each(|o| o.patched = false);
        }
        for o in 0..self.modules[m].objects.len() {
            if !self.is_loaded(m, o) {
                continue;
            }
            if patching {
                let _ = self.callback(m, o, Hook::PostPatch);
            } else {
                self.post_unpatch(m, o);
            }
        }
        self.log.push(Event::TransitionComplete { to, patching });
        self.transition = None;
        if !self.modules[m].enabled {
            self.klp_patches.retain(|p| *p != to);
            self.modules[m].objects.clear();
        } else {
            // klp_free_replaced_patches_async.
            for other in self.modules.iter_mut().filter(|o| o.name != to) {
                other.objects.clear();
            }
            self.klp_patches.retain(|p| *p == to);
        }
    }

    /// `klp_is_object_loaded`.
    fn is_loaded(&self, m: usize, o: usize) -> bool {
        let name = self.modules[m].objects[o].name;
        name.is_vmlinux() || self.loaded.contains_key(name.as_str())
    }

    /// `klp_pre_patch_callback`.
    fn pre_patch(&mut self, m: usize, o: usize) -> Result<(), Errno> {
        let r = self.callback(m, o, Hook::PrePatch);
        self.modules[m].objects[o].post_unpatch_enabled = r.is_ok();
        r
    }

    /// `klp_post_unpatch_callback`.
    fn post_unpatch(&mut self, m: usize, o: usize) {
        if self.modules[m].objects[o].post_unpatch_enabled {
            let _ = self.callback(m, o, Hook::PostUnpatch);
        }
        self.modules[m].objects[o].post_unpatch_enabled = false;
    }

    /// Calls the object's callback, if it has one: the patch module's dispatcher.
    fn callback(&mut self, m: usize, o: usize, hook: Hook) -> Result<(), Errno> {
        let object = &self.modules[m].objects[o];
        if !object.callbacks[hook as usize] {
            return Ok(());
        }
        let name = object.name;
        let header = self.modules[m].header;
        let mut dispatcher = std::mem::take(&mut self.modules[m].dispatcher);
        let mut sys = platform::Sim {
            kernel: self,
            module: m,
        };
        // SAFETY: the header is a linked crate's, whose tables live as long as the program;
        // the simulator passes object names to no C code.
        let r = unsafe { dispatcher.dispatch(&mut sys, header, hook, name) };
        self.modules[m].dispatcher = dispatcher;
        r
    }

    fn index(&self, name: &str) -> Result<usize, SimError> {
        self.modules
            .iter()
            .position(|m| m.name == name)
            .ok_or_else(|| SimError::NoSuchPatch(name.into()))
    }

    /// The name of the enabled patch: during a replace, the outgoing one until the
    /// transition completes.
    pub fn enabled_patch(&self) -> Option<&'static str> {
        let enabled = |p: &&&str| self.modules.iter().any(|m| m.name == **p && m.enabled);
        self.klp_patches.iter().find(enabled).copied()
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

    /// The log as text, one line per event, without the runtime's bookkeeping lines (skipped
    /// hooks, shadow counts, refusals: [`Event::Runtime`]) and the marks of undefined hooks.
    pub fn lines(&self) -> Vec<String> {
        self.log
            .iter()
            .filter(|e| e.shown())
            .map(|e| e.to_string())
            .collect()
    }

    /// Only the plan steps, as text: what the kernel runtime prints for each step.
    pub fn step_lines(&self) -> Vec<String> {
        self.log
            .iter()
            .filter(|e| matches!(e, Event::Step { .. }) && e.shown())
            .map(|e| e.to_string())
            .collect()
    }

    /// What the patches' own code printed: their hooks, their shadow types' `Drop`.
    pub fn messages(&self) -> Vec<String> {
        self.log
            .iter()
            .filter_map(|e| match e {
                Event::Message(m) => Some(m.clone()),
                _ => None,
            })
            .collect()
    }

    /// Drops the log so far.
    pub fn clear_log(&mut self) {
        self.log.clear();
    }
}
