//! The cold path: DNS query sent → first HTTP byte for a client that resolves through
//! summond and connects at once, over many summons of each wake path — cold boot with
//! `reply = "immediate"`, cold boot with `reply = "ready"`, resume from suspend, already running
//! (warm) — interleaved round by round so load drift hits all alike. Then the same cold
//! immediate summons with the prepared-VM pool off (`[kvm] prewarm = 0`). The daemon's per-stage
//! timestamps (debug log, also `summon_cold_stage_seconds`) give where the cold time goes.
//!
//! `cargo bench -p summon-tests --bench cold_path` (root, /dev/kvm).
//! Knobs: COLD_BENCH_N (summons per wake path, 1000), COLD_BENCH_POOL0_N (cold summons with
//! prewarm = 0, 300), COLD_BENCH_SVG (plot path, docs/cold-path.svg; "-" for none), COLD_BENCH_LOG
//! (a path to keep the first daemon's whole log at).

use summon_tests::daemon as daemon_support;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use daemon_support::cold::{cold_request, quantile, ColdSample};
use daemon_support::*;
use summon_tests::netns::NetNs;

#[derive(Clone, Copy, PartialEq)]
enum Wake {
    ColdImmediate,
    ColdReady,
    Resume,
    Warm,
}

impl Wake {
    const ALL: [Wake; 4] = [
        Wake::ColdImmediate,
        Wake::ColdReady,
        Wake::Resume,
        Wake::Warm,
    ];
    fn label(self) -> &'static str {
        match self {
            Wake::ColdImmediate => "cold, reply=immediate",
            Wake::ColdReady => "cold, reply=ready",
            Wake::Resume => "resume from suspend",
            Wake::Warm => "warm (running)",
        }
    }
    fn service(self) -> &'static str {
        match self {
            Wake::ColdImmediate => "web",
            Wake::ColdReady => "webr",
            Wake::Resume => "webs",
            Wake::Warm => "webw",
        }
    }
    fn colour(self) -> &'static str {
        match self {
            Wake::ColdImmediate => "#d62728",
            Wake::ColdReady => "#ff7f0e",
            Wake::Resume => "#1f77b4",
            Wake::Warm => "#2ca02c",
        }
    }
}

