//! Shared by P1..P4 (each includes it with `#[path]`): callback set 1, which every version
//! has, so replacing one version by another never runs it.
//!
//! Set 1 turns the patched `/proc/cmdline` banner on after the transition and off before the
//! patch goes away. Its state lives in a shadow variable owned by set 1, not in a `static`:
//! a `static` belongs to one module, and when P4 replaces P3 set 1 does not run again, so
//! P4's copy would never be set. The shadow variable carries over because every version owns
//! the same id through set 1; it is freed when set 1 finally leaves (disable).

use klp_runtime::bindings::{seq_print, SeqFile};
use klp_runtime::{klp_callbacks, klp_shadow};

/// Patch-wide state: attached to no particular kernel object.
pub const PATCH_WIDE: *const () = core::ptr::null();

#[klp_shadow(id = 0x10, callbacks = 1)]
pub struct Banner {
    pub on: bool,
}

/// Whether the banner is live.
pub fn banner_on() -> bool {
    // SAFETY: set 1 frees the variable only after the transition that removes every
    // caller of this function.
    Banner::get(PATCH_WIDE).is_some_and(|b| unsafe { b.as_ref() }.on)
}

/// The `/proc/cmdline` line of a version whose only feature is the banner.
///
/// # Safety
/// `m` is the seq_file the kernel passed to the show function being replaced.
pub unsafe fn show_banner(m: *mut SeqFile, version: &str) {
    // SAFETY: forwarded contract.
    unsafe {
        seq_print(
            m,
            format_args!("klp versioned {version} banner={}\n", banner_on()),
        )
    }
}

#[klp_callbacks(id = 1)]
pub mod banner {
    use super::*;
    use klp_runtime::{pr_info, Object, Result};

    pub fn pre_patch(obj: &Object) -> Result {
        Banner::get_or_alloc(PATCH_WIDE, || Banner { on: false })?;
        pr_info!(
            "{}: banner ready on {}",
            env!("CARGO_CRATE_NAME"),
            obj.name()
        );
        Ok(())
    }

    pub fn post_patch() {
        if let Some(mut b) = Banner::get(PATCH_WIDE) {
            // SAFETY: hooks run one at a time (under the kernel's klp_mutex).
            unsafe { b.as_mut() }.on = true;
        }
    }

    pub fn pre_unpatch() {
        if let Some(mut b) = Banner::get(PATCH_WIDE) {
            // SAFETY: as above.
            unsafe { b.as_mut() }.on = false;
        }
    }

    pub fn post_unpatch(obj: &Object) {
        pr_info!(
            "{}: banner gone from {}",
            env!("CARGO_CRATE_NAME"),
            obj.name()
        );
    }
}
