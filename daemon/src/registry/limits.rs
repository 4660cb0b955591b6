//! Global admission: at most `max_instances` live instances, `max_concurrent_boots` boots
//! under way, and the live instances' guest memory within `memory_budget`. All are checked
//! without waiting, so an overloaded daemon answers SERVFAIL at once instead of queueing
//! queries without bound.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct Admission {
    max_instances: AtomicU32,
    live: AtomicU32,
    boots: Arc<Semaphore>,
    boots_max: AtomicU32,
    /// MiB of guest memory live instances may have together, and have now.
    memory_budget: AtomicU64,
    memory_live: AtomicU64,
    /// Live instances the host's limits hold (`crate::fds::InstanceCapacity`), and the limit
    /// that bounds them; unlimited until set.
    host_capacity: AtomicU32,
    host_limit: Mutex<&'static str>,
}

/// Which limit refused a start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Instances,
    Boots,
    Memory,
    /// The host's limits (tasks, memory maps: `crate::fds::InstanceCapacity`) hold no more.
    Host,
}

impl Limit {
    /// The configuration key behind the limit.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Instances => "max_instances",
            Limit::Boots => "max_concurrent_boots",
            Limit::Memory => "memory_budget",
            Limit::Host => "host_capacity",
        }
    }

    /// The `result` label of `summon_summons_total` for a summon this limit refused.
    pub fn result_label(self) -> &'static str {
        match self {
            Limit::Instances | Limit::Boots | Limit::Host => "limit",
            Limit::Memory => "memory",
        }
    }
}

/// A live instance's place; give it back with [`Admission::release`].
pub struct Admitted {
    pub boot: OwnedSemaphorePermit,
}

/// Guest memory as MiB now in use, and the budget (for the log line of a refusal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUse {
    pub live_mib: u64,
    pub budget_mib: u64,
}

/// The share of the host's memory guests may have when `limits.memory_budget` is not set:
/// three quarters of MemTotal. The rest is for the kernel, page cache and other services, and
/// the budget stays below the unit's `MemoryMax=80%` (guest memory is summond's own memory),
/// so a full budget is refused by summond with SERVFAIL before the cgroup's OOM killer would
/// end every instance at once.
pub const DEFAULT_MEMORY_SHARE_PERCENT: u64 = 75;
/// Used when /proc/meminfo cannot be read (logged).
const FALLBACK_MEMORY_BUDGET_MIB: u64 = 4096;

/// The default budget in MiB, from /proc/meminfo (read once).
pub fn default_memory_budget_mib() -> u64 {
    static BUDGET: OnceLock<u64> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        match std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| mem_total_kib(&m))
        {
            Some(kib) => kib / 1024 * DEFAULT_MEMORY_SHARE_PERCENT / 100,
            None => {
                tracing::warn!(
                    budget_mib = FALLBACK_MEMORY_BUDGET_MIB,
                    "cannot read MemTotal from /proc/meminfo; set limits.memory_budget"
                );
                FALLBACK_MEMORY_BUDGET_MIB
            }
        }
    })
}

