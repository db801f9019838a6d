//! A thread-local spare for what a CAE request keeps for its possible re-send, so that a
//! steady stream of CAE requests allocates nothing (issue 12: "the CAE path without
//! allocations").
//!
//! Every CAE request keeps its re-send state, and the copy of its request head in a byte
//! buffer, in one box ([`Reused`]). Each thread keeps spare boxes, as many as it had CAE
//! requests in flight at once, up to a bound: the one given back last in a `Cell` of its own,
//! the ones before it in a stack.
//!
//! * **Taking**: a request takes the last box given back, or else the one on top of the
//!   stack, if it was made for the same type (which `Any` checks); otherwise it allocates a
//!   box and a buffer.
//! * **Giving back**: when the response future is dropped, or its state is taken out to answer
//!   a 401, the box, emptied, with its buffer wiped, becomes the last given back of the thread
//!   that drops it; the one it displaces goes on top of the stack (or is freed if it was
//!   made for another type). State taken out for a 401 takes the buffer with it, wiped when
//!   dropped.
//! * **Bounds**: one box and [`BOXES_LIMIT`] in the stack; buffers of at most
//!   [`BYTES_LIMIT`] each, and of [`KEPT_BYTES_LIMIT`] together in the stack. A box over the
//!   count is freed; a buffer over a byte bound is freed and its box kept without one. With
//!   more CAE requests in flight on a thread than that, the ones over it allocate.
//! * **No lock, no panic**: the last box is a thread-local `Cell`, the stack a thread-local
//!   `RefCell` borrowed only to push or pop a box (no other code runs then); while a thread
//!   is being torn down (its thread-locals gone), requests allocate and drops free, as
//!   without spares.
//!
//! Why both: with one spare a thread, a client thread with many requests in flight (32
//! through a hyper-util client, each request through a clone of one service) paid nearly two
//! allocations a request, the box and its buffer, for all but the first
//! (`THROUGHPUT_BASE=layer cargo bench --bench throughput`, 2026-11-30); with the stack alone,
//! a thread sending one request at a time paid 43 instructions a request more for its
//! borrows and bounds (`hot_path_instructions`, CAE: 2044 against 2001).
//!
//! A future that moves to another thread gives its box to that thread: in a work-stealing
//! runtime a task mostly stays on its worker, and when it does not, the price is the
//! allocation the spare would have saved.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::mem::ManuallyDrop;

use zeroize::Zeroizing;

/// The largest buffer kept in a spare box; a larger one is freed.
pub(super) const BYTES_LIMIT: usize = 16 * 1024;
/// The most spare boxes a thread keeps in its stack.
pub(super) const BOXES_LIMIT: usize = 64;
/// The most bytes of buffers the boxes in a thread's stack keep together: a buffer of the
/// first capacity for each box.
pub(super) const KEPT_BYTES_LIMIT: usize = BOXES_LIMIT * super::head::FIRST_CAPACITY;

/// A thread's stack of spare boxes, the latest on top, and their buffers' capacity in all.
struct Spares {
    boxes: Vec<Box<dyn Any>>,
    bytes: usize,
}

thread_local! {
    /// The box given back last.
    static LAST: Cell<Option<Box<dyn Any>>> = const { Cell::new(None) };
    /// The ones before it.
    static SPARES: RefCell<Spares> = const {
        RefCell::new(Spares {
            boxes: Vec::new(),
            bytes: 0,
        })
    };
}

impl Spares {
    /// The box on top, if it was made for `T`.
    fn take<T: 'static>(&mut self) -> Option<Box<Kept<T>>> {
        let top = self.boxes.pop()?;
        match top.downcast::<Kept<T>>() {
            Ok(kept) => {
                self.bytes = self.bytes.saturating_sub(kept.bytes.capacity());
                Some(kept)
            }
            Err(other) => {
                self.boxes.push(other);
                None
            }
        }
    }

    /// Keeps `kept` (its value gone, its buffer wiped and empty) within the bounds, or gives
    /// it back to be freed.
    fn keep<T: 'static>(&mut self, mut kept: Box<Kept<T>>) -> Option<Box<Kept<T>>> {
        if self.boxes.len() >= BOXES_LIMIT {
            return Some(kept);
        }
        let capacity = kept.bytes.capacity();
        match self.bytes.checked_add(capacity) {
            Some(total) if capacity <= BYTES_LIMIT && total <= KEPT_BYTES_LIMIT => {
                self.bytes = total;
            }
            _ => kept.bytes = Vec::new(),
        }
        self.boxes.push(kept);
        None
    }
}

/// What the box holds: the value and the buffer it was made with (a request head's copy),
/// which stays in the box, emptied, when the value is dropped.
struct Kept<T> {
    value: Option<T>,
    bytes: Vec<u8>,
}

