//! `/proc/loadavg` tells who reads it: the current task's pid, tgid, command and parent's tgid,
//! read from the kernel's `task_struct`. Its layout differs between kernels (the same members
//! sit at other offsets in 6.1 and 6.12); `#[kernel_struct]` places each member where the
//! target kernel's BTF says, so this one source builds for both.
#![no_std]

use core::ffi::{c_char, c_int, c_void};

use klp_runtime::bindings::{current_task, rcu_read_lock, seq_print, spin_lock, Opaque, SeqFile};
use klp_runtime::{kernel_struct, klp_func};

klp_runtime::patch!();

/// include/linux/sched.h: the members the patch reads.
#[kernel_struct]
pub struct task_struct {
    pub pid: i32,
    pub tgid: i32,
    /// `TASK_COMM_LEN` bytes, NUL-terminated.
    pub comm: [c_char; 16],
    /// RCU-protected.
    pub real_parent: *const task_struct,
    /// `task_lock()`'s spin lock, which keeps `comm` whole while it is read.
    pub alloc_lock: Opaque,
}

/// The command name up to its NUL.
fn comm(task: &task_struct) -> &str {
    // SAFETY: `c_char` is `i8` or `u8`: the same bytes as `u8`.
    let bytes: &[u8; 16] = unsafe { &*task.comm_ptr().cast::<[u8; 16]>() };
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    core::str::from_utf8(&bytes[..len]).unwrap_or("?")
}

/// Replaces `fs/proc/loadavg.c:loadavg_proc_show`.
///
/// # Safety
/// Called by the kernel (or a test) with a `seq_file` to print into, in a task's context.
#[klp_func(name = "loadavg_proc_show")]
pub unsafe extern "C" fn loadavg_proc_show(m: *mut SeqFile, _v: *mut c_void) -> c_int {
    // SAFETY: `current` is the running task, alive while it runs this.
    let task = unsafe { &*current_task().cast::<task_struct>() };
    // As the kernel reads them: the parent under RCU (`rcu_dereference`), the name under
    // `task_lock()`, which `set_task_comm` takes to change it.
    let _rcu = rcu_read_lock();
    // SAFETY: read once (`rcu_dereference`); under RCU the parent stays valid until `_rcu`
    // drops, and a task always has one (init at worst).
    let parent = unsafe { &*task.real_parent() };
    // SAFETY: `alloc_lock` is the task's live spinlock; nothing below sleeps.
    let _locked = unsafe { spin_lock(task.alloc_lock_ptr()) };
    // SAFETY: `m` is the seq_file the kernel passes to this show function.
    unsafe {
        seq_print(
            m,
            format_args!(
                "pid {} tgid {} comm {} ppid {}\n",
                task.pid(),
                task.tgid(),
                comm(task),
                // As getppid() says it: the parent's thread group.
                parent.tgid()
            ),
        )
    };
    0
}
