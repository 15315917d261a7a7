//! Versioned example, P3: callback sets [1, 2]. Set 2 counts `/proc/cmdline` reads per task
//! in a shadow variable it owns; when set 2 leaves, the counters are freed.
#![no_std]

use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicBool, Ordering};

use klp_runtime::bindings::{current_task, seq_print, SeqFile};
use klp_runtime::{klp_callbacks, klp_func, klp_shadow};

klp_runtime::patch!();

#[path = "../../common/mod.rs"]
pub mod common;

/// Reads of `/proc/cmdline` by a task.
#[klp_shadow(type = u64, id = 0x20, callbacks = 2)]
pub struct TaskReads;

static COUNTING: AtomicBool = AtomicBool::new(false);

#[klp_callbacks(id = 2)]
pub mod counting {
    use super::*;
    use klp_runtime::{pr_info, Object};

    pub fn post_patch(obj: &Object) {
        COUNTING.store(true, Ordering::Release);
        pr_info!("p3: counting reads per task on {}", obj.name());
    }

    pub fn pre_unpatch() {
        COUNTING.store(false, Ordering::Release);
    }
}

/// Replaces `fs/proc/cmdline.c:cmdline_proc_show`.
///
/// # Safety
/// Called by the kernel (or a test) with a live `seq_file`.
#[klp_func(name = "cmdline_proc_show")]
pub unsafe extern "C" fn cmdline_proc_show(m: *mut SeqFile, _v: *mut c_void) -> c_int {
    let banner = common::banner_on();
    let mut reads = 0;
    if COUNTING.load(Ordering::Acquire) {
        if let Ok(mut n) = TaskReads::get_or_alloc(current_task(), || 0) {
            // SAFETY: the variable lives until set 2 leaves, which waits for this function
            // to be out of every task's stack (the livepatch consistency model).
            reads = unsafe {
                *n.as_mut() += 1;
                *n.as_ref()
            };
        }
    }
    // SAFETY: `m` is the seq_file the kernel passes to this show function.
    unsafe {
        seq_print(
            m,
            format_args!("klp versioned p3 banner={banner} reads={reads}\n"),
        )
    };
    0
}
