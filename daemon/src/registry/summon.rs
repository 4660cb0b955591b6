//! Summoning a service: sharing one start among concurrent queries, resuming a suspended
//! instance, booting a new one (network first, then the launcher), and recording a failed boot.

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use summon_launcher::InstanceSpec;

use super::instance::Inner;
use super::{backoff, limits, Entry, Phase, Registry, Served, Slot, SummonError};
use crate::config::{ReplyMode, ServiceConfig, StopMode};
use crate::driver::{Driver, Leased, Traffic};

impl Registry {
    /// Makes sure the service's instance runs (booting or resuming it) and returns its address.
    /// Concurrent callers share one start.
    pub async fn summon(&self, slot: &Arc<Slot>) -> Result<(Ipv4Addr, Served), SummonError> {
        self.summon_with(slot, true).await
    }

    /// Like [`Registry::summon`], but never boots: a stopped or failed service is
    /// [`SummonError::NotLive`]. For a cluster host, which boots only what it has claimed.
    pub async fn summon_live(&self, slot: &Arc<Slot>) -> Result<(Ipv4Addr, Served), SummonError> {
        self.summon_with(slot, false).await
    }

    async fn summon_with(
        &self,
        slot: &Arc<Slot>,
        may_boot: bool,
    ) -> Result<(Ipv4Addr, Served), SummonError> {
        let t0 = Instant::now();
        slot.last_query_ms.store(self.now_ms(), Ordering::Relaxed);
        let entry = slot.entry();
        let cfg = &entry.cfg;
        // Bounds the wait for a start under way (or for readiness); never unbounded.
        let deadline = t0 + cfg.ready_timeout;
        let mut waited_gen = None;
        let result = loop {
            let mut rx = {
                let mut g = slot.lock();
                if let Some(done) = self.step(slot, &mut g, &entry, t0, waited_gen, may_boot) {
                    break done;
                }
                // An instance on its way out (or into suspension) is not the one this query
                // waits for: wait for the stop or suspend to finish, then boot a fresh one or
                // resume it (a query racing the reaper must not get SERVFAIL).
                if !matches!(g.phase, Phase::Stopping | Phase::Suspending) {
                    waited_gen = Some(g.gen);
                }
                // Subscribed under the lock, so no change after this look is missed.
                slot.changed.subscribe()
            };
            if tokio::time::timeout_at(deadline.into(), rx.changed())
                .await
                .is_err()
            {
                if cfg.reply == ReplyMode::Ready {
                    self.clean_up_unready(slot, waited_gen);
                }
                break Err(SummonError::Timeout);
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

    /// One look at the slot under its lock: the answer, or `None` to wait for its next change.
    fn step(
        &self,
        slot: &Arc<Slot>,
        g: &mut Inner,
        entry: &Entry,
        t0: Instant,
        waited_gen: Option<u64>,
        may_boot: bool,
    ) -> Option<Result<(Ipv4Addr, Served), SummonError>> {
        let cfg = &entry.cfg;
        if g.removed {
            return Some(Err(SummonError::Gone));
        }
        match g.phase {
            Phase::Running => self.running(slot, g, cfg, waited_gen).map(Ok),
            Phase::Suspended => self.resume(slot, g, entry),
            Phase::Starting | Phase::Stopping | Phase::Suspending | Phase::Resuming => None,
            Phase::Failed | Phase::Stopped if !may_boot => Some(Err(SummonError::NotLive)),
            Phase::Failed | Phase::Stopped => self.admit_and_start(slot, g, entry, t0, waited_gen),
        }
    }

    /// A running instance answers at once with `reply = "immediate"`, and once its guest's
    /// network is up with `reply = "ready"`.
    fn running(
        &self,
        slot: &Slot,
        g: &Inner,
        cfg: &ServiceConfig,
        waited_gen: Option<u64>,
    ) -> Option<(Ipv4Addr, Served)> {
        if cfg.reply != ReplyMode::Immediate && !g.net_ready {
            return None;
        }
        if waited_gen.is_none() {
            return Some((cfg.ip, Served::Warm));
        }
        if g.resumed {
            return Some((cfg.ip, Served::Resumed));
        }
        if cfg.reply == ReplyMode::Immediate {
            if let Some(t) = g.launched_at {
                let wake = t.elapsed();
                self.shared.metrics.cold_stage("wake", wake);
                tracing::debug!(service = %slot.name, wake_us = wake.as_micros() as u64, "cold waiter woken");
            }
        }
        Some((cfg.ip, Served::Cold))
    }

    /// Resumes a suspended instance. A driver whose resume is a message to the guest's own
    /// thread resumes it here, under the lock; one whose resume waits (a libvirt RPC) resumes
    /// on a blocking thread, the slot unlocked and `Resuming` meanwhile, and this query waits
    /// for the outcome like the others (`None`). One that fails to resume is destroyed, so
    /// that the next query boots a fresh one.
    fn resume(
        &self,
        slot: &Arc<Slot>,
        g: &mut Inner,
        entry: &Entry,
    ) -> Option<Result<(Ipv4Addr, Served), SummonError>> {
        let Some(inst) = g.instance.clone() else {
            return Some(Err(SummonError::BootFailed("no instance to resume".into())));
        };
        if entry.driver.resumes_inline() {
            let r = inst.resume().map_err(|e| e.to_string());
            return Some(
                self.resumed(slot, g, r)
                    .map(|()| (entry.cfg.ip, Served::Resumed)),
            );
        }
        self.transition(slot, g, Phase::Resuming);
        let (reg, slot, gen) = (self.clone(), slot.clone(), g.gen);
        tokio::spawn(async move {
            let r = match tokio::task::spawn_blocking(move || inst.resume()).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(e) => Err(format!("resume task: {e}")),
            };
            let mut g = slot.lock();
            if g.gen == gen && g.phase == Phase::Resuming {
                // A failure reaches the waiting queries as the stop's `last_error`.
                let _ = reg.resumed(&slot, &mut g, r);
            }
        });
        None
    }

    /// A resume's outcome, under the slot's lock: running again, or on its way out.
    fn resumed(
        &self,
        slot: &Arc<Slot>,
        g: &mut Inner,
        result: Result<(), String>,
    ) -> Result<(), SummonError> {
        match result {
            Ok(()) => {
                g.resumed = true;
                self.transition(slot, g, Phase::Running);
                self.arm_reaper(slot, g);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(service = %slot.name, error = %e, "resume failed; destroying");
                let why = format!("resume: {e}");
                g.last_error = Some(why.clone());
                self.transition(slot, g, Phase::Stopping);
                let (gen, inst, lease) = (g.gen, g.instance.take(), g.net.take());
                let reg = self.clone();
                let s = slot.clone();
                tokio::spawn(async move {
                    reg.finish_stop(&s, gen, inst, lease, Some("resume failed"))
                        .await
                });
                Err(SummonError::BootFailed(why))
            }
        }
    }

    /// No instance: fail if the one this query waited for came and went, back off after failed
    /// boots, admit within the limits, then start one in the background (`None`: wait for it).
    fn admit_and_start(
        &self,
        slot: &Arc<Slot>,
        g: &mut Inner,
        entry: &Entry,
        t0: Instant,
        waited_gen: Option<u64>,
    ) -> Option<Result<(Ipv4Addr, Served), SummonError>> {
        let cfg = &entry.cfg;
        if waited_gen == Some(g.gen) && g.phase == Phase::Failed {
            return Some(Err(SummonError::BootFailed(
                g.last_error.clone().unwrap_or_default(),
            )));
        }
        if waited_gen == Some(g.gen) && g.phase == Phase::Stopped {
            // The instance we waited for came and went (reply=ready timeout or an exit); do
            // not start another one for this query.
            return Some(Err(SummonError::BootFailed(
                g.last_error
                    .clone()
                    .unwrap_or_else(|| "instance stopped".into()),
            )));
        }
        if g.backoff_until.is_some_and(|u| Instant::now() < u) {
            return Some(Err(SummonError::BackingOff));
        }
        let admitted = match self.shared.admission.try_admit(cfg.memory_mib) {
            Ok(a) => a,
            Err(l) => {
                if l == limits::Limit::Host {
                    let (capacity, limit) = self.shared.admission.host_capacity();
                    tracing::warn!(
                        service = %slot.name,
                        capacity,
                        limit,
                        "boot refused: the host's {limit} holds {capacity} instances and all are live (raise {limit} to run more)"
                    );
                }
                if l == limits::Limit::Memory {
                    let m = self.shared.admission.memory();
                    tracing::warn!(
                        service = %slot.name,
                        memory_mib = cfg.memory_mib,
                        live_mib = m.live_mib,
                        budget_mib = m.budget_mib,
                        "boot refused: {} MiB more would exceed the memory budget ({} of {} MiB in use)",
                        cfg.memory_mib, m.live_mib, m.budget_mib
                    );
                }
                return Some(Err(SummonError::Limit(l)));
            }
        };
        g.admitted_mib = cfg.memory_mib;
        // `transition` releases on the way out of a live phase; the admission above is that
        // live phase's share.
        g.gen = self.shared.gen.fetch_add(1, Ordering::Relaxed) + 1;
        g.net_ready = false;
        g.resumed = false;
        g.early_exit = None;
        g.started_at = Some(t0);
        g.launched_at = None;
        g.boots += 1;
        self.transition(slot, g, Phase::Starting);
        self.shared
            .metrics
            .boots
            .with_label_values(&[slot.name.as_str()])
            .inc();
        tokio::spawn(
            self.clone()
                .start(slot.clone(), g.gen, entry.clone(), admitted),
        );
        None
    }

    /// An instance that misses its readiness deadline is cleaned up (unless a newer start or
    /// its network-ready event got there first).
    fn clean_up_unready(&self, slot: &Arc<Slot>, gen: Option<u64>) {
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

    async fn start(self, slot: Arc<Slot>, gen: u64, entry: Entry, admitted: limits::Admitted) {
        let Entry { cfg, driver } = entry;
        let t0 = Instant::now();
        let queued_at = slot.lock().started_at;
        let (lease, nets) = match driver.setup(&cfg).await {
            Ok(x) => x,
            Err(e) => {
                drop(admitted);
                self.boot_failed(&slot, gen, "network", e.to_string());
                return;
            }
        };
        let t_net = t0.elapsed();
        let spec = InstanceSpec {
            name: cfg.name.clone(),
            image: cfg.image.clone(),
            memory_mib: cfg.memory_mib,
            nets,
            blocks: Vec::new(),
            args: cfg.args.clone(),
            limits: cfg.limits,
        };
        let sink = self.sink(&slot.name, gen);
        let t_call = Instant::now();
        let launch = move |d: &dyn Driver| {
            let t = Instant::now();
            (t, d.start(spec, sink), t.elapsed())
        };
        // In place when the driver's start is short (it saves two thread hand-offs on the cold
        // path); a start that may block for long gets a blocking thread.
        let started = if driver.starts_inline() {
            Ok(launch(&*driver))
        } else {
            let d = driver.clone();
            tokio::task::spawn_blocking(move || launch(&*d)).await
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
                driver.teardown(lease).await;
                self.boot_failed(&slot, gen, "launch", e.to_string());
                return;
            }
            Err(e) => {
                driver.teardown(lease).await;
                self.boot_failed(&slot, gen, "launch", format!("launcher task: {e}"));
                return;
            }
        };
        tracing::info!(
            service = %slot.name, tap = lease.tap().unwrap_or("-"), net_us = t_net.as_micros() as u64,
            total_us = t0.elapsed().as_micros() as u64, "instance started"
        );
        let inst: Arc<dyn summon_launcher::Instance> = Arc::from(started);
        let traffic = driver.traffic(&*inst, &lease);
        let lease = Leased { driver, lease };
        let superseded = {
            let mut g = slot.lock();
            if g.gen != gen || g.phase != Phase::Starting {
                Some(Ok((inst, lease)))
            } else {
                // Counters start at zero with the instance, so every frame after this counts;
                // a tap's counter is only known from the first look on.
                g.last_rx = matches!(traffic, Traffic::Counted(_)).then_some(0);
                g.traffic = traffic;
                g.instance = Some(inst);
                g.net = Some(lease);
                let now = Instant::now();
                g.launched_at = Some(now);
                let publish = now.saturating_duration_since(launch_end);
                self.shared.metrics.cold_stage("publish", publish);
                tracing::debug!(service = %slot.name, publish_us = publish.as_micros() as u64, "cold instance published");
                let early = g.early_exit.take();
                self.transition(&slot, &mut g, Phase::Running);
                self.arm_reaper(&slot, &mut g);
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
                lease.release().await;
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

    pub(super) fn note_failure(&self, g: &mut Inner, detail: &str) {
        let limits = *self.shared.limits.read().unwrap_or_else(|p| p.into_inner());
        g.failures = g.failures.saturating_add(1);
        let d = backoff::delay(g.failures, limits.backoff_initial, limits.backoff_max);
        g.backoff_until = Some(Instant::now() + d);
        g.last_error = Some(detail.to_string());
    }
}
