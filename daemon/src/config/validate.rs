//! Semantic checks: everything serde cannot see (addresses, durations, duplicates, files).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use summon_launcher::libvirt;
use summon_launcher::MacAddr;
use toml::Spanned;

use super::error::LineIndex;
use super::model::{
    LibvirtGuest, LibvirtStop, RawConfig, RawLibvirt, RawRrl, RawService, ReplyMode, StopMode,
};
use super::{
    AdminConfig, Config, DaemonConfig, DnsConfig, IpNet, KvmConfig, LibvirtService, Limits,
    NetworkConfig, Problem, RrlConfig, ServiceBackend, ServiceConfig, DEFAULT_MAX_FORWARDS,
    DEFAULT_SPARE_TAPS, DEFAULT_TCP_MAX_CLIENTS, MAX_CPU_QUOTA_PERCENT, MAX_INSTANCES_PER_PROCESS,
    MAX_PREWARM, MAX_RRL_TABLE_SIZE, MAX_SPARE_TAPS,
};

pub(super) struct Checker<'a> {
    lines: LineIndex<'a>,
    problems: Vec<Problem>,
    /// Whether each image path is a file, asked once per path: thousands of services usually
    /// share a few images.
    images: HashMap<PathBuf, bool>,
}

impl Checker<'_> {
    pub(super) fn err<T>(&mut self, at: &Spanned<T>, msg: impl Into<String>) {
        self.problems
            .push(Problem::at_index(&self.lines, Some(at.span()), msg.into()));
    }

    fn err_plain(&mut self, msg: impl Into<String>) {
        self.problems
            .push(Problem::at_index(&self.lines, None, msg.into()));
    }

    fn is_file(&mut self, p: &Path) -> bool {
        if let Some(&known) = self.images.get(p) {
            return known;
        }
        let known = p.is_file();
        self.images.insert(p.to_path_buf(), known);
        known
    }

    fn duration(&mut self, v: &Option<Spanned<String>>, key: &str, default: Duration) -> Duration {
        let Some(v) = v else { return default };
        match humantime::parse_duration(v.get_ref().trim()) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.err(
                    v,
                    format!("{key}: expected a duration above zero, like \"60s\""),
                );
                default
            }
            Err(e) => {
                self.err(
                    v,
                    format!(
                        "{key}: expected a duration like \"60s\" or \"500ms\", found {:?} ({e})",
                        v.get_ref()
                    ),
                );
                default
            }
        }
    }

    /// `"N%"` of one core, 1 to [`MAX_CPU_QUOTA_PERCENT`], or `"unlimited"` (`None`).
    fn cpu_quota(&mut self, v: &Spanned<String>, key: &str) -> Option<Option<u32>> {
        let s = v.get_ref().trim();
        if s == "unlimited" {
            return Some(None);
        }
        match s.strip_suffix('%').map(|n| n.trim().parse::<u32>()) {
            Some(Ok(p)) if (1..=MAX_CPU_QUOTA_PERCENT).contains(&p) => Some(Some(p)),
            _ => {
                self.err(
                    v,
                    format!(
                        "{key}: expected a share of one core like \"20%\" or \"150%\" (1% to {MAX_CPU_QUOTA_PERCENT}%), or \"unlimited\", found {:?}",
                        v.get_ref()
                    ),
                );
                None
            }
        }
    }

    /// A rate of at least 1 per second.
    fn rate(&mut self, v: &Option<Spanned<u64>>, key: &str, default: Option<u64>) -> Option<u64> {
        match v {
            None => default,
            Some(r) if *r.get_ref() == 0 => {
                self.err(
                    r,
                    format!("{key}: expected a rate of at least 1 per second"),
                );
                default
            }
            Some(r) => Some(*r.get_ref()),
        }
    }

    fn ipv4(&mut self, v: &Spanned<String>, key: &str) -> Option<Ipv4Addr> {
        match v.get_ref().parse::<Ipv4Addr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                self.err(
                    v,
                    format!(
                        "{key}: expected an IPv4 address like \"10.77.0.10\", found {:?}",
                        v.get_ref()
                    ),
                );
                None
            }
        }
    }

    pub(super) fn socket(
        &mut self,
        v: &Spanned<String>,
        key: &str,
        default_port: u16,
    ) -> Option<SocketAddr> {
        let s = v.get_ref();
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Some(a);
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Some(SocketAddr::new(ip, default_port));
        }
        self.err(
            v,
            format!("{key}: expected an address with port like \"127.0.0.1:53\", found {s:?}"),
        );
        None
    }

    /// A list of networks; a bare address is its own /32 or /128.
    fn networks(&mut self, v: &Option<Vec<Spanned<String>>>, key: &str) -> Option<Vec<IpNet>> {
        let v = v.as_ref()?;
        let mut nets = Vec::with_capacity(v.len());
        for n in v {
            let s = n.get_ref().trim();
            match s.parse::<IpNet>() {
                Ok(net) => nets.push(net.trunc()),
                Err(_) => match s.parse::<IpAddr>() {
                    Ok(ip) => nets.push(IpNet::from(ip)),
                    Err(_) => self.err(
                        n,
                        format!("{key}: expected a network like \"192.0.2.0/24\" or \"::1/128\", found {s:?}"),
                    ),
                },
            }
        }
        Some(nets)
    }

    /// A count in `range`, or `default` when absent.
    fn count(
        &mut self,
        v: &Option<Spanned<u32>>,
        key: &str,
        range: std::ops::RangeInclusive<u32>,
        default: u32,
    ) -> u32 {
        match v {
            Some(n) if !range.contains(n.get_ref()) => {
                self.err(
                    n,
                    format!("{key}: expected {} to {}", range.start(), range.end()),
                );
                default
            }
            Some(n) => *n.get_ref(),
            None => default,
        }
    }
}

