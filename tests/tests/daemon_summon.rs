//! summond end to end: a real A query boots the http unikernel on KVM behind a tap the daemon
//! made, the answer carries the right address and TTL, and the page is served at that address.

use summon_tests::daemon as daemon_support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use daemon_support::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

#[test]
fn resolve_boots_and_serves_the_page_and_warm_queries_do_not_reboot() {
    if !prerequisites("daemon summon test") {
        return;
    }
    let cfg = config(
        7,
        &[],
        "",
        &(http_service("web", "10.77.0.10", "") + &http_service("api", "10.77.0.11", "")),
    );
    let d = Daemon::start("summon", &cfg);
    assert!(d.taps().is_empty(), "no tap before the first query");

    let m = d.query("web.svc.test.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert_eq!(a_records(&m), vec![(Ipv4Addr::new(10, 77, 0, 10), 7)]);
    assert_eq!(d.taps(), vec!["sm-web".to_string()]);

    // The HTTP request goes out right after the answer: packets wait in the tap if needed.
    let addr: SocketAddr = "10.77.0.10:80".parse().unwrap();
    let page = d.ns.run(move || http_get(addr, "/")).expect("GET /");
    assert!(page.contains("web"), "{page}");

    // Case-insensitive, and warm: no second boot.
    let m = d.query("WeB.SvC.TeSt.", RecordType::A);
    assert_eq!(a_records(&m), vec![(Ipv4Addr::new(10, 77, 0, 10), 7)]);
    assert_eq!(d.metric("summon_boots_total", &[("service", "web")]), 1.0);
    assert_eq!(
        d.metric(
            "summon_summons_total",
            &[("service", "web"), ("result", "warm")]
        ),
        1.0
    );
    assert_eq!(
        d.metric(
            "summon_summons_total",
            &[("service", "web"), ("result", "cold")]
        ),
        1.0
    );
    assert_eq!(d.metric("summon_boots_total", &[("service", "api")]), 0.0);

    // The host side: route, permanent neighbour entry, gateway address on the tap.
    let route = d.ip(&["route", "show", "10.77.0.10"]);
    assert!(route.contains("dev sm-web"), "{route}");
    let neigh = d.ip(&["neigh", "show", "dev", "sm-web"]);
    assert!(
        neigh.contains("10.77.0.10 lladdr 02:53:0a:4d:00:0a PERMANENT"),
        "{neigh}"
    );
    // The gateway is one local address of the host (on lo), not one per tap.
    let addr = d.ip(&["-4", "addr", "show", "dev", "sm-web"]);
    assert!(!addr.contains("inet "), "{addr}");
    let lo = d.ip(&["-4", "addr", "show", "dev", "lo"]);
    assert!(lo.contains("10.77.0.1/32"), "{lo}");
    // No IPv6 on the tap: no host chatter (router solicitations, MLD) reaches the guest.
    assert!(d
        .ip(&["-6", "addr", "show", "dev", "sm-web"])
        .trim()
        .is_empty());
    let link = d.ip(&["link", "show", "sm-web"]);
    assert!(link.contains("qlen 1000"), "{link}");

    let json = d.admin("/v1/instances");
    assert!(
        json.contains("\"service\": \"web\"") && json.contains("\"state\": \"running\""),
        "{json}"
    );
    assert_eq!(d.admin("/healthz"), "ok\n");
    let out =
        d.ns.command(summond().to_str().unwrap())
            .args(["status", "--admin", ADMIN])
            .output()
            .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("web ") && l.contains("running") && l.contains("sm-web")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("api ") && l.contains("stopped")),
        "{table}"
    );
}

#[test]
fn two_hundred_concurrent_queries_boot_once() {
    if !prerequisites("daemon concurrency test") {
        return;
    }
    let d = Daemon::start(
        "conc",
        &config(5, &[], "", &http_service("burst", "10.77.0.20", "")),
    );
    let results = d.ns.run(|| {
        let server: SocketAddr = DNS.parse().unwrap();
        let handles: Vec<_> = (0..200)
            .map(|_| {
                std::thread::spawn(move || query_udp(server, "burst.svc.test.", RecordType::A))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    for r in results {
        let m = r.expect("answer");
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(a_records(&m), vec![(Ipv4Addr::new(10, 77, 0, 20), 5)]);
    }
    assert_eq!(d.metric("summon_boots_total", &[("service", "burst")]), 1.0);
    let served = d.metric("summon_summons_total", &[("service", "burst")]);
    assert_eq!(served, 200.0);
    let addr: SocketAddr = "10.77.0.20:80".parse().unwrap();
    assert!(d
        .ns
        .run(move || http_get(addr, "/healthz"))
        .unwrap()
        .contains("ok"));
    let _ = Duration::ZERO;
}

#[test]
fn reply_ready_answers_once_the_guest_network_is_up() {
    if !prerequisites("daemon reply=ready test") {
        return;
    }
    let d = Daemon::start(
        "ready",
        &config(
            5,
            &[],
            "",
            &http_service("calm", "10.77.0.21", "reply = \"ready\""),
        ),
    );
    let m = d.query("calm.svc.test.", RecordType::A);
    assert_eq!(a_records(&m), vec![(Ipv4Addr::new(10, 77, 0, 21), 5)]);
    // By the time the answer left, the guest had polled its NIC.
    let json = d.admin("/v1/instances");
    assert!(json.contains("\"net_ready\": true"), "{json}");
    assert_eq!(
        d.metric("summon_summon_seconds_count", &[("stage", "ready")]),
        1.0
    );
    assert_eq!(
        d.metric("summon_summon_seconds_count", &[("stage", "answer")]),
        1.0
    );
    let addr: SocketAddr = "10.77.0.21:80".parse().unwrap();
    assert!(d
        .ns
        .run(move || http_get(addr, "/healthz"))
        .unwrap()
        .contains("ok"));
}
