//! Versioned example, P4: callback sets [1, 3]. Set 3 replaces P3's set 2 with a richer
//! per-task record (shadow id 0x30); P3's counters (0x20) are freed when P4 replaces P3, and
//! P4's when anything without set 3 replaces P4.
#![no_std]

use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicBool, Ordering};

use klp_runtime::bindings::{current_task, seq_print, SeqFile};
use klp_runtime::{klp_callbacks, klp_func, klp_shadow};

klp_runtime::patch!();

#[path = "../../common/mod.rs"]
pub mod common;

/// What P4 keeps per task.
#[klp_shadow(id = 0x30, callbacks = 3)]
#[derive(Debug, Default)]
pub struct TaskStats {
    pub reads: u64,
    pub bytes: u64,
}

static COUNTING: AtomicBool = AtomicBool::new(false);

#[klp_callbacks(id = 3)]
pub mod stats {
    use super::*;
    use klp_runtime::{pr_info, Object, Result};

    pub fn pre_patch(obj: &Object) -> Result {
        pr_info!("p4: task stats ready on {}", obj.name());
        Ok(())
    }

    pub fn post_patch() {
        COUNTING.store(true, Ordering::Release);
    }

    pub fn pre_unpatch() {
        COUNTING.store(false, Ordering::Release);
    }

    pub fn post_unpatch(obj: &Object) {
        pr_info!("p4: task stats retired on {}", obj.name());
    }
}

const LINE: &str = "klp versioned p4";

/// Replaces `fs/proc/cmdline.c:cmdline_proc_show`.
///
/// # Safety
/// Called by the kernel (or a test) with a live `seq_file`.
#[klp_func(name = "cmdline_proc_show")]
pub unsafe extern "C" fn cmdline_proc_show(m: *mut SeqFile, _v: *mut c_void) -> c_int {
    let banner = common::banner_on();
    let (mut reads, mut bytes) = (0, 0);
    if COUNTING.load(Ordering::Acquire) {
        if let Ok(mut s) = TaskStats::get_or_alloc(current_task(), TaskStats::default) {
            // SAFETY: as in P3: the record outlives every running call of this function.
            let s = unsafe { s.as_mut() };
            s.reads += 1;
            s.bytes += LINE.len() as u64;
            (reads, bytes) = (s.reads, s.bytes);
        }
    }
    // SAFETY: `m` is the seq_file the kernel passes to this show function.
    unsafe {
        seq_print(
            m,
            format_args!("{LINE} banner={banner} reads={reads} bytes={bytes}\n"),
        )
    };
    0
}
