//! The DNS front's defences against its own clients, on the real daemon in a namespace: a
//! flood of idle TCP connections under a 128-descriptor limit does not stop a cold boot,
//! TCP over the cap is closed and counted, forwarding only for `forward_allow`, and
//! response-rate limiting of one flooding client that spares another.

use summon_tests::daemon as daemon_support;

use std::io::Read;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use daemon_support::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use summon_tests::netns::NetNs;
use summon_tests::require;

fn dns() -> SocketAddr {
    DNS.parse().unwrap()
}

/// A UDP query from `bind` (an address on the namespace's loopback, e.g. 127.0.1.1).
fn query_from(bind: &str, name: &str, qtype: RecordType) -> std::io::Result<Message> {
    let s = UdpSocket::bind((bind, 0))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let q = build_query(name, qtype, 4242);
    s.send_to(&q, dns())?;
    let mut buf = [0u8; 4096];
    let n = s.recv(&mut buf)?;
    Message::from_vec(&buf[..n]).map_err(std::io::Error::other)
}

/// Whether the server closed `s` (EOF) within `within`.
fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0))
        || matches!(s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
}

/// A DNS message over an open TCP connection.
fn exchange_tcp(s: &mut TcpStream, name: &str, qtype: RecordType) -> std::io::Result<Message> {
    use std::io::Write;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let q = build_query(name, qtype, 99);
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    s.write_all(&framed)?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf)?;
    Message::from_vec(&buf).map_err(std::io::Error::other)
}

#[test]
fn idle_tcp_flood_under_a_128_fd_limit_leaves_room_for_a_cold_boot() {
    if !prerequisites("fd budget test")
        || !require::check("fd budget test", require::tool("prlimit"))
    {
        return;
    }
    let d = Daemon::start_wrapped(
        NetNs::new("fds"),
        &config(10, &[], "", &http_service("web", "10.77.0.10", "")),
        &[],
        &["prlimit", "--nofile=128:128", "--"],
    );
    // `ip netns exec` and `prlimit` both exec: the child's pid is summond's.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert!(
        line.split_whitespace().filter(|w| *w == "128").count() == 2,
        "{line}"
    );
    let log = plain(&d.log());
    assert!(log.contains("file descriptor budget limit=128"), "{log}");

    // 400 connections opened and held idle (the test process's own limit is far higher).
    let held = d.ns.run(|| {
        (0..400)
            .map(|_| TcpStream::connect_timeout(&dns(), Duration::from_secs(5)).expect("connect"))
            .collect::<Vec<_>>()
    });
    // The budget's TCP share at 128 fds is 8: everything beyond was accepted and closed.
    assert!(
        wait_until(Duration::from_secs(10), || d
            .metric("summon_dns_tcp_rejected_total", &[])
            >= 392.0),
        "rejected {}",
        d.metric("summon_dns_tcp_rejected_total", &[])
    );
    assert_eq!(d.metric("summon_dns_tcp_connections", &[]), 8.0);
    let fds = std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .unwrap()
        .count();
    eprintln!("summond holds {fds} fds with 8 TCP clients, before the boot");

    // A cold summon over UDP, and its page.
    let m = d.query("web.svc.test.", RecordType::A);
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::NoError,
        "{}",
        d.log()
    );
    assert_eq!(a_records(&m).len(), 1);
    let page =
        d.ns.run(|| http_get("10.77.0.10:80".parse().unwrap(), "/"))
            .expect("page of the summoned service");
    assert!(page.contains("web"), "{page}");
    assert!(!d.log().contains("Too many open files"), "{}", d.log());
    drop(held);
}

#[test]
fn tcp_over_the_cap_is_closed_at_once_and_counted() {
    if !prerequisites("TCP cap test") {
        return;
    }
    let text = with_dns(
        &config(10, &[], "", &http_service("web", "10.77.0.10", "")),
        "tcp_max_clients = 4",
    );
    let d = Daemon::start("tcpcap", &text);
    let mut held = d.ns.run(|| {
        (0..4)
            .map(|_| TcpStream::connect_timeout(&dns(), Duration::from_secs(5)).unwrap())
            .collect::<Vec<_>>()
    });
    assert!(wait_until(Duration::from_secs(5), || d
        .metric("summon_dns_tcp_connections", &[])
        == 4.0));
    let mut over =
        d.ns.run(|| TcpStream::connect_timeout(&dns(), Duration::from_secs(5)).unwrap());
    assert!(
        closed_by_server(&mut over, Duration::from_secs(2)),
        "over the cap: closed"
    );
    assert_eq!(d.metric("summon_dns_tcp_rejected_total", &[]), 1.0);
    // The four still work; closing one makes room for a new client.
    for s in &mut held {
        let m = exchange_tcp(s, "svc.test.", RecordType::SOA).unwrap();
        assert_eq!(m.answers.len(), 1);
    }
    drop(held.pop());
    assert!(wait_until(Duration::from_secs(5), || d
        .metric("summon_dns_tcp_connections", &[])
        == 3.0));
    let m = d.query_tcp("svc.test.", RecordType::SOA);
    assert_eq!(m.answers.len(), 1);
    assert_eq!(d.metric("summon_dns_tcp_rejected_total", &[]), 1.0);
}

