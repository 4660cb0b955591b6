//! One service's instance: its phase and what it holds while alive.

use std::sync::Arc;
use std::time::Instant;

use summon_launcher::Instance;

use crate::driver::{Leased, Traffic};

/// The lifecycle of an instance (docs/architecture.md, "Instance lifecycle").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Stopped,
    Starting,
    Running,
    /// A suspend is under way (its acknowledgement awaited off the tokio workers).
    Suspending,
    Suspended,
    /// A resume that may block (a libvirt RPC) is under way, off the tokio workers and with
    /// the slot unlocked; queries for it wait for the outcome.
    Resuming,
    Stopping,
    /// The last boot failed; no new boot before the backoff expires.
    Failed,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::Stopped,
        Phase::Starting,
        Phase::Running,
        Phase::Suspending,
        Phase::Suspended,
        Phase::Resuming,
        Phase::Stopping,
        Phase::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Stopped => "stopped",
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Suspending => "suspending",
            Phase::Suspended => "suspended",
            Phase::Resuming => "resuming",
            Phase::Stopping => "stopping",
            Phase::Failed => "failed",
        }
    }

    /// Whether the instance holds memory and a tap (and so counts against max_instances).
    pub fn is_live(self) -> bool {
        matches!(
            self,
            Phase::Starting
                | Phase::Running
                | Phase::Suspending
                | Phase::Suspended
                | Phase::Resuming
                | Phase::Stopping
        )
    }
}

/// Mutable state of one slot, behind its mutex. Only short, non-blocking work under the lock.
pub struct Inner {
    pub phase: Phase,
    /// Generation of the current (or last) instance; events of older ones are ignored.
    pub gen: u64,
    pub instance: Option<Arc<dyn Instance>>,
    pub net: Option<Leased>,
    pub net_ready: bool,
    /// The instance has been resumed from a suspension since its start (queries that waited
    /// for it are answered as resumed, not cold).
    pub resumed: bool,
    /// An exit or fault that arrived while the start call had not returned yet.
    pub early_exit: Option<String>,
    pub failures: u32,
    pub backoff_until: Option<Instant>,
    pub last_error: Option<String>,
    pub since: Instant,
    pub started_at: Option<Instant>,
    /// When the launcher's start returned (the `boot` stage runs from here to NetReady).
    pub launched_at: Option<Instant>,
    /// When traffic towards the guest was last seen (see `reap.rs`).
    pub last_traffic: Instant,
    /// The traffic counter at the last look; `None` before the first.
    pub last_rx: Option<u64>,
    /// Where the reaper reads the traffic towards the guest (the driver said, at the start).
    pub traffic: Traffic,
    /// The reaper entry that is current for this instance; 0 when none.
    pub reap_seq: u64,
    pub boots: u64,
    pub removed: bool,
    /// Guest memory this live instance holds of the admission's budget (given back when it
    /// leaves the live phases; the service's config may have changed meanwhile).
    pub admitted_mib: u64,
}

impl Inner {
    pub fn new() -> Inner {
        let now = Instant::now();
        Inner {
            phase: Phase::Stopped,
            gen: 0,
            instance: None,
            net: None,
            net_ready: false,
            resumed: false,
            early_exit: None,
            failures: 0,
            backoff_until: None,
            last_error: None,
            since: now,
            started_at: None,
            launched_at: None,
            last_traffic: now,
            last_rx: None,
            traffic: Traffic::Unknown,
            reap_seq: 0,
            boots: 0,
            removed: false,
            admitted_mib: 0,
        }
    }
}
