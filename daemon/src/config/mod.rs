//! summond's configuration: TOML in, a checked [`Config`] out, or errors with line and column.

mod cluster;
mod error;
mod model;
mod tap_name;
#[cfg(test)]
mod tests;
mod validate;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use summon_launcher::libvirt::{DomainSource, LibvirtConfig};
pub use summon_launcher::GuestLimits;
use summon_launcher::MacAddr;

pub use cluster::{ClusterConfig, ClusterMode, DEFAULT_LEASE_TTL};
pub use error::{line_col, ConfigError, Problem};
pub use ipnet::{IpNet, Ipv4Net, Ipv6Net};
pub use model::{ReplyMode, StopMode};
pub use tap_name::{tap_name, TAP_PREFIX};

/// A checked configuration. Names are lower case; the zone ends with a dot.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub dns: DnsConfig,
    pub network: NetworkConfig,
    pub daemon: DaemonConfig,
    pub admin: Option<AdminConfig>,
    pub limits: Limits,
    pub kvm: KvmConfig,
    pub services: Vec<ServiceConfig>,
    /// `[cluster]`; `None`: standalone, no etcd.
    pub cluster: Option<ClusterConfig>,
}

/// Where summond keeps its host state's lock (`[daemon]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    pub lock_file: PathBuf,
}

/// The lock of the host state when `[daemon] lock_file` is not set (`RuntimeDirectory=summond`).
pub const DEFAULT_LOCK_FILE: &str = "/run/summond/summond.lock";

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            lock_file: PathBuf::from(DEFAULT_LOCK_FILE),
        }
    }
}

/// The admin HTTP listener (`[admin]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// When set, the bearer token in it guards everything but `GET /metrics` and `/healthz`.
    pub token_file: Option<PathBuf>,
}

/// The embedded KVM launcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvmConfig {
    /// Prepared VMs kept ready so `KVM_CREATE_VM`, vCPU creation and the memory slot leave the
    /// cold path (0 disables the pool).
    pub prewarm: usize,
    /// Guests per worker process (`launcher/src/worker/`); 0 runs them in summond's own
    /// process, where per-guest costs grow with the number of guests.
    pub instances_per_process: usize,
    /// The uids (and gids) worker processes run as, one of its own each; `None`: summond's.
    pub worker_uids: Option<summon_launcher::worker::UidRange>,
}

/// Upper bound of `kvm.prewarm`: each prepared VM holds a parked thread and an idle VM.
pub const MAX_PREWARM: u32 = 64;
/// Default of `network.spare_taps`: the services most recently stopped keep their tap for
/// their next start (creating a tap is most of a cold start's plumbing).
pub const DEFAULT_SPARE_TAPS: u32 = 64;
/// Upper bound of `network.spare_taps`: each spare is a net device the kernel keeps.
pub const MAX_SPARE_TAPS: u32 = 4096;
/// Upper bound of `kvm.instances_per_process`.
pub const MAX_INSTANCES_PER_PROCESS: u32 = 4096;
/// Default of `kvm.instances_per_process`: small enough that a start's share of the per-VM
/// costs of its address space stays that of the first hundred guests, large enough that a
/// worker's own memory (a few hundred KiB) is a small share per guest (docs/benchmarks.md).
pub const DEFAULT_INSTANCES_PER_PROCESS: usize = 100;

