//! The in-kernel runtime (target `x86_64-unknown-none`): the dispatcher the generic C init
//! calls for every object and hook, the kernel side of [`crate::sys`], an allocator over
//! `kmalloc`, and the panic handler.
//!
//! Kernel structures whose layout depends on the kernel config (`klp_patch`, `klp_object`,
//! `klp_state`) never cross into Rust: the C init owns them and hands us names and pointers
//! to tables. See docs/kernel-runtime.md for the protocol.

mod dispatch;

pub use dispatch::{klp_rs_dispatch, klp_rs_format_version, klp_rs_release};

use core::ffi::{c_char, c_int, c_void};
use core::fmt;

use crate::abi::{Gfp, ShadowCtorFn, ShadowDtorFn};

// Helpers in the generic C init (klp_rs_init.c): anything that depends on the kernel config.
unsafe extern "C" {
    fn klp_rs_rcu_read_lock();
    fn klp_rs_rcu_read_unlock();
    fn klp_rs_spin_lock(lock: *mut crate::bindings::Opaque);
    fn klp_rs_spin_unlock(lock: *mut crate::bindings::Opaque);
    fn klp_rs_spin_lock_irqsave(lock: *mut crate::bindings::Opaque) -> usize;
    fn klp_rs_spin_unlock_irqrestore(lock: *mut crate::bindings::Opaque, flags: usize);
    fn klp_rs_log(msg: *const u8, len: usize);
    fn klp_rs_current() -> *const c_void;
    fn klp_rs_alloc(size: usize) -> *mut c_void;
    fn klp_rs_free(ptr: *mut c_void);
    fn klp_rs_shadow_alloc(
        obj: *const c_void,
        id: u64,
        size: usize,
        ctor: ShadowCtorFn,
        data: *mut c_void,
        or_get: c_int,
        gfp: Gfp,
    ) -> *mut c_void;
    /// `klp_shadow_free_all`, returning how many variables were freed.
    fn klp_rs_shadow_free_all(id: u64, dtor: Option<ShadowDtorFn>) -> usize;
    /// The topmost klp-rs patch's header below ours, through our `klp_state` (only during a
    /// transition): 0 with `*prev` set (null: none), or `-EINVAL` when that state's data is
    /// not klp-rs tables. Checked without faulting before anything else is read.
    fn klp_rs_prev_header(prev: *mut *const crate::abi::PatchHeader) -> c_int;
    /// The name of the patch below, copied without faulting into `buf` (NUL-terminated):
    /// 0, or `-EFAULT`.
    fn klp_rs_prev_name(buf: *mut u8, len: usize) -> c_int;
    /// Whether this patch replaces (`replace = true`) rather than stacks.
    fn klp_rs_replaces() -> c_int;
    /// Makes room to pin every object's module and has the nop objects call us
    /// (0 or `-ENOMEM`). See the C init for why.
    fn klp_rs_pin_begin() -> c_int;
    /// Pins a loaded target module for the transition in flight: 1 if loaded and pinned.
    fn klp_rs_pin(name: *const c_char) -> c_int;
    /// Whether the module is pinned: loaded, as far as the transition in flight knows.
    fn klp_rs_pinned(name: *const c_char) -> c_int;
    fn klp_rs_unpin(name: *const c_char);
    fn klp_rs_unpin_all();

    // Kernel exports. `panic` is called directly (not through a C helper) because objtool
    // knows it does not return.
    #[link_name = "panic"]
    fn kernel_panic(fmt: *const c_char, ...) -> !;
    fn klp_shadow_get(obj: *const c_void, id: u64) -> *mut c_void;
    fn klp_shadow_free(obj: *const c_void, id: u64, dtor: Option<ShadowDtorFn>);
    fn klp_shadow_free_all(id: u64, dtor: Option<ShadowDtorFn>);
    fn seq_write(m: *mut SeqFile, data: *const c_void, len: usize) -> c_int;
    #[link_name = "simple_read_from_buffer"]
    fn kernel_simple_read_from_buffer(
        to: *mut u8,
        count: usize,
        ppos: *mut i64,
        from: *const u8,
        available: usize,
    ) -> isize;
}

/// A fixed buffer for one log line; longer lines are cut (printk keeps about 1000 bytes).
struct Line {
    buf: [u8; 512],
    len: usize,
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // No indexing: nothing on the logging path may reach the panic handler.
        let free = self.buf.iter_mut().skip(self.len);
        for (dst, src) in free.zip(s.as_bytes()) {
            *dst = *src;
            self.len += 1;
        }
        Ok(())
    }
}

pub(crate) fn log(args: fmt::Arguments<'_>) {
    let mut line = Line {
        buf: [0; 512],
        len: 0,
    };
    let _ = fmt::write(&mut line, args);
    // SAFETY: the buffer holds `len` initialized bytes.
    unsafe { klp_rs_log(line.buf.as_ptr(), line.len) }
}

/// The kernel's `struct seq_file`, opaque.
#[repr(C)]
pub struct SeqFile {
    _opaque: [u8; 0],
}

/// The kernel side of [`crate::sys`].
pub(crate) mod sys {
    use super::*;

