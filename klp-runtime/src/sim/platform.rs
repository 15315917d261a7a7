//! The dispatcher's [`Platform`] in the simulator: pins, the patch below and
//! `klp_shadow_free_all` over the model of [`Kernel`]; the simulator's own part is failure
//! injection and the capture of what hooks and destructors log.

use core::ffi::c_int;
use std::cell::{Cell, RefCell};

use super::{store, Event, Kernel};
use crate::abi::{self, PatchHeader};
use crate::dispatch::{HookAt, Platform, Report};
use crate::hook::Errno;
use crate::plan::Hook;
use crate::reader::ObjectName;

thread_local! {
    static MESSAGES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    static CURRENT: Cell<Option<(&'static str, u32, Hook)>> = const { Cell::new(None) };
}

/// Where patch code's log messages go on the host.
pub(crate) fn log_message(args: core::fmt::Arguments<'_>) {
    MESSAGES.with(|m| m.borrow_mut().push(args.to_string()));
}

/// The hook running now, as (patch, set, hook); for test patches that record what runs.
pub fn current_hook() -> Option<(&'static str, u32, Hook)> {
    CURRENT.with(|c| c.get())
}

/// The kernel as patch module `module` (an index into the loaded modules) sees it during
/// one of its callbacks.
pub(super) struct Sim<'k> {
    pub kernel: &'k mut Kernel,
    pub module: usize,
}

impl Sim<'_> {
    fn drain_messages(&mut self) {
        let msgs = MESSAGES.with(|m| std::mem::take(&mut *m.borrow_mut()));
        self.kernel.log.extend(msgs.into_iter().map(Event::Message));
    }
}

impl Platform for Sim<'_> {
    fn pinned(&self, object: ObjectName<'_>) -> bool {
        self.kernel.modules[self.module].pins.contains(&object)
    }

    /// As the C init's `klp_rs_pin`: an object of this patch (nop objects included) whose
    /// module is loaded.
    fn pin(&mut self, object: ObjectName<'static>) -> bool {
        let k = &mut *self.kernel;
        let m = &mut k.modules[self.module];
        if m.pins.contains(&object) {
            return true;
        }
        let ours = m.objects.iter().any(|o| o.name == object);
        let Some(refs) = k.loaded.get_mut(object.as_str()).filter(|_| ours) else {
            return false;
        };
        *refs += 1;
        m.pins.push(object);
        true
    }

    fn unpin(&mut self, object: ObjectName<'static>) {
        let k = &mut *self.kernel;
        let pins = &mut k.modules[self.module].pins;
        if let Some(i) = pins.iter().position(|p| *p == object) {
            pins.swap_remove(i);
            if let Some(refs) = k.loaded.get_mut(object.as_str()) {
                *refs -= 1;
            }
        }
    }

    fn unpin_all(&mut self) {
        while let Some(&p) = self.kernel.modules[self.module].pins.last() {
            self.unpin(p);
        }
    }

    /// As the C init's `klp_rs_pin_begin`: the nop objects get our `pre_patch` and
    /// `post_unpatch`. Host memory does not run out.
    fn pin_begin(&mut self) -> Result<(), Errno> {
        for o in self.kernel.modules[self.module]
            .objects
            .iter_mut()
            .filter(|o| o.dynamic)
        {
            o.callbacks[Hook::PrePatch as usize] = true;
            o.callbacks[Hook::PostUnpatch as usize] = true;
        }
        Ok(())
    }

    /// `klp_get_prev_state`: the state of the last patch before the transition patch in
    /// `klp_patches` that has one (every simulated patch module is a klp-rs one).
    fn below(&mut self) -> Result<Option<&'static PatchHeader>, Errno> {
        let k = &*self.kernel;
        let Some(t) = &k.transition else {
            return Ok(None);
        };
        let before = k.klp_patches.iter().take_while(|p| **p != t.patch);
        Ok(before
            .last()
            .and_then(|p| k.modules.iter().find(|m| m.name == *p))
            .map(|m| m.header))
    }

    fn below_name<'b>(&mut self, buf: &'b mut [u8; 64]) -> Option<&'b str> {
        let header = self.below().ok().flatten()?;
        // SAFETY: a simulated patch's header is a linked crate's, its name a C string.
        let name = unsafe { core::ffi::CStr::from_ptr(header.name) }.to_bytes();
        let n = name.len().min(buf.len());
        buf[..n].copy_from_slice(&name[..n]);
        core::str::from_utf8(&buf[..n]).ok()
    }

    fn replaces(&self) -> bool {
        true
    }

    fn free_all(&mut self, shadow: u64, dtor: Option<abi::ShadowDtorFn>) -> usize {
        let n = store::free_all_key(shadow, dtor);
        self.drain_messages();
        n
    }

    fn call_hook(&mut self, at: HookAt, call: &mut dyn FnMut() -> c_int) -> c_int {
        let injected = self
            .kernel
            .failures
            .iter()
            .find(|f| at.hook == Hook::PrePatch && f.0 == at.patch && f.1 == at.set);
        if let Some(&(_, _, errno)) = injected {
            return -errno;
        }
        CURRENT.with(|c| c.set(Some((at.patch, at.set, at.hook))));
        let ret = call();
        CURRENT.with(|c| c.set(None));
        self.drain_messages();
        ret
    }

    fn report(&mut self, report: Report<'_>) {
        let event = match report {
            Report::Ran { patch, step } => Event::Step { patch, step },
            Report::Failed { at, errno } => Event::HookFailed {
                patch: at.patch,
                set: at.set,
                object: at.object.as_str(),
                hook: at.hook,
                errno: errno.get(),
            },
            other => Event::Runtime(other.to_string()),
        };
        self.kernel.log.push(event);
    }
}
