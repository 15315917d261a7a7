//! Versioned example, P1: callback set [1].
#![no_std]

use core::ffi::{c_int, c_void};

use klp_runtime::bindings::SeqFile;
use klp_runtime::klp_func;

klp_runtime::patch!();

#[path = "../../common/mod.rs"]
pub mod common;

/// Replaces `fs/proc/cmdline.c:cmdline_proc_show`.
///
/// # Safety
/// Called by the kernel (or a test) with a live `seq_file`.
#[klp_func(name = "cmdline_proc_show")]
pub unsafe extern "C" fn cmdline_proc_show(m: *mut SeqFile, _v: *mut c_void) -> c_int {
    // SAFETY: forwarded from the kernel.
    unsafe { common::show_banner(m, "p1") };
    0
}
