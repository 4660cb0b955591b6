//! The `http` unikernel's request parser (the `http-request` crate), compiled for the host: it
//! is plain `core` code, so its edge cases and hostile input can be driven much harder here
//! than over a tap.

use http_request::{parse, Parse, Refusal, Request};
use summon_tests::rng::Rng;

const LIMIT: usize = 8 * 1024;

fn complete(input: &[u8]) -> (Request<'_>, usize) {
    match parse(input, LIMIT) {
        Parse::Complete { request, len } => (request, len),
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
    }
}

fn refused(input: &[u8]) -> Refusal {
    match parse(input, LIMIT) {
        Parse::Refused(r) => r,
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
    }
}

#[test]
fn well_formed_requests() {
    let (r, len) = complete(b"GET /a/b?x=1 HTTP/1.1\r\nHost: h\r\n\r\nGET /next");
    assert_eq!(
        (r.method, r.path, r.keep_alive, len),
        (&b"GET"[..], &b"/a/b"[..], true, 34)
    );
    let (r, _) = complete(b"HEAD / HTTP/1.1\r\nhost:h\r\nConnection: Close\r\n\r\n");
    assert_eq!((r.method, r.keep_alive), (&b"HEAD"[..], false));
    let (r, _) = complete(b"GET / HTTP/1.0\r\n\r\n");
    assert!(!r.keep_alive);
    let (r, _) = complete(b"GET / HTTP/1.0\r\nConnection: foo, keep-alive\r\n\r\n");
    assert!(r.keep_alive);
    // Bare LF line ends and leading empty lines are tolerated.
    let (_, len) = complete(b"\r\n\nGET / HTTP/1.1\nHost: h\n\n");
    assert_eq!(len, 27);
    // A body is part of the request.
    let (_, len) = complete(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET");
    assert_eq!(len, 50);
}

#[test]
fn every_prefix_of_a_request_is_incomplete() {
    let req = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nbody";
    for n in 0..req.len() {
        assert_eq!(parse(&req[..n], LIMIT), Parse::Incomplete, "prefix {n}");
    }
    assert!(matches!(parse(req, LIMIT), Parse::Complete { len, .. } if len == req.len()));
}

#[test]
fn malformed_requests_are_refused_with_400() {
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET / HTTP/1.1 x\r\nHost: h\r\n\r\n",
        b"GET x HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nHost: i\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\x01\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"G\xc3\xa9T / HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /\x7f HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET / FTP/1.1\r\nHost: h\r\n\r\n",
    ] {
        assert_eq!(
            refused(bad),
            Refusal::BadRequest,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(
        refused(b"GET / HTTP/2.0\r\n\r\n"),
        Refusal::VersionNotSupported
    );
    assert_eq!(
        refused(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"),
        Refusal::NotImplemented
    );
}

#[test]
fn size_limits() {
    let mut head = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
    while head.len() <= LIMIT {
        head.extend_from_slice(b"X: y\r\n");
    }
    assert_eq!(refused(&head), Refusal::HeadersTooLarge);
    head.extend_from_slice(b"\r\n");
    assert_eq!(refused(&head), Refusal::HeadersTooLarge);
    assert_eq!(
        refused(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 8192\r\n\r\n"),
        Refusal::PayloadTooLarge
    );
    // Exactly at the limit is fine.
    let mut req = b"GET / HTTP/1.1\r\nHost: h\r\nX: ".to_vec();
    req.resize(LIMIT - 4, b'a');
    req.extend_from_slice(b"\r\n\r\n");
    assert_eq!(req.len(), LIMIT);
    assert!(matches!(
        parse(&req, LIMIT),
        Parse::Complete { len: LIMIT, .. }
    ));
}

#[test]
fn hostile_input_never_panics_and_never_overreads() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let alphabet = b"GETPOSH /:\r\n\t 0123456789HTTP/1.Content-Length:Host\x00\xff,?";
    let seeds: [&[u8]; 3] = [
        b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
        b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    ];
    for i in 0..200_000u32 {
        let mut input: Vec<u8> = if i % 2 == 0 {
            let len = (rng.next() % 200) as usize;
            (0..len)
                .map(|_| alphabet[(rng.next() % alphabet.len() as u64) as usize])
                .collect()
        } else {
            let mut v = seeds[(rng.next() % 3) as usize].to_vec();
            for _ in 0..=(rng.next() % 4) {
                let at = (rng.next() % v.len() as u64) as usize;
                match rng.next() % 3 {
                    0 => v[at] = rng.next() as u8,
                    1 => {
                        v.remove(at);
                    }
                    _ => v.insert(at, alphabet[(rng.next() % alphabet.len() as u64) as usize]),
                }
            }
            v
        };
        if i % 7 == 0 {
            input.truncate((rng.next() % (input.len() as u64 + 1)) as usize);
        }
        let limit = if i % 5 == 0 { 16 } else { LIMIT };
        if let Parse::Complete { len, request } = parse(&input, limit) {
            assert!(len <= input.len() && len <= limit, "{input:?}");
            assert!(request.path.starts_with(b"/"));
        }
    }
}