fn mem_total_kib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl Admission {
    pub fn new(max_instances: u32, max_boots: u32, memory_budget_mib: u64) -> Admission {
        Admission {
            max_instances: AtomicU32::new(max_instances),
            live: AtomicU32::new(0),
            boots: Arc::new(Semaphore::new(max_boots as usize)),
            boots_max: AtomicU32::new(max_boots),
            memory_budget: AtomicU64::new(memory_budget_mib),
            memory_live: AtomicU64::new(0),
            host_capacity: AtomicU32::new(u32::MAX),
            host_limit: Mutex::new("none"),
        }
    }

    /// Admits an instance of `memory_mib`; on success the caller owns one live place and
    /// `memory_mib` of the budget until [`Admission::release`].
    pub fn try_admit(&self, memory_mib: u64) -> Result<Admitted, Limit> {
        let max = self.max_instances.load(Ordering::Relaxed);
        let host = self.host_capacity.load(Ordering::Relaxed);
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max.min(host)).then_some(n + 1)
            })
            .map_err(|n| {
                if n >= max {
                    Limit::Instances
                } else {
                    Limit::Host
                }
            })?;
        let budget = self.memory_budget.load(Ordering::Relaxed);
        if self
            .memory_live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |m| {
                m.checked_add(memory_mib).filter(|&t| t <= budget)
            })
            .is_err()
        {
            self.release_place();
            return Err(Limit::Memory);
        }
        match self.boots.clone().try_acquire_owned() {
            Ok(boot) => Ok(Admitted { boot }),
            Err(_) => {
                self.release(memory_mib);
                Err(Limit::Boots)
            }
        }
    }

    /// How many live instances the host's limits hold, and which limit that is.
    pub fn set_host_capacity(&self, instances: u64, limit: &'static str) {
        *self.host_limit.lock().unwrap_or_else(|p| p.into_inner()) = limit;
        self.host_capacity.store(
            u32::try_from(instances).unwrap_or(u32::MAX),
            Ordering::Relaxed,
        );
    }

    /// The live instances the host's limits hold, and the limit (for a refusal's log line).
    pub fn host_capacity(&self) -> (u32, &'static str) {
        let limit = *self.host_limit.lock().unwrap_or_else(|p| p.into_inner());
        (self.host_capacity.load(Ordering::Relaxed), limit)
    }

    /// One live instance of `memory_mib` fewer.
    pub fn release(&self, memory_mib: u64) {
        self.release_place();
        let _ = self
            .memory_live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |m| {
                Some(m.saturating_sub(memory_mib))
            });
    }

    fn release_place(&self) {
        let _ = self
            .live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Instances of `memory_mib` that would be admitted now, by count, host capacity and memory.
    pub fn room(&self, memory_mib: u64) -> u32 {
        let max = self
            .max_instances
            .load(Ordering::Relaxed)
            .min(self.host_capacity.load(Ordering::Relaxed));
        let by_count = max.saturating_sub(self.live());
        let m = self.memory();
        let by_memory = m.budget_mib.saturating_sub(m.live_mib) / memory_mib.max(1);
        by_count.min(u32::try_from(by_memory).unwrap_or(u32::MAX))
    }

    pub fn live(&self) -> u32 {
        self.live.load(Ordering::Relaxed)
    }

    pub fn memory(&self) -> MemoryUse {
        MemoryUse {
            live_mib: self.memory_live.load(Ordering::Relaxed),
            budget_mib: self.memory_budget.load(Ordering::Relaxed),
        }
    }

    /// New limits from a reloaded config; instances above a lowered limit keep running.
    pub fn set_limits(&self, max_instances: u32, max_boots: u32, memory_budget_mib: u64) {
        self.max_instances.store(max_instances, Ordering::Relaxed);
        self.memory_budget
            .store(memory_budget_mib, Ordering::Relaxed);
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
        let a = Admission::new(2, 1, 1024);
        let first = a.try_admit(16).unwrap();
        assert_eq!(a.try_admit(16).err(), Some(Limit::Boots));
        drop(first.boot);
        let _second = a.try_admit(16).unwrap();
        assert_eq!(a.try_admit(16).err(), Some(Limit::Instances));
        a.release(16);
        assert_eq!(a.live(), 1);
        assert_eq!(a.memory().live_mib, 16);
    }

    #[test]
    fn memory_budget_counts_live_instances_and_refusals_leave_nothing_behind() {
        let a = Admission::new(10, 10, 100);
        let _x = a.try_admit(60).unwrap();
        assert_eq!(a.try_admit(41).err(), Some(Limit::Memory));
        assert_eq!((a.live(), a.memory().live_mib), (1, 60));
        let _y = a.try_admit(40).unwrap();
        assert_eq!(a.try_admit(1).err(), Some(Limit::Memory));
        a.release(60);
        let _z = a.try_admit(60).unwrap();
        assert_eq!(
            a.memory(),
            MemoryUse {
                live_mib: 100,
                budget_mib: 100
            }
        );
        // A lowered budget refuses new boots and keeps the running ones.
        a.set_limits(10, 10, 50);
        assert_eq!(a.try_admit(2).err(), Some(Limit::Memory));
        assert_eq!(a.live(), 2);
    }

    #[test]
    fn default_budget_is_three_quarters_of_mem_total() {
        assert_eq!(
            mem_total_kib("MemTotal:       24576000 kB\nMemFree: 1 kB\n"),
            Some(24_576_000)
        );
        assert_eq!(mem_total_kib("MemFree: 1 kB\n"), None);
        let b = default_memory_budget_mib();
        assert!(b >= 1, "{b}");
    }
}
