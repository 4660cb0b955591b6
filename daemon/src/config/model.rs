//! The TOML file as written by the operator. Only shape and types are checked here;
//! `validate.rs` turns it into the checked [`super::Config`].

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub dns: RawDns,
    pub network: RawNetwork,
    #[serde(default)]
    pub daemon: Option<RawDaemon>,
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub limits: Option<RawLimits>,
    #[serde(default)]
    pub kvm: Option<RawKvm>,
    #[serde(default)]
    pub cluster: Option<super::cluster::RawCluster>,
    #[serde(default, rename = "service")]
    pub services: Vec<Spanned<RawService>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    pub listen: Spanned<Vec<Spanned<String>>>,
    pub zone: Spanned<String>,
    #[serde(default)]
    pub ttl: Option<Spanned<u32>>,
    #[serde(default)]
    pub upstream: Vec<Spanned<String>>,
    /// Host name of the zone's name server (NS and SOA MNAME); `ns.<zone>` by default.
    #[serde(default)]
    pub nameserver: Option<Spanned<String>>,
    /// Address answered for the name server when it lies inside the zone.
    #[serde(default)]
    pub nameserver_ip: Option<Spanned<String>>,
    #[serde(default)]
    pub tcp_max_clients: Option<Spanned<u32>>,
    #[serde(default)]
    pub max_forwards: Option<Spanned<u32>>,
    #[serde(default)]
    pub forward_allow: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub rrl: Option<RawRrl>,
}

/// `[dns.rrl]`: response-rate limiting.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRrl {
    #[serde(default)]
    pub rate: Option<Spanned<u32>>,
    #[serde(default)]
    pub slip: Option<Spanned<u32>>,
    #[serde(default)]
    pub ipv4_prefix: Option<Spanned<u8>>,
    #[serde(default)]
    pub ipv6_prefix: Option<Spanned<u8>>,
    #[serde(default)]
    pub whitelist: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub table_size: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    pub subnet: Spanned<String>,
    pub gateway: Spanned<String>,
    #[serde(default)]
    pub txqueuelen: Option<Spanned<u32>>,
    #[serde(default)]
    pub spare_taps: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    /// The lock that makes one summond per host state (taps, instances).
    #[serde(default)]
    pub lock_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Spanned<String>,
    /// A file holding the bearer token every request but /metrics and /healthz needs.
    #[serde(default)]
    pub token_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    #[serde(default)]
    pub max_instances: Option<Spanned<u32>>,
    #[serde(default)]
    pub max_concurrent_boots: Option<Spanned<u32>>,
    #[serde(default)]
    pub backoff_initial: Option<Spanned<String>>,
    #[serde(default)]
    pub backoff_max: Option<Spanned<String>>,
    /// CPU bandwidth of each guest, `"N%"` of one core.
    #[serde(default)]
    pub cpu_quota: Option<Spanned<String>>,
    #[serde(default)]
    pub console_bytes_per_sec: Option<Spanned<u64>>,
    #[serde(default)]
    pub net_frames_per_sec: Option<Spanned<u64>>,
    #[serde(default)]
    pub net_bytes_per_sec: Option<Spanned<u64>>,
    #[serde(default)]
    pub exits_per_sec: Option<Spanned<u64>>,
    /// MiB of guest memory all live instances together may have.
    #[serde(default)]
    pub memory_budget: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKvm {
    /// Prepared VMs (VM + vCPU + memory + parked thread) kept ready for the next cold start.
    #[serde(default)]
    pub prewarm: Option<Spanned<u32>>,
    /// Guests per worker process; 0 runs them in the daemon's own process.
    #[serde(default)]
    pub instances_per_process: Option<Spanned<u32>>,
    /// Host uids (and gids) for the worker processes, `"FIRST-LAST"`: one of its own each.
    #[serde(default)]
    pub worker_uids: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StopMode {
    Destroy,
    Suspend,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReplyMode {
    Immediate,
    Ready,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: Spanned<String>,
    #[serde(default)]
    pub backend: Option<Spanned<String>>,
    pub image: Option<Spanned<String>>,
    pub ip: Spanned<String>,
    #[serde(default)]
    pub mac: Option<Spanned<String>>,
    #[serde(default)]
    pub memory_mib: Option<Spanned<u64>>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub net_args: Option<bool>,
    #[serde(default)]
    pub idle_timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub stop: Option<StopMode>,
    #[serde(default)]
    pub reply: Option<ReplyMode>,
    #[serde(default)]
    pub ready_timeout: Option<Spanned<String>>,
    /// Overrides `[limits] cpu_quota` for this service.
    #[serde(default)]
    pub cpu_quota: Option<Spanned<String>>,
    /// The `[service.libvirt]` table of a `backend = "libvirt"` service.
    #[serde(default)]
    pub libvirt: Option<Spanned<RawLibvirt>>,
}

/// `libvirt = { uri = "qemu:///system", domain = "legacy-vm" }` and friends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLibvirt {
    /// `qemu:///system`, `xen:///system`, `qemu+ssh://host/system`, ...
    pub uri: Spanned<String>,
    /// An existing domain (name or UUID). Without it a transient domain is generated from the
    /// service's image, memory and args.
    #[serde(default)]
    pub domain: Option<Spanned<String>>,
    /// For generated domains.
    #[serde(default)]
    pub guest: Option<LibvirtGuest>,
    #[serde(default)]
    pub vcpus: Option<Spanned<u32>>,
    /// qemu: firmware ROM for the `pc` machine (qboot by default).
    #[serde(default)]
    pub firmware: Option<String>,
    /// qemu: where serial console logs go (default /var/log/libvirt/qemu).
    #[serde(default)]
    pub console_dir: Option<String>,
    #[serde(default)]
    pub stop: Option<LibvirtStop>,
    /// How long a graceful `stop = "shutdown"` may take before the domain is destroyed.
    #[serde(default)]
    pub shutdown_timeout: Option<Spanned<String>>,
    /// TCP port probed to learn that the guest answers; the held SYNs are released then.
    #[serde(default)]
    pub probe_port: Option<Spanned<u16>>,
}

/// `libvirt.guest`. Read through `String` so that a wrong value names the key (serde's own
/// "unknown variant" does not), still at the value's line and column.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum LibvirtGuest {
    Kvm,
    XenPvh,
    XenPv,
}

impl TryFrom<String> for LibvirtGuest {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "kvm" => Ok(LibvirtGuest::Kvm),
            "xen-pvh" => Ok(LibvirtGuest::XenPvh),
            "xen-pv" => Ok(LibvirtGuest::XenPv),
            _ => Err(format!(
                "service.libvirt.guest: expected \"kvm\", \"xen-pvh\" or \"xen-pv\", found {s:?}"
            )),
        }
    }
}

/// `libvirt.stop`: how a stop ends the domain.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum LibvirtStop {
    Destroy,
    Shutdown,
}

impl TryFrom<String> for LibvirtStop {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "destroy" => Ok(LibvirtStop::Destroy),
            "shutdown" => Ok(LibvirtStop::Shutdown),
            _ => Err(format!(
                "service.libvirt.stop: expected \"destroy\" or \"shutdown\", found {s:?}"
            )),
        }
    }
}
