//! The libvirt cold path end to end with our own service: a DNS query to summond starts a
//! transient libvirt/qemu domain running `http.virtio`; an HTTP request sent right after the
//! answer is held (NFQUEUE) until the guest answers and then served from its first SYN, never
//! retransmitted (checked with TCP_INFO); idle reaping destroys the domain and its tap; SIGTERM
//! leaves no domain, tap or iptables rule.
//!
//! Unlike the other daemon tests, summond runs in the root network namespace here: libvirtd and
//! the QEMU it starts live there and open the daemon's tap by name, which a tap inside a test
//! namespace would hide from them. The test uses its own subnet (10.213.210.0/24), DNS port and
//! names, refuses to run when summond's interface prefix is in use, and checks it left nothing.
//! Fails under CI=true when libvirtd or the images are missing.

mod daemon_support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use daemon_support::{a_records, query_udp, summond, wait_until};
use hickory_proto::rr::RecordType;

const URI: &str = "qemu:///system";
const GUEST: Ipv4Addr = Ipv4Addr::new(10, 213, 210, 20);

fn fail_or_skip(why: &str) -> bool {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}");
    }
    eprintln!("skipping: {why}");
    false
}

fn prerequisites() -> bool {
    if !Command::new("virsh")
        .args(["-c", URI, "version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return fail_or_skip("libvirtd is not reachable at qemu:///system (scripts/setup-host)");
    }
    if !summon_tests::virtio_image("http").is_file() {
        return fail_or_skip("http.virtio is missing (the tests crate's build builds it)");
    }
    if !links().is_empty() {
        // summond deletes sm-* links at start-up; never take someone else's.
        return fail_or_skip("sm-* interfaces exist in the root namespace (another summond?)");
    }
    true
}

fn links() -> Vec<String> {
    let out = Command::new("ip").args(["-br", "link"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("sm-"))
        .map(|n| n.split('@').next().unwrap().to_string())
        .collect()
}

fn domain_exists(name: &str) -> bool {
    Command::new("virsh")
        .args(["-c", URI, "domstate", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn hold_rules() -> usize {
    let out = Command::new("iptables").arg("-S").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .matches("summon-hold")
        .count()
}

/// summond in the root namespace, on a free loopback port; SIGTERM on drop.
struct RootDaemon {
    child: Option<Child>,
    dir: PathBuf,
    dns: SocketAddr,
}

impl RootDaemon {
    fn start(service: &str) -> RootDaemon {
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
            "[dns]\nlisten = [\"{dns}\"]\nzone = \"svc.test.\"\nttl = 1\n\n[network]\nsubnet = \"10.213.210.0/24\"\ngateway = \"10.213.210.1\"\n\n{service}"
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

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("summond.log")).unwrap_or_default()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
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
fn get_now(addr: SocketAddr) -> (String, Duration, Duration, u32) {
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
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: TCP_INFO fills at most `len` bytes of `info`, a plain C struct.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO");
    let text = String::from_utf8_lossy(&[&first[..], &rest[..]].concat()).into_owned();
    (text, connected, first_byte, info.tcpi_total_retrans)
}

#[test]
fn dns_summons_transient_http_virtio_domain_held_syn_and_idle_reap() {
    if !prerequisites() {
        return;
    }
    let console =
        std::env::temp_dir().join(format!("summon-lvhttp-console-{}", std::process::id()));
    std::fs::create_dir_all(&console).unwrap();
    let service = format!(
        "[[service]]\nname = \"lvweb\"\nbackend = \"libvirt\"\nimage = \"{}\"\nip = \"{GUEST}\"\nmemory_mib = 32\nargs = [\"--port=80\"]\nidle_timeout = \"2s\"\nlibvirt = {{ uri = \"{URI}\", console_dir = \"{}\" }}\n",
        summon_tests::virtio_image("http").display(),
        console.display()
    );
    let mut d = RootDaemon::start(&service);
    let addr = SocketAddr::from((GUEST, 80));
    for round in 0..2 {
        assert!(
            !domain_exists("summon-lvweb"),
            "round {round}: domain before the query"
        );
        let a = a_records(&query_udp(d.dns, "lvweb.svc.test.", RecordType::A).expect("DNS"));
        assert_eq!(a.first().map(|r| r.0), Some(GUEST), "{}", d.log());
        // Right after the answer: the domain is still booting; the SYN is held, not lost.
        let (text, connected, first_byte, retrans) = get_now(addr);
        eprintln!("round {round}: connect {connected:?}, first byte {first_byte:?}, SYN retransmissions {retrans}");
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert_eq!(
            retrans, 0,
            "the SYN was retransmitted: held packets were lost"
        );
        assert!(domain_exists("summon-lvweb"));
        assert_eq!(links(), vec!["sm-lvweb".to_string()]);
        // Idle (no queries, no traffic for 2 s): destroyed with its tap.
        assert!(
            wait_until(Duration::from_secs(12), || !domain_exists("summon-lvweb")
                && links().is_empty()),
            "not reaped:\n{}",
            d.log()
        );
        assert_eq!(hold_rules(), 0, "hold rules left after release");
    }
    // SIGTERM with an instance running: everything goes.
    query_udp(d.dns, "lvweb.svc.test.", RecordType::A).expect("DNS");
    assert!(wait_until(Duration::from_secs(15), || domain_exists(
        "summon-lvweb"
    )));
    let status = d.terminate();
    assert!(status.success(), "summond exit {status}:\n{}", d.log());
    assert!(!domain_exists("summon-lvweb"), "domain left after SIGTERM");
    assert!(links().is_empty(), "taps left: {:?}", links());
    assert_eq!(hold_rules(), 0, "iptables rules left after SIGTERM");
    let _ = std::fs::remove_dir_all(&console);
}
