//! Guests run in worker processes of `kvm.instances_per_process` guests each: no worker holds
//! more, a worker that dies takes only its own guests (reported as faulted, summoned again on
//! the next query) while the daemon and the other workers' guests go on, and SIGTERM leaves no
//! worker behind; workers left without guests end. With `instances_per_process = 0` the guests run
//! in summond itself. Workers run without capabilities, under seccomp and Landlock, and not
//! dumpable: a process of their uid cannot read their guests' memory.

use summon_tests::daemon as daemon_support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use daemon_support::*;

fn ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 40 + i)
}

fn services(names: &[&str]) -> String {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| http_service(n, &ip(i as u8).to_string(), ""))
        .collect()
}

/// The process (summond or a worker) running service `name`'s vCPU thread.
fn process_of(d: &Daemon, name: &str) -> Option<i32> {
    d.vcpu_threads(name).first().map(|&(pid, _)| pid)
}

/// `setpriv` arguments for a process of this uid with no capability, none to gain.
const NO_CAPS: &[&str] = &[
    "--bounding-set=-all",
    "--inh-caps=-all",
    "--ambient-caps=-all",
    "--no-new-privs",
    "--",
];

/// Whether such a process may open `/proc/PID/mem` for reading (`Err`: what the shell said).
fn open_mem_without_capabilities(pid: i32) -> Result<(), String> {
    capless(&[], &["sh", "-c", &format!("exec 3</proc/{pid}/mem")])
}

/// Runs `command` through `setpriv` with `identity` (setpriv's options) and [`NO_CAPS`]: Ok,
/// or what it printed on stderr.
fn capless(identity: &[&str], command: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("setpriv")
        .args(identity)
        .args(NO_CAPS)
        .args(command)
        .output()
        .expect("run setpriv (util-linux)");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
}

#[test]
fn a_worker_that_dies_takes_only_its_own_guests_and_they_come_back_on_the_next_query() {
    if !prerequisites("daemon worker processes") {
        return;
    }
    let names = ["alpha", "beta", "gamma"];
    let cfg = config(30, &[], "", &services(&names)) + "\n[kvm]\ninstances_per_process = 2\n";
    let mut d = Daemon::start("workers", &cfg);
    for (i, n) in names.iter().enumerate() {
        d.summon_http(n, ip(i as u8));
    }
    let summond = d.pid();
    let homes: Vec<i32> = names
        .iter()
        .map(|n| process_of(&d, n).unwrap_or_else(|| panic!("no vCPU thread of {n}")))
        .collect();
    assert!(
        homes.iter().all(|&p| p != summond),
        "a guest runs in summond itself: {homes:?}"
    );
    // Two per worker at most: alpha and beta share one, gamma has another.
    assert_eq!(homes[0], homes[1], "{homes:?}");
    assert_ne!(homes[1], homes[2], "{homes:?}");
    // The workers run the guests with no capability at all (summond keeps CAP_NET_ADMIN for
    // the plumbing), and can gain none.
    for &w in &homes {
        assert_eq!(status_field(w, "CapEff"), "0000000000000000", "worker {w}");
        assert_eq!(status_field(w, "CapPrm"), "0000000000000000", "worker {w}");
        assert_eq!(status_field(w, "CapAmb"), "0000000000000000", "worker {w}");
        assert_eq!(status_field(w, "NoNewPrivs"), "1", "worker {w}");
        // Every thread of the worker is under its seccomp filter (vCPU threads stack their
        // own on it), summond is not.
        let threads: Vec<i32> = std::fs::read_dir(format!("/proc/{w}/task"))
            .unwrap()
            .flatten()
            .filter_map(|t| t.file_name().to_str()?.parse().ok())
            .collect();
        assert!(threads.len() >= 2, "worker {w}: {threads:?}");
        for t in threads {
            let filters: u32 = status_field_of(&format!("/proc/{w}/task/{t}"), "Seccomp_filters")
                .parse()
                .unwrap();
            assert_eq!(
                status_field_of(&format!("/proc/{w}/task/{t}"), "Seccomp"),
                "2"
            );
            assert!(filters >= 1, "worker {w} thread {t}: {filters} filters");
        }
    }
    assert_eq!(status_field(summond, "Seccomp"), "0");
    // A process of the same uid without capabilities (what a worker is) cannot open a
    // worker's memory, whereas it can open that of a process like itself.
    let mut peer = std::process::Command::new("setpriv")
        .args(NO_CAPS)
        .args(["sleep", "30"])
        .spawn()
        .expect("run setpriv (util-linux)");
    let peer_pid = peer.id() as i32;
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{peer_pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
    }));
    assert_eq!(
        open_mem_without_capabilities(peer_pid),
        Ok(()),
        "the probe itself"
    );
    for &w in &homes {
        let got = open_mem_without_capabilities(w);
        assert!(
            got.as_ref().is_err_and(|e| e.contains("Permission denied")),
            "worker {w}'s memory: {got:?}"
        );
    }
    let _ = peer.kill();
    let _ = peer.wait();
    // And each worker is held to its files by Landlock (this kernel has it; CI's must).
    let confined = d
        .log()
        .matches("worker confined: Landlock rules enforced")
        .count();
    assert!(confined >= 2, "{confined} workers confined\n{}", d.log());
    assert_ne!(status_field(summond, "CapEff"), "0000000000000000");

    // The worker of alpha and beta dies (as a VMM crash would end it).
    // SAFETY: kill(2) on a child process of the daemon this test started.
    assert_eq!(unsafe { libc::kill(homes[0], libc::SIGKILL) }, 0);
    assert!(
        wait_until(Duration::from_secs(10), || d.metric(
            "summon_instances",
            &[("service", "alpha"), ("state", "running")]
        ) == 0.0
            && d.metric(
                "summon_instances",
                &[("service", "beta"), ("state", "running")]
            ) == 0.0),
        "alpha and beta still counted as running\n{}",
        d.log()
    );
    let log = d.log();
    assert!(
        log.contains(&format!("its worker process {} ended", homes[0])),
        "{log}"
    );
    // gamma never noticed, and summond answers as before.
    let sa = SocketAddr::from((ip(2), 80));
    let page = d.ns.run(move || http_get(sa, "/")).expect("GET / on gamma");
    assert!(page.contains("gamma"), "{page}");
    // The next query summons alpha again, in a worker that is alive.
    d.summon_http("alpha", ip(0));
    let again = process_of(&d, "alpha").expect("alpha's new vCPU thread");
    assert_ne!(again, homes[0]);

    let workers: Vec<i32> = d
        .processes()
        .into_iter()
        .filter(|&p| p != summond)
        .collect();
    let status = d.terminate_within(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{status}\n{}", d.log());
    for w in workers {
        assert!(
            wait_until(Duration::from_secs(2), || !alive(w)),
            "worker {w} outlived summond"
        );
    }
}

