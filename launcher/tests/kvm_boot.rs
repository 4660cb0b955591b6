//! Boots the hand-written test guests through `KvmBackend` on the real /dev/kvm: normal exits,
//! every kind of guest fault, stop of a spinning guest, pause/resume, two guests at once, and a
//! block device round trip.

mod support;

use std::sync::mpsc::Receiver;
use std::time::Duration;

use summon_launcher::kvm::{KvmBackend, KvmError, KvmInstance};
use summon_launcher::{Backend, BlockSpec, Instance, InstanceEvent, InstanceSpec, InstanceState};

fn spec(name: &str, guest: &str) -> InstanceSpec {
    InstanceSpec {
        name: name.to_string(),
        image: support::guests::build(guest),
        memory_mib: 16,
        nets: vec![],
        blocks: vec![],
        args: vec![],
        limits: Default::default(),
    }
}

/// Generous: ring-0 guest code is instruction-emulated on nested hosts.
const LONG: Duration = Duration::from_secs(20);

fn start(backend: &KvmBackend, name: &str, guest: &str) -> (KvmInstance, Receiver<InstanceEvent>) {
    let (sink, rx) = support::event_channel();
    let inst = backend.start_kvm(spec(name, guest), sink).unwrap();
    (inst, rx)
}

fn run_to_end(guest: &str) -> (Vec<String>, InstanceEvent) {
    let backend = KvmBackend::new().unwrap();
    let (inst, rx) = start(&backend, guest, guest);
    let end = support::wait_end(&rx, LONG);
    inst.join();
    assert_eq!(inst.state(), InstanceState::Stopped);
    end
}

fn fault_reason(guest: &str) -> String {
    match run_to_end(guest).1 {
        InstanceEvent::Faulted(reason) => reason,
        other => panic!("{guest}: expected a fault, got {other:?}"),
    }
}

#[test]
fn hello_prints_and_exits_zero() {
    if !support::kvm_available() {
        return;
    }
    let backend = KvmBackend::new().unwrap();
    let (sink, rx) = support::event_channel();
    // Through the trait object, as the daemon uses it.
    let inst = backend.start(spec("hello", "hello"), sink).unwrap();
    let (lines, end) = support::wait_end(&rx, LONG);
    assert_eq!(lines, vec!["Hello from a Summon test guest".to_string()]);
    assert_eq!(end, InstanceEvent::Exited(0));
    // The final event comes before the state flips; give it a moment.
    for _ in 0..100 {
        if inst.state() == InstanceState::Stopped {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(inst.state(), InstanceState::Stopped);
    assert!(
        inst.suspend().is_err(),
        "a stopped instance cannot be suspended"
    );
    inst.stop().unwrap();
}

#[test]
fn panic_exits_255() {
    if !support::kvm_available() {
        return;
    }
    let (lines, end) = run_to_end("panic");
    assert_eq!(lines, vec!["guest panic: on purpose".to_string()]);
    assert_eq!(end, InstanceEvent::Exited(255));
}

#[test]
fn null_page_read_is_a_reported_fault() {
    if !support::kvm_available() {
        return;
    }
    let r = fault_reason("nullread");
    assert!(r.contains("KVM_EXIT_SHUTDOWN"), "{r}");
    assert!(r.contains("rip 0x100000"), "{r}");
    assert!(r.contains("cr2=0x0"), "{r}");
}

#[test]
fn write_into_own_text_is_a_reported_fault() {
    if !support::kvm_available() {
        return;
    }
    let r = fault_reason("textwrite");
    // KVM_EXIT_MMIO on this nested host, EFAULT from KVM_RUN on VMX/SVM hosts.
    assert!(
        r.contains("KVM_EXIT_MMIO") || r.contains("EFAULT") || r.contains("MEMORY_FAULT"),
        "{r}"
    );
    assert!(r.contains("rip 0x"), "{r}");
    if r.contains("KVM_EXIT_MMIO") {
        assert!(r.contains("write of 1 bytes at 0x100008"), "{r}");
    }
}

#[test]
fn out_of_range_hypercall_buffer_is_a_reported_fault() {
    if !support::kvm_available() {
        return;
    }
    let r = fault_reason("badbuf");
    assert!(r.contains("KVM_EXIT_IO"), "{r}");
    assert!(r.contains("PUTS"), "{r}");
    assert!(r.contains("0xfffff000"), "{r}");
    assert!(r.contains("outside guest memory"), "{r}");
}

#[test]
fn hypercall_struct_crossing_the_end_of_memory_is_a_reported_fault() {
    if !support::kvm_available() {
        return;
    }
    let r = fault_reason("badstruct");
    assert!(r.contains("request struct at 0xfffff8"), "{r}");
    assert!(r.contains("outside guest memory"), "{r}");
}

#[test]
fn unknown_port_is_a_reported_fault() {
    if !support::kvm_available() {
        return;
    }
    let r = fault_reason("badport");
    assert!(r.contains("unknown port 0x600"), "{r}");
    assert!(r.contains("rip 0x"), "{r}");
}

#[test]
fn spinning_guest_stops_on_request() {
    if !support::kvm_available() {
        return;
    }
    let backend = KvmBackend::new().unwrap();
    let (inst, rx) = start(&backend, "loop", "loop");
    assert_eq!(support::next_line(&rx, LONG), "looping");
    // Let it get deep into its endless loop inside KVM_RUN.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(inst.state(), InstanceState::Running);
    inst.stop().unwrap();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        InstanceEvent::Stopped
    );
    assert_eq!(inst.state(), InstanceState::Stopped);
    inst.stop().unwrap(); // idempotent
    inst.join();
}

#[test]
fn paused_guest_makes_no_progress_and_resumes_without_reboot() {
    if !support::kvm_available() {
        return;
    }
    let backend = KvmBackend::new().unwrap();
    let (inst, rx) = start(&backend, "ticker", "ticker");
    assert_eq!(support::next_line(&rx, LONG), "tick");
    assert_eq!(support::next_line(&rx, LONG), "tick");
    inst.suspend().unwrap();
    assert_eq!(inst.state(), InstanceState::Paused);
    // At most one line can have been on its way when suspend() returned.
    let mut ticks = 2;
    while let Ok(e) = rx.recv_timeout(Duration::from_millis(50)) {
        assert_eq!(e, InstanceEvent::Console("tick".into()));
        ticks += 1;
    }
    assert!(ticks <= 3, "{ticks} ticks");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        rx.try_recv().is_err(),
        "a paused guest must not make progress"
    );
    assert_eq!(inst.state(), InstanceState::Paused);
    inst.resume().unwrap();
    let (lines, end) = support::wait_end(&rx, LONG);
    // It continues where it was: exactly 20 ticks in all, no second boot.
    assert_eq!(ticks + lines.len(), 20, "{lines:?}");
    assert_eq!(end, InstanceEvent::Exited(0));
}

