//! The libvirt backend against a real libvirtd (`qemu:///system`, started by scripts/setup-host):
//! a transient domain boots a tiny PVH guest through qboot, an existing domain is started,
//! suspended, resumed and destroyed, and a libvirtd restart is survived. Nothing is left behind.
//!
//! Fails under CI=true when libvirtd is not reachable; skips with a reason otherwise.

use summon_test_support::pvh_ticker;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use summon_launcher::libvirt::{
    DomainSource, Generated, GuestKind, LibvirtBackend, LibvirtConfig, StopMode,
};
use summon_launcher::{
    Backend, EventSink, InstanceEvent, InstanceSpec, InstanceState, NetSpec, TapSource,
};
use virt::connect::Connect;

const URI: &str = "qemu:///system";
const GREETING: &str = "summon-libvirt-guest: hello from PVH";

/// The tests share one libvirtd (and one restarts it): run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn libvirtd() -> Option<Connect> {
    match Connect::open(Some(URI)) {
        Ok(c) => Some(c),
        Err(e) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("libvirtd is not reachable at {URI}: {e} (run scripts/setup-host)");
            }
            eprintln!("skipping: libvirtd not reachable at {URI}: {e}");
            None
        }
    }
}

/// A world-readable scratch directory: QEMU runs as libvirt-qemu and must read the kernel.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("summon-lv-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        chmod(&dir, 0o755);
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Assembles tests/libvirt_guest/pvh-ticker.S into a PVH ELF in `dir`.
fn build_guest(dir: &Path) -> PathBuf {
    pvh_ticker::build(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/libvirt_guest"),
        dir,
    )
}

fn channel_sink() -> (EventSink, Receiver<InstanceEvent>) {
    let (tx, rx) = channel();
    let tx = Mutex::new(tx);
    (
        Arc::new(move |e| {
            let _ = tx.lock().unwrap().send(e);
        }),
        rx,
    )
}

/// Console lines until `want` shows up (or the timeout passes).
fn console_until(rx: &Receiver<InstanceEvent>, want: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut lines = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(InstanceEvent::Console(l)) => {
                let done = l.contains(want);
                lines.push(l);
                if done {
                    return lines;
                }
            }
            Ok(other) => lines.push(format!("<{other:?}>")),
            Err(_) => break,
        }
    }
    panic!("no console line containing {want:?} within {timeout:?}; saw {lines:?}");
}

fn drain_console(rx: &Receiver<InstanceEvent>) -> Vec<String> {
    rx.try_iter()
        .filter_map(|e| match e {
            InstanceEvent::Console(l) => Some(l),
            _ => None,
        })
        .collect()
}

fn generated_backend(console_dir: &Path) -> LibvirtBackend {
    let mut gen = Generated::new(GuestKind::Kvm);
    gen.console_dir = console_dir.to_path_buf();
    LibvirtBackend::new(LibvirtConfig {
        uri: URI.into(),
        domain: DomainSource::Generated(gen),
        stop: StopMode::Destroy,
    })
    .expect("connect to libvirtd")
}

fn spec(name: &str, image: &Path) -> InstanceSpec {
    InstanceSpec {
        name: name.into(),
        image: image.to_path_buf(),
        memory_mib: 16,
        nets: Vec::new(),
        blocks: Vec::new(),
        args: vec!["--from=summon-test".into()],
        limits: Default::default(),
    }
}

fn domain_names(c: &Connect) -> Vec<String> {
    // VIR_CONNECT_LIST_DOMAINS_ACTIVE | INACTIVE
    c.list_all_domains(1 | 2)
        .unwrap()
        .iter()
        .map(|d| d.name().unwrap())
        .collect()
}

fn assert_no_leftovers(c: &Connect, prefix: &str) {
    let left: Vec<_> = domain_names(c)
        .into_iter()
        .filter(|n| n.contains(prefix))
        .collect();
    assert!(left.is_empty(), "domains left behind: {left:?}");
}

/// Removes a persistent tap on drop.
struct TapGuard(String);

