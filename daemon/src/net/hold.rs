//! SYN hold for instances whose NIC the daemon does not own (libvirt domains): while a domain
//! boots, new TCP connections to its IP are queued with an iptables `NFQUEUE` rule instead of
//! being dropped (a dropped SYN costs the client Linux's 1 s initial retransmission timeout).
//! When the guest answers, the held SYNs are accepted in order and the rule is removed.
//!
//! - The nftables `queue` statement is not available on our kernels; iptables (nft backend,
//!   through `nft_compat`) with the `NFQUEUE` target is. There is no maintained Rust library for
//!   xtables rules, so the rules are inserted by running `iptables`: once per cold summon, while
//!   the domain is being created (which takes hundreds of ms), so the cost is hidden.
//! - `--queue-bypass`: when no daemon listens on the queue (it died), packets pass as if the rule
//!   were not there: a dead daemon never blackholes traffic. Rules carry the comment
//!   `summon-hold`, and leftovers of a crashed daemon are deleted at start-up.
//! - Only SYNs are matched, and the daemon's own readiness probes carry [`PROBE_MARK`] so that
//!   they pass the hold.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The comment on every rule the hold inserts.
pub const RULE_COMMENT: &str = "summon-hold";
/// fwmark of the daemon's own probes ("sum"): they bypass the hold.
pub const PROBE_MARK: u32 = 0x73756d;
/// Held SYNs per address; more are dropped (their clients retransmit).
const MAX_HELD_PER_IP: usize = 1024;
/// How often the queue is read while something is held (nfq gives no fd to wait on).
const QUEUE_POLL: Duration = Duration::from_micros(250);
/// Chains a held address's SYNs can traverse: routed clients (FORWARD) and local ones (OUTPUT).
const CHAINS: [&str; 2] = ["FORWARD", "OUTPUT"];

#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("NFQUEUE {queue}: {what}: {source}")]
    Queue {
        queue: u16,
        what: &'static str,
        source: io::Error,
    },
    #[error("running iptables {args}: {reason}")]
    Iptables { args: String, reason: String },
    #[error("the SYN hold thread has stopped")]
    Gone,
}

enum Cmd {
    Hold(Ipv4Addr),
    /// Accept what is held for the address, and whatever arrives until `Forget`.
    Release(Ipv4Addr),
    /// The rules are gone: drain the queue once more and stop tracking the address.
    Forget(Ipv4Addr),
    Stop,
}

/// Per-address counters, for metrics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HoldStats {
    /// SYNs queued while held (each is released or, past the limit, dropped).
    pub held: u64,
    pub dropped: u64,
}