#[test]
fn paused_guest_can_be_stopped() {
    if !support::kvm_available() {
        return;
    }
    let backend = KvmBackend::new().unwrap();
    let (inst, rx) = start(&backend, "loop", "loop");
    assert_eq!(support::next_line(&rx, LONG), "looping");
    inst.suspend().unwrap();
    assert_eq!(inst.state(), InstanceState::Paused);
    inst.stop().unwrap();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        InstanceEvent::Stopped
    );
    assert!(inst.resume().is_err());
}

#[test]
fn a_faulting_guest_leaves_another_running() {
    if !support::kvm_available() {
        return;
    }
    let backend = KvmBackend::new().unwrap();
    // The idle guest never ends by itself, so whatever ends it must come from outside.
    let (idle, idle_rx) = start(&backend, "idle", "idle");
    assert_eq!(support::next_line(&idle_rx, LONG), "idle");
    for guest in ["nullread", "textwrite", "badport", "badbuf"] {
        let (bad, bad_rx) = start(&backend, guest, guest);
        let (_, end) = support::wait_end(&bad_rx, LONG);
        assert!(matches!(end, InstanceEvent::Faulted(_)), "{guest}: {end:?}");
        bad.join();
    }
    assert_eq!(idle.state(), InstanceState::Running);
    assert!(
        idle_rx.try_recv().is_err(),
        "the idle guest reported something"
    );
    // Still alive and under control.
    idle.suspend().unwrap();
    assert_eq!(idle.state(), InstanceState::Paused);
    idle.resume().unwrap();
    idle.stop().unwrap();
    assert_eq!(
        idle_rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        InstanceEvent::Stopped
    );
}

#[test]
fn block_write_read_round_trip() {
    if !support::kvm_available() {
        return;
    }
    let disk = tempfile::NamedTempFile::new().unwrap();
    disk.as_file().set_len(8192).unwrap();
    let backend = KvmBackend::new().unwrap();
    let mut s = spec("block", "block");
    s.blocks.push(BlockSpec {
        name: "storage".into(),
        path: disk.path().to_path_buf(),
        sector_size: None,
    });
    let (sink, rx) = support::event_channel();
    let inst = backend.start_kvm(s, sink).unwrap();
    let (_, end) = support::wait_end(&rx, LONG);
    assert_eq!(end, InstanceEvent::Exited(0));
    inst.join();
    let data = std::fs::read(disk.path()).unwrap();
    let expected: Vec<u8> = (0..512u32).map(|i| ((i * 7 + 3) & 0xff) as u8).collect();
    assert_eq!(&data[512..1024], &expected[..]);
    assert!(data[..512].iter().all(|&b| b == 0));
    assert!(data[1024..].iter().all(|&b| b == 0));
}

