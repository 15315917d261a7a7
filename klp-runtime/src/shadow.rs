//! Shadow variables: data the patch attaches to kernel objects it cannot change, keyed by
//! the object's address and a shadow id, with the kernel's `klp_shadow_*` semantics. A
//! `#[klp_shadow]` type gets a typed handle over these functions; on the kernel they call
//! `klp_shadow_*`, on the host the simulator's store.

use core::ffi::{c_int, c_void};
use core::mem::size_of;
use core::ptr::NonNull;

use crate::abi;
pub use crate::abi::Gfp;
use crate::hook::{Errno, Result};
use crate::sys;

/// Data that means the same to every klp-rs module, so it may cross a replace: shadow
/// variables outlive the module that attached them (they carry over by id), so they must not
/// hold references, raw pointers, function pointers or trait objects, which may point into
/// the module that wrote them and dangle once a replace unloads it. `#[klp_shadow]` requires
/// it of every field.
///
/// # Safety
/// Implement it only for a type whose values hold no address of anything in a module: a
/// plain-data type of your own (`unsafe impl Portable for Mine {}`, each field portable), or
/// a pointer into the kernel through [`KernelPtr`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be shadow data: it may point into the patch module, and shadow variables outlive the module across a replace",
    label = "not plain data",
    note = "shadow data may hold integers, bool, char, floats, atomics, arrays, tuples, Options of these and `KernelPtr<T>` (a pointer into the kernel); for a plain-data type of your own, `unsafe impl klp_runtime::shadow::Portable for Type {{}}`"
)]
pub unsafe trait Portable: 'static {}

macro_rules! portable {
    ($($t:ty),* $(,)?) => { $(
        // SAFETY: plain data, no addresses. Not offered as a suggestion in the error for a
        // type that is not portable (its note lists what is).
        #[diagnostic::do_not_recommend]
        unsafe impl Portable for $t {}
    )* };
}

portable!(
    (),
    bool,
    char,
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    f32,
    f64,
    core::num::NonZeroU8,
    core::num::NonZeroU16,
    core::num::NonZeroU32,
    core::num::NonZeroU64,
    core::num::NonZeroUsize,
    core::num::NonZeroI32,
    core::num::NonZeroI64,
    core::sync::atomic::AtomicBool,
    core::sync::atomic::AtomicU8,
    core::sync::atomic::AtomicU16,
    core::sync::atomic::AtomicU32,
    core::sync::atomic::AtomicU64,
    core::sync::atomic::AtomicUsize,
    core::sync::atomic::AtomicI32,
    core::sync::atomic::AtomicI64,
    core::sync::atomic::AtomicIsize,
);
// SAFETY: made of portable parts.
unsafe impl<T: Portable, const N: usize> Portable for [T; N] {}
// SAFETY: as above.
unsafe impl<T: Portable> Portable for Option<T> {}
// SAFETY: as above.
unsafe impl<A: Portable, B: Portable> Portable for (A, B) {}
// SAFETY: as above.
unsafe impl<A: Portable, B: Portable, C: Portable> Portable for (A, B, C) {}

/// A pointer into the kernel (a `task_struct`, a `file`...), never into a module: what
/// shadow data may hold instead of a raw pointer. The kernel object must outlive the
/// variable, as with any shadow variable's key.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelPtr<T: 'static>(pub *mut T);

// SAFETY: by its contract, it points into the kernel, which outlives every module.
unsafe impl<T: 'static> Portable for KernelPtr<T> {}

/// Implemented by `#[klp_shadow]` for each shadow type.
pub trait ShadowType: 'static {
    /// What is attached to each object.
    type Data: 'static;
    /// The shadow id, as declared (`#[klp_shadow(id = ...)]`, at most
    /// [`abi::SHADOW_ID_MAX`]).
    const ID: u64;
    /// The id of the callback set that owns this type: when that set leaves, every variable
    /// of this type is freed.
    const OWNER: u32;
}