/// A DNS label: 1..=63 of letters, digits and '-', not starting or ending with '-'.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn normalise_fqdn(s: &str) -> Option<String> {
    let s = s.trim().to_ascii_lowercase();
    let body = s.strip_suffix('.').unwrap_or(&s);
    if body.is_empty() || body.len() > 253 || !body.split('.').all(is_dns_label) {
        return None;
    }
    Some(format!("{body}."))
}

pub(super) fn parse(src: &str, base: &Path) -> Result<Config, Vec<Problem>> {
    let raw: RawConfig = match toml::from_str(src) {
        Ok(raw) => raw,
        Err(e) => {
            return Err(vec![Problem::at(
                src,
                e.span(),
                e.message().trim().to_string(),
            )]);
        }
    };
    let mut c = Checker {
        lines: LineIndex::new(src),
        problems: Vec::new(),
        images: HashMap::new(),
    };

    // [network]
    let mut network = NetworkConfig {
        subnet: Ipv4Addr::UNSPECIFIED,
        prefix: 32,
        gateway: Ipv4Addr::UNSPECIFIED,
        txqueuelen: 1000,
        spare_taps: DEFAULT_SPARE_TAPS,
    };
    let mut network_ok = true;
    let subnet = &raw.network.subnet;
    match subnet.get_ref().split_once('/') {
        Some((a, p)) => match (a.parse::<Ipv4Addr>(), p.parse::<u8>()) {
            (Ok(a), Ok(p)) if (1..=30).contains(&p) => {
                network.subnet = a;
                network.prefix = p;
            }
            _ => {
                c.err(
                    subnet,
                    format!(
                        "network.subnet: expected an IPv4 prefix like \"10.77.0.0/16\" (prefix 1 to 30), found {:?}",
                        subnet.get_ref()
                    ),
                );
                network_ok = false;
            }
        },
        None => {
            c.err(
                subnet,
                format!(
                    "network.subnet: expected an IPv4 prefix like \"10.77.0.0/16\", found {:?}",
                    subnet.get_ref()
                ),
            );
            network_ok = false;
        }
    }
    match c.ipv4(&raw.network.gateway, "network.gateway") {
        Some(gw) => {
            network.gateway = gw;
            if network_ok && !network.contains(gw) {
                c.err(
                    &raw.network.gateway,
                    format!(
                        "network.gateway: {gw} is outside network.subnet {}",
                        subnet.get_ref()
                    ),
                );
            }
        }
        None => network_ok = false,
    }
    if let Some(q) = &raw.network.txqueuelen {
        if *q.get_ref() == 0 {
            c.err(q, "network.txqueuelen: expected a queue length above zero");
        } else {
            network.txqueuelen = *q.get_ref();
        }
    }
    if let Some(n) = &raw.network.spare_taps {
        if *n.get_ref() > MAX_SPARE_TAPS {
            c.err(
                n,
                format!("network.spare_taps: expected at most {MAX_SPARE_TAPS} (0 keeps none)"),
            );
        } else {
            network.spare_taps = *n.get_ref();
        }
    }

    // [dns]
    let mut listen = Vec::new();
    if raw.dns.listen.get_ref().is_empty() {
        c.err(
            &raw.dns.listen,
            "dns.listen: expected at least one address like \"127.0.0.1:53\"",
        );
    }
    for l in raw.dns.listen.get_ref() {
        if let Some(a) = c.socket(l, "dns.listen", 53) {
            listen.push(a);
        }
    }
    let zone = match normalise_fqdn(raw.dns.zone.get_ref()) {
        Some(z) => z,
        None => {
            c.err(
                &raw.dns.zone,
                format!(
                    "dns.zone: expected a domain name like \"svc.test.\", found {:?}",
                    raw.dns.zone.get_ref()
                ),
            );
            "invalid.".to_string()
        }
    };
    let ttl = match &raw.dns.ttl {
        Some(t) if *t.get_ref() > 86_400 => {
            c.err(t, "dns.ttl: expected at most 86400 seconds");
            10
        }
        Some(t) => *t.get_ref(),
        None => 10,
    };
    let mut upstream = Vec::new();
    for u in &raw.dns.upstream {
        if let Some(a) = c.socket(u, "dns.upstream", 53) {
            upstream.push(a);
        }
    }
    let nameserver = match &raw.dns.nameserver {
        Some(n) => match normalise_fqdn(n.get_ref()) {
            Some(n) => n,
            None => {
                c.err(
                    n,
                    "dns.nameserver: expected a host name like \"ns.svc.test.\"",
                );
                format!("ns.{zone}")
            }
        },
        None => format!("ns.{zone}"),
    };
    let nameserver_ip = match &raw.dns.nameserver_ip {
        Some(v) => c.ipv4(v, "dns.nameserver_ip").unwrap_or(network.gateway),
        None => network.gateway,
    };
    let tcp_max_clients = c.count(
        &raw.dns.tcp_max_clients,
        "dns.tcp_max_clients",
        1..=1_000_000,
        DEFAULT_TCP_MAX_CLIENTS as u32,
    ) as usize;
    let max_forwards = c.count(
        &raw.dns.max_forwards,
        "dns.max_forwards",
        1..=1_000_000,
        DEFAULT_MAX_FORWARDS as u32,
    ) as usize;
    let forward_allow = c
        .networks(&raw.dns.forward_allow, "dns.forward_allow")
        .unwrap_or_else(super::loopback_nets);
    let rrl = check_rrl(&mut c, raw.dns.rrl.as_ref());

    // [daemon]
    let mut daemon = DaemonConfig::default();
    if let Some(l) = raw.daemon.as_ref().and_then(|d| d.lock_file.as_ref()) {
        let p = Path::new(l.get_ref().as_str());
        if p.is_absolute() && p.file_name().is_some() {
            daemon.lock_file = p.to_path_buf();
        } else {
            c.err(
                l,
                format!(
                    "daemon.lock_file: expected an absolute file path like \"/run/summond/summond.lock\", found {:?}",
                    l.get_ref()
                ),
            );
        }
    }

    // [admin]
    let admin = raw.admin.as_ref().and_then(|a| {
        let listen = c.socket(&a.listen, "admin.listen", 9100)?;
        let token_file = a.token_file.as_ref().map(|t| {
            let p = Path::new(t.get_ref().as_str());
            if t.get_ref().trim().is_empty() {
                c.err(t, "admin.token_file: expected a file path");
            }
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        });
        // Anyone who reaches the admin API can stop every instance: off the host, only with
        // a token.
        if !listen.ip().is_loopback() && token_file.is_none() {
            c.err(
                &a.listen,
                format!(
                    "admin.listen: {listen} is not a loopback address; set admin.token_file to expose the admin API beyond this host"
                ),
            );
        }
        Some(AdminConfig { listen, token_file })
    });

    // [kvm]
    let mut kvm = KvmConfig::default();
    if let Some(p) = raw.kvm.as_ref().and_then(|k| k.prewarm.as_ref()) {
        if *p.get_ref() > MAX_PREWARM {
            c.err(
                p,
                format!("kvm.prewarm: expected 0 to {MAX_PREWARM} prepared VMs"),
            );
        } else {
            kvm.prewarm = *p.get_ref() as usize;
        }
    }
    if let Some(p) = raw
        .kvm
        .as_ref()
        .and_then(|k| k.instances_per_process.as_ref())
    {
        if *p.get_ref() > MAX_INSTANCES_PER_PROCESS {
            c.err(
                p,
                format!(
                    "kvm.instances_per_process: expected 0 (guests in summond itself) to \
                     {MAX_INSTANCES_PER_PROCESS}"
                ),
            );
        } else {
            kvm.instances_per_process = *p.get_ref() as usize;
        }
    }

    // [limits]
    let mut limits = Limits::default();
    if let Some(l) = &raw.limits {
        if let Some(v) = &l.max_instances {
            let capacity = crate::fds::InstanceCapacity::of_host(kvm.instances_per_process);
            if *v.get_ref() == 0 {
                c.err(v, "limits.max_instances: expected at least 1");
            } else if u64::from(*v.get_ref()) > capacity.instances {
                c.err(
                    v,
                    format!(
                        "limits.max_instances: {} instances do not fit in this host's {}, which holds {} (raise it or lower max_instances)",
                        v.get_ref(),
                        capacity.limit,
                        capacity.instances
                    ),
                );
            } else {
                limits.max_instances = *v.get_ref();
            }
        }
        if let Some(v) = &l.max_concurrent_boots {
            if *v.get_ref() == 0 {
                c.err(v, "limits.max_concurrent_boots: expected at least 1");
            } else {
                limits.max_concurrent_boots = *v.get_ref();
            }
        }
        limits.backoff_initial = c.duration(
            &l.backoff_initial,
            "limits.backoff_initial",
            limits.backoff_initial,
        );
        limits.backoff_max = c.duration(&l.backoff_max, "limits.backoff_max", limits.backoff_max);
        let g = &mut limits.guest;
        if let Some(q) = l
            .cpu_quota
            .as_ref()
            .and_then(|v| c.cpu_quota(v, "limits.cpu_quota"))
        {
            g.cpu_quota_percent = q;
        }
        g.console_bytes_per_sec = c.rate(
            &l.console_bytes_per_sec,
            "limits.console_bytes_per_sec",
            g.console_bytes_per_sec,
        );
        g.tx_frames_per_sec = c.rate(
            &l.net_frames_per_sec,
            "limits.net_frames_per_sec",
            g.tx_frames_per_sec,
        );
        g.tx_bytes_per_sec = c.rate(
            &l.net_bytes_per_sec,
            "limits.net_bytes_per_sec",
            g.tx_bytes_per_sec,
        );
        g.exits_per_sec = c.rate(&l.exits_per_sec, "limits.exits_per_sec", g.exits_per_sec);
        if let Some(v) = &l.memory_budget {
            if *v.get_ref() < 2 {
                c.err(
                    v,
                    "limits.memory_budget: expected MiB of guest memory, at least 2",
                );
            } else {
                limits.memory_budget_mib = Some(*v.get_ref());
            }
        }
    }

    if let Some(u) = raw.kvm.as_ref().and_then(|k| k.worker_uids.as_ref()) {
        check_worker_uids(&mut c, u, &mut kvm, &limits);
    }

    // [[service]]
    let mut services = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut ips: HashMap<Ipv4Addr, String> = HashMap::new();
    let mut taps: HashMap<String, String> = HashMap::new();
    let ns_label = nameserver
        .strip_suffix(&format!(".{zone}"))
        .map(str::to_string);
    for s in &raw.services {
        if let Some(svc) = check_service(&mut c, s, base, &network, network_ok, &limits) {
            if let Some(prev) = names.insert(svc.name.clone(), s.span().start) {
                let (prev, _) = c.lines.line_col(prev);
                c.err(
                    &s.get_ref().name,
                    format!(
                        "service.name: duplicate service {:?} (first defined on line {prev})",
                        svc.name
                    ),
                );
            }
            if ns_label.as_deref() == Some(svc.name.as_str()) {
                c.err(
                    &s.get_ref().name,
                    format!(
                        "service.name: {:?} is the zone's name server ({nameserver})",
                        svc.name
                    ),
                );
            }
            // Long names are shortened with a 20-bit hash to fit IFNAMSIZ; among thousands of
            // services two can meet, and the second would fail every boot with EBUSY.
            let tap = super::tap_name(&svc.name);
            if let Some(other) = taps.get(&tap).filter(|o| **o != svc.name) {
                c.err(
                    &s.get_ref().name,
                    format!(
                        "service.name: {:?} gets the interface name {tap}, like service {other:?}; rename one of them",
                        svc.name
                    ),
                );
            } else {
                taps.insert(tap, svc.name.clone());
            }
            if let Some(other) = ips.insert(svc.ip, svc.name.clone()) {
                c.err(
                    &s.get_ref().ip,
                    format!(
                        "service.ip: {} is already used by service {other:?}",
                        svc.ip
                    ),
                );
            }
            services.push(svc);
        }
    }
    if raw.services.is_empty() {
        c.err_plain("no [[service]] defined: expected at least one");
    }

    // [cluster]
    let cluster = raw
        .cluster
        .as_ref()
        .and_then(|r| super::cluster::check(&mut c, r, &listen));

    if c.problems.is_empty() {
        Ok(Config {
            dns: DnsConfig {
                listen,
                zone,
                ttl,
                upstream,
                nameserver,
                nameserver_ip,
                tcp_max_clients,
                max_forwards,
                forward_allow,
                rrl,
            },
            network,
            daemon,
            admin,
            limits,
            kvm,
            services,
            cluster,
        })
    } else {
        Err(c.problems)
    }
}

