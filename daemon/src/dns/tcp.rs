//! DNS over TCP with a cap on connections. hickory-server's `register_listener` accepts
//! without limit (one task per connection, only an idle timeout), so a flood of idle
//! connections would take every descriptor; this loop holds one permit per connection and,
//! over the cap, accepts and closes at once (the kernel's backlog never fills with
//! connections nobody will serve). Each message goes through [`super::local::answer_from`],
//! the same parse-and-handle path as UDP; messages on one connection are answered in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::net::xfer::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::DnsFront;

/// After an accept error such as EMFILE the listener stays readable: pause instead of spinning.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Serves `listener` until the task is dropped (which closes every connection it holds).
/// `connections` is shared by all listeners: its permits are the cap. A connection that sends
/// nothing for `idle`, or does not read its answer for as long, is closed.
pub async fn serve(
    listener: TcpListener,
    front: DnsFront,
    connections: Arc<Semaphore>,
    idle: Duration,
) {
    let mut tasks = JoinSet::new();
    loop {
        let (stream, src) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "DNS TCP accept");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            front.metrics().dns_tcp_rejected.inc();
            drop(stream);
            continue;
        };
        tasks.spawn(connection(stream, src, front.clone(), permit, idle));
        while tasks.try_join_next().is_some() {}
    }
}

async fn connection(
    mut stream: TcpStream,
    src: SocketAddr,
    front: DnsFront,
    _permit: OwnedSemaphorePermit,
    idle: Duration,
) {
    let open = front.metrics().dns_tcp_connections.clone();
    open.inc();
    if let Err(e) = exchange(&mut stream, src, &front, idle).await {
        tracing::debug!(%src, error = %e, "DNS TCP connection closed");
    }
    open.dec();
}

async fn exchange(
    stream: &mut TcpStream,
    src: SocketAddr,
    front: &DnsFront,
    idle: Duration,
) -> std::io::Result<()> {
    let timeout =
        |what: &'static str| move |_| std::io::Error::new(std::io::ErrorKind::TimedOut, what);
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(idle, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            // A client closing between messages is the normal end.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        }
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        tokio::time::timeout(idle, stream.read_exact(&mut msg))
            .await
            .map_err(timeout("message"))??;
        let Some(out) = super::local::answer_from(front, msg, src, Protocol::Tcp).await else {
            continue;
        };
        let Ok(n) = u16::try_from(out.len()) else {
            tracing::debug!(%src, len = out.len(), "DNS TCP answer over 65535 bytes not sent");
            continue;
        };
        let mut framed = Vec::with_capacity(out.len() + 2);
        framed.extend_from_slice(&n.to_be_bytes());
        framed.extend_from_slice(&out);
        tokio::time::timeout(idle, stream.write_all(&framed))
            .await
            .map_err(timeout("answer not read"))??;
    }
}
