//! Boot benchmark of the embedded KVM launcher; prints median and p99 of each figure.
//!
//! `cargo bench -p summon-launcher --bench boot` (set BOOT_RUNS to change the 200 runs).
//!
//! (a) the floor, measured in the same run: KVM_CREATE_VM + one memory region + one vCPU +
//!     first KVM_RUN to an immediate port write, with raw kvm-ioctls on this thread;
//! (b) our launcher from `start` to the guest's first exit (the hello guest's PUTS);
//! (c) `start` to the hello guest's HALT;
//! (d) teardown: final event to the vCPU thread having closed the VM and unmapped memory;
//! plus stop() of a spinning guest, and the RSS an idle 16 MiB guest adds to the process.

use summon_test_support::guests;

use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};
use summon_launcher::kvm::{ElfImage, KvmBackend};
use summon_launcher::{EventSink, Instance, InstanceEvent, InstanceSpec};

fn runs() -> usize {
    std::env::var("BOOT_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200)
}

struct Stats(Vec<Duration>);

impl Stats {
    fn new() -> Self {
        Stats(Vec::new())
    }
    fn push(&mut self, d: Duration) {
        self.0.push(d);
    }
    fn pct(&self, p: f64) -> Duration {
        let mut v = self.0.clone();
        v.sort();
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[i]
    }
    fn median(&self) -> Duration {
        self.pct(0.5)
    }
    fn print(&self, label: &str) {
        println!(
            "{label:<58} median {:>8.1} us   p99 {:>8.1} us   (n={})",
            self.median().as_secs_f64() * 1e6,
            self.pct(0.99).as_secs_f64() * 1e6,
            self.0.len()
        );
    }
}

/// (a): the bare minimum to get a vCPU to its first exit, and its teardown.
fn floor_once(kvm: &Kvm, mem_size: usize) -> (Duration, Duration) {
    let t0 = Instant::now();
    // SAFETY: anonymous private mapping, checked below, unmapped at the end.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            mem_size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(mem, libc::MAP_FAILED);
    // mov al, 0x61; out 0x10, al  (real mode, at GPA 0x1000)
    let code = [0xb0u8, 0x61, 0xe6, 0x10];
    // SAFETY: the mapping is mem_size > 0x1004 bytes.
    unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), mem.cast::<u8>().add(0x1000), 4) };
    let vm = kvm.create_vm().unwrap();
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: mem_size as u64,
        userspace_addr: mem as u64,
    };
    // SAFETY: the region is our mapping, which outlives the VM.
    unsafe { vm.set_user_memory_region(region).unwrap() };
    let mut vcpu = vm.create_vcpu(0).unwrap();
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).unwrap();
    let regs = kvm_bindings::kvm_regs {
        rip: 0x1000,
        rflags: 2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).unwrap();
    match vcpu.run().unwrap() {
        VcpuExit::IoOut(0x10, _) => {}
        other => panic!("floor guest: unexpected exit {other:?}"),
    }
    let first_exit = t0.elapsed();
    let t1 = Instant::now();
    drop(vcpu);
    drop(vm);
    // SAFETY: unmaps our own mapping; the VM using it is gone.
    unsafe { libc::munmap(mem, mem_size) };
    (first_exit, t1.elapsed())
}

type Timed = Receiver<(Instant, InstanceEvent)>;

fn timed_sink() -> (EventSink, Timed) {
    let (tx, rx) = channel();
    let tx = Mutex::new(tx);
    let sink: EventSink = Arc::new(move |e| {
        let now = Instant::now();
        let _ = tx.lock().unwrap().send((now, e));
    });
    (sink, rx)
}

fn spec(image: &std::path::Path) -> InstanceSpec {
    InstanceSpec {
        name: "bench".into(),
        image: image.to_path_buf(),
        memory_mib: 16,
        nets: vec![],
        blocks: vec![],
        args: vec![],
        limits: Default::default(),
    }
}

