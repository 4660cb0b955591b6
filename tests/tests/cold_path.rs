//! The cold path, end to end with the real summond in its own network namespace:
//! a client resolves a stopped service and sends its HTTP request at once; no request may lose
//! its SYN (a lost SYN costs Linux's 1 s initial RTO, so ≥ 1 s or a retransmit is a failure,
//! not a slow run). Also: a `reply = "ready"` service whose guest never brings its network up
//! gets SERVFAIL at `ready_timeout` and is cleaned up; and what a tap does with more early
//! packets than its `txqueuelen`.

use summon_tests::daemon as daemon_support;

use summon_test_support::elfgen;

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use daemon_support::cold::{cold_request, ColdSample};
use daemon_support::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use summon_launcher::{tap, MacAddr};
use summon_tests::netns::NetNs;

/// ≥ this is a retransmitted SYN (or request), whatever the load.
const LOST_PACKET: Duration = Duration::from_secs(1);

fn stop(d: &Daemon, name: &str) {
    let admin: SocketAddr = ADMIN.parse().unwrap();
    let path = format!("/v1/instances/{name}/stop");
    let body =
        d.ns.run(move || admin_post(admin, &path))
            .expect("admin stop");
    assert!(body.contains("stopped"), "stop {name}: {body}");
}

fn check(what: &str, results: &[(String, Result<ColdSample, String>)], d: &Daemon) {
    let mut bad = Vec::new();
    for (name, r) in results {
        match r {
            Ok(s) if s.first_byte >= LOST_PACKET || s.retransmits != 0 => bad.push(format!(
                "{name}: first byte after {:?}, {} retransmits (answer {:?}, connected {:?})",
                s.first_byte, s.retransmits, s.answer, s.connected
            )),
            Ok(_) => {}
            Err(e) => bad.push(format!("{name}: {e}")),
        }
    }
    assert!(
        bad.is_empty(),
        "{what}: {} of {} cold requests failed or were delayed:\n{}\n--- log tail ---\n{}",
        bad.len(),
        results.len(),
        bad.join("\n"),
        tail(&d.log(), 40)
    );
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<_> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn max_first_byte(results: &[(String, Result<ColdSample, String>)]) -> Duration {
    results
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok().map(|s| s.first_byte))
        .max()
        .unwrap_or_default()
}

#[test]
fn two_hundred_cold_summons_each_answer_at_once_without_a_lost_syn() {
    if !prerequisites("cold path test") {
        return;
    }
    let d = Daemon::start(
        "cold200",
        &config(
            5,
            &[],
            "",
            &http_service("web", "10.77.0.10", "idle_timeout = \"10m\""),
        ),
    );
    let dns: SocketAddr = DNS.parse().unwrap();
    let mut results = Vec::new();
    for i in 0..200 {
        if i > 0 {
            stop(&d, "web");
        }
        let r = d.ns.run(move || cold_request(dns, "web.svc.test."));
        results.push((format!("web #{i}"), r));
    }
    check("200 sequential cold summons", &results, &d);
    assert_eq!(d.metric("summon_boots_total", &[("service", "web")]), 200.0);
    assert_eq!(
        d.metric(
            "summon_summons_total",
            &[("service", "web"), ("result", "cold")]
        ),
        200.0
    );
    // The stage histogram saw every cold start.
    assert_eq!(
        d.metric("summon_cold_stage_seconds_count", &[("stage", "plumbing")]),
        200.0
    );
    eprintln!(
        "200 cold summons: slowest query → first byte {:?}",
        max_first_byte(&results)
    );
}

#[test]
fn twenty_services_summoned_at_once_all_answer_without_a_lost_syn() {
    if !prerequisites("cold path burst test") {
        return;
    }
    const N: usize = 20;
    const ROUNDS: usize = 5;
    let services: String = (0..N)
        .map(|i| {
            http_service(
                &format!("s{i}"),
                &format!("10.77.1.{}", 10 + i),
                "idle_timeout = \"10m\"",
            )
        })
        .collect();
    let limits = "[limits]\nmax_instances = 32\nmax_concurrent_boots = 32\n";
    let d = Daemon::start("cold20", &config(5, &[], limits, &services));
    let dns: SocketAddr = DNS.parse().unwrap();
    let mut results = Vec::new();
    for round in 0..ROUNDS {
        if round > 0 {
            for i in 0..N {
                stop(&d, &format!("s{i}"));
            }
        }
        let batch = d.ns.run(move || {
            // Threads spawned here inherit the namespace of this thread.
            let start = std::sync::Barrier::new(N);
            std::thread::scope(|s| {
                let hs: Vec<_> = (0..N)
                    .map(|i| {
                        let start = &start;
                        s.spawn(move || {
                            start.wait();
                            cold_request(dns, &format!("s{i}.svc.test."))
                        })
                    })
                    .collect();
                hs.into_iter()
                    .enumerate()
                    .map(|(i, h)| (format!("s{i} round {round}"), h.join().unwrap()))
                    .collect::<Vec<_>>()
            })
        });
        results.extend(batch);
    }
    check("20 services at once", &results, &d);
    let boots: f64 = (0..N)
        .map(|i| d.metric("summon_boots_total", &[("service", &format!("s{i}"))]))
        .sum();
    assert_eq!(boots, (N * ROUNDS) as f64);
    eprintln!(
        "{ROUNDS} rounds of {N} services at once: slowest query → first byte {:?}",
        max_first_byte(&results)
    );
}

