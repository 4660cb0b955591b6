//! Services and their instances: who is running, who is starting, who must wait.
//!
//! Nothing here knows DNS. The DNS front asks [`Registry::summon`] for a service name and gets
//! an address or a reason; everything else (one start per instance, backoff, limits, stop,
//! suspend, resume) happens here.

mod backoff;
mod instance;
mod limits;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use summon_launcher::{Backend, EventSink, InstanceEvent, InstanceSpec, NetSpec, TapSource};
use tokio::sync::{mpsc, watch};

use crate::config::{Limits, ReplyMode, ServiceConfig, StopMode};
use crate::metrics::Metrics;
use instance::Inner;
pub use instance::Phase;
pub use limits::{Admission, Limit};

/// The manifest name of the guest's network device (the name our unikernels declare).
pub const NET_DEVICE: &str = "service";

/// What the registry needs from the host network (real: [`crate::net::NetPlumber`]).
#[async_trait::async_trait]
pub trait Plumbing: Send + Sync + 'static {
    /// Creates the instance's tap, route and neighbour entry; returns the lease and the fd for
    /// the launcher (`None` for backends that do not take one).
    async fn setup(&self, svc: &ServiceConfig) -> Result<(NetLease, Option<OwnedFd>), String>;
    async fn teardown(&self, lease: NetLease);
    /// rx + tx packets through the tap so far, `None` when unknown.
    async fn packets(&self, tap: &str, index: u32) -> Option<u64>;
}

/// The host side of an instance's network, owned by the registry while the instance lives.
#[derive(Debug)]
pub struct NetLease {
    pub tap: String,
    pub index: u32,
    pub inner: Option<crate::net::InstanceNet>,
}

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
}

impl SummonError {
    pub fn result_label(&self) -> &'static str {
        match self {
            SummonError::BootFailed(_) => "failed",
            SummonError::BackingOff => "backoff",
            SummonError::Limit(_) => "limit",
            SummonError::Timeout => "timeout",
            SummonError::Gone => "gone",
        }
    }
}

/// One service and its (at most one) instance.
pub struct Slot {
    pub name: String,
    cfg: RwLock<Arc<ServiceConfig>>,
    inner: Mutex<Inner>,
    changed: watch::Sender<()>,
    /// Milliseconds since the registry's epoch of the last query for this name.
    last_query_ms: AtomicU64,
}

impl Slot {
    fn new(cfg: ServiceConfig) -> Slot {
        Slot {
            name: cfg.name.clone(),
            cfg: RwLock::new(Arc::new(cfg)),
            inner: Mutex::new(Inner::new()),
            changed: watch::channel(()).0,
            last_query_ms: AtomicU64::new(0),
        }
    }

    pub fn config(&self) -> Arc<ServiceConfig> {
        self.cfg.read().unwrap_or_else(|p| p.into_inner()).clone()
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
    backend: Arc<dyn Backend>,
    plumbing: Arc<dyn Plumbing>,
    metrics: Arc<Metrics>,
    admission: Admission,
    limits: RwLock<Limits>,
    ttl: AtomicU32,
    gen: AtomicU64,
    epoch: Instant,
    events: mpsc::UnboundedSender<(String, u64, InstanceEvent)>,
}

/// All services, by lower-case name.
#[derive(Clone)]
pub struct Registry {
    slots: Arc<RwLock<HashMap<String, Arc<Slot>>>>,
    shared: Arc<Shared>,
}

impl Registry {
    /// Must be called inside a tokio runtime (it spawns the instance-event task).
    pub fn new(
        services: &[ServiceConfig],
        limits: Limits,
        ttl: u32,
        backend: Arc<dyn Backend>,
        plumbing: Arc<dyn Plumbing>,
        metrics: Arc<Metrics>,
    ) -> Registry {
        let (tx, rx) = mpsc::unbounded_channel();
        let reg = Registry {
            slots: Arc::new(RwLock::new(HashMap::new())),
            shared: Arc::new(Shared {
                backend,
                plumbing,
                metrics,
                admission: Admission::new(limits.max_instances, limits.max_concurrent_boots),
                limits: RwLock::new(limits),
                ttl: AtomicU32::new(ttl),
                gen: AtomicU64::new(0),
                epoch: Instant::now(),
                events: tx,
            }),
        };
        for s in services {
            reg.insert(s.clone());
        }
        tokio::spawn(reg.clone().event_loop(rx));
        reg
    }

