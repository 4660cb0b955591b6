//! `[cluster]`: several summond hosts serving one zone through etcd (docs/cluster.md).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::validate::{is_dns_label, Checker};

/// How a service's IP reaches the host that runs its instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterMode {
    /// The owner answers ARP for the service IP on `uplink` (a proxy neighbour entry) and
    /// sends a gratuitous ARP when it takes the service.
    Arp { uplink: String },
    /// The owner's /32 route to the instance is exported by a routing daemon (BIRD, FRR).
    Route,
}

/// A checked `[cluster]`. Its absence means standalone: no etcd is contacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This host's name, unique in the cluster (a DNS label).
    pub node: String,
    /// etcd client endpoints, `http://host:port`.
    pub etcd: Vec<String>,
    /// The TTL of this host's etcd lease: how long its claims outlive its last keep-alive.
    pub lease_ttl: Duration,
    pub mode: ClusterMode,
    /// Where the other hosts send the DNS queries they relay to this one (it has room when
    /// they have none).
    pub advertise: SocketAddr,
}

pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(5);
/// etcd grants no lease shorter than about 1.5 s (its election timeout), and fencing needs a
/// margin below the TTL: whole seconds from 2 on.
pub const MIN_LEASE_TTL_SECS: u64 = 2;
pub const MAX_LEASE_TTL_SECS: u64 = 3600;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub node: Spanned<String>,
    pub etcd: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub lease_ttl: Option<Spanned<String>>,
    pub mode: Spanned<String>,
    #[serde(default)]
    pub uplink: Option<Spanned<String>>,
    #[serde(default)]
    pub advertise: Option<Spanned<String>>,
}

/// Checks `[cluster]`; `dns_listen` gives the default of `advertise`.
pub(super) fn check(
    c: &mut Checker<'_>,
    raw: &RawCluster,
    dns_listen: &[SocketAddr],
) -> Option<ClusterConfig> {
    let mut ok = true;
    let node = raw.node.get_ref().trim().to_ascii_lowercase();
    if !is_dns_label(&node) {
        c.err(
            &raw.node,
            format!(
                "cluster.node: expected a host name of letters, digits and '-' (at most 63), found {:?}",
                raw.node.get_ref()
            ),
        );
        ok = false;
    }
    let mut etcd = Vec::new();
    if raw.etcd.get_ref().is_empty() {
        c.err(
            &raw.etcd,
            "cluster.etcd: expected at least one endpoint like \"http://10.0.0.1:2379\"",
        );
        ok = false;
    }
    for e in raw.etcd.get_ref() {
        match endpoint(e.get_ref()) {
            Some(url) => etcd.push(url),
            None => {
                c.err(
                    e,
                    format!(
                        "cluster.etcd: expected an endpoint like \"http://10.0.0.1:2379\", found {:?}",
                        e.get_ref()
                    ),
                );
                ok = false;
            }
        }
    }
    let lease_ttl = match &raw.lease_ttl {
        None => DEFAULT_LEASE_TTL,
        Some(v) => match humantime::parse_duration(v.get_ref().trim()) {
            Ok(d)
                if d.subsec_nanos() == 0
                    && (MIN_LEASE_TTL_SECS..=MAX_LEASE_TTL_SECS).contains(&d.as_secs()) =>
            {
                d
            }
            _ => {
                c.err(
                    v,
                    format!(
                        "cluster.lease_ttl: expected whole seconds from {MIN_LEASE_TTL_SECS}s to {MAX_LEASE_TTL_SECS}s like \"5s\", found {:?}",
                        v.get_ref()
                    ),
                );
                ok = false;
                DEFAULT_LEASE_TTL
            }
        },
    };
    let mode = match (raw.mode.get_ref().as_str(), &raw.uplink) {
        ("arp", Some(u)) => {
            let name = u.get_ref().trim();
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
                c.err(
                    u,
                    format!(
                        "cluster.uplink: expected an interface name (at most 15 bytes), found {:?}",
                        u.get_ref()
                    ),
                );
                ok = false;
            }
            ClusterMode::Arp {
                uplink: name.to_string(),
            }
        }
        ("arp", None) => {
            c.err(
                &raw.mode,
                "cluster.mode: \"arp\" needs cluster.uplink, the interface facing the clients",
            );
            ok = false;
            ClusterMode::Route
        }
        ("route", Some(u)) => {
            c.err(
                u,
                "cluster.uplink: only used with mode = \"arp\" (with \"route\" the routing daemon picks the interfaces)",
            );
            ok = false;
            ClusterMode::Route
        }
        ("route", None) => ClusterMode::Route,
        (other, _) => {
            c.err(
                &raw.mode,
                format!("cluster.mode: expected \"arp\" or \"route\", found {other:?}"),
            );
            ok = false;
            ClusterMode::Route
        }
    };
    let advertise = match &raw.advertise {
        Some(a) => c.socket(a, "cluster.advertise", 53),
        None => {
            let usable = dns_listen
                .iter()
                .find(|a| !a.ip().is_unspecified() && !a.ip().is_loopback())
                .copied();
            if usable.is_none() {
                c.err(
                    &raw.node,
                    "cluster.advertise: needed when dns.listen has no address the other hosts can reach (only loopback or unspecified ones)",
                );
            }
            usable
        }
    };
    let advertise = advertise?;
    ok.then_some(ClusterConfig {
        node,
        etcd,
        lease_ttl,
        mode,
        advertise,
    })
}

/// `http://host:port` (TLS endpoints are not supported yet); returned without a trailing '/'.
fn endpoint(s: &str) -> Option<String> {
    let s = s.trim().trim_end_matches('/');
    let rest = s.strip_prefix("http://")?;
    let (host, port) = rest.rsplit_once(':')?;
    if host.is_empty() || host.contains('/') || port.parse::<u16>().ok()? == 0 {
        return None;
    }
    Some(s.to_string())
}
