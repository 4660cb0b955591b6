//! The shipped monitoring files, loaded by the real tools: `promtool` checks deploy/prometheus.yml
//! and deploy/summon-rules.yml and runs the rules' unit test; a real Prometheus, in the network
//! namespace of a real summond, scrapes it with deploy/prometheus.yml (interval shortened),
//! evaluates the rules, and answers every query of deploy/grafana-dashboard.json with data after
//! cold summons, a failed boot, a boot refused by the memory budget and a reaped instance.

use summon_tests::daemon as daemon_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use daemon_support::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use serde_json::Value;
use summon_tests::netns::NetNs;
use summon_tests::require;

/// Metrics whose series appear only when the DNS front refuses something (RRL, forward caps).
/// Admission refusals are not here: the test provokes one ("big" does not fit in the memory budget).
const REFUSAL_ONLY: &[&str] = &[
    "summon_dns_rrl_responses_total",
    "summon_dns_forwards_rejected_total",
];

/// Prometheus's listener inside the test's namespace.
const PROMETHEUS: &str = "127.0.0.1:9090";

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

fn read(file: &str) -> String {
    std::fs::read_to_string(deploy(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn promtool(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn promtool_checks_the_config_and_rules_and_passes_the_rules_unit_test() {
    if !require::check("promtool", require::tool("promtool")) {
        return;
    }
    let dir = deploy("");
    let (ok, out) = promtool(&["check", "config", "prometheus.yml"], &dir);
    assert!(ok && out.contains("1 rule files found"), "{out}");
    let (ok, out) = promtool(&["check", "rules", "summon-rules.yml"], &dir);
    assert!(ok, "{out}");
    let (ok, out) = promtool(&["test", "rules", "summon-rules.test.yml"], &dir);
    assert!(ok && out.contains("SUCCESS"), "{out}");

    // The unit test can fail: the same test expecting a different annotation does.
    let tmp = std::env::temp_dir().join(format!("summon-rules-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::copy(deploy("summon-rules.yml"), tmp.join("summon-rules.yml")).unwrap();
    let test = read("summon-rules.test.yml");
    let broken = test.replace("failed to boot 10 times", "failed to boot 9 times");
    assert_ne!(broken, test);
    std::fs::write(tmp.join("summon-rules.test.yml"), broken).unwrap();
    let (ok, out) = promtool(&["test", "rules", "summon-rules.test.yml"], &tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(!ok && out.contains("FAILED"), "{out}");
}

/// A Prometheus process in the test's namespace; killed on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus on deploy/prometheus.yml with 1 s scrape and evaluation intervals.
    fn start(ns: &NetNs) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("summon-prometheus-{}", ns.name()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let shipped = read("prometheus.yml");
        let config = shipped
            .replace("scrape_interval: 15s", "scrape_interval: 1s")
            .replace("evaluation_interval: 15s", "evaluation_interval: 1s");
        assert_eq!(
            config.matches(": 1s").count(),
            2,
            "intervals not found in {shipped}"
        );
        assert!(
            config.contains(&format!("\"{ADMIN}\"")),
            "target is not {ADMIN}"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        std::fs::copy(deploy("summon-rules.yml"), dir.join("summon-rules.yml")).unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = ns
            .command("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={PROMETHEUS}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let mut p = Prometheus { child, dir };
        p.wait_ready(ns);
        p
    }

    /// Waits for /-/ready (the TSDB opened, the rules loaded).
    fn wait_ready(&mut self, ns: &NetNs) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while ns
            .run(|| http10_get(PROMETHEUS.parse().unwrap(), "/-/ready"))
            .is_err()
        {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// GET an API path from inside the namespace; the parsed JSON of a "success" answer.
    fn api(&self, ns: &NetNs, path: &str) -> Value {
        let path = path.to_string();
        let body = ns
            .run(move || http10_get(PROMETHEUS.parse().unwrap(), &path))
            .unwrap_or_else(|e| panic!("Prometheus API: {e}\n{}", self.log()));
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(v["status"], "success", "{body}");
        v["data"].clone()
    }

    /// An instant query's result vector.
    fn query(&self, ns: &NetNs, promql: &str) -> Vec<Value> {
        let data = self.api(ns, &format!("/api/v1/query?query={}", urlencode(promql)));
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// Polls `promql` until its first sample satisfies `ok`; returns that value.
    fn wait_for(&self, ns: &NetNs, promql: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            let result = self.query(ns, promql);
            if let Some(v) = result.first().and_then(sample_value) {
                if ok(v) {
                    return v;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{promql} never satisfied; last result {result:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- prometheus log ---\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The value of an instant-vector sample (`"value": [time, "string"]`).
fn sample_value(sample: &Value) -> Option<f64> {
    sample["value"][1].as_str()?.parse().ok()
}

/// HTTP/1.0, so the answer has no chunked encoding; returns the body of a 200 answer.
fn http10_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: prometheus\r\n\r\n")?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("bad response {text:?}")))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("{head}\n{body}")));
    }
    Ok(body.to_string())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A dashboard query with Grafana's variables replaced the way Grafana would for this test:
/// the job of deploy/prometheus.yml, every stage, a one-minute rate window.
fn grafana_expr(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$job", "summond")
        .replace("$stage", ".*")
}

/// A template variable's `label_values(METRIC, LABEL)`: (metric, label).
type LabelValues = (String, String);

/// Checks the dashboard's structure the way Grafana's importer needs it; returns every
/// panel's (title, expr) and every template variable's `label_values(METRIC, LABEL)`.
fn dashboard() -> (Vec<(String, String)>, Vec<LabelValues>) {
    let text = read("grafana-dashboard.json");
    let d: Value = serde_json::from_str(&text).expect("dashboard is JSON");
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(d["uid"]
        .as_str()
        .is_some_and(|u| !u.is_empty() && u.len() <= 40));
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 30));
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let var_names: Vec<&str> = vars.iter().filter_map(|v| v["name"].as_str()).collect();
    assert!(var_names.contains(&"datasource"), "{var_names:?}");
    let mut label_values = Vec::new();
    for v in vars.iter().filter(|v| v["type"] == "query") {
        let def = v["definition"].as_str().expect("query variable definition");
        let args = def
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {def}"));
        let (metric, label) = args.split_once(',').expect("label_values(METRIC, LABEL)");
        label_values.push((metric.trim().to_string(), label.trim().to_string()));
    }

    let panels = d["panels"].as_array().expect("panels");
    let mut ids = std::collections::HashSet::new();
    let mut exprs = Vec::new();
    let mut rows = Vec::new();
    for p in panels {
        let title = p["title"].as_str().expect("panel title").to_string();
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        let g = &p["gridPos"];
        let (x, w, h) = (g["x"].as_u64(), g["w"].as_u64(), g["h"].as_u64());
        let (Some(x), Some(w), Some(_), Some(_)) = (x, w, h, g["y"].as_u64()) else {
            panic!("{title}: gridPos {g}");
        };
        assert!(w >= 1 && x + w <= 24, "{title}: gridPos {g}");
        let kind = p["type"].as_str().expect("panel type");
        match kind {
            "row" => rows.push(title),
            "text" => assert!(p["options"]["content"].is_string(), "{title}"),
            "timeseries" | "stat" | "heatmap" | "gauge" | "bargauge" | "table" => {
                assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
                let targets = p["targets"].as_array().expect("targets");
                assert!(!targets.is_empty(), "{title} has no query");
                let mut refs = std::collections::HashSet::new();
                for t in targets {
                    assert!(refs.insert(t["refId"].as_str().expect("refId")), "{title}");
                    let expr = t["expr"].as_str().expect("expr");
                    for var in expr.match_indices('$').map(|(i, _)| &expr[i + 1..]) {
                        let name: String = var
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        assert!(
                            name == "__rate_interval" || var_names.contains(&name.as_str()),
                            "{title}: unknown variable ${name}"
                        );
                    }
                    exprs.push((title.clone(), expr.to_string()));
                }
            }
            other => panic!("{title}: unexpected panel type {other}"),
        }
    }
    for row in [
        "Cold starts",
        "Summons and instances",
        "DNS",
        "Hardening and scale",
        "Guest limits and admission",
    ] {
        assert!(rows.iter().any(|r| r == row), "no row {row}: {rows:?}");
    }
    (exprs, label_values)
}

#[test]
fn prometheus_scrapes_summond_evaluates_the_rules_and_answers_every_dashboard_query() {
    if !prerequisites("Prometheus test")
        || !require::check("prometheus", require::tool("prometheus"))
    {
        return;
    }
    let (exprs, label_values) = dashboard();

    // "web" is reaped 1 s after its last packet (ttl 1: 2 s after its last query); "broken"
    // runs the hello image, which declares no network device: a failed boot (SERVFAIL). "big"
    // asks for more memory than the whole budget: refused before any boot (SERVFAIL, "memory").
    let services = http_service("web", "10.77.0.10", "idle_timeout = \"1s\"")
        + &format!(
            "[[service]]\nname = \"broken\"\nimage = \"{}\"\nip = \"10.77.0.11\"\nmemory_mib = 8\n",
            image("hello").display()
        )
        + &format!(
            "[[service]]\nname = \"big\"\nimage = \"{}\"\nip = \"10.77.0.12\"\nmemory_mib = 64\n",
            image("hello").display()
        );
    let limits = "[limits]\nmemory_budget = 32";
    let d = Daemon::start("prom", &config(1, &[], limits, &services));
    let prom = Prometheus::start(&d.ns);

    // Summon only after the first scrape, so the rates see the counters move.
    prom.wait_for(&d.ns, "up{job=\"summond\"}", |v| v == 1.0);
    let m = d.query("web.svc.test.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        a_records(&m).first().map(|a| a.0.to_string()).as_deref(),
        Some("10.77.0.10")
    );
    let m = d.query("broken.svc.test.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    let m = d.query("nothing.svc.test.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = d.query("big.svc.test.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);

    prom.wait_for(&d.ns, "summon_summons_total{result=\"cold\"}", |v| v >= 1.0);
    prom.wait_for(
        &d.ns,
        "summon_summons_total{service=\"big\", result=\"memory\"}",
        |v| v == 1.0,
    );
    prom.wait_for(
        &d.ns,
        "sum(summon_boot_failures_total{service=\"broken\"})",
        |v| v >= 1.0,
    );
    // The reaper stops "web" once idle; Prometheus sees it. A histogram series is born with
    // its first observation, which rate() cannot count: the second cold summon is the one the
    // quantile sees.
    prom.wait_for(&d.ns, "sum(summon_reaped_total{mode=\"destroy\"})", |v| {
        v >= 1.0
    });
    let m = d.query("web.svc.test.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    // Likewise a second failed boot, once the first one's backoff (1 s) is over.
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.metric("summon_boot_failures_total", &[("service", "broken")]) < 2.0 {
        assert!(Instant::now() < deadline, "no second failed boot");
        let m = d.query("broken.svc.test.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        std::thread::sleep(Duration::from_millis(300));
    }
    prom.wait_for(
        &d.ns,
        "sum(summon_boot_failures_total{service=\"broken\"})",
        |v| v >= 2.0,
    );
    let cold = prom.wait_for(&d.ns, "summon_summons_total{result=\"cold\"}", |v| v >= 2.0);
    assert_eq!(cold, 2.0);
    let p50 = prom.wait_for(
        &d.ns,
        "histogram_quantile(0.5, sum by (le) (rate(summon_summon_seconds_bucket{stage=\"answer\"}[1m])))",
        |v| v.is_finite(),
    );
    assert!(p50 > 0.0 && p50 <= 5.0, "cold answer p50 {p50}");

    // The rules loaded and evaluated without error; the recording rules have data.
    let shipped = read("summon-rules.yml");
    let rules = prom.api(&d.ns, "/api/v1/rules");
    let groups = rules["groups"].as_array().expect("rule groups");
    let mut names = Vec::new();
    for g in groups {
        for r in g["rules"].as_array().expect("rules") {
            let name = r["name"].as_str().unwrap().to_string();
            assert_eq!(r["health"], "ok", "{name}: {r}");
            assert!(shipped.contains(&name), "{name}");
            names.push(name);
        }
    }
    let expected = shipped.matches("- record: ").count() + shipped.matches("- alert: ").count();
    assert_eq!(names.len(), expected, "{names:?}");
    prom.wait_for(&d.ns, "summon:summons:rate5m{result=\"cold\"}", |v| v > 0.0);
    prom.wait_for(&d.ns, "summon:boot_failures:rate5m", |v| v > 0.0);

    // Every dashboard query returns data, and every template variable has values. Counters of
    // refusals this test does not provoke are labelled vectors with no series yet: their
    // queries must be valid (api() checks the status), not non-empty.
    for (title, expr) in &exprs {
        let promql = grafana_expr(expr);
        if REFUSAL_ONLY.iter().any(|m| promql.contains(m)) {
            prom.query(&d.ns, &promql);
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while prom.query(&d.ns, &promql).is_empty() {
            assert!(
                Instant::now() < deadline,
                "panel {title:?}: no data for {promql}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    for (metric, label) in &label_values {
        let values = prom.api(
            &d.ns,
            &format!("/api/v1/label/{label}/values?match[]={}", urlencode(metric)),
        );
        assert!(
            values.as_array().is_some_and(|v| !v.is_empty()),
            "label_values({metric}, {label}) is empty"
        );
    }
    // With SUMMON_DASHBOARD_PNG=PATH: three minutes of traffic (cold and warm summons,
    // failed boots, memory refusals, NXDOMAIN), then scripts/plot-dashboard draws the panels into PATH.
    if let Some(png) = std::env::var_os("SUMMON_DASHBOARD_PNG") {
        let end = Instant::now() + Duration::from_secs(180);
        let mut i = 0u32;
        while Instant::now() < end {
            for name in ["web", "web", "web", "nothing"] {
                d.query(&format!("{name}.svc.test."), RecordType::A);
            }
            if i.is_multiple_of(5) {
                d.query("broken.svc.test.", RecordType::A);
                d.query("big.svc.test.", RecordType::A);
            }
            i += 1;
            // Every third pause outlasts web's idle timeout: it is reaped and boots again.
            std::thread::sleep(Duration::from_millis(if i.is_multiple_of(3) {
                3500
            } else {
                400
            }));
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/plot-dashboard");
        let out =
            d.ns.command("python3")
                .arg(script)
                .args(["--minutes", "3.5", "--rate", "20s", "--out"])
                .arg(&png)
                .output()
                .expect("run scripts/plot-dashboard");
        assert!(
            out.status.success(),
            "plot-dashboard: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
