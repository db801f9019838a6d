//! A counting global allocator: heap allocations (`alloc`, `alloc_zeroed`; a `realloc` is
//! not a new allocation) made by client threads while counting is on. The server runs on
//! its own runtime whose threads are not client threads, so its allocations are not counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub struct Counting;

static ON: AtomicBool = AtomicBool::new(false);
static COUNT: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static CLIENT: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as a client thread (its allocations count).
pub fn client_thread() {
    CLIENT.with(|client| client.set(true));
}

fn count() {
    if ON.load(Ordering::Relaxed) && CLIENT.try_with(Cell::get).unwrap_or(false) {
        COUNT.fetch_add(1, Ordering::Relaxed);
    }
}

/// Allocations made by client threads while `f` runs.
pub async fn counted<F: Future>(f: F) -> (F::Output, u64) {
    let before = COUNT.load(Ordering::SeqCst);
    ON.store(true, Ordering::SeqCst);
    let output = f.await;
    ON.store(false, Ordering::SeqCst);
    (output, COUNT.load(Ordering::SeqCst) - before)
}

// SAFETY: every call is forwarded to the system allocator unchanged; counting only touches
// an atomic and a const-initialised thread-local (no allocation, no destructor).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
