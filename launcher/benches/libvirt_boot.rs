//! Cold boot through libvirt/qemu on `qemu:///system`, beside the embedded KVM launcher in the
//! same run. Prints median and p99 (ms) per variant:
//!
//! - `create`: `LibvirtBackend::start` (virDomainCreateXML) returning;
//! - `first byte`: start → the guest's first serial line in the console log (polled every 0.2 ms);
//! - firmware: `pc` + qboot (what the backend generates), `pc` + SeaBIOS (libvirt's default),
//!   `microvm` (no PCI: no virtio-pci NIC possible, shown for reference);
//! - NIC: none, the daemon's tap (`managed='no'`), a tap libvirt creates itself;
//! - the embedded launcher: start → first console line of the hvt `hello` test guest.
//!
//! Guest: launcher/tests/libvirt_guest/pvh-ticker.S (32-bit PVH entry, prints on COM1).
//! Run: `cargo bench -p summon-launcher --bench libvirt_boot` (needs libvirtd: scripts/setup-host).
//! Runs per variant: SUMMON_BENCH_RUNS (default 30; SeaBIOS gets a fifth of them, at least 3).

use summon_test_support::pvh_ticker;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use summon_launcher::kvm::KvmBackend;
use summon_launcher::libvirt::{
    Conn, DomainSource, Generated, GuestKind, LibvirtBackend, LibvirtConfig, NicXml, StopMode,
};
use summon_launcher::{Backend, InstanceEvent, InstanceSpec, NetSpec, TapSource};
use summon_test_support::stats::{ms, pct};

const URI: &str = "qemu:///system";

