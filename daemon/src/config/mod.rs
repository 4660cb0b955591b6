//! summond's configuration: TOML in, a checked [`Config`] out, or errors with line and column.

mod error;
mod model;
#[cfg(test)]
mod tests;
mod validate;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use summon_launcher::MacAddr;

pub use error::{line_col, ConfigError, Problem};
pub use model::{ReplyMode, StopMode};

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
}

/// Upper bound of `kvm.prewarm`: each prepared VM holds a parked thread and an idle VM.
pub const MAX_PREWARM: u32 = 64;

impl Default for KvmConfig {
    fn default() -> Self {
        KvmConfig {
            prewarm: summon_launcher::kvm::DEFAULT_PREWARM,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkConfig {
    pub subnet: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub txqueuelen: u32,
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
    /// MiB of guest memory that live instances may have together; `None`: the default share
    /// of the host's memory ([`crate::registry::default_memory_budget_mib`]).
    pub memory_budget_mib: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_instances: 64,
            max_concurrent_boots: 8,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            memory_budget_mib: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Kvm,
    /// A libvirt domain; its settings are in [`ServiceConfig::libvirt`].
    Libvirt,
}

/// One `[[service]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// A single DNS label, lower case.
    pub name: String,
    pub backend: BackendKind,
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
    /// `backend = "libvirt"`: connection URI, existing or generated domain, probe port.
    pub libvirt: Option<crate::libvirt::LibvirtService>,
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