fn check_rrl(c: &mut Checker<'_>, raw: Option<&RawRrl>) -> RrlConfig {
    let mut rrl = RrlConfig::default();
    let Some(r) = raw else { return rrl };
    rrl.rate = c.count(&r.rate, "dns.rrl.rate", 0..=10_000_000, rrl.rate);
    rrl.slip = c.count(&r.slip, "dns.rrl.slip", 0..=100, rrl.slip);
    for (v, key, max, slot) in [
        (
            &r.ipv4_prefix,
            "dns.rrl.ipv4_prefix",
            32,
            &mut rrl.ipv4_prefix,
        ),
        (
            &r.ipv6_prefix,
            "dns.rrl.ipv6_prefix",
            128,
            &mut rrl.ipv6_prefix,
        ),
    ] {
        if let Some(p) = v {
            if (1..=max).contains(p.get_ref()) {
                *slot = *p.get_ref();
            } else {
                c.err(p, format!("{key}: expected a prefix length of 1 to {max}"));
            }
        }
    }
    if let Some(w) = c.networks(&r.whitelist, "dns.rrl.whitelist") {
        rrl.whitelist = w;
    }
    rrl.table_size = c.count(
        &r.table_size,
        "dns.rrl.table_size",
        64..=MAX_RRL_TABLE_SIZE,
        rrl.table_size as u32,
    ) as usize;
    rrl
}

