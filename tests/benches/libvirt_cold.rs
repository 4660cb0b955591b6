//! Cold summon through libvirt/qemu beside the embedded KVM launcher, in one summond, one run:
//! DNS query sent → answer, and → first HTTP byte of a GET sent right after the answer, over
//! LIBVIRT_BENCH_RUNS (default 30) cold summons each (instance stopped through the admin API
//! before every run). Prints p50/p90/p99/max in ms and how many connections needed a SYN
//! retransmission (TCP_INFO).
//!
//! `cargo bench -p summon-tests --bench libvirt_cold` (root, libvirtd via scripts/setup-host,
//! /dev/kvm). summond runs in the root namespace (see tests/tests/daemon_libvirt_http.rs).

use summon_test_support::stats;
use summon_tests::daemon as daemon_support;
use summon_tests::libvirt as libvirt_support;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use daemon_support::{a_records, admin_post, query_udp, wait_until};
use hickory_proto::rr::RecordType;
use libvirt_support::*;
use stats::{ms, pct};

fn main() {
    let runs: usize = std::env::var("LIBVIRT_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    if !prerequisites() {
        return;
    }
    let admin_port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let kvm_ip = Ipv4Addr::new(10, 213, 210, 21);
    let services = format!(
        "[[service]]\nname = \"lvweb\"\nbackend = \"libvirt\"\nimage = \"{}\"\nip = \"{GUEST}\"\nmemory_mib = 32\nargs = [\"--port=80\"]\nidle_timeout = \"600s\"\nlibvirt = {{ uri = \"{URI}\" }}\n\n\
         [[service]]\nname = \"kvmweb\"\nimage = \"{}\"\nip = \"{kvm_ip}\"\nmemory_mib = 8\nargs = [\"--port=80\"]\nidle_timeout = \"600s\"\n",
        summon_tests::virtio_image("http").display(),
        summon_tests::image("http").display(),
    );
    let d = RootDaemon::start_with(&format!("[admin]\nlisten = \"{admin}\""), &services);
    println!("cold summon, {runs} runs each: DNS query → answer, and → first HTTP byte (ms)");
    println!(
        "{:<28} {:>8} {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} {:>8} | {:>6}",
        "backend", "ans p50", "p90", "p99", "max", "byte p50", "p90", "p99", "max", "≥1 rtx"
    );
    for (label, name, ip) in [
        ("libvirt/qemu (pc + qboot)", "lvweb", GUEST),
        ("embedded KVM launcher", "kvmweb", kvm_ip),
    ] {
        let mut answer = Vec::new();
        let mut byte = Vec::new();
        let mut retransmitted = 0;
        for _ in 0..runs {
            let _ = admin_post(admin, &format!("/v1/instances/{name}/stop"));
            if name == "lvweb" {
                assert!(
                    wait_until(Duration::from_secs(15), || !domain_exists("summon-lvweb")),
                    "domain not stopped"
                );
            }
            std::thread::sleep(Duration::from_millis(100));
            let t0 = Instant::now();
            let a = a_records(
                &query_udp(d.dns, &format!("{name}.svc.test."), RecordType::A).expect("DNS"),
            );
            let t_answer = t0.elapsed();
            assert_eq!(a.first().map(|r| r.0), Some(ip), "{}", d.log());
            let (text, _, first_byte, retrans) = get_now(SocketAddr::from((ip, 80)));
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            answer.push(ms(t_answer));
            byte.push(ms(t_answer + first_byte));
            if retrans > 0 {
                retransmitted += 1;
            }
        }
        println!(
            "{label:<28} {:>8.1} {:>8.1} {:>8.1} {:>8.1} | {:>8.1} {:>8.1} {:>8.1} {:>8.1} | {:>6}",
            pct(&mut answer, 50),
            pct(&mut answer, 90),
            pct(&mut answer, 99),
            pct(&mut answer, 100),
            pct(&mut byte, 50),
            pct(&mut byte, 90),
            pct(&mut byte, 99),
            pct(&mut byte, 100),
            retransmitted
        );
        let _ = admin_post(admin, &format!("/v1/instances/{name}/stop"));
    }
    drop(d);
}
