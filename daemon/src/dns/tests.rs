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
