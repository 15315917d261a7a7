//! The few kernel interfaces patch code commonly needs, with one signature for both builds.
//! Each goes through the platform layer (`crate::sys`): in the kernel it calls the kernel; on
//! the host the simulator provides it, so a patch's replacement functions can be called in
//! `cargo test` too.

use core::fmt;

/// The kernel's `struct seq_file` (opaque). On the host, `SeqFile::new` makes one that
/// collects the text, for calling a `*_show` replacement in tests.
pub use crate::sys::SeqFile;

/// `seq_printf(m, ...)` with Rust formatting.
///
/// # Safety
/// `m` is the `seq_file` the kernel passed to the `show` function being replaced (on the
/// host, one from [`SeqFile::new`]).
pub unsafe fn seq_print(m: *mut SeqFile, args: fmt::Arguments<'_>) {
    // SAFETY: forwarded contract.
    unsafe { crate::sys::seq_print(m, args) }
}

/// The running task (`current`), as an address to key shadow variables on. On the host, the
/// simulator's current task ([`set_current_task`]).
pub fn current_task() -> *const core::ffi::c_void {
    crate::sys::current_task()
}

/// Host only: which task [`current_task`] returns (any address; tasks are only keys).
#[cfg(not(target_os = "none"))]
pub fn set_current_task(task: usize) {
    crate::sim::set_current_task(task)
}

/// `simple_read_from_buffer(to, count, ppos, from, available)`: copies what is left of `data`
/// from `*ppos` to the user buffer `to`, advancing `*ppos`; returns bytes copied or -errno.
///
/// # Safety
/// The arguments are those the kernel passed to the `read` file operation being replaced:
/// `to` a user buffer of `count` bytes, `ppos` the file position.
pub unsafe fn simple_read_from_buffer(
    to: *mut u8,
    count: usize,
    ppos: *mut i64,
    data: &[u8],
) -> isize {
    // SAFETY: forwarded contract.
    unsafe { crate::sys::simple_read_from_buffer(to, count, ppos, data) }
}
