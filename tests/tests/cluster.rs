//! Several summond hosts serve one zone through a real 3-member etcd (docs/cluster.md): three
//! hosts in network namespaces on one L2 segment (a bridge) with a client namespace; the
//! client resolves through any host and reaches the one instance at the same address.

use std::net::{Ipv4Addr, SocketAddr};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use summon_tests::cluster::{prerequisites, Cluster, Spec};
use summon_tests::daemon::{a_records, http_service, query_udp};

const WEB: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 10);

fn web() -> String {
    http_service("web", "10.77.0.10", "")
}

fn spec(services: &str) -> Spec<'_> {
    Spec {
        hosts: 3,
        etcd_members: 3,
        ttl: 5,
        lease_ttl: "3s",
        limits: "",
        services,
    }
}

fn boots(c: &Cluster, service: &str) -> f64 {
    c.hosts
        .iter()
        .filter(|h| h.daemon.is_running())
        .map(|h| {
            h.daemon
                .metric("summon_boots_total", &[("service", service)])
        })
        .sum()
}

/// The owner each host's admin API names for `service`.
fn owners(c: &Cluster, service: &str) -> Vec<Option<String>> {
    c.hosts
        .iter()
        .map(|h| {
            let rows: serde_json::Value =
                serde_json::from_str(&h.daemon.admin("/v1/instances")).unwrap();
            rows.as_array()
                .unwrap()
                .iter()
                .find(|r| r["service"] == service)
                .and_then(|r| r["owner"].as_str().map(str::to_string))
        })
        .collect()
}

/// The MAC of `dev` in the namespace of host `i`.
fn mac_of(c: &Cluster, i: usize) -> String {
    let out = c.hosts[i].daemon.ip(&["-o", "link", "show", "eth0"]);
    out.split("link/ether ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_default()
        .to_string()
}

/// The MAC the client has for `ip` in its neighbour table.
fn client_neighbour(c: &Cluster, ip: Ipv4Addr) -> String {
    let out = std::process::Command::new("ip")
        .args(["-n", c.client.name(), "neigh", "show", &ip.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split("lladdr ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_service_resolved_through_any_host_has_one_instance_and_one_address() {
    if !prerequisites("cluster test") {
        return;
    }
    let services = web();
    let c = Cluster::start(&spec(&services));

    let m = c.query(0, "web.svc.test.");
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_records(&m), vec![(WEB, 5)]);
    let addr = SocketAddr::new(WEB.into(), 80);
    let page = c
        .get(addr, "/")
        .expect("GET / through the owner's proxy ARP");
    assert!(page.contains("web"), "{page}");

    for i in [1, 2] {
        let m = c.query(i, "web.svc.test.");
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "host {i}");
        assert_eq!(a_records(&m), vec![(WEB, 5)], "host {i}");
    }
    // One instance in the whole cluster, on the host that was asked first; every host names
    // it the owner.
    assert_eq!(c.running("web"), vec![0]);
    assert_eq!(boots(&c, "web"), 1.0);
    assert_eq!(owners(&c, "web"), vec![Some("h0".to_string()); 3]);
    for i in [1, 2] {
        assert!(
            c.hosts[i]
                .daemon
                .metric("summon_cluster_events_total", &[("event", "remote")])
                >= 1.0,
            "host {i} answered for h0's instance"
        );
    }
    // The client reached the instance at h0's MAC (its proxy entry), and does again after
    // asking the other hosts.
    assert_eq!(client_neighbour(&c, WEB), mac_of(&c, 0));
    let page = c.get(addr, "/").expect("second GET");
    assert!(page.contains("web"), "{page}");
    let proxies = c.hosts[0].daemon.ip(&["neigh", "show", "proxy"]);
    assert!(proxies.contains("10.77.0.10"), "{proxies}");
    for i in [1, 2] {
        let p = c.hosts[i].daemon.ip(&["neigh", "show", "proxy"]);
        assert!(!p.contains("10.77.0.10"), "host {i}: {p}");
    }
}

#[test]
fn concurrent_queries_at_three_hosts_boot_one_instance() {
    if !prerequisites("cluster test") {
        return;
    }
    let services = web();
    let c = Cluster::start(&spec(&services));
    let servers: Vec<SocketAddr> = c.hosts.iter().map(|h| h.dns()).collect();
    let clients: Vec<_> = (0..20)
        .map(|i| {
            let server = servers[i % servers.len()];
            c.client
                .spawn(move || query_udp(server, "web.svc.test.", RecordType::A))
        })
        .collect();
    for (i, t) in clients.into_iter().enumerate() {
        let m = t.join().unwrap().expect("DNS answer");
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NoError,
            "client {i}"
        );
        assert_eq!(a_records(&m), vec![(WEB, 5)], "client {i}");
    }
    assert_eq!(boots(&c, "web"), 1.0);
    let running = c.running("web");
    assert_eq!(running.len(), 1, "{running:?}");
    let won: f64 = c
        .hosts
        .iter()
        .map(|h| {
            h.daemon
                .metric("summon_cluster_events_total", &[("event", "claim_won")])
        })
        .sum();
    assert_eq!(won, 1.0);
    let page = c
        .get(SocketAddr::new(WEB.into(), 80), "/")
        .expect("GET / after the race");
    assert!(page.contains("web"), "{page}");
}
