//! A thread-local spare for what a CAE request keeps for its possible re-send, so that a
//! steady stream of CAE requests allocates nothing (issue 12: "the CAE path without
//! allocations").
//!
//! Every CAE request keeps its re-send state, and the copy of its request head in a byte
//! buffer, in one box ([`Reused`]). Each thread keeps spare boxes, as many as it had CAE
//! requests in flight at once, up to a bound: the one given back last in a `Cell` of its own,
//! the ones before it in a stack.
//!
//! * **Taking**: a request takes the last box given back if it was made for the same type
//!   (which `Any` checks), or else the box nearest the top of the stack made for it;
//!   otherwise it allocates a box and a buffer. A last box of another type goes on the stack
//!   first, so that a thread sending CAE requests through services of several types (a
//!   different inner service or body) reuses each type's boxes.
//! * **Giving back**: when the response future is dropped, or its state is taken out to answer
//!   a 401, the box, emptied, with its buffer wiped, becomes the last given back of the thread
//!   that drops it; the one it displaces goes on top of the stack. State taken out for a 401
//!   takes the buffer with it, wiped when dropped.
//! * **Bounds**: one box and [`BOXES_LIMIT`] in the stack; buffers of at most
//!   [`BYTES_LIMIT`] each, and of [`KEPT_BYTES_LIMIT`] together in the stack. A box over the
//!   count is freed; a buffer over a byte bound is freed and its box kept without one (a box
//!   of another type than the request's is freed whole: its buffer cannot be reached). With
//!   more CAE requests in flight on a thread than that, the ones over it allocate.
//! * **No lock, no panic**: the last box is a thread-local `Cell`, the stack a thread-local
//!   `RefCell` borrowed only to push a box or find one and take it out (at most
//!   [`BOXES_LIMIT`] type checks; no other code runs then); while a thread
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
    boxes: Vec<Stacked>,
    bytes: usize,
}

/// A spare box in the stack, made for any type, and its buffer's capacity (which a box of a
/// type not known where it is stacked cannot tell).
struct Stacked {
    spare: Box<dyn Any>,
    capacity: usize,
}

thread_local! {
    /// The box given back last.
    static LAST: Cell<Option<Box<dyn Any>>> = const { Cell::new(None) };
    /// The capacity of the buffer in the box `LAST` holds, set with it: a box of another type
    /// found there goes to the stack, which counts its bytes.
    static LAST_CAPACITY: Cell<usize> = const { Cell::new(0) };
    /// The ones before it.
    static SPARES: RefCell<Spares> = const {
        RefCell::new(Spares {
            boxes: Vec::new(),
            bytes: 0,
        })
    };
}