/// An hvt image that declares the `service` NIC and then spins in its first instruction: a
/// guest that never gets as far as its network driver.
fn never_ready_image(dir: &std::path::Path) -> std::path::PathBuf {
    let mut b =
        elfgen::ImageBuilder::with_devices(&[("service", summon_hvt_abi::MFT_DEV_NET_BASIC)]);
    b.code = vec![0xeb, 0xfe]; // jmp .
    let path = dir.join("never-ready.hvt");
    std::fs::write(&path, b.build().to_bytes()).unwrap();
    path
}

#[test]
fn reply_ready_times_out_with_servfail_and_cleans_up_the_instance() {
    if !prerequisites("ready timeout test") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("summon-cold-ready-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let image = never_ready_image(&dir);
    let svc = format!(
        "[[service]]\nname = \"stuck\"\nimage = \"{}\"\nip = \"10.77.0.30\"\nmemory_mib = 4\nnet_args = false\nreply = \"ready\"\nready_timeout = \"300ms\"\n",
        image.display()
    );
    let d = Daemon::start("coldready", &config(5, &[], "", &svc));
    let t = Instant::now();
    let m = d.query("stuck.svc.test.", RecordType::A);
    let took = t.elapsed();
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(a_records(&m).is_empty());
    assert!(
        took >= Duration::from_millis(300),
        "SERVFAIL before ready_timeout: {took:?}"
    );
    // Cleaned up: the instance is destroyed, its tap down (a spare) and its route and
    // neighbour entry gone.
    assert!(
        wait_until(Duration::from_secs(5), || d.live_taps().is_empty()),
        "tap left up: {:?}\n{}",
        d.live_taps(),
        d.log()
    );
    assert!(!d.ip(&["route"]).contains("10.77.0.30"));
    assert!(!d.ip(&["neigh"]).contains("10.77.0.30"));
    assert!(
        wait_until(Duration::from_secs(5), || {
            d.admin("/v1/instances")
                .replace(' ', "")
                .contains("\"state\":\"stopped\"")
        }),
        "{}",
        d.admin("/v1/instances")
    );
    assert_eq!(
        d.metric(
            "summon_summons_total",
            &[("service", "stuck"), ("result", "timeout")]
        ),
        1.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Frames waiting in a tap nobody reads yet: the kernel keeps `txqueuelen` of them and drops
/// the rest (counted as the link's tx_dropped); the guest's first reads get the oldest ones.
#[test]
fn a_tap_holds_txqueuelen_early_packets_and_drops_the_excess() {
    if !summon_tests::require::kvm_and_netns("tap queue test")
        || !summon_tests::require::check("tap queue test", summon_tests::require::tool("ip"))
    {
        return;
    }
    const QLEN: usize = 64;
    const SENT: usize = 500;
    let ns = NetNs::new("tapq");
    let name = ns.name().to_string();
    // Opened first, like the daemon does: an unattached tap has no carrier and drops everything.
    let fd: OwnedFd = ns
        .run(|| tap::open("smq0", tap::Blocking::No))
        .expect("open tap");
    summon_tests::netns::ip(&[
        "-n",
        &name,
        "link",
        "set",
        "smq0",
        "txqueuelen",
        &QLEN.to_string(),
    ]);
    summon_tests::netns::ip(&["-n", &name, "addr", "add", "10.78.0.1/32", "dev", "smq0"]);
    summon_tests::netns::ip(&["-n", &name, "link", "set", "smq0", "up"]);
    summon_tests::netns::ip(&[
        "-n",
        &name,
        "route",
        "add",
        "10.78.0.2/32",
        "dev",
        "smq0",
        "src",
        "10.78.0.1",
    ]);
    ns.add_neighbour(
        "smq0",
        "10.78.0.2",
        MacAddr::new([0x02, 0x53, 10, 78, 0, 2]),
    );
    let sent_errors = ns.run(|| {
        let s = UdpSocket::bind("10.78.0.1:0").unwrap();
        (0..SENT)
            .filter(|i| {
                s.send_to(&(*i as u32).to_be_bytes(), "10.78.0.2:9")
                    .is_err()
            })
            .count()
    });
    // Read what the "guest" finds: frames to 10.78.0.2 port 9, in order.
    let mut seqs = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        // SAFETY: read(2) into a buffer we own on the non-blocking tap fd we own.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        let f = &buf[..n as usize];
        // Ethernet(14) + IPv4(20, no options) + UDP(8) + 4 bytes of payload.
        if f.len() >= 46 && f[12..14] == [0x08, 0x00] && f[23] == 17 && f[30..34] == [10, 78, 0, 2]
        {
            seqs.push(u32::from_be_bytes([f[42], f[43], f[44], f[45]]));
        }
    }
    let stats = std::process::Command::new("ip")
        .args(["-n", &name, "-s", "link", "show", "smq0"])
        .output()
        .unwrap();
    let stats = String::from_utf8_lossy(&stats.stdout).into_owned();
    eprintln!(
        "txqueuelen {QLEN}, {SENT} sent ({sent_errors} send errors), {} delivered on first read\n{stats}",
        seqs.len()
    );
    assert!(!seqs.is_empty(), "nothing was held");
    assert_eq!(seqs[0], 0, "the first early packet must be kept");
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "held packets out of order: {seqs:?}"
    );
    // Held: the tap's ring of txqueuelen frames, the first ones sent; later ones are dropped
    // (tx_dropped). A few slots may go to the kernel's own IPv6 link-up chatter.
    assert!(
        seqs.len() <= QLEN && seqs.len() + 8 >= QLEN,
        "expected txqueuelen ({QLEN}) of {SENT} held, got {}",
        seqs.len()
    );
    assert!(seqs.iter().enumerate().all(|(i, s)| *s == i as u32));
}
