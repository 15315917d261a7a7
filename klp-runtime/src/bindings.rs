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

/// A kernel object the patch only points to (a `spinlock_t` member of a `#[kernel_struct]`,
/// say): no size, never made or moved by Rust. A `#[kernel_struct]` member declared `Opaque`
/// must be a struct or union in the kernel; its size is not compared.
#[repr(C)]
pub struct Opaque {
    _private: [u8; 0],
    _pinned: core::marker::PhantomData<(*mut u8, core::marker::PhantomPinned)>,
}

#[cfg(not(target_os = "none"))]
impl Opaque {
    /// Host only: a stand-in, for a test to put in the structs it makes (its address is
    /// what the simulator's locks key on).
    pub const fn new() -> Opaque {
        Opaque {
            _private: [],
            _pinned: core::marker::PhantomData,
        }
    }
}

#[cfg(not(target_os = "none"))]
impl Default for Opaque {
    fn default() -> Opaque {
        Opaque::new()
    }
}

/// An RCU read-side section (`rcu_read_lock()`), ended when the guard drops. Pointers read
/// under it (`rcu_dereference`) stay valid until then. On the host the simulator counts
/// the depth (`klp_runtime::sim::rcu_read_depth`). Never `mem::forget` it: the task would
/// stay in the section, and the kernel's grace periods would wait for it forever.
#[must_use = "the section ends when the guard drops"]
pub struct RcuReadGuard {
    // Not Send: the section belongs to this task.
    _task: core::marker::PhantomData<*mut ()>,
}

/// `rcu_read_lock()`.
pub fn rcu_read_lock() -> RcuReadGuard {
    crate::sys::rcu_read_lock();
    RcuReadGuard {
        _task: core::marker::PhantomData,
    }
}

impl Drop for RcuReadGuard {
    fn drop(&mut self) {
        crate::sys::rcu_read_unlock();
    }
}

/// A held spin lock, released (`spin_unlock`, or `spin_unlock_irqrestore` with the saved
/// flags) when the guard drops. Never `mem::forget` it (the lock stays held and preemption
/// off), and drop `spin_lock_irqsave` guards in the reverse order of taking them, as C
/// nests them: restoring the first flags early turns interrupts back on under the second
/// lock.
#[must_use = "the lock is released when the guard drops"]
pub struct SpinGuard {
    lock: *mut Opaque,
    irq_flags: Option<usize>,
}

/// `spin_lock(lock)`.
///
/// # Safety
/// `lock` is a live `spinlock_t` (a `#[kernel_struct]` member declared `Opaque`, through its
/// `_ptr` accessor), not held by this task, and the code does not sleep until the guard
/// drops.
pub unsafe fn spin_lock(lock: *mut Opaque) -> SpinGuard {
    // SAFETY: forwarded contract.
    unsafe { crate::sys::spin_lock(lock) };
    SpinGuard {
        lock,
        irq_flags: None,
    }
}

/// `spin_lock_irqsave(lock, flags)`: also for locks taken in interrupts.
///
/// # Safety
/// As [`spin_lock`].
pub unsafe fn spin_lock_irqsave(lock: *mut Opaque) -> SpinGuard {
    // SAFETY: forwarded contract.
    let flags = unsafe { crate::sys::spin_lock_irqsave(lock) };
    SpinGuard {
        lock,
        irq_flags: Some(flags),
    }
}

impl Drop for SpinGuard {
    fn drop(&mut self) {
        // SAFETY: the guard holds the lock it took.
        unsafe {
            match self.irq_flags {
                Some(flags) => crate::sys::spin_unlock_irqrestore(self.lock, flags),
                None => crate::sys::spin_unlock(self.lock),
            }
        }
    }
}

/// `READ_ONCE(*p)`: one read the compiler neither tears, repeats nor elides.
///
/// # Safety
/// `p` is valid for reads and aligned.
pub unsafe fn read_once<T: Copy>(p: *const T) -> T {
    // SAFETY: forwarded contract.
    unsafe { core::ptr::read_volatile(p) }
}

/// `WRITE_ONCE(*p, v)`.
///
/// # Safety
/// `p` is valid for writes and aligned.
pub unsafe fn write_once<T: Copy>(p: *mut T, v: T) {
    // SAFETY: forwarded contract.
    unsafe { core::ptr::write_volatile(p, v) }
}
