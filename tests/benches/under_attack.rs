//! Warm-query latency of a legitimate client while summond is under attack: one query at a time
//! (send → answer), UNDER_ATTACK_QUERIES (2,000) per phase, one every UNDER_ATTACK_INTERVAL_US
//! (1,000 µs), for a running service:
//!
//! - `baseline`: nothing else going on;
//! - `flood at a sink` (the control; UNDER_ATTACK_CONTROL=0 leaves it out): the same flood as
//!   below, at a socket in the namespace that nobody reads, so the client's figures show what the
//!   flooder and the kernel's delivery cost on this host without summond doing any work;
//! - `random-name flood`: another client, from an address that is not loopback (FLOOD_ADDR on
//!   the loopback interface of the bench's own namespace, so `[dns.rrl]`'s default loopback
//!   whitelist does not exempt it), sends queries for random names in the zone at a stated
//!   rate (UNDER_ATTACK_FLOOD_RATE, default 20,000 queries/s), paced per millisecond;
//! - `console flood`: a guest (`hostile.hvt --mode=console`) writes its console in a loop,
//!   with summond's log going to a file.
//!
//! Prints median and p99 per phase and p99 against the baseline's (goal: at most 3×), and the
//! CPU summond's threads (and its workers') used during each phase, by thread name (from
//! /proc/PID/task).
//! UNDER_ATTACK_CPU_QUOTA (e.g. "20%") sets the flooding guest's `cpu_quota`.
//! `cargo bench -p summon-tests --bench under_attack` (root, /dev/kvm).

use summon_tests::daemon as daemon_support;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use daemon_support::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use summon_tests::netns::NetNs;

/// The attacker's address by default: TEST-NET-1, added to `lo` in the bench's namespace only
/// (UNDER_ATTACK_FLOOD_FROM=127.0.1.1 floods from loopback, which `[dns.rrl]` whitelists).
const FLOOD_ADDR: &str = "192.0.2.66";

fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `n` sequential A queries for `name`, each timed, one every `every` (or at once after the
/// previous answer when that came later); sorted latencies.
fn sequential(server: SocketAddr, name: &str, n: u64, every: Duration) -> Vec<Duration> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 1500];
    let mut lat = Vec::with_capacity(n as usize);
    let mut lost = 0;
    let waited0 = own_wait();
    let start = Instant::now();
    for i in 0..n {
        std::thread::sleep((start + every * i as u32).saturating_duration_since(Instant::now()));
        let id = (i as u16).wrapping_mul(31).wrapping_add(7);
        let q = build_query(name, RecordType::A, id);
        let t = Instant::now();
        s.send_to(&q, server).unwrap();
        loop {
            match s.recv(&mut buf) {
                Ok(len) if len >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id => {
                    lat.push(t.elapsed());
                    break;
                }
                Ok(_) => continue,
                Err(_) => {
                    lost += 1;
                    break;
                }
            }
        }
    }
    if lost > 0 {
        println!("  ({lost} of {n} queries unanswered within 2 s, left out)");
    }
    println!(
        "  (the client itself waited runnable for a CPU {:.1}% of the phase)",
        (own_wait() - waited0) as f64 / 1e9 / start.elapsed().as_secs_f64() * 100.0
    );
    lat.sort();
    lat
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn report(phase: &str, lat: &[Duration], base_p99: Option<Duration>) -> Duration {
    let p99 = pct(lat, 0.99);
    let ratio = base_p99
        .map(|b| format!("  p99/baseline {:.2}x", p99.as_secs_f64() / b.as_secs_f64()))
        .unwrap_or_default();
    println!(
        "under_attack {phase:<18} queries {:5}  median {:8.1} us  p99 {:8.1} us  max {:8.1} us{ratio}",
        lat.len(),
        pct(lat, 0.5).as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        lat[lat.len() - 1].as_secs_f64() * 1e6,
    );
    p99
}