fn check_service(
    c: &mut Checker<'_>,
    s: &Spanned<RawService>,
    base: &Path,
    network: &NetworkConfig,
    network_ok: bool,
    limits: &Limits,
) -> Option<ServiceConfig> {
    let r = s.get_ref();
    let before = c.problems.len();
    let name = r.name.get_ref().to_ascii_lowercase();
    if !is_dns_label(&name) {
        c.err(
            &r.name,
            format!(
                "service.name: expected a DNS label (letters, digits, '-', at most 63), found {:?}",
                r.name.get_ref()
            ),
        );
    }
    let is_libvirt = match r.backend.as_ref().map(|b| b.get_ref().as_str()) {
        None | Some("kvm") => false,
        Some("libvirt") => true,
        Some(other) => {
            let b = r.backend.as_ref().expect("matched Some");
            c.err(
                b,
                format!("service.backend: expected \"kvm\" or \"libvirt\", found {other:?}"),
            );
            false
        }
    };
    let libvirt = match (is_libvirt, &r.libvirt) {
        (false, Some(l)) => {
            c.err(l, "service.libvirt: only valid with backend = \"libvirt\"");
            None
        }
        (true, None) => {
            c.err(
                &r.name,
                format!("service {name:?}: backend = \"libvirt\" needs a `libvirt` table (uri, and domain for an existing domain)"),
            );
            None
        }
        (true, Some(l)) => check_libvirt(c, l.get_ref(), &r.args),
        (false, None) => None,
    };
    // An existing libvirt domain brings its own kernel.
    let needs_image = libvirt
        .as_ref()
        .is_none_or(|l| l.existing_domain().is_none());
    let image = match &r.image {
        Some(img) => {
            let p = Path::new(img.get_ref());
            let p = if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            };
            if !c.is_file(&p) {
                c.err(img, format!("service.image: no such file: {}", p.display()));
            }
            p
        }
        None if needs_image => {
            c.err(&r.name, format!("service {name:?}: missing key `image`"));
            Default::default()
        }
        None => Default::default(),
    };
    let ip = c.ipv4(&r.ip, "service.ip");
    if let Some(ip) = ip {
        if network_ok {
            if !network.contains(ip) {
                c.err(&r.ip, format!("service.ip: {ip} is outside network.subnet"));
            } else if ip == network.gateway {
                c.err(&r.ip, format!("service.ip: {ip} is the gateway address"));
            } else {
                let host = u32::from(ip) & !super::prefix_mask(network.prefix);
                if host == 0 || host == !super::prefix_mask(network.prefix) {
                    c.err(
                        &r.ip,
                        format!("service.ip: {ip} is the subnet's network or broadcast address"),
                    );
                }
            }
        }
    }
    let mac = match &r.mac {
        Some(m) => match m.get_ref().parse::<MacAddr>() {
            Ok(mac) if mac.is_unicast() => mac,
            Ok(_) => {
                c.err(m, "service.mac: expected a unicast MAC (first octet even)");
                MacAddr::new([0; 6])
            }
            Err(_) => {
                c.err(
                    m,
                    format!(
                        "service.mac: expected a MAC like \"02:00:00:00:00:01\", found {:?}",
                        m.get_ref()
                    ),
                );
                MacAddr::new([0; 6])
            }
        },
        None => MacAddr::from_ipv4(ip.unwrap_or(Ipv4Addr::UNSPECIFIED)),
    };
    let memory_mib = match &r.memory_mib {
        Some(m) if !(2..=4096).contains(m.get_ref()) => {
            c.err(m, "service.memory_mib: expected 2 to 4096");
            16
        }
        Some(m) => *m.get_ref(),
        None => 16,
    };
    let net_args = r.net_args.unwrap_or(true);
    let mut args = Vec::new();
    if net_args {
        if let Some(a) = r.args.iter().find(|a| a.starts_with("--ipv4")) {
            c.err(
                &r.name,
                format!("service.args: {a:?} is generated from `ip` and [network]; drop it or set net_args = false"),
            );
        }
        if let Some(ip) = ip {
            args.push(format!("--ipv4={ip}/{}", network.prefix));
            args.push(format!("--ipv4-gateway={}", network.gateway));
        }
    }
    args.extend(r.args.iter().cloned());
    let idle_timeout = c.duration(
        &r.idle_timeout,
        "service.idle_timeout",
        Duration::from_secs(60),
    );
    let ready_timeout = c.duration(
        &r.ready_timeout,
        "service.ready_timeout",
        Duration::from_secs(5),
    );
    let mut guest_limits = limits.guest;
    if let Some(q) = r
        .cpu_quota
        .as_ref()
        .and_then(|v| c.cpu_quota(v, "service.cpu_quota"))
    {
        guest_limits.cpu_quota_percent = q;
    }
    if c.problems.len() != before {
        return None;
    }
    Some(ServiceConfig {
        name,
        backend: match libvirt {
            Some(l) => ServiceBackend::Libvirt(l),
            None => ServiceBackend::Kvm,
        },
        image,
        ip: ip?,
        mac,
        memory_mib,
        args,
        idle_timeout,
        stop: r.stop.unwrap_or(StopMode::Destroy),
        reply: r.reply.unwrap_or(ReplyMode::Immediate),
        ready_timeout,
        limits: guest_limits,
    })
}

