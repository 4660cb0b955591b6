//! Helpers of the libvirt end-to-end tests and benchmark: summond in the root network namespace
//! (libvirtd's QEMU opens the daemon's tap by name there), state checks through virsh, ip and
//! iptables, and an HTTP GET that reports SYN retransmissions from TCP_INFO.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::daemon::summond;

pub const URI: &str = "qemu:///system";
pub const GUEST: Ipv4Addr = Ipv4Addr::new(10, 213, 210, 20);

pub fn fail_or_skip(why: &str) -> bool {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}");
    }
    eprintln!("skipping: {why}");
    false
}

pub fn prerequisites() -> bool {
    if !Command::new("virsh")
        .args(["-c", URI, "version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return fail_or_skip("libvirtd is not reachable at qemu:///system (scripts/setup-host)");
    }
    if !crate::virtio_image("http").is_file() {
        return fail_or_skip("http.virtio is missing (the tests crate's build builds it)");
    }
    if !links().is_empty() {
        // summond deletes sm-* links at start-up; never take someone else's.
        return fail_or_skip("sm-* interfaces exist in the root namespace (another summond?)");
    }
    true
}

pub fn links() -> Vec<String> {
    let out = Command::new("ip").args(["-br", "link"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("sm-"))
        .map(|n| n.split('@').next().unwrap().to_string())
        .collect()
}

pub fn domain_exists(name: &str) -> bool {
    Command::new("virsh")
        .args(["-c", URI, "domstate", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn hold_rules() -> usize {
    let out = Command::new("iptables").arg("-S").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .matches("summon-hold")
        .count()
}

/// summond in the root namespace, on a free loopback port; SIGTERM on drop.
pub struct RootDaemon {
    child: Option<Child>,
    pub dir: PathBuf,
    pub dns: SocketAddr,
}

impl RootDaemon {
    pub fn start(service: &str) -> RootDaemon {
        Self::start_with("", service)
    }

    /// `extra`: more top-level sections (e.g. `[admin]`).
    pub fn start_with(extra: &str, service: &str) -> RootDaemon {
        Self::start_at("10.213.210.0/24", "10.213.210.1", extra, service)
    }

    /// With another `[network]` subnet and gateway.
    pub fn start_at(subnet: &str, gateway: &str, extra: &str, service: &str) -> RootDaemon {
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dns: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let dir = std::env::temp_dir().join(format!("summon-lvhttp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "[dns]\nlisten = [\"{dns}\"]\nzone = \"svc.test.\"\nttl = 1\n\n[network]\nsubnet = \"{subnet}\"\ngateway = \"{gateway}\"\n\n{extra}\n\n{service}"
        );
        let path = dir.join("summond.toml");
        std::fs::write(&path, config).unwrap();
        let sock = dir.join("notify.sock");
        let notify = UnixDatagram::bind(&sock).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let child = Command::new(summond())
            .arg("--config")
            .arg(&path)
            .env("NOTIFY_SOCKET", &sock)
            .env(
                "SUMMOND_LOG",
                "info,summon_daemon=debug,hickory_server=warn",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("summond.log")).unwrap())
            .spawn()
            .expect("spawn summond");
        let d = RootDaemon {
            child: Some(child),
            dir,
            dns,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut buf = [0u8; 512];
        loop {
            if let Ok(n) = notify.recv(&mut buf) {
                if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "summond not ready:\n{}", d.log());
        }
        d
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("summond.log")).unwrap_or_default()
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RootDaemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.terminate();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Connects and sends GET / at once; returns (body, connect time, first byte time, SYN
/// retransmissions from TCP_INFO).
pub fn get_now(addr: SocketAddr) -> (String, Duration, Duration, u32) {
    let t0 = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(15)).expect("connect");
    let connected = t0.elapsed();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut first = [0u8; 1];
    s.read_exact(&mut first).expect("first byte");
    let first_byte = t0.elapsed();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let retransmits = crate::tcp::total_retransmits(&s).expect("TCP_INFO");
    let text = String::from_utf8_lossy(&[&first[..], &rest[..]].concat()).into_owned();
    (text, connected, first_byte, retransmits)
}
