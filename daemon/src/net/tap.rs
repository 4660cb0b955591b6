//! Taps opened by the daemon itself through /dev/net/tun, so that the interface exists and
//! queues packets before the guest (and even the DNS answer) is there.
//!
//! Every tap is persistent (TUNSETPERSIST): the link, its route and neighbour entry live until
//! the daemon deletes the link by netlink (at stop, at exit as one group, or at the next start
//! as a leftover marked as ours), not as long as some fd is open on it. So the daemon keeps no
//! fd per instance: the one it creates the tap with goes to the launcher, whose vCPU thread
//! copies it into its own fd table (the queue, and the packets in it, stay attached throughout)
//! and has the daemon's copy closed.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use summon_launcher::tap;

/// The interface group (IFLA_GROUP) of every link summond creates: one RTM_DELLINK for the
/// group removes them all in one kernel batch at exit, instead of one request (and one RCU
/// grace period) per link. Used only after checking that every link of the group carries this
/// daemon's mark (`Netlink::delete_group_if_marked`).
pub const TAP_GROUP: u32 = 0x736d; // "sm"

/// A new persistent tap and the fd it was created with (its only one, for the launcher).
#[derive(Debug)]
pub struct Tap {
    pub name: String,
    pub index: u32,
    pub fd: OwnedFd,
}

impl Tap {
    /// Creates (or attaches to) the tap `name` as IFF_TAP | IFF_NO_PI and makes it persistent;
    /// on an error nothing is left (the tap goes with its fd).
    pub fn open(name: &str) -> Result<Tap, (TapStep, io::Error)> {
        let fd = tap::open(name, tap::Blocking::Yes).map_err(|e| (TapStep::Open, e))?;
        // Until TUNSETPERSIST, an error here drops the fd and with it the tap.
        let index = tap::index(name).map_err(|e| (TapStep::Open, e))?;
        tap::set_persistent(fd.as_fd()).map_err(|e| (TapStep::Persist, e))?;
        Ok(Tap {
            name: name.to_string(),
            index,
            fd,
        })
    }
}

impl Tap {
    /// Attaches to the existing persistent tap `name`, if it is still link `index` (a spare,
    /// `spare.rs`).
    pub fn attach(name: &str, index: u32) -> io::Result<Tap> {
        let fd = tap::open(name, tap::Blocking::Yes)?;
        if tap::index(name)? != index {
            return Err(io::Error::other(format!(
                "{name} is no longer link {index}"
            )));
        }
        Ok(Tap {
            name: name.to_string(),
            index,
            fd,
        })
    }
}

/// Which part of [`Tap::open`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapStep {
    Open,
    Persist,
}
