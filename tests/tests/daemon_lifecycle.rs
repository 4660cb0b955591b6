//! Instance lifecycle through the real daemon: idle reaping stops the instance (its tap kept down
//! as a spare for the next start), suspend/resume keeps
//! guest state, a crash-looping image is backed off, limits answer SERVFAIL at once.

use summon_tests::daemon as daemon_support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use daemon_support::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

fn state(d: &Daemon, service: &str) -> String {
    let json = d.admin("/v1/instances");
    let start = json
        .find(&format!("\"service\": \"{service}\""))
        .unwrap_or_else(|| panic!("{service} not in {json}"));
    let rest = &json[start..];
    let s = rest.find("\"state\": \"").unwrap() + 10;
    rest[s..].split('"').next().unwrap().to_string()
}

fn get(d: &Daemon, ip: &str, path: &str) -> String {
    let addr: SocketAddr = format!("{ip}:80").parse().unwrap();
    let path = path.to_string();
    d.ns.run(move || http_get(addr, &path)).expect("HTTP GET")
}

#[test]
fn idle_instance_is_reaped_within_idle_timeout_plus_one_second() {
    if !prerequisites("daemon reaping test") {
        return;
    }
    let d = Daemon::start(
        "reap",
        &config(
            1,
            &[],
            "",
            &http_service("idle", "10.77.0.30", "idle_timeout = \"2s\""),
        ),
    );
    assert_eq!(
        a_records(&d.query("idle.svc.test.", RecordType::A)).len(),
        1
    );
    // Traffic keeps it alive beyond idle_timeout.
    let busy_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < busy_until {
        assert!(get(&d, "10.77.0.30", "/healthz").contains("ok"));
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(state(&d, "idle"), "running");
    assert_eq!(d.taps(), vec!["sm-idle".to_string()]);
    let last_activity = Instant::now();
    assert!(
        wait_until(Duration::from_secs(6), || d.live_taps().is_empty()
            && state(&d, "idle") == "stopped"),
        "tap still up: {:?}",
        d.live_taps()
    );
    let idle_for = last_activity.elapsed();
    assert!(
        idle_for <= Duration::from_secs(3),
        "reaped after {idle_for:?}, idle_timeout is 2 s"
    );
    assert_eq!(state(&d, "idle"), "stopped");
    assert_eq!(
        d.metric(
            "summon_reaped_total",
            &[("service", "idle"), ("mode", "destroy")]
        ),
        1.0
    );
    assert!(d.ip(&["route", "show", "10.77.0.30"]).is_empty());
    // The next query boots it again.
    assert_eq!(
        a_records(&d.query("idle.svc.test.", RecordType::A)),
        vec![(Ipv4Addr::new(10, 77, 0, 30), 1)]
    );
    assert!(get(&d, "10.77.0.30", "/healthz").contains("ok"));
    assert_eq!(d.metric("summon_boots_total", &[("service", "idle")]), 2.0);
}

#[test]
fn suspended_instance_resumes_with_its_state() {
    if !prerequisites("daemon suspend test") {
        return;
    }
    let d = Daemon::start(
        "susp",
        &config(
            0,
            &[],
            "",
            &http_service(
                "keep",
                "10.77.0.31",
                "idle_timeout = \"1s\"\nstop = \"suspend\"",
            ),
        ),
    );
    d.query("keep.svc.test.", RecordType::A);
    let first: u64 = get(&d, "10.77.0.31", "/count").trim().parse().unwrap();
    let second: u64 = get(&d, "10.77.0.31", "/count").trim().parse().unwrap();
    assert_eq!(second, first + 1);
    assert!(
        wait_until(Duration::from_secs(5), || state(&d, "keep") == "suspended"),
        "not suspended: {}",
        state(&d, "keep")
    );
    // Suspended keeps its tap (packets would queue there).
    assert_eq!(d.taps(), vec!["sm-keep".to_string()]);
    assert_eq!(
        d.metric(
            "summon_reaped_total",
            &[("service", "keep"), ("mode", "suspend")]
        ),
        1.0
    );
    let m = d.query("keep.svc.test.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(state(&d, "keep"), "running");
    let third: u64 = get(&d, "10.77.0.31", "/count").trim().parse().unwrap();
    assert_eq!(
        third,
        second + 1,
        "the guest's request counter survived suspend/resume"
    );
    assert_eq!(d.metric("summon_boots_total", &[("service", "keep")]), 1.0);
    assert_eq!(
        d.metric(
            "summon_summons_total",
            &[("service", "keep"), ("result", "resumed")]
        ),
        1.0
    );
}

#[test]
fn crash_looping_image_is_backed_off() {
    if !prerequisites("daemon backoff test") {
        return;
    }
    // http with an option it does not know halts 1 at once, before its network is up:
    // a crashing service.
    let svc = http_service("crash", "10.77.0.40", "").replace("\"--name=crash\"", "\"--bogus=1\"");
    let limits = "[limits]\nbackoff_initial = \"400ms\"\nbackoff_max = \"10s\"";
    let d = Daemon::start("crash", &config(1, &[], limits, &svc));
    let mut servfail = 0;
    let until = Instant::now() + Duration::from_secs(3);
    let mut queries = 0;
    while Instant::now() < until {
        let m = d.query("crash.svc.test.", RecordType::A);
        queries += 1;
        if m.metadata.response_code == ResponseCode::ServFail {
            servfail += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let boots = d.metric("summon_boots_total", &[("service", "crash")]);
    // 400 ms, 800 ms, 1.6 s: at most 4 boots in 3 s, whatever the query rate.
    assert!(
        (2.0..=4.0).contains(&boots),
        "{boots} boots for {queries} queries"
    );
    assert!(
        servfail as f64 >= queries as f64 * 0.8,
        "{servfail}/{queries} SERVFAIL"
    );
    let metrics = d.admin("/metrics");
    assert!(
        metric_sum(
            &metrics,
            "summon_boot_failures_total",
            &[("service", "crash"), ("reason", "exit")]
        ) >= 2.0,
        "{metrics}\n{}",
        d.log()
    );
    assert!(
        d.metric(
            "summon_summons_total",
            &[("service", "crash"), ("result", "backoff")]
        ) > 0.0
    );
    // A failed instance leaves no live tap and nothing routed to it; its boots share one
    // spare tap, however many there were.
    assert!(d.live_taps().is_empty(), "{:?}", d.live_taps());
    assert!(d.spare_taps().len() <= 1, "{:?}", d.spare_taps());
    assert_eq!(d.ip(&["route", "show", "dev", "sm-crash"]).trim(), "");
    let log = d.log();
    assert!(
        log.lines()
            .any(|l| l.contains("guest") && l.contains("crash") && l.contains("bogus")),
        "guest console is logged with the service name:\n{log}"
    );
}

#[test]
fn limits_answer_servfail_at_once() {
    if !prerequisites("daemon limits test") {
        return;
    }
    let services = http_service("one", "10.77.0.50", "") + &http_service("two", "10.77.0.51", "");
    let d = Daemon::start(
        "limit",
        &config(5, &[], "[limits]\nmax_instances = 1", &services),
    );
    assert_eq!(
        d.query("one.svc.test.", RecordType::A)
            .metadata
            .response_code,
        ResponseCode::NoError
    );
    let t = Instant::now();
    let m = d.query("two.svc.test.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(
        d.metric(
            "summon_summons_total",
            &[("service", "two"), ("result", "limit")]
        ),
        1.0
    );
    assert_eq!(d.metric("summon_boots_total", &[("service", "two")]), 0.0);
    // The running one is unaffected.
    assert_eq!(
        d.query("one.svc.test.", RecordType::A)
            .metadata
            .response_code,
        ResponseCode::NoError
    );
}

/// The index of link `name` in the daemon's namespace.
fn link_index(d: &Daemon, name: &str) -> String {
    d.ip(&["-o", "link", "show", name])
        .split(':')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// A stopped instance's tap is kept down, with no route or neighbour entry, for its service's
/// next start, which takes the same link instead of creating one; beyond `network.spare_taps`
/// the oldest spare is deleted, and SIGTERM removes the spares with everything else.
#[test]
fn a_stopped_services_tap_is_kept_down_for_its_next_start() {
    if !prerequisites("daemon spare taps") {
        return;
    }
    let services = http_service("one", "10.77.0.41", "") + &http_service("two", "10.77.0.42", "");
    let cfg = config(1, &[], "", &services).replace(
        "gateway = \"10.77.0.1\"\n",
        "gateway = \"10.77.0.1\"\nspare_taps = 1\n",
    );
    let mut d = Daemon::start("spares", &cfg);
    let admin = ADMIN.parse().unwrap();
    let stop = |d: &Daemon, name: &str| {
        let path = format!("/v1/instances/{name}/stop");
        d.ns.run(move || admin_post(admin, &path))
            .expect("admin stop");
    };
    d.summon_http("one", "10.77.0.41".parse().unwrap());
    let first = link_index(&d, "sm-one");
    assert!(
        !d.tap_holders("sm-one").is_empty(),
        "the fdinfo scan finds the live tap"
    );
    stop(&d, "one");
    // Nobody holds it once the stop is answered, so the next start attaches at once.
    assert_eq!(d.tap_holders("sm-one"), Vec::<String>::new());
    assert!(
        wait_until(Duration::from_secs(5), || d.spare_taps() == ["sm-one"]),
        "no spare: up {:?}, down {:?}",
        d.live_taps(),
        d.spare_taps()
    );
    assert!(d.live_taps().is_empty(), "{:?}", d.live_taps());
    // Nothing of the stopped instance routes to the spare.
    assert_eq!(d.ip(&["route", "show", "dev", "sm-one"]).trim(), "");
    assert_eq!(d.ip(&["neigh", "show", "dev", "sm-one"]).trim(), "");
    // The next start of "one" takes that link, up, with its route and neighbour entry again;
    // a start right after a stop finds it free.
    for _ in 0..5 {
        d.summon_http("one", "10.77.0.41".parse().unwrap());
        stop(&d, "one");
    }
    assert!(
        !d.log().contains("spare tap still held"),
        "a start waited for the stopped instance to let go of its tap"
    );
    d.summon_http("one", "10.77.0.41".parse().unwrap());
    assert_eq!(
        link_index(&d, "sm-one"),
        first,
        "a new link instead of the spare"
    );
    assert_eq!(d.live_taps(), vec!["sm-one".to_string()]);
    assert!(d
        .ip(&["route", "show", "dev", "sm-one"])
        .contains("10.77.0.41"));
    assert!(d.spare_taps().is_empty());
    // One spare at most: the older one goes when another service stops.
    d.summon_http("two", "10.77.0.42".parse().unwrap());
    stop(&d, "one");
    assert!(wait_until(Duration::from_secs(5), || d.spare_taps() == ["sm-one"]));
    stop(&d, "two");
    assert!(
        wait_until(Duration::from_secs(5), || d.spare_taps() == ["sm-two"]),
        "spares: {:?}",
        d.spare_taps()
    );
    let status = d.terminate_within(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(d.taps().is_empty(), "left after exit: {:?}", d.taps());
}
