//! Density (issue 10): N services of the 8 MiB `http.hvt`, summoned one after another through
//! DNS, each checked by an HTTP GET and left running; then what N live instances cost (summond
//! RSS, host MemAvailable, threads, fds, memory maps, idle CPU over 10 s), how long SIGTERM
//! takes, and what it leaves behind (taps, routes, neighbours, addresses).
//!
//! `cargo bench -p summon-tests --bench density` (root, /dev/kvm).
//! Knobs: DENSITY_N (comma-separated counts, "1000,5000,10000"), DENSITY_IDLE_S (idle CPU
//! window, 10), DENSITY_SVG (plot path, docs/density.svg; "-" for none).
//!
//! The bench raises its own RLIMIT_NOFILE (hard and soft, as root may) before starting summond,
//! which inherits it: the host's default of 20,000 fds does not hold 10,000 instances
//! (docs/benchmarks.md, "Density").

use summon_tests::daemon as daemon_support;

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use daemon_support::cold::{cold_request, quantile};
use daemon_support::*;
use summon_tests::netns::NetNs;

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn service_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 77, 0, 10)) + i as u32)
}

fn services(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        s += &http_service(
            &format!("d{i:05}"),
            &service_ip(i).to_string(),
            "idle_timeout = \"1h\"",
        );
    }
    s
}

fn mem_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// What /proc says about one process.
#[derive(Debug, Clone, Copy, Default)]
struct ProcStat {
    rss_kib: u64,
    threads: u64,
    fds: u64,
    maps: u64,
    /// utime + stime in clock ticks.
    cpu_ticks: u64,
}

fn proc_stat(pid: i32) -> ProcStat {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of stat(5), i.e. 11 and 12 after the ')' part.
    let tick = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    ProcStat {
        rss_kib: field("VmRSS:"),
        threads: field("Threads:"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count() as u64)
            .unwrap_or(0),
        maps: std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .map(|m| m.lines().count() as u64)
            .unwrap_or(0),
        cpu_ticks: tick(11) + tick(12),
    }
}

/// summond and its worker processes together: what the daemon costs, wherever its guests run.
/// `fds` is summond's own table only (the figure its fd budget is about); `procs` counts them.
fn family_stat(pid: i32) -> (ProcStat, usize) {
    let procs = process_family(pid);
    let mut sum = proc_stat(pid);
    for &p in &procs[1..] {
        let s = proc_stat(p);
        sum.rss_kib += s.rss_kib;
        sum.threads += s.threads;
        sum.maps += s.maps;
        sum.cpu_ticks += s.cpu_ticks;
    }
    (sum, procs.len())
}

/// The threads of summond and its workers counted by name, most frequent first.
fn thread_names(pid: i32) -> String {
    let mut by_name = std::collections::BTreeMap::<String, usize>::new();
    for p in process_family(pid) {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in dir.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            // vCPU threads are named after their instance: count them as one kind.
            let name = comm.trim().trim_end_matches(|c: char| c.is_ascii_digit());
            *by_name.entry(name.to_string()).or_default() += 1;
        }
    }
    let mut v: Vec<_> = by_name.into_iter().collect();
    v.sort_by_key(|(_, c)| std::cmp::Reverse(*c));
    v.iter()
        .take(6)
        .map(|(n, c)| format!("{n} {c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Raises RLIMIT_NOFILE (soft and hard) to `want`, or as far as the kernel allows.
fn raise_nofile(want: u64) -> u64 {
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(want);
    let want = want.min(nr_open);
    let lim = libc::rlimit {
        rlim_cur: want,
        rlim_max: want,
    };
    // SAFETY: setrlimit/getrlimit on this process with a valid struct.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            eprintln!(
                "cannot raise RLIMIT_NOFILE to {want}: {}",
                std::io::Error::last_os_error()
            );
        }
        let mut now = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut now);
        now.rlim_cur
    }
}

/// Lines of `ip -n NS ARGS` output that mention the services' network (10.77.).
fn count_lines(d: &Daemon, args: &[&str], needle: &str) -> usize {
    d.ip(args).lines().filter(|l| l.contains(needle)).count()
}

