//! DNS answers through the real handler, in-process (no sockets, no KVM).

use std::net::Ipv4Addr;
use std::path::Path;
use std::str::FromStr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use crate::config::Config;
use crate::testkit;

fn config() -> Config {
    let img = std::env::temp_dir().join("summon-dns-test.hvt");
    std::fs::write(&img, b"x").unwrap();
    let src = format!(
        "[dns]\nlisten = [\"127.0.0.1:5300\"]\nzone = \"svc.test.\"\nttl = 9\n\
         [network]\nsubnet = \"10.77.0.0/16\"\ngateway = \"10.77.0.1\"\n\
         [limits]\nbackoff_initial = \"1h\"\n\
         [[service]]\nname = \"web\"\nimage = \"{}\"\nip = \"10.77.0.10\"\n",
        img.display()
    );
    Config::parse(&src, Path::new("/")).unwrap()
}

fn query(name: &str, qtype: RecordType, edns: Option<u8>) -> Vec<u8> {
    let mut m = Message::new(77, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_str(name).unwrap(), qtype));
    if let Some(v) = edns {
        let mut e = Edns::new();
        e.set_version(v);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

async fn ask(packet: &[u8]) -> Option<Message> {
    let front = testkit::front(&config());
    let bytes = super::local::answer(&front, packet).await?;
    Some(Message::from_vec(&bytes).expect("well-formed response"))
}

#[tokio::test]
async fn answers_by_name_and_type() {
    let m = ask(&query("svc.test.", RecordType::SOA, None))
        .await
        .unwrap();
    assert_eq!(m.metadata.id, 77);
    assert!(m.metadata.authoritative);
    assert!(matches!(&m.answers[0].data, RData::SOA(s) if s.minimum == 9));

    let m = ask(&query("WEB.svc.test.", RecordType::AAAA, None))
        .await
        .unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty() && m.authorities.len() == 1);

    let m = ask(&query("nope.svc.test.", RecordType::A, Some(0)))
        .await
        .unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.edns.is_some(), "EDNS answered with EDNS");

    let m = ask(&query("example.com.", RecordType::A, None))
        .await
        .unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);

    let m = ask(&query("ns.svc.test.", RecordType::A, None))
        .await
        .unwrap();
    assert!(matches!(&m.answers[0].data, RData::A(a) if a.0 == Ipv4Addr::new(10, 77, 0, 1)));
}

#[tokio::test]
async fn a_failed_summon_is_servfail() {
    let m = ask(&query("web.svc.test.", RecordType::A, None))
        .await
        .unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(m.answers.is_empty());
}

#[tokio::test]
async fn protocol_errors() {
    let m = ask(&query("svc.test.", RecordType::SOA, Some(1)))
        .await
        .unwrap();
    // 16 is both BADVERS and BADSIG; the parser names it BADSIG.
    assert_eq!(u16::from(m.metadata.response_code), 16);
    assert!(m.edns.is_some());

    let mut two = Message::new(5, MessageType::Query, OpCode::Query);
    two.add_query(Query::query(
        Name::from_str("a.svc.test.").unwrap(),
        RecordType::A,
    ));
    two.add_query(Query::query(
        Name::from_str("b.svc.test.").unwrap(),
        RecordType::A,
    ));
    let m = ask(&two.to_vec().unwrap()).await.unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);

    let mut upd = Message::new(6, MessageType::Query, OpCode::Update);
    upd.add_query(Query::query(
        Name::from_str("svc.test.").unwrap(),
        RecordType::SOA,
    ));
    let m = ask(&upd.to_vec().unwrap()).await.unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NotImp);

    let valid = query("web.svc.test.", RecordType::A, None);
    let m = ask(&valid[..valid.len() - 3]).await.unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    assert!(ask(&valid[..5]).await.is_none(), "no header: dropped");

    let mut loop_ = valid[..12].to_vec();
    loop_.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
    let m = ask(&loop_).await.unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
}

