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
    push_within_capacity(v, x).map_err(|_| AllocError)
}

/// `v.push(x)` if there is room already, never allocating; otherwise `x` back. Unlike
/// `Vec::push` after a reservation, it has no growth path (which could reach the panic
/// handler) even in code that can never take it.
pub fn push_within_capacity<T>(v: &mut Vec<T>, x: T) -> Result<(), T> {
    let len = v.len();
    match v.spare_capacity_mut().first_mut() {
        Some(slot) => {
            slot.write(x);
            // SAFETY: the element at `len` was just written, within the capacity.
            unsafe { v.set_len(len + 1) };
            Ok(())
        }
        None => Err(x),
    }
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
