//! This host's etcd lease: granted, kept alive, and fenced. Every claim is bound to the lease,
//! so a host that dies loses its claims within `lease_ttl`. A host that cannot renew it stops
//! its instances itself before the lease can expire, so no two hosts serve one address.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Cluster;

/// The lease as far as this host can prove it.
pub struct Session {
    epoch: Instant,
    /// 0: none (not granted yet, or fenced).
    lease: AtomicI64,
    /// Until when (ms since `epoch`) the lease provably lives: the send time of the last
    /// renewal etcd acknowledged plus the TTL it granted. etcd counts from when it received
    /// the renewal, later than we sent it, so this errs on the safe side.
    valid_until_ms: AtomicU64,
    /// Fence this long before `valid_until`: time to stop the instances.
    margin: Duration,
    deadline: watch::Sender<u64>,
}

impl Session {
    pub fn new(ttl: Duration) -> Session {
        Session {
            epoch: Instant::now(),
            lease: AtomicI64::new(0),
            valid_until_ms: AtomicU64::new(0),
            margin: fence_margin(ttl),
            deadline: watch::channel(0).0,
        }
    }

    fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// The lease, while this host can prove it holds it (and has time to stop before it ends).
    pub fn lease(&self) -> Option<i64> {
        let lease = self.lease.load(Ordering::Acquire);
        let until = self.valid_until_ms.load(Ordering::Acquire);
        let fence_at = until.saturating_sub(self.margin.as_millis() as u64);
        (lease != 0 && self.ms(Instant::now()) < fence_at).then_some(lease)
    }

    /// The lease id even when no longer provable (to recognise our own keys).
    pub fn lease_id(&self) -> i64 {
        self.lease.load(Ordering::Acquire)
    }

    fn renewed(&self, lease: i64, sent: Instant, ttl_secs: i64) {
        let until = self.ms(sent) + (ttl_secs.max(0) as u64) * 1000;
        self.valid_until_ms.store(until, Ordering::Release);
        self.lease.store(lease, Ordering::Release);
        self.deadline
            .send_replace(until.saturating_sub(self.margin.as_millis() as u64));
    }

    /// Forgets the lease; true if there was one.
    fn drop_lease(&self) -> bool {
        self.lease.swap(0, Ordering::AcqRel) != 0
    }
}

/// A quarter of the TTL, at most one second: keep-alives go every third of the TTL, so one
/// lost renewal never fences, and stopping instances takes well under the margin.
fn fence_margin(ttl: Duration) -> Duration {
    (ttl / 4).min(Duration::from_secs(1))
}

impl Cluster {
    /// Grants a lease and keeps it alive, for the life of the process; after losing it, grants
    /// a new one.
    pub(super) async fn keep_lease(self: Arc<Self>) {
        let ttl = self.cfg.lease_ttl;
        let every = ttl / 3;
        loop {
            // Not through `etcd()`'s retries: the TTL counts from this attempt's send time.
            let sent = Instant::now();
            let mut c = self.client();
            let granted =
                tokio::time::timeout(every, c.lease_grant(ttl.as_secs() as i64, None)).await;
            let lease = match granted {
                Ok(Ok(g)) => {
                    self.session.renewed(g.id(), sent, g.ttl());
                    tracing::info!(
                        lease = format!("{:x}", g.id()),
                        ttl = g.ttl(),
                        "etcd lease granted"
                    );
                    g.id()
                }
                failed => {
                    match failed {
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "etcd lease grant failed; retrying")
                        }
                        _ => tracing::warn!("etcd lease grant timed out; retrying"),
                    }
                    self.next_member();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            self.capacity_changed();
            self.renew_until_lost(lease, every).await;
        }
    }

    /// Renews `lease` every `every` over one keep-alive stream (reopened when it breaks)
    /// until the lease is gone or fenced.
    async fn renew_until_lost(&self, lease: i64, every: Duration) {
        while self.session.lease_id() == lease {
            let opened = self
                .etcd(|mut c| async move { c.lease_keep_alive(lease).await })
                .await;
            let (mut keeper, mut stream) = match opened {
                Ok(ks) => ks,
                Err(e) => {
                    tracing::warn!(error = %e, "etcd keep-alive stream failed");
                    tokio::time::sleep(every / 4).await;
                    continue;
                }
            };
            loop {
                let sent = Instant::now();
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                match tokio::time::timeout(every, stream.message()).await {
                    Ok(Ok(Some(r))) if r.ttl() > 0 => self.session.renewed(lease, sent, r.ttl()),
                    Ok(Ok(Some(_))) => {
                        // TTL 0: etcd no longer knows the lease (it expired): every claim
                        // under it is gone.
                        tracing::warn!("etcd lease expired");
                        self.fence("lease expired").await;
                        return;
                    }
                    _ => break,
                }
                if self.session.lease_id() != lease {
                    return;
                }
                tokio::time::sleep_until((sent + every).into()).await;
            }
            // This member stopped renewing: the next stream goes to another.
            self.next_member();
            tokio::time::sleep(every / 4).await;
        }
    }

    /// Fences when the lease can no longer be proven before the renewal comes: runs for the
    /// life of the process, one timer per host.
    pub(super) async fn watch_fence(self: Arc<Self>) {
        let mut rx = self.session.deadline.subscribe();
        loop {
            let fence_at = *rx.borrow_and_update();
            if fence_at == 0 {
                if rx.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let at = self.session.epoch + Duration::from_millis(fence_at);
            tokio::select! {
                _ = tokio::time::sleep_until(at.into()) => {
                    if self.session.lease_id() != 0 && self.session.lease().is_none() {
                        self.fence("lease keep-alive failed").await;
                    }
                    // Wait for the next grant or renewal.
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
                r = rx.changed() => if r.is_err() { return },
            }
        }
    }

    /// Stops every instance this host owns and forgets its lease: from here on it claims
    /// nothing until it has a new lease.
    pub(super) async fn fence(&self, why: &str) {
        let lease = self.session.lease_id();
        if !self.session.drop_lease() {
            return;
        }
        let owned = self.cache.owned_by(&self.cfg.node, lease);
        // Every live instance here is one this host claimed; one still booting may not be in
        // the cache yet, so stop by the registry's view.
        let live: Vec<_> = self
            .registry
            .slots()
            .into_iter()
            .filter(|s| s.phase().is_live())
            .collect();
        tracing::warn!(
            why,
            instances = live.len(),
            "fenced: stopping this host's instances"
        );
        self.events.fenced.inc();
        let stops = live.into_iter().map(|slot| {
            let reg = self.registry.clone();
            async move {
                reg.stop(&slot, crate::config::StopMode::Destroy, "fenced")
                    .await
            }
        });
        futures::future::join_all(stops).await;
        self.announce.remove_all().await;
        self.forget_announced();
        for s in &owned {
            if let Some(o) = self.cache.owner(s) {
                self.cache.forget(s, o.rev);
            }
        }
    }
}