#[tokio::test]
async fn questions_with_pointers_outside_the_question_are_reencoded() {
    // The fuzzer's find: 32 questions, or a question whose name points forward into the
    // additional section, must not produce a response whose question points at garbage.
    let crash = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fuzz/regressions/many-questions-with-forward-pointers"
    ))
    .unwrap();
    let front = testkit::front(&config());
    if let Some(bytes) = super::local::answer(&front, &crash).await {
        Message::from_vec(&bytes).expect("well-formed response");
    }

    // A question name ending in a pointer into the header (offset 2: the flags). The response's
    // flags differ from the query's, so echoing the raw bytes would make a broken name.
    let mut p = vec![0, 9, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    p.extend_from_slice(&[1, b'a', 0xc0, 2, 0, 1, 0, 1]);
    let asked = Message::from_vec(&p).expect("hickory accepts the query");
    let m = ask(&p).await.unwrap();
    assert_eq!(m.queries, asked.queries);
}

fn config_with(dns_extra: &str, rrl: &str) -> Config {
    let img = std::env::temp_dir().join("summon-dns-test.hvt");
    std::fs::write(&img, b"x").unwrap();
    let src = format!(
        "[dns]\nlisten = [\"127.0.0.1:5300\"]\nzone = \"svc.test.\"\nttl = 9\n{dns_extra}\n\
         [dns.rrl]\n{rrl}\n\
         [network]\nsubnet = \"10.77.0.0/16\"\ngateway = \"10.77.0.1\"\n\
         [[service]]\nname = \"web\"\nimage = \"{}\"\nip = \"10.77.0.10\"\n",
        img.display()
    );
    Config::parse(&src, Path::new("/")).unwrap()
}

async fn ask_from(
    front: &super::DnsFront,
    packet: &[u8],
    src: &str,
    protocol: hickory_server::net::xfer::Protocol,
) -> Option<Message> {
    let bytes =
        super::local::answer_from(front, packet.to_vec(), src.parse().unwrap(), protocol).await?;
    Some(Message::from_vec(&bytes).expect("well-formed response"))
}

#[tokio::test]
async fn forwarding_only_for_allowed_sources_and_within_the_cap() {
    use hickory_server::net::xfer::Protocol::Udp;
    // An upstream that never answers: a forward holds its slot for the 2 s timeout.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let up = silent.local_addr().unwrap();
    let cfg = config_with(
        &format!("upstream = [\"{up}\"]\nmax_forwards = 1\nforward_allow = [\"192.0.2.0/24\"]"),
        "",
    );
    let front = testkit::front(&cfg);
    let q = query("example.com.", RecordType::A, None);
    let m = ask_from(&front, &q, "198.51.100.1:5353", Udp)
        .await
        .unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    let m = ask_from(&front, &q, "127.0.0.1:5353", Udp).await.unwrap();
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::Refused,
        "loopback is not in the list"
    );

    let first = ask_from(&front, &q, "192.0.2.7:5353", Udp);
    let second = async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let t = std::time::Instant::now();
        let m = ask_from(&front, &q, "192.0.2.8:5353", Udp).await.unwrap();
        (m, t.elapsed())
    };
    let (first, (second, waited)) = tokio::join!(first, second);
    // The second forward finds the only slot taken: SERVFAIL at once, not after the timeout.
    assert_eq!(second.metadata.response_code, ResponseCode::ServFail);
    assert!(waited < std::time::Duration::from_secs(1), "{waited:?}");
    assert_eq!(
        first.unwrap().metadata.response_code,
        ResponseCode::ServFail
    );
    let rejected = |r: &str| {
        front
            .metrics()
            .dns_forwards_rejected
            .with_label_values(&[r])
            .get()
    };
    assert_eq!((rejected("not_allowed"), rejected("cap")), (2, 1));
    // A query inside the zone never needs the allow list.
    let m = ask_from(
        &front,
        &query("svc.test.", RecordType::SOA, None),
        "198.51.100.1:1",
        Udp,
    )
    .await
    .unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
}

