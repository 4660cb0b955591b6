//! Drivers: what runs one service's instances, chosen once per service when the configuration
//! is loaded or reloaded ([`Drivers::for_service`]) and kept with the service's entry in the
//! registry. A driver owns an instance's network (what the host sets up before the start and
//! removes after the stop), the start itself (and whether it is short enough to run in place on
//! a tokio worker), and where the reaper reads the instance's traffic. The registry calls the
//! service's driver; it never looks at which backend a service has.
//!
//! - [`KvmDriver`]: the embedded launcher, in worker processes or in summond itself; a tap (fd
//!   handed to the VMM), route and neighbour entry; the start runs on a blocking thread with
//!   workers, inline without; the launcher counts the guest's frames.
//! - [`GeneratedDomain`]: a transient domain generated from the service; a persistent tap
//!   libvirt opens by name, first SYNs held until the guest answers ([`HeldBackend`]); the start
//!   runs on a blocking thread; traffic from the tap's counter.
//! - [`ExistingDomain`]: a domain the operator defined; its NIC is the operator's, so no host
//!   network and no traffic reading (DNS alone keeps it up); SYN hold as above.

mod hold;
mod kvm;
mod libvirt;

use std::collections::HashMap;
use std::sync::Arc;

use summon_launcher::{BackendError, Counters, EventSink, Instance, InstanceSpec, NetSpec};

use crate::config::{KvmConfig, ServiceBackend, ServiceConfig};
use crate::net::{NetError, NetPlumber, PlumbError};
pub use hold::{HeldBackend, HOLD_QUEUE};
pub use kvm::KvmDriver;
pub use libvirt::{ExistingDomain, GeneratedDomain};

/// The manifest name of the guest's network device (the name our unikernels declare).
pub const NET_DEVICE: &str = "service";

/// Why a service's driver could not be built (the daemon does not start, or a reload is
/// rejected and the running configuration kept).
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("starting the KVM backend: {0}")]
    Kvm(#[from] summon_launcher::kvm::KvmError),
    #[error("starting the KVM worker processes: {0}")]
    Worker(#[from] summon_launcher::worker::WorkerError),
    #[error("service {service}: connecting to libvirt at {uri}: {source}")]
    Libvirt {
        service: String,
        uri: String,
        #[source]
        /// Boxed: libvirt's error is large, and this travels in every driver build's `Result`.
        source: Box<summon_launcher::libvirt::LibvirtError>,
    },
}

/// The host side of an instance's network, as its driver made it.
#[derive(Debug)]
pub enum Lease {
    /// A link (with route and neighbour entry) the daemon made but holds no fd of: a
    /// persistent tap, whose one fd went to the launcher (KVM) or that libvirt opens by name.
    Link { name: String, index: u32 },
    /// Nothing on the host (an existing libvirt domain's NIC is the operator's).
    None,
}

impl Lease {
    /// The tap's name, for logs and `/v1/instances`.
    pub fn tap(&self) -> Option<&str> {
        match self {
            Lease::Link { name, .. } => Some(name),
            Lease::None => None,
        }
    }

    fn link(&self) -> Option<u32> {
        match self {
            Lease::Link { index, .. } => Some(*index),
            Lease::None => None,
        }
    }

    /// Removes the link (and with it its address, route and neighbour entry).
    async fn remove(self, plumber: &NetPlumber) {
        let (name, result): (String, Result<(), NetError>) = match self {
            Lease::Link { name, index } => (name, plumber.delete_link(index).await),
            Lease::None => return,
        };
        if let Err(e) = result {
            tracing::warn!(tap = %name, error = %e, "removing tap");
        }
    }
}

/// A lease with the driver that made it, which is the one to remove it (a reload may have
/// given the service another driver meanwhile).
pub struct Leased {
    pub driver: Arc<dyn Driver>,
    pub lease: Lease,
}

impl Leased {
    pub async fn release(self) {
        self.driver.teardown(self.lease).await
    }

    pub fn tap(&self) -> Option<&str> {
        self.lease.tap()
    }
}

/// Where the reaper reads the traffic towards an instance's guest.
pub enum Traffic {
    /// The launcher's live counters (an atomic read, no syscall).
    Counted(Counters),
    /// A link's tx counter, read through netlink ([`Drivers::towards_guest`], one dump for all
    /// the instances a reaper pass looks at).
    Link(u32),
    /// Nothing to read: the DNS queries alone keep the instance up.
    Unknown,
}

/// One service's driver.
#[async_trait::async_trait]
pub trait Driver: Send + Sync + 'static {
    /// Everything on the host before the start: the lease, and the network devices the
    /// instance's spec gets.
    async fn setup(&self, svc: &ServiceConfig) -> Result<(Lease, Vec<NetSpec>), PlumbError>;
    /// Whether [`Driver::start`] is short and never waits for the guest, so that it may run in
    /// place on a tokio worker (it saves two thread hand-offs on the cold path); otherwise it
    /// runs on a blocking thread.
    fn starts_inline(&self) -> bool;
    /// Whether resuming a suspended instance is only a message to its guest's thread, so that
    /// it may run under the slot's lock on a tokio worker; otherwise (an RPC) it runs on a
    /// blocking thread with the slot unlocked.
    fn resumes_inline(&self) -> bool;
    fn start(
        &self,
        spec: InstanceSpec,
        events: EventSink,
    ) -> Result<Box<dyn Instance>, BackendError>;
    /// Where the traffic towards this instance's guest is counted; asked once, at its start.
    fn traffic(&self, instance: &dyn Instance, lease: &Lease) -> Traffic;
    /// Removes what [`Driver::setup`] made.
    async fn teardown(&self, lease: Lease);
    /// The service is gone from the configuration: removes what was kept for its next start.
    async fn forget(&self, _service: &str) {}
}