    use super::SeqFile;

    pub fn shadow_get(obj: *const c_void, id: u64) -> *mut c_void {
        // SAFETY: klp_shadow_get only compares the key.
        unsafe { klp_shadow_get(obj, id) }
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
        // SAFETY: ctor and data are paired by `crate::shadow`.
        unsafe { klp_rs_shadow_alloc(obj, id, size, ctor, data, or_get as c_int, gfp) }
    }

    pub fn shadow_free(obj: *const c_void, id: u64, dtor: ShadowDtorFn) {
        // SAFETY: dtor matches the type stored under `id`.
        unsafe { klp_shadow_free(obj, id, Some(dtor)) }
    }

    pub fn shadow_free_all(id: u64, dtor: ShadowDtorFn) {
        // Straight to the kernel, with this type's own destructor: patched code may free
        // several types on several CPUs at once. (The dispatcher's counting free, which
        // keeps its destructor in C globals, runs only under klp_mutex.)
        // SAFETY: as above.
        unsafe { klp_shadow_free_all(id, Some(dtor)) };
    }

    pub fn log(args: fmt::Arguments<'_>) {
        super::log(args)
    }

    struct Seq(*mut SeqFile);

    impl fmt::Write for Seq {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            // SAFETY: `self.0` is the live seq_file of the show call (see `seq_print`).
            unsafe { seq_write(self.0, s.as_ptr().cast(), s.len()) };
            Ok(())
        }
    }

    /// # Safety
    /// `m` is the seq_file of the running show function.
    pub unsafe fn seq_print(m: *mut SeqFile, args: fmt::Arguments<'_>) {
        let _ = fmt::write(&mut Seq(m), args);
    }

    pub fn current_task() -> *const c_void {
        // SAFETY: reads `current`, always valid in process context.
        unsafe { klp_rs_current() }
    }

    pub fn rcu_read_lock() {
        // SAFETY: no precondition; the caller's guard unlocks.
        unsafe { klp_rs_rcu_read_lock() }
    }

    pub fn rcu_read_unlock() {
        // SAFETY: paired with `rcu_read_lock` by the guard.
        unsafe { klp_rs_rcu_read_unlock() }
    }

    /// # Safety
    /// `lock` is a live `spinlock_t`.
    pub unsafe fn spin_lock(lock: *mut crate::bindings::Opaque) {
        // SAFETY: per the contract.
        unsafe { klp_rs_spin_lock(lock) }
    }

    /// # Safety
    /// `lock` is held by this CPU.
    pub unsafe fn spin_unlock(lock: *mut crate::bindings::Opaque) {
        // SAFETY: per the contract.
        unsafe { klp_rs_spin_unlock(lock) }
    }

    /// # Safety
    /// `lock` is a live `spinlock_t`.
    pub unsafe fn spin_lock_irqsave(lock: *mut crate::bindings::Opaque) -> usize {
        // SAFETY: per the contract.
        unsafe { klp_rs_spin_lock_irqsave(lock) }
    }

    /// # Safety
    /// `lock` is held by this CPU, `flags` from its `spin_lock_irqsave`.
    pub unsafe fn spin_unlock_irqrestore(lock: *mut crate::bindings::Opaque, flags: usize) {
        // SAFETY: per the contract.
        unsafe { klp_rs_spin_unlock_irqrestore(lock, flags) }
    }

    /// # Safety
    /// As [`crate::bindings::simple_read_from_buffer`].
    pub unsafe fn simple_read_from_buffer(
        to: *mut u8,
        count: usize,
        ppos: *mut i64,
        data: &[u8],
    ) -> isize {
        // SAFETY: forwarded contract; `data` is a live slice.
        unsafe { kernel_simple_read_from_buffer(to, count, ppos, data.as_ptr(), data.len()) }
    }
}

/// `kmalloc`-backed allocations for the runtime's plans and decoded tables.
struct KernelAllocator;

// SAFETY: kmalloc returns memory aligned to at least 8 bytes (ARCH_KMALLOC_MINALIGN); larger
// alignments are refused with null, which `alloc` reports as an allocation failure.
unsafe impl core::alloc::GlobalAlloc for KernelAllocator {
    unsafe fn alloc(&self, layout: core::alloc::Layout) -> *mut u8 {
        if layout.align() > 8 {
            return core::ptr::null_mut();
        }
        // SAFETY: plain kmalloc.
        unsafe { klp_rs_alloc(layout.size()).cast() }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: core::alloc::Layout) {
        // SAFETY: `ptr` came from `alloc` above.
        unsafe { klp_rs_free(ptr.cast()) }
    }
}

#[global_allocator]
static ALLOCATOR: KernelAllocator = KernelAllocator;

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut line = Line {
        buf: [0; 512],
        len: 0,
    };
    let _ = fmt::write(&mut line, format_args!("{info}"));
    // SAFETY: a printf format with its matching arguments; the kernel's panic() does not return.
    unsafe {
        kernel_panic(
            c"klp-rs: Rust panic: %.*s\n".as_ptr(),
            line.len as c_int,
            line.buf.as_ptr(),
        )
    }
}
