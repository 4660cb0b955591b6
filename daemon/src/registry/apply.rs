//! Applying a reloaded configuration to the running services.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Phase, Registry};
use crate::config::{Limits, ServiceConfig, StopMode};

impl Registry {
    /// Applies a reloaded service list: unchanged services keep their instances; changed ones
    /// are stopped and take the new config; removed ones are stopped and dropped.
    pub async fn apply(&self, services: &[ServiceConfig], limits: Limits, ttl: u32) {
        self.shared.ttl.store(ttl, Ordering::Relaxed);
        *self
            .shared
            .limits
            .write()
            .unwrap_or_else(|p| p.into_inner()) = limits;
        self.shared.admission.set_limits(
            limits.max_instances,
            limits.max_concurrent_boots,
            limits
                .memory_budget_mib
                .unwrap_or_else(super::limits::default_memory_budget_mib),
        );
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
}