#[tokio::test]
async fn rrl_drops_and_slips_over_udp_only() {
    use hickory_server::net::xfer::Protocol::{Tcp, Udp};
    let cfg = config_with("", "rate = 2\nslip = 2\nwhitelist = []");
    let front = testkit::front(&cfg);
    let soa = query("svc.test.", RecordType::SOA, Some(0));
    let mut got = Vec::new();
    for _ in 0..8 {
        got.push(ask_from(&front, &soa, "192.0.2.1:1000", Udp).await);
    }
    let full = got
        .iter()
        .flatten()
        .filter(|m| !m.metadata.truncation)
        .count();
    let slipped: Vec<&Message> = got
        .iter()
        .flatten()
        .filter(|m| m.metadata.truncation)
        .collect();
    assert_eq!(full, 2, "the burst of rate = 2");
    assert_eq!(slipped.len(), 3, "every second of the 6 limited");
    assert_eq!(got.iter().filter(|m| m.is_none()).count(), 3);
    for m in slipped {
        assert!(m.answers.is_empty() && m.authorities.is_empty());
        assert_eq!(m.queries.len(), 1, "the question is echoed");
        assert_eq!(m.metadata.id, 77);
    }
    // TCP is never limited; another /24 has its own budget.
    for _ in 0..5 {
        let m = ask_from(&front, &soa, "192.0.2.1:1001", Tcp).await.unwrap();
        assert!(!m.metadata.truncation && m.answers.len() == 1);
    }
    let m = ask_from(&front, &soa, "192.0.3.1:1000", Udp).await.unwrap();
    assert!(!m.metadata.truncation && m.answers.len() == 1);
    let rrl = |a: &str| front.metrics().dns_rrl.with_label_values(&[a]).get();
    assert_eq!((rrl("dropped"), rrl("slipped")), (3, 3));
}

#[tokio::test]
async fn udp_answers_are_truncated_to_the_clients_payload_size() {
    use hickory_proto::rr::Record;
    use hickory_server::net::xfer::Protocol::{Tcp, Udp};
    // An upstream whose answer (60 A records, about 1 KiB) is over 512 bytes.
    let upstream = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let up = upstream.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok((n, from)) = upstream.recv_from(&mut buf).await {
            let q = Message::from_vec(&buf[..n]).unwrap();
            let mut m = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
            m.add_queries(q.queries.clone());
            for i in 0..60u8 {
                let name = Name::from_str("example.com.").unwrap();
                let a = RData::A(Ipv4Addr::new(192, 0, 2, i).into());
                m.add_answer(Record::from_rdata(name, 60, a));
            }
            upstream.send_to(&m.to_vec().unwrap(), from).await.unwrap();
        }
    });
    let front = testkit::front(&config_with(&format!("upstream = [\"{up}\"]"), ""));
    let plain = query("example.com.", RecordType::A, None);
    let big = {
        let mut m = Message::from_vec(&query("example.com.", RecordType::A, Some(0))).unwrap();
        m.edns.as_mut().unwrap().set_max_payload(4096);
        m.to_vec().unwrap()
    };
    let src = "127.0.0.1:5353";
    let bytes = |p: &[u8], protocol| {
        let front = front.clone();
        let p = p.to_vec();
        async move {
            super::local::answer_from(&front, p, src.parse().unwrap(), protocol)
                .await
                .unwrap()
        }
    };

    // Without EDNS over UDP: at most 512 bytes, TC=1 so the client retries over TCP.
    let b = bytes(&plain, Udp).await;
    let m = Message::from_vec(&b).unwrap();
    assert!(b.len() <= 512, "{}", b.len());
    assert!(m.metadata.truncation && m.answers.len() < 60, "{m:?}");
    // Over TCP, and over UDP to a client that takes 4096 bytes: all of it.
    for (p, protocol) in [(&plain, Tcp), (&big, Udp)] {
        let m = Message::from_vec(&bytes(p, protocol).await).unwrap();
        assert!(!m.metadata.truncation, "{m:?}");
        assert_eq!(m.answers.len(), 60);
    }
}
