//! Connections: listening TCP sockets on one port, each with its request buffer; keep-alive
//! and pipelined requests are answered in order. smoltcp has no listen backlog, so a few
//! sockets more than are connected always listen, added as connections take them, up to the
//! most the heap holds: creating all of them at start-up would touch every socket's memory
//! before the first request, and each first touch of a page is a host fault.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use rt::net::smoltcp::iface::{SocketHandle, SocketSet};
use rt::net::smoltcp::socket::tcp;

use crate::response::{page, Response};
use http_request::Parse;

/// Most concurrent connections (one smoltcp socket each); fewer when memory is small.
pub const MAX_CONNECTIONS: usize = 64;
/// Sockets listening beyond those connected: the SYNs that may arrive at once (a browser opens
/// about six connections, `wrk -c16` sixteen) before the next poll adds more.
pub const LISTEN_AHEAD: usize = 16;
/// Worst-case heap use of one connection: its socket buffers and a full request buffer (which
/// the allocator rounds up to the next power of two).
const CONNECTION_COST: u64 = (RX_BUFFER + TX_BUFFER + 2 * REQUEST_LIMIT) as u64;
/// Largest request (head plus body) accepted; larger ones get 431 or 413.
pub const REQUEST_LIMIT: usize = 8 * 1024;
const RX_BUFFER: usize = 4 * 1024;
const TX_BUFFER: usize = 8 * 1024;
/// A response is only started when this much send buffer is free, so it is queued whole.
const RESPONSE_ROOM: usize = 2 * 1024;

struct Connection {
    handle: SocketHandle,
    buf: Vec<u8>,
    /// A response with `Connection: close` is queued; the socket closes once it is sent.
    closing: bool,
}

pub struct Server {
    name: String,
    port: u16,
    served: u64,
    conns: Vec<Connection>,
    /// The most sockets the heap holds (`conns` grows up to it).
    capacity: usize,
}

impl Server {
    /// Serves `port` with at most `capacity` connections ([`Server::capacity_for_heap`]).
    pub fn new(name: String, port: u16, capacity: usize, sockets: &mut SocketSet<'static>) -> Self {
        let mut server = Server {
            name,
            port,
            served: 0,
            conns: Vec::new(),
            capacity: capacity.max(1),
        };
        server.conns.reserve_exact(server.capacity);
        server.listen_ahead(sockets);
        server
    }

    /// The most connections the heap holds: half of it at most, so a small guest (--mem=2)
    /// still serves a few instead of failing an allocation under load.
    pub fn capacity_for_heap() -> usize {
        let fits = (rt::heap::unused() / 2 / CONNECTION_COST) as usize;
        fits.clamp(1, MAX_CONNECTIONS)
    }

    /// Adds listening sockets until `LISTEN_AHEAD` listen (or the capacity is reached); true
    /// if it added any. Listening before the stack first polls: a SYN already waiting in the
    /// tap (the client that summoned us) must find a listener, not earn a RST.
    fn listen_ahead(&mut self, sockets: &mut SocketSet<'static>) -> bool {
        let listening = self
            .conns
            .iter()
            .filter(|c| sockets.get::<tcp::Socket>(c.handle).is_listening())
            .count();
        let add = LISTEN_AHEAD
            .saturating_sub(listening)
            .min(self.capacity - self.conns.len());
        for _ in 0..add {
            let mut socket = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; RX_BUFFER]),
                tcp::SocketBuffer::new(vec![0; TX_BUFFER]),
            );
            let _ = socket.listen(self.port);
            self.conns.push(Connection {
                handle: sockets.add(socket),
                buf: Vec::new(),
                closing: false,
            });
        }
        add > 0
    }

    /// How many connections can be open at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Moves every connection forward; true if anything changed.
    pub fn step(&mut self, sockets: &mut SocketSet<'static>) -> bool {
        let mut progress = false;
        for i in 0..self.conns.len() {
            let handle = self.conns[i].handle;
            let socket = sockets.get_mut::<tcp::Socket>(handle);
            progress |= self.step_one(i, socket);
        }
        if self.conns.len() < self.capacity {
            progress |= self.listen_ahead(sockets);
        }
        progress
    }

    fn step_one(&mut self, i: usize, socket: &mut tcp::Socket<'static>) -> bool {
        if !socket.is_open() {
            // Closed or in TIME-WAIT: make it a listener again.
            let conn = &mut self.conns[i];
            conn.buf.clear();
            conn.closing = false;
            return socket.listen(self.port).is_ok();
        }
        if self.conns[i].closing {
            return false;
        }
        let mut progress = false;
        loop {
            let conn = &mut self.conns[i];
            if socket.can_recv() && conn.buf.len() <= REQUEST_LIMIT {
                let room = REQUEST_LIMIT + 1 - conn.buf.len();
                let _ = socket.recv(|data| {
                    let n = data.len().min(room);
                    conn.buf.extend_from_slice(&data[..n]);
                    (n, ())
                });
                progress = true;
            }
            if conn.buf.is_empty() {
                break;
            }
            if socket.send_capacity() - socket.send_queue() < RESPONSE_ROOM {
                break;
            }
            let (bytes, consumed, keep_alive) = match http_request::parse(&conn.buf, REQUEST_LIMIT)
            {
                Parse::Incomplete => {
                    if !socket.may_recv() {
                        // The peer stopped sending in the middle of a request.
                        socket.close();
                        conn.closing = true;
                        progress = true;
                    }
                    break;
                }
                Parse::Complete { request, len } => {
                    self.served += 1;
                    let response = route(&self.name, self.served, request.method, request.path);
                    let head_only = request.method == b"HEAD";
                    (
                        response.encode(request.keep_alive, head_only),
                        len,
                        request.keep_alive,
                    )
                }
                Parse::Refused(refusal) => {
                    self.served += 1;
                    let (code, reason) = refusal.status();
                    let body = format!("{code} {reason}\n");
                    (
                        Response::text(refusal.status(), body).encode(false, false),
                        conn.buf.len(),
                        false,
                    )
                }
            };
            let conn = &mut self.conns[i];
            // Room was checked above, so the whole response is queued.
            let _ = socket.send_slice(&bytes);
            conn.buf.drain(..consumed.min(conn.buf.len()));
            progress = true;
            if !keep_alive {
                socket.close();
                conn.closing = true;
                break;
            }
        }
        let conn = &self.conns[i];
        if !conn.closing && conn.buf.is_empty() && !socket.may_recv() && socket.may_send() {
            // The client closed its side and every request it sent is answered.
            socket.close();
            progress = true;
        }
        progress
    }
}

/// The response to a well-formed request; `served` counts it already.
fn route(name: &str, served: u64, method: &[u8], path: &[u8]) -> Response {
    if method != b"GET" && method != b"HEAD" {
        let mut r = Response::text(
            (405, "Method Not Allowed"),
            "405 Method Not Allowed\n".into(),
        );
        r.extra_header = Some("Allow: GET, HEAD\r\n");
        return r;
    }
    match path {
        b"/" => page(name, served),
        b"/healthz" => Response::text((200, "OK"), "ok\n".into()),
        b"/count" => Response::text((200, "OK"), format!("{served}\n")),
        _ => Response::text((404, "Not Found"), "404 Not Found\n".into()),
    }
}
