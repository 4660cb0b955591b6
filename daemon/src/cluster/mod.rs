//! `[cluster]`: several summond hosts serve one zone, coordinated through etcd
//! (docs/cluster.md). At most one host runs a service's instance: the one whose lease holds
//! the service's `owner/` key, created by a transaction only if absent.
//!
//! Split by concern: [`session`] (the lease, its keep-alive and fencing), [`claim`] (the
//! ownership transactions), [`cache`] (the watch-fed local copy the warm path reads),
//! [`capacity`] (this host's free room, published for relays), [`announce`] (how a service
//! IP reaches its owner: proxy ARP or a route). The DNS front consults [`Cluster::summon`]
//! instead of the registry when `[cluster]` is set; nothing here runs without it.

mod announce;
mod cache;
mod capacity;
mod claim;
mod keys;
mod session;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions, WatchOptions};
use prometheus::IntCounter;
use serde::Serialize;
use tokio::sync::{mpsc, Mutex as AsyncMutex, Notify};

use crate::config::ClusterConfig;
use crate::metrics::Metrics;
use crate::net::Netlink;
use crate::registry::{Registry, Served, Slot, SummonError};
use cache::{Cache, Owner};
use claim::Claim;
use keys::Keys;
use session::Session;

/// One attempt of an etcd request, on one member. A request that went to a member that died
/// (or lost its leader) fails or times out while the others answer: it is tried on the next
/// member, within [`ETCD_BUDGET`] in all (an election takes about a second).
const ETCD_TIMEOUT: Duration = Duration::from_secs(1);
const ETCD_BUDGET: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd did not answer within {0:?}")]
    EtcdTimeout(Duration),
    #[error("no etcd lease this host can prove: not claiming")]
    NoLease,
    #[error("no room on this host and no other host has any")]
    NoRoom,
    #[error("timed out waiting for the owner to announce the service")]
    Timeout,
    #[error("unreadable value at {0}")]
    BadValue(String),
    #[error(transparent)]
    Summon(#[from] SummonError),
    #[error("cluster.uplink: {0}")]
    Uplink(crate::net::NetError),
}

/// Failures of the connection rather than answers of etcd.
fn retryable(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
        ),
        _ => false,
    }
}

/// What a host does with a query for a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Served by an instance here.
    Here(Served),
    /// Another host runs it: answer its IP (the same wherever it runs).
    There,
    /// No room here: relay the query to the host at this address, which has room.
    Relay(SocketAddr),
}

/// Per service: one claim-or-release at a time on this host, and when this host last marked
/// the service queried.
#[derive(Default)]
struct ServiceState {
    claim: AsyncMutex<()>,
    marked_ms: AtomicU64,
    /// The address this host answers ARP for while it runs the service (kept here: a
    /// service removed by a reload is no longer in the registry when its release comes).
    announced: std::sync::Mutex<Option<std::net::Ipv4Addr>>,
}

/// `summon_cluster_events_total`, by event, resolved once.
struct Events {
    claim_won: IntCounter,
    claim_lost: IntCounter,
    remote: IntCounter,
    relayed: IntCounter,
    fenced: IntCounter,
}

impl Events {
    fn new(m: &Metrics) -> Events {
        let c = |e: &str| m.cluster_events.with_label_values(&[e]);
        Events {
            claim_won: c("claim_won"),
            claim_lost: c("claim_lost"),
            remote: c("remote"),
            relayed: c("relayed"),
            fenced: c("fenced"),
        }
    }
}

pub struct Cluster {
    cfg: ClusterConfig,
    keys: Keys,
    /// One client per endpoint: a dead member is skipped at once instead of being balanced
    /// onto.
    clients: Vec<Client>,
    /// The member that answered last.
    current: AtomicUsize,
    session: Session,
    cache: Cache,
    registry: Registry,
    events: Events,
    services: RwLock<HashMap<String, Arc<ServiceState>>>,
    epoch: Instant,
    /// How often a host marks a service it answers for but does not run: the DNS TTL.
    mark_every: Duration,
    /// Memory of the largest service: free room is counted in instances of that size.
    unit_mib: u64,
    capacity: Notify,
    announce: announce::Announcer,
}

