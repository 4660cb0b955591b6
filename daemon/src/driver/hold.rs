//! The SYN hold around a libvirt backend: the first SYNs to a domain that is still booting are
//! held (NFQUEUE) until the guest answers on its probe port, then released, so that the
//! registry sees what it sees for the embedded launcher: instances that report `NetReady` once
//! the guest answers, and no first SYN lost to a retransmission timeout.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use summon_launcher::libvirt::LibvirtBackend;
use summon_launcher::{
    Backend, BackendError, EventSink, Instance, InstanceEvent, InstanceSpec, InstanceState,
};

use crate::net::hold::{wait_until_answers_while, SynHold};

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
