//! DNS over UDP: summond's own receive/answer/send loop for a zone socket, in place of
//! hickory-server's (which reads one datagram per syscall and spawns a task per query, so a
//! legitimate query waits behind every flood query queued before it, each parsed, answered
//! and sent by itself).
//!
//! One round: what the socket holds, up to [`ROUND_BATCHES`] `recvmmsg` of [`BATCH`]
//! datagrams. A cheap pre-check on the raw bytes (a whole header, not a response, a source
//! that can be answered) drops what hickory-server would have dropped after parsing. The rest
//! are answered in round-robin order over source prefixes (every prefix's first query, then
//! every prefix's second…), so one source's backlog does not sit in front of another's query;
//! the replies to every prefix's first query leave in one `sendmmsg` before the rest are
//! handled. Each query goes through [`super::local::answer_from`], as over TCP; response-rate
//! limiting decides before a response is built. An answer that is ready at once (the zone's
//! own answers, warm summons, errors, RRL) is made inline; one that must wait (a boot, a
//! forward) continues in a task of its own, which sends its reply itself, so nothing a client
//! asks can stall the loop.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hickory_server::net::xfer::Protocol;
use socket2::{SockAddr, SockAddrStorage};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::task::JoinSet;

use super::rrl::{Prefixes, SourcePrefix};
use super::DnsFront;

/// Datagrams per `recvmmsg` (and at most as many replies per `sendmmsg`).
pub const BATCH: usize = 32;

/// `recvmmsg` calls per round at most: the window the round-robin order spans. After a stall
/// (the daemon descheduled on a busy host) the socket holds a backlog; reading several batches
/// before answering lets a query from another source be answered among the first, not after
/// every flood query that arrived before it.
const ROUND_BATCHES: usize = 4;

/// The socket's receive buffer, asked for beyond `net.core.rmem_max` when summond may
/// (CAP_NET_ADMIN): the default 208 KiB holds about 10 ms of a 20,000 queries/s flood, and a
/// stall longer than that on a busy host would drop legitimate queries with the flood's.
const RECEIVE_BUFFER: usize = 4 << 20;

/// Largest datagram read whole, as hickory-server's UDP stream: longer ones are cut here
/// (and then fail to parse: FORMERR).
const DATAGRAM: usize = 4096;

/// Queries waiting for a boot or a forward in their own task, per socket; beyond, a query that
/// would wait is dropped (and counted) as a full socket buffer would drop it.
pub const MAX_WAITING: usize = 4096;

/// After a receive error other than "nothing to read" (which should not persist), a pause
/// instead of a spin.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// How long a flush waits for room in the socket's send buffer before it drops the replies.
const SEND_WAIT: Duration = Duration::from_millis(10);

/// Serves `socket` until the task is dropped (which drops the queries still waiting).
/// `prefixes` is the unit of fairness (the RRL's source prefix).
pub async fn serve(socket: UdpSocket, front: DnsFront, prefixes: Prefixes) {
    enlarge_receive_buffer(&socket);
    let socket = Arc::new(socket);
    let front = Arc::new(front);
    let shed = front.metrics().dns_udp_shed.clone();
    let mut rx = RecvBatch::new();
    let mut out = Vec::with_capacity(BATCH);
    let mut order: Vec<(u32, usize)> = Vec::with_capacity(rx.capacity());
    let mut ranks: HashMap<SourcePrefix, u32> = HashMap::with_capacity(rx.capacity());
    let mut waiting = JoinSet::new();
    loop {
        let n = match rx.fill(&socket) {
            Ok(0) => {
                if let Err(e) = socket.readable().await {
                    tracing::debug!(error = %e, "DNS UDP readiness");
                    tokio::time::sleep(ERROR_PAUSE).await;
                }
                continue;
            }
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "DNS UDP receive");
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        while waiting.try_join_next().is_some() {}
        let answerable = (0..n).filter_map(|i| {
            let src = rx.source(i).filter(|_| worth_answering(rx.datagram(i)))?;
            Some((i, prefixes.of(src.ip())))
        });
        let first_round = fair_order(answerable, &mut ranks, &mut order);
        for (k, &(_, i)) in order.iter().enumerate() {
            if k == first_round && k > 0 {
                flush(&socket, &mut out).await;
            }
            let Some(src) = rx.source(i) else { continue };
            let mut answer = Box::pin(answer(front.clone(), rx.datagram(i).to_vec(), src));
            match answer
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
            {
                Poll::Ready(Some(reply)) => out.push((SockAddr::from(src), reply)),
                Poll::Ready(None) => {}
                Poll::Pending if waiting.len() >= MAX_WAITING => shed.inc(),
                Poll::Pending => {
                    // Polled again at once in its task, which registers the real waker.
                    let socket = socket.clone();
                    waiting.spawn(async move {
                        if let Some(reply) = answer.await {
                            if let Err(e) = socket.send_to(&reply, src).await {
                                tracing::debug!(%src, error = %e, "sending DNS UDP answer");
                            }
                        }
                    });
                }
            }
        }
        flush(&socket, &mut out).await;
    }
}

