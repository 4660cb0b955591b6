//! Libvirt services: the `[service.libvirt]` table, and a [`Backend`] that wraps the launcher's
//! libvirt backend with the SYN hold, so the registry sees what it sees for the embedded
//! launcher: instances that report `NetReady` once the guest answers, and no first SYN lost.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Deserialize;
use summon_launcher::libvirt::{
    destroy_leftovers, Conn, DomainSource, Generated, GuestKind, LibvirtBackend, LibvirtConfig,
    StopMode,
};
use summon_launcher::{
    Backend, BackendError, EventSink, Instance, InstanceEvent, InstanceSpec, InstanceState,
};

use crate::net::hold::{wait_until_answers_while, SynHold};
use crate::net::{NetError, NetPlumber, PlumbError, PlumbStep};
use crate::registry::Plumbing;

/// `libvirt = { uri = "qemu:///system", domain = "legacy-vm" }` and friends.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LibvirtService {
    /// `qemu:///system`, `xen:///system`, `qemu+ssh://host/system`, ...
    pub uri: String,
    /// An existing domain (name or UUID). Without it a transient domain is generated from the
    /// service's image, memory and args.
    #[serde(default)]
    pub domain: Option<String>,
    /// For generated domains: "kvm" (default), "xen-pvh" or "xen-pv".
    #[serde(default)]
    pub guest: Option<String>,
    #[serde(default)]
    pub vcpus: Option<u32>,
    /// qemu: firmware ROM for the `pc` machine (qboot by default).
    #[serde(default)]
    pub firmware: Option<PathBuf>,
    /// qemu: where serial console logs go (default /var/log/libvirt/qemu).
    #[serde(default)]
    pub console_dir: Option<PathBuf>,
    /// "destroy" (default) or "shutdown" (graceful, destroyed after `shutdown_timeout`).
    #[serde(default)]
    pub stop: Option<String>,
    #[serde(default)]
    pub shutdown_timeout: Option<String>,
    /// TCP port probed to learn that the guest answers; the held SYNs are released then.
    #[serde(default)]
    pub probe_port: Option<u16>,
}

impl LibvirtService {
    pub fn from_table(t: &toml::Table) -> Result<LibvirtService, String> {
        let s: LibvirtService = t
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| e.message().to_string())?;
        s.launcher_config()?;
        Ok(s)
    }

    /// The launcher's view; errors say which key is wrong.
    pub fn launcher_config(&self) -> Result<LibvirtConfig, String> {
        if self.uri.is_empty() {
            return Err("libvirt.uri: empty".into());
        }
        let kind = match self.guest.as_deref() {
            None | Some("kvm") => GuestKind::Kvm,
            Some("xen-pvh") => GuestKind::XenPvh,
            Some("xen-pv") => GuestKind::XenPv,
            Some(other) => {
                return Err(format!(
                    "libvirt.guest: {other:?}: expected \"kvm\", \"xen-pvh\" or \"xen-pv\""
                ))
            }
        };
        let timeout = match &self.shutdown_timeout {
            None => Duration::from_secs(10),
            Some(t) => humantime::parse_duration(t)
                .map_err(|e| format!("libvirt.shutdown_timeout: {t:?}: {e}"))?,
        };
        let stop = match self.stop.as_deref() {
            None | Some("destroy") => StopMode::Destroy,
            Some("shutdown") => StopMode::Shutdown { timeout },
            Some(other) => {
                return Err(format!(
                    "libvirt.stop: {other:?}: expected \"destroy\" or \"shutdown\""
                ))
            }
        };
        let domain = match &self.domain {
            Some(d) if d.is_empty() => return Err("libvirt.domain: empty".into()),
            Some(d) => DomainSource::Existing(d.clone()),
            None => {
                let mut g = Generated::new(kind);
                if let Some(v) = self.vcpus {
                    if v == 0 {
                        return Err("libvirt.vcpus: must be at least 1".into());
                    }
                    g.vcpus = v;
                }
                if let Some(f) = &self.firmware {
                    g.firmware = Some(f.clone());
                }
                if let Some(d) = &self.console_dir {
                    g.console_dir = d.clone();
                }
                DomainSource::Generated(g)
            }
        };
        Ok(LibvirtConfig {
            uri: self.uri.clone(),
            domain,
            stop,
        })
    }
}

