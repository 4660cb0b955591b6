//! Boot benchmark of the `http` unikernel on the embedded KVM launcher, through the `Backend`
//! trait as the daemon uses it: `cargo bench -p summon-tests --bench http_boot`.
//!
//! Per run (SUMMON_BENCH_RUNS, default 200): the tap is opened first and a client connects at
//! once (its SYN waits in the tap, as with the daemon), then the instance is started. Measured
//! from the `start` call: NetReady (the guest's first POLL/NET_READ on its NIC) and the first
//! byte of the HTTP response. Then one instance under `wrk` (keep-alive) for requests/second,
//! and the host memory it costs (RSS).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use summon_launcher::{tap, InstanceEvent, TapSource};
use summon_tests::guest::{self, Guest, GUEST_MAC};
use summon_tests::netns::NetNs;
use summon_tests::{image, require};

const ARGS: &[&str] = &[
    "--ipv4=10.0.0.2/24",
    "--ipv4-gateway=10.0.0.1",
    "--name=bench",
];

fn main() {
    if !require::kvm_and_netns("KVM and network namespaces")
        || !require::check("wrk", require::tool("wrk").or_else(|_| which("wrk")))
    {
        return;
    }
    let runs: usize = std::env::var("SUMMON_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
        .max(1);
    let ns = NetNs::new("uni-bench");
    ns.add_tap("tap0", "10.0.0.1/24");
    ns.add_neighbour("tap0", "10.0.0.2", GUEST_MAC);
    let addr: SocketAddr = "10.0.0.2:80".parse().expect("literal");
    // One backend for all runs, as in the daemon (CPUID, TSC and the parsed image are cached).
    let _ = guest::backend();

    // Held open for the whole run, as the daemon holds an instance's tap: the carrier stays up,
    // so nothing sent before a guest starts is dropped (a tap coming up again only passes
    // traffic once the kernel's link watch has run). Each instance gets a duplicate.
    let tap_fd = ns.run(open_tap_retrying);

    let mut start_returned = Vec::with_capacity(runs);
    let mut net_ready = Vec::with_capacity(runs);
    let mut first_byte = Vec::with_capacity(runs);
    for _ in 0..runs {
        let fd = tap_fd.try_clone().expect("dup the tap fd");
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let client = ns.spawn(move || {
            go_rx.recv().expect("go");
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                .expect("connect to the booting guest");
            s.set_nodelay(true).expect("nodelay");
            s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                .expect("send");
            let mut byte = [0u8; 1];
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            s.read_exact(&mut byte).expect("first response byte");
            let at = Instant::now();
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            assert!(
                byte[0] == b'H' && rest.starts_with(b"TTP/1.1 200"),
                "bad response"
            );
            at
        });
        go_tx.send(()).expect("client alive");
        let t0 = Instant::now();
        let g = Guest::start(guest::spec(
            "bench",
            &image("http"),
            ARGS,
            Some(TapSource::Fd(fd)),
        ))
        .expect("start http");
        start_returned.push(t0.elapsed());
        let (ready_at, _) = g
            .events
            .wait_for(Duration::from_secs(10), |e| *e == InstanceEvent::NetReady)
            .expect("NetReady");
        net_ready.push(ready_at - t0);
        first_byte.push(client.join().expect("client") - t0);
        g.instance.stop().expect("stop");
        g.events
            .wait_for(Duration::from_secs(10), |e| *e == InstanceEvent::Stopped)
            .expect("stopped");
    }

    println!("http_boot: {runs} runs, image {}", image("http").display());
    report("start() returned", &mut start_returned);
    report("start -> NetReady", &mut net_ready);
    report("start -> first HTTP byte", &mut first_byte);

    throughput(&ns, &tap_fd);
}

fn which(name: &str) -> Result<(), String> {
    if std::path::Path::new(&format!("/usr/bin/{name}")).exists() {
        Ok(())
    } else {
        Err(format!("{name} not found"))
    }
}

/// The tap's previous user (the last instance) releases it from its own thread.
fn open_tap_retrying() -> OwnedFd {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tap::open("tap0", tap::Blocking::No) {
            Ok(fd) => return fd,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(e) => panic!("open tap0: {e}"),
        }
    }
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let n = samples.len();
    let pct = |p: f64| samples[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
    println!(
        "  {what:<26} median {:>8.3} ms   p99 {:>8.3} ms   min {:>8.3} ms   max {:>8.3} ms",
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(samples[0]),
        ms(samples[n - 1]),
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Resident memory of this process in KiB, counted exactly from its page tables
/// (`smaps_rollup`; VmRSS in `status` is a lazily synced approximation).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/smaps_rollup")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Rss:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// One instance under wrk, keep-alive, and its memory cost.
fn throughput(ns: &NetNs, tap_fd: &OwnedFd) {
    let fd = tap_fd.try_clone().expect("dup the tap fd");
    let g = Guest::start(guest::spec(
        "wrk",
        &image("http"),
        ARGS,
        Some(TapSource::Fd(fd)),
    ))
    .expect("start http");
    g.events
        .wait_for(Duration::from_secs(10), |e| *e == InstanceEvent::NetReady)
        .expect("NetReady");
    let out = ns
        .command("wrk")
        .args(["-t1", "-c16", "-d5s", "--latency", "http://10.0.0.2/"])
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "wrk failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rss_running = rss_kib();
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .unwrap_or("Requests/sec: ?");
    let p50 = text
        .lines()
        .find(|l| l.trim_start().starts_with("50%"))
        .map(str::trim)
        .unwrap_or("50% ?");
    let p99 = text
        .lines()
        .find(|l| l.trim_start().starts_with("99%"))
        .map(str::trim)
        .unwrap_or("99% ?");
    let errors = text
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .unwrap_or("no errors");
    println!("  wrk -t1 -c16 -d5s (keep-alive): {rps}  latency {p50}, {p99}; {errors}");
    let count = ns.run(|| {
        let mut s = TcpStream::connect("10.0.0.2:80").expect("connect");
        s.write_all(b"GET /count HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
            .expect("send");
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.rsplit("\r\n\r\n")
            .next()
            .unwrap_or("?")
            .trim()
            .to_string()
    });
    println!("  requests served by the instance (its /count): {count}");
    // The instance's share: what the process gives back once it is gone (its thread releases
    // guest memory after the Stopped event, so wait a little).
    g.instance.stop().expect("stop");
    g.events
        .wait_for(Duration::from_secs(10), |e| *e == InstanceEvent::Stopped)
        .expect("stopped");
    drop(g);
    std::thread::sleep(Duration::from_millis(300));
    println!(
        "  host RSS of the instance after the wrk run (Rss it frees when stopped, 16 MiB guest): {} KiB",
        rss_running.saturating_sub(rss_kib())
    );
}