/// A `[service.libvirt]` table: the launcher's settings and the probe port (`args` gives the
/// default port, `--port=N`).
fn check_libvirt(c: &mut Checker<'_>, r: &RawLibvirt, args: &[String]) -> Option<LibvirtService> {
    let before = c.problems.len();
    if r.uri.get_ref().is_empty() {
        c.err(
            &r.uri,
            "service.libvirt.uri: expected a libvirt URI like \"qemu:///system\"",
        );
    }
    let timeout = c.duration(
        &r.shutdown_timeout,
        "service.libvirt.shutdown_timeout",
        Duration::from_secs(10),
    );
    let stop = match r.stop {
        None | Some(LibvirtStop::Destroy) => libvirt::StopMode::Destroy,
        Some(LibvirtStop::Shutdown) => libvirt::StopMode::Shutdown { timeout },
    };
    let domain = match &r.domain {
        Some(d) if d.get_ref().is_empty() => {
            c.err(d, "service.libvirt.domain: expected a domain name or UUID");
            return None;
        }
        Some(d) => libvirt::DomainSource::Existing(d.get_ref().clone()),
        None => {
            let kind = match r.guest {
                None | Some(LibvirtGuest::Kvm) => libvirt::GuestKind::Kvm,
                Some(LibvirtGuest::XenPvh) => libvirt::GuestKind::XenPvh,
                Some(LibvirtGuest::XenPv) => libvirt::GuestKind::XenPv,
            };
            let mut g = libvirt::Generated::new(kind);
            if let Some(v) = &r.vcpus {
                if *v.get_ref() == 0 {
                    c.err(v, "service.libvirt.vcpus: must be at least 1");
                }
                g.vcpus = *v.get_ref();
            }
            if let Some(f) = &r.firmware {
                g.firmware = Some(PathBuf::from(f));
            }
            if let Some(d) = &r.console_dir {
                g.console_dir = PathBuf::from(d);
            }
            libvirt::DomainSource::Generated(g)
        }
    };
    let probe_port = match &r.probe_port {
        Some(p) => *p.get_ref(),
        None => args
            .iter()
            .find_map(|a| a.strip_prefix("--port=").and_then(|p| p.parse().ok()))
            .unwrap_or(80),
    };
    if c.problems.len() != before {
        return None;
    }
    Some(LibvirtService {
        launcher: libvirt::LibvirtConfig {
            uri: r.uri.get_ref().clone(),
            domain,
            stop,
        },
        probe_port,
    })
}

