//! Several summond hosts serve one zone through a real 3-member etcd (docs/cluster.md): three
//! hosts in network namespaces on one L2 segment (a bridge) with a client namespace; the
//! client resolves through any host and reaches the one instance at the same address.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use summon_tests::cluster::{prerequisites, Cluster, Spec};
use summon_tests::daemon::{a_records, http_service, query_udp, wait_until};
use summon_tests::netns::ip;

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
        route: false,
        dns: "",
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
            if !h.daemon.is_running() {
                return None;
            }
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
    for i in 0..3 {
        assert_eq!(
            c.hosts[i].daemon.metric(
                "summon_cluster_owner",
                &[("service", "web"), ("node", "h0")]
            ),
            1.0,
            "host {i}'s metrics name h0 as web's owner"
        );
    }
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

#[test]
fn a_dead_owner_s_service_boots_elsewhere_at_the_same_address() {
    if !prerequisites("cluster test") {
        return;
    }
    let services = web();
    let mut c = Cluster::start(&spec(&services));
    let lease_ttl = Duration::from_secs(3);
    let addr = SocketAddr::new(WEB.into(), 80);
    assert_eq!(a_records(&c.query(0, "web.svc.test.")), vec![(WEB, 5)]);
    c.get(addr, "/").expect("GET / from h0");

    // h0 fails as a machine does: summond killed (its instance dies with it), link down.
    c.hosts[0].daemon.kill9();
    let host0 = c.hosts[0].daemon.ns.name().to_string();
    ip(&["-n", &host0, "link", "set", "eth0", "down"]);
    let t = Instant::now();
    // Until h0's lease ends, h1 still answers for h0's instance; then it claims and boots.
    let moved = wait_until(lease_ttl + Duration::from_secs(1), || {
        let m = c.query(1, "web.svc.test.");
        m.metadata.response_code == ResponseCode::NoError && c.running("web") == vec![1]
    });
    assert!(
        moved,
        "web did not move to h1 within lease_ttl + 1 s ({:?}); h1 view: {}\nh1 log:\n{}",
        t.elapsed(),
        c.hosts[1].view(),
        c.hosts[1].daemon.log()
    );
    // Same address, now through h1's proxy entry (its gratuitous ARP moved the client).
    let page = c.get(addr, "/").expect("GET / from h1 at the same address");
    assert!(page.contains("web"), "{page}");
    assert_eq!(client_neighbour(&c, WEB), mac_of(&c, 1));
    assert_eq!(
        owners(&c, "web")[1..],
        [Some("h1".into()), Some("h1".into())]
    );

    // h0 comes back (taking its link down flushed its proxy entry) and answers for h1's
    // instance without booting its own.
    ip(&["-n", &host0, "link", "set", "eth0", "up"]);
    c.hosts[0].daemon.restart();
    c.wait_joined(Duration::from_secs(20));
    assert_eq!(a_records(&c.query(0, "web.svc.test.")), vec![(WEB, 5)]);
    assert_eq!(c.running("web"), vec![1]);

    // A summond killed with its link up leaves its proxy entry; restarted, it removes it.
    c.hosts[1].daemon.kill9();
    let left = c.hosts[1].daemon.ip(&["neigh", "show", "proxy"]);
    assert!(
        left.contains("10.77.0.10"),
        "the kill left the entry: {left}"
    );
    c.hosts[1].daemon.restart();
    let after = c.hosts[1].daemon.ip(&["neigh", "show", "proxy"]);
    assert!(!after.contains("10.77.0.10"), "{after}");
}

#[test]
fn a_lost_etcd_member_is_survived_and_a_host_cut_off_from_etcd_fences() {
    if !prerequisites("cluster test") {
        return;
    }
    let services =
        web() + &http_service("api", "10.77.0.11", "") + &http_service("new", "10.77.0.12", "");
    let mut c = Cluster::start(&spec(&services));
    let lease_ttl = Duration::from_secs(3);

    // One etcd member of three dies: the cluster keeps its quorum and summons still work.
    c.etcd.kill(0);
    let m = c.query(1, "web.svc.test.");
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::NoError,
        "{:?}",
        c.hosts[1].view()
    );
    assert_eq!(a_records(&m), vec![(WEB, 5)]);
    c.get(SocketAddr::new(WEB.into(), 80), "/")
        .expect("GET / after losing a member");
    assert_eq!(c.running("web"), vec![1]);

    // h2 runs api, then loses etcd (not the clients): it stops api before its lease can
    // expire, so that api can move without ever running twice.
    assert_eq!(
        a_records(&c.query(2, "api.svc.test.")),
        vec![(Ipv4Addr::new(10, 77, 0, 11), 5)]
    );
    assert_eq!(c.running("api"), vec![2]);
    let host2 = c.hosts[2].daemon.ns.name().to_string();
    let t = Instant::now();
    for a in c.etcd.addrs() {
        ip(&[
            "-n",
            &host2,
            "route",
            "add",
            "blackhole",
            &format!("{a}/32"),
        ]);
    }
    let fenced = wait_until(lease_ttl, || c.hosts[2].live().is_empty());
    assert!(
        fenced,
        "h2 still runs {:?} {:?} after losing etcd\n{}",
        c.hosts[2].live(),
        t.elapsed(),
        c.hosts[2].daemon.log()
    );
    // Without etcd, h2 claims nothing new.
    let m = c.query(2, "new.svc.test.");
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(c.running("new").is_empty());
    // Once h2's lease has expired, api boots on a host that has etcd.
    let moved = wait_until(lease_ttl + Duration::from_secs(2), || {
        c.query(0, "api.svc.test.").metadata.response_code == ResponseCode::NoError
            && c.running("api") == vec![0]
    });
    assert!(moved, "api did not move: {}", c.hosts[0].view());
}

