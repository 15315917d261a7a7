//! kpatch's `cmdline-string`: `/proc/cmdline` shows the command line the kernel saved at boot
//! with ` klp_rs=1` after it. `saved_command_line` is not exported: the module reaches it
//! through a livepatch relocation that `cargo klp build` writes, and the livepatch core
//! resolves when the module loads.
#![no_std]

use core::ffi::{c_char, c_int, c_void, CStr};

use klp_runtime::bindings::{seq_print, SeqFile};
use klp_runtime::klp_func;

klp_runtime::patch!();

extern "C" {
    /// `init/main.c`: the command line the kernel keeps for `/proc/cmdline`.
    static saved_command_line: *const c_char;
}

/// Replaces `fs/proc/cmdline.c:cmdline_proc_show`.
///
/// # Safety
/// Called by the kernel (or a test) with a `seq_file` to print into.
#[klp_func(name = "cmdline_proc_show")]
pub unsafe extern "C" fn cmdline_proc_show(m: *mut SeqFile, _v: *mut c_void) -> c_int {
    // SAFETY: the kernel sets `saved_command_line` at boot, to a NUL-terminated string it
    // never frees.
    let line = unsafe { CStr::from_ptr(saved_command_line) };
    let line = line.to_str().unwrap_or("(not UTF-8)");
    // SAFETY: `m` is the seq_file the kernel passes to this show function.
    unsafe { seq_print(m, format_args!("{line} klp_rs=1\n")) };
    0
}

/// The crate's own unit-test build links on the host: a stand-in for the kernel's variable
/// (integration tests define their own, as `tests/host.rs` does).
#[cfg(test)]
mod host {
    #[allow(non_upper_case_globals)]
    #[no_mangle]
    static mut saved_command_line: *const core::ffi::c_char = c"".as_ptr();
}
