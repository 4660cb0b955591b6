//! A cluster host answers ARP for the service addresses it owns on its uplink: a proxy
//! neighbour entry per address (the kernel answers with the uplink's MAC, then routes the
//! packets into the instance's tap), and a gratuitous ARP when it takes an address over, so
//! that clients drop the previous owner's MAC at once.
//!
//! Our entries carry protocol [`PROXY_PROTOCOL`] (NDA_PROTOCOL), the way our links carry
//! their alias: a summond restarted after a crash removes the ones it left.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage,
};
use rtnetlink::packet_route::route::RouteProtocol;

use super::netlink::{is_errno, nl};
use super::{NetError, Netlink};

/// The NDA_PROTOCOL of summond's proxy entries ('S'; the kernel stores it and does not
/// interpret it).
pub const PROXY_PROTOCOL: u8 = 0x53;

/// The uplink as the kernel knows it.
#[derive(Debug, Clone, Copy)]
pub struct Uplink {
    pub index: u32,
    pub mac: [u8; 6],
}

impl Netlink {
    /// Index and MAC of the interface `name`.
    pub async fn uplink(&self, name: &str) -> Result<Uplink, NetError> {
        let mut links = self
            .handle()
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        let msg = links
            .try_next()
            .await
            .map_err(nl(format!("looking up interface {name}")))?
            .ok_or_else(|| NetError::Io {
                what: format!("interface {name}"),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })?;
        let mac = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(m) if m.len() == 6 => Some([m[0], m[1], m[2], m[3], m[4], m[5]]),
            _ => None,
        });
        let mac = mac.ok_or_else(|| NetError::Io {
            what: format!("interface {name} has no Ethernet address"),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
        Ok(Uplink {
            index: msg.header.index,
            mac,
        })
    }

    /// Adds (or keeps) our proxy entry for `ip` on link `index`.
    pub async fn add_proxy(&self, index: u32, ip: Ipv4Addr) -> Result<(), NetError> {
        let mut req = self
            .handle()
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .flags(NeighbourFlags::Proxy)
            .replace();
        req.message_mut()
            .attributes
            .push(NeighbourAttribute::Protocol(RouteProtocol::from(
                PROXY_PROTOCOL,
            )));
        req.execute()
            .await
            .map_err(nl(format!("adding proxy neighbour {ip} on link {index}")))
    }

    /// Removes the proxy entry for `ip` on link `index`; one that is gone is not an error.
    pub async fn del_proxy(&self, index: u32, ip: Ipv4Addr) -> Result<(), NetError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = rtnetlink::packet_route::AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.header.flags = NeighbourFlags::Proxy;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        match self.handle().neighbours().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ENOENT) => Ok(()),
            Err(e) => Err(nl(format!("removing proxy neighbour {ip} on link {index}"))(e)),
        }
    }

    /// Our proxy entries (protocol [`PROXY_PROTOCOL`]) on link `index`.
    pub async fn marked_proxies(&self, index: u32) -> Result<Vec<Ipv4Addr>, NetError> {
        let mut out = Vec::new();
        let mut dump = self.handle().neighbours().get().proxies().execute();
        while let Some(msg) = dump
            .try_next()
            .await
            .map_err(nl("listing proxy neighbours"))?
        {
            if msg.header.ifindex != index {
                continue;
            }
            let ours = msg.attributes.iter().any(
                |a| matches!(a, NeighbourAttribute::Protocol(p) if u8::from(*p) == PROXY_PROTOCOL),
            );
            let ip = msg.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            if let (true, Some(ip)) = (ours, ip) {
                out.push(ip);
            }
        }
        Ok(out)
    }
}

/// A gratuitous ARP request ("who has IP? tell IP", from the uplink's MAC), broadcast on the
/// uplink: neighbours that cache `ip` now point it at this host.
pub fn gratuitous_arp(uplink: Uplink, ip: Ipv4Addr) -> std::io::Result<()> {
    let frame = garp_frame(uplink.mac, ip);
    let proto = (libc::ETH_P_ARP as u16).to_be();
    // SAFETY: plain socket(2) call; the fd is owned by `fd` below on success.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd that nothing else owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value to fill in.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = uplink.index as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: `frame` and `addr` are valid for the lengths given for the whole call, and the
    // fd is open (owned by `fd`). MSG_DONTWAIT: a full device queue fails the send (logged by
    // the caller) instead of blocking the tokio worker.
    let n = unsafe {
        libc::sendto(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            frame.as_ptr().cast(),
            frame.len(),
            libc::MSG_DONTWAIT,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn garp_frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    // Target hardware address stays zero; target protocol address = sender's.
    f[38..42].copy_from_slice(&ip.octets());
    f
}

#[cfg(test)]
mod tests {
    #[test]
    fn garp_frame_layout() {
        let f = super::garp_frame([2, 0, 0, 0, 0, 1], "10.77.0.10".parse().unwrap());
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[28..32], &[10, 77, 0, 10]);
        assert_eq!(&f[38..42], &[10, 77, 0, 10]);
        assert_eq!(&f[22..28], &[2, 0, 0, 0, 0, 1]);
    }
}
