//! The few kernel interfaces patch code commonly needs, with one signature for both builds:
//! in the kernel they call the kernel; on the host the simulator provides them, so a patch's
//! replacement functions can be called in `cargo test` too.

use core::fmt;

/// The kernel's `struct seq_file` (opaque). On the host, [`SeqFile::new`] makes one that
/// collects the text, for calling a `*_show` replacement in tests.
#[cfg(target_os = "none")]
#[repr(C)]
pub struct SeqFile {
    _opaque: [u8; 0],
}

/// A host stand-in for `struct seq_file`: what is printed to it is kept.
#[cfg(not(target_os = "none"))]
#[derive(Default, Debug)]
pub struct SeqFile {
    text: alloc::string::String,
}

#[cfg(not(target_os = "none"))]
impl SeqFile {
    pub fn new() -> SeqFile {
        SeqFile::default()
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

/// `seq_printf(m, ...)` with Rust formatting.
///
/// # Safety
/// `m` is the `seq_file` the kernel passed to the `show` function being replaced.
pub unsafe fn seq_print(m: *mut SeqFile, args: fmt::Arguments<'_>) {
    #[cfg(target_os = "none")]
    // SAFETY: forwarded contract.
    unsafe {
        crate::kernel::seq_print(m, args)
    }
    #[cfg(not(target_os = "none"))]
    {
        use core::fmt::Write;
        // SAFETY: forwarded contract: on the host, `m` comes from `SeqFile::new`.
        let _ = unsafe { &mut *m }.text.write_fmt(args);
    }
}

/// The running task (`current`), as an address to key shadow variables on. On the host, the
/// simulator's current task ([`set_current_task`]).
pub fn current_task() -> *const core::ffi::c_void {
    #[cfg(target_os = "none")]
    {
        crate::kernel::current_task()
    }
    #[cfg(not(target_os = "none"))]
    {
        CURRENT_TASK.with(|c| c.get()) as *const core::ffi::c_void
    }
}

#[cfg(not(target_os = "none"))]
std::thread_local! {
    static CURRENT_TASK: core::cell::Cell<usize> = const { core::cell::Cell::new(0x1000) };
}

/// Host only: which task [`current_task`] returns (any address; tasks are only keys).
#[cfg(not(target_os = "none"))]
pub fn set_current_task(task: usize) {
    CURRENT_TASK.with(|c| c.set(task));
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
    #[cfg(target_os = "none")]
    // SAFETY: forwarded contract.
    unsafe {
        crate::kernel::simple_read_from_buffer(to, count, ppos, data)
    }
    #[cfg(not(target_os = "none"))]
    // SAFETY: forwarded contract; on the host `to` is ordinary memory.
    unsafe {
        let pos = (*ppos).max(0) as usize;
        let n = data.len().saturating_sub(pos).min(count);
        core::ptr::copy_nonoverlapping(data.as_ptr().add(pos.min(data.len())), to, n);
        *ppos += n as i64;
        n as isize
    }
}
