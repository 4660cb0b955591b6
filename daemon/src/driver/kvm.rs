//! The embedded KVM launcher's driver.

use std::ffi::OsString;
use std::time::Duration;

use summon_launcher::kvm::{cgroup, KvmBackend};
use summon_launcher::worker::{WorkerConfig, WorkerPool};
use summon_launcher::{
    Backend, BackendError, EventSink, Instance, InstanceSpec, NetSpec, TapSource,
};

use super::{DriverError, Lease, Traffic, NET_DEVICE};
use crate::config::{KvmConfig, ServiceConfig};
use crate::net::{NetPlumber, PlumbError, Tap};

/// A persistent tap per instance whose one fd the VMM gets (its vCPU thread copies it into its
/// own fd table; summond keeps none), the start (on a blocking thread when it goes to a worker
/// process, in place when the guest runs in summond: then it is short and never waits for the
/// guest, docs/launcher.md), and the launcher's frame counters.
pub struct KvmDriver {
    launcher: Launcher,
    plumber: NetPlumber,
}

/// Where the guests run, chosen by `kvm.instances_per_process`.
enum Launcher {
    /// In worker processes of at most that many guests each (the default).
    Workers(WorkerPool),
    /// In summond's own process (`instances_per_process = 0`).
    InProcess(KvmBackend),
}

impl KvmDriver {
    pub fn new(cfg: KvmConfig, plumber: NetPlumber) -> Result<KvmDriver, DriverError> {
        let launcher = match cfg.instances_per_process {
            0 => Launcher::InProcess(KvmBackend::with_prewarm(cfg.prewarm)?),
            per_process => {
                // The running binary even if the file was replaced since (an upgrade): its
                // workers must speak its protocol.
                let mut command: Vec<OsString> = [
                    "/proc/self/exe",
                    "kvm-worker",
                    "--prewarm",
                    &cfg.prewarm.to_string(),
                    "--slots",
                    &(2 * per_process).to_string(),
                ]
                .into_iter()
                .map(Into::into)
                .collect();
                // A worker has no capability left to create a group at the top of a cgroup
                // hierarchy: its quota groups go inside summond's.
                if let Ok(h) = cgroup::support() {
                    command.push("--cgroup-parent".into());
                    command.push(h.base().into());
                }
                Launcher::Workers(WorkerPool::new(WorkerConfig {
                    command,
                    per_process,
                    uids: cfg.worker_uids,
                })?)
            }
        };
        Ok(KvmDriver { launcher, plumber })
    }

    /// Asks every worker process to end its guests and exit (daemon exit), without waiting.
    pub fn stop_all(&self) {
        if let Launcher::Workers(pool) = &self.launcher {
            pool.stop_all();
        }
    }

    /// Ends the worker processes (daemon exit, after every instance was stopped).
    pub fn shutdown(&self) {
        if let Launcher::Workers(pool) = &self.launcher {
            pool.shutdown(Duration::from_secs(5));
        }
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
        // In summond itself the start is short and never waits. A worker's start is a round
        // trip to another process that may have to be started first: a blocking thread's.
        matches!(self.launcher, Launcher::InProcess(_))
    }

    fn resumes_inline(&self) -> bool {
        // A kick of the guest's vCPU thread, or a message to its worker with no answer awaited.
        true
    }

    fn start(
        &self,
        spec: InstanceSpec,
        events: EventSink,
    ) -> Result<Box<dyn Instance>, BackendError> {
        match &self.launcher {
            Launcher::Workers(pool) => pool.start(spec, events),
            Launcher::InProcess(backend) => backend.start(spec, events),
        }
    }

    fn traffic(&self, instance: &dyn Instance, lease: &Lease) -> Traffic {
        match (instance.counters(), lease.link()) {
            (Some(c), _) => Traffic::Counted(c),
            (None, Some(index)) => Traffic::Link(index),
            (None, None) => Traffic::Unknown,
        }
    }

    async fn teardown(&self, lease: Lease) {
        // The tap may serve the service's next start (kept down and detached, `net/spare.rs`).
        match lease {
            Lease::Link { name, index } => self.plumber.release(&name, index).await,
            Lease::None => {}
        }
    }

    async fn forget(&self, service: &str) {
        self.plumber.forget(service).await;
    }
}