/// A `T` in a box that, when dropped, becomes one of its thread's spare boxes; or nothing,
/// without a box ([`none`](Self::none)), in the same eight bytes.
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

    /// The value `make` returns, in one of this thread's spare boxes or a new one. `make` gets the
    /// box's buffer, empty (with room for `capacity` bytes when the box is new), to write the
    /// bytes the value goes with.
    #[inline]
    pub(crate) fn new(capacity: usize, make: impl FnOnce(&mut Vec<u8>) -> T) -> Self {
        // A last box made for another type is freed.
        let spare = match LAST.try_with(Cell::take) {
            Ok(Some(last)) => last.downcast::<Kept<T>>().ok(),
            _ => None,
        }
        .or_else(Self::from_stack);
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

    /// The box on top of this thread's stack, if it was made for `T`: out of line, as a
    /// thread with one request in flight at a time finds its box in `LAST`.
    #[inline(never)]
    fn from_stack() -> Option<Box<Kept<T>>> {
        SPARES
            .try_with(|spares| spares.try_borrow_mut().ok()?.take::<T>())
            .ok()
            .flatten()
    }

    /// Puts `displaced`, the box `LAST` held before, on top of this thread's stack if it was
    /// made for `T` and the bounds allow; frees it otherwise.
    #[inline(never)]
    fn to_stack(displaced: Box<dyn Any>) {
        let Ok(kept) = displaced.downcast::<Kept<T>>() else {
            return;
        };
        // Freed here, after the borrow, if not kept.
        let _unkept = SPARES
            .try_with(|spares| match spares.try_borrow_mut() {
                Ok(mut spares) => spares.keep(kept),
                Err(_) => Some(kept),
            })
            .ok()
            .flatten();
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
    /// keeps it as the last one given back on this thread, the one before it going to the
    /// stack (see [`Spares::keep`] for the bounds).
    #[inline(never)]
    fn give_back(&mut self) {
        if let Some(mut boxed) = self.boxed.take() {
            // The value's drop runs the inner service's and the body's code: done before any
            // thread-local is touched.
            boxed.value = None;
            // A plain fill, not `zeroize`'s volatile byte-by-byte writes (several
            // instructions a byte, on every CAE request): the buffer stays reachable through
            // the thread-local, so the writes cannot be optimised away. A buffer freed
            // instead was wiped all the same.
            boxed.bytes.fill(0);
            boxed.bytes.clear();
            if boxed.bytes.capacity() > BYTES_LIMIT {
                boxed.bytes = Vec::new();
            }
            let displaced = LAST.try_with(|last| last.replace(Some(boxed)));
            if let Ok(Some(displaced)) = displaced {
                Self::to_stack(displaced);
            }
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

    /// Whether the thread has a last box, and the boxes in its stack and their buffers' bytes.
    fn spares() -> (bool, usize, usize) {
        let last = LAST.with(|last| {
            let boxed = last.take();
            let there = boxed.is_some();
            last.set(boxed);
            there
        });
        SPARES.with_borrow(|spares| (last, spares.boxes.len(), spares.bytes))
    }

    #[test]
    fn as_many_boxes_as_were_in_flight_at_once_are_reused() {
        let first: Vec<_> = (0..32)
            .map(|_| {
                Reused::new(64, |bytes| {
                    bytes.push(1);
                    false
                })
            })
            .collect();
        let mut boxes: Vec<_> = first.iter().map(at).collect();
        drop(first);
        assert_eq!(
            spares(),
            (true, 31, 31 * 64),
            "the last, and the others stacked"
        );
        let again: Vec<_> = (0..32)
            .map(|_| Reused::new(64, |bytes| bytes.is_empty()))
            .collect();
        assert!(
            again
                .iter()
                .all(|r| r.get().is_some_and(|(empty, _)| *empty))
        );
        let mut reused: Vec<_> = again.iter().map(at).collect();
        boxes.sort();
        reused.sort();
        assert_eq!(reused, boxes, "every box again, none new");
        assert_eq!(spares(), (false, 0, 0));
    }

    #[test]
    fn the_boxes_and_bytes_a_thread_keeps_are_bounded() {
        let many: Vec<_> = (0..BOXES_LIMIT + 5)
            .map(|_| Reused::new(BYTES_LIMIT, |bytes| bytes.capacity()))
            .collect();
        drop(many);
        let (last, boxes, bytes) = spares();
        assert!(last);
        assert_eq!(boxes, BOXES_LIMIT, "the boxes over the bound were freed");
        assert!(bytes <= KEPT_BYTES_LIMIT, "{bytes}");
        assert_eq!(
            bytes,
            KEPT_BYTES_LIMIT / BYTES_LIMIT * BYTES_LIMIT,
            "as many buffers as fit"
        );
        // The boxes kept without a buffer get one again when taken.
        let taken: Vec<_> = (0..=BOXES_LIMIT)
            .map(|_| Reused::new(8, |bytes| bytes.capacity()))
            .collect();
        assert!(taken.iter().all(|r| r.get().is_some_and(|(c, _)| *c >= 8)));
        assert_eq!(spares(), (false, 0, 0));
    }

    #[test]
    fn a_box_of_another_type_is_freed_and_the_stack_still_serves() {
        let (a, b) = (Reused::new(8, |_| 1u64), Reused::new(8, |_| 2u64));
        let a_at = at(&a);
        drop(a);
        drop(b);
        assert_eq!(spares(), (true, 1, 8));
        // Finds the last box, `b`'s, made for another type: frees it, and allocates.
        drop(Reused::new(8, |_| String::from("x")));
        assert_eq!(spares(), (true, 1, 8), "b's box freed, a's still stacked");
        let c = Reused::new(8, |_| 3u64);
        assert_eq!(at(&c), a_at, "the last box was another type's: the stack's");
        assert_eq!(spares(), (false, 0, 0));
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