/// The daemon's SYN hold: one NFQUEUE queue, one thread reading it.
pub struct SynHold {
    queue: u16,
    cmds: Mutex<Sender<Cmd>>,
    stats: Arc<Mutex<HashMap<Ipv4Addr, HoldStats>>>,
    total_held: Arc<AtomicU64>,
    active: Mutex<Vec<Ipv4Addr>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl SynHold {
    /// Deletes stale `summon-hold` rules, binds NFQUEUE `queue` and starts the reader thread.
    pub fn start(queue: u16) -> Result<SynHold, HoldError> {
        Self::start_counted(queue, None)
    }

    /// As [`SynHold::start`], also counting held SYNs in `counter` (`summon_held_packets_total`).
    pub fn start_counted(
        queue: u16,
        counter: Option<prometheus::IntCounter>,
    ) -> Result<SynHold, HoldError> {
        remove_stale_rules()?;
        let qerr = |what| {
            move |source| HoldError::Queue {
                queue,
                what,
                source,
            }
        };
        let mut q = nfq::Queue::open().map_err(qerr("opening the netlink socket"))?;
        q.bind(queue)
            .map_err(qerr("binding (is another daemon using it?)"))?;
        // Headers are all the hold looks at.
        q.set_copy_range(queue, 64)
            .map_err(qerr("setting the copy range"))?;
        // A full kernel queue lets packets through rather than dropping them.
        q.set_fail_open(queue, true)
            .map_err(qerr("setting fail-open"))?;
        q.set_nonblocking(true);
        let (tx, rx) = channel();
        let stats = Arc::new(Mutex::new(HashMap::new()));
        let total_held = Arc::new(AtomicU64::new(0));
        let reader = Reader {
            queue: q,
            held: HashMap::new(),
            stats: stats.clone(),
            total_held: total_held.clone(),
            counter,
        };
        let thread = std::thread::Builder::new()
            .name("syn-hold".into())
            .spawn(move || reader.run(rx))
            .map_err(qerr("spawning its thread"))?;
        Ok(SynHold {
            queue,
            cmds: Mutex::new(tx),
            stats,
            total_held,
            active: Mutex::new(Vec::new()),
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// Starts holding new TCP connections to `ip` (before the DNS answer leaves).
    pub fn hold(&self, ip: Ipv4Addr) -> Result<(), HoldError> {
        self.send(Cmd::Hold(ip))?;
        let mut done = Vec::new();
        for chain in CHAINS {
            if let Err(e) = iptables(&rule_args("-I", chain, ip, self.queue)) {
                for chain in done {
                    let _ = iptables(&rule_args("-D", chain, ip, self.queue));
                }
                let _ = self.send(Cmd::Forget(ip));
                return Err(e);
            }
            done.push(chain);
        }
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if !active.contains(&ip) {
            active.push(ip);
        }
        Ok(())
    }

    /// Lets the held SYNs to `ip` through, in arrival order, and removes its rules.
    pub fn release(&self, ip: Ipv4Addr) -> Result<(), HoldError> {
        self.send(Cmd::Release(ip))?;
        let result = self.remove_rules(ip);
        self.send(Cmd::Forget(ip))?;
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|a| *a != ip);
        result
    }

    /// Counters for `ip` since the daemon started.
    pub fn stats(&self, ip: Ipv4Addr) -> HoldStats {
        let stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.get(&ip).copied().unwrap_or_default()
    }

    /// All SYNs held so far (`summon_held_packets_total`).
    pub fn total_held(&self) -> u64 {
        self.total_held.load(Ordering::Relaxed)
    }

    /// Releases everything, removes every rule and stops the reader (daemon exit).
    pub fn shutdown(&self) {
        let active: Vec<_> = self
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for ip in active {
            if let Err(e) = self.release(ip) {
                tracing::warn!(%ip, error = %e, "releasing SYN hold at exit");
            }
        }
        let _ = self.send(Cmd::Stop);
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }

    fn remove_rules(&self, ip: Ipv4Addr) -> Result<(), HoldError> {
        let mut first_err = None;
        for chain in CHAINS {
            if let Err(e) = iptables(&rule_args("-D", chain, ip, self.queue)) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn send(&self, cmd: Cmd) -> Result<(), HoldError> {
        self.cmds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(cmd)
            .map_err(|_| HoldError::Gone)
    }
}

impl Drop for SynHold {
    fn drop(&mut self) {
        self.shutdown();
    }
}

enum Held {
    Holding(Vec<nfq::Message>),
    Releasing,
}

struct Reader {
    queue: nfq::Queue,
    held: HashMap<Ipv4Addr, Held>,
    stats: Arc<Mutex<HashMap<Ipv4Addr, HoldStats>>>,
    total_held: Arc<AtomicU64>,
    counter: Option<prometheus::IntCounter>,
}

impl Reader {
    fn run(mut self, cmds: std::sync::mpsc::Receiver<Cmd>) {
        loop {
            let cmd = if self.held.is_empty() {
                // Nothing held means no rules: no packet can arrive; sleep until told.
                match cmds.recv() {
                    Ok(c) => Some(c),
                    Err(_) => return,
                }
            } else {
                self.drain();
                match cmds.recv_timeout(QUEUE_POLL) {
                    Ok(c) => Some(c),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            };
            match cmd {
                None => {}
                Some(Cmd::Hold(ip)) => {
                    self.held
                        .entry(ip)
                        .or_insert_with(|| Held::Holding(Vec::new()));
                }
                Some(Cmd::Release(ip)) => {
                    self.drain();
                    if let Some(Held::Holding(msgs)) = self.held.insert(ip, Held::Releasing) {
                        for m in msgs {
                            self.verdict(m, nfq::Verdict::Accept);
                        }
                    }
                }
                Some(Cmd::Forget(ip)) => {
                    self.drain();
                    if let Some(Held::Holding(msgs)) = self.held.remove(&ip) {
                        for m in msgs {
                            self.verdict(m, nfq::Verdict::Accept);
                        }
                    }
                }
                Some(Cmd::Stop) => {
                    for (_, h) in std::mem::take(&mut self.held) {
                        if let Held::Holding(msgs) = h {
                            for m in msgs {
                                self.verdict(m, nfq::Verdict::Accept);
                            }
                        }
                    }
                    return;
                }
            }
        }
    }

    /// Reads everything queued: SYNs to held addresses are kept, all else accepted.
    fn drain(&mut self) {
        loop {
            let msg = match self.queue.recv() {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the SYN hold queue");
                    return;
                }
            };
            let dst = ipv4_destination(msg.get_payload());
            match dst.and_then(|ip| self.held.get_mut(&ip).map(|h| (ip, h))) {
                Some((ip, Held::Holding(msgs))) => {
                    let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
                    let s = stats.entry(ip).or_default();
                    if msgs.len() < MAX_HELD_PER_IP {
                        s.held += 1;
                        self.total_held.fetch_add(1, Ordering::Relaxed);
                        if let Some(c) = &self.counter {
                            c.inc();
                        }
                        msgs.push(msg);
                    } else {
                        s.dropped += 1;
                        drop(stats);
                        self.verdict(msg, nfq::Verdict::Drop);
                    }
                }
                // Released, unknown or not IPv4: never hold what we do not own.
                _ => self.verdict(msg, nfq::Verdict::Accept),
            }
        }
    }

    fn verdict(&mut self, mut msg: nfq::Message, v: nfq::Verdict) {
        msg.set_verdict(v);
        if let Err(e) = self.queue.verdict(msg) {
            tracing::warn!(error = %e, "SYN hold verdict");
        }
    }
}

/// The destination of an IPv4 packet, or `None` for anything malformed or not IPv4.
pub fn ipv4_destination(packet: &[u8]) -> Option<Ipv4Addr> {
    let first = *packet.first()?;
    if first >> 4 != 4 || usize::from(first & 0x0f) * 4 < 20 || packet.len() < 20 {
        return None;
    }
    Some(Ipv4Addr::new(
        packet[16], packet[17], packet[18], packet[19],
    ))
}

fn rule_args(op: &str, chain: &str, ip: Ipv4Addr, queue: u16) -> Vec<String> {
    let mut a: Vec<String> = vec![op.into(), chain.into()];
    a.extend(
        [
            "-d",
            &format!("{ip}/32"),
            "-p",
            "tcp",
            "--syn",
            "-m",
            "mark",
            "!",
            "--mark",
            &format!("{PROBE_MARK:#x}"),
            "-m",
            "comment",
            "--comment",
            RULE_COMMENT,
            "-j",
            "NFQUEUE",
            "--queue-num",
            &queue.to_string(),
            "--queue-bypass",
        ]
        .map(String::from),
    );
    a
}

fn iptables(args: &[String]) -> Result<String, HoldError> {
    let out = Command::new("iptables")
        .arg("-w")
        .arg("5")
        .args(args)
        .output()
        .map_err(|e| HoldError::Iptables {
            args: args.join(" "),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(HoldError::Iptables {
            args: args.join(" "),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Deletes every `summon-hold` rule (a crashed daemon's leftovers); returns how many.
pub fn remove_stale_rules() -> Result<usize, HoldError> {
    let mut removed = 0;
    for chain in CHAINS {
        let listing = iptables(&["-S".into(), chain.into()])?;
        for line in listing.lines() {
            let Some(spec) = line.strip_prefix("-A ") else {
                continue;
            };
            if !spec.contains(&format!("--comment {RULE_COMMENT}")) {
                continue;
            }
            let mut args = vec!["-D".to_string()];
            args.extend(spec.split_whitespace().map(String::from));
            iptables(&args)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Whether `ip:port` accepts a TCP connection within `timeout`, tried every `interval`. The
/// probe is marked with [`PROBE_MARK`], so it passes the hold it is there to end.
pub fn wait_until_answers(ip: Ipv4Addr, port: u16, timeout: Duration, interval: Duration) -> bool {
    wait_until_answers_while(ip, port, timeout, interval, || true)
}

/// As [`wait_until_answers`], giving up early once `go_on` returns false (instance stopped).
pub fn wait_until_answers_while(
    ip: Ipv4Addr,
    port: u16,
    timeout: Duration,
    interval: Duration,
    go_on: impl Fn() -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::V4(SocketAddrV4::new(ip, port));
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !go_on() {
            return false;
        }
        if probe(&addr, left.min(Duration::from_millis(200))).is_ok() {
            return true;
        }
        std::thread::sleep(interval.min(deadline.saturating_duration_since(Instant::now())));
    }
}

fn probe(addr: &SocketAddr, timeout: Duration) -> io::Result<()> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.set_mark(PROBE_MARK)?;
    s.connect_timeout(&(*addr).into(), timeout)?;
    let stream: TcpStream = s.into();
    drop(stream);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_of_hostile_packets() {
        assert_eq!(ipv4_destination(&[]), None);
        assert_eq!(ipv4_destination(&[0x45; 19]), None);
        assert_eq!(ipv4_destination(&[0x60; 40]), None, "IPv6");
        assert_eq!(ipv4_destination(&[0x41; 40]), None, "IHL below 5");
        let mut p = [0u8; 20];
        p[0] = 0x45;
        p[16..20].copy_from_slice(&[10, 77, 0, 20]);
        assert_eq!(ipv4_destination(&p), Some(Ipv4Addr::new(10, 77, 0, 20)));
    }

    #[test]
    fn rules_are_marked_and_bypass() {
        let a = rule_args("-I", "OUTPUT", Ipv4Addr::new(10, 0, 0, 9), 7).join(" ");
        assert!(
            a.contains("--queue-bypass") && a.contains("--comment summon-hold"),
            "{a}"
        );
        assert!(
            a.contains("-d 10.0.0.9/32") && a.contains("--syn") && a.contains("! --mark 0x73756d")
        );
    }
}