impl Default for KvmConfig {
    fn default() -> Self {
        KvmConfig {
            prewarm: summon_launcher::kvm::DEFAULT_PREWARM,
            instances_per_process: DEFAULT_INSTANCES_PER_PROCESS,
            worker_uids: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DnsConfig {
    pub listen: Vec<SocketAddr>,
    /// Lower case, with the trailing dot, e.g. `svc.test.`.
    pub zone: String,
    pub ttl: u32,
    pub upstream: Vec<SocketAddr>,
    /// Fully qualified, lower case.
    pub nameserver: String,
    /// Answered for `nameserver` when it lies inside the zone.
    pub nameserver_ip: Ipv4Addr,
    /// Concurrent TCP connections (further ones are accepted and closed at once).
    pub tcp_max_clients: usize,
    /// Forwarded queries waiting for an upstream at once (further ones: SERVFAIL).
    pub max_forwards: usize,
    /// Sources whose out-of-zone queries are forwarded; everyone else gets REFUSED.
    pub forward_allow: Vec<IpNet>,
    pub rrl: RrlConfig,
}

/// The loopback networks: the default of `forward_allow` and `rrl.whitelist`.
pub fn loopback_nets() -> Vec<IpNet> {
    vec![
        IpNet::V4(Ipv4Net::new(Ipv4Addr::LOCALHOST, 8).expect("valid prefix")),
        IpNet::V6(Ipv6Net::new(Ipv6Addr::LOCALHOST, 128).expect("valid prefix")),
    ]
}

/// `[dns.rrl]`: response-rate limiting over UDP (see docs/config.md for the semantics).
#[derive(Debug, Clone, PartialEq)]
pub struct RrlConfig {
    /// Responses per second per (source prefix, response); 0 turns RRL off.
    pub rate: u32,
    /// Every `slip`-th limited response goes out truncated; 0 never, 1 always.
    pub slip: u32,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    /// Sources never limited.
    pub whitelist: Vec<IpNet>,
    /// Buckets in the fixed-size table.
    pub table_size: usize,
}

impl Default for RrlConfig {
    fn default() -> Self {
        RrlConfig {
            rate: 200,
            slip: 2,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
            whitelist: loopback_nets(),
            table_size: DEFAULT_RRL_TABLE_SIZE,
        }
    }
}

/// Knot's default table size (its rule of thumb: 1.2 × the peak queries per second).
pub const DEFAULT_RRL_TABLE_SIZE: usize = 393_241;
/// Upper bound of `rrl.table_size` (at 24 bytes a bucket, 384 MiB).
pub const MAX_RRL_TABLE_SIZE: u32 = 1 << 24;
/// NSD's `tcp-count` default.
pub const DEFAULT_TCP_MAX_CLIENTS: usize = 100;
pub const DEFAULT_MAX_FORWARDS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkConfig {
    pub subnet: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub txqueuelen: u32,
    /// Taps of stopped KVM instances kept (down, detached) for their service's next start.
    pub spare_taps: u32,
}

impl NetworkConfig {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = prefix_mask(self.prefix);
        u32::from(ip) & mask == u32::from(self.subnet) & mask
    }
}

pub fn prefix_mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_instances: u32,
    pub max_concurrent_boots: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// What each guest may consume unless its service says otherwise (`cpu_quota`); the
    /// resolved per-service value is [`ServiceConfig::limits`].
    pub guest: GuestLimits,
    /// MiB of guest memory that live instances may have together; `None`: the default share
    /// of the host's memory (`registry::limits::default_memory_budget_mib`).
    pub memory_budget_mib: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_instances: 64,
            max_concurrent_boots: 8,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            guest: DEFAULT_GUEST_LIMITS,
            memory_budget_mib: None,
        }
    }
}

/// The guest limits when `[limits]` sets none. The rates are wide margins over what `http.hvt`
/// uses when `wrk` saturates it (docs/config.md, "Guest limits", gives the measurement).
pub const DEFAULT_GUEST_LIMITS: GuestLimits = GuestLimits {
    console_bytes_per_sec: Some(65_536),
    tx_frames_per_sec: Some(100_000),
    tx_bytes_per_sec: Some(125_000_000),
    exits_per_sec: Some(100_000),
    cpu_quota_percent: Some(100),
};

/// Upper bound of a `cpu_quota`: 64 cores' worth.
pub const MAX_CPU_QUOTA_PERCENT: u32 = 6400;

/// What runs a service's instances. The daemon picks the service's driver from this once, when
/// the file is loaded or reloaded (`crate::driver`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceBackend {
    /// The embedded KVM launcher.
    Kvm,
    /// A libvirt domain (`[service.libvirt]`).
    Libvirt(LibvirtService),
}

/// A checked `[service.libvirt]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibvirtService {
    /// The launcher's settings: URI, existing or generated domain, how a stop ends it.
    pub launcher: LibvirtConfig,
    /// The TCP port probed to learn that the guest answers: `probe_port`, else the service's
    /// `--port=N` argument, else 80.
    pub probe_port: u16,
}

impl LibvirtService {
    /// The existing domain this service runs, if it does not generate one.
    pub fn existing_domain(&self) -> Option<&str> {
        match &self.launcher.domain {
            DomainSource::Existing(d) => Some(d),
            DomainSource::Generated(_) => None,
        }
    }
}

/// One `[[service]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// A single DNS label, lower case.
    pub name: String,
    pub backend: ServiceBackend,
    pub image: PathBuf,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    pub memory_mib: u64,
    /// The full guest command line, network arguments included when `net_args` is on.
    pub args: Vec<String>,
    pub idle_timeout: Duration,
    pub stop: StopMode,
    pub reply: ReplyMode,
    pub ready_timeout: Duration,
    /// `[limits]`' guest limits with this service's `cpu_quota` applied.
    pub limits: GuestLimits,
}

impl Config {
    /// Reads and checks a file. Relative image paths are taken relative to the file's folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&src, base).map_err(|problems| ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        })
    }

    /// Parses and checks TOML text; `base` resolves relative image paths.
    pub fn parse(src: &str, base: &Path) -> Result<Config, Vec<Problem>> {
        validate::parse(src, base)
    }

    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }
}