fn main() {
    let runs: usize = std::env::var("SUMMON_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let dir = std::env::temp_dir().join(format!("summon-lvbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    chmod(&dir, 0o755);
    let kernel = build_pvh(&dir);
    let tap = "smv-lvbench";
    let _ = Command::new("ip").args(["link", "del", tap]).output();
    run(&["ip", "tuntap", "add", "dev", tap, "mode", "tap"]);

    println!("libvirt cold boot, {runs} runs per variant (SeaBIOS: fewer), times in ms");
    println!(
        "{:<44} {:>9} {:>9} {:>12} {:>12}",
        "variant", "create p50", "p99", "1st byte p50", "p99"
    );
    let variants: [(&str, Variant, usize); 5] = [
        ("pc + qboot, no NIC", Variant::Qboot(Nic::None), runs),
        (
            "pc + qboot, daemon tap (managed='no')",
            Variant::Qboot(Nic::DaemonTap(tap)),
            runs,
        ),
        (
            "pc + qboot, libvirt-created tap",
            Variant::Qboot(Nic::LibvirtTap),
            runs,
        ),
        ("microvm, no NIC", Variant::Microvm, runs),
        ("pc + SeaBIOS, no NIC", Variant::SeaBios, (runs / 5).max(3)),
    ];
    for (label, v, n) in variants {
        let mut create = Vec::new();
        let mut first = Vec::new();
        for i in 0..n {
            let (c, f) = boot_once(&dir, &kernel, &v, i);
            create.push(c);
            first.push(f);
        }
        println!(
            "{label:<44} {:>9.1} {:>9.1} {:>12.1} {:>12.1}",
            pct(&mut create, 50),
            pct(&mut create, 99),
            pct(&mut first, 50),
            pct(&mut first, 99)
        );
    }
    let mut kvm = embedded(runs.max(30));
    println!(
        "{:<44} {:>9} {:>9} {:>12.2} {:>12.2}",
        "embedded KVM launcher, hvt hello",
        "-",
        "-",
        pct(&mut kvm, 50),
        pct(&mut kvm, 99)
    );
    let _ = Command::new("ip").args(["link", "del", tap]).output();
    let _ = std::fs::remove_dir_all(&dir);
}

enum Nic {
    None,
    DaemonTap(&'static str),
    LibvirtTap,
}

enum Variant {
    Qboot(Nic),
    Microvm,
    SeaBios,
}

fn boot_once(dir: &Path, kernel: &Path, v: &Variant, i: usize) -> (f64, f64) {
    let name = format!("lvbench-{i}");
    let log = dir.join(format!("summon-{name}.console.log"));
    let _ = std::fs::remove_file(&log);
    let mut gen = Generated::new(GuestKind::Kvm);
    gen.console_dir = dir.to_path_buf();
    if !matches!(v, Variant::Qboot(_)) {
        gen.firmware = None;
    }
    let backend = backend(gen.clone());
    let mut spec = spec(&name, kernel);
    if let Variant::Qboot(Nic::DaemonTap(tap)) = v {
        spec.nets.push(NetSpec {
            name: "service".into(),
            tap: TapSource::Name(tap.to_string()),
            mac: None,
        });
    }
    if matches!(
        v,
        Variant::Qboot(Nic::None) | Variant::Qboot(Nic::DaemonTap(_))
    ) {
        // What the backend generates, through the backend.
        let t0 = Instant::now();
        let inst = backend.start(spec, Arc::new(|_| {})).expect("start");
        let created = t0.elapsed();
        let first = wait_line(&log, t0);
        inst.stop().expect("destroy");
        return (ms(created), ms(first));
    }
    let mut doc = backend.render(&gen, &spec).unwrap();
    if let Variant::Qboot(Nic::LibvirtTap) = v {
        doc.nic = Some(NicXml {
            mac: [2, 0x53, 0x4d, 0, 0, 9].into(),
            tap: "LIBVIRT".into(),
        });
    }
    let mut xml = doc.render();
    // libvirt creates (and deletes) the tap itself when no unmanaged target is named.
    xml = xml.replace("<target dev='LIBVIRT' managed='no'/>", "");
    if let Variant::Microvm = v {
        xml = xml.replace("machine='pc'", "machine='microvm'");
    }
    raw_create(backend.conn(), &xml, &log)
}

/// Creates a transient domain from XML directly (variants the backend does not generate).
fn raw_create(conn: &Conn, xml: &str, log: &Path) -> (f64, f64) {
    let t0 = Instant::now();
    let uuid = conn
        .call("create", |c| c.create_domain_xml(xml, 0)?.uuid_string())
        .expect("create");
    let created = t0.elapsed();
    let first = wait_line(log, t0);
    conn.with_domain(&uuid, "destroy", |d| d.destroy()).unwrap();
    (ms(created), ms(first))
}

fn backend(gen: Generated) -> LibvirtBackend {
    LibvirtBackend::new(LibvirtConfig {
        uri: URI.into(),
        domain: DomainSource::Generated(gen),
        stop: StopMode::Destroy,
    })
    .expect("libvirtd reachable (scripts/setup-host)")
}

fn spec(name: &str, kernel: &Path) -> InstanceSpec {
    InstanceSpec {
        name: name.into(),
        image: kernel.to_path_buf(),
        memory_mib: 16,
        nets: Vec::new(),
        blocks: Vec::new(),
        args: Vec::new(),
        limits: Default::default(),
    }
}

fn wait_line(log: &Path, t0: Instant) -> Duration {
    let deadline = t0 + Duration::from_secs(30);
    loop {
        if std::fs::read(log).is_ok_and(|b| b.contains(&b'\n')) {
            return t0.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "no console output in {}",
            log.display()
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Start → first console line of the embedded launcher's hvt hello guest.
fn embedded(n: usize) -> Vec<f64> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests");
    let out = std::env::temp_dir().join(format!("summon-lvbench-hello-{}.hvt", std::process::id()));
    let ok = Command::new("gcc")
        .args(["-nostdlib", "-static", "-no-pie", "-Wl,--build-id=none"])
        .arg(format!("-Wl,-T,{}", src.join("guest.ld").display()))
        .arg("-I")
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .arg(src.join("hello.S"))
        .status()
        .unwrap()
        .success();
    assert!(ok, "building the hvt hello guest");
    let kvm = KvmBackend::new().expect("KVM");
    let mut times = Vec::new();
    for _ in 0..n {
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        let t0 = Instant::now();
        let _inst = kvm
            .start(
                spec("hello", &out),
                Arc::new(move |e| {
                    if matches!(e, InstanceEvent::Console(_)) {
                        let _ = tx.lock().unwrap().send(Instant::now());
                    }
                }),
            )
            .expect("kvm start");
        let t = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("hello prints");
        times.push(ms(t - t0));
    }
    let _ = std::fs::remove_file(&out);
    times
}

fn build_pvh(dir: &Path) -> PathBuf {
    pvh_ticker::build(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/libvirt_guest"),
        dir,
    )
}

fn run(args: &[&str]) {
    let ok = Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap()
        .success();
    assert!(ok, "{args:?} failed");
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}
