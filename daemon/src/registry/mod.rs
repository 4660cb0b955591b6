//! Services and their instances: who is running, who is starting, who must wait.
//!
//! Nothing here knows DNS. The DNS front asks [`Registry::summon`] for a service name and gets
//! an address or a reason; everything else (one start per instance, backoff, limits, stop,
//! suspend, resume) happens here.

mod apply;
mod backoff;
mod events;
mod instance;
mod limits;
mod reap;
mod stop;
mod summon;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use serde::Serialize;
use summon_launcher::InstanceEvent;
use tokio::sync::{mpsc, watch};

use crate::config::{Limits, ServiceConfig};
use crate::driver::{Driver, DriverError, Drivers};
use crate::metrics::Metrics;
use instance::Inner;
pub use instance::Phase;
pub use limits::{Admission, Limit};

/// How a query was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    Warm,
    Cold,
    Resumed,
}

impl Served {
    pub fn as_str(self) -> &'static str {
        match self {
            Served::Warm => "warm",
            Served::Cold => "cold",
            Served::Resumed => "resumed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SummonError {
    #[error("boot failed: {0}")]
    BootFailed(String),
    #[error("backing off after failed boots")]
    BackingOff,
    #[error("limit reached: {}", .0.as_str())]
    Limit(Limit),
    #[error("timed out waiting for the instance")]
    Timeout,
    #[error("service was removed")]
    Gone,
    #[error("no live instance here")]
    NotLive,
}

impl SummonError {
    pub fn result_label(&self) -> &'static str {
        match self {
            SummonError::BootFailed(_) => "failed",
            SummonError::BackingOff => "backoff",
            SummonError::Limit(l) => l.result_label(),
            SummonError::Timeout => "timeout",
            SummonError::Gone => "gone",
            SummonError::NotLive => "not_live",
        }
    }
}

/// Told the name of a service whose instance stopped being live (see [`Registry::on_release`]).
pub type ReleaseHook = Box<dyn Fn(&str) + Send + Sync>;

/// A service's configuration and the driver chosen for it when that configuration was loaded.
#[derive(Clone)]
struct Entry {
    cfg: Arc<ServiceConfig>,
    driver: Arc<dyn Driver>,
}

/// One service and its (at most one) instance.
pub struct Slot {
    pub name: String,
    entry: RwLock<Entry>,
    inner: Mutex<Inner>,
    changed: watch::Sender<()>,
    /// Milliseconds since the registry's epoch of the last query for this name.
    last_query_ms: AtomicU64,
}

impl Slot {
    fn new(cfg: ServiceConfig, driver: Arc<dyn Driver>) -> Slot {
        Slot {
            name: cfg.name.clone(),
            entry: RwLock::new(Entry {
                cfg: Arc::new(cfg),
                driver,
            }),
            inner: Mutex::new(Inner::new()),
            changed: watch::channel(()).0,
            last_query_ms: AtomicU64::new(0),
        }
    }

    pub fn config(&self) -> Arc<ServiceConfig> {
        self.entry().cfg
    }

    fn entry(&self) -> Entry {
        self.entry.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn phase(&self) -> Phase {
        self.lock().phase
    }
}

/// One row of `/v1/instances`.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceInfo {
    pub service: String,
    pub ip: Ipv4Addr,
    pub state: &'static str,
    pub tap: Option<String>,
    pub net_ready: bool,
    pub boots: u64,
    pub failures: u32,
    pub state_seconds: f64,
    pub last_error: Option<String>,
}

struct Shared {
    drivers: Arc<dyn Drivers>,
    metrics: Arc<Metrics>,
    admission: Admission,
    limits: RwLock<Limits>,
    ttl: AtomicU32,
    gen: AtomicU64,
    epoch: Instant,
    events: mpsc::UnboundedSender<(String, u64, InstanceEvent)>,
    reap: reap::ReapQueue,
    /// Told when an instance stops being live (a cluster host releases its claim); called
    /// under the slot's lock, so it must only hand the name on.
    on_release: std::sync::OnceLock<ReleaseHook>,
}

/// All services, by lower-case name.
#[derive(Clone)]
pub struct Registry {
    slots: Arc<RwLock<HashMap<String, Arc<Slot>>>>,
    shared: Arc<Shared>,
}

