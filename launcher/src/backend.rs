//! The backend interface, kept as small as Jitsu's: start an instance, then
//! stop / suspend / resume / state on its handle. Events flow back through an [`EventSink`].

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

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
    pub mac: Option<[u8; 6]>,
}

/// A block device to attach, matched to the image's manifest entry `name`.
#[derive(Debug, Clone)]
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
}

/// What an instance reports while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Pauses the instance, keeping its memory.
    fn suspend(&self) -> Result<(), BackendError>;
    /// Resumes a paused instance without re-booting it.
    fn resume(&self) -> Result<(), BackendError>;
    fn state(&self) -> InstanceState;
}

/// Errors of any backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Kvm(#[from] crate::kvm::KvmError),
    #[error(transparent)]
    Libvirt(#[from] crate::libvirt::LibvirtError),
    #[error("instance {0} is not in a state that allows {1}")]
    InvalidState(String, &'static str),
}
