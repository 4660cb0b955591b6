//! This host's free room, published as `nodes/<node>` (bound to its lease) whenever it
//! changes, so that a host without room can relay a query to one that has.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::PutOptions;

use super::keys::NodeValue;
use super::Cluster;

/// Changes closer together than this are published once.
const COALESCE: Duration = Duration::from_millis(100);

impl Cluster {
    pub(super) fn capacity_changed(&self) {
        self.capacity.notify_one();
    }

    pub(super) async fn publish_capacity(self: Arc<Self>) {
        let mut last: Option<(i64, u32)> = None;
        loop {
            self.capacity.notified().await;
            let Some(lease) = self.session.lease() else {
                // Published once a lease is proven again (a grant notifies too, but may
                // come before the lease can be proven).
                tokio::time::sleep(COALESCE * 5).await;
                self.capacity.notify_one();
                continue;
            };
            let free = self.registry.room(self.unit_mib);
            if last == Some((lease, free)) {
                continue;
            }
            let value = NodeValue {
                dns: self.cfg.advertise,
                free,
            }
            .encode();
            let key = self.keys.node(&self.cfg.node);
            let put = self
                .etcd(|mut c| {
                    let (k, v) = (key.clone(), value.clone());
                    async move { c.put(k, v, Some(PutOptions::new().with_lease(lease))).await }
                })
                .await;
            match put {
                Ok(_) => last = Some((lease, free)),
                Err(e) => {
                    tracing::debug!(error = %e, "publishing capacity");
                    self.capacity.notify_one();
                }
            }
            tokio::time::sleep(COALESCE).await;
        }
    }
}
