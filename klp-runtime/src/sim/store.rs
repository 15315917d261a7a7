//! The simulator's shadow-variable store, with `klp_shadow_*` semantics: variables keyed by
//! (object address, id); `alloc` on an existing pair fails; constructors may fail;
//! `free_all_key` runs the destructor on each. One store per thread, so parallel tests stay
//! apart, as one kernel is shared by every module in it.
//!
//! Ids here are the kernel's: a klp-rs shadow id is in its namespace
//! ([`crate::abi::shadow_key`]). [`count`] and [`free_all`] take ids as a patch declares them;
//! the `_key` variants take the kernel's id, as a C patch would use it.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::c_void;
use std::mem::MaybeUninit;

use crate::abi::{Gfp, ShadowCtorFn, ShadowDtorFn};

type Data = Box<[MaybeUninit<u64>]>;

thread_local! {
    static STORE: RefCell<BTreeMap<(usize, u64), Data>> = const { RefCell::new(BTreeMap::new()) };
    static WARNINGS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    static ATOMIC: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Runs `f` as the kernel runs code that may not sleep (under a spinlock, in an RCU read-side
/// section): an allocation inside that may sleep ([`Gfp::Kernel`]) is reported as the
/// kernel's might_sleep check does, so a test can call patched code the way its call site
/// in the kernel does.
pub fn atomic<R>(f: impl FnOnce() -> R) -> R {
    ATOMIC.with(|a| a.set(a.get() + 1));
    let r = f();
    ATOMIC.with(|a| a.set(a.get() - 1));
    r
}

fn warn(msg: String) {
    WARNINGS.with(|w| w.borrow_mut().push(msg));
}

/// Warnings the store printed (as the kernel would have in dmesg), drained.
pub fn take_warnings() -> Vec<String> {
    WARNINGS.with(|w| std::mem::take(&mut *w.borrow_mut()))
}

pub fn get(obj: *const c_void, id: u64) -> *mut c_void {
    STORE.with(|s| {
        s.borrow_mut()
            .get_mut(&(obj as usize, id))
            .map_or(std::ptr::null_mut(), |d| d.as_mut_ptr().cast())
    })
}

/// `klp_shadow_alloc` (`or_get` false) and `klp_shadow_get_or_alloc` (true).
///
/// # Safety
/// `ctor_data` is what `ctor` expects (for `klp_runtime::shadow::ctor::<T>`, an `Option<T>`).
pub unsafe fn alloc(
    obj: *const c_void,
    id: u64,
    size: usize,
    ctor: ShadowCtorFn,
    ctor_data: *mut c_void,
    or_get: bool,
    gfp: Gfp,
) -> *mut c_void {
    if gfp == Gfp::Kernel && ATOMIC.with(|a| a.get()) > 0 {
        warn(format!(
            "BUG: sleeping function called from invalid context: a shadow allocation that may \
             sleep (<{obj:p}, {id:#x}>) in atomic context; use the _atomic variant"
        ));
    }
    let existing = get(obj, id);
    if !existing.is_null() {
        if !or_get {
            warn(format!("Duplicate shadow variable <{obj:p}, {id:#x}>"));
            return std::ptr::null_mut();
        }
        return existing;
    }
    // Zeroed like the kernel's kzalloc, 8-aligned, at least one word so the pointer is unique.
    let mut data: Data = vec![MaybeUninit::new(0u64); size.div_ceil(8).max(1)].into_boxed_slice();
    let p = data.as_mut_ptr().cast::<c_void>();
    // The store is not borrowed while the constructor runs: it may use shadow variables too.
    // SAFETY: `p` is valid for `size` bytes; the caller paired ctor_data with ctor.
    let r = unsafe { ctor(obj as *mut c_void, p, ctor_data) };
    if r != 0 {
        warn(format!(
            "Failed to construct shadow variable <{obj:p}, {id:#x}> ({r})"
        ));
        return std::ptr::null_mut();
    }
    STORE.with(|s| s.borrow_mut().insert((obj as usize, id), data));
    p
}

pub fn free(obj: *const c_void, id: u64, dtor: ShadowDtorFn) {
    let data = STORE.with(|s| s.borrow_mut().remove(&(obj as usize, id)));
    if let Some(mut d) = data {
        // SAFETY: the variable was constructed and is now detached: dropped exactly once.
        unsafe { dtor(obj as *mut c_void, d.as_mut_ptr().cast()) }
    }
}

/// Frees every variable of a klp-rs shadow id as a patch declares it; returns how many there
/// were.
pub fn free_all(id: u64, dtor: Option<ShadowDtorFn>) -> usize {
    free_all_key(declared(id), dtor)
}

/// The key a declared klp-rs shadow id has in the store, as in the kernel.
fn declared(id: u64) -> u64 {
    crate::abi::shadow_key(crate::abi::FORMAT_VERSION, id)
}

/// `klp_shadow_free_all(key, dtor)`: frees every variable with the kernel's id `key`;
/// returns how many there were.
pub fn free_all_key(id: u64, dtor: Option<ShadowDtorFn>) -> usize {
    let taken: Vec<_> = STORE.with(|s| {
        let mut s = s.borrow_mut();
        let keys: Vec<_> = s.keys().filter(|k| k.1 == id).copied().collect();
        keys.into_iter()
            .filter_map(|k| s.remove(&k).map(|d| (k.0, d)))
            .collect()
    });
    let n = taken.len();
    for (obj, mut d) in taken {
        if let Some(dtor) = dtor {
            // SAFETY: as in `free`.
            unsafe { dtor(obj as *mut c_void, d.as_mut_ptr().cast()) }
        }
    }
    n
}

/// How many variables of a klp-rs shadow id, as a patch declares it, exist.
pub fn count(id: u64) -> usize {
    count_key(declared(id))
}

/// How many variables with the kernel's id `key` exist (a C patch's, for instance).
pub fn count_key(id: u64) -> usize {
    STORE.with(|s| s.borrow().keys().filter(|k| k.1 == id).count())
}

/// How many variables exist in all.
pub fn total() -> usize {
    STORE.with(|s| s.borrow().len())
}