#[test]
fn a_hundred_services_over_three_hosts_of_forty_each() {
    if !prerequisites("cluster test") {
        return;
    }
    let services: String = (0..100)
        .map(|i| http_service(&format!("s{i}"), &format!("10.77.1.{}", 10 + i), ""))
        .collect();
    let c = Cluster::start(&Spec {
        limits: "[limits]\nmax_instances = 40",
        ..spec(&services)
    });
    // All through h0: past its 40, it relays to the hosts with room.
    for i in 0..100 {
        let m = c.query(0, &format!("s{i}.svc.test."));
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NoError,
            "s{i}: {}",
            c.hosts[0].view()
        );
        assert_eq!(
            a_records(&m),
            vec![(Ipv4Addr::new(10, 77, 1, 10 + i as u8), 5)],
            "s{i}"
        );
    }
    let live: Vec<usize> = c.hosts.iter().map(|h| h.live().len()).collect();
    assert_eq!(live.iter().sum::<usize>(), 100, "{live:?}");
    assert!(live.iter().all(|&n| n <= 40), "{live:?}");
    assert_eq!(live[0], 40, "{live:?}");
    let relayed = c.hosts[0]
        .daemon
        .metric("summon_cluster_events_total", &[("event", "relayed")]);
    assert_eq!(relayed, 60.0);
}

/// Without `[cluster]` summond is standalone: no cluster view, no cluster metric, and nothing
/// connects to etcd's port even with an etcd-looking listener in its namespace.
#[test]
fn without_a_cluster_section_summond_is_standalone_and_contacts_no_etcd() {
    if !summon_tests::daemon::prerequisites("standalone test") {
        return;
    }
    use summon_tests::daemon::{config, Daemon, ADMIN};
    let d = Daemon::start("standalone", &config(5, &[], "", &web()));
    let listener =
        d.ns.run(|| std::net::TcpListener::bind("127.0.0.1:2379").expect("bind 2379"));
    listener.set_nonblocking(true).unwrap();
    let m = d.query("web.svc.test.", RecordType::A);
    assert_eq!(a_records(&m), vec![(WEB, 5)]);
    let admin: SocketAddr = ADMIN.parse().unwrap();
    let cluster =
        d.ns.run(move || summon_tests::daemon::http_get(admin, "/v1/cluster"));
    let err = cluster
        .expect_err("standalone has no /v1/cluster")
        .to_string();
    assert!(err.contains("404"), "{err}");
    let rows: serde_json::Value = serde_json::from_str(&d.admin("/v1/instances")).unwrap();
    assert!(rows[0].get("owner").is_none(), "{rows}");
    assert!(!d.admin("/metrics").contains("summon_cluster_events_total{"));
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "something connected to the etcd port"
    );
    assert!(!d.log().contains("cluster member"), "{}", d.log());
}

/// Idleness across hosts: queries answered by another host keep the owner's instance alive
/// (the `queried` marks); once nobody asks, the owner reaps it and releases its claim, and the
/// next query anywhere claims the service afresh.
#[test]
fn queries_at_other_hosts_keep_an_instance_alive_and_its_reaping_frees_the_claim() {
    if !prerequisites("cluster test") {
        return;
    }
    let services = http_service("web", "10.77.0.10", "idle_timeout = \"1s\"");
    // TTL 1: idle after 2 s without a query (and 1 s without a packet).
    let c = Cluster::start(&Spec {
        ttl: 1,
        ..spec(&services)
    });
    assert_eq!(a_records(&c.query(0, "web.svc.test.")), vec![(WEB, 1)]);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        assert_eq!(a_records(&c.query(1, "web.svc.test.")), vec![(WEB, 1)]);
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        c.running("web"),
        vec![0],
        "reaped although h1 kept answering"
    );
    assert_eq!(
        c.hosts[0]
            .daemon
            .metric("summon_reaped_total", &[("service", "web")]),
        0.0
    );
    assert!(wait_until(Duration::from_secs(8), || c
        .running("web")
        .is_empty()));
    assert!(
        wait_until(Duration::from_secs(3), || owners(&c, "web")
            == vec![None; 3]),
        "claim not released: {:?}",
        owners(&c, "web")
    );
    assert_eq!(a_records(&c.query(2, "web.svc.test.")), vec![(WEB, 1)]);
    assert_eq!(c.running("web"), vec![2]);
}

