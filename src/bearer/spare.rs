//! A thread-local spare for what a CAE request keeps for its possible re-send, so that a
//! steady stream of CAE requests allocates nothing (issue 12: "the CAE path without
//! allocations").
//!
//! Every CAE request keeps its re-send state, and the copy of its request head in a byte
//! buffer, in one box ([`Reused`]). Each thread keeps at most one spare box:
//!
//! * **Taking**: a request takes its thread's spare if there is one and it was made for the
//!   same type (which `Any` checks); otherwise it allocates a box and a buffer.
//! * **Giving back**: when the response future is dropped, or its state is taken out to answer
//!   a 401, the box, emptied, with its buffer wiped, becomes the spare of the thread that
//!   drops it, replacing and freeing any spare already there. State taken out for a 401
//!   takes the buffer with it, wiped when dropped.
//! * **Bounds**: one box per thread, its buffer at most [`BYTES_LIMIT`]; a larger buffer is
//!   freed instead.
//! * **No lock, no panic**: the spare is a thread-local `Cell`; while a thread is being torn
//!   down (its thread-locals gone), requests allocate and drops free, as without spares.
//!
//! A future that moves to another thread gives its box to that thread: in a work-stealing
//! runtime a task mostly stays on its worker, and when it does not, the price is the
//! allocation the spare would have saved.

use std::any::Any;
use std::cell::Cell;
use std::mem::ManuallyDrop;

use zeroize::Zeroizing;

/// The largest buffer kept in a thread's spare box; a larger one is freed.
pub(super) const BYTES_LIMIT: usize = 16 * 1024;

thread_local! {
    static BOX: Cell<Option<Box<dyn Any>>> = const { Cell::new(None) };
}

/// What the box holds: the value and the buffer it was made with (a request head's copy),
/// which stays in the box, emptied, when the value is dropped.
struct Kept<T> {
    value: Option<T>,
    bytes: Vec<u8>,
}

/// A `T` in a box that, when dropped, becomes its thread's spare box; or nothing, without a
/// box ([`none`](Self::none)), in the same eight bytes.
pub(crate) struct Reused<T: 'static> {
    /// `None` for nothing. Dropped by hand (`Drop` below), so that a future without CAE has
    /// no drop glue to call for it.
    boxed: ManuallyDrop<Option<Box<Kept<T>>>>,
}

impl<T: 'static> Reused<T> {
    /// Nothing, and no box.
    #[inline]
    pub(crate) fn none() -> Self {
        Self {
            boxed: ManuallyDrop::new(None),
        }
    }

    /// The value `make` returns, in this thread's spare box or a new one. `make` gets the
    /// box's buffer, empty (with room for `capacity` bytes when the box is new), to write the
    /// bytes the value goes with.
    #[inline]
    pub(crate) fn new(capacity: usize, make: impl FnOnce(&mut Vec<u8>) -> T) -> Self {
        let spare = BOX
            .try_with(Cell::take)
            .ok()
            .flatten()
            .and_then(|spare| spare.downcast::<Kept<T>>().ok());
        let mut boxed = spare.unwrap_or_else(|| {
            Box::new(Kept {
                value: None,
                bytes: Vec::new(),
            })
        });
        // A new box, or one whose buffer went with a 401's re-send or was over the limit.
        if boxed.bytes.capacity() == 0 {
            boxed.bytes.reserve(capacity);
        }
        boxed.value = Some(make(&mut boxed.bytes));
        Self {
            boxed: ManuallyDrop::new(Some(boxed)),
        }
    }

    /// The value and its bytes, out of the box (`None` if they were taken already). The
    /// bytes are wiped when dropped.
    pub(crate) fn take(&mut self) -> Option<(T, Zeroizing<Vec<u8>>)> {
        let kept = self.boxed.as_mut()?;
        let value = kept.value.take()?;
        Some((value, Zeroizing::new(std::mem::take(&mut kept.bytes))))
    }

    #[cfg(test)]
    fn get(&self) -> Option<(&T, &[u8])> {
        let kept = self.boxed.as_deref()?;
        Some((kept.value.as_ref()?, &kept.bytes))
    }

    /// Empties the box, wipes its buffer (it may hold header values that are secrets) and
    /// keeps it as this thread's spare, with the buffer unless that is over [`BYTES_LIMIT`].
    #[inline(never)]
    fn give_back(&mut self) {
        if let Some(mut boxed) = self.boxed.take() {
            boxed.value = None;
            // A plain fill, not `zeroize`'s volatile byte-by-byte writes (several
            // instructions a byte, on every CAE request): the buffer stays reachable through
            // the thread-local, so the writes cannot be optimised away.
            boxed.bytes.fill(0);
            boxed.bytes.clear();
            if boxed.bytes.capacity() > BYTES_LIMIT {
                boxed.bytes = Vec::new();
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at<T>(reused: &Reused<T>) -> Option<*const u8> {
        reused
            .boxed
            .as_deref()
            .map(|kept| (kept as *const Kept<T>).cast())
    }

    #[test]
    fn a_dropped_box_is_the_next_ones_with_its_buffer_wiped_and_a_box_of_another_type_is_not() {
        let first = Reused::new(64, |bytes| {
            bytes.extend_from_slice(b"secret");
            1u64
        });
        let (box_at, bytes_at) = (at(&first), first.get().map(|(_, b)| b.as_ptr()));
        drop(first);
        let second = Reused::new(64, |bytes| {
            assert!(bytes.is_empty(), "the buffer comes back empty");
            2u64
        });
        assert_eq!(at(&second), box_at, "the box is reused");
        assert_eq!(
            second.get().map(|(v, b)| (*v, b.as_ptr())),
            Some((2, bytes_at.unwrap()))
        );
        drop(second);
        let other = Reused::new(64, |_| String::from("x"));
        assert_eq!(other.get().map(|(v, _)| v.as_str()), Some("x"));
    }

    #[test]
    fn taking_leaves_the_box_empty_and_hands_over_the_bytes() {
        let mut reused = Reused::new(8, |bytes| {
            bytes.extend_from_slice(b"head");
            String::from("value")
        });
        let (value, bytes) = reused.take().unwrap();
        assert_eq!((value.as_str(), bytes.as_slice()), ("value", &b"head"[..]));
        assert!(reused.take().is_none());
        assert!(reused.get().is_none());
    }

    #[test]
    fn a_large_buffer_is_not_kept() {
        let large = Reused::new(BYTES_LIMIT + 1, |bytes| bytes.push(1));
        let box_at = at(&large);
        drop(large);
        let mut capacity = None;
        let next = Reused::new(8, |bytes| capacity = Some(bytes.capacity()));
        assert_eq!(at(&next), box_at, "the box is kept");
        assert_eq!(
            capacity,
            Some(8),
            "the box, with a new buffer of the first capacity"
        );
        drop(next);
    }
}
