//! Global admission: at most `max_instances` live instances and `max_concurrent_boots` boots
//! under way. Both are checked without waiting, so an overloaded daemon answers SERVFAIL at
//! once instead of queueing queries without bound.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct Admission {
    max_instances: AtomicU32,
    live: AtomicU32,
    boots: Arc<Semaphore>,
    boots_max: AtomicU32,
}

/// Which limit refused a start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Instances,
    Boots,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Instances => "max_instances",
            Limit::Boots => "max_concurrent_boots",
        }
    }
}

/// A live instance's place; give it back with [`Admission::release`].
pub struct Admitted {
    pub boot: OwnedSemaphorePermit,
}

impl Admission {
    pub fn new(max_instances: u32, max_boots: u32) -> Admission {
        Admission {
            max_instances: AtomicU32::new(max_instances),
            live: AtomicU32::new(0),
            boots: Arc::new(Semaphore::new(max_boots as usize)),
            boots_max: AtomicU32::new(max_boots),
        }
    }

    pub fn try_admit(&self) -> Result<Admitted, Limit> {
        let max = self.max_instances.load(Ordering::Relaxed);
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| Limit::Instances)?;
        match self.boots.clone().try_acquire_owned() {
            Ok(boot) => Ok(Admitted { boot }),
            Err(_) => {
                self.release();
                Err(Limit::Boots)
            }
        }
    }

    /// One live instance fewer.
    pub fn release(&self) {
        let _ = self
            .live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    pub fn live(&self) -> u32 {
        self.live.load(Ordering::Relaxed)
    }

    /// New limits from a reloaded config; instances above a lowered limit keep running.
    pub fn set_limits(&self, max_instances: u32, max_boots: u32) {
        self.max_instances.store(max_instances, Ordering::Relaxed);
        let old = self.boots_max.swap(max_boots, Ordering::AcqRel);
        if max_boots > old {
            self.boots.add_permits((max_boots - old) as usize);
        } else if old > max_boots {
            self.boots.forget_permits((old - max_boots) as usize);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_beyond_limits_without_waiting() {
        let a = Admission::new(2, 1);
        let first = a.try_admit().unwrap();
        assert_eq!(a.try_admit().err(), Some(Limit::Boots));
        drop(first.boot);
        let _second = a.try_admit().unwrap();
        assert_eq!(a.try_admit().err(), Some(Limit::Instances));
        a.release();
        assert_eq!(a.live(), 1);
    }
}
