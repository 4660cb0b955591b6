//! Net device tests on real taps inside a network namespace the test creates: the echo guest
//! returns a raw Ethernet frame the test sends from the host side of the tap.
//!
//! One test runs `summon-run --net:service0=TAP` under `ip netns exec` (a tap opened by name);
//! the other hands an already-open tap fd to `KvmBackend` in-process (the daemon's way). Both
//! live in summon-run's crate, the only one whose tests can run the summon-run binary, so that
//! they share the namespace and packet-socket helpers.

use summon_test_support::{guests, require};
use summon_tests::guest::Events;

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use summon_launcher::kvm::KvmBackend;
use summon_launcher::{
    tap, GuestLimits, Instance, InstanceEvent, InstanceSpec, NetSpec, TapSource,
};

const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x2a];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

/// A network namespace with one tap in it, removed on drop.
struct Netns {
    name: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    fn with_tap(tap: &str) -> Netns {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "summon-t{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ip(&["-n", &ns.name, "tuntap", "add", "dev", tap, "mode", "tap"]);
        ip(&["-n", &ns.name, "link", "set", tap, "up"]);
        ns
    }

    /// Runs `f` on a thread that has joined this namespace; fds it creates stay in it.
    fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("open netns");
            // SAFETY: setns on this thread only, with an fd we own.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread")
    }
}

