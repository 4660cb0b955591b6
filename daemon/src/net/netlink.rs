//! The host side of an instance's point-to-point link, through rtnetlink.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use summon_launcher::MacAddr;

use super::PlumbStep;

/// The loopback device's index, the same in every network namespace.
const LOOPBACK_INDEX: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("netlink: {what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub(super) fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Netlink { what, source }
}

pub(super) fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.raw_code() == -errno,
        _ => false,
    }
}

/// Above this many links, one dump of every link is cheaper than one request each.
const DUMP_ABOVE: usize = 16;

#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

/// Packet counters of one link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    pub rx_packets: u64,
    pub tx_packets: u64,
}

impl Netlink {
    /// Opens a netlink socket; its connection task runs on the current tokio runtime.
    pub fn connect() -> Result<Netlink, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| NetError::Io {
            what: "opening a netlink socket".into(),
            source,
        })?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    pub(super) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Link up, marked as ours by its alias, with a queue long enough to hold a client's first burst while the guest boots;
    /// the gateway as /32 on the host side; a /32 route and a permanent neighbour entry for the
    /// guest, so the first SYN is queued in the tap without an ARP round trip.
    pub async fn setup_p2p(
        &self,
        index: u32,
        gateway: Ipv4Addr,
        guest: Ipv4Addr,
        mac: MacAddr,
        txqueuelen: u32,
        mark: &str,
    ) -> Result<(), (PlumbStep, NetError)> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .up()
                    .append_extra_attribute(LinkAttribute::TxQueueLen(txqueuelen))
                    .append_extra_attribute(LinkAttribute::IfAlias(mark.to_string()))
                    .append_extra_attribute(LinkAttribute::Group(super::TAP_GROUP))
                    .build(),
            )
            .execute()
            .await
            .map_err(nl(format!("setting link {index} up")))
            .map_err(|e| (PlumbStep::Link, e))?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(guest, 32)
            .output_interface(index)
            .scope(RouteScope::Link)
            .pref_source(gateway)
            .build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("adding route {guest}/32 via link {index}")))
            .map_err(|e| (PlumbStep::Route, e))?;
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(guest))
            .link_local_address(&mac.octets())
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("adding neighbour {guest} on link {index}")))
            .map_err(|e| (PlumbStep::Neighbour, e))?;
        Ok(())
    }

    /// Makes `addr` a local address of the host, on the loopback device (brought up if it is
    /// not): the guests' gateway. One address for all taps, not one per tap: the same /32 on
    /// thousands of links makes the kernel's local route for it a list of thousands of
    /// entries, walked on every add and delete (docs/benchmarks.md, Density). The host answers
    /// a guest's ARP for it on the guest's tap (a local address, `arp_ignore` 0).
    pub async fn add_host_address(&self, addr: Ipv4Addr) -> Result<(), NetError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(LOOPBACK_INDEX).up().build())
            .execute()
            .await
            .map_err(nl("setting the loopback device up".to_string()))?;
        match self
            .handle
            .address()
            .add(LOOPBACK_INDEX, IpAddr::V4(addr), 32)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
            Err(e) => Err(nl(format!("adding {addr}/32 to the loopback device"))(e)),
        }
    }

    /// Removes what [`Self::add_host_address`] added (daemon exit); gone already is fine.
    pub async fn del_host_address(&self, addr: Ipv4Addr) -> Result<(), NetError> {
        let mut found = self
            .handle
            .address()
            .get()
            .set_link_index_filter(LOOPBACK_INDEX)
            .set_address_filter(IpAddr::V4(addr))
            .execute();
        while let Some(msg) = found
            .try_next()
            .await
            .map_err(nl(format!("looking up {addr} on the loopback device")))?
        {
            match self.handle.address().del(msg).execute().await {
                Ok(()) => {}
                Err(e) if is_errno(&e, libc::EADDRNOTAVAIL) => {}
                Err(e) => return Err(nl(format!("removing {addr} from the loopback device"))(e)),
            }
        }
        Ok(())
    }

    /// Sets a link down: the kernel drops its queue and flushes its routes and neighbour
    /// entries.
    pub async fn set_link_down(&self, index: u32) -> Result<(), NetError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).down().build())
            .execute()
            .await
            .map_err(nl(format!("setting link {index} down")))
    }

    /// Deletes a link; one that is already gone is not an error.
    pub async fn delete_link(&self, index: u32) -> Result<(), NetError> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(()),
            Err(e) => Err(nl(format!("deleting link {index}"))(e)),
        }
    }

    /// Deletes every link of interface group `group` in one request (the kernel unregisters
    /// them as one batch), if every link of the group carries the alias `mark`; returns whether
    /// it did. Another daemon's (or an operator's) link in the group makes it refuse.
    pub async fn delete_group_if_marked(&self, group: u32, mark: &str) -> Result<bool, NetError> {
        let mut links = self.handle.link().get().execute();
        while let Some(msg) = links.try_next().await.map_err(nl("listing links"))? {
            let mut in_group = false;
            let mut ours = false;
            for a in &msg.attributes {
                match a {
                    LinkAttribute::Group(g) => in_group = *g == group,
                    LinkAttribute::IfAlias(a) => ours = a == mark,
                    _ => {}
                }
            }
            if in_group && !ours {
                return Ok(false);
            }
        }
        self.delete_group(group).await?;
        Ok(true)
    }

    async fn delete_group(&self, group: u32) -> Result<(), NetError> {
        let mut req = self.handle.link().del(0);
        req.message_mut()
            .attributes
            .push(LinkAttribute::Group(group));
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(()),
            Err(e) => Err(nl(format!("deleting the links of group {group}"))(e)),
        }
    }

    /// All links whose name starts with `prefix` and whose alias is `mark`, as (index, name).
    pub async fn marked_links(
        &self,
        prefix: &str,
        mark: &str,
    ) -> Result<Vec<(u32, String)>, NetError> {
        let mut out = Vec::new();
        let mut links = self.handle.link().get().execute();
        while let Some(msg) = links.try_next().await.map_err(nl("listing links"))? {
            let alias = msg.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfAlias(a) => Some(a.as_str()),
                _ => None,
            });
            if let Some(name) = link_name(&msg) {
                if name.starts_with(prefix) && alias == Some(mark) {
                    out.push((msg.header.index, name));
                }
            }
        }
        Ok(out)
    }

    /// The tx packet counters (host → guest on a tap) of these links: one request each when
    /// they are few, one dump of every link otherwise. Links that are gone are missing.
    pub async fn tx_packets(&self, links: &[u32]) -> Result<HashMap<u32, u64>, NetError> {
        let mut out = HashMap::with_capacity(links.len());
        if links.len() > DUMP_ABOVE {
            let wanted: HashSet<u32> = links.iter().copied().collect();
            let mut dump = self.handle.link().get().execute();
            while let Some(msg) = dump.try_next().await.map_err(nl("listing links"))? {
                if wanted.contains(&msg.header.index) {
                    out.insert(msg.header.index, link_counters(&msg).tx_packets);
                }
            }
            return Ok(out);
        }
        let reads = links
            .iter()
            .map(|&i| async move { (i, self.counters(i).await) });
        for (index, r) in futures::future::join_all(reads).await {
            if let Some(c) = r? {
                out.insert(index, c.tx_packets);
            }
        }
        Ok(out)
    }

    /// Packet counters of a link, or `None` if it does not exist.
    pub async fn counters(&self, index: u32) -> Result<Option<LinkCounters>, NetError> {
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(link_counters(&msg))),
            Ok(None) => Ok(None),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(nl(format!("reading counters of link {index}"))(e)),
        }
    }
}

fn link_name(msg: &LinkMessage) -> Option<String> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

fn link_counters(msg: &LinkMessage) -> LinkCounters {
    let mut c = LinkCounters::default();
    for a in &msg.attributes {
        match a {
            LinkAttribute::Stats64(s) => {
                return LinkCounters {
                    rx_packets: s.rx_packets,
                    tx_packets: s.tx_packets,
                }
            }
            LinkAttribute::Stats(s) => {
                c = LinkCounters {
                    rx_packets: u64::from(s.rx_packets),
                    tx_packets: u64::from(s.tx_packets),
                }
            }
            _ => {}
        }
    }
    c
}