/// The id `klp_shadow_*` knows the type by: its id in the klp-rs namespace.
fn key<S: ShadowType>() -> u64 {
    abi::shadow_key(abi::FORMAT_VERSION, S::ID)
}

/// The variable attached to `obj`, if any.
pub fn get<S: ShadowType>(obj: *const c_void) -> Option<NonNull<S::Data>> {
    NonNull::new(sys::shadow_get(obj, key::<S>()).cast())
}

/// The variable attached to `obj`, attaching `init()` first if there is none, allocating as
/// `gfp` allows. `init` runs only when a variable is created; if another caller wins the
/// race, its value is kept.
pub fn get_or_alloc<S: ShadowType>(
    obj: *const c_void,
    gfp: Gfp,
    init: impl FnOnce() -> S::Data,
) -> Result<NonNull<S::Data>> {
    if let Some(p) = get::<S>(obj) {
        return Ok(p);
    }
    attach::<S>(obj, init(), true, gfp)
}

/// Attaches `value` to `obj`, allocating as `gfp` allows; fails with `EEXIST` if a variable
/// is attached already (the kernel warns "Duplicate shadow variable" then).
pub fn alloc<S: ShadowType>(
    obj: *const c_void,
    gfp: Gfp,
    value: S::Data,
) -> Result<NonNull<S::Data>> {
    if get::<S>(obj).is_some() {
        return Err(Errno::EEXIST);
    }
    attach::<S>(obj, value, false, gfp)
}

/// `klp_shadow_alloc` (`or_get` false) or `klp_shadow_get_or_alloc` (true) with our
/// constructor, which moves `value` in; if a variable exists already, `value` is dropped.
fn attach<S: ShadowType>(
    obj: *const c_void,
    value: S::Data,
    or_get: bool,
    gfp: Gfp,
) -> Result<NonNull<S::Data>> {
    let mut value = Some(value);
    let p = sys::shadow_alloc(
        obj,
        key::<S>(),
        size_of::<S::Data>(),
        ctor::<S::Data>,
        (&raw mut value).cast(),
        or_get,
        gfp,
    );
    NonNull::new(p.cast()).ok_or(Errno::ENOMEM)
}

/// Detaches and drops the variable attached to `obj`, if any.
pub fn free<S: ShadowType>(obj: *const c_void) {
    sys::shadow_free(obj, key::<S>(), dtor::<S::Data>)
}

/// Detaches and drops every variable of this type.
pub fn free_all<S: ShadowType>() {
    sys::shadow_free_all(key::<S>(), dtor::<S::Data>)
}

/// The constructor: moves the value out of `ctor_data` (an `Option<T>`) into the new variable.
///
/// # Safety
/// `shadow_data` is valid for a write of `T`; `ctor_data` points to an `Option<T>`.
#[doc(hidden)]
pub unsafe extern "C" fn ctor<T>(
    _obj: *mut c_void,
    shadow_data: *mut c_void,
    ctor_data: *mut c_void,
) -> c_int {
    // SAFETY: per the contract; the runtime always passes an `Option<T>` of the same type.
    let value = unsafe { &mut *ctor_data.cast::<Option<T>>() }.take();
    match value {
        // SAFETY: the kernel hands us `size_of::<T>()` bytes, 8-aligned (the macro asserts
        // `align_of::<T>() <= 8`).
        Some(v) => unsafe {
            shadow_data.cast::<T>().write(v);
            0
        },
        None => Errno::EINVAL.to_kernel(),
    }
}

/// The destructor: drops the value in place (the kernel frees the memory after).
///
/// # Safety
/// `shadow_data` holds a `T` written by [`ctor`], dropped at most once.
#[doc(hidden)]
pub unsafe extern "C" fn dtor<T>(_obj: *mut c_void, shadow_data: *mut c_void) {
    // SAFETY: per the contract.
    unsafe { core::ptr::drop_in_place(shadow_data.cast::<T>()) }
}
