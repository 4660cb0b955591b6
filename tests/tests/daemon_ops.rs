//! summond as a host service, against the real daemon in a network namespace: a log sink that
//! stalls or goes away never stalls or kills it.

mod daemon_support;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use daemon_support::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use summon_tests::netns::NetNs;

/// SIGTERM, then the exit status, which must come within `bound`.
fn terminate_within(d: &mut Daemon, bound: Duration) -> std::process::ExitStatus {
    let t = Instant::now();
    d.signal(libc::SIGTERM);
    loop {
        if let Some(s) = d.try_wait() {
            return s;
        }
        assert!(
            t.elapsed() < bound,
            "summond did not exit within {bound:?} of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Cold summon of `name` at `ip`, then its page.
fn summon_and_fetch(d: &Daemon, name: &str, ip: Ipv4Addr) {
    let m = d.query(&format!("{name}.{ZONE}"), RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
    assert_eq!(a_records(&m), vec![(ip, 5)], "{name}");
    let addr = SocketAddr::from((ip, 80));
    let page = d.ns.run(move || http_get(addr, "/")).expect("GET /");
    assert!(page.contains(name), "{page}");
}

#[test]
fn a_log_reader_that_stalls_blocks_nothing_and_sigterm_still_works() {
    if !prerequisites("daemon log sink test") {
        return;
    }
    let cfg = config(
        5,
        &[],
        "",
        &(http_service("web", "10.77.0.10", "") + &http_service("api", "10.77.0.11", "")),
    );
    // A pipe nobody reads: 64 KiB in, every further write(2) to it would block.
    let (reader, writer) = std::io::pipe().unwrap();
    let mut d = Daemon::start_opts(
        NetNs::new("logstall"),
        &cfg,
        &[("SUMMOND_LOG", "trace")],
        Some(Stdio::from(writer)),
    );
    summon_and_fetch(&d, "web", Ipv4Addr::new(10, 77, 0, 10));
    // At trace level every query logs about 800 bytes: 2,000 of them are more than the pipe
    // (64 KiB) and the log queue (1 MiB) hold together.
    for i in 0..2000 {
        let name = format!("nope{i}.{ZONE}");
        let m = d.query(&name, RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
        if i % 10 == 0 {
            let m = d.query_tcp("web.svc.test.", RecordType::A);
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        }
    }
    // A second cold summon (taps, launcher, vCPU thread) while the sink is still stalled.
    summon_and_fetch(&d, "api", Ipv4Addr::new(10, 77, 0, 11));
    // The lossy path really ran: lines were dropped, not written.
    assert!(d.metric("summon_log_dropped_total", &[]) > 0.0);
    let status = terminate_within(&mut d, Duration::from_secs(5));
    assert!(status.success(), "summond exited with {status}");
    drop(reader);
}

#[test]
fn a_log_reader_that_exited_does_not_kill_summond() {
    if !prerequisites("daemon log sink test") {
        return;
    }
    let cfg = config(
        5,
        &[],
        "",
        &(http_service("web", "10.77.0.10", "") + &http_service("api", "10.77.0.11", "")),
    );
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut d = Daemon::start_opts(
        NetNs::new("logepipe"),
        &cfg,
        &[
            ("RUST_BACKTRACE", "1"),
            (
                "SUMMOND_LOG",
                "debug,hickory_server=warn,netlink_packet_route=error",
            ),
        ],
        Some(Stdio::from(writer)),
    );
    // Every line summond logs from here on fails with EPIPE.
    summon_and_fetch(&d, "web", Ipv4Addr::new(10, 77, 0, 10));
    for i in 0..50 {
        let m = d.query(&format!("nope{i}.{ZONE}"), RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }
    summon_and_fetch(&d, "api", Ipv4Addr::new(10, 77, 0, 11));
    assert!(d.try_wait().is_none(), "summond died");
    assert!(d.metric("summon_log_dropped_total", &[]) > 0.0);
    let status = terminate_within(&mut d, Duration::from_secs(5));
    assert!(status.success(), "summond exited with {status}");
}