    fn insert(&self, cfg: ServiceConfig) {
        let slot = Arc::new(Slot::new(cfg));
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

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    fn now_ms(&self) -> u64 {
        self.shared.epoch.elapsed().as_millis() as u64
    }

    fn set_phase_metric(&self, service: &str, old: Option<Phase>, new: Phase) {
        let g = &self.shared.metrics.instances;
        if let Some(old) = old {
            g.with_label_values(&[service, old.as_str()]).set(0);
        }
        g.with_label_values(&[service, new.as_str()]).set(1);
    }

    fn transition(&self, slot: &Slot, g: &mut Inner, new: Phase) {
        let old = g.phase;
        if old == new {
            return;
        }
        if old.is_live() && !new.is_live() {
            self.shared.admission.release();
        }
        g.phase = new;
        g.since = Instant::now();
        self.set_phase_metric(&slot.name, Some(old), new);
        slot.changed.send_replace(());
    }

    /// Makes sure the service's instance runs (booting or resuming it) and returns its address.
    /// Concurrent callers share one start.
    pub async fn summon(&self, slot: &Arc<Slot>) -> Result<(Ipv4Addr, Served), SummonError> {
        let t0 = Instant::now();
        slot.last_query_ms.store(self.now_ms(), Ordering::Relaxed);
        let cfg = slot.config();
        // Bounds the wait for a start under way (or for readiness); never unbounded.
        let deadline = t0 + cfg.ready_timeout;
        let mut waited_gen = None;
        let result = loop {
            let mut rx = {
                let mut g = slot.lock();
                if g.removed {
                    break Err(SummonError::Gone);
                }
                match g.phase {
                    Phase::Running => {
                        if cfg.reply == ReplyMode::Immediate || g.net_ready {
                            if waited_gen.is_some() && cfg.reply == ReplyMode::Immediate {
                                if let Some(t) = g.launched_at {
                                    let wake = t.elapsed();
                                    self.shared.metrics.cold_stage("wake", wake);
                                    tracing::debug!(service = %slot.name, wake_us = wake.as_micros() as u64, "cold waiter woken");
                                }
                            }
                            break Ok((
                                cfg.ip,
                                if waited_gen.is_some() {
                                    Served::Cold
                                } else {
                                    Served::Warm
                                },
                            ));
                        }
                    }
                    Phase::Suspended => {
                        let inst = g.instance.clone();
                        match inst.map(|i| i.resume()) {
                            Some(Ok(())) => {
                                g.last_traffic = Instant::now();
                                self.transition(slot, &mut g, Phase::Running);
                                break Ok((cfg.ip, Served::Resumed));
                            }
                            Some(Err(e)) => {
                                // Destroy it, so that the next query boots a fresh instance.
                                tracing::warn!(service = %slot.name, error = %e, "resume failed; destroying");
                                self.transition(slot, &mut g, Phase::Stopping);
                                let (gen, inst, lease) = (g.gen, g.instance.take(), g.net.take());
                                let reg = self.clone();
                                let s = slot.clone();
                                tokio::spawn(async move {
                                    reg.finish_stop(&s, gen, inst, lease, Some("resume failed"))
                                        .await
                                });
                                break Err(SummonError::BootFailed(format!("resume: {e}")));
                            }
                            None => {
                                break Err(SummonError::BootFailed("no instance to resume".into()))
                            }
                        }
                    }
                    Phase::Starting | Phase::Stopping => {}
                    Phase::Failed | Phase::Stopped => {
                        if waited_gen == Some(g.gen) && g.phase == Phase::Failed {
                            break Err(SummonError::BootFailed(
                                g.last_error.clone().unwrap_or_default(),
                            ));
                        }
                        if waited_gen == Some(g.gen) && g.phase == Phase::Stopped {
                            // The instance we waited for came and went (reply=ready timeout
                            // or an exit); do not start another one for this query.
                            break Err(SummonError::BootFailed(
                                g.last_error
                                    .clone()
                                    .unwrap_or_else(|| "instance stopped".into()),
                            ));
                        }
                        if g.backoff_until.is_some_and(|u| Instant::now() < u) {
                            break Err(SummonError::BackingOff);
                        }
                        let admitted = match self.shared.admission.try_admit() {
                            Ok(a) => a,
                            Err(l) => break Err(SummonError::Limit(l)),
                        };
                        // `transition` releases on the way out of a live phase; the admission
                        // above is that live phase's share.
                        g.gen = self.shared.gen.fetch_add(1, Ordering::Relaxed) + 1;
                        g.net_ready = false;
                        g.early_exit = None;
                        g.started_at = Some(t0);
                        g.launched_at = None;
                        g.boots += 1;
                        let prev = g.phase;
                        g.phase = Phase::Starting;
                        g.since = Instant::now();
                        self.set_phase_metric(&slot.name, Some(prev), Phase::Starting);
                        slot.changed.send_replace(());
                        self.shared
                            .metrics
                            .boots
                            .with_label_values(&[slot.name.as_str()])
                            .inc();
                        tokio::spawn(self.clone().start(
                            slot.clone(),
                            g.gen,
                            cfg.clone(),
                            admitted,
                        ));
                    }
                }
                waited_gen = Some(g.gen);
                slot.changed.subscribe()
            };
            match tokio::time::timeout_at(deadline.into(), rx.changed()).await {
                Ok(_) => continue,
                Err(_) => {
                    if cfg.reply == ReplyMode::Ready {
                        // Issue 5: an instance that misses its readiness deadline is cleaned up.
                        let gen = waited_gen;
                        let reg = self.clone();
                        let slot = slot.clone();
                        tokio::spawn(async move {
                            let still_unready = {
                                let g = slot.lock();
                                Some(g.gen) == gen && g.phase == Phase::Running && !g.net_ready
                            };
                            if still_unready {
                                reg.stop(&slot, StopMode::Destroy, "ready timeout").await;
                            }
                        });
                    }
                    break Err(SummonError::Timeout);
                }
            }
        };
        let label = match &result {
            Ok((_, served)) => served.as_str(),
            Err(e) => e.result_label(),
        };
        self.shared
            .metrics
            .summons
            .with_label_values(&[slot.name.as_str(), label])
            .inc();
        result
    }

    async fn start(
        self,
        slot: Arc<Slot>,
        gen: u64,
        cfg: Arc<ServiceConfig>,
        admitted: limits::Admitted,
    ) {
        let t0 = Instant::now();
        let queued_at = slot.lock().started_at;
        let (lease, fd) = match self.shared.plumbing.setup(&cfg).await {
            Ok(x) => x,
            Err(e) => {
                drop(admitted);
                self.boot_failed(&slot, gen, "network", e);
                return;
            }
        };
        let t_net = t0.elapsed();
        let spec = InstanceSpec {
            name: cfg.name.clone(),
            image: cfg.image.clone(),
            memory_mib: cfg.memory_mib,
            nets: match fd {
                Some(fd) => vec![NetSpec {
                    name: NET_DEVICE.to_string(),
                    tap: TapSource::Fd(fd),
                    mac: Some(cfg.mac),
                }],
                None => vec![NetSpec {
                    name: NET_DEVICE.to_string(),
                    tap: TapSource::Name(lease.tap.clone()),
                    mac: Some(cfg.mac),
                }],
            },
            blocks: Vec::new(),
            args: cfg.args.clone(),
        };
        let sink = self.sink(&slot.name, gen);
        let backend = self.shared.backend.clone();
        let t_call = Instant::now();
        let launch = move || {
            let t = Instant::now();
            (t, backend.start(spec, sink), t.elapsed())
        };
        // The KVM launcher's start is short and never waits for the guest (docs/launcher.md):
        // called in place it saves two thread hand-offs on the cold path. Other backends
        // (libvirt) may block for long, so they get a blocking thread.
        let started = if cfg.backend == crate::config::BackendKind::Kvm {
            Ok(launch())
        } else {
            tokio::task::spawn_blocking(launch).await
        };
        let launch_end = Instant::now();
        let started = started.map(|(t, r, launch)| {
            let m = &self.shared.metrics;
            if let Some(q) = queued_at {
                m.cold_stage("spawn", t0.saturating_duration_since(q));
            }
            m.cold_stage("plumbing", t_net);
            m.cold_stage("launch_queue", t.saturating_duration_since(t_call));
            m.cold_stage("launch", launch);
            tracing::debug!(
                service = %slot.name,
                spawn_us = queued_at.map(|q| t0.saturating_duration_since(q).as_micros() as u64),
                plumbing_us = t_net.as_micros() as u64,
                launch_queue_us = t.saturating_duration_since(t_call).as_micros() as u64,
                launch_us = launch.as_micros() as u64,
                "cold stages"
            );
            r
        });
        drop(admitted.boot);
        let started = match started {
            Ok(Ok(inst)) => inst,
            Ok(Err(e)) => {
                self.shared.plumbing.teardown(lease).await;
                self.boot_failed(&slot, gen, "launch", e.to_string());
                return;
            }
            Err(e) => {
                self.shared.plumbing.teardown(lease).await;
                self.boot_failed(&slot, gen, "launch", format!("launcher task: {e}"));
                return;
            }
        };
        tracing::info!(
            service = %slot.name, tap = %lease.tap, net_us = t_net.as_micros() as u64,
            total_us = t0.elapsed().as_micros() as u64, "instance started"
        );
        let inst: Arc<dyn summon_launcher::Instance> = Arc::from(started);
        let superseded = {
            let mut g = slot.lock();
            if g.gen != gen || g.phase != Phase::Starting {
                Some(Ok((inst, lease)))
            } else {
                g.instance = Some(inst);
                g.net = Some(lease);
                let now = Instant::now();
                g.launched_at = Some(now);
                let publish = now.saturating_duration_since(launch_end);
                self.shared.metrics.cold_stage("publish", publish);
                tracing::debug!(service = %slot.name, publish_us = publish.as_micros() as u64, "cold instance published");
                g.last_traffic = Instant::now();
                g.last_packets = None;
                let early = g.early_exit.take();
                self.transition(&slot, &mut g, Phase::Running);
                early.map(Err)
            }
        };
        match superseded {
            None => {}
            Some(Err(reason)) => Box::pin(self.instance_ended(&slot, gen, reason)).await,
            Some(Ok((inst, lease))) => {
                // Superseded (service removed or changed meanwhile): undo.
                let i = inst.clone();
                let _ = tokio::task::spawn_blocking(move || i.stop()).await;
                drop(inst);
                self.shared.plumbing.teardown(lease).await;
            }
        }
    }

    fn boot_failed(&self, slot: &Slot, gen: u64, reason: &str, detail: String) {
        tracing::warn!(service = %slot.name, reason, error = %detail, "boot failed");
        self.shared
            .metrics
            .boot_failures
            .with_label_values(&[slot.name.as_str(), reason])
            .inc();
        let mut g = slot.lock();
        if g.gen != gen {
            return;
        }
        self.note_failure(&mut g, &detail);
        self.transition(slot, &mut g, Phase::Failed);
    }

    fn note_failure(&self, g: &mut Inner, detail: &str) {
        let limits = *self.shared.limits.read().unwrap_or_else(|p| p.into_inner());
        g.failures = g.failures.saturating_add(1);
        let d = backoff::delay(g.failures, limits.backoff_initial, limits.backoff_max);
        g.backoff_until = Some(Instant::now() + d);
        g.last_error = Some(detail.to_string());
    }

    fn sink(&self, service: &str, gen: u64) -> EventSink {
        let tx = self.shared.events.clone();
        let service = service.to_string();
        Arc::new(move |ev: InstanceEvent| {
            if let InstanceEvent::Console(line) = &ev {
                tracing::info!(target: "guest", service = %service, "{line}");
                return;
            }
            let _ = tx.send((service.clone(), gen, ev));
        })
    }

    async fn event_loop(self, mut rx: mpsc::UnboundedReceiver<(String, u64, InstanceEvent)>) {
        while let Some((service, gen, ev)) = rx.recv().await {
            let Some(slot) = self.get(&service) else {
                continue;
            };
            match ev {
                InstanceEvent::NetReady => {
                    let mut g = slot.lock();
                    if g.gen == gen && !g.net_ready {
                        g.net_ready = true;
                        // A guest that got its network up booted fine: forget old failures.
                        g.failures = 0;
                        g.backoff_until = None;
                        if let Some(t) = g.started_at {
                            self.shared
                                .metrics
                                .summon_seconds
                                .with_label_values(&["ready"])
                                .observe(t.elapsed().as_secs_f64());
                        }
                        if let Some(t) = g.launched_at.take() {
                            let boot = t.elapsed();
                            self.shared.metrics.cold_stage("boot", boot);
                            tracing::debug!(service = %service, boot_us = boot.as_micros() as u64, "guest network ready");
                        }
                        slot.changed.send_replace(());
                    }
                }
                InstanceEvent::Exited(code) => {
                    self.instance_ended(&slot, gen, format!("exited with status {code}"))
                        .await
                }
                InstanceEvent::Faulted(reason) => {
                    self.instance_ended(&slot, gen, format!("faulted: {reason}"))
                        .await
                }
                InstanceEvent::Stopped | InstanceEvent::Console(_) => {}
            }
        }
    }

    /// The guest ended by itself. Before network-ready that is a failed boot (backoff).
    async fn instance_ended(&self, slot: &Arc<Slot>, gen: u64, reason: String) {
        let (inst, lease) = {
            let mut g = slot.lock();
            if g.gen != gen {
                return;
            }
            match g.phase {
                Phase::Starting => {
                    g.early_exit = Some(reason);
                    return;
                }
                Phase::Running | Phase::Suspended => {}
                _ => return,
            }
            let failed = !g.net_ready;
            tracing::info!(service = %slot.name, %reason, "instance ended");
            if failed {
                let label = if reason.starts_with("faulted") {
                    "fault"
                } else {
                    "exit"
                };
                self.shared
                    .metrics
                    .boot_failures
                    .with_label_values(&[slot.name.as_str(), label])
                    .inc();
                self.note_failure(&mut g, &reason);
            } else {
                g.last_error = Some(reason);
            }
            self.transition(slot, &mut g, Phase::Stopping);
            (g.instance.take(), g.net.take())
        };
        self.finish_stop(slot, gen, inst, lease, None).await;
    }

    async fn finish_stop(
        &self,
        slot: &Arc<Slot>,
        gen: u64,
        inst: Option<Arc<dyn summon_launcher::Instance>>,
        lease: Option<NetLease>,
        why: Option<&str>,
    ) {
        if let Some(i) = inst {
            let r = tokio::task::spawn_blocking(move || {
                let r = i.stop();
                drop(i);
                r
            })
            .await;
            if let Ok(Err(e)) = r {
                tracing::warn!(service = %slot.name, error = %e, "stopping instance");
            }
        }
        if let Some(l) = lease {
            self.shared.plumbing.teardown(l).await;
        }
        let mut g = slot.lock();
        if g.gen == gen && g.phase == Phase::Stopping {
            let next = if g.backoff_until.is_some_and(|u| Instant::now() < u) && g.failures > 0 {
                Phase::Failed
            } else {
                Phase::Stopped
            };
            self.transition(slot, &mut g, next);
        }
        if let Some(why) = why {
            tracing::info!(service = %slot.name, why, "instance stopped");
        }
    }

    /// Destroys or suspends a running instance; returns whether it did anything.
    pub async fn stop(&self, slot: &Arc<Slot>, mode: StopMode, why: &str) -> bool {
        let (gen, inst, lease) = {
            let mut g = slot.lock();
            match (g.phase, mode) {
                (Phase::Running, StopMode::Suspend) => {
                    let Some(i) = g.instance.clone() else {
                        return false;
                    };
                    match i.suspend() {
                        Ok(()) => {
                            self.transition(slot, &mut g, Phase::Suspended);
                            tracing::info!(service = %slot.name, why, "instance suspended");
                            return true;
                        }
                        Err(e) => {
                            tracing::warn!(service = %slot.name, error = %e, "suspend failed; destroying");
                        }
                    }
                }
                (Phase::Running | Phase::Suspended, _) => {}
                _ => return false,
            }
            self.transition(slot, &mut g, Phase::Stopping);
            (g.gen, g.instance.take(), g.net.take())
        };
        self.finish_stop(slot, gen, inst, lease, Some(why)).await;
        true
    }

    /// One reaper pass: stops or suspends instances idle by DNS (2 × TTL) and by tap traffic
    /// (`idle_timeout`).
    pub async fn reap_idle(&self) {
        let ttl_ms = u64::from(self.shared.ttl.load(Ordering::Relaxed)) * 1000;
        let now_ms = self.now_ms();
        for slot in self.slots() {
            let link = {
                let g = slot.lock();
                if g.phase != Phase::Running {
                    continue;
                }
                g.net.as_ref().map(|l| (l.tap.clone(), l.index))
            };
            let packets = match &link {
                Some((tap, index)) => self.shared.plumbing.packets(tap, *index).await,
                None => None,
            };
            let cfg = slot.config();
            let idle = {
                let mut g = slot.lock();
                if g.phase != Phase::Running {
                    continue;
                }
                if let Some(p) = packets {
                    if g.last_packets != Some(p) {
                        if g.last_packets.is_some() {
                            g.last_traffic = Instant::now();
                        }
                        g.last_packets = Some(p);
                    }
                }
                let q = slot.last_query_ms.load(Ordering::Relaxed);
                let dns_idle = now_ms.saturating_sub(q) >= 2 * ttl_ms;
                dns_idle && g.last_traffic.elapsed() >= cfg.idle_timeout
            };
            if idle {
                let mode_label = match cfg.stop {
                    StopMode::Destroy => "destroy",
                    StopMode::Suspend => "suspend",
                };
                if self.stop(&slot, cfg.stop, "idle").await {
                    self.shared
                        .metrics
                        .reaped
                        .with_label_values(&[slot.name.as_str(), mode_label])
                        .inc();
                }
            }
        }
    }

    /// Applies a reloaded service list: unchanged services keep their instances; changed ones
    /// are stopped and take the new config; removed ones are stopped and dropped.
    pub async fn apply(&self, services: &[ServiceConfig], limits: Limits, ttl: u32) {
        self.shared.ttl.store(ttl, Ordering::Relaxed);
        *self
            .shared
            .limits
            .write()
            .unwrap_or_else(|p| p.into_inner()) = limits;
        self.shared
            .admission
            .set_limits(limits.max_instances, limits.max_concurrent_boots);
        let current = self.slots();
        for slot in &current {
            match services.iter().find(|s| s.name == slot.name) {
                None => {
                    slot.lock().removed = true;
                    self.stop(slot, StopMode::Destroy, "removed from config")
                        .await;
                    self.slots
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&slot.name);
                    for p in Phase::ALL {
                        let _ = self
                            .shared
                            .metrics
                            .instances
                            .remove_label_values(&[slot.name.as_str(), p.as_str()]);
                    }
                    slot.changed.send_replace(());
                    tracing::info!(service = %slot.name, "service removed");
                }
                Some(new) if *slot.config() != *new => {
                    self.settle(slot).await;
                    self.stop(slot, StopMode::Destroy, "config changed").await;
                    *slot.cfg.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new.clone());
                    let mut g = slot.lock();
                    g.failures = 0;
                    g.backoff_until = None;
                    tracing::info!(service = %slot.name, "service changed");
                }
                Some(_) => {}
            }
        }
        for s in services {
            if self.get(&s.name).is_none() {
                self.insert(s.clone());
                tracing::info!(service = %s.name, "service added");
            }
        }
    }

    /// Waits (bounded) for a start under way to finish, so that it can be stopped.
    async fn settle(&self, slot: &Arc<Slot>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while slot.phase() == Phase::Starting && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops every instance (daemon exit).
    pub async fn stop_all(&self) {
        let slots = self.slots();
        let stops = slots
            .iter()
            .map(|s| self.stop(s, StopMode::Destroy, "shutdown"));
        futures::future::join_all(stops).await;
        // Starts still under way are let finish, then stopped.
        for s in &slots {
            s.lock().removed = true;
            self.settle(s).await;
            self.stop(s, StopMode::Destroy, "shutdown").await;
        }
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
                    tap: g.net.as_ref().map(|l| l.tap.clone()),
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
