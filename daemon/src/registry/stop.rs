//! Stopping instances: destroy or suspend one, finish a stop, stop them all at exit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{NetLease, Phase, Registry, Slot};
use crate::config::StopMode;

impl Registry {
    pub(super) async fn finish_stop(
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

    /// Waits (bounded) for a start or suspend under way to finish, so that it can be stopped.
    pub(super) async fn settle(&self, slot: &Arc<Slot>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(slot.phase(), Phase::Starting | Phase::Suspending)
            && Instant::now() < deadline
        {
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
}