impl Registry {
    /// Must be called inside a tokio runtime (it spawns the instance-event task). Fails when a
    /// service's driver cannot be built (e.g. its libvirt URI does not answer).
    pub fn new(
        services: &[ServiceConfig],
        limits: Limits,
        ttl: u32,
        drivers: Arc<dyn Drivers>,
        metrics: Arc<Metrics>,
    ) -> Result<Registry, DriverError> {
        let entries = services
            .iter()
            .map(|s| Ok((s.clone(), drivers.for_service(s)?)))
            .collect::<Result<Vec<_>, DriverError>>()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let epoch = Instant::now();
        let reg = Registry {
            slots: Arc::new(RwLock::new(HashMap::new())),
            shared: Arc::new(Shared {
                drivers,
                metrics,
                admission: Admission::new(
                    limits.max_instances,
                    limits.max_concurrent_boots,
                    limits
                        .memory_budget_mib
                        .unwrap_or_else(limits::default_memory_budget_mib),
                ),
                limits: RwLock::new(limits),
                ttl: AtomicU32::new(ttl),
                gen: AtomicU64::new(0),
                epoch,
                events: tx,
                reap: reap::ReapQueue::new(epoch),
                on_release: std::sync::OnceLock::new(),
            }),
        };
        for (cfg, driver) in entries {
            reg.insert(cfg, driver);
        }
        tokio::spawn(reg.clone().event_loop(rx));
        Ok(reg)
    }

    fn insert(&self, cfg: ServiceConfig, driver: Arc<dyn Driver>) {
        let slot = Arc::new(Slot::new(cfg, driver));
        self.set_phase_metric(&slot.name, None, Phase::Stopped);
        self.slots
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(slot.name.clone(), slot);
    }

    /// The slot of a lower-case service name.
    pub fn get(&self, name: &str) -> Option<Arc<Slot>> {
        self.slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub fn slots(&self) -> Vec<Arc<Slot>> {
        let mut v: Vec<_> = self
            .slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// How many live instances the host's limits hold (`limit` names the one that bounds
    /// them); beyond, boots are refused with `Limit::Host` instead of failing half-way.
    pub fn set_host_capacity(&self, instances: u64, limit: &'static str) {
        self.shared.admission.set_host_capacity(instances, limit);
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// Sets the hook told of every instance that stops being live (once per process).
    pub fn on_release(&self, f: ReleaseHook) {
        if self.shared.on_release.set(f).is_err() {
            tracing::warn!("registry release hook set twice; keeping the first");
        }
    }

    /// A query for `slot` answered elsewhere counts as one here (idleness across hosts).
    pub fn note_query(&self, slot: &Slot) {
        slot.last_query_ms
            .store(self.now_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    /// How many more instances of `memory_mib` the limits admit now (none reserved).
    pub fn room(&self, memory_mib: u64) -> u32 {
        self.shared.admission.room(memory_mib)
    }

    fn now_ms(&self) -> u64 {
        self.shared.epoch.elapsed().as_millis() as u64
    }

    fn set_phase_metric(&self, service: &str, old: Option<Phase>, new: Phase) {
        let g = &self.shared.metrics.instances;
        // One series per service, whatever states it went through: the old state's series is
        // removed rather than set to 0, so 10,000 services export 10,000 series, not 60,000.
        if let Some(old) = old {
            let _ = g.remove_label_values(&[service, old.as_str()]);
        }
        g.with_label_values(&[service, new.as_str()]).set(1);
    }

    fn transition(&self, slot: &Slot, g: &mut Inner, new: Phase) {
        let old = g.phase;
        if old == new {
            return;
        }
        if old.is_live() && !new.is_live() {
            self.shared
                .admission
                .release(std::mem::take(&mut g.admitted_mib));
            if let Some(f) = self.shared.on_release.get() {
                f(&slot.name);
            }
        }
        g.phase = new;
        g.since = Instant::now();
        self.set_phase_metric(&slot.name, Some(old), new);
        slot.changed.send_replace(());
    }

    /// The metrics exposition, with the live instances' guest counters read now (atomics, and
    /// one `cpu.stat` read per instance with a CPU quota): no timer, no per-event work.
    pub fn render_metrics(&self) -> String {
        let live: Vec<(String, crate::metrics::GuestTotals)> = self
            .slots()
            .iter()
            .filter_map(|s| {
                let inst = s.lock().instance.clone()?;
                Some((s.name.clone(), crate::metrics::GuestTotals::of(&*inst)))
            })
            .collect();
        self.shared.metrics.render_with_guests(&live)
    }

    pub fn instances(&self) -> Vec<InstanceInfo> {
        self.slots()
            .iter()
            .map(|s| {
                let cfg = s.config();
                let g = s.lock();
                InstanceInfo {
                    service: s.name.clone(),
                    ip: cfg.ip,
                    state: g.phase.as_str(),
                    tap: g.net.as_ref().and_then(|l| l.tap()).map(str::to_string),
                    net_ready: g.net_ready,
                    boots: g.boots,
                    failures: g.failures,
                    state_seconds: g.since.elapsed().as_secs_f64(),
                    last_error: g.last_error.clone(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