/// Builds each service's driver, and does what spans all instances of all drivers.
#[async_trait::async_trait]
pub trait Drivers: Send + Sync + 'static {
    /// The driver of a service; called when the configuration is loaded, and on a reload for
    /// new and changed services only.
    fn for_service(&self, svc: &ServiceConfig) -> Result<Arc<dyn Driver>, DriverError>;
    /// Packets the host has sent into each of these links (see [`Traffic::Link`]), by link
    /// index; links it cannot read are missing. At most one netlink dump.
    async fn towards_guest(&self, links: &[u32]) -> HashMap<u32, u64>;
    /// Removes every instance network the daemon made, these and any other (daemon exit).
    async fn teardown_all(&self, leases: Vec<Leased>) {
        futures::future::join_all(leases.into_iter().map(Leased::release)).await;
    }
    /// Daemon exit, before the instances are stopped one by one: ends in bulk what can be (the
    /// KVM guests, a message per worker process instead of one per guest). Their handles then
    /// report them stopped.
    fn stop_all(&self) {}
}

/// The daemon's drivers: one KVM driver shared by all KVM services, one libvirt driver per
/// libvirt service (its connection shared by the services on the same URI).
pub struct HostDrivers {
    kvm: Arc<KvmDriver>,
    plumber: NetPlumber,
    libvirt: libvirt::Libvirt,
}

impl HostDrivers {
    pub fn new(
        kvm: KvmConfig,
        plumber: NetPlumber,
        held_packets: Option<prometheus::IntCounter>,
    ) -> Result<HostDrivers, DriverError> {
        Ok(HostDrivers {
            kvm: Arc::new(KvmDriver::new(kvm, plumber.clone())?),
            libvirt: libvirt::Libvirt::new(plumber.clone(), HOLD_QUEUE, held_packets),
            plumber,
        })
    }

    /// Releases every SYN hold and removes its rules, and ends the KVM worker processes
    /// (daemon exit, once every instance was stopped), waiting for them.
    pub fn shutdown(&self) {
        self.libvirt.shutdown();
        let t = std::time::Instant::now();
        self.kvm.shutdown();
        tracing::info!(
            ms = t.elapsed().as_millis() as u64,
            "guest worker processes ended"
        );
    }
}

#[async_trait::async_trait]
impl Drivers for HostDrivers {
    fn for_service(&self, svc: &ServiceConfig) -> Result<Arc<dyn Driver>, DriverError> {
        match &svc.backend {
            ServiceBackend::Kvm => Ok(self.kvm.clone()),
            ServiceBackend::Libvirt(l) => self.libvirt.driver(svc, l),
        }
    }

    async fn towards_guest(&self, links: &[u32]) -> HashMap<u32, u64> {
        self.plumber.towards_guest(links).await
    }

    fn stop_all(&self) {
        self.kvm.stop_all();
    }

    async fn teardown_all(&self, leases: Vec<Leased>) {
        // Links first, in one batch, then the fds: closing the last fd of a tap unregisters it
        // on its own, one device (and one RCU grace period) at a time.
        match self.plumber.delete_all_taps().await {
            Ok(true) => drop(leases),
            batch => {
                if let Err(e) = batch {
                    tracing::warn!(error = %e, "removing the taps as a group; one by one instead");
                }
                self.plumber.remove_spares().await;
                futures::future::join_all(leases.into_iter().map(Leased::release)).await;
            }
        }
    }
}