/// The cluster view for `summond status` and `/v1/cluster`.
#[derive(Debug, Serialize)]
pub struct View {
    pub node: String,
    pub lease: Option<String>,
    pub owners: Vec<OwnerRow>,
    pub nodes: Vec<NodeRow>,
}

#[derive(Debug, Serialize)]
pub struct OwnerRow {
    pub service: String,
    pub node: String,
    pub state: &'static str,
}

#[derive(Debug, Serialize)]
pub struct NodeRow {
    pub node: String,
    pub dns: SocketAddr,
    pub free: u32,
}

/// The exposition of [`Cluster::render_metrics`] for `view`.
fn owner_metrics(view: &View) -> String {
    use std::fmt::Write;
    let mut out = String::from(
        "# HELP summon_cluster_owner The host that owns each claimed service (value 1)\n\
         # TYPE summon_cluster_owner gauge\n",
    );
    // Names come from etcd, which other writers may share: anything that is not a plain
    // host/service name is left out rather than allowed to break the exposition.
    let plain = |v: &str| {
        !v.is_empty()
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    for o in view
        .owners
        .iter()
        .filter(|o| plain(&o.service) && plain(&o.node))
    {
        let _ = writeln!(
            out,
            "summon_cluster_owner{{service=\"{}\",node=\"{}\",state=\"{}\"}} 1",
            o.service, o.node, o.state
        );
    }
    out
}

impl Cluster {
    /// Connects to etcd (lazily: summond starts while etcd is down and claims nothing until
    /// it has a lease), removes proxy entries an earlier summond left, and starts the lease,
    /// watch, capacity and release tasks.
    pub async fn start(
        cfg: ClusterConfig,
        zone: &str,
        dns_ttl: u32,
        registry: Registry,
        netlink: Netlink,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(ETCD_TIMEOUT)
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1))
            // A member cut off from the others fails requests (and watches) at once instead
            // of serving stale reads or waiting.
            .with_require_leader(true);
        let mut clients = Vec::with_capacity(cfg.etcd.len());
        for e in &cfg.etcd {
            clients.push(Client::connect([e], Some(options.clone())).await?);
        }
        let announce = announce::Announcer::new(&cfg.mode, netlink)
            .await
            .map_err(ClusterError::Uplink)?;
        let unit_mib = registry
            .slots()
            .iter()
            .map(|s| s.config().memory_mib)
            .max()
            .unwrap_or(1);
        let services = registry
            .slots()
            .iter()
            .map(|s| (s.name.clone(), Arc::default()))
            .collect();
        let cluster = Arc::new(Cluster {
            keys: Keys::new(zone),
            session: Session::new(cfg.lease_ttl),
            cfg,
            clients,
            current: AtomicUsize::new(0),
            cache: Cache::new(),
            registry: registry.clone(),
            events: Events::new(&metrics),
            services: RwLock::new(services),
            epoch: Instant::now(),
            mark_every: Duration::from_secs(u64::from(dns_ttl.max(1))),
            unit_mib,
            capacity: Notify::new(),
            announce,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        registry.on_release(Box::new(move |name: &str| {
            let _ = tx.send(name.to_string());
        }));
        tokio::spawn(cluster.clone().keep_lease());
        tokio::spawn(cluster.clone().watch_fence());
        tokio::spawn(cluster.clone().watch_keys());
        tokio::spawn(cluster.clone().publish_capacity());
        tokio::spawn(cluster.clone().releases(rx));
        tracing::info!(node = %cluster.cfg.node, etcd = ?cluster.cfg.etcd, prefix = cluster.keys.prefix(), "cluster member");
        Ok(cluster)
    }

    pub fn node(&self) -> &str {
        &self.cfg.node
    }

    /// A client on the member that answered last (cheap to clone: shared channels).
    fn client(&self) -> Client {
        self.clients[self.current.load(Ordering::Relaxed) % self.clients.len()].clone()
    }

    /// Moves on from a member that stopped answering (for the lease's own requests).
    fn next_member(&self) {
        self.current.fetch_add(1, Ordering::Relaxed);
    }

    /// One etcd request, each attempt bounded in time; a failure of the connection or of the
    /// member is tried on the next member, within [`ETCD_BUDGET`]. Requests here are
    /// idempotent or checked by the caller (a claim retried after it succeeded finds our own
    /// key).
    async fn etcd<T, F, Fut>(&self, f: F) -> Result<T, ClusterError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + ETCD_BUDGET;
        let mut at = self.current.load(Ordering::Relaxed);
        loop {
            let client = self.clients[at % self.clients.len()].clone();
            let t = Instant::now();
            let err = match tokio::time::timeout(ETCD_TIMEOUT, f(client)).await {
                Ok(Ok(v)) => {
                    self.current
                        .store(at % self.clients.len(), Ordering::Relaxed);
                    return Ok(v);
                }
                Ok(Err(e)) if retryable(&e) => ClusterError::Etcd(e),
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => ClusterError::EtcdTimeout(ETCD_TIMEOUT),
            };
            if Instant::now() >= deadline {
                return Err(err);
            }
            tracing::debug!(error = %err, member = %self.cfg.etcd[at % self.clients.len()], "etcd request failed; trying the next member");
            at += 1;
            // Every member failing fast (no leader during an election): do not spin.
            if t.elapsed() < Duration::from_millis(50) && at.is_multiple_of(self.clients.len()) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    fn service(&self, name: &str) -> Arc<ServiceState> {
        if let Some(s) = self
            .services
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return s.clone();
        }
        // A service added by a reload.
        self.services
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// After a fence removed every proxy entry: nothing is announced any more.
    fn forget_announced(&self) {
        for st in self
            .services
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            *st.announced.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    /// Whether `o` is this host's claim under its current lease.
    fn is_mine(&self, o: &Owner) -> bool {
        *o.node == self.cfg.node && o.lease == self.session.lease_id() && o.lease != 0
    }

    /// Serves a query for `slot` in the cluster: from this host's instance, by the owner's
    /// (from the watch cache: no etcd round trip), by claiming and booting it here, or by
    /// relaying to a host with room. `from` is the query's source: a query a peer relayed is
    /// never relayed on.
    pub async fn summon(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        from: IpAddr,
    ) -> Result<Answer, ClusterError> {
        let deadline = Instant::now() + slot.config().ready_timeout;
        loop {
            let mut changed = self.cache.subscribe();
            match self.cache.owner(&slot.name) {
                Some(o) if self.is_mine(&o) => {
                    if self.session.lease().is_none() {
                        return Err(ClusterError::NoLease);
                    }
                    match self.registry.summon_live(slot).await {
                        Ok((_, served)) => return Ok(Answer::Here(served)),
                        Err(SummonError::NotLive) => {}
                        Err(e) => return Err(e.into()),
                    }
                    if let Some(a) = self.claim_and_boot(slot, from).await? {
                        return Ok(a);
                    }
                }
                Some(o) if o.running && *o.node != self.cfg.node => {
                    self.mark_queried(&slot.name);
                    self.events.remote.inc();
                    return Ok(Answer::There);
                }
                // Starting elsewhere, or our own claim under a lease we lost: wait for news.
                Some(_) => {}
                None => {
                    if let Some(a) = self.claim_and_boot(slot, from).await? {
                        return Ok(a);
                    }
                }
            }
            if tokio::time::timeout_at(deadline.into(), changed.changed())
                .await
                .is_err()
            {
                return Err(ClusterError::Timeout);
            }
        }
    }

    /// Claims the service and boots it here, one claim at a time per service on this host.
    /// `None`: another host holds it; wait for the cache to change.
    async fn claim_and_boot(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        from: IpAddr,
    ) -> Result<Option<Answer>, ClusterError> {
        let state = self.service(&slot.name);
        let _claiming = state.claim.lock().await;
        let lease = self.session.lease().ok_or(ClusterError::NoLease)?;
        let rev = match self.cache.owner(&slot.name) {
            // Ours already (a stopped instance whose claim is not released yet): boot again.
            Some(o) if self.is_mine(&o) => o.rev,
            Some(_) => return Ok(None),
            None => {
                let cfg = slot.config();
                if self.registry.room(cfg.memory_mib) == 0 {
                    return self.relay(from).map(Some);
                }
                match self.claim(&slot.name, lease).await? {
                    Claim::Won(rev) => {
                        self.events.claim_won.inc();
                        self.cache.learn(
                            &slot.name,
                            Owner {
                                node: self.cfg.node.as_str().into(),
                                running: false,
                                lease,
                                rev,
                            },
                        );
                        rev
                    }
                    Claim::Held(o) => {
                        self.events.claim_lost.inc();
                        self.cache.learn(&slot.name, o);
                        return Ok(None);
                    }
                }
            }
        };
        match self.registry.summon(slot).await {
            Ok(_) if self.session.lease() != Some(lease) => {
                // Fenced while booting (the fence may have looked before this instance was
                // live): this host cannot prove the claim any more, so the instance goes.
                self.registry
                    .stop(slot, crate::config::StopMode::Destroy, "fenced")
                    .await;
                Err(ClusterError::NoLease)
            }
            Ok((_, served)) => {
                self.took(slot).await;
                Ok(Some(Answer::Here(served)))
            }
            Err(e) => {
                // Nothing runs here: let another host (or a later query) try.
                if let Err(r) = self.release(&slot.name, lease).await {
                    tracing::warn!(service = %slot.name, error = %r, "releasing a failed claim");
                }
                self.cache.forget(&slot.name, rev);
                self.capacity_changed();
                Err(e.into())
            }
        }
    }

    /// The instance runs here: make its address reach this host (before the answer leaves),
    /// then tell the other hosts in the background: the cold path pays one etcd round trip,
    /// the claim.
    async fn took(self: &Arc<Self>, slot: &Arc<Slot>) {
        let ip = slot.config().ip;
        self.announce.take(ip).await;
        *self
            .service(&slot.name)
            .announced
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(ip);
        self.capacity_changed();
        let Some(lease) = self.session.lease() else {
            return;
        };
        if self
            .cache
            .owner(&slot.name)
            .is_some_and(|o| o.running && o.lease == lease)
        {
            return;
        }
        let this = self.clone();
        let name = slot.name.clone();
        tokio::spawn(async move {
            match this.announce(&name, lease).await {
                Ok(Some(rev)) => this.cache.learn(
                    &name,
                    Owner {
                        node: this.cfg.node.as_str().into(),
                        running: true,
                        lease,
                        rev,
                    },
                ),
                // Released meanwhile (the instance stopped at once), or the lease is gone.
                Ok(None) => tracing::debug!(service = %name, "claim gone before announcing it"),
                Err(e) => tracing::warn!(service = %name, error = %e, "announcing"),
            }
        });
    }

    /// The address of the host with the most room, unless the query came from a peer.
    fn relay(&self, from: IpAddr) -> Result<Answer, ClusterError> {
        if self.cache.is_peer(from) {
            return Err(ClusterError::NoRoom);
        }
        let (node, dns) = self
            .cache
            .roomiest(&self.cfg.node)
            .ok_or(ClusterError::NoRoom)?;
        tracing::debug!(%node, %dns, "no room here: relaying");
        self.events.relayed.inc();
        Ok(Answer::Relay(dns))
    }

    /// Marks `service` queried here, at most once per DNS TTL (in the background).
    fn mark_queried(&self, service: &str) {
        let state = self.service(service);
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = state.marked_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < self.mark_every.as_millis() as u64 {
            return;
        }
        if state
            .marked_ms
            .compare_exchange(last, now.max(1), Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let Some(lease) = self.session.lease() else {
            return;
        };
        let key = self.keys.queried(service);
        let node = self.cfg.node.clone();
        let client = self.client();
        tokio::spawn(async move {
            let mut c = client;
            let put = c.put(
                key,
                node,
                Some(etcd_client::PutOptions::new().with_lease(lease)),
            );
            if let Ok(Err(e)) = tokio::time::timeout(ETCD_TIMEOUT, put).await {
                tracing::debug!(error = %e, "marking a service queried");
            }
        });
    }

    /// Releases the claims of instances that stopped here (reaped, exited, stopped by the
    /// admin API), one at a time per service, unless a new instance came up meanwhile.
    async fn releases(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<String>) {
        while let Some(name) = rx.recv().await {
            let this = self.clone();
            tokio::spawn(async move { this.release_stopped(&name).await });
        }
    }

    async fn release_stopped(&self, name: &str) {
        let state = self.service(name);
        let _claiming = state.claim.lock().await;
        // Gone from the registry (removed by a reload): released all the same.
        if self
            .registry
            .get(name)
            .is_some_and(|slot| slot.phase().is_live())
        {
            return;
        }
        let announced = state
            .announced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(ip) = announced {
            self.announce.release(ip).await;
        }
        let Some(o) = self.cache.owner(name).filter(|o| self.is_mine(o)) else {
            return;
        };
        match self.release(name, o.lease).await {
            Ok(_) => {
                self.cache.forget(name, o.rev);
                self.capacity_changed();
            }
            Err(e) => {
                // The claim stays until etcd answers or the lease ends; a query meanwhile
                // boots the service here again, under the claim it still holds.
                tracing::warn!(service = name, error = %e, "releasing a claim");
            }
        }
    }

    /// Keeps the cache in step with etcd: a full read, then a watch from the next revision;
    /// again from a full read whenever the watch breaks.
    async fn watch_keys(self: Arc<Self>) {
        let prefix = self.keys.prefix().to_string();
        loop {
            if let Err(e) = self.watch_once(&prefix).await {
                tracing::warn!(error = %e, "etcd watch broke; resyncing");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn watch_once(&self, prefix: &str) -> Result<(), ClusterError> {
        let snapshot = self
            .etcd(|mut c| {
                let p = prefix.to_string();
                async move { c.get(p, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let rev = snapshot.header().map_or(0, |h| h.revision());
        self.cache.reset(&self.keys, snapshot.kvs(), rev);
        let mut stream = self
            .etcd(|mut c| {
                let p = prefix.to_string();
                async move {
                    c.watch(
                        p,
                        Some(
                            WatchOptions::new()
                                .with_prefix()
                                .with_start_revision(rev + 1)
                                .with_progress_notify(),
                        ),
                    )
                    .await
                }
            })
            .await?;
        while let Some(resp) = stream.message().await? {
            if resp.canceled() {
                return Err(ClusterError::Etcd(etcd_client::Error::WatchError(format!(
                    "canceled: {}",
                    resp.cancel_reason()
                ))));
            }
            let rev = resp.header().map_or(0, |h| h.revision());
            for mark in self.cache.apply(&self.keys, resp.events(), rev) {
                if mark.node == self.cfg.node {
                    continue;
                }
                let mine = self
                    .cache
                    .owner(&mark.service)
                    .is_some_and(|o| self.is_mine(&o));
                if let (true, Some(slot)) = (mine, self.registry.get(&mark.service)) {
                    self.registry.note_query(&slot);
                }
            }
        }
        Ok(())
    }

    /// What this host knows of the cluster.
    pub fn view(&self) -> View {
        let cache::Snapshot { owners, nodes } = self.cache.view();
        View {
            node: self.cfg.node.clone(),
            lease: self.session.lease().map(|l| format!("{l:x}")),
            owners: owners
                .into_iter()
                .map(|(service, o)| OwnerRow {
                    service,
                    node: o.node.to_string(),
                    state: if o.running { "running" } else { "starting" },
                })
                .collect(),
            nodes: nodes
                .into_iter()
                .map(|(node, v)| NodeRow {
                    node,
                    dns: v.dns,
                    free: v.free,
                })
                .collect(),
        }
    }

    /// Prometheus lines for the owners this host knows: `summon_cluster_owner{service,node}`,
    /// one series per owned service, so a dashboard can show where each instance lives.
    pub fn render_metrics(&self) -> String {
        owner_metrics(&self.view())
    }

    /// The owner of `service` as this host knows it.
    pub fn owner(&self, service: &str) -> Option<String> {
        self.cache.owner(service).map(|o| o.node.to_string())
    }

    /// At exit, after the instances stopped: give the lease back (every claim still bound to
    /// it goes at once) and remove our proxy entries.
    pub async fn shutdown(&self) {
        let lease = self.session.lease_id();
        if lease != 0 {
            let r = self
                .etcd(|mut c| async move { c.lease_revoke(lease).await })
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "revoking the etcd lease");
            }
        }
        self.announce.remove_all().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_metrics_name_each_owner_and_skip_names_that_would_break_the_exposition() {
        let row = |service: &str, node: &str| OwnerRow {
            service: service.into(),
            node: node.into(),
            state: "running",
        };
        let view = View {
            node: "h0".into(),
            lease: None,
            owners: vec![row("web", "h1"), row("bad\"}", "h1"), row("api", "h0\n")],
            nodes: Vec::new(),
        };
        let text = owner_metrics(&view);
        let series: Vec<_> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            series,
            vec![r#"summon_cluster_owner{service="web",node="h1",state="running"} 1"#]
        );
    }
}
