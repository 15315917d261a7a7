//! The typed values the reader hands out besides plain strings: object names that can go to
//! C, where items were declared, and function pointers of live tables.

use core::ffi::CStr;
use core::fmt;

use crate::abi;

/// An object's name (`vmlinux` or a module's) as the tables hold it: UTF-8, and followed by
/// its NUL in memory, so that it can go to C as it is. Only the reader makes them, from the
/// tables' C strings; [`ObjectName::VMLINUX`] is the kernel proper's.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectName<'a>(&'a str);

impl<'a> ObjectName<'a> {
    pub const VMLINUX: ObjectName<'static> = ObjectName::from_static(abi::VMLINUX_C);

    /// No object: an empty C string, which names none.
    pub const NONE: ObjectName<'static> = ObjectName::from_static(c"");

    /// A name spelled in this crate (checked when it is compiled).
    const fn from_static(name: &'static CStr) -> ObjectName<'static> {
        match core::str::from_utf8(name.to_bytes()) {
            Ok(name) => ObjectName(name),
            Err(_) => panic!("object names are UTF-8"),
        }
    }

    /// The name of a C string; `None` if it is not UTF-8.
    pub fn new(name: &'a CStr) -> Option<ObjectName<'a>> {
        name.to_str().ok().map(ObjectName)
    }

    pub fn as_str(self) -> &'a str {
        self.0
    }

    pub fn is_vmlinux(self) -> bool {
        self.0 == Self::VMLINUX.0
    }

    /// The name for C: NUL-terminated.
    pub fn as_ptr(self) -> *const core::ffi::c_char {
        self.0.as_ptr().cast()
    }
}

impl Default for ObjectName<'_> {
    fn default() -> Self {
        ObjectName::NONE
    }
}

impl PartialEq<str> for ObjectName<'_> {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ObjectName<'_> {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl fmt::Display for ObjectName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl fmt::Debug for ObjectName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0, f)
    }
}

/// Where an item was declared, as the macros write it: `module::path::item (file:line)`.
/// Its parts are taken apart on demand (the cross-item check on the host orders by them);
/// the kernel runtime never needs them, so nothing there parses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Origin<'a>(&'a str);

impl<'a> Origin<'a> {
    pub fn new(written: &'a str) -> Origin<'a> {
        Origin(written)
    }

    /// (item, file, line); `None` for a string of another shape.
    fn parts(self) -> Option<(&'a str, &'a str, u32)> {
        let (item, loc) = self.0.strip_suffix(')')?.rsplit_once(" (")?;
        let (file, line) = loc.rsplit_once(':')?;
        Some((item, file, line.parse().ok()?))
    }

    /// The item's path; the whole string if it has another shape.
    pub fn item(self) -> &'a str {
        self.parts().map_or(self.0, |p| p.0)
    }

    pub fn file(self) -> &'a str {
        self.parts().map_or("", |p| p.1)
    }

    pub fn line(self) -> u32 {
        self.parts().map_or(0, |p| p.2)
    }

    /// Declaration order within a crate: by file, then line.
    pub fn source_order(self) -> (&'a str, u32) {
        (self.file(), self.line())
    }
}

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// A function pointer of live tables: the address a hook, constructor or destructor slot
/// held. Only [`Memory`] makes them, and calling one means naming what the slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveFn(pub(super) usize);

impl LiveFn {
    /// # Safety
    /// The slot this came from holds a [`abi::PrePatchFn`] (a set's `pre_patch`).
    pub unsafe fn pre_patch(self) -> abi::PrePatchFn {
        // SAFETY: per the contract, a non-null function address of that type.
        unsafe { core::mem::transmute::<usize, abi::PrePatchFn>(self.0) }
    }

    /// # Safety
    /// The slot this came from holds a [`abi::HookFn`] (the other three hooks).
    pub unsafe fn hook(self) -> abi::HookFn {
        // SAFETY: as above.
        unsafe { core::mem::transmute::<usize, abi::HookFn>(self.0) }
    }

    /// # Safety
    /// The slot this came from holds a [`abi::ShadowDtorFn`] (a shadow type's `dtor`).
    pub unsafe fn dtor(self) -> abi::ShadowDtorFn {
        // SAFETY: as above.
        unsafe { core::mem::transmute::<usize, abi::ShadowDtorFn>(self.0) }
    }
}
