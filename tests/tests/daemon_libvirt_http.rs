//! The libvirt cold path end to end with our own service: a DNS query to summond starts a
//! transient libvirt/qemu domain running `http.virtio`; an HTTP request sent right after the
//! answer is held (NFQUEUE) until the guest answers and then served from its first SYN, never
//! retransmitted (checked with TCP_INFO); idle reaping destroys the domain and its tap; SIGTERM
//! leaves no domain, tap or iptables rule.
//!
//! Unlike the other daemon tests, summond runs in the root network namespace here: libvirtd and
//! the QEMU it starts live there and open the daemon's tap by name, which a tap inside a test
//! namespace would hide from them. The test uses its own subnet (10.213.210.0/24), DNS port and
//! names, refuses to run when summond's interface prefix is in use, and checks it left nothing.
//! Fails under CI=true when libvirtd or the images are missing.

use summon_tests::daemon as daemon_support;
use summon_tests::libvirt as libvirt_support;

use std::net::SocketAddr;
use std::time::Duration;

use daemon_support::{a_records, http_get, query_udp, wait_until};
use hickory_proto::rr::RecordType;
use libvirt_support::*;

#[test]
fn dns_summons_transient_http_virtio_domain_held_syn_and_idle_reap() {
    if !prerequisites() {
        return;
    }
    let console =
        std::env::temp_dir().join(format!("summon-lvhttp-console-{}", std::process::id()));
    std::fs::create_dir_all(&console).unwrap();
    let service = format!(
        "[[service]]\nname = \"lvweb\"\nbackend = \"libvirt\"\nimage = \"{}\"\nip = \"{GUEST}\"\nmemory_mib = 32\nargs = [\"--port=80\"]\nidle_timeout = \"2s\"\nlibvirt = {{ uri = \"{URI}\", console_dir = \"{}\" }}\n",
        summon_tests::virtio_image("http").display(),
        console.display()
    );
    let ready_ip = std::net::Ipv4Addr::new(10, 213, 210, 22);
    let service = format!(
        "{service}\n[[service]]\nname = \"lvready\"\nbackend = \"libvirt\"\nimage = \"{}\"\nip = \"{ready_ip}\"\nmemory_mib = 32\nargs = [\"--port=80\"]\nreply = \"ready\"\nready_timeout = \"20s\"\nidle_timeout = \"60s\"\nlibvirt = {{ uri = \"{URI}\", console_dir = \"{}\" }}\n",
        summon_tests::virtio_image("http").display(),
        console.display()
    );
    let admin_port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let mut d = RootDaemon::start_with(&format!("[admin]\nlisten = \"{admin}\""), &service);
    let addr = SocketAddr::from((GUEST, 80));
    for round in 0..2 {
        assert!(
            !domain_exists("summon-lvweb"),
            "round {round}: domain before the query"
        );
        let a = a_records(&query_udp(d.dns, "lvweb.svc.test.", RecordType::A).expect("DNS"));
        assert_eq!(a.first().map(|r| r.0), Some(GUEST), "{}", d.log());
        // Right after the answer: the domain is still booting; the SYN is held, not lost.
        let (text, connected, first_byte, retrans) = get_now(addr);
        eprintln!("round {round}: connect {connected:?}, first byte {first_byte:?}, SYN retransmissions {retrans}");
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert_eq!(
            retrans, 0,
            "the SYN was retransmitted: held packets were lost"
        );
        assert!(domain_exists("summon-lvweb"));
        assert_eq!(links(), vec!["sm-lvweb".to_string()]);
        // Idle (no queries, no traffic for 2 s): destroyed with its tap.
        assert!(
            wait_until(Duration::from_secs(12), || !domain_exists("summon-lvweb")
                && links().is_empty()),
            "not reaped:\n{}",
            d.log()
        );
        assert_eq!(hold_rules(), 0, "hold rules left after release");
    }
    // reply = "ready": the answer leaves only once the guest answered the daemon's probe.
    let a = a_records(&query_udp(d.dns, "lvready.svc.test.", RecordType::A).expect("DNS"));
    assert_eq!(a.first().map(|r| r.0), Some(ready_ip), "{}", d.log());
    let instances = http_get(admin, "/v1/instances").expect("admin");
    let entry = &instances[instances
        .find("\"service\": \"lvready\"")
        .expect("lvready listed")..];
    let entry = &entry[..entry.find('}').unwrap_or(entry.len())];
    assert!(
        entry.contains("\"net_ready\": true"),
        "answered before the guest was ready: {entry}"
    );
    let (text, _, _, retrans) = get_now(SocketAddr::from((ready_ip, 80)));
    assert!(text.starts_with("HTTP/1.1 200") && retrans == 0, "{text}");
    let metrics = http_get(admin, "/metrics").expect("metrics");
    assert!(
        metrics.contains("summon_held_packets_total"),
        "held-packets metric missing"
    );
    // SIGTERM with instances running: everything goes.
    query_udp(d.dns, "lvweb.svc.test.", RecordType::A).expect("DNS");
    assert!(wait_until(Duration::from_secs(15), || domain_exists(
        "summon-lvweb"
    )));
    let status = d.terminate();
    assert!(status.success(), "summond exit {status}:\n{}", d.log());
    assert!(!domain_exists("summon-lvweb"), "domain left after SIGTERM");
    assert!(
        !domain_exists("summon-lvready"),
        "domain left after SIGTERM"
    );
    assert!(links().is_empty(), "taps left: {:?}", links());
    assert_eq!(hold_rules(), 0, "iptables rules left after SIGTERM");
    let _ = std::fs::remove_dir_all(&console);
}
