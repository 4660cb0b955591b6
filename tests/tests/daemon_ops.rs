//! summond as a host service, against the real daemon in a network namespace: a log sink that
//! stalls or goes away never stalls or kills it.

use summon_tests::daemon as daemon_support;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use daemon_support::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use summon_tests::netns::NetNs;
use summon_tests::require;

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
    // At trace level every query logs a line of about 250 bytes: 6,000 of them are more than
    // the pipe (64 KiB) and the log queue (1 MiB) hold together.
    for i in 0..6000 {
        let name = format!("nope{i}.{ZONE}");
        let m = d.query(&name, RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
        if i % 30 == 0 {
            let m = d.query_tcp("web.svc.test.", RecordType::A);
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        }
    }
    // A second cold summon (taps, launcher, vCPU thread) while the sink is still stalled.
    summon_and_fetch(&d, "api", Ipv4Addr::new(10, 77, 0, 11));
    // The lossy path really ran: lines were dropped, not written.
    assert!(d.metric("summon_log_dropped_total", &[]) > 0.0);
    let status = d.terminate_within(Duration::from_secs(5));
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
    let status = d.terminate_within(Duration::from_secs(5));
    assert!(status.success(), "summond exited with {status}");
}

/// `ip -n NS tuntap add dev NAME mode tap`: an interface the operator made, not summond.
fn operator_tap(ns: &NetNs, name: &str) {
    summon_tests::netns::ip(&["-n", ns.name(), "tuntap", "add", "dev", name, "mode", "tap"]);
}

#[test]
fn a_second_summond_on_the_same_lock_exits_at_once_naming_it_and_touches_nothing() {
    if !prerequisites("daemon lock test") {
        return;
    }
    let cfg = config(5, &[], "", &http_service("web", "10.77.0.10", ""));
    let d = Daemon::start("lock2", &cfg);
    summon_and_fetch(&d, "web", Ipv4Addr::new(10, 77, 0, 10));
    // The same config file, so the same lock; the same namespace, so the same links.
    let t = Instant::now();
    let out =
        d.ns.command(summond().to_str().unwrap())
            .arg("--config")
            .arg(&d.config)
            .stdin(Stdio::null())
            .output()
            .expect("run the second summond");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "second summond: {}", out.status);
    let lock = test_dir(d.ns.name()).join("summond.lock");
    assert!(
        stderr.contains(&lock.display().to_string())
            && stderr.contains(&format!("pid {}", d.pid())),
        "{stderr}"
    );
    // The first one's instance, tap and DNS are untouched.
    assert_eq!(d.taps(), vec!["sm-web".to_string()]);
    let addr = SocketAddr::from(([10, 77, 0, 10], 80));
    let page = d.ns.run(move || http_get(addr, "/")).expect("GET / after");
    assert!(page.contains("web"), "{page}");
    let m = d.query("web.svc.test.", RecordType::A);
    assert_eq!(a_records(&m), vec![(Ipv4Addr::new(10, 77, 0, 10), 5)]);
}

#[test]
fn an_operators_own_sm_link_survives_summonds_start_and_stop() {
    if !prerequisites("daemon link ownership test") {
        return;
    }
    let ns = NetNs::new("opertap");
    operator_tap(&ns, "sm-operator");
    // Even one named like a service's tap, and one marked by a daemon on another lock.
    operator_tap(&ns, "sm-web2");
    summon_tests::netns::ip(&[
        "-n",
        ns.name(),
        "link",
        "set",
        "dev",
        "sm-web2",
        "alias",
        "summond:/run/other/summond.lock",
    ]);
    let cfg = config(5, &[], "", &http_service("web", "10.77.0.10", ""));
    let mut d = Daemon::start_in(ns, &cfg);
    let mut taps = d.taps();
    taps.sort();
    assert_eq!(taps, vec!["sm-operator", "sm-web2"], "after start");
    summon_and_fetch(&d, "web", Ipv4Addr::new(10, 77, 0, 10));
    let alias = d.ip(&["link", "show", "dev", "sm-web"]);
    assert!(alias.contains(&link_mark(d.ns.name())), "{alias}");
    let status = d.terminate();
    assert!(status.success(), "{status}: {}", d.log());
    let mut taps = d.taps();
    taps.sort();
    assert_eq!(taps, vec!["sm-operator", "sm-web2"], "after stop");
}