fn final_event(rx: &Timed) -> (Instant, InstanceEvent) {
    loop {
        let (t, e) = rx.recv_timeout(Duration::from_secs(20)).expect("event");
        if !matches!(e, InstanceEvent::Console(_) | InstanceEvent::NetReady) {
            return (t, e);
        }
    }
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn main() {
    // `cargo bench` passes --bench; any filter argument is ignored.
    let n = runs();
    let hello = guests::build("hello");
    let spin = guests::build("loop");
    let idle = guests::build("idle");
    let kvm = Kvm::new().expect("/dev/kvm");
    let backend = KvmBackend::new().expect("KvmBackend");
    // The same launcher without prepared vCPUs: every start creates its VM and vCPU inline.
    let cold = KvmBackend::with_prewarm(0).expect("KvmBackend");
    let image = Arc::new(ElfImage::from_file(&hello).unwrap());

    // Warm up caches, page tables of the process, the image cache.
    for _ in 0..20 {
        floor_once(&kvm, 16 << 20);
        let (sink, rx) = timed_sink();
        let i = backend.start_kvm(spec(&hello), sink).unwrap();
        final_event(&rx);
        i.join();
    }

    let mut floor = Stats::new();
    let mut floor_down = Stats::new();
    let mut first = Stats::new();
    let mut halt = Stats::new();
    let mut down = Stats::new();
    let mut start_call = Stats::new();
    let mut first_cached = Stats::new();
    let mut first_file = Stats::new();
    let mut first_cold = Stats::new();
    let mut start_cold = Stats::new();
    // Interleave the variants so that load on the shared cores hits them alike.
    for _ in 0..n {
        while backend.prewarmed() == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
        let (f, d) = floor_once(&kvm, 16 << 20);
        floor.push(f);
        floor_down.push(d);

        let (sink, rx) = timed_sink();
        let t0 = Instant::now();
        let inst = backend
            .start_image(image.clone(), spec(&hello), sink)
            .unwrap();
        start_call.push(t0.elapsed());
        let (t1, e) = rx.recv().unwrap();
        assert!(matches!(e, InstanceEvent::Console(_)));
        first.push(t1 - t0);
        let (t2, e) = final_event(&rx);
        assert_eq!(e, InstanceEvent::Exited(0));
        halt.push(t2 - t0);
        inst.join();
        down.push(t2.elapsed());

        while backend.prewarmed() == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
        let (sink, rx) = timed_sink();
        let t0 = Instant::now();
        let inst = backend.start_kvm(spec(&hello), sink).unwrap();
        let (t1, _) = rx.recv().unwrap();
        first_cached.push(t1 - t0);
        final_event(&rx);
        inst.join();

        let (sink, rx) = timed_sink();
        let t0 = Instant::now();
        let inst = cold.start_image(image.clone(), spec(&hello), sink).unwrap();
        start_cold.push(t0.elapsed());
        let (t1, _) = rx.recv().unwrap();
        first_cold.push(t1 - t0);
        final_event(&rx);
        inst.join();

        // Let the prewarm thread refill before the next prewarmed start.
        while backend.prewarmed() == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }

        let (sink, rx) = timed_sink();
        let t0 = Instant::now();
        let img = Arc::new(ElfImage::from_file(&hello).unwrap());
        let inst = backend.start_image(img, spec(&hello), sink).unwrap();
        let (t1, _) = rx.recv().unwrap();
        first_file.push(t1 - t0);
        final_event(&rx);
        inst.join();
    }

    // stop() of a guest spinning in KVM_RUN.
    let mut stop_call = Stats::new();
    let mut stop_event = Stats::new();
    for _ in 0..n {
        let (sink, rx) = timed_sink();
        let inst = backend.start_kvm(spec(&spin), sink).unwrap();
        let _ = rx.recv().unwrap(); // "looping"
        std::thread::sleep(Duration::from_millis(1));
        let t0 = Instant::now();
        inst.stop().unwrap();
        stop_call.push(t0.elapsed());
        let (t1, e) = final_event(&rx);
        assert_eq!(e, InstanceEvent::Stopped);
        stop_event.push(t1 - t0);
        inst.join();
    }

    println!(
        "machine: {} cores, kernel {}, TSC {} kHz",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        backend.tsc_khz()
    );
    floor.print("(a) floor: create VM+region+vCPU, first KVM_RUN to port exit");
    first.print("(b) start (parsed image) -> first guest exit");
    first_cold.print("(b-cold) same without a prepared vCPU (prewarm=0)");
    start_cold.print("    start() call returns (prewarm=0)");
    first_cached.print("(b') start (path, image cache) -> first guest exit");
    first_file.print("(b'') read+parse file, start -> first guest exit");
    start_call.print("    start() call returns (parsed image)");
    halt.print("(c) start (parsed image) -> HALT of hello");
    down.print("(d) teardown: HALT event -> vCPU thread joined");
    floor_down.print("    floor teardown: drop vCPU+VM, munmap");
    stop_call.print("stop() of a spinning guest returns");
    stop_event.print("stop() of a spinning guest -> Stopped event");
    println!(
        "ratio (b)/(a) medians: {:.2}; (b-cold)/(a): {:.2}",
        first.median().as_secs_f64() / floor.median().as_secs_f64(),
        first_cold.median().as_secs_f64() / floor.median().as_secs_f64()
    );

    // RSS one idle 16 MiB guest adds, beyond the guest pages it touched itself.
    const GUESTS: usize = 32;
    let rss_backend = KvmBackend::with_prewarm(0).expect("KvmBackend");
    let before = rss_kib();
    let mut idle_guests = Vec::new();
    for _ in 0..GUESTS {
        let (sink, rx) = timed_sink();
        let inst = rss_backend.start_kvm(spec(&idle), sink).unwrap();
        let _ = rx.recv().unwrap(); // "idle": it is about to POLL
        idle_guests.push((inst, rx));
    }
    std::thread::sleep(Duration::from_millis(200));
    let after = rss_kib();
    let touched: u64 = idle_guests
        .iter()
        .map(|(i, _)| i.guest_resident_bytes() / 1024)
        .sum();
    let per_guest = after.saturating_sub(before) as f64 / GUESTS as f64;
    let touched = touched as f64 / GUESTS as f64;
    println!(
        "RSS per idle 16 MiB guest ({GUESTS} guests sleeping in POLL): {per_guest:.0} KiB, \
         of which {touched:.0} KiB guest pages and {:.0} KiB launcher overhead",
        per_guest - touched
    );
    for (inst, _) in &idle_guests {
        inst.stop().unwrap();
    }
    for (inst, _) in &idle_guests {
        inst.join();
    }
}
