//! Helpers of the cluster end-to-end tests: one L2 segment (a bridge in its own namespace)
//! joining namespaces by veth pairs, a real multi-member etcd on it, and summond "hosts" with
//! `[cluster]` on it, plus a client namespace.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;

use crate::daemon::{self, query_udp, Daemon};
use crate::netns::{ip, NetNs};
use crate::require;

/// The segment's network; hosts, etcd members and the client have addresses in it.
pub const LAN_PREFIX: &str = "10.99.0";
/// The client's address on the segment.
pub const CLIENT: &str = "10.99.0.100";

/// etcd, and the tools the cluster tests need; false = skip (never under CI=true).
/// `bird` (BIRD 2) for the route-mode test; false = skip (never under CI=true).
pub fn bird_prerequisites(what: &str) -> bool {
    prerequisites(what) && require::check(what, require::tool("bird"))
}

pub fn prerequisites(what: &str) -> bool {
    daemon::prerequisites(what)
        && require::check(what, require::tool("etcd"))
        && require::check(what, require::tool("sysctl"))
}

/// A bridge in a namespace of its own: the L2 segment.
pub struct Lan {
    ns: NetNs,
    ports: std::sync::atomic::AtomicU32,
}

impl Lan {
    pub fn new() -> Lan {
        let ns = NetNs::new("lan");
        ip(&["-n", ns.name(), "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", ns.name(), "link", "set", "br0", "up"]);
        Lan {
            ns,
            ports: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// Plugs `ns` into the segment as `eth0` with `addrs` (each /24 in the segment).
    pub fn attach(&self, ns: &NetNs, addrs: &[&str]) {
        let n = self
            .ports
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = format!("port{n}");
        ip(&[
            "-n",
            self.ns.name(),
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ]);
        ip(&["-n", self.ns.name(), "link", "set", &port, "master", "br0"]);
        ip(&["-n", self.ns.name(), "link", "set", &port, "up"]);
        for a in addrs {
            ip(&[
                "-n",
                ns.name(),
                "addr",
                "add",
                &format!("{a}/24"),
                "dev",
                "eth0",
            ]);
        }
        ip(&["-n", ns.name(), "link", "set", "eth0", "up"]);
    }
}

impl Default for Lan {
    fn default() -> Self {
        Lan::new()
    }
}

/// A real etcd cluster of `n` members in one namespace on the segment (one address each).
pub struct Etcd {
    pub ns: NetNs,
    members: Vec<Option<Child>>,
    dir: PathBuf,
}

impl Etcd {
    fn addr(i: usize) -> String {
        format!("{LAN_PREFIX}.{}", 21 + i)
    }

    pub fn start(lan: &Lan, n: usize) -> Etcd {
        let ns = NetNs::new("etcd");
        let addrs: Vec<String> = (0..n).map(Etcd::addr).collect();
        let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        lan.attach(&ns, &refs);
        let dir = std::env::temp_dir().join(format!("summon-etcd-{}", ns.name()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let initial = (0..n)
            .map(|i| format!("e{i}=http://{}:2380", Etcd::addr(i)))
            .collect::<Vec<_>>()
            .join(",");
        let members = (0..n)
            .map(|i| {
                let a = Etcd::addr(i);
                let log = std::fs::File::create(dir.join(format!("e{i}.log"))).unwrap();
                let child = ns
                    .command_net_only("etcd")
                    .args(["--name", &format!("e{i}")])
                    .arg("--data-dir")
                    .arg(dir.join(format!("e{i}")))
                    .args(["--listen-client-urls", &format!("http://{a}:2379")])
                    .args(["--advertise-client-urls", &format!("http://{a}:2379")])
                    .args(["--listen-peer-urls", &format!("http://{a}:2380")])
                    .args(["--initial-advertise-peer-urls", &format!("http://{a}:2380")])
                    .args(["--initial-cluster", &initial])
                    .args(["--initial-cluster-state", "new"])
                    // Elections within about half a second: a killed leader is replaced well
                    // inside the hosts' lease TTL.
                    .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                    .args(["--initial-cluster-token", ns.name()])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("spawn etcd");
                Some(child)
            })
            .collect();
        Etcd { ns, members, dir }
    }

    /// The client endpoints, as a TOML list.
    pub fn endpoints_toml(&self) -> String {
        let list = (0..self.members.len())
            .map(|i| format!("\"http://{}:2379\"", Etcd::addr(i)))
            .collect::<Vec<_>>()
            .join(", ");
        format!("[{list}]")
    }

    pub fn addrs(&self) -> Vec<String> {
        (0..self.members.len()).map(Etcd::addr).collect()
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn logs(&self) -> String {
        (0..self.members.len())
            .map(|i| {
                std::fs::read_to_string(self.dir.join(format!("e{i}.log"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One cluster host: its summond and its address on the segment.
pub struct Host {
    pub daemon: Daemon,
    pub addr: Ipv4Addr,
    pub node: String,
}

impl Host {
    pub fn dns(&self) -> SocketAddr {
        SocketAddr::new(self.addr.into(), 53)
    }

    /// `/v1/cluster` of this host.
    pub fn view(&self) -> serde_json::Value {
        serde_json::from_str(&self.daemon.admin("/v1/cluster")).expect("cluster view JSON")
    }

    /// Services with a live instance on this host.
    pub fn live(&self) -> Vec<String> {
        let rows: serde_json::Value =
            serde_json::from_str(&self.daemon.admin("/v1/instances")).expect("instances JSON");
        rows.as_array()
            .into_iter()
            .flatten()
            .filter(|r| {
                matches!(
                    r["state"].as_str(),
                    Some("running" | "starting" | "suspended" | "suspending")
                )
            })
            .filter_map(|r| r["service"].as_str().map(str::to_string))
            .collect()
    }
}

/// The whole set-up: segment, etcd, hosts, client.
pub struct Cluster {
    pub hosts: Vec<Host>,
    pub client: NetNs,
    pub etcd: Etcd,
    pub lan: Lan,
}

/// What each host's config holds besides `[cluster]`: `limits` and `services` as in
/// [`daemon::config`].
pub struct Spec<'a> {
    pub hosts: usize,
    pub etcd_members: usize,
    pub ttl: u32,
    pub lease_ttl: &'a str,
    pub limits: &'a str,
    pub services: &'a str,
    /// `mode = "route"` (a routing daemon exports the instances' routes) instead of `"arp"`
    /// on eth0.
    pub route: bool,
    /// Extra `[dns]` keys (and `[dns.*]` tables), as [`daemon::with_dns`] takes them.
    pub dns: &'a str,
}

impl Cluster {
    pub fn start(spec: &Spec<'_>) -> Cluster {
        let lan = Lan::new();
        let etcd = Etcd::start(&lan, spec.etcd_members);
        let client = NetNs::new("client");
        lan.attach(&client, &[CLIENT]);
        // The service network is on the segment: the client ARPs for service addresses and
        // the owner's proxy entry answers.
        ip(&[
            "-n",
            client.name(),
            "route",
            "add",
            "10.77.0.0/16",
            "dev",
            "eth0",
        ]);
        let hosts = (0..spec.hosts)
            .map(|i| {
                let ns = NetNs::new(&format!("host{i}"));
                let addr = Ipv4Addr::new(10, 99, 0, 11 + i as u8);
                lan.attach(&ns, &[&addr.to_string()]);
                sysctl(&ns, "net.ipv4.ip_forward=1");
                let node = format!("h{i}");
                let cfg = host_config(spec, &node, addr, &etcd.endpoints_toml());
                Host {
                    daemon: Daemon::start_in(ns, &cfg),
                    addr,
                    node,
                }
            })
            .collect();
        let c = Cluster {
            hosts,
            client,
            etcd,
            lan,
        };
        c.wait_joined(Duration::from_secs(30));
        c
    }

    /// Every host has a lease and sees every host's capacity.
    pub fn wait_joined(&self, timeout: Duration) {
        let n = self.hosts.len();
        let ok = daemon::wait_until(timeout, || {
            self.hosts.iter().all(|h| {
                let v = h.view();
                !v["lease"].is_null() && v["nodes"].as_array().is_some_and(|a| a.len() == n)
            })
        });
        assert!(
            ok,
            "hosts did not join the cluster: {:?}\netcd:\n{}",
            self.hosts.iter().map(|h| h.view()).collect::<Vec<_>>(),
            self.etcd.logs()
        );
    }

    /// An A query from the client to host `i`.
    pub fn query(&self, i: usize, name: &str) -> Message {
        let server = self.hosts[i].dns();
        let name = name.to_string();
        self.client
            .run(move || query_udp(server, &name, RecordType::A).expect("DNS query"))
    }

    /// An HTTP GET from the client.
    pub fn get(&self, addr: SocketAddr, path: &str) -> std::io::Result<String> {
        let path = path.to_string();
        self.client.run(move || daemon::http_get(addr, &path))
    }

    /// The hosts with a live instance of `service`.
    pub fn running(&self, service: &str) -> Vec<usize> {
        (0..self.hosts.len())
            .filter(|&i| {
                self.hosts[i].daemon.is_running()
                    && self.hosts[i].live().iter().any(|s| s == service)
            })
            .collect()
    }
}

/// A host's config: listens on its segment address, `[cluster]` in mode arp on eth0 (or
/// route).
pub fn host_config(spec: &Spec<'_>, node: &str, addr: Ipv4Addr, etcd: &str) -> String {
    let base = daemon::config(spec.ttl, &[], spec.limits, spec.services);
    let base = if spec.dns.is_empty() {
        base
    } else {
        daemon::with_dns(&base, spec.dns)
    };
    let base = base.replacen(
        &format!("listen = [\"{}\"]", daemon::DNS),
        &format!("listen = [\"{addr}:53\", \"{}\"]", daemon::DNS),
        1,
    );
    let mode = if spec.route {
        "mode = \"route\""
    } else {
        "mode = \"arp\"\nuplink = \"eth0\""
    };
    format!(
        "{base}\n\n[cluster]\nnode = \"{node}\"\netcd = {etcd}\nlease_ttl = \"{}\"\n{mode}\n",
        spec.lease_ttl
    )
}

/// `sysctl -w` inside `ns`.
pub fn sysctl(ns: &NetNs, setting: &str) {
    let out = ns
        .command("sysctl")
        .args(["-q", "-w", setting])
        .output()
        .expect("run sysctl");
    assert!(
        out.status.success(),
        "sysctl {setting}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A BIRD 2 daemon in a namespace, with its own config and control socket; killed on drop.
pub struct Bird {
    child: Child,
    dir: PathBuf,
}

impl Bird {
    pub fn start(ns: &NetNs, config: &str) -> Bird {
        let dir = std::env::temp_dir().join(format!("summon-bird-{}", ns.name()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("bird.conf");
        std::fs::write(&conf, config).unwrap();
        let log = std::fs::File::create(dir.join("bird.log")).unwrap();
        let child = ns
            .command_net_only("bird")
            .arg("-f")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(dir.join("bird.ctl"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn bird");
        Bird { child, dir }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("bird.log")).unwrap_or_default()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
