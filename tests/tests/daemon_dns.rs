//! summond's DNS answers that need no guest: apex SOA/NS, NODATA without booting, NXDOMAIN
//! with SOA, REFUSED outside the zone, forwarding to an upstream, TCP, and `dig` against it.

use summon_tests::daemon as daemon_support;

use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use daemon_support::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use summon_tests::netns::NetNs;

fn soa_in_authority(m: &Message) -> bool {
    m.authorities
        .iter()
        .any(|r| r.record_type() == RecordType::SOA && r.name == Name::from_str(ZONE).unwrap())
}

#[test]
fn zone_answers_without_booting() {
    if !prerequisites("daemon DNS test")
        || !summon_tests::require::check("dig", summon_tests::require::tool("dig"))
    {
        return;
    }
    let d = Daemon::start(
        "dns",
        &config(30, &[], "", &http_service("web", "10.77.0.10", "")),
    );

    let soa = d.query("svc.test.", RecordType::SOA);
    assert_eq!(soa.metadata.response_code, ResponseCode::NoError);
    assert!(soa.metadata.authoritative);
    assert!(matches!(&soa.answers[..], [r] if r.record_type() == RecordType::SOA));

    let ns = d.query("SVC.test.", RecordType::NS);
    assert!(
        matches!(&ns.answers[..], [r] if matches!(&r.data, RData::NS(n) if n.0 == Name::from_str("ns.svc.test.").unwrap()))
    );
    let mut glue = ns.clone();
    glue.answers = ns.additionals.clone();
    assert_eq!(a_records(&glue), vec![(Ipv4Addr::new(10, 77, 0, 1), 30)]);
    let ns_a = d.query("ns.svc.test.", RecordType::A);
    assert_eq!(a_records(&ns_a), vec![(Ipv4Addr::new(10, 77, 0, 1), 30)]);

    for qtype in [
        RecordType::AAAA,
        RecordType::MX,
        RecordType::TXT,
        RecordType::ANY,
    ] {
        let m = d.query("web.svc.test.", qtype);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{qtype}");
        assert!(m.answers.is_empty(), "{qtype}: {:?}", m.answers);
        assert!(soa_in_authority(&m), "{qtype}: NODATA carries the SOA");
    }
    let apex_txt = d.query("svc.test.", RecordType::TXT);
    assert!(apex_txt.answers.is_empty() && soa_in_authority(&apex_txt));

    for name in ["nope.svc.test.", "a.web.svc.test.", "x.y.z.svc.test."] {
        let m = d.query(name, RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert!(m.metadata.authoritative && soa_in_authority(&m), "{name}");
    }

    let out = d.query("example.com.", RecordType::A);
    assert_eq!(out.metadata.response_code, ResponseCode::Refused);
    assert!(out.answers.is_empty());

    // Same over TCP.
    let t = d.query_tcp("nope.svc.test.", RecordType::A);
    assert_eq!(t.metadata.response_code, ResponseCode::NXDomain);
    let t = d.query_tcp("web.svc.test.", RecordType::AAAA);
    assert_eq!(t.metadata.response_code, ResponseCode::NoError);
    assert!(t.answers.is_empty());
    assert_eq!(
        d.query_tcp("example.org.", RecordType::A)
            .metadata
            .response_code,
        ResponseCode::Refused
    );
    // EDNS is answered with EDNS.
    assert!(t.edns.is_some());

    // None of that booted anything.
    assert_eq!(d.metric("summon_boots_total", &[]), 0.0);
    assert!(d.taps().is_empty());
    assert!(
        d.metric(
            "summon_dns_queries_total",
            &[("qtype", "AAAA"), ("rcode", "NOERROR")]
        ) >= 2.0
    );
    assert!(d.metric("summon_dns_queries_total", &[("rcode", "NXDOMAIN")]) >= 4.0);
    assert!(d.metric("summon_dns_queries_total", &[("rcode", "REFUSED")]) >= 2.0);

    // A real DNS tool over TCP, and an A query over TCP that boots the service.
    let out =
        d.ns.command("dig")
            .args([
                "@127.0.0.1",
                "-p",
                "5300",
                "+tcp",
                "+norec",
                "WEB.svc.test",
                "A",
            ])
            .output()
            .expect("dig");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("status: NOERROR") && text.contains("flags: qr aa"),
        "{text}"
    );
    assert!(text.contains("30\tIN\tA\t10.77.0.10"), "{text}");
    assert_eq!(d.metric("summon_boots_total", &[("service", "web")]), 1.0);
}

#[test]
fn names_outside_the_zone_are_forwarded() {
    if !prerequisites("daemon forwarding test") {
        return;
    }
    let ns = NetNs::new("fwd");
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicU32::new(0));
    let up = upstream(&ns, 5301, stop.clone(), seen.clone());
    let d = Daemon::start_in(
        ns,
        &config(
            10,
            &["127.0.0.1:5301"],
            "",
            &http_service("web", "10.77.0.10", ""),
        ),
    );
    let m = d.query("www.example.com.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(!m.metadata.authoritative && m.metadata.recursion_available);
    assert_eq!(a_records(&m), vec![(Ipv4Addr::new(192, 0, 2, 53), 42)]);
    let m = d.query_tcp("other.example.", RecordType::A);
    assert_eq!(a_records(&m), vec![(Ipv4Addr::new(192, 0, 2, 53), 42)]);
    let m = d.query("www.example.com.", RecordType::MX);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    // In-zone names never go upstream.
    let before = seen.load(Ordering::Relaxed);
    assert_eq!(
        d.query("nope.svc.test.", RecordType::A)
            .metadata
            .response_code,
        ResponseCode::NXDomain
    );
    assert_eq!(seen.load(Ordering::Relaxed), before);
    assert_eq!(before, 3);
    stop.store(true, Ordering::Relaxed);
    up.join().unwrap();
    // A dead upstream is SERVFAIL, not silence.
    let m = d.query("www.example.net.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    let _: SocketAddr = DNS.parse().unwrap();
}
