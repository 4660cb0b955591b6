//! An idle `http` instance sleeps in POLL instead of spinning. Its own test binary (so its own
//! process): the check reads this process's CPU time while nothing else runs in it.

use std::time::Duration;

use summon_launcher::InstanceEvent;
use summon_tests::guest;
use summon_tests::netns::NetNs;
use summon_tests::require;

fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) }, 0);
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[test]
fn idle_http_instance_uses_no_cpu() {
    if !require::kvm_and_netns("KVM and network namespaces") {
        return;
    }
    let ns = NetNs::new("uni-idle");
    ns.add_tap("tap0", "10.0.0.1/24");
    let guest = guest::start_on_tap(&ns, "tap0", "idle", "http", &["--ipv4=10.0.0.2/24"]);
    guest
        .events
        .wait_for(Duration::from_secs(20), |e| *e == InstanceEvent::NetReady)
        .expect("NetReady");
    let before = cpu_time();
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_time() - before;
    // A guest that polled in a loop would burn close to the full 2 s; sleeping in POLL it uses
    // next to nothing (the odd frame from the host side of the tap aside).
    assert!(
        used < Duration::from_millis(400),
        "idle guest used {used:?} of CPU in 2 s"
    );
    assert_eq!(
        guest.instance.state(),
        summon_launcher::InstanceState::Running
    );
}
