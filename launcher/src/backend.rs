//! The backend interface, kept as small as Jitsu's: start an instance, then
//! stop / suspend / resume / state on its handle. Events flow back through an [`EventSink`].

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

pub use crate::counters::{Counters, InstanceCounters};

/// Where an instance's tap comes from.
#[derive(Debug)]
pub enum TapSource {
    /// Open the existing interface of this name through `/dev/net/tun`.
    Name(String),
    /// An already-open tap fd (IFF_TAP | IFF_NO_PI), handed over by the caller, e.g. the daemon
    /// that created the tap before answering DNS so that early packets queue in it.
    Fd(OwnedFd),
}

/// A net device to attach, matched to the image's manifest entry `name`.
#[derive(Debug)]
pub struct NetSpec {
    pub name: String,
    pub tap: TapSource,
    /// Random (locally administered) when `None`.
    pub mac: Option<crate::MacAddr>,
}

/// A block device to attach, matched to the image's manifest entry `name`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BlockSpec {
    pub name: String,
    pub path: PathBuf,
    /// 512 when `None`; a power of two >= 512 dividing the file size.
    pub sector_size: Option<u32>,
}

/// Everything needed to start one instance.
#[derive(Debug)]
pub struct InstanceSpec {
    /// Instance name, used in console events and error messages.
    pub name: String,
    /// The unikernel image (hvt ELF).
    pub image: PathBuf,
    /// Guest memory in MiB (rounded down to 2 MiB, between 2 MiB and 4 GiB).
    pub memory_mib: u64,
    pub nets: Vec<NetSpec>,
    pub blocks: Vec<BlockSpec>,
    /// Guest command line, joined with spaces.
    pub args: Vec<String>,
    /// What the guest may consume; `GuestLimits::default()` limits nothing.
    pub limits: GuestLimits,
}

/// Per-guest limits a backend enforces (the embedded launcher enforces all of them; others
/// ignore what they cannot). `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuestLimits {
    /// Console output in bytes per second (token bucket, one second of burst); the excess is
    /// dropped and counted in [`InstanceCounters::console_dropped_bytes`].
    pub console_bytes_per_sec: Option<u64>,
    /// Frames the guest may send per second; the excess is dropped and counted.
    pub tx_frames_per_sec: Option<u64>,
    /// Bytes the guest may send per second; the excess is dropped and counted.
    pub tx_bytes_per_sec: Option<u64>,
    /// VM exits (hypercalls) per second the guest may cause before its vCPU thread is made to
    /// wait; the waits are counted in [`InstanceCounters::exits_throttled`].
    pub exits_per_sec: Option<u64>,
    /// CPU bandwidth of the guest's vCPU thread in percent of one core (kernel CFS quota).
    pub cpu_quota_percent: Option<u32>,
}

/// CFS bandwidth statistics of an instance's CPU quota (its cgroup's `cpu.stat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CpuStat {
    /// Enforcement periods (100 ms each) in which the guest was runnable.
    pub periods: u64,
    /// Periods in which it used up its quota and was stopped until the next one.
    pub throttled_periods: u64,
    /// Total time it spent stopped that way.
    pub throttled_ns: u64,
}

/// What an instance reports while it runs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum InstanceEvent {
    /// One line of console output (without the newline).
    Console(String),
    /// The guest's network is up: its first POLL or NET_READ that includes a net device.
    NetReady,
    /// The guest halted with this status (0 success, 1 failure, 255 abort/panic).
    Exited(i32),
    /// The guest was ended by a fault; the reason names the exit, RIP and address.
    Faulted(String),
    /// The instance was stopped on request.
    Stopped,
}

impl InstanceEvent {
    /// Whether this is the instance's last event: it halted, faulted or was stopped.
    pub fn is_end(&self) -> bool {
        matches!(
            self,
            InstanceEvent::Exited(_) | InstanceEvent::Faulted(_) | InstanceEvent::Stopped
        )
    }
}

/// Receives an instance's events, from the instance's own thread. Keep it cheap and non-blocking.
pub type EventSink = Arc<dyn Fn(InstanceEvent) + Send + Sync>;

/// Lifecycle state of one instance as its backend sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    Running,
    Paused,
    /// Halted, faulted or stopped; the handle only reports from now on.
    Stopped,
}

/// A backend: something that can start instances.
pub trait Backend: Send + Sync {
    /// Starts an instance and returns once it is running (or failed to start).
    fn start(
        &self,
        spec: InstanceSpec,
        events: EventSink,
    ) -> Result<Box<dyn Instance>, BackendError>;
}

/// A started instance. Every method is safe to call from any thread, in any state.
pub trait Instance: Send + Sync {
    /// Ends the instance, even a guest spinning in an endless loop; idempotent.
    fn stop(&self) -> Result<(), BackendError>;
    /// Asks the instance to end without waiting for it; a later [`Instance::stop`] waits. Lets
    /// a caller stopping thousands of instances have them all wind down at once. Backends that
    /// cannot ask without waiting do nothing here.
    fn request_stop(&self) {}
    /// Pauses the instance, keeping its memory.
    fn suspend(&self) -> Result<(), BackendError>;
    /// Resumes a paused instance without re-booting it.
    fn resume(&self) -> Result<(), BackendError>;
    fn state(&self) -> InstanceState;
    /// The instance's live counters, when its backend keeps them (the embedded launcher does;
    /// for libvirt domains the daemon reads the host side of the NIC instead).
    fn counters(&self) -> Option<Counters> {
        None
    }
    /// Throttling by the instance's CPU quota so far (one read of its cgroup's `cpu.stat`;
    /// meant for scrape time, not for a timer). `None` without a quota group.
    fn cpu_stat(&self) -> Option<CpuStat> {
        None
    }
}

/// Errors of any backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Kvm(#[from] crate::kvm::KvmError),
    #[cfg(feature = "libvirt")]
    #[error(transparent)]
    Libvirt(#[from] crate::libvirt::LibvirtError),
    #[error("instance {0} is not in a state that allows {1}")]
    InvalidState(String, &'static str),
    /// What a worker process reported (its own error, as text), or why it could not be asked.
    #[error(transparent)]
    Worker(#[from] crate::worker::WorkerError),
}
