//! Allocation that fails with an error instead of aborting. In the kernel an allocation
//! failure in the runtime must fail the load (`-ENOMEM`) and never panic the machine, so the
//! reader and the planner grow their vectors only through these; the dispatcher makes every
//! plan in a callback that can fail, and the callbacks that cannot only run them.

use alloc::vec::Vec;

/// An allocation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("out of memory")]
pub struct AllocError;

/// `v.push(x)`, or `AllocError` if there is no room and none can be had.
pub fn push<T>(v: &mut Vec<T>, x: T) -> Result<(), AllocError> {
    v.try_reserve(1).map_err(|_| AllocError)?;
    // Cannot reallocate: there is room for one more.
    v.push(x);
    Ok(())
}

/// `v.extend(items)`, one fallible push at a time.
pub fn extend<T>(v: &mut Vec<T>, items: impl IntoIterator<Item = T>) -> Result<(), AllocError> {
    items.into_iter().try_for_each(|x| push(v, x))
}

/// `items.collect()`, failing instead of aborting.
pub fn collect<T>(items: impl IntoIterator<Item = T>) -> Result<Vec<T>, AllocError> {
    let mut v = Vec::new();
    extend(&mut v, items)?;
    Ok(v)
}