/// NFQUEUE queue number of summond's SYN hold.
pub const HOLD_QUEUE: u16 = 7346;

/// A libvirt backend whose instances' first SYNs are held until the guest answers.
pub struct HeldBackend {
    inner: LibvirtBackend,
    hold: Option<Arc<SynHold>>,
    ip: Ipv4Addr,
    port: u16,
    ready_timeout: Duration,
}

impl HeldBackend {
    /// `hold` is `None` when NFQUEUE is unavailable: instances then run without a hold.
    pub fn new(
        inner: LibvirtBackend,
        hold: Option<Arc<SynHold>>,
        ip: Ipv4Addr,
        port: u16,
        ready_timeout: Duration,
    ) -> HeldBackend {
        HeldBackend {
            inner,
            hold,
            ip,
            port,
            ready_timeout,
        }
    }

    pub fn libvirt(&self) -> &LibvirtBackend {
        &self.inner
    }
}

struct Release {
    hold: Option<Arc<SynHold>>,
    ip: Ipv4Addr,
    pending: AtomicBool,
    /// The instance was stopped: its readiness probe gives up.
    stopped: AtomicBool,
}

impl Release {
    /// Idempotent: whoever comes first (guest answered, timeout, stop) releases.
    fn now(&self) {
        if self.pending.swap(false, Ordering::SeqCst) {
            if let Some(h) = &self.hold {
                if let Err(e) = h.release(self.ip) {
                    tracing::warn!(ip = %self.ip, error = %e, "releasing SYN hold");
                }
            }
        }
    }
}

impl Backend for HeldBackend {
    fn start(
        &self,
        spec: InstanceSpec,
        events: EventSink,
    ) -> Result<Box<dyn Instance>, BackendError> {
        let held = match &self.hold {
            Some(h) => match h.hold(self.ip) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(ip = %self.ip, error = %e, "no SYN hold: first SYNs may be retransmitted");
                    false
                }
            },
            None => false,
        };
        let release = Arc::new(Release {
            hold: self.hold.clone(),
            ip: self.ip,
            pending: AtomicBool::new(held),
            stopped: AtomicBool::new(false),
        });
        let inner = match self.inner.start(spec, events.clone()) {
            Ok(i) => i,
            Err(e) => {
                release.now();
                return Err(e);
            }
        };
        let (ip, port, timeout) = (self.ip, self.port, self.ready_timeout);
        let r = release.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("ready-{ip}"))
            .spawn(move || {
                let alive = || !r.stopped.load(Ordering::SeqCst);
                if wait_until_answers_while(ip, port, timeout, Duration::from_millis(2), alive) {
                    // Ready first: releasing also deletes the iptables rules, which takes ms.
                    events(InstanceEvent::NetReady);
                    r.now();
                } else if alive() {
                    tracing::warn!(%ip, port, "guest did not answer in time; releasing held SYNs");
                    r.now();
                }
            });
        if spawned.is_err() {
            release.now();
        }
        Ok(Box::new(HeldInstance { inner, release }))
    }
}

struct HeldInstance {
    inner: Box<dyn Instance>,
    release: Arc<Release>,
}

impl Instance for HeldInstance {
    fn stop(&self) -> Result<(), BackendError> {
        self.release.stopped.store(true, Ordering::SeqCst);
        let r = self.inner.stop();
        self.release.now();
        r
    }
    fn suspend(&self) -> Result<(), BackendError> {
        self.inner.suspend()
    }
    fn resume(&self) -> Result<(), BackendError> {
        self.inner.resume()
    }
    fn state(&self) -> InstanceState {
        self.inner.state()
    }
}

