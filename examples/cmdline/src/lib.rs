//! The classic live patch: `/proc/cmdline` says it has been live patched.
#![no_std]

use core::ffi::{c_int, c_void};

use klp_runtime::bindings::{seq_print, SeqFile};
use klp_runtime::klp_func;

klp_runtime::patch!();

/// Replaces `fs/proc/cmdline.c:cmdline_proc_show`.
#[klp_func(name = "cmdline_proc_show")]
extern "C" fn cmdline_proc_show(m: *mut SeqFile, _v: *mut c_void) -> c_int {
    // SAFETY: `m` is the seq_file the kernel passes to this show function.
    unsafe { seq_print(m, format_args!("this has been live patched by Rust\n")) };
    0
}
