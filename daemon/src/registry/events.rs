//! What instances report (network ready, exit, fault) and what the registry makes of it.

use std::sync::Arc;

use summon_launcher::{EventSink, InstanceEvent};
use tokio::sync::mpsc;

use super::{Phase, Registry, Slot};

impl Registry {
    pub(super) fn sink(&self, service: &str, gen: u64) -> EventSink {
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

    pub(super) async fn event_loop(
        self,
        mut rx: mpsc::UnboundedReceiver<(String, u64, InstanceEvent)>,
    ) {
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
    pub(super) async fn instance_ended(&self, slot: &Arc<Slot>, gen: u64, reason: String) {
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
                Phase::Running | Phase::Suspending | Phase::Suspended | Phase::Resuming => {}
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
}
