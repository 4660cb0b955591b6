//! Libvirt domains' drivers: one per service (URI, domain, the address whose SYNs are held),
//! over one connection per URI.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use summon_launcher::libvirt::{destroy_leftovers, Conn, LibvirtBackend};
use summon_launcher::{
    Backend, BackendError, EventSink, Instance, InstanceSpec, NetSpec, TapSource,
};

use super::hold::HeldBackend;
use super::{Driver, DriverError, Lease, Traffic, NET_DEVICE};
use crate::config::{LibvirtService, ServiceConfig};
use crate::net::hold::SynHold;
use crate::net::{NetError, NetPlumber, PlumbError, PlumbStep};

/// The least time a domain gets to answer before its held SYNs are released anyway: a domain
/// boots in seconds, not in an hvt guest's milliseconds.
const MIN_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What the libvirt drivers share: the connections and the SYN hold.
pub(super) struct Libvirt {
    plumber: NetPlumber,
    hold_queue: u16,
    held_counter: Option<prometheus::IntCounter>,
    /// One connection per URI, shared by the services on it.
    conns: Mutex<HashMap<String, Arc<Conn>>>,
    hold: Mutex<Option<Arc<SynHold>>>,
}

impl Libvirt {
    pub(super) fn new(
        plumber: NetPlumber,
        hold_queue: u16,
        held_counter: Option<prometheus::IntCounter>,
    ) -> Libvirt {
        Libvirt {
            plumber,
            hold_queue,
            held_counter,
            conns: Mutex::new(HashMap::new()),
            hold: Mutex::new(None),
        }
    }

    /// The driver of a libvirt service: connects to its URI on first use (destroying the
    /// generated domains an earlier summond left there) and starts the SYN hold on first use.
    pub(super) fn driver(
        &self,
        svc: &ServiceConfig,
        l: &LibvirtService,
    ) -> Result<Arc<dyn Driver>, DriverError> {
        let uri = &l.launcher.uri;
        let conn = self.conn(uri).map_err(|source| DriverError::Libvirt {
            service: svc.name.clone(),
            uri: uri.clone(),
            source: Box::new(source),
        })?;
        let backend = HeldBackend::new(
            LibvirtBackend::with_conn(conn, l.launcher.clone()),
            self.hold(),
            svc.ip,
            l.probe_port,
            svc.ready_timeout.max(MIN_READY_TIMEOUT),
        );
        Ok(match l.existing_domain() {
            Some(_) => Arc::new(ExistingDomain { backend }),
            None => Arc::new(GeneratedDomain {
                backend,
                plumber: self.plumber.clone(),
            }),
        })
    }

    /// The SYN hold, started on first use (`None` when NFQUEUE is unavailable: instances then
    /// run without a hold).
    fn hold(&self) -> Option<Arc<SynHold>> {
        let mut hold = self.hold.lock().unwrap_or_else(|p| p.into_inner());
        if hold.is_none() {
            match SynHold::start_counted(self.hold_queue, self.held_counter.clone()) {
                Ok(h) => *hold = Some(Arc::new(h)),
                Err(e) => tracing::warn!(error = %e, "no SYN hold for libvirt services"),
            }
        }
        hold.clone()
    }

    /// Releases every hold and removes its rules (daemon exit).
    pub(super) fn shutdown(&self) {
        if let Some(h) = self.hold.lock().unwrap_or_else(|p| p.into_inner()).take() {
            h.shutdown();
        }
    }

    fn conn(&self, uri: &str) -> Result<Arc<Conn>, summon_launcher::libvirt::LibvirtError> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = conns.get(uri) {
            return Ok(c.clone());
        }
        let c = Conn::open(uri)?;
        match destroy_leftovers(&c) {
            Ok(gone) if !gone.is_empty() => {
                tracing::warn!(%uri, ?gone, "destroyed domains left by an earlier summond")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(%uri, error = %e, "looking for leftover domains"),
        }
        conns.insert(uri.to_string(), c.clone());
        Ok(c)
    }
}

/// A transient domain generated from the service. It gets the daemon's tap, route and
/// neighbour entry as a KVM instance does, but the tap is made persistent and the daemon's fd
/// closed, because libvirt opens it by name (a tap still held open by the daemon would make
/// that open fail with EBUSY).
pub struct GeneratedDomain {
    backend: HeldBackend,
    plumber: NetPlumber,
}

#[async_trait::async_trait]
impl Driver for GeneratedDomain {
    async fn setup(&self, svc: &ServiceConfig) -> Result<(Lease, Vec<NetSpec>), PlumbError> {
        let net = self.plumber.setup(&svc.name, svc.ip, svc.mac).await?;
        let persisted = summon_launcher::tap::set_persistent(net.tap.fd.as_fd());
        let lease = Lease::Link {
            name: net.tap.name.clone(),
            index: net.tap.index,
        };
        drop(net);
        if let Err(source) = persisted {
            let tap = lease.tap().unwrap_or_default().to_string();
            lease.remove(&self.plumber).await;
            return Err(PlumbError::new(
                PlumbStep::Persist,
                tap,
                NetError::Io {
                    what: "TUNSETPERSIST".into(),
                    source,
                },
            ));
        }
        let nets = vec![NetSpec {
            name: NET_DEVICE.to_string(),
            tap: TapSource::Name(lease.tap().unwrap_or_default().to_string()),
            mac: Some(svc.mac),
        }];
        Ok((lease, nets))
    }

    fn starts_inline(&self) -> bool {
        // Defining and starting a domain waits for libvirtd (and, for qemu, a process start).
        false
    }

    fn resumes_inline(&self) -> bool {
        // A libvirt RPC.
        false
    }

    fn start(
        &self,
        spec: InstanceSpec,
        events: EventSink,
    ) -> Result<Box<dyn Instance>, BackendError> {
        self.backend.start(spec, events)
    }

    fn traffic(&self, _: &dyn Instance, lease: &Lease) -> Traffic {
        // Libvirt keeps no counters the daemon can read without a call; the tap's are cheap.
        lease.link().map_or(Traffic::Unknown, Traffic::Link)
    }

    async fn teardown(&self, lease: Lease) {
        lease.remove(&self.plumber).await
    }
}

/// A domain the operator defined: started when shut off, resumed when paused. Its NIC is the
/// operator's, so the daemon sets up no network and reads no traffic counter.
pub struct ExistingDomain {
    backend: HeldBackend,
}

#[async_trait::async_trait]
impl Driver for ExistingDomain {
    async fn setup(&self, _: &ServiceConfig) -> Result<(Lease, Vec<NetSpec>), PlumbError> {
        Ok((Lease::None, Vec::new()))
    }

    fn starts_inline(&self) -> bool {
        false
    }

    fn resumes_inline(&self) -> bool {
        // A libvirt RPC.
        false
    }

    fn start(
        &self,
        spec: InstanceSpec,
        events: EventSink,
    ) -> Result<Box<dyn Instance>, BackendError> {
        self.backend.start(spec, events)
    }

    fn traffic(&self, _: &dyn Instance, _: &Lease) -> Traffic {
        Traffic::Unknown
    }

    async fn teardown(&self, _: Lease) {}
}
