//! The host side of the platform layer (`crate::sys`): shadow variables in [`super::store`],
//! log messages into the simulator's log, and the host stand-ins of `bindings`.

use core::ffi::c_void;

use crate::abi::{Gfp, ShadowCtorFn, ShadowDtorFn};

/// A host stand-in for `struct seq_file`: what is printed to it is kept.
#[derive(Default, Debug)]
pub struct SeqFile {
    text: String,
}

impl SeqFile {
    pub fn new() -> SeqFile {
        SeqFile::default()
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    fn push(&mut self, args: std::fmt::Arguments<'_>) {
        use std::fmt::Write;
        let _ = self.text.write_fmt(args);
    }
}

pub fn shadow_get(obj: *const c_void, id: u64) -> *mut c_void {
    super::store::get(obj, id)
}

pub fn shadow_alloc(
    obj: *const c_void,
    id: u64,
    size: usize,
    ctor: ShadowCtorFn,
    data: *mut c_void,
    or_get: bool,
    gfp: Gfp,
) -> *mut c_void {
    // SAFETY: `crate::shadow` pairs `data` with `ctor`.
    unsafe { super::store::alloc(obj, id, size, ctor, data, or_get, gfp) }
}

pub fn shadow_free(obj: *const c_void, id: u64, dtor: ShadowDtorFn) {
    super::store::free(obj, id, dtor)
}

pub fn shadow_free_all(id: u64, dtor: ShadowDtorFn) {
    super::store::free_all_key(id, Some(dtor));
}

pub fn log(args: core::fmt::Arguments<'_>) {
    super::log_message(args)
}

/// # Safety
/// `m` comes from `SeqFile::new`.
pub unsafe fn seq_print(m: *mut SeqFile, args: core::fmt::Arguments<'_>) {
    // SAFETY: per the contract.
    unsafe { &mut *m }.push(args)
}

pub fn current_task() -> *const c_void {
    CURRENT_TASK.with(|c| c.get()) as *const c_void
}

/// # Safety
/// `to` holds `count` bytes; `ppos` is valid.
pub unsafe fn simple_read_from_buffer(
    to: *mut u8,
    count: usize,
    ppos: *mut i64,
    data: &[u8],
) -> isize {
    // SAFETY: per the contract; on the host `to` is ordinary memory.
    unsafe {
        let pos = usize::try_from(*ppos).unwrap_or(0);
        let n = data.len().saturating_sub(pos).min(count);
        core::ptr::copy_nonoverlapping(data.as_ptr().add(pos.min(data.len())), to, n);
        *ppos += n as i64;
        n as isize
    }
}

std::thread_local! {
    /// The simulator's current task, for [`crate::bindings::current_task`].
    static CURRENT_TASK: std::cell::Cell<usize> = const { std::cell::Cell::new(0x1000) };
    /// How deep in RCU read-side sections the test's code is.
    static RCU_DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// The spin locks the test's code holds, by address.
    static HELD: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

pub fn rcu_read_lock() {
    RCU_DEPTH.with(|d| d.set(d.get() + 1));
}

pub fn rcu_read_unlock() {
    RCU_DEPTH.with(|d| {
        assert!(d.get() > 0, "rcu_read_unlock without rcu_read_lock");
        d.set(d.get() - 1)
    });
}

/// How deep in RCU read-side sections the code is (for tests).
pub fn rcu_read_depth() -> usize {
    RCU_DEPTH.with(|d| d.get())
}

/// Whether the code holds the spin lock at `lock` (for tests).
pub fn spin_held(lock: *const crate::bindings::Opaque) -> bool {
    HELD.with(|h| h.borrow().contains(&(lock as usize)))
}

/// # Safety
/// None on the host; the kernel's contract is kept for the same code.
pub unsafe fn spin_lock(lock: *mut crate::bindings::Opaque) {
    HELD.with(|h| {
        let mut h = h.borrow_mut();
        // A second lock of a held spin lock spins forever in the kernel.
        assert!(
            !h.contains(&(lock as usize)),
            "spin lock {lock:p} taken twice: a deadlock in the kernel"
        );
        h.push(lock as usize);
    });
}

/// # Safety
/// As [`spin_lock`].
pub unsafe fn spin_unlock(lock: *mut crate::bindings::Opaque) {
    HELD.with(|h| {
        let mut h = h.borrow_mut();
        let at = h.iter().position(|&l| l == lock as usize);
        assert!(at.is_some(), "spin lock {lock:p} released but not held");
        h.retain(|&l| l != lock as usize);
    });
}

/// # Safety
/// As [`spin_lock`].
pub unsafe fn spin_lock_irqsave(lock: *mut crate::bindings::Opaque) -> usize {
    // SAFETY: forwarded.
    unsafe { spin_lock(lock) };
    0
}

/// # Safety
/// As [`spin_lock`].
pub unsafe fn spin_unlock_irqrestore(lock: *mut crate::bindings::Opaque, _flags: usize) {
    // SAFETY: forwarded.
    unsafe { spin_unlock(lock) }
}

/// Which task `current` is (any address; tasks are only keys for shadow variables).
pub fn set_current_task(task: usize) {
    CURRENT_TASK.with(|c| c.set(task));
}
