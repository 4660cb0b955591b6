//! Stand-ins for the drivers, for DNS unit tests and the fuzz target: a driver that refuses
//! every start (so a summon is a clean SERVFAIL) and whose network setup touches nothing.
//! Never used by the daemon itself.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use summon_launcher::{BackendError, EventSink, Instance, InstanceSpec, NetSpec};

use crate::config::{Config, ServiceConfig};
use crate::dns::rrl::Rrl;
use crate::dns::{DnsFront, Zone};
use crate::driver::{Driver, DriverError, Drivers, Lease, Traffic};
use crate::metrics::Metrics;
use crate::net::PlumbError;
use crate::registry::Registry;

/// Drivers whose every start is refused and whose network setup touches nothing.
pub struct RefusingDrivers;

/// The one driver of [`RefusingDrivers`].
pub struct RefusingDriver;

#[async_trait::async_trait]
impl Driver for RefusingDriver {
    async fn setup(&self, _: &ServiceConfig) -> Result<(Lease, Vec<NetSpec>), PlumbError> {
        Ok((Lease::None, Vec::new()))
    }
    fn starts_inline(&self) -> bool {
        true
    }
    fn resumes_inline(&self) -> bool {
        true
    }
    fn start(&self, spec: InstanceSpec, _: EventSink) -> Result<Box<dyn Instance>, BackendError> {
        Err(BackendError::InvalidState(
            spec.name,
            "start (test backend)",
        ))
    }
    fn traffic(&self, _: &dyn Instance, _: &Lease) -> Traffic {
        Traffic::Unknown
    }
    async fn teardown(&self, _: Lease) {}
}

#[async_trait::async_trait]
impl Drivers for RefusingDrivers {
    fn for_service(&self, _: &ServiceConfig) -> Result<Arc<dyn Driver>, DriverError> {
        Ok(Arc::new(RefusingDriver))
    }
    async fn towards_guest(&self, _: &[u32]) -> HashMap<u32, u64> {
        HashMap::new()
    }
}

/// A DNS front over `config` with the stand-ins; call inside a tokio runtime.
pub fn front(config: &Config) -> DnsFront {
    let metrics = Arc::new(Metrics::new());
    let registry = Registry::new(
        &config.services,
        config.limits,
        config.dns.ttl,
        Arc::new(RefusingDrivers),
        metrics.clone(),
    )
    .expect("the refusing drivers build for every service");
    let zone = Zone::from_config(config, 1).expect("zone from a checked config");
    DnsFront::new(
        Arc::new(RwLock::new(Arc::new(zone))),
        registry,
        metrics,
        config.dns.max_forwards,
        Rrl::new(&config.dns.rrl),
    )
}
