//! Prometheus metrics, exported as text on the admin listener's /metrics.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use summon_launcher::{CpuStat, Instance};

/// What the launcher counted for one instance's limits (or the sum over a service's ended
/// instances). Read from the instance's atomics and its quota group at scrape time only.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GuestTotals {
    pub console_dropped_bytes: u64,
    pub tx_dropped_frames: u64,
    pub exits_throttled: u64,
    pub cpu: CpuStat,
}

impl GuestTotals {
    /// The instance's counters now (one `cpu.stat` read when it has a quota group).
    pub fn of(inst: &dyn Instance) -> GuestTotals {
        let mut t = GuestTotals::default();
        if let Some(c) = inst.counters() {
            t.console_dropped_bytes = c.console_dropped_bytes.load(Ordering::Relaxed);
            t.tx_dropped_frames = c.tx_dropped_frames.load(Ordering::Relaxed);
            t.exits_throttled = c.exits_throttled.load(Ordering::Relaxed);
        }
        if let Some(cpu) = inst.cpu_stat() {
            t.cpu = cpu;
        }
        t
    }

    fn add(&mut self, o: &GuestTotals) {
        self.console_dropped_bytes += o.console_dropped_bytes;
        self.tx_dropped_frames += o.tx_dropped_frames;
        self.exits_throttled += o.exits_throttled;
        self.cpu.periods += o.cpu.periods;
        self.cpu.throttled_periods += o.cpu.throttled_periods;
        self.cpu.throttled_ns += o.cpu.throttled_ns;
    }
}

/// One per-service guest counter: name, help, and how to read it from the totals.
type GuestCounter = (&'static str, &'static str, fn(&GuestTotals) -> f64);

/// The per-service guest counters.
const GUEST_COUNTERS: [GuestCounter; 5] = [
    (
        "summon_guest_console_dropped_bytes_total",
        "Console bytes of a service's guests dropped by limits.console_bytes_per_sec",
        |t| t.console_dropped_bytes as f64,
    ),
    (
        "summon_guest_tx_dropped_frames_total",
        "Frames a service's guests sent that limits.net_frames_per_sec / net_bytes_per_sec dropped",
        |t| t.tx_dropped_frames as f64,
    ),
    (
        "summon_guest_exits_throttled_total",
        "Times a service's guest was made to wait by limits.exits_per_sec",
        |t| t.exits_throttled as f64,
    ),
    (
        "summon_guest_cpu_throttled_periods_total",
        "100 ms periods in which a service's guest used up its cpu_quota and was stopped",
        |t| t.cpu.throttled_periods as f64,
    ),
    (
        "summon_guest_cpu_throttled_seconds_total",
        "Time a service's guest spent stopped by its cpu_quota",
        |t| t.cpu.throttled_ns as f64 / 1e9,
    ),
];

