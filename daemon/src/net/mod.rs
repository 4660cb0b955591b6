//! Network plumbing: one routed point-to-point tap per instance (no shared L2 between guests).

mod cleanup;
pub mod hold;
mod netlink;
mod plumb_error;
pub mod proxy_arp;
mod spare;
mod tap;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use summon_launcher::MacAddr;

pub use crate::config::{tap_name, TAP_PREFIX};
pub use cleanup::remove_leftovers;
pub use netlink::{LinkCounters, NetError, Netlink};
pub use plumb_error::{PlumbError, PlumbStep};
pub use tap::{Tap, TapStep, TAP_GROUP};

/// An instance's host-side network: the new persistent tap (and the fd it was made with, for the
/// launcher) with its route and neighbour entry. Dropping it closes that fd and leaves the link;
/// [`NetPlumber::delete_link`] deletes it.
#[derive(Debug)]
pub struct InstanceNet {
    pub tap: Tap,
    pub guest: Ipv4Addr,
}

/// Creates and removes instance networks.
#[derive(Clone)]
pub struct NetPlumber {
    nl: Netlink,
    gateway: Ipv4Addr,
    txqueuelen: u32,
    /// Alias set on every link we create ([`crate::hostlock::HostLock::link_mark`]).
    mark: String,
    /// Taps of stopped instances kept for their service's next start (`spare.rs`).
    spares: Arc<Mutex<spare::Spares>>,
}

impl NetPlumber {
    /// `spare_taps`: how many taps of stopped instances [`NetPlumber::release`] keeps.
    pub fn new(
        nl: Netlink,
        gateway: Ipv4Addr,
        txqueuelen: u32,
        mark: String,
        spare_taps: usize,
    ) -> NetPlumber {
        NetPlumber {
            nl,
            gateway,
            txqueuelen,
            mark,
            spares: Arc::new(Mutex::new(spare::Spares::new(spare_taps))),
        }
    }

    fn spares(&self) -> std::sync::MutexGuard<'_, spare::Spares> {
        self.spares.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn netlink(&self) -> &Netlink {
        &self.nl
    }

    /// Everything in place before the DNS answer leaves: tap open and up, gateway address,
    /// /32 route and permanent neighbour entry.
    pub async fn setup(
        &self,
        service: &str,
        guest: Ipv4Addr,
        mac: MacAddr,
    ) -> Result<InstanceNet, PlumbError> {
        let name = tap_name(service);
        let spare = self.spares().take(&name);
        let tap = match spare {
            Some(index) => self.reuse(&name, index).await,
            None => None,
        };
        let tap = match tap {
            Some(t) => t,
            None => {
                let tap = Tap::open(&name).map_err(|(step, source)| {
                    let (step, what) = match step {
                        TapStep::Open => (PlumbStep::TapOpen, format!("creating tap {name}")),
                        TapStep::Persist => (PlumbStep::Persist, "TUNSETPERSIST".to_string()),
                    };
                    PlumbError::new(step, &name, NetError::Io { what, source })
                })?;
                restrict_tap_sysctls(&name);
                tap
            }
        };
        let index = tap.index;
        if let Err((step, e)) = self
            .nl
            .setup_p2p(index, self.gateway, guest, mac, self.txqueuelen, &self.mark)
            .await
        {
            let _ = self.nl.delete_link(index).await;
            return Err(PlumbError::new(step, name, e));
        }
        Ok(InstanceNet { tap, guest })
    }
}