#[test]
fn with_instances_per_process_zero_guests_run_in_summond_itself() {
    if !prerequisites("daemon guests in process") {
        return;
    }
    let cfg = config(30, &[], "", &services(&["solo"])) + "\n[kvm]\ninstances_per_process = 0\n";
    let mut d = Daemon::start("inproc", &cfg);
    d.summon_http("solo", ip(0));
    assert_eq!(process_of(&d, "solo"), Some(d.pid()));
    assert_eq!(d.processes(), vec![d.pid()], "summond started a worker");
    let status = d.terminate_within(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{status}");
}

/// The workers a burst needed end once their guests are gone, down to what leaves a whole
/// worker's room; the next query still summons at once.
#[test]
fn workers_left_without_guests_end() {
    if !prerequisites("daemon idle workers end") {
        return;
    }
    let names = ["one", "two", "three", "four"];
    let cfg = config(30, &[], "", &services(&names)) + "\n[kvm]\ninstances_per_process = 1\n";
    let mut d = Daemon::start("workers-idle", &cfg);
    for (i, n) in names.iter().enumerate() {
        d.summon_http(n, ip(i as u8));
    }
    let summond = d.pid();
    let workers = |d: &Daemon| d.processes().into_iter().filter(|&p| p != summond).count();
    assert!(workers(&d) >= names.len(), "{} workers", workers(&d));
    let admin = ADMIN.parse().unwrap();
    for n in names {
        let path = format!("/v1/instances/{n}/stop");
        d.ns.run(move || admin_post(admin, &path))
            .expect("admin stop");
    }
    // One empty worker stays (a whole worker's room), and perhaps the spare being started.
    let t = std::time::Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || workers(&d) <= 2),
        "{} workers left for no guest\n{}",
        workers(&d),
        d.log()
    );
    eprintln!("workers down to {} after {:?}", workers(&d), t.elapsed());
    d.summon_http("three", ip(2));
    let status = d.terminate_within(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{status}\n{}", d.log());
}