/// Random names in the zone from `from` at `rate` queries/s (a batch each millisecond,
/// behind schedule never caught up in a burst), replies drained.
fn flood(server: SocketAddr, from: IpAddr, rate: u64, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) {
    let s = UdpSocket::bind((from, 0)).unwrap();
    s.set_nonblocking(true).unwrap();
    let mut rng = summon_tests::rng::Rng(0x5eed);
    let mut buf = [0u8; 1500];
    let start = Instant::now();
    let mut done = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = (start.elapsed().as_micros() as u64 * rate / 1_000_000).min(done + rate / 100);
        while done < due {
            let label: String = (0..12)
                .map(|_| (b'a' + (rng.next() % 26) as u8) as char)
                .collect();
            let q = build_query(&format!("{label}.{ZONE}"), RecordType::A, rng.next() as u16);
            if s.send_to(&q, server).is_ok() {
                sent.fetch_add(1, Ordering::Relaxed);
            }
            done += 1;
        }
        while s.recv(&mut buf).is_ok() {}
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Runs `f` while random-name queries go from `from` to `to` at `rate` (started 300 ms before,
/// so the flood is steady when `f` starts); prints the rate achieved.
fn flooding<T>(ns: &NetNs, to: SocketAddr, from: IpAddr, rate: u64, f: impl FnOnce() -> T) -> T {
    let (stop, sent) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let flooder = {
        let (stop, sent) = (stop.clone(), sent.clone());
        ns.spawn(move || flood(to, from, rate, stop, sent))
    };
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let sent0 = sent.load(Ordering::Relaxed);
    let out = f();
    let sent_rate = (sent.load(Ordering::Relaxed) - sent0) as f64 / t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = flooder.join();
    println!("  (flood: {sent_rate:.0} queries/s sent from {from} to {to}, asked {rate})");
    out
}

/// ns the calling thread has waited runnable for a CPU (schedstat).
fn own_wait() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split(' ').nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Per thread name: ns on a CPU and ns runnable but waiting for one (schedstat), summed over
/// the threads of that name of `pid` and its worker processes.
fn thread_cpu(pid: i32) -> std::collections::BTreeMap<String, (u64, u64)> {
    let mut by_name = std::collections::BTreeMap::new();
    let tasks = summon_tests::daemon::process_family(pid)
        .into_iter()
        .filter_map(|p| std::fs::read_dir(format!("/proc/{p}/task")).ok())
        .flatten();
    for t in tasks.flatten() {
        let (Ok(comm), Ok(sched)) = (
            std::fs::read_to_string(t.path().join("comm")),
            std::fs::read_to_string(t.path().join("schedstat")),
        ) else {
            continue;
        };
        let mut f = sched.split(' ').map(|v| v.parse::<u64>().unwrap_or(0));
        let (run, wait) = (f.next().unwrap_or(0), f.next().unwrap_or(0));
        let e = by_name.entry(comm.trim().to_string()).or_insert((0, 0));
        *e = (e.0 + run, e.1 + wait);
    }
    by_name
}

/// Runs `f`, then prints, for summond's threads, the CPU they used and the time they waited
/// runnable for a CPU meanwhile and until at least a second has passed (the attack still
/// going), in % of the elapsed time.
fn with_cpu<T>(pid: i32, f: impl FnOnce() -> T) -> T {
    let (before, t) = (thread_cpu(pid), Instant::now());
    let out = f();
    std::thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
    let (after, secs) = (thread_cpu(pid), t.elapsed().as_secs_f64());
    let pct = |ns: u64| ns as f64 / 1e9 / secs * 100.0;
    let used: Vec<String> = after
        .iter()
        .map(|(name, &(run, wait))| {
            let (run0, wait0) = before.get(name).copied().unwrap_or((0, 0));
            (name, run.saturating_sub(run0), wait.saturating_sub(wait0))
        })
        .filter(|&(_, run, _)| pct(run) >= 0.5)
        .map(|(name, run, wait)| format!("{name} {:.1}% (waited {:.1}%)", pct(run), pct(wait)))
        .collect();
    println!("  (summond CPU over {secs:.1} s: {})", used.join(", "));
    out
}

fn main() {
    if !prerequisites("under_attack benchmark") {
        return;
    }
    let n = env_or("UNDER_ATTACK_QUERIES", 2000);
    // Spread over a second or more, so a phase's p99 covers the attack and not one instant.
    let every = Duration::from_micros(env_or("UNDER_ATTACK_INTERVAL_US", 1000));
    // The flooding guest's cpu_quota (default: the daemon's, 100 %).
    let quota = std::env::var("UNDER_ATTACK_CPU_QUOTA")
        .map(|q| format!("cpu_quota = \"{q}\"\n"))
        .unwrap_or_default();
    let services = format!(
        "{}[[service]]\nname = \"bad\"\nimage = \"{}\"\nip = \"10.77.0.20\"\nmemory_mib = 8\nargs = [\"--mode=console\"]\n{quota}",
        http_service("web", "10.77.0.10", ""),
        image("hostile").display()
    );
    if !quota.is_empty() {
        println!("  (console flooder with {})", quota.trim());
    }
    let d = Daemon::start("bench-attack", &config(10, &[], "", &services));
    let server: SocketAddr = DNS.parse().unwrap();
    let web = format!("web.{ZONE}");
    let m = d.query(&web, RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{m:?}");
    // Warm up the path (and the guest), then measure.
    d.ns.run(|| sequential(server, &web, 200, Duration::ZERO));

    let pid = d.pid();
    let base = with_cpu(pid, || d.ns.run(|| sequential(server, &web, n, every)));
    let base_p99 = report("baseline", &base, None);

    // The attacker's own address, outside the loopback whitelist, in this namespace only.
    let from: IpAddr = std::env::var("UNDER_ATTACK_FLOOD_FROM")
        .unwrap_or_else(|_| FLOOD_ADDR.into())
        .parse()
        .expect("UNDER_ATTACK_FLOOD_FROM: an IP address");
    if !from.is_loopback() {
        d.ip(&["addr", "add", &format!("{from}/32"), "dev", "lo"]);
    }
    let rate = env_or("UNDER_ATTACK_FLOOD_RATE", 20_000);
    let measure = || with_cpu(pid, || d.ns.run(|| sequential(server, &web, n, every)));

    // The control: the same flood at a socket nobody reads. What it costs the client is the
    // flooder's own sends and the kernel's delivery on this host, not summond.
    if std::env::var("UNDER_ATTACK_CONTROL").map_or(true, |v| v != "0") {
        let sink = d.ns.run(|| UdpSocket::bind("127.0.0.1:0").unwrap());
        let to = sink.local_addr().unwrap();
        let lat = flooding(&d.ns, to, from, rate, measure);
        report("flood at a sink", &lat, Some(base_p99));
        sink.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 512];
        let held = std::iter::from_fn(|| sink.recv(&mut buf).ok()).count();
        assert!(held > 0, "the control's flood never reached its socket");
        println!("  (the sink's queue held {held} of the flood's datagrams, the rest dropped)");
    }
    let lat = flooding(&d.ns, server, from, rate, measure);
    report("random-name flood", &lat, Some(base_p99));

    let m = d.query(&format!("bad.{ZONE}"), RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{m:?}");
    std::thread::sleep(Duration::from_secs(1));
    let lat = with_cpu(pid, || d.ns.run(|| sequential(server, &web, n, every)));
    report("console flood", &lat, Some(base_p99));
    println!(
        "  (console bytes dropped by the rate limit: {})",
        d.metric(
            "summon_guest_console_dropped_bytes_total",
            &[("service", "bad")]
        )
    );
}