struct Run {
    n: usize,
    /// Instances summond's fd budget holds, when fewer than `n`.
    fd_cap: Option<u64>,
    served: usize,
    failed: usize,
    errors: Vec<String>,
    first: Vec<Duration>,
    last: Vec<Duration>,
    retransmits: u32,
    rss_per_kib: f64,
    host_per_kib: f64,
    threads_per: f64,
    fds_per: f64,
    maps_per: f64,
    idle_cpu_pct: f64,
    sigterm: Duration,
    left: String,
}

/// The config for `n` services. The memory budget counts configured guest memory (8 MiB each),
/// not touched memory, so it is set to hold them all; `max_instances` is what summond's fd
/// budget holds when that is fewer (`summond check-config` says so), and the summons beyond
/// it are refused with reason `limit` and counted as failed.
fn density_config(n: usize) -> (String, Option<u64>) {
    let make = |max: u64| {
        let limits = format!(
            "[limits]\nmax_instances = {max}\nmax_concurrent_boots = 8\nmemory_budget = {}\n",
            n * 8 + 1024
        );
        config(3600, &[], &limits, &services(n))
    };
    let cfg = make(n as u64 + 16);
    let path = std::env::temp_dir().join(format!("summon-density-{}.toml", std::process::id()));
    std::fs::write(&path, &cfg).unwrap();
    let out = std::process::Command::new(summond())
        .arg("check-config")
        .arg(&path)
        .output()
        .expect("summond check-config");
    let _ = std::fs::remove_file(&path);
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    let holds = text
        .split("which holds ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok());
    match holds {
        Some(cap) if !out.status.success() => (make(cap), Some(cap)),
        _ => {
            assert!(out.status.success(), "check-config: {text}");
            (cfg, None)
        }
    }
}

fn run(n: usize, idle_window: Duration) -> Run {
    let (cfg, fd_cap) = density_config(n);
    if let Some(cap) = fd_cap {
        eprintln!("  the host's limits hold {cap} instances: max_instances = {cap}");
    }
    let mut d = Daemon::start_in(NetNs::new("dens"), &cfg);
    let pid = d.pid();
    // Settle: the prewarm pool fills right after start.
    std::thread::sleep(Duration::from_millis(500));
    let (before, _) = family_stat(pid);
    let avail_before = mem_available_kib();

    let dns: SocketAddr = DNS.parse().unwrap();
    let names: Vec<String> = (0..n).map(|i| format!("d{i:05}.svc.test.")).collect();
    let t_all = Instant::now();
    let (samples, errors) = d.ns.run(move || {
        let mut samples = Vec::with_capacity(n);
        let mut errors = Vec::new();
        for (i, q) in names.iter().enumerate() {
            match cold_request(dns, q) {
                Ok(s) => samples.push((i, s)),
                Err(e) => errors.push(format!("#{i} {e}")),
            }
            if (i + 1) % 1000 == 0 {
                eprintln!("  {} summoned, {} failed", i + 1, errors.len());
            }
        }
        (samples, errors)
    });
    let summon_time = t_all.elapsed();
    let served = samples.len();
    let failed = errors.len();
    // The first and the last 100 *served* summons (beyond the fd budget the rest are refused).
    let window = 100.min(served / 2).max(1);
    let mut first: Vec<Duration> = samples
        .iter()
        .take(window)
        .map(|(_, s)| s.first_byte)
        .collect();
    let mut last: Vec<Duration> = samples
        .iter()
        .skip(served.saturating_sub(window))
        .map(|(_, s)| s.first_byte)
        .collect();
    first.sort();
    last.sort();
    let retransmits = samples.iter().map(|(_, s)| s.retransmits).sum();
    eprintln!("  {served} served in {summon_time:?}");

    std::thread::sleep(Duration::from_secs(1));
    let (live, procs) = family_stat(pid);
    eprintln!("  processes: {procs} (summond and its workers)");
    eprintln!("  threads by name: {}", thread_names(pid));
    let avail_live = mem_available_kib();
    // Idle: everything up, nobody asks.
    let t0 = Instant::now();
    std::thread::sleep(idle_window);
    // A worker that exited meanwhile would lower the sum; none does while all guests live.
    let (idle_end, _) = family_stat(pid);
    let idle_cpu_pct = (idle_end.cpu_ticks.saturating_sub(live.cpu_ticks)) as f64
        / clock_ticks()
        / t0.elapsed().as_secs_f64()
        * 100.0;
    let per = |a: u64, b: u64| (a as f64 - b as f64) / served.max(1) as f64;

    // Not `Daemon::terminate`: its 20 s bound is a test's, and here the time is the figure.
    let t = Instant::now();
    d.signal(libc::SIGTERM);
    let status = loop {
        if let Some(s) = d.try_wait() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "summond did not exit within 600 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let sigterm = t.elapsed();
    assert!(status.success(), "summond exit status {status}");
    // Where the exit's time went: the daemon's own account, and what it logged after it.
    let log = daemon_support::plain(&d.log());
    if let Some(at) = log.rfind("all instances stopped") {
        let from = log[..at].rfind('\n').map_or(0, |i| i + 1);
        for line in log[from..]
            .lines()
            .filter(|l| !l.contains("cgroup"))
            .take(6)
        {
            println!("  exit: {line}");
        }
    }
    let taps = d.taps().len();
    let routes = count_lines(&d, &["-4", "route", "show"], "10.77.");
    let neigh = count_lines(&d, &["-4", "neigh", "show"], "10.77.");
    let addrs = count_lines(&d, &["-4", "-o", "addr", "show"], "10.77.");
    let left = format!("{taps} taps, {routes} routes, {neigh} neighbours, {addrs} addresses");
    drop(d);
    Run {
        n,
        fd_cap,
        served,
        failed,
        errors,
        first,
        last,
        retransmits,
        rss_per_kib: per(live.rss_kib, before.rss_kib),
        host_per_kib: (avail_before as f64 - avail_live as f64) / served.max(1) as f64,
        threads_per: per(live.threads, before.threads),
        fds_per: per(live.fds, before.fds),
        maps_per: per(live.maps, before.maps),
        idle_cpu_pct,
        sigterm,
        left,
    }
}

fn main() {
    if !prerequisites("density benchmark") {
        return;
    }
    let counts: Vec<usize> = env_or("DENSITY_N", "1000,5000,10000")
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|&n| n > 0)
        .collect();
    let idle_window = Duration::from_secs(env_or("DENSITY_IDLE_S", "10").parse().unwrap_or(10));
    let max = counts.iter().copied().max().unwrap_or(0);
    let nofile = raise_nofile(((max as u64) * 8 + 4096).max(65_536));
    println!(
        "density: N = {counts:?}, 8 MiB http.hvt each, summoned one after another (DNS → GET /); RLIMIT_NOFILE {nofile}"
    );
    let mut runs = Vec::new();
    for &n in &counts {
        eprintln!("N = {n}");
        let r = run(n, idle_window);
        for e in r.errors.iter().take(5) {
            eprintln!("  failed: {e}");
        }
        runs.push(r);
    }
    println!();
    println!(
        "| N | served | failed | first 100 served p50 / p99 (ms) | last 100 served p50 / p99 (ms) | retransmits | summond + workers RSS / inst (KiB) | host MemAvailable drop / inst (KiB) | threads / inst | fds / inst | maps / inst | idle CPU ({} s, % of a core) | SIGTERM (s) | left afterwards |",
        idle_window.as_secs()
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &runs {
        println!(
            "| {} | {} | {} | {} / {} | {} / {} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            r.n,
            r.served,
            r.failed,
            ms(quantile(&r.first, 0.5)),
            ms(quantile(&r.first, 0.99)),
            ms(quantile(&r.last, 0.5)),
            ms(quantile(&r.last, 0.99)),
            r.retransmits,
            r.rss_per_kib,
            r.host_per_kib,
            r.threads_per,
            r.fds_per,
            r.maps_per,
            r.idle_cpu_pct,
            r.sigterm.as_secs_f64(),
            r.left,
        );
    }
    println!();
    for r in &runs {
        let ratio =
            quantile(&r.last, 0.5).as_secs_f64() / quantile(&r.first, 0.5).as_secs_f64().max(1e-9);
        if let Some(cap) = r.fd_cap {
            println!(
                "N = {}: the host's limits hold {cap} instances; the rest were refused with reason limit",
                r.n
            );
        }
        println!(
            "goals at N = {}: served {} failed {} (0); idle CPU {:.2} % (<= 2); last/first p50 {:.2} (<= 1.25); host {:.0} KiB/inst (<= 1024); SIGTERM {:.2} s (<= 10)",
            r.n,
            r.served,
            r.failed,
            r.idle_cpu_pct,
            ratio,
            r.host_per_kib,
            r.sigterm.as_secs_f64()
        );
    }
    let svg_path = std::env::var("DENSITY_SVG").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/density.svg").to_string()
    });
    if svg_path != "-" && !runs.is_empty() {
        std::fs::write(&svg_path, svg(&runs)).expect("write SVG");
        println!("plot: {svg_path}");
    }
}

