//! The C boundary: no panic crosses it, and a call that re-enters the shim on the same thread
//! (the driver calling one of its own exported functions, or our own code doing so) goes
//! straight to the driver.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Runs `work` unless this thread is already inside the shim, then `pass`. A panic in `work`
/// becomes `on_panic`.
#[inline]
pub fn call<R: Copy>(on_panic: R, work: impl FnOnce() -> R, pass: impl FnOnce() -> R) -> R {
    let depth = DEPTH.with(Cell::get);
    if depth > 0 {
        return pass();
    }
    DEPTH.with(|d| d.set(depth + 1));
    let result = catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|_| {
        crate::log::line("internal error caught at the driver boundary (a bug in gpuslice; please report it)");
        on_panic
    });
    DEPTH.with(|d| d.set(depth));
    result
}