/// The BIRD config docs/cluster.md gives for `mode = "route"`, for the host at `addr` with AS
/// `asn` and the router at `router`.
fn documented_bird_config(addr: Ipv4Addr, asn: u32, router: &str) -> String {
    let doc = include_str!("../../docs/cluster.md");
    let start = doc
        .find("# /etc/bird/bird.conf on host-a")
        .expect("docs/cluster.md has the BIRD config");
    let block = &doc[start..doc[start..].find("```").map(|e| start + e).unwrap()];
    assert!(block.contains("learn;"), "{block}");
    block
        .replace("10.0.0.11", &addr.to_string())
        .replace("65011", &asn.to_string())
        .replace(
            "10.0.0.1 as 65000;",
            &format!("{router} as 65000; {FAST_BGP}"),
        )
}

/// Sessions up within a second or two instead of BIRD's start-up delay and retry times.
const FAST_BGP: &str = "connect delay time 1; connect retry time 1;";

#[test]
fn route_mode_instance_routes_are_exported_by_bird() {
    if !summon_tests::cluster::bird_prerequisites("cluster route-mode test") {
        return;
    }
    use summon_tests::cluster::{sysctl, Bird};
    use summon_tests::daemon::{admin_post, ADMIN};
    use summon_tests::netns::NetNs;
    let services = web();
    let c = Cluster::start(&Spec {
        hosts: 2,
        etcd_members: 1,
        route: true,
        ..spec(&services)
    });
    let router = NetNs::new("router");
    c.lan.attach(&router, &["10.99.0.1"]);
    sysctl(&router, "net.ipv4.ip_forward=1");
    let peers: String = c
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            format!(
                "protocol bgp h{i} {{ local 10.99.0.1 as 65000; neighbor {} as {}; {FAST_BGP} ipv4 {{ import all; export none; }}; }}\n",
                h.addr,
                65011 + i
            )
        })
        .collect();
    let router_bird = Bird::start(
        &router,
        &format!(
            "router id 10.99.0.1;\nprotocol device {{ }}\nprotocol kernel {{ ipv4 {{ import none; export all; }}; }}\n{peers}"
        ),
    );
    let _host_birds: Vec<Bird> = c
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            Bird::start(
                &h.daemon.ns,
                &documented_bird_config(h.addr, 65011 + i as u32, "10.99.0.1"),
            )
        })
        .collect();
    // The client reaches service addresses through the router only.
    ip(&[
        "-n",
        c.client.name(),
        "route",
        "replace",
        "10.77.0.0/16",
        "via",
        "10.99.0.1",
    ]);
    let route_at_router = || {
        let out = std::process::Command::new("ip")
            .args(["-n", router.name(), "route", "show", "10.77.0.10/32"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    assert_eq!(a_records(&c.query(0, "web.svc.test.")), vec![(WEB, 5)]);
    assert!(
        wait_until(Duration::from_secs(20), || route_at_router()
            .contains("via 10.99.0.11")),
        "no route to web via h0 at the router: {:?}\n{}",
        route_at_router(),
        router_bird.log()
    );
    let addr = SocketAddr::new(WEB.into(), 80);
    let page = c.get(addr, "/").expect("GET / through the router to h0");
    assert!(page.contains("web"), "{page}");
    // No proxy ARP in route mode.
    assert!(!c.hosts[0]
        .daemon
        .ip(&["neigh", "show", "proxy"])
        .contains("10.77.0.10"));

    // The instance stops on h0: its route is withdrawn; the next query boots it on h1, whose
    // route the router then takes.
    let admin: SocketAddr = ADMIN.parse().unwrap();
    c.hosts[0]
        .daemon
        .ns
        .run(move || admin_post(admin, "/v1/instances/web/stop"))
        .expect("stop");
    assert!(
        wait_until(Duration::from_secs(10), || route_at_router().is_empty()),
        "route not withdrawn: {:?}",
        route_at_router()
    );
    assert!(wait_until(Duration::from_secs(5), || owners(&c, "web")
        == vec![None; 2]));
    assert_eq!(a_records(&c.query(1, "web.svc.test.")), vec![(WEB, 5)]);
    assert!(
        wait_until(Duration::from_secs(20), || route_at_router()
            .contains("via 10.99.0.12")),
        "no route to web via h1 at the router: {:?}",
        route_at_router()
    );
    let page = c.get(addr, "/").expect("GET / through the router to h1");
    assert!(page.contains("web"), "{page}");
}
