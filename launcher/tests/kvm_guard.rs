//! The launcher's guards against its guests and against its own failures, on the real /dev/kvm:
//! a panicking or blocking event sink, the console and exit rate limits, and the event relay
//! that keeps sinks off the vCPU threads (own fd table, syscall filter). (The TX limit and the frame counters need a tap: `kvm_net.rs`.)

mod support;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use summon_launcher::kvm::{KvmBackend, KvmInstance};
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
fn panicking_event_sink_harms_no_guest() {
    if !support::kvm_available() {
        return;
    }
    let backend = KvmBackend::new().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    // Panics on every event: the console line and the exit.
    let sink: EventSink = Arc::new(move |e: InstanceEvent| {
        s.lock().unwrap().push(e);
        panic!("test sink panics on purpose");
    });
    let inst = backend
        .start_kvm(spec("panicky", "hello", GuestLimits::default()), sink)
        .unwrap();
    wait_stopped(&inst);
    inst.join();
    // The sink runs on the relay thread, not the vCPU thread: the guest ran to its own end,
    // and the relay delivered both events despite the first panic.
    let deadline = Instant::now() + LONG;
    while seen.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "{:?}", seen.lock().unwrap());
        std::thread::sleep(Duration::from_millis(10));
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            InstanceEvent::Console("Hello from a Summon test guest".into()),
            InstanceEvent::Exited(0)
        ]
    );
    // Kicking after the thread has ended and been joined is safe: neither call touches the
    // closed kvm_run nor signals the dead thread.
    inst.stop().unwrap();
    assert!(matches!(
        inst.suspend(),
        Err(BackendError::InvalidState(_, "suspend"))
    ));
    assert!(inst.resume().is_err());
    // The process, the relay and the backend carry on: the next guest boots normally.
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
    // The wait lets the kick signal in: a stop does not sit out the throttle, let alone the 5 s
    // acknowledgement timeout.
    assert!(
        stop_took < Duration::from_secs(1),
        "stop took {stop_took:?}"
    );
    inst.join();
}

#[test]
fn event_sinks_run_in_the_shared_fd_table_not_on_the_vcpu_thread() {
    if !support::kvm_available() {
        return;
    }
    // A pooled vCPU (confined in two stages) and one prepared on the start path (one filter
    // attached when its guest arrives).
    let pooled = KvmBackend::new().unwrap();
    let deadline = Instant::now() + LONG;
    while pooled.prewarmed() == 0 {
        assert!(Instant::now() < deadline, "the prewarm pool never filled");
        std::thread::sleep(Duration::from_millis(5));
    }
    sink_may_use_the_process_fds(&pooled);
    sink_may_use_the_process_fds(&KvmBackend::with_prewarm(0).unwrap());
}

/// A sink that uses an fd of the process's table: on a vCPU thread (own fd table, syscall
/// filter) that fd would not exist and the socket call would fault the guest.
fn sink_may_use_the_process_fds(backend: &KvmBackend) {
    let probe = std::fs::File::open("/proc/self/stat").unwrap();
    let raw = std::os::fd::AsRawFd::as_raw_fd(&probe);
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Mutex::new(tx);
    let checks = Arc::new(Mutex::new(Vec::new()));
    let c = checks.clone();
    let sink: EventSink = Arc::new(move |e| {
        // SAFETY: fcntl(F_GETFD) only asks whether `raw` is open in the calling thread's table;
        // socket(2) is closed right away.
        let (open, sock) = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            if fd >= 0 {
                libc::close(fd);
            }
            (libc::fcntl(raw, libc::F_GETFD) >= 0, fd >= 0)
        };
        let name = std::thread::current().name().map(str::to_string);
        c.lock().unwrap().push((open, sock, name));
        let _ = tx.lock().unwrap().send(e);
    });
    let inst = backend
        .start_kvm(spec("sneaky", "hello", GuestLimits::default()), sink)
        .unwrap();
    let (lines, end) = support::wait_end(&rx, LONG);
    assert_eq!(lines, vec!["Hello from a Summon test guest".to_string()]);
    assert_eq!(end, InstanceEvent::Exited(0));
    inst.join();
    for (open, sock, name) in checks.lock().unwrap().iter() {
        assert!(
            *open && *sock,
            "sink on {name:?}: fd open {open}, socket {sock}"
        );
        assert_eq!(name.as_deref(), Some("kvm-relay"));
    }
    drop(probe);
}

#[test]
fn a_blocked_sink_blocks_no_guest() {
    if !support::kvm_available() {
        return;
    }
    let backend = KvmBackend::new().unwrap();
    // A sink that blocks on the first console line until the test lets it go: before the relay
    // this held the vCPU thread outside KVM_RUN (and a suspend went unacknowledged).
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
        .start_kvm(spec("stuck", "loop", GuestLimits::default()), sink)
        .unwrap();
    entered_rx.recv_timeout(LONG).expect("the sink was called");
    inst.suspend().unwrap();
    assert_eq!(inst.state(), InstanceState::Paused);
    inst.resume().unwrap();
    inst.stop().unwrap();
    assert_eq!(inst.state(), InstanceState::Stopped);
    release_tx.send(()).unwrap();
    let (lines, end) = support::wait_end(&rx, LONG);
    assert_eq!(lines, vec!["looping".to_string()]);
    assert_eq!(end, InstanceEvent::Stopped);
    inst.join();
}
