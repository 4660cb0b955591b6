//! The client of a cold request: resolve through summond, connect at once, send one HTTP GET,
//! time every step and read the kernel's retransmission count for the connection.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

use super::{a_records, build_query};

/// One request, DNS query sent → whole response read.
#[derive(Debug, Clone, Copy)]
pub struct ColdSample {
    /// Query sent → answer received.
    pub answer: Duration,
    /// Query sent → TCP connected (SYN-ACK seen).
    pub connected: Duration,
    /// Query sent → first byte of the HTTP response.
    pub first_byte: Duration,
    /// TCP segments the client retransmitted (`tcpi_total_retrans`).
    pub retransmits: u32,
}

/// What can go wrong, as text for the test's message.
pub type ColdError = String;

/// Resolves `name` (A) at `dns`, then GETs `/` from the answered address on port 80.
/// Must run inside the daemon's network namespace.
pub fn cold_request(dns: SocketAddr, name: &str) -> Result<ColdSample, ColdError> {
    let udp = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}"))?;
    udp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let id = (std::process::id() as u16) ^ (Instant::now().elapsed().subsec_nanos() as u16);
    let q = build_query(name, RecordType::A, id);
    let t0 = Instant::now();
    udp.send_to(&q, dns)
        .map_err(|e| format!("send query: {e}"))?;
    let mut buf = [0u8; 1500];
    let msg = loop {
        let (n, _) = udp
            .recv_from(&mut buf)
            .map_err(|e| format!("DNS answer for {name}: {e}"))?;
        let m = Message::from_vec(&buf[..n]).map_err(|e| format!("bad answer: {e}"))?;
        if m.metadata.id == id {
            break m;
        }
    };
    let answer = t0.elapsed();
    if msg.metadata.response_code != ResponseCode::NoError {
        return Err(format!("{name}: rcode {}", msg.metadata.response_code));
    }
    let ip: Ipv4Addr = a_records(&msg)
        .first()
        .map(|(ip, _)| *ip)
        .ok_or_else(|| format!("{name}: no A record"))?;
    let addr = SocketAddr::V4(SocketAddrV4::new(ip, 80));
    // A lost SYN costs the 1 s initial RTO; 5 s lets the test see and report it.
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let connected = t0.elapsed();
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: cold\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("send request: {e}"))?;
    let mut first = [0u8; 1];
    let n = s
        .read(&mut first)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let first_byte = t0.elapsed();
    if n == 0 {
        return Err(format!("{addr}: closed without a response"));
    }
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let mut resp = first.to_vec();
    resp.extend_from_slice(&rest);
    if !resp.starts_with(b"HTTP/1.1 200") {
        return Err(format!(
            "{addr}: {:?}",
            String::from_utf8_lossy(&resp[..resp.len().min(80)])
        ));
    }
    let retransmits = crate::tcp::total_retransmits(&s).map_err(|e| format!("TCP_INFO: {e}"))?;
    Ok(ColdSample {
        answer,
        connected,
        first_byte,
        retransmits,
    })
}

/// Sorted copy, then the value at quantile `p` (0..=1).
pub fn quantile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