impl Spares {
    /// The box nearest the top that was made for `T`. Boxes of other types stay: a thread
    /// that sends CAE requests through services of several types finds each type's boxes.
    fn take<T: 'static>(&mut self) -> Option<Box<Kept<T>>> {
        let at = self
            .boxes
            .iter()
            .rposition(|stacked| stacked.spare.is::<Kept<T>>())?;
        let Stacked { spare, capacity } = self.boxes.remove(at);
        self.bytes = self.bytes.saturating_sub(capacity);
        spare.downcast().ok()
    }

    /// Keeps `spare` (its value gone, its buffer of `capacity` wiped and empty) within the
    /// bounds, or gives it back to be freed. Over the byte bounds, a box made for `T` is kept
    /// without its buffer, which is freed; a box of another type is freed whole, as its buffer
    /// cannot be reached.
    fn keep<T: 'static>(&mut self, spare: Box<dyn Any>, capacity: usize) -> Option<Box<dyn Any>> {
        if self.boxes.len() >= BOXES_LIMIT {
            return Some(spare);
        }
        let (spare, capacity) = match self.bytes.checked_add(capacity) {
            Some(total) if capacity <= BYTES_LIMIT && total <= KEPT_BYTES_LIMIT => {
                self.bytes = total;
                (spare, capacity)
            }
            _ => match spare.downcast::<Kept<T>>() {
                Ok(mut kept) => {
                    kept.bytes = Vec::new();
                    (kept as Box<dyn Any>, 0)
                }
                Err(other) => return Some(other),
            },
        };
        self.boxes.push(Stacked { spare, capacity });
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
        let spare = match LAST.try_with(Cell::take) {
            Ok(Some(last)) => match last.downcast::<Kept<T>>() {
                Ok(kept) => Some(kept),
                Err(other) => Self::from_stack_past(other),
            },
            _ => Self::from_stack(),
        };
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

    /// The box nearest the top of this thread's stack that was made for `T`: out of line, as
    /// a thread with one request in flight at a time finds its box in `LAST`.
    #[inline(never)]
    fn from_stack() -> Option<Box<Kept<T>>> {
        SPARES
            .try_with(|spares| spares.try_borrow_mut().ok()?.take::<T>())
            .ok()
            .flatten()
    }

    /// [`from_stack`](Self::from_stack) when `LAST` held `other`, a box of another type: it
    /// goes on the stack first, so that its type's next request finds it.
    #[inline(never)]
    fn from_stack_past(other: Box<dyn Any>) -> Option<Box<Kept<T>>> {
        let capacity = LAST_CAPACITY.try_with(Cell::get).unwrap_or(0);
        let (found, _unkept) = SPARES
            .try_with(|spares| match spares.try_borrow_mut() {
                Ok(mut spares) => {
                    let unkept = spares.keep::<T>(other, capacity);
                    (spares.take::<T>(), unkept)
                }
                Err(_) => (None, Some(other)),
            })
            .unwrap_or_default();
        // A box not kept is freed here, after the borrow.
        found
    }

    /// Puts `displaced`, the box `LAST` held before, with a buffer of `capacity`, on top of
    /// this thread's stack if the bounds allow; frees it otherwise.
    #[inline(never)]
    fn to_stack(displaced: Box<dyn Any>, capacity: usize) {
        // Freed here, after the borrow, if not kept.
        let _unkept = SPARES
            .try_with(|spares| match spares.try_borrow_mut() {
                Ok(mut spares) => spares.keep::<T>(displaced, capacity),
                Err(_) => Some(displaced),
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
    pub(crate) fn get(&self) -> Option<(&T, &[u8])> {
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
            let capacity = boxed.bytes.capacity();
            let displaced = LAST.try_with(|last| last.replace(Some(boxed)));
            // A `Cell<usize>` needs no destructor: it is there while the thread runs.
            let displaced_capacity = LAST_CAPACITY.try_with(|last| last.replace(capacity));
            if let (Ok(Some(displaced)), Ok(displaced_capacity)) = (displaced, displaced_capacity) {
                Self::to_stack(displaced, displaced_capacity);
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
    fn boxes_of_types_that_alternate_on_a_thread_are_each_reused() {
        // Each box's buffer is made with a capacity of its own, which a reused box keeps: a
        // new box gets the capacity asked for, 8.
        drop(Reused::new(64, |_| 0usize));
        // Finds the usize's box last, made for another type: stacks it, and allocates.
        drop(Reused::new(128, |_| String::new()));
        assert_eq!(
            spares(),
            (true, 1, 64),
            "the String's box last, the usize's stacked"
        );
        for round in 0..3 {
            let a = Reused::new(8, |bytes| bytes.capacity());
            assert_eq!(a.get().map(|(c, _)| *c), Some(64), "round {round}: usize");
            drop(a);
            let b = Reused::new(8, |bytes| bytes.capacity().to_string());
            assert_eq!(
                b.get().map(|(c, _)| c.as_str()),
                Some("128"),
                "round {round}"
            );
            drop(b);
            assert_eq!(
                spares(),
                (true, 1, 64),
                "round {round}: no box more, none fewer"
            );
        }
    }

    #[test]
    fn a_box_of_another_type_over_the_byte_bound_is_freed_whole() {
        // Fill the stack's byte bound with boxes made for `usize`.
        let fill: Vec<_> = (0..=KEPT_BYTES_LIMIT / BYTES_LIMIT)
            .map(|_| Reused::new(BYTES_LIMIT, |_| 0usize))
            .collect();
        drop(fill);
        let (_, boxes, bytes) = spares();
        assert_eq!(
            (boxes, bytes),
            (KEPT_BYTES_LIMIT / BYTES_LIMIT, KEPT_BYTES_LIMIT)
        );
        // A `String` request finds the last `usize` box: no room for its bytes, so it is freed
        // with them; the stack is as it was.
        let other = Reused::new(8, |_| String::new());
        assert_eq!(spares(), (false, boxes, bytes));
        drop(other);
        // A `usize` request finds the `String`'s box last: no room for its bytes either, so it
        // is freed whole, and the request takes a `usize` box from the stack.
        let taken = Reused::new(8, |bytes| bytes.capacity());
        assert_eq!(taken.get().map(|(c, _)| *c), Some(BYTES_LIMIT));
        assert_eq!(spares(), (false, boxes - 1, bytes - BYTES_LIMIT));
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