/// Cold p50 (first and last 100) and memory per instance against N, two panels side by side.
fn svg(runs: &[Run]) -> String {
    let (w, h) = (720.0, 320.0);
    let panel_w = w / 2.0;
    let (left, right, top, bottom) = (60.0, 20.0, 30.0, 50.0);
    let max_n = runs.iter().map(|r| r.n).max().unwrap_or(1) as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);
    let panels: [(&str, Vec<Series>); 2] = [
        (
            "cold DNS query → first byte, p50 (ms)",
            vec![
                (
                    "first 100",
                    "#1f77b4",
                    runs.iter()
                        .map(|r| (r.n as f64, quantile(&r.first, 0.5).as_secs_f64() * 1e3))
                        .collect(),
                ),
                (
                    "last 100",
                    "#d62728",
                    runs.iter()
                        .map(|r| (r.n as f64, quantile(&r.last, 0.5).as_secs_f64() * 1e3))
                        .collect(),
                ),
            ],
        ),
        (
            "memory per live instance (KiB)",
            vec![
                (
                    "host MemAvailable drop",
                    "#2ca02c",
                    runs.iter().map(|r| (r.n as f64, r.host_per_kib)).collect(),
                ),
                (
                    "summond RSS",
                    "#9467bd",
                    runs.iter().map(|r| (r.n as f64, r.rss_per_kib)).collect(),
                ),
            ],
        ),
    ];
    for (p, (title, series)) in panels.iter().enumerate() {
        let x0 = p as f64 * panel_w;
        let max_y = series
            .iter()
            .flat_map(|(_, _, pts)| pts.iter().map(|(_, y)| *y))
            .fold(0.0f64, f64::max)
            .max(1e-9)
            * 1.15;
        let x = |n: f64| x0 + left + n / max_n * (panel_w - left - right);
        let y = |v: f64| top + (1.0 - v / max_y) * (h - top - bottom);
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="16" text-anchor="middle">{title}</text>"#,
            x0 + panel_w / 2.0
        );
        for k in 0..=4 {
            let v = max_y * k as f64 / 4.0;
            let yy = y(v);
            let _ = writeln!(
                s,
                r##"<line x1="{:.1}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{v:.1}</text>"##,
                x0 + left,
                x0 + panel_w - right,
                x0 + left - 4.0,
                yy + 4.0
            );
        }
        for r in runs {
            let xx = x(r.n as f64);
            let _ = writeln!(
                s,
                r##"<line x1="{xx:.1}" y1="{top}" x2="{xx:.1}" y2="{:.1}" stroke="#eee"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                h - bottom,
                h - bottom + 14.0,
                r.n
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">live instances N</text>"#,
            x0 + panel_w / 2.0,
            h - 12.0
        );
        for (i, (label, colour, pts)) in series.iter().enumerate() {
            let pts_s: String = pts
                .iter()
                .map(|(n, v)| format!("{:.1},{:.1}", x(*n), y(*v)))
                .collect::<Vec<_>>()
                .join(" ");
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{pts_s}"/>"#
            );
            for (n, v) in pts {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                    x(*n),
                    y(*v)
                );
            }
            let ly = top + 12.0 + 15.0 * i as f64;
            let _ = writeln!(
                s,
                r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{label}</text>"#,
                x0 + left + 10.0,
                x0 + left + 30.0,
                x0 + left + 35.0,
                ly + 4.0
            );
        }
    }
    s.push_str("</svg>\n");
    s
}