/// One HTTP request to the admin listener; (status code, body).
fn admin_call(d: &Daemon, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let (method, path) = (method.to_string(), path.to_string());
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    d.ns.run(move || {
        let mut s = std::net::TcpStream::connect(ADMIN).expect("connect admin");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: t\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let code = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
        (code, body.unwrap_or_default())
    })
}

#[test]
fn admin_token_guards_everything_but_metrics_and_healthz() {
    if !prerequisites("daemon admin token test") {
        return;
    }
    let token_dir = std::env::temp_dir().join("summond-admin-token-test");
    std::fs::create_dir_all(&token_dir).unwrap();
    let token_file = token_dir.join("token");
    std::fs::write(&token_file, "s3cret-admin-token\n").unwrap();
    let cfg = config(5, &[], "", &http_service("web", "10.77.0.10", "")).replace(
        &format!("[admin]\nlisten = \"{ADMIN}\"\n"),
        &format!(
            "[admin]\nlisten = \"{ADMIN}\"\ntoken_file = \"{}\"\n",
            token_file.display()
        ),
    );
    assert!(cfg.contains("token_file"), "{cfg}");
    let d = Daemon::start("admintok", &cfg);
    summon_and_fetch(&d, "web", Ipv4Addr::new(10, 77, 0, 10));

    // Open: metrics and health, without a token.
    let (code, body) = admin_call(&d, "GET", "/metrics", None);
    assert_eq!(code, 200);
    assert!(body.contains("summon_boots_total"), "{body}");
    assert_eq!(
        admin_call(&d, "GET", "/healthz", None),
        (200, "ok\n".into())
    );
    // Everything else: 401 without the token or with a wrong one, and nothing happens.
    for token in [None, Some("wrong"), Some("s3cret-admin-token-")] {
        assert_eq!(
            admin_call(&d, "GET", "/v1/instances", token).0,
            401,
            "{token:?}"
        );
        assert_eq!(
            admin_call(&d, "POST", "/v1/instances/web/stop", token).0,
            401,
            "{token:?}"
        );
        assert_eq!(admin_call(&d, "GET", "/metrics?x", token).0, 200);
    }
    assert_eq!(
        d.taps(),
        vec!["sm-web".to_string()],
        "stopped without a token"
    );
    // With the token it works.
    let (code, body) = admin_call(&d, "GET", "/v1/instances", Some("s3cret-admin-token"));
    assert_eq!(code, 200);
    assert!(body.contains("\"state\": \"running\""), "{body}");

    // The CLI: without a token refused; the token from the config or from --token-file works.
    let status = |args: &[&str]| {
        d.ns.command(summond().to_str().unwrap())
            .arg("status")
            .args(args)
            .output()
            .unwrap()
    };
    let out = status(&["--admin", ADMIN]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{out:?}"
    );
    let out = status(&["--config", d.config.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("running"),
        "{out:?}"
    );
    let out = status(&[
        "--admin",
        ADMIN,
        "--token-file",
        token_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let out =
        d.ns.command(summond().to_str().unwrap())
            .args(["stop", "web", "--config", d.config.to_str().unwrap()])
            .output()
            .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(d.live_taps().is_empty(), "{:?}", d.live_taps());
    let _ = std::fs::remove_dir_all(&token_dir);
}

/// `cap` clients that connect and send nothing hold every admin slot: the next connection is
/// closed without an answer, until the idle ones are timed out.
fn admin_cap_holds(d: &Daemon, cap: usize) {
    use std::io::Read;
    d.ns.run(|| {
        let idle: Vec<_> = (0..cap)
            .map(|_| std::net::TcpStream::connect(ADMIN).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let mut s = std::net::TcpStream::connect(ADMIN).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = Vec::new();
        let n = s.read_to_end(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf));
        let t = Instant::now();
        for mut c in idle {
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = c.read_to_end(&mut Vec::new());
        }
        assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
        assert_eq!(
            http_get(ADMIN.parse().unwrap(), "/healthz").unwrap(),
            "ok\n"
        );
    });
}

#[test]
fn admin_connections_are_capped_and_idle_ones_time_out() {
    if !prerequisites("daemon admin cap test") {
        return;
    }
    let d = Daemon::start(
        "admincap",
        &config(5, &[], "", &http_service("web", "10.77.0.10", "")),
    );
    // A budget that does not bind: the fixed cap of 16.
    admin_cap_holds(&d, 16);
}

#[test]
fn the_admin_cap_fits_the_fd_budget() {
    if !prerequisites("daemon admin fd share test")
        || !require::check("daemon admin fd share test", require::tool("prlimit"))
    {
        return;
    }
    // At RLIMIT_NOFILE 128 the admin share is 4 descriptors (daemon/src/fds.rs).
    let d = Daemon::start_wrapped(
        NetNs::new("adminfds"),
        &config(5, &[], "", &http_service("web", "10.77.0.10", "")),
        &[],
        &["prlimit", "--nofile=128:128", "--"],
    );
    let log = d.plain_log();
    assert!(
        log.contains("admin_max_clients=4") && log.contains("client caps lowered"),
        "{log}"
    );
    admin_cap_holds(&d, 4);
}

#[test]
fn a_non_loopback_admin_listener_without_a_token_is_a_config_error() {
    let dir = std::env::temp_dir().join("summond-admin-config-test");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("summond.toml");
    let cfg = config(5, &[], "", &http_service("web", "10.77.0.10", "")).replace(
        &format!("listen = \"{ADMIN}\""),
        "listen = \"0.0.0.0:9100\"",
    );
    std::fs::write(&file, &cfg).unwrap();
    let line = cfg
        .lines()
        .position(|l| l == "listen = \"0.0.0.0:9100\"")
        .unwrap()
        + 1;
    for args in [
        vec!["check-config", file.to_str().unwrap()],
        vec!["--config", file.to_str().unwrap()],
    ] {
        let out = std::process::Command::new(summond())
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains(&format!(
                "{}:{line}:10: admin.listen: 0.0.0.0:9100 is not a loopback",
                file.display()
            )),
            "{args:?}: {text}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_boot_beyond_the_memory_budget_is_servfail_with_the_numbers_in_log_and_metrics() {
    if !prerequisites("daemon memory admission test") {
        return;
    }
    // Three 8 MiB guests, a 20 MiB budget: two fit, the third does not.
    let services = http_service("web", "10.77.0.10", "")
        + &http_service("api", "10.77.0.11", "")
        + &http_service("third", "10.77.0.12", "");
    let d = Daemon::start(
        "membudget",
        &config(5, &[], "[limits]\nmemory_budget = 20\n", &services),
    );
    summon_and_fetch(&d, "web", Ipv4Addr::new(10, 77, 0, 10));
    summon_and_fetch(&d, "api", Ipv4Addr::new(10, 77, 0, 11));
    let m = d.query("third.svc.test.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(
        d.metric(
            "summon_summons_total",
            &[("service", "third"), ("result", "memory")]
        ),
        1.0
    );
    assert_eq!(d.metric("summon_boots_total", &[("service", "third")]), 0.0);
    assert!(
        wait_until(Duration::from_secs(5), || d.log().contains(
            "boot refused: 8 MiB more would exceed the memory budget (16 of 20 MiB in use)"
        )),
        "{}",
        d.log()
    );
    let mut taps = d.taps();
    taps.sort();
    assert_eq!(taps, vec!["sm-api", "sm-web"]);
    // A stopped instance gives its memory back: now the third one boots.
    let admin: SocketAddr = ADMIN.parse().unwrap();
    d.ns.run(move || admin_post(admin, "/v1/instances/web/stop"))
        .expect("admin stop");
    summon_and_fetch(&d, "third", Ipv4Addr::new(10, 77, 0, 12));
}
