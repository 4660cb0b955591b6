//! Stopping instances: destroy or suspend one, finish a stop, stop them all at exit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::{Phase, Registry, Slot};

/// Blocking threads that wait for instances to acknowledge their stop at exit: the stops run in
/// parallel on the instances' own threads, so a few waiters suffice.
const STOP_WAITERS: usize = 16;
use crate::config::StopMode;
use crate::driver::Leased;
use crate::metrics::GuestTotals;

impl Registry {
    pub(super) async fn finish_stop(
        &self,
        slot: &Arc<Slot>,
        gen: u64,
        inst: Option<Arc<dyn summon_launcher::Instance>>,
        lease: Option<Leased>,
        why: Option<&str>,
    ) {
        if let Some(i) = inst {
            let metrics = self.shared.metrics.clone();
            let service = slot.name.clone();
            let r = tokio::task::spawn_blocking(move || {
                // The quota group may be gone once the stop is done: keep its last figures.
                let before = GuestTotals::of(&*i);
                let r = i.stop();
                let mut totals = GuestTotals::of(&*i);
                if totals.cpu == Default::default() {
                    totals.cpu = before.cpu;
                }
                metrics.guest_ended(&service, &totals);
                drop(i);
                r
            })
            .await;
            if let Ok(Err(e)) = r {
                tracing::warn!(service = %slot.name, error = %e, "stopping instance");
            }
        }
        if let Some(l) = lease {
            l.release().await;
        }
        self.stopped(slot, gen, why);
    }

    /// The instance `gen` of `slot` is gone (instance ended, network removed).
    fn stopped(&self, slot: &Arc<Slot>, gen: u64, why: Option<&str>) {
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
        if mode == StopMode::Suspend {
            return self.suspend(slot, why).await;
        }
        let (gen, inst, lease) = {
            let mut g = slot.lock();
            match g.phase {
                Phase::Running | Phase::Suspended => {}
                _ => return false,
            }
            self.transition(slot, &mut g, Phase::Stopping);
            (g.gen, g.instance.take(), g.net.take())
        };
        self.finish_stop(slot, gen, inst, lease, Some(why)).await;
        true
    }

    /// Suspends a running instance. The launcher's suspend waits for the vCPU to acknowledge,
    /// so it runs on a blocking thread, with the slot unlocked and the instance marked
    /// `Suspending` meanwhile (queries for it wait for the outcome). A suspend that fails is
    /// not acknowledged: the guest's state is unknown, so the instance is destroyed.
    async fn suspend(&self, slot: &Arc<Slot>, why: &str) -> bool {
        let (gen, inst) = {
            let mut g = slot.lock();
            if g.phase != Phase::Running {
                return false;
            }
            let Some(i) = g.instance.clone() else {
                return false;
            };
            self.transition(slot, &mut g, Phase::Suspending);
            (g.gen, i)
        };
        let result = match tokio::task::spawn_blocking(move || inst.suspend()).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(format!("suspend task: {e}")),
        };
        let (inst, lease, why) = {
            let mut g = slot.lock();
            if g.gen != gen || g.phase != Phase::Suspending {
                // The instance ended meanwhile (its exit was handled); nothing left to do.
                return true;
            }
            match result {
                Ok(()) => {
                    self.transition(slot, &mut g, Phase::Suspended);
                    tracing::info!(service = %slot.name, why, "instance suspended");
                    return true;
                }
                Err(e) => {
                    tracing::warn!(service = %slot.name, error = %e, "suspend failed; destroying the instance");
                    self.transition(slot, &mut g, Phase::Stopping);
                    (
                        g.instance.take(),
                        g.net.take(),
                        format!("{why}: suspend failed ({e}), destroyed instead"),
                    )
                }
            }
        };
        self.finish_stop(slot, gen, inst, lease, Some(&why)).await;
        true
    }

    /// Waits (bounded) for a start, suspend or resume under way to finish, so that it can be
    /// stopped.
    pub(super) async fn settle(&self, slot: &Arc<Slot>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(
            slot.phase(),
            Phase::Starting | Phase::Suspending | Phase::Resuming
        ) && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops every instance (daemon exit): no new start is admitted, starts under way are let
    /// finish (bounded), all links are removed in one batch, then every instance is asked to
    /// end at once and waited for by a few blocking threads. Thousands of instances stop in
    /// about the time of the kernel's batch plus the slowest stop, not the sum of their stops.
    pub async fn stop_all(&self) {
        let t0 = Instant::now();
        let slots = self.slots();
        for s in &slots {
            s.lock().removed = true;
        }
        let starting = slots.iter().filter(|s| {
            matches!(
                s.phase(),
                Phase::Starting | Phase::Suspending | Phase::Resuming
            )
        });
        futures::future::join_all(starting.map(|s| self.settle(s))).await;
        let mut taken = Vec::new();
        let mut instances = Vec::new();
        let mut leases = Vec::new();
        for s in &slots {
            let mut g = s.lock();
            if matches!(g.phase, Phase::Running | Phase::Suspended) {
                self.transition(s, &mut g, Phase::Stopping);
                instances.extend(g.instance.take());
                leases.extend(g.net.take());
                taken.push((s.clone(), g.gen));
            }
        }
        let settled = t0.elapsed();
        // What can be ended in bulk starts ending now (the KVM guests, which keep their taps
        // open until their workers exit). The links go next, while the guests still hold
        // their taps: deleting a tap that is still open detaches it with one RCU grace period
        // (under the kernel's rtnl lock), while a tap closed first costs one at the close and
        // another at the delete. At thousands of instances those waits are most of the exit
        // (docs/benchmarks.md, Density). A guest whose tap is gone stops polling it.
        self.shared.drivers.stop_all();
        self.shared.drivers.teardown_all(leases).await;
        let torn_down = t0.elapsed();
        for i in &instances {
            i.request_stop();
        }
        let requested = t0.elapsed();
        let waits = futures::stream::iter(instances).map(|i| {
            tokio::task::spawn_blocking(move || {
                let r = i.stop();
                drop(i);
                r
            })
        });
        let mut waits = waits.buffer_unordered(STOP_WAITERS);
        while let Some(r) = waits.next().await {
            if let Ok(Err(e)) = r {
                tracing::warn!(error = %e, "stopping instance");
            }
        }
        let waited = t0.elapsed();
        for (s, gen) in &taken {
            self.stopped(s, *gen, Some("shutdown"));
        }
        tracing::info!(
            instances = taken.len(),
            settled_ms = settled.as_millis() as u64,
            network_ms = torn_down.as_millis() as u64,
            requested_ms = requested.as_millis() as u64,
            waited_ms = waited.as_millis() as u64,
            "all instances stopped"
        );
    }
}
