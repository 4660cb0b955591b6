//! Stand-ins for the launcher and the host network, for DNS unit tests and the fuzz target:
//! a backend that refuses every start (so a summon is a clean SERVFAIL) and plumbing that
//! touches nothing. Never used by the daemon itself.

use std::os::fd::OwnedFd;
use std::sync::{Arc, RwLock};

use summon_launcher::{Backend, BackendError, EventSink, Instance, InstanceSpec};

use crate::config::{Config, ServiceConfig};
use crate::dns::rrl::Rrl;
use crate::dns::{DnsFront, Zone};
use crate::metrics::Metrics;
use crate::registry::{NetLease, Plumbing, Registry};

pub struct RefusingBackend;

impl Backend for RefusingBackend {
    fn start(&self, spec: InstanceSpec, _: EventSink) -> Result<Box<dyn Instance>, BackendError> {
        Err(BackendError::InvalidState(
            spec.name,
            "start (test backend)",
        ))
    }
}

pub struct NoPlumbing;

#[async_trait::async_trait]
impl Plumbing for NoPlumbing {
    async fn setup(
        &self,
        svc: &ServiceConfig,
    ) -> Result<(NetLease, Option<OwnedFd>), crate::net::PlumbError> {
        Ok((
            NetLease {
                tap: crate::net::tap_name(&svc.name),
                index: 0,
                inner: None,
            },
            None,
        ))
    }
    async fn teardown(&self, _: NetLease) {}
    async fn packets(&self, _: &str, _: u32) -> Option<u64> {
        None
    }
}

/// A DNS front over `config` with the stand-ins; call inside a tokio runtime.
pub fn front(config: &Config) -> DnsFront {
    let metrics = Arc::new(Metrics::new());
    let registry = Registry::new(
        &config.services,
        config.limits,
        config.dns.ttl,
        Arc::new(RefusingBackend),
        Arc::new(NoPlumbing),
        metrics.clone(),
    );
    let zone = Zone::from_config(config, 1).expect("zone from a checked config");
    DnsFront::new(
        Arc::new(RwLock::new(Arc::new(zone))),
        registry,
        metrics,
        config.dns.max_forwards,
        Rrl::new(&config.dns.rrl),
    )
}