/// Kills the child on drop, so a failing test leaves no launcher behind in its namespace.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// An AF_PACKET socket bound to `iface` (call inside the namespace), with a 100 ms read timeout.
fn packet_socket(iface: &str) -> OwnedFd {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); checked below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    assert!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` is ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let cname = CString::new(iface).unwrap();
    // SAFETY: NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    assert!(index > 0, "no interface {iface}");
    // SAFETY: zeroed sockaddr_ll is valid; we fill in family, protocol and index.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = index as i32;
    // SAFETY: binds our socket to a valid sockaddr_ll of the right length.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: sets a timeval option on our socket.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    fd
}

/// Opens tap `iface` as the daemon would hand it over (call inside the namespace).
fn open_tap(iface: &str) -> OwnedFd {
    tap::open(iface, tap::Blocking::Yes).unwrap_or_else(|e| panic!("TUNSETIFF {iface}: {e}"))
}

fn test_frame() -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&ETHERTYPE);
    f.extend_from_slice(b"summon echo test payload");
    f.resize(60, 0);
    f
}

/// Sends the test frame every 100 ms until the guest's echo comes back; returns the echo.
fn exchange(sock: &OwnedFd, timeout: Duration) -> Vec<u8> {
    let frame = test_frame();
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        // SAFETY: sends our buffer on our bound socket.
        unsafe { libc::send(sock.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        let until = Instant::now() + Duration::from_millis(100);
        while Instant::now() < until {
            // SAFETY: receives into our buffer.
            let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 14 {
                break;
            }
            let got = &buf[..n as usize];
            // Our own outgoing frame is seen too; the echo has the MACs swapped.
            if got[0..6] == PEER_MAC && got[6..12] == GUEST_MAC && got[12..14] == ETHERTYPE {
                return got.to_vec();
            }
        }
    }
    panic!("no echo from the guest within {timeout:?}");
}

fn check_echo(echo: &[u8]) {
    let sent = test_frame();
    assert_eq!(echo.len(), sent.len());
    assert_eq!(&echo[12..], &sent[12..]);
}

fn net_tools_available() -> bool {
    require::check("KVM", require::kvm()) && require::check("ip", require::tool("ip"))
}

#[test]
fn summon_run_echoes_a_frame_through_a_named_tap() {
    if !net_tools_available() {
        return;
    }
    let ns = Netns::with_tap("tap0");
    let sock = ns.run_in(|| packet_socket("tap0"));
    let image = guests::build("echo");
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = ChildGuard(
        Command::new("ip")
            .args(["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_summon-run")])
            .arg("--mem=16")
            .arg("--net:service0=tap0")
            .arg("--net-mac:service0=02:00:00:00:00:2a")
            .arg(&image)
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("spawn summon-run"),
    );
    let echo = exchange(&sock, Duration::from_secs(20));
    check_echo(&echo);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "summon-run did not exit after the echo"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(log.path()).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "summon-run stderr: {stderr}");
}

#[test]
fn handed_over_tap_fd_echoes_and_reports_net_ready() {
    if !net_tools_available() {
        return;
    }
    let ns = Netns::with_tap("tap1");
    let (sock, tap) = ns.run_in(|| (packet_socket("tap1"), open_tap("tap1")));
    let backend = KvmBackend::new().unwrap();
    let events = Events::default();
    let spec = InstanceSpec {
        name: "echo".into(),
        image: guests::build("echo"),
        memory_mib: 16,
        nets: vec![NetSpec {
            name: "service0".into(),
            tap: TapSource::Fd(tap),
            mac: Some(GUEST_MAC.into()),
        }],
        blocks: vec![],
        args: vec![],
        limits: Default::default(),
    };
    let inst = backend.start_kvm(spec, events.sink()).unwrap();
    let first = events.wait_for(Duration::from_secs(20), |_| true);
    assert_eq!(first.map(|(_, e)| e), Some(InstanceEvent::NetReady));
    let echo = exchange(&sock, Duration::from_secs(20));
    check_echo(&echo);
    assert_eq!(events.wait_end(Duration::from_secs(20)), Ok(0));
    inst.join();
    // The frames the guest read (ours, and whatever else the kernel sent on the tap) and the
    // one it wrote back.
    let c = inst.counters().expect("the KVM backend keeps counters");
    assert!(c.rx_frames.load(Ordering::Relaxed) >= 1);
    assert!(c.rx_bytes.load(Ordering::Relaxed) >= 60);
    assert_eq!(c.tx_frames.load(Ordering::Relaxed), 1);
    assert_eq!(c.tx_bytes.load(Ordering::Relaxed), 60);
    assert_eq!(c.tx_dropped_frames.load(Ordering::Relaxed), 0);
}

#[test]
fn frame_flood_is_cut_to_the_tx_limit_as_a_lossy_link_would() {
    if !net_tools_available() {
        return;
    }
    const LIMIT: u64 = 10;
    let ns = Netns::with_tap("tap2");
    let (sock, tap) = ns.run_in(|| (packet_socket("tap2"), open_tap("tap2")));
    let backend = KvmBackend::new().unwrap();
    let events = Events::default();
    let spec = InstanceSpec {
        name: "flood".into(),
        image: guests::build("flood"),
        memory_mib: 16,
        nets: vec![NetSpec {
            name: "service0".into(),
            tap: TapSource::Fd(tap),
            mac: Some(GUEST_MAC.into()),
        }],
        blocks: vec![],
        args: vec![],
        limits: GuestLimits {
            tx_frames_per_sec: Some(LIMIT),
            tx_bytes_per_sec: Some(1_000_000),
            ..Default::default()
        },
    };
    let started = Instant::now();
    let inst = backend.start_kvm(spec, events.sink()).unwrap();
    let end = events.wait_end(Duration::from_secs(20));
    let elapsed = started.elapsed();
    // Every NET_WRITE returned OK, dropped or not: the guest halts with 0.
    assert_eq!(end, Ok(0));
    inst.join();
    let c = inst.counters().unwrap();
    let sent = c.tx_frames.load(Ordering::Relaxed);
    let dropped = c.tx_dropped_frames.load(Ordering::Relaxed);
    assert_eq!(sent + dropped, 100);
    assert!(
        sent <= LIMIT + (elapsed.as_secs_f64() * LIMIT as f64) as u64 + 1,
        "{sent} frames passed in {elapsed:?}"
    );
    assert!(dropped > 0);
    assert_eq!(c.tx_bytes.load(Ordering::Relaxed), sent * 60);
    // What the guest sends is not traffic towards it.
    assert_eq!(c.rx_frames.load(Ordering::Relaxed), 0);
    // Exactly the frames that passed reached the wire.
    let mut buf = [0u8; 2048];
    let mut seen = 0;
    loop {
        // SAFETY: receives into `buf`, which outlives the call; 100 ms SO_RCVTIMEO.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            break;
        }
        let got = &buf[..n as usize];
        if got.len() >= 14 && got[6..12] == GUEST_MAC && got[12..14] == ETHERTYPE {
            seen += 1;
        }
    }
    assert_eq!(seen, sent);
}
