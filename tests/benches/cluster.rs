//! Cluster benchmark (docs/cluster.md): warm queries answered by the owner and by a host that
//! does not run the instance (from its watch cache), and cold summons through a cluster host
//! (claim transaction + boot), each against a standalone summond on the same segment. The
//! client, the hosts, the standalone summond and a 3-member etcd are namespaces on one bridge;
//! every query is timed send → answer from the client, one outstanding.
//!
//! `cargo bench -p summon-tests --bench cluster` (root, /dev/kvm, etcd).
//! Knobs: CLUSTER_BENCH_WARM (2000 queries per target), CLUSTER_BENCH_COLD (100 runs).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use summon_test_support::stats::{ms, pct};
use summon_tests::cluster::{prerequisites, sysctl, Cluster, Spec};
use summon_tests::daemon::{self, admin_post, http_service, query_udp, wait_until, Daemon, ADMIN};
use summon_tests::netns::NetNs;

/// Thousands of queries a second from one client: response-rate limiting off on every server.
const NO_RRL: &str = "[dns.rrl]\nrate = 0";

const SOLO: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 50);

fn env_or(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn report(what: &str, mut v: Vec<f64>) {
    let n = v.len();
    println!(
        "{what:<52} n={n:<5} p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        pct(&mut v, 50),
        pct(&mut v, 99),
        pct(&mut v, 100)
    );
}

/// `n` sequential queries for `name` from the client to `server`, each timed.
fn warm(c: &Cluster, server: SocketAddr, name: &str, n: usize) -> Vec<f64> {
    let name = name.to_string();
    c.client.run(move || {
        (0..n)
            .map(|_| {
                let t = Instant::now();
                let m = query_udp(server, &name, RecordType::A).expect("warm query");
                let d = t.elapsed();
                assert_eq!(m.metadata.response_code, ResponseCode::NoError);
                ms(d)
            })
            .collect()
    })
}

/// One timed query from the client after `stop` made the service cold.
fn cold(c: &Cluster, server: SocketAddr, stop: impl Fn()) -> f64 {
    stop();
    c.client.run(move || {
        let t = Instant::now();
        let m = query_udp(server, "web.svc.test.", RecordType::A).expect("cold query");
        let d = t.elapsed();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        ms(d)
    })
}

fn main() {
    if !prerequisites("cluster bench") {
        return;
    }
    let warm_n = env_or("CLUSTER_BENCH_WARM", 2000);
    let cold_n = env_or("CLUSTER_BENCH_COLD", 100);
    let services = http_service("web", "10.77.0.10", "");
    let c = Cluster::start(&Spec {
        hosts: 3,
        etcd_members: 3,
        ttl: 60,
        lease_ttl: "5s",
        limits: "",
        services: &services,
        route: false,
        dns: NO_RRL,
    });
    // The standalone summond, on the same segment.
    let ns = NetNs::new("solo");
    c.lan.attach(&ns, &[&SOLO.to_string()]);
    sysctl(&ns, "net.ipv4.ip_forward=1");
    let cfg = daemon::with_dns(&daemon::config(60, &[], "", &services), NO_RRL).replacen(
        &format!("listen = [\"{}\"]", daemon::DNS),
        &format!("listen = [\"{SOLO}:53\", \"{}\"]", daemon::DNS),
        1,
    );
    let solo = Daemon::start_in(ns, &cfg);
    let solo_dns = SocketAddr::new(SOLO.into(), 53);
    let admin: SocketAddr = ADMIN.parse().unwrap();

    println!("# warm: {warm_n} sequential queries per target; cold: {cold_n} runs");
    // Warm: the instance runs on h0 (and on the standalone host).
    c.query(0, "web.svc.test.");
    solo.query("web.svc.test.", RecordType::A);
    for _ in 0..50 {
        c.query(1, "web.svc.test.");
    }
    report(
        "warm, standalone",
        warm(&c, solo_dns, "web.svc.test.", warm_n),
    );
    report(
        "warm, cluster owner",
        warm(&c, c.hosts[0].dns(), "web.svc.test.", warm_n),
    );
    report(
        "warm, cluster non-owner (watch cache)",
        warm(&c, c.hosts[1].dns(), "web.svc.test.", warm_n),
    );

    // Cold: stop the instance, wait until its claim is released, query the same host.
    let stop_solo = || {
        solo.ns
            .run(move || admin_post(admin, "/v1/instances/web/stop"))
            .expect("stop");
    };
    let solo_cold: Vec<f64> = (0..cold_n).map(|_| cold(&c, solo_dns, stop_solo)).collect();
    report("cold, standalone (query -> answer)", solo_cold);
    c.query(1, "web.svc.test.");
    let owner_of = |h: usize| -> usize {
        let v = c.hosts[h].view();
        let owner = v["owners"]
            .as_array()
            .and_then(|a| a.iter().find(|o| o["service"] == "web"))
            .and_then(|o| o["node"].as_str())
            .map(str::to_string);
        match owner.as_deref() {
            Some(n) => n[1..].parse().unwrap(),
            None => usize::MAX,
        }
    };
    let cluster_cold: Vec<f64> = (0..cold_n)
        .map(|_| {
            let owner = owner_of(1);
            let stop = || {
                c.hosts[owner]
                    .daemon
                    .ns
                    .run(move || admin_post(admin, "/v1/instances/web/stop"))
                    .expect("stop");
                assert!(
                    wait_until(Duration::from_secs(5), || (0..3)
                        .all(|h| owner_of(h) == usize::MAX)),
                    "claim not released"
                );
            };
            cold(&c, c.hosts[1].dns(), stop)
        })
        .collect();
    report(
        "cold, cluster (claim + boot, query -> answer)",
        cluster_cold,
    );
    let boots: f64 = c
        .hosts
        .iter()
        .map(|h| h.daemon.metric("summon_boots_total", &[("service", "web")]))
        .sum();
    println!("# cluster boots of web: {boots} (1 warm-up + {cold_n} cold)");
}
