//! The process's limits: its file-descriptor budget (RLIMIT_NOFILE, split so that network
//! clients can never take the descriptors a boot needs), and what bounds the number of live
//! instances ([`InstanceCapacity`]).
//!
//! A live KVM instance holds no fd in the process's table: its vCPU thread has a table of its
//! own for the VM, the vCPU and the tap (`summon_launcher`'s `kvm/private.rs`), and the tap is
//! persistent, so the daemon closes its fd once the vCPU thread has its copy. A boot holds one
//! or two fds of the process's table for a moment (the tap until the copy, a netlink or sysctl
//! fd). So the fd budget only splits the table between the daemon, clients and boots:
//!
//! ```text
//! daemon    = DAEMON_FDS                        (stdio, epoll, signals, netlink, listeners,
//!                                                logs, libraries; fixed)
//! rest      = limit - daemon
//! clients   = rest / CLIENT_SHARE_DIVISOR       (a quarter: DNS TCP, forwards, admin)
//!   dns_tcp  = clients / 2
//!   forwards = clients / 4
//!   admin    = clients - dns_tcp - forwards
//! boots     = rest - clients                    (transient fds of boots under way)
//! ```
//!
//! Each client kind is capped by its own share, so the shares add up to at most `clients` and a
//! flood of one kind (idle TCP connections, say) can neither reach the boots' reserve nor starve
//! the other kinds. With `limit = 128`: rest 64, clients 16 (8 TCP, 4 forwards, 4 admin), 48 for
//! boots. With systemd's default hard limit of 524288: 131056 client fds.
//!
//! What bounds the live instances instead ([`InstanceCapacity::of_host`]): tasks (each instance
//! is a vCPU thread plus the per-VM `kvm-nx-lpage-recovery` task KVM creates in the process:
//! `kernel.pid_max`, `kernel.threads-max`, RLIMIT_NPROC), and memory maps (about 7 per instance:
//! guest memory split by protection, the vCPU's `kvm_run`, the thread's stack and guard;
//! `vm.max_map_count`, which is per process: with the guests in worker processes it bounds only
//! the guests per worker). Guest memory is `limits.memory_budget`'s.

use std::io;
use std::path::Path;

/// Descriptors kept for the daemon's own, long-lived use.
pub const DAEMON_FDS: u64 = 64;

/// Tasks per live KVM instance: its vCPU thread and the VM's NX huge-page recovery task (a
/// kernel worker counted in the process, created on the first KVM_RUN).
pub const TASKS_PER_INSTANCE: u64 = 2;

/// Memory maps per live KVM instance: 7.15 measured by the density bench (guest memory in a
/// read-only and a writable part, `kvm_run`, the vCPU thread's stack and guard page, and the
/// allocator's share), rounded up.
pub const MAPS_PER_INSTANCE: u64 = 8;

/// Tasks and maps kept for everything else: the daemon's own threads and mappings, and (for the
/// host-wide task limits) the rest of the host.
pub const RESERVED_TASKS: u64 = 4096;
pub const RESERVED_MAPS: u64 = 4096;

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
    boots: u64,
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
            boots: rest - clients,
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

    /// Descriptors reserved for boots under way.
    pub fn boot_fds(&self) -> u64 {
        self.boots
    }
}

/// How many live instances the host's limits allow, and which limit that is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceCapacity {
    pub instances: u64,
    /// The limit that bounds it, as the operator would raise it.
    pub limit: &'static str,
}

/// The limits [`InstanceCapacity::from_limits`] weighs; `None`: not set or unreadable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostLimits {
    pub pid_max: Option<u64>,
    pub threads_max: Option<u64>,
    pub nproc: Option<u64>,
    pub max_map_count: Option<u64>,
}

