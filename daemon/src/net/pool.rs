//! Taps created ahead of time, so that a cold summon renames one instead of having the kernel
//! register a new net device on the critical path (TUNSETIFF was ≈ 0.28 ms of the ≈ 0.53 ms
//! plumbing stage, see docs/benchmarks.md).
//!
//! A pooled tap is fresh: created down, never used, with no address, route or neighbour and
//! nothing queued (a down link receives nothing), its sysctls already restricted. It is handed
//! out once and deleted with its instance like any other tap; taps are never returned to the
//! pool, so nothing of one instance can reach the next. The daemon holds each pooled tap's only
//! fd and never makes it persistent: if summond dies, the kernel removes them; their `sm-` names
//! let start-up cleanup find them anyway.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::tap::{Tap, TAP_PREFIX};

/// A tap waiting in the pool, not yet named for a service.
#[derive(Debug)]
pub struct PooledTap(pub(super) Tap);

#[derive(Clone, Default)]
pub struct TapPool {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    target: usize,
    ready: Mutex<Vec<Tap>>,
    refilling: AtomicBool,
    closed: AtomicBool,
    next: AtomicU64,
}

impl TapPool {
    /// A pool that keeps `target` taps ready (0: none; every summon creates its tap).
    /// Call [`TapPool::refill`] to fill it.
    pub fn new(target: usize) -> TapPool {
        TapPool {
            inner: Arc::new(Inner {
                target: target.min(crate::config::MAX_TAP_POOL),
                ..Inner::default()
            }),
        }
    }

    /// A ready tap, if there is one; starts a refill in the background either way.
    pub fn take(&self) -> Option<PooledTap> {
        if self.inner.target == 0 {
            return None;
        }
        let tap = lock(&self.inner.ready).pop();
        self.refill();
        tap.map(PooledTap)
    }

    /// Tops the pool up on a blocking thread (creating a tap is a syscall that waits for the
    /// kernel's rtnl lock); at most one refill runs at a time.
    pub fn refill(&self) {
        let inner = &self.inner;
        if inner.target == 0
            || inner.closed.load(Ordering::Acquire)
            || lock(&inner.ready).len() >= inner.target
            || inner.refilling.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let pool = self.clone();
        let spawned = tokio::runtime::Handle::try_current()
            .map(|h| drop(h.spawn_blocking(move || pool.fill())))
            .is_ok();
        if !spawned {
            inner.refilling.store(false, Ordering::Release);
        }
    }

    fn fill(&self) {
        let inner = &self.inner;
        while !inner.closed.load(Ordering::Acquire) && lock(&inner.ready).len() < inner.target {
            // A name no service can have: service names are DNS labels, which have no '_'.
            let n = inner.next.fetch_add(1, Ordering::Relaxed) % 10_000_000_000;
            let name = format!("{TAP_PREFIX}_p{n}");
            match Tap::open(&name) {
                Ok(tap) => {
                    super::restrict_tap_sysctls(&tap.name);
                    let mut ready = lock(&inner.ready);
                    if inner.closed.load(Ordering::Acquire) {
                        break; // dropping the tap removes the interface
                    }
                    ready.push(tap);
                }
                Err(e) => {
                    tracing::warn!(tap = %name, error = %e, "creating a pooled tap; summons create their own until the next try");
                    break;
                }
            }
        }
        inner.refilling.store(false, Ordering::Release);
    }

    /// Empties the pool for good; the dropped fds remove the interfaces.
    pub fn close(&self) -> usize {
        self.inner.closed.store(true, Ordering::Release);
        std::mem::take(&mut *lock(&self.inner.ready)).len()
    }

    /// Taps ready now.
    pub fn ready(&self) -> usize {
        lock(&self.inner.ready).len()
    }
}

/// The pool's lock guards a Vec push/pop only; a poisoned one still holds valid taps.
fn lock(m: &Mutex<Vec<Tap>>) -> std::sync::MutexGuard<'_, Vec<Tap>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
