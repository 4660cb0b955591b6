//! Hostile guests against the real daemon: a console flooder with a log reader that stalls or
//! is gone, a spinner under a CPU quota, a frame flooder that must still be reaped, an exit
//! storm. Other services' DNS answers, pages and cold boots must not notice, and SIGTERM must
//! always work. The guests are `hostile.hvt` (unikernels/hostile) in its four modes.

use summon_tests::daemon as daemon_support;

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Stdio;
use std::time::{Duration, Instant};

use daemon_support::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use summon_tests::netns::NetNs;

/// A `[[service]]` of `hostile.hvt` in `mode`, with `extra` keys.
fn hostile_service(name: &str, ip: &str, mode: &str, extra: &str) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nimage = \"{}\"\nip = \"{ip}\"\nmemory_mib = 8\nargs = [\"--mode={mode}\"]\n{extra}\n",
        image("hostile").display()
    )
}

/// A pipe: (read end, write end), both close-on-exec (the child gets the write end through
/// `Stdio`, which dups it).
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into `fds`, which has room for them.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Asks for `name`'s A record `n` times in a row; every answer must be NOERROR with the
/// address. Returns the latencies, sorted.
fn a_latencies(d: &Daemon, name: &str, n: usize) -> Vec<Duration> {
    let name = name.to_string();
    let mut lat = d.ns.run(move || {
        (0..n)
            .map(|i| {
                let t = Instant::now();
                let m = query_udp(DNS.parse().unwrap(), &name, RecordType::A)
                    .unwrap_or_else(|e| panic!("query {i} for {name}: {e}"));
                let took = t.elapsed();
                assert_eq!(m.metadata.response_code, ResponseCode::NoError, "query {i}");
                assert_eq!(a_records(&m).len(), 1, "query {i}: {m:?}");
                took
            })
            .collect::<Vec<_>>()
    });
    lat.sort();
    lat
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Summons `name` and fetches its page (retrying while the guest boots).
fn summon_and_get(d: &Daemon, name: &str, ip: &str) -> String {
    let m = d.query(&format!("{name}.{ZONE}"), RecordType::A);
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::NoError,
        "summoning {name}: {m:?}"
    );
    let addr: SocketAddr = format!("{ip}:80").parse().unwrap();
    d.ns.run(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match http_get(addr, "/") {
                Ok(body) => return body,
                Err(e) if Instant::now() > deadline => panic!("GET http://{addr}/: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    })
}

/// The vCPU threads of service `service` in the daemon and its worker processes.
fn vcpu_threads(d: &Daemon, service: &str) -> Vec<u32> {
    d.vcpu_threads(service)
        .into_iter()
        .map(|(_, tid)| tid)
        .collect()
}

/// CPU time the kernel accounted to thread `tid` (schedstat: nanoseconds on a CPU).
fn thread_cpu(tid: u32) -> Duration {
    let s = std::fs::read_to_string(format!("/proc/{tid}/schedstat"))
        .unwrap_or_else(|e| panic!("schedstat of {tid}: {e}"));
    let ns: u64 = s
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("schedstat's first field");
    Duration::from_nanos(ns)
}

const WEB: &str = "10.77.0.10";
const API: &str = "10.77.0.12";

fn three_services(hostile_mode: &str, hostile_extra: &str) -> String {
    config(
        10,
        &[],
        "",
        &format!(
            "{}{}{}",
            http_service("web", WEB, ""),
            http_service("api", API, ""),
            hostile_service("bad", "10.77.0.20", hostile_mode, hostile_extra)
        ),
    )
}

#[test]
fn a_console_flooder_with_a_stalled_log_reader_starves_no_other_service() {
    if !prerequisites("daemon console flood, stalled log") {
        return;
    }
    // The read end stays open and is never read: once the pipe is full, every write to stderr
    // would block.
    let (_reader, writer) = pipe();
    let mut d = Daemon::start_opts(
        NetNs::new("glim-stall"),
        &three_services("console", ""),
        &[],
        Some(Stdio::from(writer)),
    );
    let page = summon_and_get(&d, "web", WEB);
    assert!(page.contains("web"), "{page}");
    let m = d.query(&format!("bad.{ZONE}"), RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    // Let the flooder fill the pipe many times over.
    std::thread::sleep(Duration::from_secs(1));

    let lat = a_latencies(&d, &format!("web.{ZONE}"), 200);
    let p99 = percentile(&lat, 0.99);
    eprintln!(
        "200 A queries beside a console flooder, stalled log: p50 {:?} p99 {p99:?} max {:?}",
        percentile(&lat, 0.5),
        lat[lat.len() - 1]
    );
    assert!(p99 <= Duration::from_millis(50), "p99 {p99:?}");
    // The console rate limit (default 64 KiB/s) dropped most of the flood, and says so.
    let dropped = d.metric(
        "summon_guest_console_dropped_bytes_total",
        &[("service", "bad")],
    );
    assert!(dropped > 0.0, "console bytes dropped: {dropped}");
    let page = summon_and_get(&d, "web", WEB);
    assert!(page.contains("web"), "{page}");
    // A cold boot of a third service.
    let page = summon_and_get(&d, "api", API);
    assert!(page.contains("api"), "{page}");

    let status = d.terminate_within(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{status}");
}

/// stderr is a pipe whose reader has exited: every log write fails with EPIPE.
fn with_a_broken_log_pipe(tag: &str, flooder: bool) {
    let (reader, writer) = pipe();
    drop(reader);
    let services = if flooder {
        three_services("console", "")
    } else {
        config(
            10,
            &[],
            "",
            &format!(
                "{}{}",
                http_service("web", WEB, ""),
                http_service("api", API, "")
            ),
        )
    };
    let mut d = Daemon::start_opts(
        NetNs::new(tag),
        &services,
        &[("RUST_BACKTRACE", "1")],
        Some(Stdio::from(writer)),
    );
    if flooder {
        let m = d.query(&format!("bad.{ZONE}"), RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        std::thread::sleep(Duration::from_millis(500));
    }
    let page = summon_and_get(&d, "web", WEB);
    assert!(page.contains("web"), "{page}");
    let page = summon_and_get(&d, "api", API);
    assert!(page.contains("api"), "{page}");
    assert!(d.try_wait().is_none(), "summond died");
    let status = d.terminate_within(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn with_the_log_reader_gone_cold_summons_work_and_sigterm_exits_0() {
    if !prerequisites("daemon broken log pipe") {
        return;
    }
    with_a_broken_log_pipe("glim-epipe", false);
}

#[test]
fn with_the_log_reader_gone_and_a_console_flooder_sigterm_exits_0() {
    if !prerequisites("daemon broken log pipe, console flood") {
        return;
    }
    with_a_broken_log_pipe("glim-epipe-flood", true);
}

#[test]
fn a_spinner_with_a_20_percent_quota_uses_at_most_a_quarter_of_a_core() {
    if !prerequisites("daemon spinner under cpu_quota") {
        return;
    }
    let d = Daemon::start(
        "glim-spin",
        &config(
            10,
            &[],
            "",
            &format!(
                "{}{}",
                http_service("web", WEB, ""),
                hostile_service("spin", "10.77.0.21", "spin", "cpu_quota = \"20%\"")
            ),
        ),
    );
    summon_and_get(&d, "web", WEB);
    let m = d.query(&format!("spin.{ZONE}"), RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    let pid = d.pid();
    assert!(
        wait_until(Duration::from_secs(5), || vcpu_threads(&d, "spin").len()
            == 1),
        "no vCPU thread of spin in the processes {:?}",
        d.processes()
    );
    let tid = vcpu_threads(&d, "spin")[0];
    // Let it reach its spin loop, then measure over 5 s while asking DNS all along.
    std::thread::sleep(Duration::from_millis(500));
    let (c0, t0) = (thread_cpu(tid), Instant::now());
    let mut lat = Vec::new();
    while t0.elapsed() < Duration::from_secs(5) {
        lat.extend(a_latencies(&d, &format!("web.{ZONE}"), 10));
        std::thread::sleep(Duration::from_millis(50));
    }
    let (c1, wall) = (thread_cpu(tid), t0.elapsed());
    let share = (c1 - c0).as_secs_f64() / wall.as_secs_f64();
    lat.sort();
    eprintln!(
        "spinner with cpu_quota 20%: {:.1} % of a core over {wall:?}; {} A queries meanwhile, p50 {:?} p99 {:?}",
        share * 100.0,
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    assert!(
        share <= 0.25,
        "the spinner used {:.1} % of a core",
        share * 100.0
    );
    // It did spin (a guest that slept would pass the bound trivially).
    assert!(
        share >= 0.05,
        "the spinner used only {:.1} %",
        share * 100.0
    );
    // The kernel throttled it, and the daemon exports that (how often depends on how much CPU
    // the shared host gave it; at least once in 5 s of spinning).
    let throttled = d.metric(
        "summon_guest_cpu_throttled_periods_total",
        &[("service", "spin")],
    );
    eprintln!("throttled periods: {throttled}");
    assert!(throttled >= 1.0, "throttled periods {throttled}");
    assert_eq!(d.metric("summon_guest_cpu_quota_enforced", &[]), 1.0);
    // On a cgroup-v1 host (as here) the daemon's group sits at the top of the cpu hierarchy
    // (the test runs in its root group); a clean exit removes it with the instances' groups.
    let group = std::path::PathBuf::from(format!("/sys/fs/cgroup/cpu/summond-{pid}"));
    let v1 = group.exists();
    if v1 {
        // The guest's group is inside its worker's own (the only part of cgroupfs the worker
        // may write); a worker that dies leaves none behind, since summond removes it once it
        // has reaped the process.
        let workers: Vec<String> = std::fs::read_dir(&group)
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with("worker-"))
            .collect();
        assert_eq!(workers.len(), 1, "{workers:?}");
        let worker_group = group.join(&workers[0]);
        let wpid: i32 = workers[0]["worker-".len()..].parse().unwrap();
        let inside = std::fs::read_dir(&worker_group).unwrap().flatten().count();
        assert!(inside >= 1, "no guest group in {}", worker_group.display());
        // SAFETY: kill(2) on a worker process of the daemon this test started.
        assert_eq!(unsafe { libc::kill(wpid, libc::SIGKILL) }, 0);
        assert!(
            wait_until(Duration::from_secs(5), || !worker_group.exists()),
            "{} left after its worker died",
            worker_group.display()
        );
    }
    let mut d = d;
    let status = d.terminate_within(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{status}");
    if v1 {
        assert!(!group.exists(), "{} left after exit", group.display());
    }
}

#[test]
fn a_frame_flooder_is_reaped_after_its_idle_timeout_like_an_idle_guest() {
    if !prerequisites("daemon frame flooder reaped") {
        return;
    }
    let d = Daemon::start(
        "glim-frames",
        &config(
            1,
            &[],
            "",
            &hostile_service("flood", "10.77.0.22", "frames", "idle_timeout = \"2s\""),
        ),
    );
    let m = d.query(&format!("flood.{ZONE}"), RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    let t = Instant::now();
    // Idle = no query for 2 × ttl (2 s) and no traffic towards the guest for 2 s; the guest's
    // own frames do not count. Reaped within a few reaper periods after that.
    let reaped = wait_until(Duration::from_secs(15), || {
        d.metric("summon_reaped_total", &[("service", "flood")]) >= 1.0
    });
    let took = t.elapsed();
    eprintln!("frame flooder reaped: {reaped} after {took:?}");
    assert!(reaped, "the frame flooder was not reaped within 15 s");
    assert!(
        took >= Duration::from_secs(2),
        "reaped before its idle_timeout: {took:?}"
    );
    let dropped = d.metric(
        "summon_guest_tx_dropped_frames_total",
        &[("service", "flood")],
    );
    eprintln!("frames dropped by the rate limit: {dropped}");
}

#[test]
fn an_exit_storm_guest_leaves_dns_responsive() {
    if !prerequisites("daemon exit storm") {
        return;
    }
    // A low exit rate, so that the throttle (and its metric) certainly engages.
    let d = Daemon::start(
        "glim-exits",
        &config(
            10,
            &[],
            "[limits]\nexits_per_sec = 1000",
            &format!(
                "{}{}",
                http_service("web", WEB, ""),
                hostile_service("storm", "10.77.0.23", "exits", "")
            ),
        ),
    );
    summon_and_get(&d, "web", WEB);
    let m = d.query(&format!("storm.{ZONE}"), RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    std::thread::sleep(Duration::from_secs(1));
    let lat = a_latencies(&d, &format!("web.{ZONE}"), 200);
    eprintln!(
        "200 A queries beside an exit storm: p50 {:?} p99 {:?} max {:?}; exits throttled {}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat[lat.len() - 1],
        d.metric(
            "summon_guest_exits_throttled_total",
            &[("service", "storm")]
        )
    );
    // Responsive: every query answered (a_latencies checks each) and none waited a second.
    assert!(
        lat[lat.len() - 1] < Duration::from_secs(1),
        "{:?}",
        lat[lat.len() - 1]
    );
    let page = summon_and_get(&d, "web", WEB);
    assert!(page.contains("web"), "{page}");
    let throttled = d.metric(
        "summon_guest_exits_throttled_total",
        &[("service", "storm")],
    );
    assert!(throttled > 0.0, "exits throttled: {throttled}");
    let storm_alive = d.admin("/v1/instances");
    assert!(storm_alive.contains("\"storm\""), "{storm_alive}");
}
