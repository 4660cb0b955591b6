//! Boot benchmark of the virtio-platform images under QEMU (`cargo bench -p summon-tests --bench
//! virtio_boot`), per machine/firmware: microvm (its qboot-based firmware), pc + Debian's qboot,
//! pc + SeaBIOS (QEMU's default).
//!
//! - `hello`: QEMU spawned -> the greeting on COM1, and -> QEMU exited (isa-debug-exit).
//! - `http` (pc machines; microvm has no PCI for virtio-net-pci): the tap is held open for the
//!   whole run (a tap whose carrier just came up drops packets until the kernel's link watcher
//!   activates its queue) and handed to each QEMU as a file descriptor, as libvirt does. Per
//!   run: drain the tap, spawn QEMU, and as soon as the `listening` line appears on COM1 a
//!   client connects and sends `GET /healthz`. Measured from the spawn: the line, the first
//!   byte. (A client that connects *before* QEMU starts loses its first SYN about half the
//!   time: QEMU drops frames it took from the tap before the guest's driver was up, see
//!   docs/unikernels.md, so its first byte comes after TCP's 1 s retransmission. That is what
//!   the daemon's SYN hold is for.)
//!
//! Runs: SUMMON_BENCH_RUNS (default 20; SeaBIOS, which takes seconds, a quarter of that).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use summon_launcher::{tap, MacAddr};
use summon_tests::netns::NetNs;
use summon_tests::qemu::{self, Machine, Nic, Options, Vm};
use summon_tests::{require, virtio_image};

const MAC: MacAddr = MacAddr::new([0x52, 0x54, 0x00, 0x5e, 0x00, 0x02]);
const END: Duration = Duration::from_secs(60);

fn main() {
    if !require::check("QEMU with KVM", qemu::available())
        || !require::kvm_and_netns("network namespaces")
    {
        return;
    }
    let runs: usize = std::env::var("SUMMON_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
        .max(1);
    println!(
        "virtio_boot: images in {}",
        summon_tests::virtio_image_dir().display()
    );
    for machine in Machine::ALL {
        let n = if machine == Machine::PcSeabios {
            (runs / 4).max(1)
        } else {
            runs
        };
        let (mut greet, mut exit) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let mut vm = Vm::start(
                &virtio_image("hello"),
                &Options::new(machine, "bench"),
                None,
            );
            let g = vm.wait_line("Hello from", END).expect("hello greets");
            vm.wait_exit(END).expect("hello exits");
            greet.push(g - vm.started);
            exit.push(vm.started.elapsed());
        }
        report(
            &format!("{:<11} hello: spawn -> greeting", machine.name()),
            &mut greet,
        );
        report(
            &format!("{:<11} hello: spawn -> QEMU exited", machine.name()),
            &mut exit,
        );
    }
    let ns = NetNs::new("vq-bench");
    ns.add_tap("tap0", "10.0.0.1/24");
    ns.add_neighbour("tap0", "10.0.0.2", MAC);
    let fd = ns.run(|| tap::open("tap0", tap::Blocking::No).expect("open tap0"));
    std::thread::sleep(Duration::from_secs(1));
    for machine in [Machine::PcQboot, Machine::PcSeabios] {
        let n = if machine == Machine::PcSeabios {
            (runs / 4).max(1)
        } else {
            runs
        };
        let (mut listen, mut first) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let (l, f) = http_run(&ns, fd.as_raw_fd(), machine);
            listen.push(l);
            first.push(f);
        }
        report(
            &format!("{:<11} http: spawn -> listening line", machine.name()),
            &mut listen,
        );
        report(
            &format!("{:<11} http: spawn -> first HTTP byte", machine.name()),
            &mut first,
        );
    }
}

/// One cold start of http.virtio with a client already waiting; (listening, first byte).
fn http_run(ns: &NetNs, fd: RawFd, machine: Machine) -> (Duration, Duration) {
    drain(fd);
    let mut o = Options::new(machine, "--ipv4=10.0.0.2/24 --ipv4-gateway=10.0.0.1");
    o.nic = Some((Nic::Fd(fd), MAC));
    let vm = Vm::start(&virtio_image("http"), &o, None);
    let listening = vm
        .wait_line("listening on", END)
        .unwrap_or_else(|| panic!("http.virtio never listened; console:\n{}", vm.console()));
    let byte = ns.run(|| {
        let addr: SocketAddr = "10.0.0.2:80".parse().expect("literal");
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(30)).expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n")
            .expect("send");
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte).expect("first byte");
        Instant::now()
    });
    let started = vm.started;
    drop(vm);
    (listening - started, byte.saturating_duration_since(started))
}

/// Reads and drops whatever the previous run left in the tap (its FIN retransmissions...).
fn drain(fd: RawFd) {
    let mut buf = [0u8; 2048];
    // SAFETY: reading into a buffer we own from a non-blocking tap fd we hold open.
    while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{what:<48} runs {:>3}  median {:>8.2} ms  p99 {:>8.2} ms  min {:>8.2} ms  max {:>8.2} ms",
        samples.len(),
        ms(pick(0.5)),
        ms(pick(0.99)),
        ms(samples[0]),
        ms(samples[samples.len() - 1]),
    );
}
