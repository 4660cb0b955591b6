//! Idle detection by deadlines: each running instance has one entry in a min-heap keyed by the
//! time it could first be idle (the later of last query + 2 × TTL and last traffic +
//! `idle_timeout`). A pass looks only at the entries that are due, so an idle daemon does
//! nothing, whatever the number of live instances; the timer that runs passes is
//! `crate::reaper`.
//!
//! Traffic means frames towards the guest: the embedded launcher counts them
//! (`InstanceCounters::rx_frames`, an atomic read); for instances without counters (libvirt
//! domains on a daemon tap) the tap's tx counter through netlink, read only for the due ones.
//! Which of the two an instance has is its driver's answer (`crate::driver::Traffic`).
//! What a guest sends on its own never keeps it alive.
//!
//! A counter only says that traffic happened since the last look, not when; the look that sees
//! it move stands in for the last traffic (never early), and while traffic flows the instance
//! is looked at again every `idle_timeout / 8`. So an instance whose traffic stops is reaped
//! between `idle_timeout` and `idle_timeout` + an eighth of it (+ 40 ms of grid) after the last
//! frame. Traffic that starts again after a look that saw none is only seen at the deadline,
//! which can keep an instance up to one more `idle_timeout`: late, never early, and with no
//! look at an instance between its deadlines.

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::instance::Inner;
use super::{Phase, Registry, Slot};
use crate::config::StopMode;
use crate::driver::Traffic;

/// Deadlines are rounded up to this grid so that instances due at nearly the same time share
/// one pass (and one netlink dump when their counters need one): at most 50 passes a second.
const GRID: Duration = Duration::from_millis(20);

struct Due {
    at: Instant,
    /// Which arming this is; an entry whose slot was re-armed (or stopped) since is stale.
    seq: u64,
    slot: Arc<Slot>,
}

