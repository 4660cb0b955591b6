//! Taps opened by the daemon itself through /dev/net/tun, so that the interface exists and
//! queues packets before the guest (and even the DNS answer) is there.

use std::io;
use std::os::fd::OwnedFd;

use summon_launcher::tap;

/// The interface group (IFLA_GROUP) of every link summond creates: one RTM_DELLINK for the
/// group removes them all in one kernel batch at exit, instead of one request (and one RCU
/// grace period) per link. Used only after checking that every link of the group carries this
/// daemon's mark (`Netlink::delete_group_if_marked`).
pub const TAP_GROUP: u32 = 0x736d; // "sm"

/// An open tap: the fd keeps the (non-persistent) interface alive.
#[derive(Debug)]
pub struct Tap {
    pub name: String,
    pub index: u32,
    pub fd: OwnedFd,
}

impl Tap {
    /// Creates (or attaches to) the tap `name` as IFF_TAP | IFF_NO_PI.
    pub fn open(name: &str) -> io::Result<Tap> {
        let fd = tap::open(name, tap::Blocking::Yes)?;
        let index = tap::index(name)?;
        Ok(Tap {
            name: name.to_string(),
            index,
            fd,
        })
    }

    /// A second fd on the same queue, for the launcher; the daemon keeps its own so the
    /// interface outlives a guest that exits, until the daemon has cleaned up.
    pub fn dup_fd(&self) -> io::Result<OwnedFd> {
        self.fd.try_clone()
    }
}
