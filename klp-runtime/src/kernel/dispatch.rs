//! The kernel's entry points into the dispatcher ([`crate::dispatch`]) and its platform: the
//! C init's helpers (pins, the klp-rs state of the patch below, `klp_shadow_free_all`) and
//! `pr_info`.

use core::cell::UnsafeCell;
use core::ffi::{c_char, c_int, CStr};

use crate::abi::{self, PatchHeader};
use crate::dispatch::{Dispatcher, Platform, Report};
use crate::hook::Errno;
use crate::plan::Hook;
use crate::reader::ObjectName;

use super::{
    klp_rs_pin, klp_rs_pin_begin, klp_rs_pinned, klp_rs_prev_header, klp_rs_prev_name,
    klp_rs_replaces, klp_rs_shadow_free_all, klp_rs_unpin, klp_rs_unpin_all,
};

/// Mutable global state, serialized by the kernel.
struct Global<T>(UnsafeCell<T>);

// SAFETY: every livepatch callback, module notifier and sysfs write that reaches the
// dispatcher runs under the kernel's `klp_mutex`, so accesses never overlap.
unsafe impl<T> Sync for Global<T> {}

static STATE: Global<Dispatcher> = Global(UnsafeCell::new(Dispatcher::new()));

/// Called by the C init's module exit, after the kernel freed the patch: nothing of ours
/// runs any more, so what the dispatcher still holds goes.
#[unsafe(no_mangle)]
pub extern "C" fn klp_rs_release() {
    // SAFETY: no callback can run any more (the patch is freed before the module exits).
    unsafe { &mut *STATE.0.get() }.unload();
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
    // SAFETY: per the contract. Module names are ASCII; anything else is not ours.
    let Some(object) = ObjectName::new(unsafe { CStr::from_ptr(object) }) else {
        return 0;
    };
    let Some(hook) = Hook::from_raw(hook) else {
        crate::pr_info!("klp-rs: unknown hook number {hook} from the C init");
        return Errno::EINVAL.to_kernel();
    };
    // SAFETY: our own header and tables live as long as this module.
    match unsafe { d.dispatch(&mut Kernel, &*header, hook, object) } {
        Ok(()) => 0,
        Err(errno) => errno.to_kernel(),
    }
}

/// The kernel as the dispatcher sees it. Every call runs under `klp_mutex`, in one of our
/// livepatch callbacks.
struct Kernel;

impl Platform for Kernel {
    fn pinned(&self, object: ObjectName<'_>) -> bool {
        // SAFETY: an object name is NUL-terminated.
        unsafe { klp_rs_pinned(object.as_ptr()) != 0 }
    }

    fn pin(&mut self, object: ObjectName<'static>) -> bool {
        // SAFETY: as above.
        unsafe { klp_rs_pin(object.as_ptr()) != 0 }
    }

    fn unpin(&mut self, object: ObjectName<'static>) {
        // SAFETY: as above.
        unsafe { klp_rs_unpin(object.as_ptr()) }
    }

    fn unpin_all(&mut self) {
        // SAFETY: under klp_mutex.
        unsafe { klp_rs_unpin_all() }
    }

    fn pin_begin(&mut self) -> Result<(), Errno> {
        // SAFETY: under klp_mutex, in our pre_patch or pre_unpatch.
        match unsafe { klp_rs_pin_begin() } {
            0 => Ok(()),
            _ => Err(Errno::ENOMEM),
        }
    }

    fn below(&mut self) -> Result<Option<&'static PatchHeader>, Errno> {
        let mut prev = core::ptr::null();
        // SAFETY: called from our pre_patch, during our transition: the previous patch's
        // klp_state (if any) is reachable and its module pinned until we complete.
        if unsafe { klp_rs_prev_header(&mut prev) } != 0 {
            return Err(Errno::EINVAL);
        }
        // SAFETY: the C side checked the magic and the size without faulting; the module is
        // pinned by the kernel until our transition ends, which is as long as we use it.
        Ok(unsafe { prev.as_ref() })
    }

    fn below_name<'b>(&mut self, buf: &'b mut [u8; 64]) -> Option<&'b str> {
        // SAFETY: `buf` is writable for its length; the C side NUL-terminates it.
        if unsafe { klp_rs_prev_name(buf.as_mut_ptr(), buf.len()) } != 0 {
            return None;
        }
        let len = buf.iter().position(|b| *b == 0)?;
        core::str::from_utf8(buf.get(..len)?).ok()
    }

    fn replaces(&self) -> bool {
        // SAFETY: reads the patch's constant flag.
        unsafe { klp_rs_replaces() != 0 }
    }

    fn free_all(&mut self, shadow: u64, dtor: Option<abi::ShadowDtorFn>) -> usize {
        // SAFETY: runs under klp_mutex after the transition: no patched code uses them.
        unsafe { klp_rs_shadow_free_all(shadow, dtor) }
    }

    fn report(&mut self, report: Report<'_>) {
        if report.printed() {
            crate::pr_info!("{report}");
        }
    }
}
