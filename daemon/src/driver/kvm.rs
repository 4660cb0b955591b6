//! The embedded KVM launcher's driver.

use summon_launcher::kvm::KvmBackend;
use summon_launcher::{
    Backend, BackendError, EventSink, Instance, InstanceSpec, NetSpec, TapSource,
};

use super::{DriverError, Lease, Traffic, NET_DEVICE};
use crate::config::{KvmConfig, ServiceConfig};
use crate::net::{NetPlumber, PlumbError, Tap};

/// A persistent tap per instance whose one fd the VMM gets (its vCPU thread copies it into its
/// own fd table; summond keeps none), the launcher's start in place (it is short and
/// never waits for the guest, docs/launcher.md), and the launcher's frame counters.
pub struct KvmDriver {
    backend: KvmBackend,
    plumber: NetPlumber,
}

impl KvmDriver {
    pub fn new(cfg: KvmConfig, plumber: NetPlumber) -> Result<KvmDriver, DriverError> {
        Ok(KvmDriver {
            backend: KvmBackend::with_prewarm(cfg.prewarm)?,
            plumber,
        })
    }
}

#[async_trait::async_trait]
impl super::Driver for KvmDriver {
    async fn setup(&self, svc: &ServiceConfig) -> Result<(Lease, Vec<NetSpec>), PlumbError> {
        let net = self.plumber.setup(&svc.name, svc.ip, svc.mac).await?;
        // The lease keeps no fd: the tap is persistent (deleted by index at teardown), and the
        // fd it was made with goes to the launcher.
        let Tap { name, index, fd } = net.tap;
        let nets = vec![NetSpec {
            name: NET_DEVICE.to_string(),
            tap: TapSource::Fd(fd),
            mac: Some(svc.mac),
        }];
        Ok((Lease::Link { name, index }, nets))
    }

    fn starts_inline(&self) -> bool {
        true
    }

    fn start(
        &self,
        spec: InstanceSpec,
        events: EventSink,
    ) -> Result<Box<dyn Instance>, BackendError> {
        self.backend.start(spec, events)
    }

    fn traffic(&self, instance: &dyn Instance, lease: &Lease) -> Traffic {
        match (instance.counters(), lease.link()) {
            (Some(c), _) => Traffic::Counted(c),
            (None, Some(index)) => Traffic::Link(index),
            (None, None) => Traffic::Unknown,
        }
    }

    async fn teardown(&self, lease: Lease) {
        lease.remove(&self.plumber).await
    }
}
