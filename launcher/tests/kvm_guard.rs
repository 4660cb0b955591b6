//! The launcher's guards against its guests and against its own failures, on the real /dev/kvm:
//! a panicking event sink, the console and exit rate limits, the vCPU threads' seccomp filter and
//! an unacknowledged suspend. (The TX limit and the frame counters need a tap: `kvm_net.rs`.)

mod support;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use summon_launcher::kvm::{KvmBackend, KvmError, KvmInstance};
use summon_launcher::{
    BackendError, EventSink, GuestLimits, Instance, InstanceEvent, InstanceSpec, InstanceState,
};

/// Generous: ring-0 guest code is instruction-emulated on nested hosts.
const LONG: Duration = Duration::from_secs(20);

fn spec(name: &str, guest: &str, limits: GuestLimits) -> InstanceSpec {
    InstanceSpec {
        name: name.to_string(),
        image: support::guests::build(guest),
        memory_mib: 16,
        nets: vec![],
        blocks: vec![],
        args: vec![],
        limits,
    }
}

fn wait_stopped(inst: &KvmInstance) {
    let deadline = Instant::now() + LONG;
    while inst.state() != InstanceState::Stopped {
        assert!(Instant::now() < deadline, "instance never reached Stopped");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn panicking_event_sink_ends_only_that_guest_as_a_fault() {
    if !support::kvm_available() {
        return;
    }
    let backend = KvmBackend::new().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    // Panics on the console line and again on the report of the fault that caused.
    let sink: EventSink = Arc::new(move |e: InstanceEvent| {
        let panics = !matches!(e, InstanceEvent::NetReady);
        s.lock().unwrap().push(e);
        if panics {
            panic!("test sink panics on purpose");
        }
    });
    let inst = backend
        .start_kvm(spec("panicky", "hello", GuestLimits::default()), sink)
        .unwrap();
    wait_stopped(&inst);
    // stop() from another thread returns (nobody waits for a thread that is gone)...
    let inst = Arc::new(inst);
    let i = inst.clone();
    std::thread::spawn(move || i.stop().unwrap())
        .join()
        .unwrap();
    assert_eq!(inst.state(), InstanceState::Stopped);
    inst.join();
    // ...and kicking after the thread has ended and been joined is safe: neither call touches
    // the closed kvm_run nor signals the dead thread.
    inst.stop().unwrap();
    assert!(matches!(
        inst.suspend(),
        Err(BackendError::InvalidState(_, "suspend"))
    ));
    assert!(inst.resume().is_err());
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        seen[0],
        InstanceEvent::Console("Hello from a Summon test guest".into())
    );
    match &seen[1] {
        InstanceEvent::Faulted(r) => assert_eq!(
            r, "vCPU thread panicked: test sink panics on purpose",
            "{r}"
        ),
        other => panic!("expected a fault, got {other:?}"),
    }
    // The process and the backend carry on: the next guest boots normally.
    let (sink, rx) = support::event_channel();
    let next = backend
        .start_kvm(spec("after", "hello", GuestLimits::default()), sink)
        .unwrap();
    let (lines, end) = support::wait_end(&rx, LONG);
    assert_eq!(lines, vec!["Hello from a Summon test guest".to_string()]);
    assert_eq!(end, InstanceEvent::Exited(0));
    next.join();
}

#[test]
fn console_rate_limit_drops_the_excess_counts_it_and_says_so() {
    if !support::kvm_available() {
        return;
    }
    let backend = KvmBackend::new().unwrap();
    let (sink, rx) = support::event_channel();
    let limits = GuestLimits {
        console_bytes_per_sec: Some(1000),
        ..Default::default()
    };
    let started = Instant::now();
    let inst = backend
        .start_kvm(spec("chatter", "chatter", limits), sink)
        .unwrap();
    let (lines, end) = support::wait_end(&rx, LONG);
    let elapsed = started.elapsed();
    assert_eq!(end, InstanceEvent::Exited(0));
    inst.join();
    let counters = inst.counters().expect("the KVM backend keeps counters");
    let dropped = counters.console_dropped_bytes.load(Ordering::Relaxed);
    let (notices, text): (Vec<&String>, Vec<&String>) =
        lines.iter().partition(|l| l.starts_with("[summon:"));
    // Every byte is delivered or counted as dropped. Delivered lines are the guest's text
    // without its newline; only the last may lack one (flushed at exit).
    let delivered = 10_000 - dropped;
    let text_bytes: u64 = text.iter().map(|l| l.len() as u64).sum();
    let k = text.len() as u64;
    assert!(
        (text_bytes + k.saturating_sub(1)..=text_bytes + k).contains(&delivered),
        "{dropped} dropped, lines: {lines:?}"
    );
    // One second of burst plus the rate over the run.
    let allowed = 1000 + (elapsed.as_secs_f64() * 1000.0) as u64 + 1;
    assert!(
        delivered <= allowed,
        "{delivered} bytes delivered in {elapsed:?}"
    );
    assert!(dropped > 0);
    // The drops are reported, each byte once, in as many lines as seconds went by (plus the
    // one at exit).
    let reported: u64 = notices
        .iter()
        .map(|l| {
            l.trim_start_matches("[summon: console rate limit: ")
                .split(' ')
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(reported, dropped, "{notices:?}");
    assert!(notices.len() as u64 <= elapsed.as_secs() + 1, "{notices:?}");
}

#[test]
fn exit_storm_is_throttled_to_the_limit_and_still_stops_at_once() {
    if !support::kvm_available() {
        return;
    }
    const LIMIT: u64 = 200;
    let backend = KvmBackend::new().unwrap();
    let times = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let t = times.clone();
    let sink: EventSink = Arc::new(move |e| {
        if let InstanceEvent::Console(_) = e {
            t.lock().unwrap().push(Instant::now());
        }
    });
    let limits = GuestLimits {
        exits_per_sec: Some(LIMIT),
        ..Default::default()
    };
    let inst = backend
        .start_kvm(spec("storm", "storm", limits), sink)
        .unwrap();
    // Let the initial burst pass, then measure one second of steady storm.
    std::thread::sleep(Duration::from_millis(300));
    let from = Instant::now();
    std::thread::sleep(Duration::from_millis(1000));
    let to = Instant::now();
    // Pause and resume work from inside the throttle wait.
    inst.suspend().unwrap();
    assert_eq!(inst.state(), InstanceState::Paused);
    inst.resume().unwrap();
    let asked = Instant::now();
    inst.stop().unwrap();
    let stop_took = asked.elapsed();
    assert_eq!(inst.state(), InstanceState::Stopped);
    let n = times
        .lock()
        .unwrap()
        .iter()
        .filter(|&&t| t >= from && t < to)
        .count() as u64;
    let counters = inst.counters().unwrap();
    let throttled = counters.exits_throttled.load(Ordering::Relaxed);
    eprintln!(
        "{n} exits in the measured second, {throttled} throttle waits, stop took {stop_took:?}"
    );
    assert!(
        n <= LIMIT * 11 / 10,
        "{n} exits in one second, limit {LIMIT}"
    );
    // The guest was actually held back (it would exit far more often unthrottled), and it ran.
    assert!(throttled > 0);
    assert!(n > 0);
    // The wait is on the wake eventfd: a stop does not sit out the throttle, let alone the 5 s
    // acknowledgement timeout.
    assert!(
        stop_took < Duration::from_secs(1),
        "stop took {stop_took:?}"
    );
    inst.join();
}

#[test]
fn disallowed_syscall_in_the_vcpu_thread_faults_that_guest_only() {
    if !support::kvm_available() {
        return;
    }
    let backend = KvmBackend::new().unwrap();
    // A bystander that keeps running (spins in KVM_RUN after one line).
    let (sink, other_rx) = support::event_channel();
    let other = backend
        .start_kvm(spec("bystander", "loop", GuestLimits::default()), sink)
        .unwrap();
    assert_eq!(support::next_line(&other_rx, LONG), "looping");
    // A vCPU from the pool (confined in two stages) and one prepared on the start path (one
    // filter attached when its guest arrives).
    let deadline = Instant::now() + LONG;
    while backend.prewarmed() == 0 {
        assert!(Instant::now() < deadline, "the prewarm pool never filled");
        std::thread::sleep(Duration::from_millis(5));
    }
    sneaky_guest_faults(&backend);
    sneaky_guest_faults(&KvmBackend::with_prewarm(0).unwrap());
    // The other guest still runs, and this (unconfined) test thread may still open sockets.
    assert_eq!(other.state(), InstanceState::Running);
    // SAFETY: plain socket(2), closed right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    assert!(fd >= 0);
    // SAFETY: closes the fd just opened.
    unsafe { libc::close(fd) };
    other.stop().unwrap();
    assert_eq!(support::wait_end(&other_rx, LONG).1, InstanceEvent::Stopped);
}

fn sneaky_guest_faults(backend: &KvmBackend) {
    // The event sink runs on the vCPU thread: opening a socket there is what an exploited
    // hypercall handler might try.
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Mutex::new(tx);
    let sink: EventSink = Arc::new(move |e| {
        if let InstanceEvent::Console(_) = &e {
            // SAFETY: plain socket(2); closed if it was (wrongly) allowed.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            if fd >= 0 {
                // SAFETY: closes the fd just opened.
                unsafe { libc::close(fd) };
            }
        }
        let _ = tx.lock().unwrap().send(e);
    });
    let inst = backend
        .start_kvm(spec("sneaky", "hello", GuestLimits::default()), sink)
        .unwrap();
    let (lines, end) = support::wait_end(&rx, LONG);
    assert_eq!(lines, vec!["Hello from a Summon test guest".to_string()]);
    assert_eq!(
        end,
        InstanceEvent::Faulted(format!(
            "seccomp: disallowed syscall {} on the vCPU thread",
            libc::SYS_socket
        ))
    );
    inst.join();
    assert_eq!(inst.state(), InstanceState::Stopped);
}

#[test]
fn unacknowledged_suspend_is_an_error_and_is_withdrawn() {
    if !support::kvm_available() {
        return;
    }
    let backend = KvmBackend::new().unwrap();
    // A sink that blocks on the first console line until the test lets it go: the vCPU thread
    // is stuck outside KVM_RUN and cannot acknowledge.
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
    let entered_tx = Mutex::new(entered_tx);
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Mutex::new(tx);
    let sink: EventSink = Arc::new(move |e| {
        if let InstanceEvent::Console(_) = &e {
            let _ = entered_tx.lock().unwrap().send(());
            let _ = release_rx.lock().unwrap().recv();
        }
        let _ = tx.lock().unwrap().send(e);
    });
    let inst = backend
        .start_kvm(spec("stuck", "hello", GuestLimits::default()), sink)
        .unwrap();
    entered_rx.recv_timeout(LONG).expect("the sink was called");
    match inst.suspend() {
        Err(BackendError::Kvm(KvmError::Unacknowledged { request, .. })) => {
            assert_eq!(request, "suspend")
        }
        other => panic!("expected an unacknowledged suspend, got {other:?}"),
    }
    // Withdrawn: once the thread is free the guest carries on to its end instead of pausing.
    release_tx.send(()).unwrap();
    let (lines, end) = support::wait_end(&rx, LONG);
    assert_eq!(lines, vec!["Hello from a Summon test guest".to_string()]);
    assert_eq!(end, InstanceEvent::Exited(0));
    inst.join();
}
