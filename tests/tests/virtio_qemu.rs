//! The virtio-platform images (`unikernels/target/virtio/{hello,http}.virtio`) booted by real
//! QEMU on /dev/kvm with direct kernel boot (PVH): the greeting, the command line, exit statuses
//! through `isa-debug-exit` and through ACPI soft-off, exceptions, and `http` serving curl over
//! a legacy virtio-net NIC on a tap in a network namespace made for the test.

use std::process::Command;
use std::time::Duration;

use summon_launcher::MacAddr;
use summon_tests::netns::NetNs;
use summon_tests::qemu::{self, Machine, Nic, Options, Vm};
use summon_tests::{require, virtio_image};

const END: Duration = Duration::from_secs(60);
const MAC: MacAddr = MacAddr::new([0x52, 0x54, 0x00, 0x5e, 0x00, 0x02]);

fn qemu_ok() -> bool {
    require::check("QEMU with KVM", qemu::available())
}

/// Boots hello with `append`, returns (console, QEMU's exit code).
fn run_hello(machine: Machine, append: &str, debug_exit: bool) -> (String, i32) {
    let mut o = Options::new(machine, append);
    o.debug_exit = debug_exit;
    let mut vm = Vm::start(&virtio_image("hello"), &o, None);
    let status = vm
        .wait_exit(END)
        .unwrap_or_else(|| panic!("hello did not stop; console:\n{}", vm.console()));
    let code = status
        .code()
        .unwrap_or_else(|| panic!("qemu killed by a signal: {status}"));
    (vm.console(), code)
}

#[test]
fn virtio_images_are_built_small_and_carry_the_pvh_note() {
    for name in ["hello", "http"] {
        let path = virtio_image(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            bytes.len() <= 256 << 10,
            "{name}.virtio is {} bytes",
            bytes.len()
        );
        assert_eq!(&bytes[..5], b"\x7fELF\x02", "{name}: not an ELF64");
        // namesz 4, descsz 8, type 18 (XEN_ELFNOTE_PHYS32_ENTRY), "Xen\0".
        let note: Vec<u8> = [4u32, 8, 18]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .chain(*b"Xen\0")
            .collect();
        assert!(
            bytes.windows(note.len()).any(|w| w == note),
            "{name}.virtio has no PVH entry note"
        );
    }
}

/// Address of `symbol` in `image` (from `nm`).
fn symbol(image: &std::path::Path, symbol: &str) -> u64 {
    let out = Command::new("nm").arg(image).output().expect("run nm");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (addr, _, name) = (f.next()?, f.next()?, f.next()?);
            (name == symbol).then(|| u64::from_str_radix(addr, 16).ok())?
        })
        .unwrap_or_else(|| panic!("{symbol} not in {}", image.display()))
}

/// The instructions of `image` in [start, stop), decoded as `machine` code.
fn disassemble(image: &std::path::Path, machine: &str, start: u64, stop: u64) -> Vec<String> {
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn", "-m", machine])
        .arg(format!("--start-address={start:#x}"))
        .arg(format!("--stop-address={stop:#x}"))
        .arg(image)
        .output()
        .expect("run objdump");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("  ") && l.contains(":\t"))
        .map(|l| l.split('\t').nth(1).unwrap_or("").trim().to_string())
        .collect()
}

#[test]
fn virtio_ring0_entry_is_25_straight_line_instructions() {
    if !require::check(
        "objdump and nm",
        require::tool("objdump").and(require::tool("nm")),
    ) {
        return;
    }
    let image = virtio_image("http");
    let (start, mid, end) = (
        symbol(&image, "rt_pvh_start"),
        symbol(&image, "rt_entry64"),
        symbol(&image, "rt_entry_end"),
    );
    // The PVH entry runs as 32-bit code up to the far jump, then as 64-bit code.
    let low = disassemble(&image, "i386", start, mid);
    let high = disassemble(&image, "i386:x86-64", mid, end);
    let all: Vec<&String> = low.iter().chain(&high).collect();
    assert_eq!(all.len(), 25, "ring-0 entry: {all:#?}");
    assert!(
        low.last().is_some_and(|i| i.starts_with("ljmp")),
        "{low:#?}"
    );
    assert!(high.last().is_some_and(|i| i == "iretq"), "{high:#?}");
    let branches = all
        .iter()
        .filter(|i| i.starts_with('j') || i.starts_with("ljmp") || i.starts_with("call"))
        .count();
    assert_eq!(branches, 1, "only the far jump to 64-bit code: {all:#?}");
    assert!(all.iter().all(|i| !i.contains("(bad)")), "{all:#?}");
}

