//! Thread-local spares for what a CAE request keeps for its possible re-send, so that a steady
//! stream of CAE requests allocates nothing (issue 12: "the CAE path without allocations").
//!
//! Every CAE request keeps its re-send state in a box ([`Reused`]) and its request head in a
//! byte buffer ([`take_bytes`], [`give_bytes`]). Each thread keeps at most one spare of each:
//!
//! * **Taking**: a request takes its thread's spare if there is one (a box only if it was made
//!   for the same type, which `Any` checks); otherwise it allocates.
//! * **Giving back**: when the response future is dropped, or its state is taken out to answer
//!   a 401, the box (emptied) and the buffer (wiped) become the spares of the thread that
//!   drops them, replacing and freeing any spare already there.
//! * **Bounds**: one box and one buffer of at most [`BYTES_LIMIT`] per thread; a larger
//!   buffer is freed instead.
//! * **No lock, no panic**: the spares are thread-local `Cell`s; while a thread is being torn
//!   down (its thread-locals gone), requests allocate and drops free, as without spares.
//!
//! A future that moves to another thread gives its spares to that thread: in a work-stealing
//! runtime a task mostly stays on its worker, and when it does not, the price is the
//! allocation the spare would have saved.

use std::any::Any;
use std::cell::Cell;
use std::mem::ManuallyDrop;

/// The largest buffer kept as a thread's spare; a larger one is freed.
pub(super) const BYTES_LIMIT: usize = 16 * 1024;

thread_local! {
    static BOX: Cell<Option<Box<dyn Any>>> = const { Cell::new(None) };
    static BYTES: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// A `T` in a box that, when dropped, becomes its thread's spare box; or nothing, without a
/// box ([`none`](Self::none)), in the same eight bytes.
pub(crate) struct Reused<T: 'static> {
    /// `None` for nothing; the inner `None` once taken. Dropped by hand (`Drop` below), so
    /// that a future without CAE has no drop glue to call for it.
    boxed: ManuallyDrop<Option<Box<Option<T>>>>,
}

impl<T: 'static> Reused<T> {
    /// Nothing, and no box.
    #[inline]
    pub(crate) fn none() -> Self {
        Self {
            boxed: ManuallyDrop::new(None),
        }
    }

    /// `value` in this thread's spare box, or in a new one.
    #[inline]
    pub(crate) fn new(value: T) -> Self {
        let spare = BOX
            .try_with(Cell::take)
            .ok()
            .flatten()
            .and_then(|spare| spare.downcast::<Option<T>>().ok());
        let boxed = match spare {
            Some(mut boxed) => {
                *boxed = Some(value);
                boxed
            }
            None => Box::new(Some(value)),
        };
        Self {
            boxed: ManuallyDrop::new(Some(boxed)),
        }
    }

    /// The value, out of its box (`None` if it was taken already).
    pub(crate) fn take(&mut self) -> Option<T> {
        self.boxed.as_mut().and_then(|boxed| boxed.take())
    }

    #[cfg(test)]
    fn get(&self) -> Option<&T> {
        self.boxed.as_deref().and_then(Option::as_ref)
    }
}

impl<T: 'static> Reused<T> {
    /// Empties the box and keeps it as this thread's spare.
    #[inline(never)]
    fn give_back(&mut self) {
        if let Some(mut boxed) = self.boxed.take() {
            *boxed = None;
            let _ = BOX.try_with(|spare| spare.set(Some(boxed)));
        }
    }
}

impl<T: 'static> Drop for Reused<T> {
    /// Small enough to inline where a future without CAE is dropped: a check for no box.
    #[inline(always)]
    fn drop(&mut self) {
        if self.boxed.is_some() {
            self.give_back();
        }
    }
}

/// This thread's spare buffer (empty), or a new one with room for `capacity` bytes.
#[inline]
pub(super) fn take_bytes(capacity: usize) -> Vec<u8> {
    let bytes = BYTES.try_with(Cell::take).unwrap_or_default();
    if bytes.capacity() == 0 {
        return Vec::with_capacity(capacity);
    }
    bytes
}

/// Wipes `bytes` (they may hold header values that are secrets) and keeps the buffer as this
/// thread's spare, unless it is over [`BYTES_LIMIT`].
#[inline]
pub(super) fn give_bytes(mut bytes: Vec<u8>) {
    // A plain fill, not `zeroize`'s volatile byte-by-byte writes (several instructions a
    // byte, on every CAE request): the buffer stays reachable through the thread-local, so
    // the writes cannot be optimised away.
    bytes.fill(0);
    bytes.clear();
    if bytes.capacity() <= BYTES_LIMIT {
        let _ = BYTES.try_with(|spare| spare.set(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_box_is_the_next_ones_and_a_box_of_another_type_is_not() {
        let first = Reused::new(1u64);
        let at = first.boxed.as_deref().map(|b| b as *const Option<u64>);
        drop(first);
        let second = Reused::new(2u64);
        assert_eq!(second.boxed.as_deref().map(|b| b as *const _), at, "reused");
        assert_eq!(second.get(), Some(&2));
        drop(second);
        let other = Reused::new(String::from("x"));
        assert_eq!(other.get().map(String::as_str), Some("x"));
    }

    #[test]
    fn taking_leaves_the_box_empty() {
        let mut reused = Reused::new(String::from("value"));
        assert_eq!(reused.take().as_deref(), Some("value"));
        assert_eq!(reused.take(), None);
        assert!(reused.get().is_none());
    }

    #[test]
    fn a_buffer_comes_back_empty_and_a_large_one_is_not_kept() {
        let mut bytes = take_bytes(64);
        bytes.extend_from_slice(b"secret");
        let at = bytes.as_ptr();
        give_bytes(bytes);
        let again = take_bytes(64);
        assert_eq!((again.as_ptr(), again.len()), (at, 0));

        let mut large = take_bytes(BYTES_LIMIT + 1);
        large.push(1);
        give_bytes(large);
        assert_eq!(take_bytes(8).capacity(), 8, "the large buffer was freed");
    }
}