#[test]
fn forwarding_only_for_forward_allow() {
    if !prerequisites("forward_allow test") {
        return;
    }
    let ns = NetNs::new("fwdallow");
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicU32::new(0));
    let up = upstream(&ns, 5301, stop.clone(), seen.clone());
    let text = with_dns(
        &config(
            10,
            &["127.0.0.1:5301"],
            "",
            &http_service("web", "10.77.0.10", ""),
        ),
        "forward_allow = [\"127.0.0.1/32\"]",
    );
    let d = Daemon::start_in(ns, &text);
    let m =
        d.ns.run(|| query_from("127.0.0.1", "www.example.com.", RecordType::A))
            .unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_records(&m).len(), 1);
    assert_eq!(seen.load(Ordering::Relaxed), 1);
    // Another loopback address is not in the list: REFUSED, nothing sent upstream.
    let m =
        d.ns.run(|| query_from("127.0.1.1", "www.example.com.", RecordType::A))
            .unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(m.answers.is_empty());
    assert_eq!(seen.load(Ordering::Relaxed), 1);
    assert_eq!(
        d.metric(
            "summon_dns_forwards_rejected_total",
            &[("reason", "not_allowed")]
        ),
        1.0
    );
    // Its in-zone queries are answered as usual.
    let m =
        d.ns.run(|| query_from("127.0.1.1", "svc.test.", RecordType::SOA))
            .unwrap();
    assert_eq!(m.answers.len(), 1);
    stop.store(true, Ordering::Relaxed);
    up.join().unwrap();
}

/// Responses a client received, by kind.
#[derive(Default, Debug)]
struct Received {
    full: u32,
    truncated: u32,
    /// First and last response: the daemon answered the flood within this window.
    first: Option<Instant>,
    last: Option<Instant>,
}

#[test]
fn rrl_limits_a_flooding_client_and_spares_another() {
    if !prerequisites("RRL test") {
        return;
    }
    const RATE: u32 = 50;
    let text = with_dns(
        &config(10, &[], "", &http_service("web", "10.77.0.10", "")),
        &format!("[dns.rrl]\nrate = {RATE}\nslip = 2\nwhitelist = []"),
    );
    let d = Daemon::start("rrl", &text);
    let done = Arc::new(AtomicBool::new(false));

    // The flooder: 127.0.0.1, 2,000 queries/s for the apex SOA for 3 s (20 every 10 ms).
    let flooder = d.ns.run(|| UdpSocket::bind("127.0.0.1:0").unwrap());
    flooder
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let receiver = {
        let sock = flooder.try_clone().unwrap();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut got = Received::default();
            let mut buf = [0u8; 4096];
            let mut quiet_since = None;
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) => {
                        quiet_since = None;
                        got.first.get_or_insert_with(Instant::now);
                        got.last = Some(Instant::now());
                        let m = Message::from_vec(&buf[..n]).unwrap();
                        if m.metadata.truncation {
                            assert!(m.answers.is_empty(), "a slip carries no records");
                            got.truncated += 1;
                        } else {
                            assert_eq!(m.answers.len(), 1);
                            got.full += 1;
                        }
                    }
                    Err(_) if done.load(Ordering::Relaxed) => {
                        let t = *quiet_since.get_or_insert_with(Instant::now);
                        if t.elapsed() > Duration::from_millis(500) {
                            return got;
                        }
                    }
                    Err(_) => {}
                }
            }
        })
    };
    // The other client: another /24, one query every 100 ms during the flood.
    let other = {
        let done = done.clone();
        d.ns.spawn(move || {
            let mut answers = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let t = Instant::now();
                answers.push(query_from("127.0.1.1", "svc.test.", RecordType::SOA));
                eprintln!("other client: answered in {:?}", t.elapsed());
                std::thread::sleep(Duration::from_millis(100));
            }
            answers
        })
    };
    let q = build_query("svc.test.", RecordType::SOA, 7);
    let start = Instant::now();
    let mut sent = 0u32;
    for tick in 0..300u32 {
        for _ in 0..20 {
            flooder.send_to(&q, dns()).unwrap();
            sent += 1;
        }
        let next = start + Duration::from_millis(10 * u64::from(tick + 1));
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let elapsed = start.elapsed();
    done.store(true, Ordering::Relaxed);
    let got = receiver.join().unwrap();
    let other = other.join().unwrap();
    eprintln!("sent {sent} in {elapsed:?}: {got:?}");

    // The bound: one second's burst (RATE) plus RATE per second for as long as the daemon was
    // answering the flood (it may lag behind the sender), plus one for rounding.
    let window = got.last.unwrap() - got.first.unwrap();
    let bound = RATE + (f64::from(RATE) * window.as_secs_f64()).ceil() as u32 + 1;
    eprintln!("answered within {window:?}: at most {bound} full answers");
    assert!(got.full >= RATE, "{got:?}");
    assert!(got.full <= bound, "{got:?} over {bound}");
    let slipped = d.metric("summon_dns_rrl_responses_total", &[("action", "slipped")]);
    let dropped = d.metric("summon_dns_rrl_responses_total", &[("action", "dropped")]);
    // slip = 2: one bucket, so every second limited response slipped.
    assert!(
        (slipped - dropped).abs() <= 1.0,
        "slipped {slipped} dropped {dropped}"
    );
    assert!(slipped > 0.0);
    assert_eq!(f64::from(got.truncated), slipped);
    // Every query the daemon got was answered in full, slipped or dropped (loopback may lose
    // a few datagrams to full socket buffers, never many).
    let handled = f64::from(got.full) + slipped + dropped;
    assert!(
        handled <= f64::from(sent) && handled >= 0.95 * f64::from(sent),
        "{handled} of {sent}"
    );

    assert!(other.len() >= 20, "{}", other.len());
    for m in &other {
        let m = m.as_ref().expect("the other client is answered");
        assert!(!m.metadata.truncation && m.answers.len() == 1, "{m:?}");
    }
}