#[test]
fn hello_virtio_on_pc_qboot_prints_its_command_line_and_exits_through_debug_exit() {
    if !qemu_ok() {
        return;
    }
    let (console, code) = run_hello(Machine::PcQboot, "some words here", true);
    assert!(
        console.contains("Hello from Summon's rt on virtio!"),
        "{console}"
    );
    assert!(
        console.contains("command line: \"some words here\""),
        "{console}"
    );
    assert!(console.contains("rt: exit status 0"), "{console}");
    assert_eq!(
        code, 1,
        "isa-debug-exit: status 0 -> 0 * 2 + 1; console:\n{console}"
    );
}

#[test]
fn hello_virtio_powers_off_through_acpi_without_debug_exit() {
    if !qemu_ok() {
        return;
    }
    let (console, code) = run_hello(Machine::PcQboot, "acpi", false);
    assert!(console.contains("rt: exit status 0"), "{console}");
    assert_eq!(
        code, 0,
        "ACPI soft-off makes QEMU exit 0; console:\n{console}"
    );
}

#[test]
fn hello_virtio_boots_on_microvm() {
    if !qemu_ok() {
        return;
    }
    let (console, code) = run_hello(Machine::Microvm, "tiny", true);
    assert!(console.contains("command line: \"tiny\""), "{console}");
    assert_eq!(code, 1, "{console}");
}

#[test]
fn hello_virtio_failures_exit_1_and_255() {
    if !qemu_ok() {
        return;
    }
    let (console, code) = run_hello(Machine::PcQboot, "--bogus", true);
    assert!(
        console.contains("error: --bogus: unknown option"),
        "{console}"
    );
    assert_eq!(code, 3, "status 1 -> 3; console:\n{console}");
    let (console, code) = run_hello(Machine::PcQboot, "--panic", true);
    assert!(
        console.contains("panic: ") && console.contains("asked to panic by --panic"),
        "{console}"
    );
    assert_eq!(
        code, 255,
        "status 255 -> 255 (511 & 0xff); console:\n{console}"
    );
    let (console, code) = run_hello(Machine::Microvm, "--fault=null", true);
    assert!(
        console.contains("rt: fatal exception #PF page fault") && console.contains("address 0x0"),
        "{console}"
    );
    assert_eq!(code, 255, "{console}");
}

#[test]
fn hello_virtio_null_guard_holds_under_seabios_whose_memory_map_is_in_page_0() {
    if !qemu_ok() {
        return;
    }
    // SeaBIOS's PVH option ROM puts the memory map at 0x5a8: rt maps page 0 to read it, then
    // unmaps it and flushes the TLB through its #GP gate. The null read must still fault.
    let (console, code) = run_hello(Machine::PcSeabios, "--fault=null", true);
    assert!(
        console.contains("rt: fatal exception #PF page fault"),
        "{console}"
    );
    assert_eq!(code, 255, "{console}");
}

/// A namespace with tap0 (10.0.0.1/24) and http.virtio at 10.0.0.2 under QEMU.
fn start_http(tag: &str, machine: Machine, extra: &str) -> (NetNs, Vm) {
    let ns = NetNs::new(tag);
    ns.add_tap("tap0", "10.0.0.1/24");
    ns.add_neighbour("tap0", "10.0.0.2", MAC);
    let mut o = Options::new(
        machine,
        &format!("--ipv4=10.0.0.2/24 --ipv4-gateway=10.0.0.1 {extra}"),
    );
    o.nic = Some((Nic::Tap("tap0".into()), MAC));
    let vm = Vm::start(&virtio_image("http"), &o, Some(&ns));
    if vm.wait_line("listening on", END).is_none() {
        panic!("http.virtio never listened; console:\n{}", vm.console());
    }
    (ns, vm)
}

