//! Names outside the zone go to the configured upstreams: the client's query is relayed as
//! sent (UDP first, TCP when the answer is truncated), the first good answer wins.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream answered")]
    NoAnswer,
}

pub async fn forward(upstreams: &[SocketAddr], query: &[u8]) -> Result<Message, ForwardError> {
    if query.len() < 12 {
        return Err(ForwardError::NoAnswer);
    }
    let id = u16::from_be_bytes([query[0], query[1]]);
    for up in upstreams {
        match tokio::time::timeout(TIMEOUT, ask(*up, query, id)).await {
            Ok(Ok(msg)) => return Ok(msg),
            Ok(Err(e)) => tracing::debug!(upstream = %up, error = %e, "upstream failed"),
            Err(_) => tracing::debug!(upstream = %up, "upstream timed out"),
        }
    }
    Err(ForwardError::NoAnswer)
}

async fn ask(up: SocketAddr, query: &[u8], id: u16) -> std::io::Result<Message> {
    let bind: SocketAddr = if up.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(up).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await?;
        let Ok(msg) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if msg.metadata.id != id {
            continue;
        }
        if msg.metadata.truncation {
            return ask_tcp(up, query, id).await;
        }
        return Ok(msg);
    }
}

async fn ask_tcp(up: SocketAddr, query: &[u8], id: u16) -> std::io::Result<Message> {
    let mut s = TcpStream::connect(up).await?;
    let len = u16::try_from(query.len()).map_err(std::io::Error::other)?;
    s.write_all(&len.to_be_bytes()).await?;
    s.write_all(query).await?;
    let mut lb = [0u8; 2];
    s.read_exact(&mut lb).await?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(lb))];
    s.read_exact(&mut buf).await?;
    let msg = Message::from_vec(&buf).map_err(std::io::Error::other)?;
    if msg.metadata.id != id {
        return Err(std::io::Error::other("upstream answered with another id"));
    }
    Ok(msg)
}
