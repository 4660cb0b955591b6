//! summond with a `backend = "libvirt"` service on the real libvirtd (`qemu:///system`): a DNS
//! query starts an operator's existing (pre-defined) domain, idle reaping suspends it, the next
//! query resumes the same run, and a destroy-mode service is shut off when idle. The guest is
//! the PVH test kernel of launcher/tests/libvirt_guest (it has no NIC, so no HTTP here: the
//! HTTP end to end waits for http.virtio). Fails under CI=true when libvirtd is unreachable.

use summon_test_support::pvh_ticker;
use summon_tests::daemon as daemon_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use daemon_support::*;
use hickory_proto::rr::RecordType;

const URI: &str = "qemu:///system";

fn virsh(args: &[&str]) -> (bool, String) {
    let out = Command::new("virsh")
        .args(["-c", URI])
        .args(args)
        .output()
        .expect("virsh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string()
            + &String::from_utf8_lossy(&out.stderr),
    )
}

fn libvirtd_ok() -> bool {
    let ok = virsh(&["version"]).0;
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("libvirtd is not reachable at {URI} (run scripts/setup-host)");
        }
        eprintln!("skipping: libvirtd not reachable at {URI}");
    }
    ok
}

fn domstate(name: &str) -> String {
    virsh(&["domstate", name])
        .1
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// The PVH test kernel, world-readable (QEMU runs as libvirt-qemu).
fn build_guest(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../launcher/tests/libvirt_guest");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    pvh_ticker::build(&src, dir)
}

/// A persistent domain, undefined (and destroyed) on drop.
struct Defined {
    name: String,
    dir: PathBuf,
}

impl Defined {
    fn new(name: &str) -> Defined {
        let dir = std::env::temp_dir().join(format!("summon-e2e-{name}"));
        let kernel = build_guest(&dir);
        let _ = virsh(&["destroy", name]);
        let _ = virsh(&["undefine", name]);
        let xml = format!(
            "<domain type='kvm'><name>{name}</name><memory unit='MiB'>16</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='pc'>hvm</type>\
             <loader type='rom'>/usr/share/qemu/qboot.rom</loader><kernel>{}</kernel></os>\
             <cpu mode='host-passthrough'><feature policy='disable' name='arch-capabilities'/></cpu>\
             <devices><controller type='usb' model='none'/>\
             <serial type='file'><source path='{}'/><target port='0'/></serial>\
             <memballoon model='none'/></devices></domain>",
            kernel.display(),
            dir.join("console.log").display()
        );
        let file = dir.join("domain.xml");
        std::fs::write(&file, xml).unwrap();
        let (ok, out) = virsh(&["define", file.to_str().unwrap()]);
        assert!(ok, "define: {out}");
        Defined {
            name: name.into(),
            dir,
        }
    }

    fn id(&self) -> String {
        virsh(&["domid", &self.name])
            .1
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    }
}

impl Drop for Defined {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.name]);
        let _ = virsh(&["undefine", &self.name]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn service(name: &str, domain: &str, ip: &str, stop: &str) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nbackend = \"libvirt\"\nip = \"{ip}\"\nidle_timeout = \"2s\"\nstop = \"{stop}\"\nlibvirt = {{ uri = \"{URI}\", domain = \"{domain}\", probe_port = 80 }}\n"
    )
}

#[test]
fn existing_domain_summoned_by_dns_suspended_when_idle_and_resumed() {
    if !prerequisites("daemon libvirt test") || !libvirtd_ok() {
        return;
    }
    let dom = Defined::new("lvtest-e2e-suspend");
    assert_eq!(domstate(&dom.name), "shut off");
    let d = Daemon::start(
        "lv-susp",
        &config(
            1,
            &[],
            "",
            &service("legacy", &dom.name, "10.77.0.40", "suspend"),
        ),
    );
    let a = a_records(&d.query("legacy.svc.test.", RecordType::A));
    assert_eq!(a.len(), 1, "{}", d.log());
    assert_eq!(a[0].0.to_string(), "10.77.0.40");
    assert!(
        wait_until(Duration::from_secs(20), || domstate(&dom.name) == "running"),
        "not running: {} / {}",
        domstate(&dom.name),
        d.log()
    );
    let id = dom.id();
    // No queries, no traffic: suspended within idle_timeout (2 s) + 2 × TTL + slack.
    assert!(
        wait_until(Duration::from_secs(10), || domstate(&dom.name) == "paused"),
        "not suspended: {} / {}",
        domstate(&dom.name),
        d.log()
    );
    // The next query resumes the same run (same domain id, no re-boot).
    assert_eq!(
        a_records(&d.query("legacy.svc.test.", RecordType::A)).len(),
        1
    );
    assert!(
        wait_until(Duration::from_secs(10), || domstate(&dom.name) == "running"),
        "not resumed: {}",
        domstate(&dom.name)
    );
    assert_eq!(dom.id(), id, "resumed domain changed id: it was restarted");
    drop(d);
}

#[test]
fn existing_domain_destroyed_when_idle() {
    if !prerequisites("daemon libvirt test") || !libvirtd_ok() {
        return;
    }
    let dom = Defined::new("lvtest-e2e-destroy");
    let d = Daemon::start(
        "lv-dest",
        &config(
            1,
            &[],
            "",
            &service("old", &dom.name, "10.77.0.41", "destroy"),
        ),
    );
    assert_eq!(a_records(&d.query("old.svc.test.", RecordType::A)).len(), 1);
    assert!(
        wait_until(Duration::from_secs(20), || domstate(&dom.name) == "running"),
        "not running: {}",
        d.log()
    );
    assert!(
        wait_until(Duration::from_secs(10), || domstate(&dom.name)
            == "shut off"),
        "not destroyed when idle: {} / {}",
        domstate(&dom.name),
        d.log()
    );
    let (_, list) = virsh(&["list", "--all", "--name"]);
    assert!(list.contains(&dom.name), "an existing domain stays defined");
    drop(d);
}

#[test]
fn libvirt_service_added_by_sighup_is_summoned() {
    if !prerequisites("daemon libvirt test") || !libvirtd_ok() {
        return;
    }
    let first = Defined::new("lvtest-e2e-reload-a");
    let second = Defined::new("lvtest-e2e-reload-b");
    let one = service("alpha", &first.name, "10.77.0.42", "destroy");
    let mut d = Daemon::start("lv-hup", &config(1, &[], "", &one));
    let two = format!(
        "{one}\n{}",
        service("beta", &second.name, "10.77.0.43", "destroy")
    );
    d.reload(&config(1, &[], "", &two));
    assert_eq!(
        a_records(&d.query("beta.svc.test.", RecordType::A)).len(),
        1,
        "{}",
        d.log()
    );
    assert!(
        wait_until(Duration::from_secs(20), || domstate(&second.name)
            == "running"),
        "added service not summoned: {} / {}",
        domstate(&second.name),
        d.log()
    );
    assert_eq!(
        domstate(&first.name),
        "shut off",
        "the other service was left alone"
    );
    drop(d);
}