#[test]
fn http_virtio_serves_curl_over_virtio_net_on_a_tap() {
    if !qemu_ok()
        || !require::kvm_and_netns("network namespaces")
        || !require::check("curl", require::tool("curl"))
    {
        return;
    }
    let (ns, vm) = start_http(
        "vq-curl",
        Machine::PcQboot,
        "--name=virtio-curled --port=8080",
    );
    let out = ns
        .command("curl")
        .args(["-sS", "-m", "10", "--fail"])
        .args([
            "http://10.0.0.2:8080/",
            "http://10.0.0.2:8080/healthz",
            "http://10.0.0.2:8080/count",
        ])
        .output()
        .expect("run curl");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl: {}; console:\n{}",
        String::from_utf8_lossy(&out.stderr),
        vm.console()
    );
    assert!(body.contains("<h1>virtio-curled</h1>"), "{body}");
    assert!(
        body.ends_with("ok\n3\n") || body.ends_with("ok3\n") || body.ends_with("3\n"),
        "{body}"
    );
    // A 64 KiB-ish burst: 200 keep-alive requests over one connection, all answered in order.
    let out = ns
        .command("curl")
        .args([
            "-sS",
            "-m",
            "30",
            "--fail",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}\n",
        ])
        .args(std::iter::repeat_n("http://10.0.0.2:8080/healthz", 200))
        .output()
        .expect("run curl");
    let codes = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        codes.lines().filter(|l| *l == "200").count(),
        200,
        "{codes}"
    );
    let count = ns
        .command("curl")
        .args(["-sS", "-m", "10", "http://10.0.0.2:8080/count"])
        .output()
        .expect("run curl");
    assert_eq!(String::from_utf8_lossy(&count.stdout).trim(), "204");
}

#[test]
fn idle_http_virtio_uses_little_host_cpu() {
    if !qemu_ok() || !require::kvm_and_netns("network namespaces") {
        return;
    }
    let (_ns, vm) = start_http("vq-idle", Machine::PcQboot, "");
    std::thread::sleep(Duration::from_millis(500));
    let cpu = |pid: u32| -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("qemu stat");
        let after_comm = &stat[stat.rfind(')').expect("stat comm") + 2..];
        let f: Vec<&str> = after_comm.split_whitespace().collect();
        let ticks: u64 =
            f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
        // SAFETY: sysconf has no preconditions.
        ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
    };
    let before = cpu(vm.pid());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu(vm.pid()) - before;
    eprintln!("idle http.virtio: QEMU used {used:.3} s of CPU in 2 s");
    // Halting until the virtio interrupt or smoltcp's timer: ~0 s. Halting in 1 ms slices (the
    // fallback without a routable interrupt) used 0.13 s; spinning would use ~2 s.
    assert!(used < 0.1, "QEMU used {used:.3} s of CPU in 2 s while idle");
}

/// Boots http.virtio without a network namespace; returns (console, QEMU's exit code).
fn run_http_expecting_exit(append: &str, extra_device: Option<&str>) -> (String, i32) {
    let mut o = Options::new(Machine::PcQboot, append);
    o.extra = extra_device
        .map(|d| {
            vec![
                "-netdev".into(),
                "user,id=n0".into(),
                "-device".into(),
                d.into(),
            ]
        })
        .unwrap_or_default();
    let mut vm = Vm::start(&virtio_image("http"), &o, None);
    let status = vm
        .wait_exit(END)
        .unwrap_or_else(|| panic!("http did not stop; console:\n{}", vm.console()));
    (vm.console(), status.code().expect("qemu exit code"))
}

#[test]
fn http_virtio_refuses_bad_arguments_a_missing_nic_and_a_modern_only_nic() {
    if !qemu_ok() {
        return;
    }
    let (console, code) = run_http_expecting_exit("--ipv4=10.0.0.300/24", None);
    assert!(
        console.contains("error: --ipv4: not an IPv4 address (a.b.c.d)"),
        "{console}"
    );
    assert_eq!(code, 3, "status 1; console:\n{console}");
    let (console, code) = run_http_expecting_exit("--ipv4=10.0.0.2/24", None);
    assert!(
        console.contains("no virtio-net PCI device (1af4:1000) found"),
        "{console}"
    );
    assert_eq!(code, 3, "{console}");
    let (console, code) = run_http_expecting_exit(
        "--ipv4=10.0.0.2/24",
        Some("virtio-net-pci,netdev=n0,disable-legacy=on,disable-modern=off"),
    );
    assert!(
        console.contains("no virtio-net PCI device") || console.contains("no legacy I/O BAR"),
        "a modern-only device (1af4:1041) is not ours: {console}"
    );
    assert_eq!(code, 3, "{console}");
}