impl NetPlumber {
    /// Attaches to the spare tap `name` (link `index`); `None` (and the spare deleted) when it
    /// cannot be had. The stopped instance's process may still be closing its fd of it: a tap
    /// takes one fd at a time, so an attach that finds it busy waits a little.
    async fn reuse(&self, name: &str, index: u32) -> Option<Tap> {
        for _ in 0..20 {
            match Tap::attach(name, index) {
                Ok(t) => return Some(t),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    tracing::debug!(
                        tap = name,
                        "spare tap still held by its last instance; waiting"
                    );
                    tokio::time::sleep(std::time::Duration::from_micros(250)).await;
                }
                Err(e) => {
                    tracing::debug!(tap = name, error = %e, "spare tap not reusable; a new one instead");
                    break;
                }
            }
        }
        if let Err(e) = self.nl.delete_link(index).await {
            tracing::warn!(tap = name, error = %e, "removing a spare tap");
        }
        None
    }

    /// Keeps no spare from now on and deletes those kept (daemon exit, when the taps cannot be
    /// removed as one group).
    pub async fn remove_spares(&self) {
        let spares = self.spares().close();
        for i in spares {
            if let Err(e) = self.nl.delete_link(i).await {
                tracing::warn!(link = i, error = %e, "removing a spare tap");
            }
        }
    }

    /// Deletes `service`'s spare tap, if one is kept (the service left the configuration).
    pub async fn forget(&self, service: &str) {
        let name = tap_name(service);
        let spare = self.spares().take(&name);
        self.delete_taps(&name, spare).await;
    }

    /// Removes or keeps the tap of a stopped instance (link `index`, named `name`): kept down as
    /// its service's spare while there is room (`spare.rs`), deleted otherwise.
    pub async fn release(&self, name: &str, index: u32) {
        let kept = self.spares().limit() > 0 && self.nl.set_link_down(index).await.is_ok();
        let delete = if kept {
            let mut spares = self.spares();
            let delete = spares.put(name, index);
            tracing::debug!(
                tap = name,
                spares = spares.len(),
                "tap kept for its service's next start"
            );
            delete
        } else {
            vec![index]
        };
        self.delete_taps(name, delete).await;
    }

    /// Deletes links `links` of tap `name`; a failure is logged and the rest still go.
    async fn delete_taps(&self, name: &str, links: impl IntoIterator<Item = u32>) {
        for i in links {
            if let Err(e) = self.nl.delete_link(i).await {
                tracing::warn!(tap = name, link = i, error = %e, "removing tap");
            }
        }
    }
}

/// Why guests could not resolve their gateway, if this host says so: the gateway is a local
/// address on `lo`, which the host answers ARP for on a tap only with `arp_ignore` 0 (the
/// kernel takes the larger of `all` and the device's value, so a tap cannot lower it).
pub fn gateway_arp_problem() -> Option<String> {
    let path = "/proc/sys/net/ipv4/conf/all/arp_ignore";
    let v = std::fs::read_to_string(path).ok()?;
    (v.trim() != "0").then(|| {
        format!(
            "{path} is {}: the host will not answer the guests' ARP for their gateway (an address \
             on lo), so guests cannot reach anything beyond their tap; set it to 0",
            v.trim()
        )
    })
}

/// Strict reverse-path filtering on the tap: a guest cannot send with another guest's (or any
/// other) source address. IPv6 off on the tap (guests are IPv4-only): otherwise the host's own
/// router solicitations and MLD reports go to the guest, wake it, and count as traffic that
/// keeps an idle instance from being reaped. Best effort: a read-only /proc loses only this.
fn restrict_tap_sysctls(name: &str) {
    for (path, value) in [
        (format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1"),
        (format!("/proc/sys/net/ipv4/conf/{name}/rp_filter"), "1"),
    ] {
        if let Err(e) = std::fs::write(&path, value) {
            tracing::debug!(%path, error = %e, "could not set tap sysctl");
        }
    }
}

impl NetPlumber {
    /// Removes a link the daemon made but holds no fd of (a persistent tap), by index.
    pub async fn delete_link(&self, index: u32) -> Result<(), NetError> {
        self.nl.delete_link(index).await
    }

    /// Removes every tap this daemon made, in one batch (daemon exit): `Ok(false)` when the
    /// kernel cannot delete by group, and the caller removes them one by one.
    pub async fn delete_all_taps(&self) -> Result<bool, NetError> {
        self.nl.delete_group_if_marked(TAP_GROUP, &self.mark).await
    }

    /// Packets the host has sent into each of these links (towards the guest: a tap's tx
    /// counter), by link index; links it cannot read are missing. One netlink dump.
    pub async fn towards_guest(&self, links: &[u32]) -> HashMap<u32, u64> {
        match self.nl.tx_packets(links).await {
            Ok(counts) => counts,
            Err(e) => {
                tracing::debug!(error = %e, "reading tap counters");
                HashMap::new()
            }
        }
    }
}