/// The probe port of a service: `libvirt.probe_port`, else its `--port=N` argument, else 80.
pub fn probe_port(svc: &crate::config::ServiceConfig) -> u16 {
    svc.libvirt
        .as_ref()
        .and_then(|l| l.probe_port)
        .or_else(|| {
            svc.args
                .iter()
                .find_map(|a| a.strip_prefix("--port=").and_then(|p| p.parse().ok()))
        })
        .unwrap_or(80)
}

/// Dispatches each start to the service's own backend: libvirt services have one each (URI,
/// domain, IP to hold); everything else goes to the embedded launcher.
pub struct ServiceBackends {
    default: Arc<dyn Backend>,
    hold_queue: u16,
    libvirt: RwLock<HashMap<String, (LibvirtService, Arc<HeldBackend>)>>,
    /// One connection per URI, shared by the services on it.
    conns: Mutex<HashMap<String, Arc<Conn>>>,
    hold: Mutex<Option<Arc<SynHold>>>,
    held_counter: Option<prometheus::IntCounter>,
}

impl ServiceBackends {
    /// Connects to every libvirt service's URI, destroys leftover generated domains there, and
    /// starts the SYN hold when any service needs it.
    pub fn new(
        default: Arc<dyn Backend>,
        services: &[crate::config::ServiceConfig],
        hold_queue: u16,
        held_counter: Option<prometheus::IntCounter>,
    ) -> anyhow::Result<ServiceBackends> {
        let b = ServiceBackends {
            default,
            hold_queue,
            held_counter,
            libvirt: RwLock::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            hold: Mutex::new(None),
        };
        b.apply(services)?;
        Ok(b)
    }

