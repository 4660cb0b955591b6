//! Instances cannot see each other's traffic: two http services summoned through
//! summond's DNS each get a routed point-to-point tap. Traffic to one never shows on the other's
//! tap, each tap routes only its guest's /32, the host side filters reverse paths strictly, and
//! a frame entering A's tap with B's source address is dropped by the host.

use summon_tests::daemon as daemon_support;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use daemon_support::*;
use summon_launcher::MacAddr;

const A_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 30);
const B_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 31);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

/// A file read inside the namespace (`ip netns exec` remounts /sys for it).
fn read_in_ns(d: &Daemon, path: &str) -> String {
    let out = d.ns.command("cat").arg(path).output().expect("run cat");
    assert!(
        out.status.success(),
        "cat {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// (rx_packets, tx_packets) of a tap, as the host side counts them.
fn counters(d: &Daemon, tap: &str) -> (u64, u64) {
    let get = |what: &str| {
        read_in_ns(d, &format!("/sys/class/net/{tap}/statistics/{what}"))
            .parse::<u64>()
            .unwrap()
    };
    (get("rx_packets"), get("tx_packets"))
}

#[test]
fn instances_cannot_see_each_others_traffic() {
    if !prerequisites("daemon isolation test") {
        return;
    }
    let cfg = config(
        30,
        &[],
        "",
        &(http_service("alpha", &A_IP.to_string(), "")
            + &http_service("beta", &B_IP.to_string(), "")),
    );
    let d = Daemon::start("isol", &cfg);
    d.summon_http("alpha", A_IP);
    d.summon_http("beta", B_IP);
    let mut taps = d.taps();
    taps.sort();
    assert_eq!(taps, vec!["sm-alpha".to_string(), "sm-beta".to_string()]);

    // (a) HTTP to A moves A's counters only. B's guest is idle and the host sends it nothing
    // unprompted (IPv6 is off on the taps), so its counters must stay exactly where they were.
    std::thread::sleep(Duration::from_millis(300));
    let a0 = counters(&d, "sm-alpha");
    let b0 = counters(&d, "sm-beta");
    let addr = SocketAddr::from((A_IP, 80));
    d.ns.run(move || {
        for _ in 0..20 {
            http_get(addr, "/").expect("GET / on A");
        }
    });
    let a1 = counters(&d, "sm-alpha");
    let b1 = counters(&d, "sm-beta");
    // Each request is a TCP exchange of several segments each way.
    assert!(a1.0 >= a0.0 + 20 * 3, "A rx {a0:?} -> {a1:?}");
    assert!(a1.1 >= a0.1 + 20 * 3, "A tx {a0:?} -> {a1:?}");
    assert_eq!(b1, b0, "B's tap saw traffic meant for A");

    // (b) Routed point-to-point: each tap carries only its own guest's /32 route, no address
    // (the gateway is one local address of the host, on lo), no subnet route, and strict
    // reverse-path filtering.
    for (tap, ip) in [("sm-alpha", A_IP), ("sm-beta", B_IP)] {
        let routes = d.ip(&["-4", "route", "show", "dev", tap]);
        let lines: Vec<&str> = routes.lines().collect();
        assert_eq!(lines.len(), 1, "{tap}: {routes}");
        let dst = lines[0].split_whitespace().next().unwrap();
        assert!(
            dst == ip.to_string() || dst == format!("{ip}/32"),
            "{routes}"
        );
        let addrs = d.ip(&["-4", "-o", "addr", "show", "dev", tap]);
        assert_eq!(addrs.lines().count(), 0, "{addrs}");
        let lo = d.ip(&["-4", "-o", "addr", "show", "dev", "lo"]);
        assert!(lo.contains(&format!("inet {GATEWAY}/32 ")), "{lo}");
        assert_eq!(
            read_in_ns(&d, &format!("/proc/sys/net/ipv4/conf/{tap}/rp_filter")),
            "1",
            "{tap} rp_filter"
        );
    }
    // Nothing else routes the subnet to a shared link.
    let whole = d.ip(&["-4", "route", "show", "match", "10.77.0.99"]);
    assert!(
        !whole.contains("dev"),
        "a route covers a free address: {whole}"
    );

    // (c) Spoofing from the guest side. The guest's frames reach the host by a write to the
    // tap's file; a duplicate of summond's own tap fd (pidfd_getfd, as root) writes exactly
    // what a guest's driver writes, without any test hook in the daemon.
    let tap_fd = duplicate_tap_fd(&d.processes(), "sm-alpha");
    let tap_mac = read_in_ns(&d, "/sys/class/net/sm-alpha/address");
    let dst_mac = tap_mac.trim().parse::<MacAddr>().unwrap().octets();
    let guest_mac = [0x02, 0x53, 10, 77, 0, 30];
    let port = 47_001u16;
    let dropped0 = rp_filter_drops(&d);
    let received = d.ns.run(move || {
        let sock = UdpSocket::bind(("0.0.0.0", port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(800)))
            .unwrap();
        let mut got = Vec::new();
        // The spoofed one first, then A's own address as the control that the path works.
        for (src, tag) in [(B_IP, b"spoof" as &[u8]), (A_IP, b"legit")] {
            let frame = udp_frame(dst_mac, guest_mac, src, GATEWAY, port, tag);
            write_frame(&tap_fd, &frame);
            let mut buf = [0u8; 64];
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                got.push((from, buf[..n].to_vec()));
            }
        }
        got
    });
    assert_eq!(
        received,
        vec![(SocketAddr::from((A_IP, 12345)), b"legit".to_vec())],
        "only the frame with A's own source may arrive"
    );
    let dropped1 = rp_filter_drops(&d);
    assert!(
        dropped1 > dropped0,
        "IPReversePathFilter did not count the spoofed frame ({dropped0} -> {dropped1})"
    );
}

/// TcpExtIPReversePathFilter of the namespace: packets dropped by the reverse-path check.
fn rp_filter_drops(d: &Daemon) -> u64 {
    let text = read_in_ns(d, "/proc/net/netstat");
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        if !names.starts_with("TcpExt:") {
            continue;
        }
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            if n == "IPReversePathFilter" {
                return v.parse().unwrap();
            }
        }
    }
    panic!("no IPReversePathFilter in /proc/net/netstat")
}

