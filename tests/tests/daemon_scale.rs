//! Many instances through the real daemon (issue 10): SIGTERM with a few hundred live
//! instances, running and suspended, stops them all and leaves no tap, route, neighbour entry or
//! address behind.

use summon_tests::daemon as daemon_support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

use daemon_support::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

const N: usize = 300;

fn ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 77, 1, 0)) + i as u32)
}

#[test]
fn sigterm_with_hundreds_of_instances_removes_everything() {
    if !prerequisites("SIGTERM with many instances") {
        return;
    }
    let mut services = String::new();
    for i in 0..N {
        // Every tenth is suspended by the reaper before the SIGTERM; the rest run.
        let extra = if i % 10 == 0 {
            "stop = \"suspend\"\nidle_timeout = \"1s\""
        } else {
            "idle_timeout = \"1h\""
        };
        services += &http_service(&format!("m{i:03}"), &ip(i).to_string(), extra);
    }
    let limits = format!("[limits]\nmax_instances = {}\n", N + 10);
    let mut d = Daemon::start("scale", &config(0, &[], &limits, &services));
    let dns: SocketAddr = DNS.parse().unwrap();
    let failed = summon_each(&d, dns, (0..N).map(|i| format!("m{i:03}.svc.test.")));
    assert!(failed.is_empty(), "summons failed: {failed:?}");
    // Every instance serves (a sample), and the suspended ones are suspended.
    for i in [1, N / 2 + 1, N - 1] {
        let addr = SocketAddr::new(ip(i).into(), 80);
        assert!(d
            .ns
            .run(move || http_get(addr, "/healthz"))
            .expect("GET")
            .contains("ok"));
    }
    assert!(
        wait_until(std::time::Duration::from_secs(10), || d
            .metric("summon_instances", &[("state", "suspended")])
            == (N / 10) as f64),
        "not all suspended"
    );
    assert_eq!(d.taps().len(), N);
    assert_eq!(
        d.metric("summon_instances", &[("state", "running")]),
        (N - N / 10) as f64
    );

    let t = Instant::now();
    let status = d.terminate();
    eprintln!(
        "SIGTERM with {N} live instances: exit after {:?}",
        t.elapsed()
    );
    assert_eq!(status.code(), Some(0), "{}", d.log());
    let log = without_colours(&d.log());
    assert!(
        log.contains(&format!("all instances stopped instances={N} ")),
        "{log}"
    );
    assert!(d.taps().is_empty(), "taps left: {:?}", d.taps());
    let routes = d.ip(&["-4", "route", "show"]);
    assert!(!routes.contains("10.77."), "routes left: {routes}");
    let neigh = d.ip(&["neigh", "show"]);
    assert!(!neigh.contains("10.77."), "neighbours left: {neigh}");
    let addrs = d.ip(&["-4", "addr", "show"]);
    assert!(!addrs.contains("10.77."), "addresses left: {addrs}");
    let links = d.ip(&["-o", "link", "show"]);
    assert_eq!(links.lines().count(), 1, "only lo may be left: {links}");
}

/// Asks for each name's A record in turn, from the daemon's namespace; the names (with the
/// reason) whose answer was not NOERROR.
fn summon_each(
    d: &Daemon,
    dns: SocketAddr,
    names: impl Iterator<Item = String> + Send,
) -> Vec<String> {
    d.ns.run(move || {
        names
            .filter_map(|q| match query_udp(dns, &q, RecordType::A) {
                Ok(m) if m.metadata.response_code == ResponseCode::NoError => None,
                Ok(m) => Some(format!("{q}: {}", m.metadata.response_code)),
                Err(e) => Some(format!("{q}: {e}")),
            })
            .collect()
    })
}

fn without_colours(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

/// Entries of `/proc/PID/fd`: summond's shared fd table (vCPU threads have their own).
fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn live_instances_hold_no_fd_of_summond_and_a_stopped_ones_tap_goes_down() {
    if !prerequisites("fds per instance") {
        return;
    }
    const M: usize = 50;
    let mut services = String::new();
    for i in 0..M {
        services += &http_service(
            &format!("f{i:02}"),
            &ip(i).to_string(),
            "idle_timeout = \"1h\"",
        );
    }
    services += &http_service("short", &ip(M).to_string(), "idle_timeout = \"1s\"");
    let mut d = Daemon::start("fdtab", &config(0, &[], "", &services));
    let pid = d.pid();
    let dns: SocketAddr = DNS.parse().unwrap();
    // The prewarm pool fills right after start; its vCPU threads hold their fds elsewhere too.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let before = fd_count(pid);
    let failed = summon_each(&d, dns, (0..M).map(|i| format!("f{i:02}.svc.test.")));
    assert!(failed.is_empty(), "summons failed: {failed:?}");
    for i in [0, M - 1] {
        let addr = SocketAddr::new(ip(i).into(), 80);
        assert!(d
            .ns
            .run(move || http_get(addr, "/healthz"))
            .expect("GET")
            .contains("ok"));
    }
    assert_eq!(
        d.metric("summon_instances", &[("state", "running")]),
        M as f64
    );
    let after = fd_count(pid);
    eprintln!("summond's fd table: {before} fds before, {after} with {M} live instances");
    // Before the vCPU threads had tables of their own this grew by 6 per instance (300 here);
    // a few may come and go with the daemon's own work (netlink, sysctl writes).
    assert!(
        after <= before + 8,
        "{before} fds before, {after} with {M} live instances"
    );
    // An instance that stops (idle) sets its tap down (kept as a spare for its next start).
    let addr = SocketAddr::new(ip(M).into(), 80);
    d.ns.run(move || query_udp(dns, "short.svc.test.", RecordType::A))
        .expect("summon short");
    assert!(d
        .ns
        .run(move || http_get(addr, "/healthz"))
        .expect("GET short")
        .contains("ok"));
    assert_eq!(d.taps().len(), M + 1);
    assert!(
        wait_until(std::time::Duration::from_secs(20), || d.live_taps().len()
            == M),
        "the stopped instance's tap is still up: {:?}",
        d.live_taps()
    );
    assert_eq!(
        d.metric("summon_instances", &[("state", "running")]),
        M as f64
    );
    let status = d.terminate();
    assert_eq!(status.code(), Some(0), "{}", d.log());
    assert!(d.taps().is_empty(), "left after exit: {:?}", d.taps());
}