impl HostLimits {
    /// This host's, read from /proc and getrlimit.
    pub fn read() -> HostLimits {
        let sysctl = |p: &str| -> Option<u64> {
            std::fs::read_to_string(Path::new(p))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `r` is a valid, writable rlimit for the duration of the call.
        let nproc = (unsafe { libc::getrlimit(libc::RLIMIT_NPROC, &mut r) } == 0
            && r.rlim_cur != libc::RLIM_INFINITY)
            .then_some(r.rlim_cur);
        HostLimits {
            pid_max: sysctl("/proc/sys/kernel/pid_max"),
            threads_max: sysctl("/proc/sys/kernel/threads-max"),
            nproc,
            max_map_count: sysctl("/proc/sys/vm/max_map_count"),
        }
    }
}

impl InstanceCapacity {
    /// The smallest of what each limit allows (`u64::MAX`, "none", when no limit is known). The
    /// task limits are host-wide or per user: the figure is what fits if summond is alone
    /// there beyond [`RESERVED_TASKS`]. `vm.max_map_count` is per process: with guests in
    /// worker processes of `per_process` each (0: in summond itself) it bounds nothing as long
    /// as one worker's maps fit.
    pub fn from_limits(l: HostLimits, per_process: u64) -> InstanceCapacity {
        let maps = l.max_map_count.and_then(|v| {
            let fit = v.saturating_sub(RESERVED_MAPS) / MAPS_PER_INSTANCE;
            (per_process == 0 || fit < per_process).then_some(fit)
        });
        let tasks =
            |v: Option<u64>| v.map(|v| v.saturating_sub(RESERVED_TASKS) / TASKS_PER_INSTANCE);
        let candidates = [
            (tasks(l.pid_max), "kernel.pid_max"),
            (tasks(l.threads_max), "kernel.threads-max"),
            (tasks(l.nproc), "RLIMIT_NPROC"),
            (maps, "vm.max_map_count"),
        ];
        candidates
            .into_iter()
            .filter_map(|(n, limit)| n.map(|instances| InstanceCapacity { instances, limit }))
            .min_by_key(|c| c.instances)
            .unwrap_or(InstanceCapacity {
                instances: u64::MAX,
                limit: "none",
            })
    }

    /// This host's (what start-up and `check-config` compare `limits.max_instances` with), for
    /// `kvm.instances_per_process`.
    pub fn of_host(per_process: usize) -> InstanceCapacity {
        InstanceCapacity::from_limits(HostLimits::read(), per_process as u64)
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
                b.client_fds() + b.boot_fds() + DAEMON_FDS.min(limit) <= limit,
                "limit {limit}"
            );
            assert!(b.boot_fds() >= 3 * b.client_fds(), "limit {limit}");
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
        assert_eq!(b.boot_fds(), 48);
        let b = FdBudget::from_limit(524_288);
        assert_eq!(b.client_fds(), 131_056);
        let b = FdBudget::from_limit(10);
        assert_eq!((b.client_fds(), b.boot_fds()), (0, 0));
    }

    #[test]
    fn the_smallest_limit_bounds_the_instances_and_is_named() {
        // This development host: 10,000 fit; vm.max_map_count is what ends it.
        let host = HostLimits {
            pid_max: Some(4_194_304),
            threads_max: Some(192_730),
            nproc: Some(96_365),
            max_map_count: Some(262_144),
        };
        let c = InstanceCapacity::from_limits(host, 0);
        assert_eq!(
            c,
            InstanceCapacity {
                instances: 32_256,
                limit: "vm.max_map_count"
            }
        );
        // The kernel's default max_map_count (65530) ends at about 7,700.
        let c = InstanceCapacity::from_limits(
            HostLimits {
                max_map_count: Some(65_530),
                ..host
            },
            0,
        );
        assert_eq!((c.instances, c.limit), (7_679, "vm.max_map_count"));
        let c = InstanceCapacity::from_limits(
            HostLimits {
                nproc: Some(8_192),
                ..host
            },
            0,
        );
        assert_eq!((c.instances, c.limit), (2_048, "RLIMIT_NPROC"));
        let c = InstanceCapacity::from_limits(HostLimits::default(), 0);
        assert_eq!((c.instances, c.limit), (u64::MAX, "none"));
        // Guests in workers of 100: the map limit is per worker, so the tasks bound.
        let c = InstanceCapacity::from_limits(
            HostLimits {
                max_map_count: Some(65_530),
                ..host
            },
            100,
        );
        assert_eq!((c.instances, c.limit), (46_134, "RLIMIT_NPROC"));
        // ... unless one worker's maps do not fit.
        let c = InstanceCapacity::from_limits(
            HostLimits {
                max_map_count: Some(4_896),
                ..host
            },
            101,
        );
        assert_eq!((c.instances, c.limit), (100, "vm.max_map_count"));
    }

    #[test]
    fn raising_reaches_the_hard_limit() {
        let n = raise_nofile().unwrap();
        assert_eq!(n.soft, n.hard);
        assert!(n.before <= n.soft);
        assert_eq!(FdBudget::current().unwrap().limit(), n.soft);
    }
}