/// `kvm.worker_uids = "FIRST-LAST"`: uids above 0, at least one per worker that
/// `limits.max_instances` can need (and a spare being started), guests in workers at all.
fn check_worker_uids(c: &mut Checker, u: &Spanned<String>, kvm: &mut KvmConfig, limits: &Limits) {
    let range = u.get_ref().split_once('-').and_then(|(a, b)| {
        let (first, last) = (a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?);
        (first >= 1 && first <= last && last < u32::MAX).then_some((first, last))
    });
    let Some((first, last)) = range else {
        c.err(
            u,
            format!(
                "kvm.worker_uids: expected \"FIRST-LAST\", uids from 1 to {}, found {:?}",
                u32::MAX - 1,
                u.get_ref()
            ),
        );
        return;
    };
    if kvm.instances_per_process == 0 {
        c.err(
            u,
            "kvm.worker_uids: guests run in summond itself (kvm.instances_per_process = 0)",
        );
        return;
    }
    let count = last - first + 1;
    let needed = (limits.max_instances as usize).div_ceil(kvm.instances_per_process) + 1;
    if (count as usize) < needed {
        c.err(
            u,
            format!(
                "kvm.worker_uids: {count} uids, but limits.max_instances = {} needs {needed} \
                 worker processes of kvm.instances_per_process = {} (one of them a spare)",
                limits.max_instances, kvm.instances_per_process
            ),
        );
        return;
    }
    kvm.worker_uids = Some(summon_launcher::worker::UidRange { first, count });
}