/// With `kvm.worker_uids` each worker runs as a uid (and gid) of its own, with the group of
/// /dev/kvm: its guests serve, a CPU quota still holds (summond makes the worker's cgroup
/// group for it), and a process of one worker's uid may not even signal another worker,
/// which it may with its own. A killed worker's uid and group are given back.
#[test]
fn workers_of_their_own_uid_serve_and_cannot_reach_each_other() {
    if !prerequisites("worker uids") {
        return;
    }
    let range = 400_000..400_100;
    let svc = http_service("alpha", &ip(0).to_string(), "cpu_quota = \"50%\"")
        + &http_service("beta", &ip(1).to_string(), "");
    let cfg = config(30, &[], "", &svc)
        + &format!(
            "\n[kvm]\ninstances_per_process = 1\nworker_uids = \"{}-{}\"\n",
            range.start,
            range.end - 1
        );
    let mut d = Daemon::start("wuids", &cfg);
    d.summon_http("alpha", ip(0));
    d.summon_http("beta", ip(1));
    let homes: Vec<i32> = ["alpha", "beta"]
        .iter()
        .map(|n| process_of(&d, n).unwrap_or_else(|| panic!("no vCPU thread of {n}")))
        .collect();
    assert_ne!(homes[0], homes[1]);
    let kvm_gid = std::os::unix::fs::MetadataExt::gid(&std::fs::metadata("/dev/kvm").unwrap());
    let mut uids = Vec::new();
    for &w in &homes {
        // Real, effective, saved and filesystem ids all the worker's own.
        let uid: Vec<u32> = status_field(w, "Uid")
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        assert!(uid.iter().all(|&u| u == uid[0]), "worker {w}: {uid:?}");
        assert!(range.contains(&uid[0]), "worker {w}: uid {}", uid[0]);
        let gid = status_field(w, "Gid");
        assert!(
            gid.split_whitespace().all(|g| g == uid[0].to_string()),
            "worker {w}: gid {gid}"
        );
        assert_eq!(status_field(w, "Groups"), kvm_gid.to_string(), "worker {w}");
        assert_eq!(status_field(w, "CapEff"), "0000000000000000", "worker {w}");
        uids.push(uid[0]);
    }
    assert_ne!(uids[0], uids[1]);
    // alpha's quota group, inside its worker's, which summond made for that uid.
    let group = format!("worker-{}/", homes[0]);
    assert!(
        wait_until(Duration::from_secs(5), || vcpu_cgroups(&d, "alpha")
            .iter()
            .any(|c| c.contains(&group))),
        "alpha's vCPU thread not in a group of its worker: {:?}\n{}",
        vcpu_cgroups(&d, "alpha"),
        d.log()
    );
    // A process of alpha's worker's uid may signal that worker, not beta's.
    assert_eq!(null_signal_as(uids[0], homes[0]), Ok(()));
    let other = null_signal_as(uids[0], homes[1]);
    assert!(
        other
            .as_ref()
            .is_err_and(|e| e.contains("Operation not permitted")),
        "{other:?}"
    );
    // Both serve; a killed worker gives its uid back and alpha comes back on the next query.
    // SAFETY: kill(2) on a worker process of the daemon this test started.
    assert_eq!(unsafe { libc::kill(homes[0], libc::SIGKILL) }, 0);
    assert!(
        wait_until(Duration::from_secs(10), || d.metric(
            "summon_instances",
            &[("service", "alpha"), ("state", "running")]
        ) == 0.0),
        "{}",
        d.log()
    );
    d.summon_http("alpha", ip(0));
    let again = process_of(&d, "alpha").expect("alpha's new worker");
    assert_ne!(again, homes[0]);
    assert!(range.contains(
        &status_field(again, "Uid")
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    ));
    let page =
        d.ns.run(move || http_get(SocketAddr::from((ip(1), 80)), "/"))
            .expect("GET / on beta");
    assert!(page.contains("beta"), "{page}");
    assert_eq!(d.terminate().code(), Some(0), "{}", d.log());
}

/// The cgroup lines of service `name`'s vCPU thread.
fn vcpu_cgroups(d: &Daemon, name: &str) -> Vec<String> {
    d.vcpu_threads(name)
        .into_iter()
        .filter_map(|(pid, tid)| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/cgroup")).ok()
        })
        .flat_map(|c| c.lines().map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

/// `kill -0 PID` by a process of `uid` (no capabilities): Ok, or the error it printed.
fn null_signal_as(uid: u32, pid: i32) -> Result<(), String> {
    let (reuid, regid) = (format!("--reuid={uid}"), format!("--regid={uid}"));
    capless(
        &[&reuid, &regid, "--clear-groups"],
        &["kill", "-0", &pid.to_string()],
    )
}
