//! An operator's existing libvirt domain running `http.virtio`, its NIC on the operator's own
//! tap (not summond's), summoned by DNS: the GET right after the answer is held until the guest
//! answers and served from its first SYN; when idle the domain is suspended (stop = "suspend"),
//! and the next query resumes the same run: the guest's request counter keeps counting.
//!
//! summond runs in the root network namespace, as in daemon_libvirt_http.rs (libvirtd's QEMU
//! lives there); own subnet 10.213.220.0/24, own tap name, everything removed afterwards.

use summon_tests::daemon as daemon_support;
use summon_tests::libvirt as libvirt_support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use daemon_support::{a_records, query_udp, wait_until};
use hickory_proto::rr::RecordType;
use libvirt_support::*;

const IP: Ipv4Addr = Ipv4Addr::new(10, 213, 220, 2);
const DOMAIN: &str = "lvtest-operator-http";
const TAP: &str = "lvop-http0";

fn virsh(args: &[&str]) -> String {
    let out = Command::new("virsh")
        .args(["-c", URI])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The operator's side: a persistent tap with the host address, and a defined domain on it.
struct Operator;

impl Operator {
    fn new() -> Operator {
        let _ = virsh(&["destroy", DOMAIN]);
        let _ = virsh(&["undefine", DOMAIN]);
        let _ = Command::new("ip").args(["link", "del", TAP]).output();
        for args in [
            vec!["tuntap", "add", "dev", TAP, "mode", "tap"],
            vec!["addr", "add", "10.213.220.1/24", "dev", TAP],
            vec!["link", "set", TAP, "up"],
        ] {
            assert!(
                Command::new("ip").args(&args).status().unwrap().success(),
                "ip {args:?}"
            );
        }
        let dir = std::env::temp_dir().join(format!("summon-operator-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let xml = format!(
            "<domain type='kvm'><name>{DOMAIN}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='pc'>hvm</type>\
             <loader type='rom'>/usr/share/qemu/qboot.rom</loader><kernel>{}</kernel>\
             <cmdline>--ipv4={IP}/24 --ipv4-gateway=10.213.220.1 --port=80 --name=operator</cmdline></os>\
             <cpu mode='host-passthrough'><feature policy='disable' name='arch-capabilities'/></cpu>\
             <devices><controller type='usb' model='none'/><serial type='pty'/>\
             <interface type='ethernet'><mac address='52:54:00:dc:00:02'/>\
             <target dev='{TAP}' managed='no'/><model type='virtio-transitional'/></interface>\
             <memballoon model='none'/></devices></domain>",
            summon_tests::virtio_image("http").display()
        );
        let file = dir.join("domain.xml");
        std::fs::write(&file, xml).unwrap();
        let out = Command::new("virsh")
            .args(["-c", URI, "define"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "define: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_dir_all(&dir);
        Operator
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", DOMAIN]);
        let _ = virsh(&["undefine", DOMAIN]);
        let _ = Command::new("ip").args(["link", "del", TAP]).output();
    }
}

fn count(addr: SocketAddr) -> u64 {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /count HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{out}"))
}

#[test]
fn existing_http_domain_on_operator_tap_held_suspended_and_resumed_with_state() {
    if !prerequisites() {
        return;
    }
    let _op = Operator::new();
    assert_eq!(
        virsh(&["domstate", DOMAIN]).lines().next(),
        Some("shut off")
    );
    let service = format!(
        "[[service]]\nname = \"legacy\"\nbackend = \"libvirt\"\nip = \"{IP}\"\nidle_timeout = \"2s\"\nstop = \"suspend\"\nlibvirt = {{ uri = \"{URI}\", domain = \"{DOMAIN}\", probe_port = 80 }}\n"
    );
    let d = RootDaemon::start_at("10.213.220.0/24", "10.213.220.1", "", &service);
    let addr = SocketAddr::from((IP, 80));
    let a = a_records(&query_udp(d.dns, "legacy.svc.test.", RecordType::A).expect("DNS"));
    assert_eq!(a.first().map(|r| r.0), Some(IP), "{}", d.log());
    let (text, connected, _, retrans) = get_now(addr);
    eprintln!("cold: connect {connected:?}, SYN retransmissions {retrans}");
    assert!(
        text.starts_with("HTTP/1.1 200") && text.contains("operator"),
        "{text}"
    );
    assert_eq!(retrans, 0, "the SYN was retransmitted");
    let before = count(addr);
    assert!(before >= 2, "count {before}");
    assert!(
        wait_until(Duration::from_secs(12), || virsh(&["domstate", DOMAIN])
            .starts_with("paused")),
        "not suspended when idle:\n{}",
        d.log()
    );
    let a = a_records(&query_udp(d.dns, "legacy.svc.test.", RecordType::A).expect("DNS"));
    assert_eq!(a.len(), 1);
    assert!(wait_until(Duration::from_secs(10), || virsh(&[
        "domstate", DOMAIN
    ])
    .starts_with("running")));
    // Same run: the counter continues (a re-boot would start again at 1).
    let after = count(addr);
    assert_eq!(
        after,
        before + 1,
        "the guest lost its state: re-booted instead of resumed"
    );
    drop(d);
    assert_eq!(hold_rules(), 0);
    assert!(links().is_empty());
}
