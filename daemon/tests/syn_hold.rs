//! The SYN hold on real netfilter, inside network namespaces the test creates: a client's SYN to
//! a held address waits in NFQUEUE (no SYN-ACK, the server sees nothing), the daemon's marked
//! probe passes the hold, and on release the connection completes from the first SYN, without
//! the client's 1 s retransmission. Rules are removed; stale ones are cleaned at start.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use summon_daemon::net::hold::{remove_stale_rules, wait_until_answers, SynHold, RULE_COMMENT};

static NEXT: AtomicU32 = AtomicU32::new(0);

fn tools_ok() -> bool {
    let ok = [("ip", "-V"), ("iptables", "--version")]
        .iter()
        .all(|(t, v)| {
            Command::new(t)
                .arg(v)
                .output()
                .is_ok_and(|o| o.status.success())
        })
        // SAFETY: geteuid has no preconditions and cannot fail.
        && unsafe { libc::geteuid() } == 0;
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("the SYN hold tests need root, ip and iptables");
        }
        eprintln!("skipping: needs root, ip and iptables");
    }
    ok
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces joined by a veth pair: `client` (10.213.N.1) runs the hold, `server`
/// (10.213.N.2) listens. Deleted on drop.
struct Pair {
    client: String,
    server: String,
    server_ip: Ipv4Addr,
}

impl Pair {
    fn new() -> Pair {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}-{n}", std::process::id() % 100000);
        let p = Pair {
            client: format!("lvh-c-{tag}"),
            server: format!("lvh-s-{tag}"),
            server_ip: Ipv4Addr::new(10, 213, n as u8, 2),
        };
        sh(&["ip", "netns", "add", &p.client]);
        sh(&["ip", "netns", "add", &p.server]);
        let (a, b) = (
            format!("lvhc{n}x{}", std::process::id() % 1000),
            format!("lvhs{n}x{}", std::process::id() % 1000),
        );
        sh(&[
            "ip", "-n", &p.client, "link", "add", &a, "type", "veth", "peer", "name", &b, "netns",
            &p.server,
        ]);
        sh(&[
            "ip",
            "-n",
            &p.client,
            "addr",
            "add",
            &format!("10.213.{n}.1/30"),
            "dev",
            &a,
        ]);
        sh(&[
            "ip",
            "-n",
            &p.server,
            "addr",
            "add",
            &format!("10.213.{n}.2/30"),
            "dev",
            &b,
        ]);
        for (ns, dev) in [(&p.client, &a), (&p.server, &b)] {
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        p
    }

    fn iptables_rules(&self) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.client, "iptables", "-S"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.client])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.server])
            .output();
    }
}

/// Moves the calling thread into a named network namespace.
fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
    // SAFETY: setns on a valid namespace fd; affects only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// A TCP server in the server namespace that counts accepted connections and says "hi".
fn serve(ns: String, ip: Ipv4Addr, port: u16) -> Arc<AtomicUsize> {
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let (ready_tx, ready_rx) = channel();
    std::thread::spawn(move || {
        enter(&ns);
        let l = TcpListener::bind((ip, port)).unwrap();
        ready_tx.send(()).unwrap();
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            count.fetch_add(1, Ordering::SeqCst);
            let _ = s.write_all(b"hi");
        }
    });
    ready_rx.recv().unwrap();
    accepted
}

/// Runs `f` on a thread inside the namespace (threads it spawns stay there).
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter(&ns);
        f()
    })
    .join()
    .unwrap()
}