/// Fills `order` with (rank, index) of the datagrams given as (index, source prefix), in the
/// order to answer them: by rank (a datagram's place among its prefix's in this batch), then
/// by arrival, i.e. round-robin over prefixes. Returns how many are first of their prefix.
fn fair_order(
    datagrams: impl Iterator<Item = (usize, SourcePrefix)>,
    ranks: &mut HashMap<SourcePrefix, u32>,
    order: &mut Vec<(u32, usize)>,
) -> usize {
    ranks.clear();
    order.clear();
    for (i, prefix) in datagrams {
        let rank = ranks.entry(prefix).or_insert(0);
        order.push((*rank, i));
        *rank += 1;
    }
    order.sort_unstable();
    ranks.len()
}

async fn answer(front: Arc<DnsFront>, packet: Vec<u8>, src: SocketAddr) -> Option<Vec<u8>> {
    super::local::answer_from(&front, packet, src, Protocol::Udp).await
}

/// Whether a datagram could get an answer at all: hickory-server drops anything without a
/// whole header and any response (a reflection loop otherwise), after parsing it.
fn worth_answering(datagram: &[u8]) -> bool {
    const QR: u8 = 0x80;
    datagram.len() >= 12 && datagram[2] & QR == 0
}

/// Whether a reply to `src` can go anywhere (hickory-server's check): not port 0, not an
/// unspecified or broadcast address.
fn answerable(src: &SocketAddr) -> bool {
    src.port() != 0
        && match src.ip().to_canonical() {
            IpAddr::V4(a) => !a.is_unspecified() && !a.is_broadcast(),
            IpAddr::V6(a) => !a.is_unspecified(),
        }
}

/// Sends `out` (destination, reply) with `sendmmsg`, [`BATCH`] at a time, and empties it. A
/// reply the kernel refuses is skipped; when the send buffer stays full for [`SEND_WAIT`], the
/// rest are dropped as the network would drop them.
async fn flush(socket: &UdpSocket, out: &mut Vec<(SockAddr, Vec<u8>)>) {
    let mut sent = 0;
    while sent < out.len() {
        let rest = &out[sent..];
        match socket.try_io(Interest::WRITABLE, || send_batch(socket.as_raw_fd(), rest)) {
            Ok(n) => sent += n.max(1),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if tokio::time::timeout(SEND_WAIT, socket.writable())
                    .await
                    .is_err()
                {
                    tracing::debug!(dropped = rest.len(), "DNS UDP send buffer full");
                    break;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "sending DNS UDP answer");
                sent += 1;
            }
        }
    }
    out.clear();
}

/// One `sendmmsg` of up to [`BATCH`] of `out`: how many went.
fn send_batch(fd: RawFd, out: &[(SockAddr, Vec<u8>)]) -> io::Result<usize> {
    let n = out.len().min(BATCH);
    // SAFETY: iovec and mmsghdr are plain C structs for which all zeroes (null pointers,
    // zero lengths) is a valid value.
    let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (i, (dst, reply)) in out[..n].iter().enumerate() {
        iovs[i] = libc::iovec {
            iov_base: reply.as_ptr().cast_mut().cast(),
            iov_len: reply.len(),
        };
        let h = &mut hdrs[i].msg_hdr;
        h.msg_name = dst.as_ptr().cast_mut().cast();
        h.msg_namelen = dst.len();
        h.msg_iov = &mut iovs[i];
        h.msg_iovlen = 1;
    }
    // SAFETY: the first `n` headers point at `n` live addresses and `n` iovecs, each naming a
    // live reply buffer of its length; sendmmsg only reads through them (the pointers made
    // mutable above are never written through) and writes each header's msg_len.
    let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), n as libc::c_uint, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as usize)
}