impl TapGuard {
    fn new(name: &str) -> TapGuard {
        let _ = Command::new("ip").args(["link", "del", name]).output();
        let ok = Command::new("ip")
            .args(["tuntap", "add", "dev", name, "mode", "tap"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "creating tap {name}");
        TapGuard(name.into())
    }
}

impl Drop for TapGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

#[test]
fn transient_domain_boots_pvh_guest_suspends_resumes_and_goes() {
    let _g = serial();
    let Some(host) = libvirtd() else { return };
    let scratch = Scratch::new("transient");
    let image = build_guest(&scratch.0);
    let tap = TapGuard::new("smv-lvtest0");
    let backend = generated_backend(&scratch.0);
    let mut s = spec("lvtest-transient", &image);
    s.nets.push(NetSpec {
        name: "service".into(),
        tap: TapSource::Name(tap.0.clone()),
        mac: Some([0x02, 0x53, 0x4d, 0, 0, 0x31].into()),
    });
    let (sink, rx) = channel_sink();
    let inst = backend.start(s, sink).expect("transient domain starts");
    let first = console_until(&rx, "tick c", Duration::from_secs(30));
    assert_eq!(first[0], GREETING, "{first:?}");

    // The NIC is the daemon's tap, handed to QEMU as is.
    let d = host
        .lookup_domain_by_name("summon-lvtest-transient")
        .unwrap();
    assert!(!d.is_persistent().unwrap());
    let xml = d.xml_desc(0).unwrap();
    assert!(
        xml.contains("smv-lvtest0") && xml.contains("02:53:4d:00:00:31"),
        "{xml}"
    );
    assert!(xml.contains("qboot.rom"), "{xml}");

    inst.suspend().unwrap();
    assert_eq!(inst.state(), InstanceState::Paused);
    std::thread::sleep(Duration::from_millis(300));
    let _ = drain_console(&rx);
    std::thread::sleep(Duration::from_millis(700));
    let while_paused = drain_console(&rx);
    assert!(
        while_paused.is_empty(),
        "a paused guest printed {while_paused:?}"
    );

    inst.resume().unwrap();
    assert_eq!(inst.state(), InstanceState::Running);
    let after = console_until(&rx, "tick", Duration::from_secs(10));
    assert!(
        !after.iter().any(|l| l == GREETING),
        "resume re-booted the guest: {after:?}"
    );

    inst.stop().unwrap();
    assert_eq!(inst.state(), InstanceState::Stopped);
    assert!(rx.try_iter().any(|e| e == InstanceEvent::Stopped));
    assert_no_leftovers(&host, "lvtest");
}

#[test]
fn existing_domain_started_suspended_resumed_destroyed() {
    let _g = serial();
    let Some(host) = libvirtd() else { return };
    let scratch = Scratch::new("existing");
    let image = build_guest(&scratch.0);
    let name = "lvtest-existing";
    if let Ok(old) = host.lookup_domain_by_name(name) {
        let _ = old.destroy();
        let _ = old.undefine();
    }
    // An operator's domain: defined beforehand, persistent, its own serial log.
    let log = scratch.0.join("existing.log");
    let mut xml = summon_launcher::libvirt::DomainXml {
        kind: GuestKind::Kvm,
        name: name.into(),
        memory_mib: 16,
        vcpus: 1,
        kernel: image.clone(),
        cmdline: String::new(),
        firmware: Some(summon_launcher::libvirt::QBOOT.into()),
        console_log: Some(log.clone()),
        nic: None,
    }
    .render();
    xml = xml.replace(
        "</devices>",
        "  <interface type='user'><mac address='52:54:00:5e:00:01'/><model type='virtio'/></interface>\n  </devices>",
    );
    let dom = host.define_domain_xml(&xml).expect("define");
    struct Undefine(virt::domain::Domain);
    impl Drop for Undefine {
        fn drop(&mut self) {
            let _ = self.0.destroy();
            let _ = self.0.undefine();
        }
    }
    let dom = Undefine(dom);

    let backend = LibvirtBackend::new(LibvirtConfig {
        uri: URI.into(),
        domain: DomainSource::Existing(name.into()),
        stop: StopMode::Destroy,
    })
    .unwrap();
    let info = backend.inspect(name).unwrap();
    assert_eq!(info.macs, vec![[0x52, 0x54, 0, 0x5e, 0, 1]]);
    assert_eq!(info.state, InstanceState::Stopped);
    assert_eq!(info.console_log.as_deref(), Some(log.as_path()));

    let (sink, rx) = channel_sink();
    let inst = backend.start(spec(name, &image), sink).unwrap();
    assert!(dom.0.is_active().unwrap());
    console_until(&rx, "tick b", Duration::from_secs(30));
    inst.suspend().unwrap();
    assert_eq!(backend.inspect(name).unwrap().state, InstanceState::Paused);

    // Summoning a paused existing domain resumes it (same run, no re-boot).
    let id = host.lookup_domain_by_name(name).unwrap().id();
    let (sink2, rx2) = channel_sink();
    let again = backend.start(spec(name, &image), sink2).unwrap();
    assert_eq!(again.state(), InstanceState::Running);
    assert_eq!(host.lookup_domain_by_name(name).unwrap().id(), id);
    let lines = console_until(&rx2, "tick", Duration::from_secs(10));
    assert!(!lines.iter().any(|l| l == GREETING), "{lines:?}");
    drop(again);

    inst.stop().unwrap();
    assert!(!dom.0.is_active().unwrap(), "destroyed");
    assert!(
        dom.0.is_persistent().unwrap(),
        "an existing domain stays defined"
    );
    drop(dom);
    assert_no_leftovers(&host, "lvtest");
}

/// Sends SIGTERM to libvirtd, waits for it to exit, starts it again and waits for its socket.
fn restart_libvirtd() {
    let pid: i32 = std::fs::read_to_string("/run/libvirtd.pid")
        .expect("libvirtd pid file")
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill(2) with a pid read from libvirtd's own pid file and a plain signal.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    // SAFETY: signal 0 only checks that the process exists.
    while unsafe { libc::kill(pid, 0) } == 0 {
        assert!(Instant::now() < deadline, "libvirtd did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(Command::new("libvirtd")
        .arg("--daemon")
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while Connect::open(Some(URI)).is_err() {
        assert!(Instant::now() < deadline, "libvirtd did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn libvirtd_restart_is_survived() {
    let _g = serial();
    let Some(host) = libvirtd() else { return };
    drop(host);
    let scratch = Scratch::new("restart");
    let image = build_guest(&scratch.0);
    let backend = generated_backend(&scratch.0);
    let (sink, rx) = channel_sink();
    let inst = backend.start(spec("lvtest-restart", &image), sink).unwrap();
    console_until(&rx, "tick a", Duration::from_secs(30));

    restart_libvirtd();

    // The old connection is dead; the instance reconnects and finds its domain again.
    inst.suspend().expect("suspend after libvirtd restart");
    assert_eq!(inst.state(), InstanceState::Paused);
    inst.resume().unwrap();
    console_until(&rx, "tick", Duration::from_secs(10));
    inst.stop().unwrap();
    let host = Connect::open(Some(URI)).unwrap();
    assert_no_leftovers(&host, "lvtest");
}

#[test]
fn missing_kernel_reports_libvirts_message() {
    let _g = serial();
    let Some(host) = libvirtd() else { return };
    let scratch = Scratch::new("missing");
    let backend = generated_backend(&scratch.0);
    let (sink, _rx) = channel_sink();
    let err = backend
        .start(
            spec("lvtest-missing", &scratch.0.join("no-such.virtio")),
            sink,
        )
        .err()
        .expect("a missing kernel fails")
        .to_string();
    assert!(
        err.contains("create domain") && err.contains("no-such.virtio"),
        "{err}"
    );
    assert_no_leftovers(&host, "lvtest");
}