#[test]
fn held_syn_waits_then_connects_without_retransmit() {
    if !tools_ok() {
        return;
    }
    let pair = Pair::new();
    let ip = pair.server_ip;
    let accepted = serve(pair.server.clone(), ip, 8080);
    let rules_while_held = Arc::new(std::sync::Mutex::new(String::new()));
    let seen = rules_while_held.clone();
    let client_ns = pair.client.clone();
    let (elapsed, held, dropped, accepted_while_held, probe_ok) = in_ns(&pair.client, move || {
        let hold = SynHold::start(4301).expect("hold starts");
        hold.hold(ip).expect("rules inserted");
        *seen.lock().unwrap() =
            String::from_utf8_lossy(&Command::new("iptables").arg("-S").output().unwrap().stdout)
                .into_owned();
        let _ = client_ns;

        let (tx, rx) = channel();
        let started = Instant::now();
        std::thread::spawn(move || {
            let r =
                TcpStream::connect_timeout(&SocketAddr::from((ip, 8080)), Duration::from_secs(5))
                    .and_then(|mut s| {
                        let mut buf = [0u8; 2];
                        s.read_exact(&mut buf)?;
                        Ok(buf)
                    });
            tx.send((r.map_err(|e| e.to_string()), started.elapsed()))
                .unwrap();
        });
        std::thread::sleep(Duration::from_millis(400));
        // Held: the client has no answer and the server saw nothing.
        assert!(
            matches!(rx.try_recv(), Err(TryRecvError::Empty)),
            "connect finished while held"
        );
        let accepted_while_held = accepted.load(Ordering::SeqCst);
        // The daemon's own probe is marked and passes the hold.
        let probe_ok =
            wait_until_answers(ip, 8080, Duration::from_secs(2), Duration::from_millis(10));
        assert!(
            matches!(rx.try_recv(), Err(TryRecvError::Empty)),
            "probe released the client"
        );

        hold.release(ip).expect("released");
        let (r, elapsed) = rx.recv_timeout(Duration::from_secs(6)).unwrap();
        assert_eq!(r.expect("connection completes"), *b"hi");
        let s = hold.stats(ip);
        hold.shutdown();
        (elapsed, s.held, s.dropped, accepted_while_held, probe_ok)
    });
    let rules = rules_while_held.lock().unwrap().clone();
    assert!(
        rules.matches(RULE_COMMENT).count() == 2 && rules.contains("--queue-bypass"),
        "rules while held:\n{rules}"
    );
    assert_eq!(accepted_while_held, 0, "the server saw the held SYN");
    assert!(probe_ok, "the marked probe did not pass the hold");
    assert_eq!(
        held, 1,
        "exactly the first SYN was held: no retransmission reached the queue"
    );
    assert_eq!(dropped, 0);
    assert!(
        elapsed < Duration::from_millis(1000),
        "connect took {elapsed:?}: the SYN was retransmitted"
    );
    assert!(
        !pair.iptables_rules().contains(RULE_COMMENT),
        "rules left behind"
    );
}