#[test]
fn start_errors_are_typed_and_clear() {
    if !support::kvm_available() {
        return;
    }
    let backend = KvmBackend::new().unwrap();
    let (sink, _rx) = support::event_channel();
    // The manifest's device must be attached.
    let err = backend
        .start_kvm(spec("b", "block"), sink.clone())
        .unwrap_err();
    assert!(matches!(err, KvmError::DeviceNotAttached { .. }), "{err}");
    assert!(err.to_string().contains("storage"), "{err}");
    // A device the image does not declare.
    let mut s = spec("h", "hello");
    s.blocks.push(BlockSpec {
        name: "nope".into(),
        path: "/dev/null".into(),
        sector_size: None,
    });
    let err = backend.start_kvm(s, sink.clone()).unwrap_err();
    assert!(matches!(err, KvmError::UnknownDevice { .. }), "{err}");
    // Memory out of range.
    let mut s = spec("h", "hello");
    s.memory_mib = 1;
    let err = backend.start_kvm(s, sink.clone()).unwrap_err();
    assert!(matches!(err, KvmError::MemorySize { mib: 1 }), "{err}");
    // Sector size must be a power of two >= 512 dividing the capacity.
    let disk = tempfile::NamedTempFile::new().unwrap();
    disk.as_file().set_len(1536).unwrap();
    for (size, ok) in [(1000, false), (256, false), (1024, false), (512, true)] {
        let mut s = spec("b", "block");
        s.blocks.push(BlockSpec {
            name: "storage".into(),
            path: disk.path().to_path_buf(),
            sector_size: Some(size),
        });
        let r = backend.start_kvm(s, sink.clone());
        assert_eq!(r.is_ok(), ok, "sector size {size}: {:?}", r.err());
        if let Ok(i) = r {
            i.join();
        }
    }
    // Not an image at all.
    let mut s = spec("x", "hello");
    s.image = "/etc/hostname".into();
    let err = backend.start_kvm(s, sink).unwrap_err();
    assert!(matches!(err, KvmError::Image(_)), "{err}");
}

#[test]
fn hypercall_arguments_are_checked_and_answered() {
    if !support::kvm_available() {
        return;
    }
    let backend = KvmBackend::new().unwrap();
    let (sink, rx) = support::event_channel();
    let mut s = spec("checks", "checks");
    s.args = vec!["a".into(), "b".into()];
    let inst = backend.start_kvm(s, sink).unwrap();
    let (_, end) = support::wait_end(&rx, LONG);
    // A non-zero status names the first check of checks.S that failed.
    assert_eq!(end, InstanceEvent::Exited(0));
    inst.join();
}

#[test]
fn hypercall_output_into_read_only_memory_is_a_reported_fault() {
    if !support::kvm_available() {
        return;
    }
    let r = fault_reason("roout");
    assert!(r.contains("WALLTIME"), "{r}");
    assert!(r.contains("read-only memory"), "{r}");
}

#[test]
fn ring0_sse_runs_or_is_a_reported_emulation_failure() {
    if !support::kvm_available() {
        return;
    }
    // On this nested host ring-0 SSE is emulated and fails; on VMX/SVM it simply runs.
    match run_to_end("sse").1 {
        InstanceEvent::Exited(0) => {}
        InstanceEvent::Faulted(r) => {
            assert!(r.contains("KVM_EXIT_INTERNAL_ERROR"), "{r}");
            assert!(r.contains("rip 0x1000"), "{r}");
        }
        other => panic!("unexpected end {other:?}"),
    }
}

#[test]
fn guest_sleeping_in_poll_stops_on_request() {
    if !support::kvm_available() {
        return;
    }
    let backend = KvmBackend::new().unwrap();
    let (inst, rx) = start(&backend, "idle", "idle");
    assert_eq!(support::next_line(&rx, LONG), "idle");
    std::thread::sleep(Duration::from_millis(20));
    inst.stop().unwrap();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        InstanceEvent::Stopped
    );
    inst.join();
}

#[test]
fn starts_of_changing_memory_sizes_boot_correctly() {
    if !support::kvm_available() {
        return;
    }
    // The prepared vCPU's memory follows the previous start's size; a start of another size
    // must re-register memory of its own.
    let backend = KvmBackend::new().unwrap();
    for mib in [16u64, 16, 32, 16, 2, 64] {
        let (sink, rx) = support::event_channel();
        let mut s = spec("checks", "checks");
        s.memory_mib = mib;
        s.args = vec!["a".into(), "b".into()];
        let inst = backend.start_kvm(s, sink).unwrap();
        let (_, end) = support::wait_end(&rx, LONG);
        // checks.S expects 16 MiB: check 6 (boot info) fails for any other size.
        let expected = if mib == 16 { 0 } else { 6 };
        assert_eq!(end, InstanceEvent::Exited(expected), "{mib} MiB");
        inst.join();
        let (sink, rx) = support::event_channel();
        let mut s = spec("hello", "hello");
        s.memory_mib = mib;
        let inst = backend.start_kvm(s, sink).unwrap();
        assert_eq!(support::wait_end(&rx, LONG).1, InstanceEvent::Exited(0));
        inst.join();
    }
}