fn env_or(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn services() -> String {
    let mut s = String::new();
    s += &http_service("web", "10.77.0.10", "idle_timeout = \"1h\"");
    s += &http_service(
        "webr",
        "10.77.0.11",
        "idle_timeout = \"1h\"\nreply = \"ready\"",
    );
    s += &http_service(
        "webs",
        "10.77.0.12",
        "idle_timeout = \"1h\"\nstop = \"suspend\"",
    );
    s += &http_service("webw", "10.77.0.13", "idle_timeout = \"1h\"");
    s
}

fn admin(d: &Daemon, path: String) {
    let addr: SocketAddr = ADMIN.parse().unwrap();
    let body =
        d.ns.run(move || admin_post(addr, &path))
            .expect("admin POST");
    assert!(
        body.contains("stopped") || body.contains("not running"),
        "{body}"
    );
}

fn sample(d: &Daemon, name: &str) -> ColdSample {
    let dns: SocketAddr = DNS.parse().unwrap();
    let q = format!("{name}.svc.test.");
    match d.ns.run(move || cold_request(dns, &q)) {
        Ok(s) => s,
        Err(e) => panic!("{name}: {e}\n{}", d.log()),
    }
}

struct Series {
    label: String,
    colour: &'static str,
    first_byte: Vec<Duration>,
    answer: Vec<Duration>,
    connected: Vec<Duration>,
    retransmits: u32,
}

impl Series {
    fn new(label: &str, colour: &'static str) -> Series {
        Series {
            label: label.to_string(),
            colour,
            first_byte: Vec::new(),
            answer: Vec::new(),
            connected: Vec::new(),
            retransmits: 0,
        }
    }
    fn push(&mut self, s: ColdSample) {
        self.first_byte.push(s.first_byte);
        self.answer.push(s.answer);
        self.connected.push(s.connected);
        self.retransmits += s.retransmits;
    }
    fn sort(&mut self) {
        self.first_byte.sort();
        self.answer.sort();
        self.connected.sort();
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// Values of `key=NUM` on log lines containing `marker` (and `filter`, when given).
fn log_values(log: &str, marker: &str, filter: Option<&str>, key: &str) -> Vec<u64> {
    let pat = format!("{key}=");
    let mut v: Vec<u64> = log
        .lines()
        .filter(|l| l.contains(marker) && filter.is_none_or(|f| l.contains(f)))
        .filter_map(|l| {
            let rest = &l[l.find(&pat)? + pat.len()..];
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect();
    v.sort_unstable();
    v
}

fn median_us(v: &[u64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    format!("{:.3}", v[v.len() / 2] as f64 / 1e3)
}

fn main() {
    if !prerequisites("cold path benchmark") {
        return;
    }
    let n = env_or("COLD_BENCH_N", 1000);
    let n_pool0 = env_or("COLD_BENCH_POOL0_N", 300);
    println!(
        "cold path: {n} summons per wake path, interleaved; then {n_pool0} cold with prewarm = 0"
    );

    // COLD_BENCH_LIMITS: extra config (e.g. `[limits]\ncpu_quota = "unlimited"`) to compare.
    let limits = std::env::var("COLD_BENCH_LIMITS").unwrap_or_default();
    let d = Daemon::start_in(NetNs::new("coldb"), &config(5, &[], &limits, &services()));
    let mut series: Vec<Series> = Wake::ALL
        .iter()
        .map(|w| Series::new(w.label(), w.colour()))
        .collect();
    // Everything up once: the resume path needs a running instance to suspend.
    for w in Wake::ALL {
        sample(&d, w.service());
    }
    for _ in 0..n {
        for (i, w) in Wake::ALL.iter().enumerate() {
            match w {
                Wake::ColdImmediate | Wake::ColdReady => {
                    admin(&d, format!("/v1/instances/{}/stop", w.service()))
                }
                Wake::Resume => admin(&d, format!("/v1/instances/{}/suspend", w.service())),
                Wake::Warm => {}
            }
            series[i].push(sample(&d, w.service()));
        }
    }
    let log = plain(&d.log());
    // The whole daemon log, for reading one summon's timeline line by line.
    if let Ok(path) = std::env::var("COLD_BENCH_LOG") {
        std::fs::write(&path, &log).expect("writing COLD_BENCH_LOG");
    }
    let boots = d.metric("summon_boots_total", &[("service", "web")]);
    let resumed = d.metric(
        "summon_summons_total",
        &[("service", "webs"), ("result", "resumed")],
    );
    drop(d);
    assert_eq!(boots as usize, n + 1, "every cold immediate summon booted");
    assert_eq!(resumed as usize, n, "every resume summon resumed");

    // Pool off: the same cold immediate summons.
    let cfg0 = format!(
        "{}\n[kvm]\nprewarm = 0\n",
        config(
            5,
            &[],
            "",
            &http_service("web", "10.77.0.10", "idle_timeout = \"1h\"")
        )
    );
    let d0 = Daemon::start_in(NetNs::new("coldb0"), &cfg0);
    let mut pool0 = Series::new("cold, reply=immediate, prewarm=0", "#9467bd");
    sample(&d0, "web");
    for _ in 0..n_pool0 {
        admin(&d0, "/v1/instances/web/stop".into());
        pool0.push(sample(&d0, "web"));
    }
    let log0 = plain(&d0.log());
    drop(d0);

    series.push(pool0);
    for s in &mut series {
        s.sort();
    }
    println!();
    println!("DNS query sent -> first HTTP byte (ms):");
    println!(
        "| wake path | n | p50 | p90 | p99 | max | >= 1 s | TCP retransmits | answer p50 | connected p50 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for s in &series {
        let f = &s.first_byte;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.label,
            f.len(),
            ms(quantile(f, 0.5)),
            ms(quantile(f, 0.9)),
            ms(quantile(f, 0.99)),
            ms(*f.last().unwrap()),
            f.iter().filter(|d| **d >= Duration::from_secs(1)).count(),
            s.retransmits,
            ms(quantile(&s.answer, 0.5)),
            ms(quantile(&s.connected, 0.5)),
        );
    }

    // Where the cold milliseconds go (daemon timestamps, medians, service `web`).
    let stage = |log: &str, marker: &str, filter: Option<&str>, key: &str| {
        median_us(&log_values(log, marker, filter, key))
    };
    println!();
    println!("Cold immediate, median per stage (ms), daemon timestamps:");
    println!("| stage | prewarm = 1 | prewarm = 0 |");
    println!("|---|---|---|");
    let web = Some("service=web ");
    for (name, marker, filter, key) in [
        (
            "dns: request handling outside the registry",
            "cold answer",
            web,
            "dns_us",
        ),
        ("spawn: query -> start task", "cold stages", web, "spawn_us"),
        (
            "plumbing: tap, route, neighbour",
            "cold stages",
            web,
            "plumbing_us",
        ),
        (
            "launch_queue: to the launcher's thread",
            "cold stages",
            web,
            "launch_queue_us",
        ),
        (
            "launch: VM, memory, image, vCPU hand-over",
            "cold stages",
            web,
            "launch_us",
        ),
        (
            "publish: launch returned -> instance running",
            "cold instance published",
            web,
            "publish_us",
        ),
        (
            "wake: running -> waiting query resumed",
            "cold waiter woken",
            web,
            "wake_us",
        ),
        (
            "query -> answer sent (daemon)",
            "cold answer",
            web,
            "answer_us",
        ),
        (
            "boot: launch returned -> guest network-ready",
            "guest network ready",
            web,
            "boot_us",
        ),
    ] {
        println!(
            "| {name} | {} | {} |",
            stage(&log, marker, filter, key),
            stage(&log0, marker, filter, key)
        );
    }
    let cold = &series[0];
    let warm = &series[3];
    // Boot time: the launcher's start plus the guest's boot to network-ready (medians).
    let med = |marker: &str, key: &str| {
        let v = log_values(&log, marker, web, key);
        Duration::from_micros(v.get(v.len() / 2).copied().unwrap_or(0))
    };
    let boot = med("cold stages", "launch_us") + med("guest network ready", "boot_us");
    println!();
    println!(
        "goals: cold immediate p50 {} ms (<= 5), p99 {} ms (<= 20), >= 1 s: {}; resume p50 {} ms (<= 1); cold p50 {} ms vs 3 x warm p50 + boot (launch + boot stages) = {} ms",
        ms(quantile(&cold.first_byte, 0.5)),
        ms(quantile(&cold.first_byte, 0.99)),
        cold.first_byte.iter().filter(|d| **d >= Duration::from_secs(1)).count(),
        ms(quantile(&series[2].first_byte, 0.5)),
        ms(quantile(&cold.first_byte, 0.5)),
        ms(quantile(&warm.first_byte, 0.5) * 3 + boot),
    );

    let svg_path = std::env::var("COLD_BENCH_SVG").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/cold-path.svg").to_string()
    });
    if svg_path != "-" {
        std::fs::write(&svg_path, svg(&series)).expect("write SVG");
        println!("plot: {svg_path}");
    }
}

/// Cumulative distributions on a log time axis, one line per wake path.
fn svg(series: &[Series]) -> String {
    let (w, h) = (640.0, 360.0);
    let (left, right, top, bottom) = (60.0, 20.0, 20.0, 50.0);
    let (lo, hi) = (0.05f64.log10(), 100f64.log10()); // ms
    let x = |ms: f64| left + (ms.clamp(0.05, 100.0).log10() - lo) / (hi - lo) * (w - left - right);
    let y = |q: f64| top + (1.0 - q) * (h - top - bottom);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    for t in [0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0] {
        let xx = x(t);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{top}" x2="{xx:.1}" y2="{:.1}" stroke="#ddd"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{t}</text>"##,
            h - bottom,
            h - bottom + 14.0
        );
    }
    for q in [0.0, 0.5, 0.9, 0.99, 1.0] {
        let yy = y(q);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{q}</text>"##,
            w - right,
            left - 4.0,
            yy + 4.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">DNS query sent → first HTTP byte (ms, log scale)</text>"#,
        (left + w - right) / 2.0,
        h - 12.0
    );
    let _ = writeln!(
        s,
        r#"<text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">fraction of requests</text>"#,
        (top + h - bottom) / 2.0,
        (top + h - bottom) / 2.0
    );
    for (i, ser) in series.iter().enumerate() {
        let n = ser.first_byte.len().max(1) as f64;
        let mut pts = String::new();
        let mut prev_y = y(0.0);
        // At most ~250 steps per line keeps the file small; the tail keeps every point.
        let step = (ser.first_byte.len() / 200).max(1);
        for (k, d) in ser
            .first_byte
            .iter()
            .enumerate()
            .filter(|(k, _)| k % step == step - 1 || *k + 50 >= ser.first_byte.len())
        {
            let xx = x(d.as_secs_f64() * 1e3);
            let yy = y((k + 1) as f64 / n);
            let _ = write!(pts, "{xx:.1},{prev_y:.1} {xx:.1},{yy:.1} ");
            prev_y = yy;
        }
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
            ser.colour,
            pts.trim_end()
        );
        let ly = top + 14.0 + 15.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{} (p50 {} ms)</text>"#,
            left + 10.0,
            left + 30.0,
            ser.colour,
            left + 35.0,
            ly + 4.0,
            ser.label,
            ms(quantile(&ser.first_byte, 0.5))
        );
    }
    s.push_str("</svg>\n");
    s
}
