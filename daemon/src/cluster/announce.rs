//! How a service IP reaches the host that owns it. Mode `arp`: a proxy neighbour entry on the
//! uplink and a gratuitous ARP (`net::proxy_arp`). Mode `route`: nothing to do here, the
//! instance's /32 route exists while it runs and the routing daemon exports it.

use std::net::Ipv4Addr;

use crate::config::ClusterMode;
use crate::net::proxy_arp::{gratuitous_arp, Uplink};
use crate::net::{NetError, Netlink};

pub enum Announcer {
    Arp {
        netlink: Netlink,
        name: String,
        uplink: Uplink,
    },
    Route,
}

impl Announcer {
    /// Looks the uplink up and removes the proxy entries an earlier summond left on it.
    pub async fn new(mode: &ClusterMode, netlink: Netlink) -> Result<Announcer, NetError> {
        let ClusterMode::Arp { uplink: name } = mode else {
            return Ok(Announcer::Route);
        };
        let uplink = netlink.uplink(name).await?;
        let a = Announcer::Arp {
            netlink,
            name: name.clone(),
            uplink,
        };
        let left = a.remove_all().await;
        if left > 0 {
            tracing::warn!(uplink = %name, removed = left, "removed proxy ARP entries left by an earlier summond");
        }
        Ok(a)
    }

    /// This host now serves `ip`.
    pub async fn take(&self, ip: Ipv4Addr) {
        let Announcer::Arp {
            netlink,
            name,
            uplink: u,
        } = self
        else {
            return;
        };
        if let Err(e) = netlink.add_proxy(u.index, ip).await {
            tracing::warn!(uplink = %name, %ip, error = %e, "adding proxy ARP entry");
            return;
        }
        if let Err(e) = gratuitous_arp(*u, ip) {
            tracing::warn!(uplink = %name, %ip, error = %e, "sending gratuitous ARP");
        }
    }

    /// This host no longer serves `ip`.
    pub async fn release(&self, ip: Ipv4Addr) {
        if let Announcer::Arp {
            netlink,
            name,
            uplink: u,
        } = self
        {
            if let Err(e) = netlink.del_proxy(u.index, ip).await {
                tracing::warn!(uplink = %name, %ip, error = %e, "removing proxy ARP entry");
            }
        }
    }

    /// Removes every proxy entry of ours on the uplink; returns how many.
    pub async fn remove_all(&self) -> usize {
        let Announcer::Arp {
            netlink,
            name,
            uplink: u,
        } = self
        else {
            return 0;
        };
        let ips = match netlink.marked_proxies(u.index).await {
            Ok(ips) => ips,
            Err(e) => {
                tracing::warn!(uplink = %name, error = %e, "listing proxy ARP entries");
                return 0;
            }
        };
        for ip in &ips {
            self.release(*ip).await;
        }
        ips.len()
    }
}
