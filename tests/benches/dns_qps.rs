//! DNS benchmark: warm answers per second (dnsperf) of summond for a running service, beside
//! plain hickory-server serving the same names from its in-memory zone and NSD (rate limiting
//! off) serving an equivalent zone, all in one run in one network namespace; then query →
//! answer latency of cold summons (reply = "immediate"). Warm latency: per round and server,
//! DNS_BENCH_LATENCY sequential queries (one outstanding) from a plain UDP client, each timed
//! send → answer; p50/p99 over all rounds.
//!
//! `cargo bench -p summon-tests --bench dns_qps` (root, /dev/kvm, dnsperf, nsd).
//! Knobs: DNS_BENCH_SECONDS (per dnsperf run, 5), DNS_BENCH_ROUNDS (3), DNS_BENCH_COLD (200),
//! DNS_BENCH_LATENCY (1000), DNS_BENCH_RRL (`table`: every answer through the RRL table, the
//! default; `config`: summond's default config, loopback whitelisted).

use summon_tests::daemon as daemon_support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use daemon_support::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, NS, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use summon_tests::netns::NetNs;

const HICKORY: &str = "127.0.0.1:5301";
const NSD_PORT: u16 = 5302;

fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `--hickory-baseline ADDR`: plain hickory-server, Catalog + in-memory zone, same names.
fn hickory_baseline(addr: &str) -> ! {
    use hickory_server::store::in_memory::InMemoryZoneHandler;
    use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
    let addr: SocketAddr = addr.parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let origin = Name::from_str(ZONE).unwrap();
        let mut zone: InMemoryZoneHandler<hickory_server::net::runtime::TokioRuntimeProvider> =
            InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
        let ns = Name::from_str("ns.svc.test.").unwrap();
        let soa = SOA::new(
            ns.clone(),
            Name::from_str("hostmaster.svc.test.").unwrap(),
            1,
            3600,
            600,
            86400,
            10,
        );
        zone.upsert_mut(Record::from_rdata(origin.clone(), 10, RData::SOA(soa)), 1);
        zone.upsert_mut(
            Record::from_rdata(origin.clone(), 10, RData::NS(NS(ns.clone()))),
            1,
        );
        zone.upsert_mut(
            Record::from_rdata(ns, 10, RData::A(A::new(10, 77, 0, 1))),
            1,
        );
        let web = Name::from_str("web.svc.test.").unwrap();
        zone.upsert_mut(
            Record::from_rdata(web, 10, RData::A(A::new(10, 77, 0, 10))),
            1,
        );
        let mut catalog = Catalog::new();
        let handler: Arc<dyn ZoneHandler> = Arc::new(zone);
        catalog.upsert(LowerName::new(&origin), vec![handler]);
        let mut server = hickory_server::Server::new(catalog);
        server.register_socket(tokio::net::UdpSocket::bind(addr).await.unwrap());
        server.register_listener(
            tokio::net::TcpListener::bind(addr).await.unwrap(),
            Duration::from_secs(10),
            64,
        );
        server.block_until_done().await.unwrap();
    });
    std::process::exit(0)
}

struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_nsd(ns: &NetNs, dir: &std::path::Path) -> Guard {
    let zone = "$ORIGIN svc.test.\n$TTL 10\n@ IN SOA ns.svc.test. hostmaster.svc.test. 1 3600 600 86400 10\n@ IN NS ns.svc.test.\nns IN A 10.77.0.1\nweb IN A 10.77.0.10\n";
    std::fs::write(dir.join("svc.test.zone"), zone).unwrap();
    let d = dir.display();
    let conf = format!(
        "server:\n  ip-address: 127.0.0.1@{NSD_PORT}\n  port: {NSD_PORT}\n  username: \"\"\n  chroot: \"\"\n  zonesdir: \"{d}\"\n  zonelistfile: \"{d}/zone.list\"\n  database: \"\"\n  pidfile: \"{d}/nsd.pid\"\n  xfrdfile: \"{d}/xfrd.state\"\n  server-count: 1\n  rrl-ratelimit: 0\n  rrl-whitelist-ratelimit: 0\n  verbosity: 0\nremote-control:\n  control-enable: no\nzone:\n  name: \"svc.test\"\n  zonefile: \"svc.test.zone\"\n"
    );
    let conf_path = dir.join("nsd.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = ns
        .command("nsd")
        .args(["-d", "-c"])
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nsd");
    Guard(child)
}

fn wait_answering(ns: &NetNs, server: SocketAddr) {
    let ok = ns.run(move || {
        wait_until(Duration::from_secs(10), || {
            query_udp(server, "web.svc.test.", RecordType::A).is_ok_and(|m| {
                m.metadata.response_code == ResponseCode::NoError && m.answers.len() == 1
            })
        })
    });
    assert!(ok, "{server} does not answer web.svc.test A");
}

fn dnsperf(ns: &NetNs, port: u16, queries: &std::path::Path, seconds: u64) -> f64 {
    let out = ns
        .command("dnsperf")
        .args([
            "-s",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-l",
            &seconds.to_string(),
            "-c",
            "8",
            "-T",
            "1",
            "-d",
        ])
        .arg(queries)
        .output()
        .expect("dnsperf");
    let text = String::from_utf8_lossy(&out.stdout);
    let lost = text
        .lines()
        .find(|l| l.contains("Queries lost:"))
        .unwrap_or("")
        .to_string();
    let qps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Queries per second:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no qps in dnsperf output:\n{text}"));
    if !lost.contains(" 0 (") {
        eprintln!("  note: port {port}: {}", lost.trim());
    }
    qps
}

/// `n` sequential A queries over one connected UDP socket, each timed from send to its answer
/// (milliseconds). Every answer must be NOERROR with one record and the query's id.
fn sequential_latency(ns: &NetNs, port: u16, n: u64) -> Vec<f64> {
    ns.run(move || {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 1500];
        let mut out = Vec::with_capacity(n as usize);
        for i in 0..n {
            let id = i as u16;
            let q = build_query("web.svc.test.", RecordType::A, id);
            let t0 = Instant::now();
            s.send(&q).unwrap();
            let len = s.recv(&mut buf).expect("answer within 2 s");
            let t = t0.elapsed();
            let m = hickory_proto::op::Message::from_vec(&buf[..len]).unwrap();
            assert_eq!(m.metadata.id, id, "port {port}: answer to another query");
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
            assert_eq!(m.answers.len(), 1);
            out.push(t.as_secs_f64() * 1000.0);
        }
        out
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--hickory-baseline") {
        hickory_baseline(&args[i + 1]);
    }
    if args.iter().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` probes; nothing to list.
    }
    for tool in ["dnsperf", "nsd"] {
        if Command::new(tool).arg("-h").output().is_err() {
            eprintln!("SKIPPED: {tool} not installed");
            return;
        }
    }
    if !prerequisites("DNS benchmark") {
        return;
    }
    let seconds = env_or("DNS_BENCH_SECONDS", 5);
    let rounds = env_or("DNS_BENCH_ROUNDS", 3);
    let cold_runs = env_or("DNS_BENCH_COLD", 200);
    let latency_n = env_or("DNS_BENCH_LATENCY", 1000);

    let ns = NetNs::new("dnsbench");
    let mut cfg = config(
        10,
        &[],
        "",
        &http_service("web", "10.77.0.10", "idle_timeout = \"1h\""),
    );
    // Every answer goes through the response-rate limiter's table (loopback, whitelisted by
    // default, is not here) at a rate no single-name load reaches: its cost is in the figure.
    // DNS_BENCH_RRL=config leaves the config as summond defaults it (and as builds from before
    // RRL accept it).
    if std::env::var("DNS_BENCH_RRL").as_deref() != Ok("config") {
        cfg = with_dns(&cfg, "[dns.rrl]\nrate = 10000000\nwhitelist = []");
    }
    let d = Daemon::start_env(ns, &cfg, &[("SUMMOND_LOG", "warn")]);
    let ns = &d.ns;
    let _hickory = Guard(
        ns.command(std::env::current_exe().unwrap().to_str().unwrap())
            .args(["--hickory-baseline", HICKORY])
            .spawn()
            .unwrap(),
    );
    let _nsd = start_nsd(ns, &d.dir);
    wait_answering(ns, DNS.parse().unwrap()); // also boots web: the warm case from here on
    wait_answering(ns, HICKORY.parse().unwrap());
    wait_answering(ns, format!("127.0.0.1:{NSD_PORT}").parse().unwrap());

    let qfile = d.dir.join("queries.txt");
    std::fs::write(&qfile, "web.svc.test A\n").unwrap();
    let servers = [
        ("summond", 5300u16),
        ("hickory-server (in-memory zone)", 5301),
        ("nsd 4.6 (rrl off)", NSD_PORT),
    ];
    let mut qps: Vec<Vec<f64>> = vec![Vec::new(); servers.len()];
    let mut warm_lat: Vec<Vec<f64>> = vec![Vec::new(); servers.len()];
    println!(
        "# warm A answers per second: dnsperf -c 8 -T 1 -l {seconds}, {rounds} interleaved rounds"
    );
    for r in 0..rounds {
        for (i, (name, port)) in servers.iter().enumerate() {
            let q = dnsperf(ns, *port, &qfile, seconds);
            println!("round {r} {name:<32} {q:>10.0} q/s");
            qps[i].push(q);
        }
        for (i, (_, port)) in servers.iter().enumerate() {
            warm_lat[i].extend(sequential_latency(ns, *port, latency_n));
        }
    }
    let mut medians = Vec::new();
    for (i, (name, _)) in servers.iter().enumerate() {
        let mut v = qps[i].clone();
        v.sort_by(f64::total_cmp);
        let med = percentile(&v, 0.5);
        medians.push(med);
        println!(
            "{name:<32} median {med:>10.0} q/s (min {:.0}, max {:.0})",
            v[0],
            v[v.len() - 1]
        );
    }
    println!(
        "# warm A latency, send -> answer, {latency_n} sequential queries x {rounds} rounds per server"
    );
    for (i, (name, _)) in servers.iter().enumerate() {
        let v = &mut warm_lat[i];
        v.sort_by(f64::total_cmp);
        println!(
            "{name:<32} p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
            percentile(v, 0.5),
            percentile(v, 0.99),
            v[v.len() - 1]
        );
    }
    println!(
        "summond / hickory-server = {:.2} (goal >= 0.90)",
        medians[0] / medians[1]
    );
    println!("summond / nsd            = {:.2}", medians[0] / medians[2]);
    assert_eq!(
        d.metric("summon_boots_total", &[("service", "web")]),
        1.0,
        "warm runs booted again"
    );

    // Cold summons: stop the instance, then time one A query to its answer.
    let mut lat = Vec::new();
    let server: SocketAddr = DNS.parse().unwrap();
    for _ in 0..cold_runs {
        d.ns.run(|| {
            let admin: SocketAddr = ADMIN.parse().unwrap();
            let _ = admin_post(admin, "/v1/instances/web/stop");
        });
        let t = d.ns.run(move || {
            let t0 = Instant::now();
            let m = query_udp(server, "web.svc.test.", RecordType::A).expect("cold query");
            let t = t0.elapsed();
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
            t
        });
        lat.push(t.as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    println!(
        "# cold summon, query -> answer (reply = immediate), {} runs: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        lat[lat.len() - 1]
    );
    let boots = d.metric("summon_boots_total", &[("service", "web")]);
    assert_eq!(
        boots,
        1.0 + cold_runs as f64,
        "every cold query booted exactly once"
    );
}
