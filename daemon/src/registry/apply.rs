//! Applying a reloaded configuration to the running services.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Entry, Phase, Registry};
use crate::config::{Limits, ServiceConfig, StopMode};
use crate::driver::{Driver, DriverError};

impl Registry {
    /// Applies a reloaded service list: unchanged services keep their instances (and driver);
    /// changed ones are stopped and take the new config and a new driver; removed ones are
    /// stopped and dropped. The new and changed services' drivers are built first: when one
    /// cannot be, nothing changes and the error says why.
    pub async fn apply(
        &self,
        services: &[ServiceConfig],
        limits: Limits,
        ttl: u32,
    ) -> Result<(), DriverError> {
        // The new and changed services, with their new drivers: the one place that decides
        // which services change.
        let mut drivers: HashMap<&str, Arc<dyn Driver>> = HashMap::new();
        for s in services {
            let unchanged = self.get(&s.name).is_some_and(|slot| *slot.config() == *s);
            if !unchanged {
                drivers.insert(s.name.as_str(), self.shared.drivers.for_service(s)?);
            }
        }
        let old_ttl = self.shared.ttl.swap(ttl, Ordering::Relaxed);
        if ttl < old_ttl {
            self.rearm_all_running();
        }
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
        let by_name: HashMap<&str, &ServiceConfig> =
            services.iter().map(|s| (s.name.as_str(), s)).collect();
        let current = self.slots();
        // Removed and changed services are stopped concurrently: a reload that drops thousands
        // of running services takes about one stop, not their sum.
        let (by_name, drivers) = (&by_name, &drivers);
        let updates = current.iter().map(|slot| async move {
            match by_name.get(slot.name.as_str()).copied() {
                None => {
                    slot.lock().removed = true;
                    self.stop(slot, StopMode::Destroy, "removed from config")
                        .await;
                    slot.entry().driver.forget(&slot.name).await;
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
                Some(new) => {
                    let Some(driver) = drivers.get(slot.name.as_str()) else {
                        return;
                    };
                    self.settle(slot).await;
                    self.stop(slot, StopMode::Destroy, "config changed").await;
                    *slot.entry.write().unwrap_or_else(|p| p.into_inner()) = Entry {
                        cfg: Arc::new(new.clone()),
                        driver: driver.clone(),
                    };
                    let mut g = slot.lock();
                    g.failures = 0;
                    g.backoff_until = None;
                    tracing::info!(service = %slot.name, "service changed");
                }
            }
        });
        futures::future::join_all(updates).await;
        for s in services {
            if self.get(&s.name).is_some() {
                continue;
            }
            if let Some(driver) = drivers.get(s.name.as_str()) {
                self.insert(s.clone(), driver.clone());
                tracing::info!(service = %s.name, "service added");
            }
        }
        Ok(())
    }
}