pub struct Metrics {
    registry: Registry,
    pub dns_queries: IntCounterVec,
    pub summons: IntCounterVec,
    pub summon_seconds: HistogramVec,
    /// Where a cold summon's time goes, stage by stage (see docs/benchmarks.md).
    pub cold_stage_seconds: HistogramVec,
    pub instances: IntGaugeVec,
    pub reaped: IntCounterVec,
    pub boot_failures: IntCounterVec,
    pub boots: IntCounterVec,
    /// SYNs held by the NFQUEUE hold while libvirt domains booted.
    pub held_packets: IntCounter,
    /// 1 when guest CPU quotas are enforced (a usable cpu cgroup controller), else 0.
    pub cpu_quota_enforced: IntGauge,
    /// `[cluster]`: claims won and lost, answers for another host's instance, relays, fences.
    pub cluster_events: IntCounterVec,
    /// Guest counters of ended instances, by service (live ones are read at scrape time).
    guest_ended: Mutex<BTreeMap<String, GuestTotals>>,
    /// DNS TCP connections open now.
    pub dns_tcp_connections: IntGauge,
    /// DNS TCP connections closed at accept because the cap was reached.
    pub dns_tcp_rejected: IntCounter,
    /// UDP queries dropped because too many were already waiting for a boot or a forward.
    pub dns_udp_shed: IntCounter,
    /// Out-of-zone queries not forwarded, by reason (`cap`: SERVFAIL, `not_allowed`: REFUSED).
    pub dns_forwards_rejected: IntCounterVec,
    /// UDP responses held back by response-rate limiting, by action (`dropped`, `slipped`).
    pub dns_rrl: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let dns_queries = IntCounterVec::new(
            Opts::new(
                "summon_dns_queries_total",
                "DNS queries answered, by query type and response code",
            ),
            &["qtype", "rcode"],
        )
        .expect("valid metric");
        let summons = IntCounterVec::new(
            Opts::new(
                "summon_summons_total",
                "A queries for services, by outcome (warm, cold, resumed, failed, backoff, limit, memory, timeout)",
            ),
            &["service", "result"],
        )
        .expect("valid metric");
        let summon_seconds = HistogramVec::new(
            HistogramOpts::new(
                "summon_summon_seconds",
                "Summon latency: query to answer (stage=answer) and query to guest network-ready (stage=ready)",
            )
            .buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
            ]),
            &["stage"],
        )
        .expect("valid metric");
        let cold_stage_seconds = HistogramVec::new(
            HistogramOpts::new(
                "summon_cold_stage_seconds",
                "Stages of a cold summon: dns (request handling outside the registry), spawn \
                 (query to start task), plumbing (tap, route, neighbour), launch_queue \
                 (to the launcher's thread), launch (launcher start: VM, memory, image, vCPU \
                 hand-over), publish (launcher start returned to the instance marked running), wake (instance running to the waiting query resumed, reply=immediate), boot \
                 (launcher start returned to guest network-ready)",
            )
            .buckets(vec![
                0.00001, 0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02,
                0.05, 0.1, 0.2, 0.5, 1.0,
            ]),
            &["stage"],
        )
        .expect("valid metric");
        let instances = IntGaugeVec::new(
            Opts::new("summon_instances", "Instances by service and state"),
            &["service", "state"],
        )
        .expect("valid metric");
        let reaped = IntCounterVec::new(
            Opts::new(
                "summon_reaped_total",
                "Idle instances stopped, by mode (destroy, suspend)",
            ),
            &["service", "mode"],
        )
        .expect("valid metric");
        let boot_failures = IntCounterVec::new(
            Opts::new("summon_boot_failures_total", "Failed boots by reason"),
            &["service", "reason"],
        )
        .expect("valid metric");
        let boots = IntCounterVec::new(
            Opts::new("summon_boots_total", "Instances started (cold boots)"),
            &["service"],
        )
        .expect("valid metric");
        let held_packets = IntCounter::new(
            "summon_held_packets_total",
            "TCP SYNs held (NFQUEUE) while a libvirt domain booted",
        )
        .expect("valid metric");
        let dns_tcp_connections =
            IntGauge::new("summon_dns_tcp_connections", "DNS TCP connections open")
                .expect("valid metric");
        let dns_tcp_rejected = IntCounter::new(
            "summon_dns_tcp_rejected_total",
            "DNS TCP connections closed at once because dns.tcp_max_clients (or the fd budget) was reached",
        )
        .expect("valid metric");
        let dns_udp_shed = IntCounter::new(
            "summon_dns_udp_shed_total",
            "DNS UDP queries dropped unanswered because 4096 per socket were already waiting for a boot or a forward",
        )
        .expect("valid metric");
        let dns_forwards_rejected = IntCounterVec::new(
            Opts::new(
                "summon_dns_forwards_rejected_total",
                "Out-of-zone queries not forwarded: cap (max_forwards reached, SERVFAIL), not_allowed (source outside forward_allow, REFUSED)",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let dns_rrl = IntCounterVec::new(
            Opts::new(
                "summon_dns_rrl_responses_total",
                "UDP responses over the response-rate limit: dropped, or slipped (sent truncated)",
            ),
            &["action"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(held_packets.clone()))
            .expect("unique metric");
        let cluster_events = IntCounterVec::new(
            Opts::new(
                "summon_cluster_events_total",
                "Cluster decisions: claim_won, claim_lost, remote (answered for another host's instance), relayed, fenced",
            ),
            &["event"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(cluster_events.clone()))
            .expect("register");
        let cpu_quota_enforced = IntGauge::new(
            "summon_guest_cpu_quota_enforced",
            "1 when guest cpu_quota is enforced through a cpu cgroup controller, 0 when the host has none",
        )
        .expect("valid metric");
        registry
            .register(Box::new(cpu_quota_enforced.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(crate::logging::dropped_counter().clone()))
            .expect("unique metric");
        registry
            .register(Box::new(dns_tcp_rejected.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(dns_tcp_connections.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(dns_udp_shed.clone()))
            .expect("unique metric");
        for c in [
            &dns_queries,
            &summons,
            &reaped,
            &boot_failures,
            &boots,
            &dns_forwards_rejected,
            &dns_rrl,
        ] {
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
        }
        for h in [&summon_seconds, &cold_stage_seconds] {
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
        }
        registry
            .register(Box::new(instances.clone()))
            .expect("unique metric");
        Metrics {
            registry,
            dns_queries,
            summons,
            summon_seconds,
            cold_stage_seconds,
            instances,
            reaped,
            boot_failures,
            boots,
            held_packets,
            cpu_quota_enforced,
            cluster_events,
            guest_ended: Mutex::new(BTreeMap::new()),
            dns_tcp_connections,
            dns_tcp_rejected,
            dns_udp_shed,
            dns_forwards_rejected,
            dns_rrl,
        }
    }

    /// Adds an ended instance's guest counters to its service's totals.
    pub fn guest_ended(&self, service: &str, totals: &GuestTotals) {
        self.guest_ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(service.to_string())
            .or_default()
            .add(totals);
    }

    /// The exposition with the per-service guest counters: ended instances' totals plus
    /// `live` (the running instances' counters, read by the caller at scrape time).
    pub fn render_with_guests(&self, live: &[(String, GuestTotals)]) -> String {
        let mut sums = self
            .guest_ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (service, t) in live {
            sums.entry(service.clone()).or_default().add(t);
        }
        let mut out = self.render();
        for (name, help, value) in GUEST_COUNTERS {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (service, t) in &sums {
                let _ = writeln!(out, "{name}{{service=\"{service}\"}} {}", value(t));
            }
        }
        out
    }

    /// Records one stage of a cold summon.
    pub fn cold_stage(&self, stage: &str, d: std::time::Duration) {
        self.cold_stage_seconds
            .with_label_values(&[stage])
            .observe(d.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let enc = TextEncoder::new();
        if let Err(e) = enc.encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
