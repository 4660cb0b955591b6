//! The cluster's keys in etcd, all under one prefix per zone, and their values (plain text:
//! readable with `etcdctl get --prefix /summon/`).
//!
//! - `owner/<service>` = `"<node> starting|running"`, bound to the owner's lease, created only
//!   if absent: at most one owner per service.
//! - `nodes/<node>` = `"<dns address> <free instances>"`, bound to the node's lease.
//! - `queried/<service>` = `"<node>"`: a query answered by a host that is not the owner, written
//!   at most once per DNS TTL per service per host, so that the owner does not reap an
//!   instance other hosts still hand out.

use std::net::SocketAddr;

pub struct Keys {
    prefix: String,
}

/// What a key under the prefix names.
#[derive(Debug, PartialEq, Eq)]
pub enum Key<'a> {
    Owner(&'a str),
    Node(&'a str),
    Queried(&'a str),
}

impl Keys {
    /// `zone` with its trailing dot, e.g. `svc.test.` → `/summon/svc.test/`.
    pub fn new(zone: &str) -> Keys {
        Keys {
            prefix: format!("/summon/{}/", zone.trim_end_matches('.')),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn owner(&self, service: &str) -> String {
        format!("{}owner/{service}", self.prefix)
    }

    pub fn node(&self, node: &str) -> String {
        format!("{}nodes/{node}", self.prefix)
    }

    pub fn queried(&self, service: &str) -> String {
        format!("{}queried/{service}", self.prefix)
    }

    pub fn parse<'a>(&self, key: &'a [u8]) -> Option<Key<'a>> {
        let rest = std::str::from_utf8(key).ok()?.strip_prefix(&self.prefix)?;
        let (kind, name) = rest.split_once('/')?;
        match kind {
            "owner" => Some(Key::Owner(name)),
            "nodes" => Some(Key::Node(name)),
            "queried" => Some(Key::Queried(name)),
            _ => None,
        }
    }
}

/// The value of `owner/<service>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerValue {
    pub node: String,
    /// The owner's instance runs and its address is announced (ARP or route): other hosts may
    /// answer with the service's IP.
    pub running: bool,
}

impl OwnerValue {
    pub fn encode(&self) -> String {
        format!(
            "{} {}",
            self.node,
            if self.running { "running" } else { "starting" }
        )
    }

    pub fn parse(v: &[u8]) -> Option<OwnerValue> {
        let (node, state) = std::str::from_utf8(v).ok()?.split_once(' ')?;
        let running = match state {
            "running" => true,
            "starting" => false,
            _ => return None,
        };
        Some(OwnerValue {
            node: node.to_string(),
            running,
        })
    }
}

/// The value of `nodes/<node>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeValue {
    /// Where relayed DNS queries go.
    pub dns: SocketAddr,
    /// Instances it would admit now.
    pub free: u32,
}

impl NodeValue {
    pub fn encode(&self) -> String {
        format!("{} {}", self.dns, self.free)
    }

    pub fn parse(v: &[u8]) -> Option<NodeValue> {
        let (dns, free) = std::str::from_utf8(v).ok()?.split_once(' ')?;
        Some(NodeValue {
            dns: dns.parse().ok()?,
            free: free.parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_reject_foreign_ones() {
        let k = Keys::new("svc.test.");
        assert_eq!(k.owner("web"), "/summon/svc.test/owner/web");
        assert_eq!(k.parse(k.owner("web").as_bytes()), Some(Key::Owner("web")));
        assert_eq!(k.parse(k.node("a").as_bytes()), Some(Key::Node("a")));
        assert_eq!(
            k.parse(k.queried("web").as_bytes()),
            Some(Key::Queried("web"))
        );
        assert_eq!(k.parse(b"/summon/other.zone/owner/web"), None);
        assert_eq!(k.parse(b"/summon/svc.test/what/web"), None);
        assert_eq!(k.parse(&[0xff, 0xfe]), None);
    }

    #[test]
    fn values_round_trip_and_bad_ones_are_none() {
        let o = OwnerValue {
            node: "a".into(),
            running: true,
        };
        assert_eq!(OwnerValue::parse(o.encode().as_bytes()), Some(o));
        assert_eq!(OwnerValue::parse(b"a sleeping"), None);
        assert_eq!(OwnerValue::parse(b""), None);
        let n = NodeValue {
            dns: "10.0.0.1:53".parse().unwrap(),
            free: 7,
        };
        assert_eq!(NodeValue::parse(n.encode().as_bytes()), Some(n));
        assert_eq!(NodeValue::parse(b"10.0.0.1:53 many"), None);
    }
}
