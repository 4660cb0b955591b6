//! summond as a systemd service: the unit verifies, sd_notify READY/WATCHDOG/RELOADING reach a
//! (fake) NOTIFY_SOCKET, SIGHUP reloads (add, remove, invalid kept out), SIGTERM cleans up and
//! exits 0, leftovers of a crashed daemon are removed at start-up.

use summon_tests::daemon as daemon_support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use daemon_support::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use summon_tests::netns::NetNs;
use summon_tests::require;

fn unit_path() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/summond.service"
    ))
}

fn verify(unit_text: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("summond-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = dir.join("summond.service");
    std::fs::write(&unit, unit_text).unwrap();
    // --man=no: the unit's Documentation= names the man pages the Debian package installs,
    // which this host need not have (tests/tests/package.rs checks them in the package).
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze");
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unit_file_verifies_without_warnings() {
    if !require::check("systemd-analyze", require::tool("systemd-analyze")) {
        return;
    }
    let text = std::fs::read_to_string(unit_path()).unwrap();
    assert!(text.contains("Type=notify") && text.contains("WatchdogSec="));
    for needed in [
        "DeviceAllow=/dev/kvm rw",
        "DeviceAllow=/dev/net/tun rw",
        "CAP_NET_ADMIN",
        "ProtectSystem=strict",
        // The default daemon.lock_file, /run/summond/summond.lock, lives here.
        "RuntimeDirectory=summond\n",
        "MemoryMax=80%\n",
        "TasksMax=",
        "LimitNOFILE=",
    ] {
        assert!(text.contains(needed), "unit lacks {needed}");
    }
    // verify wants the ExecStart binary to exist: point it at the one just built.
    let text = text.replace("/usr/bin/summond", summond().to_str().unwrap());
    let (ok, stderr) = verify(&text);
    assert!(
        ok && stderr.trim().is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
    // The check can fail: an unknown key is reported on stderr (exit status stays 0).
    let (_, stderr) = verify(&text.replace("[Install]", "[Install]\nWantedByy=x"));
    assert!(stderr.contains("Unknown key"), "{stderr}");
}

#[test]
fn notify_socket_sees_ready_and_watchdog() {
    if !prerequisites("sd_notify test") {
        return;
    }
    let ns = NetNs::new("notify");
    let cfg = config(5, &[], "", &http_service("web", "10.77.0.10", ""));
    // start_env already waited for READY=1 on the fake NOTIFY_SOCKET.
    let mut d = Daemon::start_env(ns, &cfg, &[("WATCHDOG_USEC", "200000")]);
    let ping = d.wait_notify("WATCHDOG=1", Duration::from_secs(2));
    assert!(ping.contains("WATCHDOG=1"));
    d.wait_notify("WATCHDOG=1", Duration::from_secs(2));
    assert_eq!(d.terminate().code(), Some(0));
}

#[test]
fn sighup_adds_removes_and_rejects_invalid_config() {
    if !prerequisites("SIGHUP reload test") {
        return;
    }
    let web = http_service("web", "10.77.0.10", "");
    let extra = http_service("extra", "10.77.0.12", "");
    let mut d = Daemon::start("hup", &config(5, &[], "", &web));
    assert_eq!(
        d.query("extra.svc.test.", RecordType::A)
            .metadata
            .response_code,
        ResponseCode::NXDomain
    );
    d.query("web.svc.test.", RecordType::A);
    let web_addr: SocketAddr = "10.77.0.10:80".parse().unwrap();
    let count = |d: &Daemon| -> u64 {
        d.ns.run(move || http_get(web_addr, "/count"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let before = count(&d);

    // Add a service: it resolves and boots; web's instance is untouched.
    d.reload(&config(5, &[], "", &(web.clone() + &extra)));
    let m = d.query("extra.svc.test.", RecordType::A);
    assert_eq!(a_records(&m), vec![(Ipv4Addr::new(10, 77, 0, 12), 5)]);
    assert_eq!(count(&d), before + 1, "web kept running through the reload");
    assert_eq!(d.metric("summon_boots_total", &[("service", "web")]), 1.0);
    let mut taps = d.taps();
    taps.sort();
    assert_eq!(taps, vec!["sm-extra".to_string(), "sm-web".to_string()]);

    // Remove it: NXDOMAIN, its instance and tap are gone.
    d.reload(&config(5, &[], "", &web));
    assert_eq!(
        d.query("extra.svc.test.", RecordType::A)
            .metadata
            .response_code,
        ResponseCode::NXDomain
    );
    assert_eq!(d.taps(), vec!["sm-web".to_string()]);
    assert!(d.ip(&["route", "show", "10.77.0.12"]).is_empty());

    // Invalid: rejected, logged with its position, old config kept.
    std::fs::write(
        &d.config,
        config(5, &[], "", &web).replace("ttl = 5", "ttl = \"five\""),
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    d.wait_notify("READY=1", Duration::from_secs(10));
    assert!(
        wait_until(Duration::from_secs(5), || d
            .log()
            .contains("reload rejected")),
        "{}",
        d.log()
    );
    assert!(d.log().contains("summond.toml:4:7"), "{}", d.log());
    assert_eq!(
        a_records(&d.query("web.svc.test.", RecordType::A)),
        vec![(Ipv4Addr::new(10, 77, 0, 10), 5)]
    );
    assert_eq!(count(&d), before + 2);

    // A changed service gets a fresh instance with the new settings.
    d.reload(&config(
        7,
        &[],
        "",
        &web.replace("memory_mib = 8", "memory_mib = 10"),
    ));
    assert_eq!(
        a_records(&d.query("web.svc.test.", RecordType::A)),
        vec![(Ipv4Addr::new(10, 77, 0, 10), 7)]
    );
    assert_eq!(count(&d), 1, "a changed service restarts");
    assert_eq!(d.metric("summon_boots_total", &[("service", "web")]), 2.0);
}

#[test]
fn sigterm_stops_everything_and_leaves_nothing() {
    if !prerequisites("SIGTERM cleanup test") {
        return;
    }
    let services = http_service("a", "10.77.0.60", "")
        + &http_service(
            "b",
            "10.77.0.61",
            "stop = \"suspend\"\nidle_timeout = \"1s\"",
        );
    let ns = NetNs::new("term");
    // A leftover of a crashed daemon on the same host state (marked with its lock's alias):
    // removed at start-up.
    summon_tests::netns::ip(&[
        "-n",
        ns.name(),
        "tuntap",
        "add",
        "dev",
        "sm-stale",
        "mode",
        "tap",
    ]);
    summon_tests::netns::ip(&[
        "-n",
        ns.name(),
        "link",
        "set",
        "dev",
        "sm-stale",
        "alias",
        &link_mark(ns.name()),
    ]);
    let mut d = Daemon::start_in(ns, &config(0, &[], "", &services));
    assert!(
        d.taps().is_empty(),
        "leftover tap not removed: {:?}",
        d.taps()
    );
    d.query("a.svc.test.", RecordType::A);
    d.query("b.svc.test.", RecordType::A);
    assert_eq!(d.taps().len(), 2);
    assert!(wait_until(Duration::from_secs(5), || d
        .admin("/v1/instances")
        .contains("suspended")));
    let status = d.terminate();
    assert_eq!(status.code(), Some(0), "{}", d.log());
    assert!(d.taps().is_empty(), "taps left: {:?}", d.taps());
    let routes = d.ip(&["-4", "route", "show"]);
    assert!(!routes.contains("10.77."), "routes left: {routes}");
    let neigh = d.ip(&["neigh", "show"]);
    assert!(!neigh.contains("10.77."), "neighbours left: {neigh}");
    let addrs = d.ip(&["-4", "addr", "show"]);
    assert!(
        !addrs.contains("10.77.0.1"),
        "gateway address left: {addrs}"
    );
}

/// The unit's `SystemCallFilter=` (as this host's systemd expands it, `NoNewPrivileges=` and
/// `EPERM` for the rest, reproduced by the `syscall-allowlist` helper because the test cannot
/// start a real unit) lets summond run and confine its workers: systemd 252's
/// `@system-service` has neither `seccomp` nor the Landlock calls, and without them every
/// worker failed to start, so every summon failed.
#[test]
fn the_units_syscall_filter_lets_summond_confine_its_workers() {
    if !prerequisites("unit syscall filter test")
        || !require::check("systemd-analyze", require::tool("systemd-analyze"))
    {
        return;
    }
    let unit = std::fs::read_to_string(unit_path()).unwrap();
    let entries = summon_tests::systemd::unit_syscall_filter(&unit).unwrap();
    let names = summon_tests::systemd::expand(&entries).unwrap();
    let numbers = |names: &std::collections::BTreeSet<String>| {
        let numbers: Vec<String> = summon_tests::systemd::numbers(names)
            .unwrap()
            .iter()
            .map(i64::to_string)
            .collect();
        numbers.join(",")
    };
    let allowed = numbers(&names);
    let helper = env!("CARGO_BIN_EXE_syscall-allowlist");
    let ns = NetNs::new("scfilter");
    let web = http_service("web", "10.77.0.10", "idle_timeout = \"1s\"");

    // Without `seccomp` (as under systemd 252's @system-service alone) no worker can start:
    // summond exits at once and says why.
    let mut without = names.clone();
    without.remove("seccomp");
    let dir = test_dir(ns.name());
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("summond.toml");
    std::fs::write(&cfg, with_own_lock(&config(5, &[], "", &web), &dir)).unwrap();
    let out = ns
        .command_net_only(helper)
        .args([
            &numbers(&without),
            "--",
            summond().to_str().unwrap(),
            "--config",
        ])
        .arg(&cfg)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run summond under the filter");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("the worker's seccomp filter")
            && stderr.contains("Operation not permitted"),
        "{stderr}"
    );

    // TTL 1: idle 2 s after the last query.
    let mut d = Daemon::start_wrapped(
        ns,
        &config(1, &[], "", &web),
        &[],
        &[helper, &allowed, "--"],
    );
    assert_eq!(status_field(d.pid(), "Seccomp"), "2", "the helper's filter");
    d.summon_http("web", Ipv4Addr::new(10, 77, 0, 10));
    let log = d.log();
    assert!(
        log.contains("worker confined: Landlock rules enforced"),
        "{log}"
    );
    // Every worker thread has the unit's filter and the worker's own stacked on it.
    let workers: Vec<i32> = d
        .processes()
        .into_iter()
        .filter(|&p| p != d.pid())
        .collect();
    assert!(!workers.is_empty());
    for w in workers {
        let filters: u32 = status_field(w, "Seccomp_filters").parse().unwrap();
        assert!(filters >= 2, "worker {w}: {filters} filters");
    }
    // The idle stop, a reload and the exit under the filter too.
    assert!(
        wait_until(Duration::from_secs(10), || d.live_taps().is_empty()),
        "web not stopped when idle\n{}",
        d.log()
    );
    d.reload(&config(2, &[], "", &web));
    assert_eq!(
        a_records(&d.query("web.svc.test.", RecordType::A)),
        vec![(Ipv4Addr::new(10, 77, 0, 10), 2)]
    );
    assert_eq!(d.terminate().code(), Some(0), "{}", d.log());
}
