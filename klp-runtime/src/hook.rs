//! What a callback sees: the object it runs for, and the error type `pre_patch` returns.
//! The `extern "C"` trampolines that the macros generate call into [`__private`].

use core::ffi::{c_char, c_int, CStr};
use core::fmt;

/// The object a callback set is attached to: `vmlinux` or a module.
#[derive(Debug, Clone, Copy)]
pub struct Object<'a> {
    name: &'a str,
}

impl<'a> Object<'a> {
    pub fn name(&self) -> &'a str {
        self.name
    }

    pub fn is_vmlinux(&self) -> bool {
        crate::abi::is_vmlinux(self.name)
    }
}

/// A positive kernel errno. `pre_patch` returns it to veto a patch; the kernel sees `-errno`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Errno(i32);

impl Errno {
    pub const EPERM: Errno = Errno(1);
    pub const ENOENT: Errno = Errno(2);
    pub const EIO: Errno = Errno(5);
    pub const ENOMEM: Errno = Errno(12);
    pub const EBUSY: Errno = Errno(16);
    pub const EEXIST: Errno = Errno(17);
    pub const ENODEV: Errno = Errno(19);
    pub const EINVAL: Errno = Errno(22);

    /// `errno` must be a positive errno value; anything else becomes `EINVAL`.
    pub const fn new(errno: i32) -> Errno {
        if errno > 0 && errno < 4096 {
            Errno(errno)
        } else {
            Errno::EINVAL
        }
    }

    /// The errno of what a kernel function returned: `-errno`. Anything else (a positive
    /// value, `i32::MIN`, beyond `MAX_ERRNO`) is `EINVAL`, never a wrap or a panic.
    pub const fn from_kernel(ret: c_int) -> Errno {
        match ret.checked_neg() {
            Some(errno) => Errno::new(errno),
            None => Errno::EINVAL,
        }
    }

    pub const fn get(self) -> i32 {
        self.0
    }

    /// The value a kernel function returns: `-errno`.
    pub const fn to_kernel(self) -> c_int {
        -self.0
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Errno({})", self.0)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "errno {}", self.0)
    }
}

/// The result of a `pre_patch` hook (and of fallible runtime calls).
pub type Result<T = ()> = core::result::Result<T, Errno>;

#[doc(hidden)]
pub mod __private {
    use super::*;

    /// # Safety
    /// `object` is a NUL-terminated object name that outlives the call.
    unsafe fn object<'a>(object: *const c_char) -> Object<'a> {
        // SAFETY: per the contract; the runtime passes the name from its tables.
        let name = unsafe { CStr::from_ptr(object) };
        Object {
            name: name.to_str().unwrap_or("?"),
        }
    }

    /// # Safety
    /// As [`object`].
    pub unsafe fn call_pre_patch(
        obj: *const c_char,
        f: impl FnOnce(&Object<'_>) -> Result,
    ) -> c_int {
        // SAFETY: forwarded contract.
        match f(&unsafe { object(obj) }) {
            Ok(()) => 0,
            Err(e) => e.to_kernel(),
        }
    }

    /// # Safety
    /// As [`object`].
    pub unsafe fn call_hook(obj: *const c_char, f: impl FnOnce(&Object<'_>)) {
        // SAFETY: forwarded contract.
        f(&unsafe { object(obj) })
    }
}