/// Asks for [`RECEIVE_BUFFER`]: forced when summond may, else as far as `rmem_max` allows.
fn enlarge_receive_buffer(socket: &UdpSocket) {
    let size = libc::c_int::try_from(RECEIVE_BUFFER).unwrap_or(libc::c_int::MAX);
    let set = |opt| {
        // SAFETY: setsockopt reads exactly size_of::<c_int>() bytes from a live c_int.
        let r = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    if let Err(e) = set(libc::SO_RCVBUFFORCE).or_else(|_| set(libc::SO_RCVBUF)) {
        tracing::debug!(error = %e, "DNS UDP receive buffer");
    }
    let got = socket2::SockRef::from(socket).recv_buffer_size();
    tracing::debug!(asked = RECEIVE_BUFFER, got = ?got.ok(), "DNS UDP receive buffer");
}

/// The buffers of one round: [`ROUND_BATCHES`] × [`BATCH`] datagrams of up to [`DATAGRAM`]
/// bytes and their sources.
struct RecvBatch {
    bufs: Box<[[u8; DATAGRAM]]>,
    addrs: Box<[SockAddrStorage]>,
    /// Per datagram of the round: its length and its source, if one that can be answered.
    got: Box<[(usize, Option<SocketAddr>)]>,
}

impl RecvBatch {
    fn new() -> RecvBatch {
        let n = ROUND_BATCHES * BATCH;
        RecvBatch {
            bufs: vec![[0u8; DATAGRAM]; n].into_boxed_slice(),
            addrs: (0..n).map(|_| SockAddrStorage::zeroed()).collect(),
            got: vec![(0, None); n].into_boxed_slice(),
        }
    }

    fn capacity(&self) -> usize {
        self.got.len()
    }

    /// Reads what `socket` holds, up to the round's capacity, one `recvmmsg` at a time: how
    /// many datagrams (0 when none; the socket's readiness is then cleared).
    fn fill(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let mut n = 0;
        while n < self.capacity() {
            match socket.try_io(Interest::READABLE, || self.recv(socket.as_raw_fd(), n)) {
                Ok(0) => break,
                Ok(got) => n += got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // What was read still gets its answers; the error comes back next time.
                Err(_) if n > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// One non-blocking `recvmmsg` into slots `from..from + BATCH`: how many datagrams arrived
    /// (`WouldBlock` when none).
    fn recv(&mut self, fd: RawFd, from: usize) -> io::Result<usize> {
        let slots = (self.capacity() - from).min(BATCH);
        // SAFETY: plain C structs, valid all zeroes (see `send_batch`).
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for k in 0..slots {
            let i = from + k;
            iovs[k] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: DATAGRAM,
            };
            let h = &mut hdrs[k].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut SockAddrStorage).cast();
            h.msg_namelen = self.addrs[i].size_of();
            h.msg_iov = &mut iovs[k];
            h.msg_iovlen = 1;
        }
        // SAFETY: each of the first `slots` headers points at its own iovec naming a buffer
        // of DATAGRAM bytes and at its own address storage of msg_namelen bytes, all owned by
        // `self` or this frame and alive for the call; the kernel writes only within them.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                slots as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = r as usize;
        for (k, h) in hdrs.iter().enumerate().take(n) {
            let i = from + k;
            let namelen = h.msg_hdr.msg_namelen;
            let storage = std::mem::replace(&mut self.addrs[i], SockAddrStorage::zeroed());
            let src = (namelen <= storage.size_of()).then(|| {
                // SAFETY: the kernel wrote a socket address of this family and length into
                // this storage in the recvmmsg above (the length checked to fit).
                unsafe { SockAddr::new(storage, namelen) }
            });
            let src = src.and_then(|a| a.as_socket()).filter(answerable);
            self.got[i] = ((h.msg_len as usize).min(DATAGRAM), src);
        }
        Ok(n)
    }

    fn datagram(&self, i: usize) -> &[u8] {
        &self.bufs[i][..self.got[i].0]
    }

    /// The source of datagram `i` of the last receive, if it can be answered.
    fn source(&self, i: usize) -> Option<SocketAddr> {
        self.got[i].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_answered_round_robin_over_source_prefixes() {
        let (a, b, c) = (
            SourcePrefix::V4(1),
            SourcePrefix::V6(1),
            SourcePrefix::V4(3),
        );
        let batch = [a, a, a, b, a, c, b];
        let (mut ranks, mut order) = (HashMap::new(), Vec::new());
        let first = fair_order(batch.iter().copied().enumerate(), &mut ranks, &mut order);
        let idx: Vec<usize> = order.iter().map(|&(_, i)| i).collect();
        assert_eq!(idx, [0, 3, 5, 1, 6, 2, 4]);
        assert_eq!(first, 3);
        // Reused buffers start afresh; skipped datagrams keep their indices.
        let first = fair_order([(2, b), (9, b)].into_iter(), &mut ranks, &mut order);
        assert_eq!(order, [(0, 2), (1, 9)]);
        assert_eq!(first, 1);
    }

    #[test]
    fn pre_check_drops_what_hickory_would_drop() {
        assert!(!worth_answering(&[]));
        assert!(!worth_answering(&[0; 11]));
        assert!(worth_answering(&[0; 12]));
        let mut response = [0u8; 12];
        response[2] = 0x80;
        assert!(!worth_answering(&response));
        assert!(!answerable(&"127.0.0.1:0".parse().unwrap()));
        assert!(!answerable(&"0.0.0.0:53".parse().unwrap()));
        assert!(!answerable(&"255.255.255.255:53".parse().unwrap()));
        assert!(!answerable(&"[::]:53".parse().unwrap()));
        assert!(!answerable(&"[::ffff:0.0.0.0]:53".parse().unwrap()));
        assert!(answerable(&"192.0.2.1:53000".parse().unwrap()));
        assert!(answerable(&"[2001:db8::1]:53000".parse().unwrap()));
    }
}
