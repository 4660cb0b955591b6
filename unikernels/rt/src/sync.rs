//! Global state for a guest with one CPU, no interrupts and no threads: nothing ever runs
//! concurrently with anything else (exceptions never return), so plain cells are enough.

use core::cell::UnsafeCell;

/// A value set once at start-up, read afterwards.
pub struct Once<T>(UnsafeCell<Option<T>>);

// SAFETY: one CPU, no interrupts, no threads: there is no concurrent access.
unsafe impl<T> Sync for Once<T> {}

impl<T> Once<T> {
    pub const fn new() -> Self {
        Once(UnsafeCell::new(None))
    }

    /// Sets the value; only `rt_start` calls this, before anything reads it.
    pub fn set(&self, value: T) {
        // SAFETY: no reference into the cell exists yet (see the type's docs).
        unsafe { *self.0.get() = Some(value) }
    }

    pub fn get(&self) -> &T {
        // SAFETY: after `set` the cell is never written again, so shared references are fine.
        match unsafe { &*self.0.get() } {
            Some(v) => v,
            None => crate::fatal("rt used before start-up"),
        }
    }
}

/// A mutable global; `with` hands out the only reference for the duration of a closure.
pub struct Global<T>(UnsafeCell<T>);

// SAFETY: as for Once.
unsafe impl<T> Sync for Global<T> {}

impl<T> Global<T> {
    pub const fn new(value: T) -> Self {
        Global(UnsafeCell::new(value))
    }

    /// Runs `f` with exclusive access. `f` must not call `with` on the same global again.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: single-threaded and non-reentrant by contract (the allocator and console,
        // the only users, never call themselves).
        f(unsafe { &mut *self.0.get() })
    }
}