#[test]
fn stale_rules_are_removed_at_start_and_bypass_protects_traffic() {
    if !tools_ok() {
        return;
    }
    let pair = Pair::new();
    let ip = pair.server_ip;
    let accepted = serve(pair.server.clone(), ip, 8081);
    let (bypass_ok, removed) = in_ns(&pair.client, move || {
        // A crashed daemon's rule, its queue read by nobody.
        for chain in ["OUTPUT", "FORWARD"] {
            sh(&[
                "iptables",
                "-I",
                chain,
                "-d",
                &format!("{ip}/32"),
                "-p",
                "tcp",
                "--syn",
                "-m",
                "comment",
                "--comment",
                RULE_COMMENT,
                "-j",
                "NFQUEUE",
                "--queue-num",
                "4302",
                "--queue-bypass",
            ]);
        }
        // --queue-bypass: nobody on the queue, and the connection still goes through at once.
        let t = Instant::now();
        let ok = TcpStream::connect_timeout(&SocketAddr::from((ip, 8081)), Duration::from_secs(3))
            .is_ok()
            && t.elapsed() < Duration::from_millis(900);
        let hold = SynHold::start(4303).expect("start cleans up");
        let left =
            String::from_utf8_lossy(&Command::new("iptables").arg("-S").output().unwrap().stdout)
                .into_owned();
        hold.shutdown();
        (
            ok,
            !left.contains(RULE_COMMENT) && remove_stale_rules().unwrap() == 0,
        )
    });
    assert!(bypass_ok, "a rule without a reader blackholed traffic");
    assert!(removed, "stale summon-hold rules survived start-up");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn unheld_addresses_and_released_holds_pass() {
    if !tools_ok() {
        return;
    }
    let pair = Pair::new();
    let ip = pair.server_ip;
    let accepted = serve(pair.server.clone(), ip, 8082);
    let ok = in_ns(&pair.client, move || {
        let hold = SynHold::start(4304).unwrap();
        // Hold and release before anyone connects: nothing is left in the way.
        hold.hold(ip).unwrap();
        hold.release(ip).unwrap();
        let a = TcpStream::connect_timeout(&SocketAddr::from((ip, 8082)), Duration::from_secs(3))
            .is_ok();
        // Holding another address does not touch this one.
        hold.hold(Ipv4Addr::new(10, 213, 250, 9)).unwrap();
        let b = TcpStream::connect_timeout(&SocketAddr::from((ip, 8082)), Duration::from_secs(3))
            .is_ok();
        hold.shutdown();
        let left =
            String::from_utf8_lossy(&Command::new("iptables").arg("-S").output().unwrap().stdout)
                .into_owned();
        a && b && !left.contains(RULE_COMMENT)
    });
    assert!(ok);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// The daemon's libvirt backend: an existing domain (libvirt's test driver) is summoned, a
/// client connects at once and is held, the "guest" (a listener at the domain's IP) comes up
/// later, the backend's probe sees it, reports NetReady and releases the client's first SYN.
#[test]
fn held_backend_releases_when_the_guest_answers() {
    use summon_daemon::driver::HeldBackend;
    use summon_launcher::libvirt::{DomainSource, LibvirtBackend, LibvirtConfig, StopMode};
    use summon_launcher::{Backend, InstanceEvent, InstanceSpec};

    if !tools_ok() {
        return;
    }
    let pair = Pair::new();
    let ip = pair.server_ip;
    let server_ns = pair.server.clone();
    let result = in_ns(&pair.client, move || {
        // libvirt's test driver keeps state while a connection is open: this one plays libvirtd.
        let host = virt::connect::Connect::open(Some("test:///default")).unwrap();
        host.define_domain_xml(
            "<domain type='test'><name>held-vm</name><memory unit='MiB'>16</memory>\
             <os><type arch='x86_64'>hvm</type></os></domain>",
        )
        .unwrap();
        let inner = LibvirtBackend::new(LibvirtConfig {
            uri: "test:///default".into(),
            domain: DomainSource::Existing("held-vm".into()),
            stop: StopMode::Destroy,
        })
        .unwrap();
        let hold = Arc::new(SynHold::start(4305).unwrap());
        let backend = HeldBackend::new(inner, Some(hold.clone()), ip, 8083, Duration::from_secs(5));
        let (ev_tx, ev_rx) = channel();
        let ev_tx = std::sync::Mutex::new(ev_tx);
        let spec = InstanceSpec {
            name: "held".into(),
            image: "/unused".into(),
            memory_mib: 16,
            nets: Vec::new(),
            blocks: Vec::new(),
            args: Vec::new(),
            limits: Default::default(),
        };
        let inst = backend
            .start(
                spec,
                Arc::new(move |e| {
                    let _ = ev_tx.lock().unwrap().send((e, Instant::now()));
                }),
            )
            .unwrap();
        let t0 = Instant::now();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let r =
                TcpStream::connect_timeout(&SocketAddr::from((ip, 8083)), Duration::from_secs(5));
            tx.send((r.is_ok(), Instant::now())).unwrap();
        });
        // The guest's network comes up 300 ms later.
        std::thread::sleep(Duration::from_millis(300));
        let early = rx.try_recv().is_ok();
        let accepted = serve(server_ns, ip, 8083);
        let (ok, connected_at) = rx.recv_timeout(Duration::from_secs(6)).unwrap();
        let ready_at = loop {
            match ev_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("NetReady")
            {
                (InstanceEvent::NetReady, at) => break at,
                _ => continue,
            }
        };
        let stats = hold.stats(ip);
        inst.stop().unwrap();
        let state = host
            .lookup_domain_by_name("held-vm")
            .unwrap()
            .is_active()
            .unwrap();
        let d = host.lookup_domain_by_name("held-vm").unwrap();
        let _ = d.undefine();
        hold.shutdown();
        let rules =
            String::from_utf8_lossy(&Command::new("iptables").arg("-S").output().unwrap().stdout)
                .into_owned();
        (
            early,
            ok,
            connected_at.duration_since(t0),
            ready_at <= connected_at + Duration::from_millis(50),
            stats.held,
            state,
            rules.contains(RULE_COMMENT),
            accepted.load(Ordering::SeqCst),
        )
    });
    let (early, ok, took, ready_first, held, active, rules_left, accepted) = result;
    assert!(
        !early,
        "the client connected before the guest was up: no hold"
    );
    assert!(ok, "the held client never connected");
    assert!(ready_first, "NetReady came after the client's connection");
    assert_eq!(held, 1, "one SYN held, none retransmitted");
    assert!(
        took < Duration::from_millis(1000),
        "connect took {took:?}: retransmitted"
    );
    assert!(!active, "stop destroyed the domain");
    assert!(!rules_left, "hold rules left behind");
    assert!(accepted >= 2, "probe and client both reached the guest");
}