/// A duplicate of the fd attached to tap `name` (found through fdinfo's `iff:` line) in any of
/// the fd tables of summond and its worker processes (`pids`): a live instance's tap is in its
/// vCPU thread's own table.
fn duplicate_tap_fd(pids: &[i32], name: &str) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let tids: Vec<(i32, i32)> = pids
        .iter()
        .flat_map(|&pid| {
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
                .filter_map(move |e| Some((pid, e.ok()?.file_name().to_str()?.parse().ok()?)))
        })
        .collect();
    let (pid, tid, target) = tids
        .iter()
        .find_map(|&(pid, tid)| {
            let dir = format!("/proc/{pid}/task/{tid}/fd");
            std::fs::read_dir(&dir)
                .ok()?
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .find(|fd| {
                    let link = std::fs::read_link(format!("{dir}/{fd}")).unwrap_or_default();
                    link.to_str() == Some("/dev/net/tun")
                        && std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/fdinfo/{fd}"))
                            .unwrap_or_default()
                            .lines()
                            .any(|l| l.trim() == format!("iff:\t{name}").trim())
                })
                .map(|fd| (pid, tid, fd))
        })
        .unwrap_or_else(|| panic!("no fd table of summond or its workers holds an fd for {name}"));
    // PIDFD_THREAD (O_EXCL): a pidfd for that thread, whose fd table pidfd_getfd reads.
    let flags = if tid == pid { 0 } else { libc::O_EXCL };
    // SAFETY: pidfd_open on a thread of our own child; the result is checked before use.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, tid, flags) } as i32;
    assert!(
        pidfd >= 0,
        "pidfd_open: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: pidfd is the valid descriptor just opened; target is an fd number of that thread.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, target, 0) } as i32;
    let err = std::io::Error::last_os_error();
    // SAFETY: pidfd is ours and not used after this.
    unsafe { libc::close(pidfd) };
    assert!(fd >= 0, "pidfd_getfd: {err}");
    // SAFETY: fd is a fresh descriptor owned by nothing else.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

fn write_frame(fd: &std::os::fd::OwnedFd, frame: &[u8]) {
    use std::os::fd::AsRawFd;
    // SAFETY: a write of an initialised buffer of the given length to an owned descriptor.
    let n = unsafe { libc::write(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
    assert_eq!(
        n,
        frame.len() as isize,
        "tap write: {}",
        std::io::Error::last_os_error()
    );
}

/// Ethernet + IPv4 + UDP (source port 12345, no UDP checksum) carrying `payload`.
fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&12345u16.to_be_bytes());
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}
