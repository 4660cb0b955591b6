//! The local copy of the cluster's keys, kept by one etcd watch: the warm path of a host that
//! does not own a service reads it, with no etcd round trip.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use etcd_client::{EventType, KeyValue};
use tokio::sync::watch;

use super::keys::{Key, Keys, NodeValue, OwnerValue};

/// Who owns a service, as etcd last told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub node: Arc<str>,
    pub running: bool,
    /// The lease the key is bound to: a host owns a service only under its current lease.
    pub lease: i64,
    /// The key's mod revision: older news never replaces newer.
    pub rev: i64,
}

#[derive(Default)]
struct State {
    owners: HashMap<String, Owner>,
    nodes: HashMap<String, NodeValue>,
    /// Every event up to this revision is in.
    applied: i64,
}

pub struct Cache {
    state: RwLock<State>,
    changed: watch::Sender<()>,
}

/// Every owner and node by name, sorted.
pub struct Snapshot {
    pub owners: Vec<(String, Owner)>,
    pub nodes: Vec<(String, NodeValue)>,
}

/// A `queried/<service>` mark written by `node`.
pub struct Queried {
    pub service: String,
    pub node: String,
}

fn owner_of(kv: &KeyValue) -> Option<Owner> {
    let v = OwnerValue::parse(kv.value())?;
    Some(Owner {
        node: v.node.into(),
        running: v.running,
        lease: kv.lease(),
        rev: kv.mod_revision(),
    })
}

impl Cache {
    pub fn new() -> Cache {
        Cache {
            state: RwLock::new(State::default()),
            changed: watch::channel(()).0,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn owner(&self, service: &str) -> Option<Owner> {
        self.read().owners.get(service).cloned()
    }

    /// Wakes when anything changes; subscribe before looking, so no change is missed.
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// Replaces everything with a full read at `rev` (start, or a watch that broke).
    pub fn reset(&self, keys: &Keys, kvs: &[KeyValue], rev: i64) {
        let mut owners = HashMap::new();
        let mut nodes = HashMap::new();
        for kv in kvs {
            match keys.parse(kv.key()) {
                Some(Key::Owner(s)) => {
                    if let Some(o) = owner_of(kv) {
                        owners.insert(s.to_string(), o);
                    }
                }
                Some(Key::Node(n)) => {
                    if let Some(v) = NodeValue::parse(kv.value()) {
                        nodes.insert(n.to_string(), v);
                    }
                }
                _ => {}
            }
        }
        *self.write() = State {
            owners,
            nodes,
            applied: rev,
        };
        self.changed.send_replace(());
    }

    /// Applies one watch response's events; returns the `queried` marks among them.
    pub fn apply(&self, keys: &Keys, events: &[etcd_client::Event], rev: i64) -> Vec<Queried> {
        let mut marks = Vec::new();
        {
            let mut st = self.write();
            for ev in events {
                let Some(kv) = ev.kv() else { continue };
                let put = ev.event_type() == EventType::Put;
                match keys.parse(kv.key()) {
                    Some(Key::Owner(s)) => {
                        let newer = st.owners.get(s).is_none_or(|o| o.rev < kv.mod_revision());
                        match (put, owner_of(kv)) {
                            (true, Some(o)) if newer => {
                                st.owners.insert(s.to_string(), o);
                            }
                            (false, _) if newer => {
                                st.owners.remove(s);
                            }
                            _ => {}
                        }
                    }
                    Some(Key::Node(n)) => match NodeValue::parse(kv.value()) {
                        Some(v) if put => {
                            st.nodes.insert(n.to_string(), v);
                        }
                        _ => {
                            st.nodes.remove(n);
                        }
                    },
                    Some(Key::Queried(s)) if put => marks.push(Queried {
                        service: s.to_string(),
                        node: String::from_utf8_lossy(kv.value()).into_owned(),
                    }),
                    _ => {}
                }
            }
            st.applied = st.applied.max(rev);
        }
        self.changed.send_replace(());
        marks
    }

    /// What a transaction told us about `service` before the watch did: kept unless the
    /// watch already delivered that revision or a later one.
    pub fn learn(&self, service: &str, owner: Owner) {
        {
            let mut st = self.write();
            if owner.rev <= st.applied || st.owners.get(service).is_some_and(|o| o.rev >= owner.rev)
            {
                return;
            }
            st.owners.insert(service.to_string(), owner);
        }
        self.changed.send_replace(());
    }

    /// Drops `service`'s entry if it is still the one of revision `rev` (we deleted the key).
    pub fn forget(&self, service: &str, rev: i64) {
        {
            let mut st = self.write();
            if st.owners.get(service).is_none_or(|o| o.rev != rev) {
                return;
            }
            st.owners.remove(service);
        }
        self.changed.send_replace(());
    }

    /// The services `node` owns under `lease`.
    pub fn owned_by(&self, node: &str, lease: i64) -> Vec<String> {
        self.read()
            .owners
            .iter()
            .filter(|(_, o)| &*o.node == node && o.lease == lease)
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// The node with the most room, other than `me`, and where it takes DNS queries.
    pub fn roomiest(&self, me: &str) -> Option<(String, SocketAddr)> {
        self.read()
            .nodes
            .iter()
            .filter(|(n, v)| n.as_str() != me && v.free > 0)
            .max_by_key(|(n, v)| (v.free, std::cmp::Reverse((*n).clone())))
            .map(|(n, v)| (n.clone(), v.dns))
    }

    /// Whether `ip` is a peer's DNS address (a query relayed by a peer is never relayed on).
    pub fn is_peer(&self, ip: std::net::IpAddr) -> bool {
        self.read().nodes.values().any(|v| v.dns.ip() == ip)
    }

    /// Every owner and node, sorted, for the admin API.
    pub fn view(&self) -> Snapshot {
        let st = self.read();
        let mut owners: Vec<_> = st
            .owners
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        owners.sort_by(|a, b| a.0.cmp(&b.0));
        let mut nodes: Vec<_> = st.nodes.iter().map(|(k, v)| (k.clone(), *v)).collect();
        nodes.sort_by(|a, b| a.0.cmp(&b.0));
        Snapshot { owners, nodes }
    }
}