impl PartialEq for Due {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, o: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(o))
    }
}
impl Ord for Due {
    fn cmp(&self, o: &Self) -> CmpOrdering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// The deadlines of running instances. Stale entries (stopped, suspended or re-armed
/// instances) are dropped when they come due, so every operation is O(log n).
pub(super) struct ReapQueue {
    heap: Mutex<BinaryHeap<Reverse<Due>>>,
    /// Wakes the reaper when a deadline earlier than the one it sleeps for is added.
    wake: tokio::sync::Notify,
    seq: std::sync::atomic::AtomicU64,
    epoch: Instant,
}

impl ReapQueue {
    pub(super) fn new(epoch: Instant) -> ReapQueue {
        ReapQueue {
            heap: Mutex::new(BinaryHeap::new()),
            wake: tokio::sync::Notify::new(),
            seq: std::sync::atomic::AtomicU64::new(0),
            epoch,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BinaryHeap<Reverse<Due>>> {
        self.heap.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn round_up(&self, at: Instant) -> Instant {
        let since = at.saturating_duration_since(self.epoch).as_nanos();
        let grid = GRID.as_nanos();
        let up = since.div_ceil(grid) * grid;
        self.epoch + Duration::from_nanos(up as u64)
    }

    /// Gives the slot (whose lock the caller holds as `g`) one deadline; earlier ones lapse.
    pub(super) fn arm(&self, slot: &Arc<Slot>, g: &mut Inner, at: Instant) {
        let at = self.round_up(at);
        g.reap_seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let mut heap = self.lock();
        let earliest = heap.peek().is_none_or(|Reverse(d)| at < d.at);
        heap.push(Reverse(Due {
            at,
            seq: g.reap_seq,
            slot: slot.clone(),
        }));
        drop(heap);
        if earliest {
            self.wake.notify_one();
        }
    }

    /// The earliest deadline, if any.
    pub(super) fn next(&self) -> Option<Instant> {
        self.lock().peek().map(|Reverse(d)| d.at)
    }

    /// Resolves when a deadline earlier than the current earliest is armed.
    pub(super) async fn changed(&self) {
        self.wake.notified().await
    }

    fn pop_due(&self, now: Instant) -> Vec<Due> {
        let mut heap = self.lock();
        let mut due = Vec::new();
        while heap.peek().is_some_and(|Reverse(d)| d.at <= now) {
            if let Some(Reverse(d)) = heap.pop() {
                due.push(d);
            }
        }
        due
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The first look after a start or resume, and the spacing of looks while traffic flows: the
/// most an instance can be reaped late (plus two grid steps).
pub(super) fn recheck(idle_timeout: Duration) -> Duration {
    (idle_timeout / 8).max(GRID)
}

/// What one due instance's traffic counter reads.
enum Reading {
    /// The launcher's counter, already read.
    Counted(u64),
    /// The tap's tx counter, to be read through netlink.
    Link(u32),
    /// Nothing to read (e.g. an existing libvirt domain's NIC): DNS decides alone.
    None,
}

impl Registry {
    /// Arms the first idle check of an instance that just became Running (started or resumed).
    pub(super) fn arm_reaper(&self, slot: &Arc<Slot>, g: &mut Inner) {
        let now = Instant::now();
        g.last_traffic = now;
        let at = now + recheck(slot.config().idle_timeout);
        self.shared.reap.arm(slot, g, at);
    }

    /// One reaper pass: looks at the instances whose deadline has come, stops or suspends the
    /// idle ones, and gives the others their next deadline. Returns the earliest deadline left.
    pub async fn reap_idle(&self) -> Option<Instant> {
        let now = Instant::now();
        let due = self.shared.reap.pop_due(now);
        if due.is_empty() {
            return self.shared.reap.next();
        }
        let mut looks = Vec::with_capacity(due.len());
        let mut links = Vec::new();
        for d in due {
            let g = d.slot.lock();
            if g.reap_seq != d.seq || g.phase != Phase::Running {
                continue;
            }
            let reading = match &g.traffic {
                Traffic::Counted(c) => Reading::Counted(c.rx_frames.load(Ordering::Relaxed)),
                Traffic::Link(index) => {
                    links.push(*index);
                    Reading::Link(*index)
                }
                Traffic::Unknown => Reading::None,
            };
            drop(g);
            looks.push((d, reading));
        }
        let link_counts = if links.is_empty() {
            HashMap::new()
        } else {
            self.shared.drivers.towards_guest(&links).await
        };
        let ttl = Duration::from_secs(u64::from(self.shared.ttl.load(Ordering::Relaxed)));
        let now = Instant::now();
        let mut idle = Vec::new();
        for (d, reading) in looks {
            let count = match reading {
                Reading::Counted(n) => Some(n),
                Reading::Link(index) => link_counts.get(&index).copied(),
                Reading::None => None,
            };
            let cfg = d.slot.config();
            let mut g = d.slot.lock();
            if g.reap_seq != d.seq || g.phase != Phase::Running {
                continue;
            }
            // A first reading (or a counter that went backwards: a new tap) counts as traffic,
            // since what came before it is unknown.
            let moved = match count {
                Some(n) => {
                    let moved = g.last_rx.is_none_or(|prev| n != prev);
                    g.last_rx = Some(n);
                    moved
                }
                None => false,
            };
            if moved {
                g.last_traffic = now;
            }
            let last_query = self.shared.epoch
                + Duration::from_millis(d.slot.last_query_ms.load(Ordering::Relaxed));
            let deadline = (last_query + 2 * ttl).max(g.last_traffic + cfg.idle_timeout);
            if deadline <= now {
                g.reap_seq = 0;
                drop(g);
                idle.push((d.slot, cfg.stop));
                continue;
            }
            let at = if moved {
                deadline.min(now + recheck(cfg.idle_timeout))
            } else {
                deadline
            };
            self.shared.reap.arm(&d.slot, &mut g, at);
        }
        let stops = idle.iter().map(|(slot, mode)| async move {
            let mode_label = match mode {
                StopMode::Destroy => "destroy",
                StopMode::Suspend => "suspend",
            };
            if self.stop(slot, *mode, "idle").await {
                self.shared
                    .metrics
                    .reaped
                    .with_label_values(&[slot.name.as_str(), mode_label])
                    .inc();
            }
        });
        futures::future::join_all(stops).await;
        self.shared.reap.next()
    }

    /// Resolves when an earlier deadline than the one the reaper sleeps for was armed.
    pub async fn reap_changed(&self) {
        self.shared.reap.changed().await
    }

    /// Looks at every running instance again at its next grid point: after a reload that
    /// shortened the TTL, deadlines computed with the old one would be late.
    pub(super) fn rearm_all_running(&self) {
        for slot in self.slots() {
            let mut g = slot.lock();
            if g.phase == Phase::Running {
                self.shared.reap.arm(&slot, &mut g, Instant::now());
            }
        }
    }
}