    /// Brings the libvirt backends in line with `services` (start-up and SIGHUP): unchanged
    /// services keep theirs, new and changed ones get new ones, removed ones are dropped.
    /// Running instances keep the backend they were started with.
    pub fn apply(&self, services: &[crate::config::ServiceConfig]) -> anyhow::Result<()> {
        let mut next = HashMap::new();
        let old = self
            .libvirt
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for svc in services {
            let Some(l) = &svc.libvirt else { continue };
            if let Some((prev, b)) = old.get(&svc.name) {
                if prev == l && b.ip == svc.ip && b.port == probe_port(svc) {
                    next.insert(svc.name.clone(), (prev.clone(), b.clone()));
                    continue;
                }
            }
            let config = l
                .launcher_config()
                .map_err(|e| anyhow::anyhow!("service {}: {e}", svc.name))?;
            let conn = self.conn(&config.uri)?;
            let backend = HeldBackend::new(
                LibvirtBackend::with_conn(conn, config),
                self.hold(),
                svc.ip,
                probe_port(svc),
                svc.ready_timeout.max(Duration::from_secs(30)),
            );
            next.insert(svc.name.clone(), (l.clone(), Arc::new(backend)));
        }
        *self.libvirt.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    /// The SYN hold, started on first use (`None` when NFQUEUE is unavailable).
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
    pub fn shutdown(&self) {
        if let Some(h) = self.hold.lock().unwrap_or_else(|p| p.into_inner()).take() {
            h.shutdown();
        }
    }

    fn conn(&self, uri: &str) -> anyhow::Result<Arc<Conn>> {
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

impl Backend for ServiceBackends {
    fn start(
        &self,
        spec: InstanceSpec,
        events: EventSink,
    ) -> Result<Box<dyn Instance>, BackendError> {
        let lv = self
            .libvirt
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&spec.name)
            .map(|(_, b)| b.clone());
        match lv {
            Some(b) => b.start(spec, events),
            None => self.default.start(spec, events),
        }
    }
}

/// Network plumbing for libvirt services: an existing domain's NIC is the operator's (nothing to
/// do); a generated domain gets the daemon's tap, route and neighbour entry as usual, but the
/// tap is made persistent and the daemon's fd closed, because libvirt opens it by name (a tap
/// still held open by the daemon would make that open fail with EBUSY).
pub struct LibvirtPlumbing<P> {
    inner: P,
}

impl<P> LibvirtPlumbing<P> {
    pub fn new(inner: P) -> LibvirtPlumbing<P> {
        LibvirtPlumbing { inner }
    }
}

#[async_trait::async_trait]
impl Plumbing for LibvirtPlumbing<NetPlumber> {
    async fn setup(
        &self,
        svc: &crate::config::ServiceConfig,
    ) -> Result<(crate::registry::NetLease, Option<std::os::fd::OwnedFd>), PlumbError> {
        let Some(l) = &svc.libvirt else {
            return <NetPlumber as Plumbing>::setup(&self.inner, svc).await;
        };
        if l.domain.is_some() {
            return Ok((
                crate::registry::NetLease {
                    tap: String::new(),
                    index: 0,
                    inner: None,
                },
                None,
            ));
        }
        let net = NetPlumber::setup(&self.inner, &svc.name, svc.ip, svc.mac).await?;
        use std::os::fd::AsFd;
        let persisted = summon_launcher::tap::set_persistent(net.tap.fd.as_fd());
        let lease = crate::registry::NetLease {
            tap: net.tap.name.clone(),
            index: net.tap.index,
            inner: None,
        };
        if let Err(source) = persisted {
            let tap = lease.tap.clone();
            <NetPlumber as Plumbing>::teardown(&self.inner, lease).await;
            return Err(PlumbError::new(
                PlumbStep::Persist,
                tap,
                NetError::Io {
                    what: "TUNSETPERSIST".into(),
                    source,
                },
            ));
        }
        drop(net);
        Ok((lease, None))
    }

    async fn teardown(&self, lease: crate::registry::NetLease) {
        if lease.index != 0 {
            <NetPlumber as Plumbing>::teardown(&self.inner, lease).await;
        }
    }

    async fn packets(&self, tap: &str, index: u32) -> Option<u64> {
        if index == 0 {
            return None;
        }
        <NetPlumber as Plumbing>::packets(&self.inner, tap, index).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<LibvirtService, String> {
        LibvirtService::from_table(&s.parse::<toml::Table>().unwrap())
    }

    #[test]
    fn tables() {
        let s = parse("uri = 'qemu:///system'\ndomain = 'legacy-vm'").unwrap();
        assert_eq!(
            s.launcher_config().unwrap().domain,
            DomainSource::Existing("legacy-vm".into())
        );
        let s = parse("uri = 'xen:///system'\nguest = 'xen-pvh'\nvcpus = 2").unwrap();
        match s.launcher_config().unwrap().domain {
            DomainSource::Generated(g) => {
                assert_eq!((g.kind, g.vcpus), (GuestKind::XenPvh, 2));
            }
            d => panic!("{d:?}"),
        }
        let s =
            parse("uri = 'qemu:///system'\nstop = 'shutdown'\nshutdown_timeout = '3s'").unwrap();
        assert_eq!(
            s.launcher_config().unwrap().stop,
            StopMode::Shutdown {
                timeout: Duration::from_secs(3)
            }
        );
    }

    #[test]
    fn bad_tables_name_the_key() {
        assert!(parse("uri = 'qemu:///system'\nguest = 'lxc'")
            .unwrap_err()
            .contains("libvirt.guest"));
        assert!(parse("uri = 'qemu:///system'\nstop = 'pause'")
            .unwrap_err()
            .contains("libvirt.stop"));
        assert!(parse("uri = 'qemu:///system'\nvcpus = 0")
            .unwrap_err()
            .contains("libvirt.vcpus"));
        assert!(parse("uri = 'qemu:///system'\nshutdown_timeout = 'soon'")
            .unwrap_err()
            .contains("shutdown_timeout"));
        assert!(parse("uri = 'qemu:///system'\nnope = 1")
            .unwrap_err()
            .contains("nope"));
        assert!(parse("domain = 'x'").unwrap_err().contains("uri"));
    }
}
