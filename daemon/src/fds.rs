//! The process's file-descriptor budget: one limit (RLIMIT_NOFILE), split so that network
//! clients can never take the descriptors an instance needs to boot.
//!
//! The arithmetic, with `limit` the soft RLIMIT_NOFILE after [`raise_nofile`]:
//!
//! ```text
//! daemon    = DAEMON_FDS                        (stdio, epoll, signals, netlink, listeners,
//!                                                /dev/kvm, logs, libraries; fixed)
//! rest      = limit - daemon
//! clients   = rest / CLIENT_SHARE_DIVISOR       (a quarter: DNS TCP, forwards, admin)
//!   dns_tcp  = clients / 2
//!   forwards = clients / 4
//!   admin    = clients - dns_tcp - forwards
//! instances = rest - clients                    (the reserve: taps, VMs, vCPUs, boots)
//! instance_capacity = instances / FDS_PER_INSTANCE
//! ```
//!
//! Each client kind is capped by its own share, so the shares add up to at most `clients` and a
//! flood of one kind (idle TCP connections, say) can neither reach the reserve nor starve the
//! other kinds. With `limit = 128`: rest 64, clients 16 (8 TCP, 4 forwards, 4 admin), 48 for
//! instances (6 instances). With systemd's default hard limit of 524288: 131056 client fds and
//! room for 49146 instances.

use std::io;

/// Descriptors kept for the daemon's own, long-lived use.
pub const DAEMON_FDS: u64 = 64;

/// A running KVM instance holds its tap (the daemon's fd and the launcher's duplicate), the VM,
/// the vCPU, the vCPU's wake eventfd and its epoll fd; a boot briefly opens the image too. Two
/// more for slack (a prepared VM waiting in the prewarm pool holds fewer).
pub const FDS_PER_INSTANCE: u64 = 8;

/// Network clients get `1 / CLIENT_SHARE_DIVISOR` of what the daemon does not keep.
pub const CLIENT_SHARE_DIVISOR: u64 = 4;

/// RLIMIT_NOFILE before and after [`raise_nofile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nofile {
    /// The soft limit the process started with.
    pub before: u64,
    /// The soft limit now (the hard limit, unless raising it failed).
    pub soft: u64,
    pub hard: u64,
}

/// Why the descriptor limit could not be read or raised.
#[derive(Debug, thiserror::Error)]
pub enum FdError {
    #[error("getrlimit(RLIMIT_NOFILE): {0}")]
    Get(#[source] io::Error),
    #[error("setrlimit(RLIMIT_NOFILE, {soft}): {source}")]
    Set {
        soft: u64,
        #[source]
        source: io::Error,
    },
}

fn getrlimit() -> Result<libc::rlimit, FdError> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(FdError::Get(io::Error::last_os_error()));
    }
    Ok(r)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (the kernel's `nr_open` caps what the hard
/// limit may be, so the hard limit is always settable). Descriptors above 1024 are safe here:
/// nothing in summond uses `select(2)`.
pub fn raise_nofile() -> Result<Nofile, FdError> {
    let r = getrlimit()?;
    let before = r.rlim_cur;
    if r.rlim_cur < r.rlim_max {
        let new = libc::rlimit {
            rlim_cur: r.rlim_max,
            rlim_max: r.rlim_max,
        };
        // SAFETY: `new` is a valid rlimit read from the kernel; setrlimit only reads it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
            return Err(FdError::Set {
                soft: r.rlim_max,
                source: io::Error::last_os_error(),
            });
        }
    }
    let now = getrlimit()?;
    Ok(Nofile {
        before,
        soft: now.rlim_cur,
        hard: now.rlim_max,
    })
}

/// How many descriptors each user may hold; see the module documentation for the arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    limit: u64,
    clients: u64,
    dns_tcp: u64,
    forwards: u64,
    admin: u64,
    instances: u64,
}

impl FdBudget {
    /// The budget of a process whose soft RLIMIT_NOFILE is `limit`.
    pub fn from_limit(limit: u64) -> FdBudget {
        let rest = limit.saturating_sub(DAEMON_FDS);
        let clients = rest / CLIENT_SHARE_DIVISOR;
        let dns_tcp = clients / 2;
        let forwards = clients / 4;
        FdBudget {
            limit,
            clients,
            dns_tcp,
            forwards,
            admin: clients - dns_tcp - forwards,
            instances: rest - clients,
        }
    }

    /// The budget under the current soft RLIMIT_NOFILE.
    pub fn current() -> Result<FdBudget, FdError> {
        Ok(FdBudget::from_limit(getrlimit()?.rlim_cur))
    }

    /// The soft RLIMIT_NOFILE the budget was computed from.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// All descriptors network clients may hold (the sum of the three shares below).
    pub fn client_fds(&self) -> u64 {
        self.clients
    }

    /// Concurrent DNS TCP connections the budget allows.
    pub fn dns_tcp_connections(&self) -> usize {
        to_usize(self.dns_tcp)
    }

    /// Forwards in flight the budget allows (each holds one socket to an upstream).
    pub fn forwards(&self) -> usize {
        to_usize(self.forwards)
    }

    /// Concurrent admin connections the budget allows.
    pub fn admin_connections(&self) -> usize {
        to_usize(self.admin)
    }

    /// Descriptors reserved for instances and boots.
    pub fn instance_fds(&self) -> u64 {
        self.instances
    }

    /// Instances the reserve holds at [`FDS_PER_INSTANCE`] each.
    pub fn instance_capacity(&self) -> u64 {
        self.instances / FDS_PER_INSTANCE
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_and_never_exceed_the_limit() {
        for limit in [0, 1, 63, 64, 65, 100, 128, 1024, 4096, 524_288, 1 << 40] {
            let b = FdBudget::from_limit(limit);
            let clients = (b.dns_tcp_connections() + b.forwards() + b.admin_connections()) as u64;
            assert_eq!(clients, b.client_fds(), "limit {limit}");
            assert!(
                b.client_fds() + b.instance_fds() + DAEMON_FDS.min(limit) <= limit,
                "limit {limit}"
            );
            assert!(b.instance_fds() >= 3 * b.client_fds(), "limit {limit}");
        }
    }

    #[test]
    fn the_documented_figures() {
        let b = FdBudget::from_limit(128);
        assert_eq!(
            (
                b.client_fds(),
                b.dns_tcp_connections(),
                b.forwards(),
                b.admin_connections()
            ),
            (16, 8, 4, 4)
        );
        assert_eq!((b.instance_fds(), b.instance_capacity()), (48, 6));
        let b = FdBudget::from_limit(524_288);
        assert_eq!(b.client_fds(), 131_056);
        assert_eq!(b.instance_capacity(), 49_146);
        let b = FdBudget::from_limit(10);
        assert_eq!((b.client_fds(), b.instance_capacity()), (0, 0));
    }

    #[test]
    fn raising_reaches_the_hard_limit() {
        let n = raise_nofile().unwrap();
        assert_eq!(n.soft, n.hard);
        assert!(n.before <= n.soft);
        assert_eq!(FdBudget::current().unwrap().limit(), n.soft);
    }
}
