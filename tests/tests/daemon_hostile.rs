//! Hostile DNS input over UDP and TCP: random bytes, truncated queries, compression loops,
//! oversized counts, absurd lengths. summond must stay up and keep answering correctly.

use summon_tests::daemon as daemon_support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use daemon_support::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use summon_tests::rng::Rng;

fn header(id: u16, flags: u16, qd: u16, an: u16, ns: u16, ar: u16) -> Vec<u8> {
    [id, flags, qd, an, ns, ar]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect()
}

/// Crafted malformed packets: each is something a careless parser would choke on.
fn crafted() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    let valid = build_query("web.svc.test.", RecordType::A, 0x4242);
    // Every truncation of a valid query.
    for n in 0..valid.len() {
        v.push(valid[..n].to_vec());
    }
    // Name that points at itself (offset 12), and two pointers pointing at each other.
    let mut p = header(1, 0x0100, 1, 0, 0, 0);
    p.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
    v.push(p);
    let mut p = header(2, 0x0100, 1, 0, 0, 0);
    p.extend_from_slice(&[0xc0, 0x0e, 0xc0, 0x0c, 0, 1, 0, 1]);
    v.push(p);
    // Forward pointer past the end, and a label claiming 63 bytes with none present.
    let mut p = header(3, 0x0100, 1, 0, 0, 0);
    p.extend_from_slice(&[0xc3, 0xff, 0, 1, 0, 1]);
    v.push(p);
    let mut p = header(4, 0x0100, 1, 0, 0, 0);
    p.extend_from_slice(&[63, b'a', b'b']);
    v.push(p);
    // Oversized counts with a tiny body.
    for (qd, an, ns, ar) in [
        (65535, 0, 0, 0),
        (1, 65535, 65535, 65535),
        (0, 0, 0, 65535),
        (0, 0, 0, 0),
    ] {
        let mut p = header(5, 0x0100, qd, an, ns, ar);
        p.extend_from_slice(&valid[12..]);
        v.push(p);
    }
    // Name over 255 bytes made of many 63-byte labels.
    let mut p = header(6, 0x0100, 1, 0, 0, 0);
    for _ in 0..6 {
        p.push(63);
        p.extend_from_slice(&[b'x'; 63]);
    }
    p.extend_from_slice(&[0, 0, 1, 0, 1]);
    v.push(p);
    // Reserved label type 0b01, a response sent as a query, unknown opcode, two OPT records.
    let mut p = header(7, 0x0100, 1, 0, 0, 0);
    p.extend_from_slice(&[0x41, 0, 0, 1, 0, 1]);
    v.push(p);
    let mut p = valid.clone();
    p[2] |= 0x80;
    v.push(p);
    let mut p = valid.clone();
    p[2] = (p[2] & 0x87) | (9 << 3);
    v.push(p);
    let mut p = valid.clone();
    p[11] = 2;
    p.extend_from_slice(&valid[valid.len() - 11..]);
    v.push(p);
    // EDNS version 1 must get BADVERS, not a crash.
    let mut p = valid.clone();
    let opt_version = p.len() - 11 + 6;
    p[opt_version] = 1;
    v.push(p);
    v
}

fn check_still_correct(d: &Daemon) {
    let m = d.query("web.svc.test.", RecordType::A);
    assert_eq!(a_records(&m), vec![(Ipv4Addr::new(10, 77, 0, 10), 5)]);
    assert_eq!(
        d.query("nope.svc.test.", RecordType::A)
            .metadata
            .response_code,
        ResponseCode::NXDomain
    );
    assert_eq!(
        d.query_tcp("web.svc.test.", RecordType::TXT)
            .metadata
            .response_code,
        ResponseCode::NoError
    );
}

#[test]
fn hostile_udp_and_tcp_input_does_not_hurt() {
    if !prerequisites("daemon hostile input test") {
        return;
    }
    let mut d = Daemon::start(
        "hostile",
        &config(5, &[], "", &http_service("web", "10.77.0.10", "")),
    );
    let server: SocketAddr = DNS.parse().unwrap();
    let t0 = std::time::Instant::now();
    let (answers, formerr) = d.ns.run(move || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_nonblocking(true).unwrap();
        let mut rng = Rng(0x5eed_0123_4567_89ab);
        let mut packets = crafted();
        for _ in 0..5000 {
            let len = (rng.next() % 600) as usize;
            let mut p = rng.bytes(len);
            // Half of them with a plausible query header so they reach deeper parsing.
            if len >= 12 && rng.next().is_multiple_of(2) {
                p[2] = 0x01;
                p[3] = 0x00;
                p[4] = 0;
                p[5] = 1;
            }
            packets.push(p);
        }
        let mut answers = 0;
        let mut formerr = 0;
        let mut buf = [0u8; 4096];
        let mut take = |n: usize, buf: &[u8]| {
            answers += 1;
            // Whatever comes back is a well-formed DNS message.
            let m = Message::from_vec(&buf[..n]).expect("summond sent a malformed message");
            if m.metadata.response_code == ResponseCode::FormErr {
                formerr += 1;
            }
        };
        for (i, p) in packets.iter().enumerate() {
            let _ = s.send_to(p, server);
            if i.is_multiple_of(16) {
                std::thread::sleep(Duration::from_micros(500));
            }
            while let Ok(n) = s.recv(&mut buf) {
                take(n, &buf);
            }
        }
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        while let Ok(n) = s.recv(&mut buf) {
            take(n, &buf);
        }
        (answers, formerr)
    });
    assert!(d.try_wait().is_none(), "summond died:\n{}", d.log());
    eprintln!("udp phase done at {:?}", t0.elapsed());
    assert!(
        answers > 0 && formerr > 0,
        "{answers} answers, {formerr} FORMERR"
    );
    check_still_correct(&d);

    // TCP: junk frames, truncated frames, absurd lengths, slow and abandoned connections.
    d.ns.run(move || {
        let mut rng = Rng(42);
        let mut frames = crafted();
        for _ in 0..300 {
            let n = (rng.next() % 300) as usize;
            frames.push(rng.bytes(n));
        }
        for chunk in frames.chunks(25) {
            let Ok(mut c) = TcpStream::connect(server) else {
                continue;
            };
            c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            for f in chunk {
                let mut framed = (f.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(f);
                let _ = c.write_all(&framed);
            }
            let mut sink = [0u8; 4096];
            let _ = c.read(&mut sink);
        }
        for bad in [
            vec![0xff, 0xff, 1, 2, 3],
            vec![0x00],
            vec![0x00, 0x00],
            vec![0x00, 0x05, 1],
        ] {
            if let Ok(mut c) = TcpStream::connect(server) {
                let _ = c.write_all(&bad);
            }
        }
        // Many idle connections at once.
        let idle: Vec<_> = (0..100)
            .filter_map(|_| TcpStream::connect(server).ok())
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        drop(idle);
    });
    eprintln!("tcp phase done at {:?}", t0.elapsed());
    assert!(d.try_wait().is_none(), "summond died:\n{}", d.log());
    check_still_correct(&d);
    eprintln!("check done at {:?}", t0.elapsed());
    assert!(!d.log().contains("panicked"), "{}", d.log());
}
