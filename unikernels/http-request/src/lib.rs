//! An HTTP/1.x request head parser over a byte buffer. Pure, allocation-free, and total: any
//! input gives `Incomplete`, a request, or the status to refuse it with.
//!
//! Its own `no_std` crate so that the `http` unikernel (built for x86_64-unknown-none) and the
//! host's tests (`tests/tests/http_parser.rs`, which drive its edge cases and hostile input much
//! harder than a tap can) compile the same source.

#![no_std]

/// Status codes the parser can refuse a request with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    BadRequest,
    PayloadTooLarge,
    HeadersTooLarge,
    NotImplemented,
    VersionNotSupported,
}

impl Refusal {
    pub fn status(self) -> (u16, &'static str) {
        match self {
            Refusal::BadRequest => (400, "Bad Request"),
            Refusal::PayloadTooLarge => (413, "Content Too Large"),
            Refusal::HeadersTooLarge => (431, "Request Header Fields Too Large"),
            Refusal::NotImplemented => (501, "Not Implemented"),
            Refusal::VersionNotSupported => (505, "HTTP Version Not Supported"),
        }
    }
}

/// A parsed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: &'a [u8],
    /// The target without its query string.
    pub path: &'a [u8],
    pub keep_alive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parse<'a> {
    /// More bytes are needed.
    Incomplete,
    /// A whole request (head and body) of `len` bytes.
    Complete {
        request: Request<'a>,
        len: usize,
    },
    Refused(Refusal),
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Where the head ends (just past its empty line), if it does.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(nl) = buf[i..].iter().position(|&b| b == b'\n') {
        let after = i + nl + 1;
        match buf.get(after..) {
            Some([b'\n', ..]) => return Some(after + 1),
            Some([b'\r', b'\n', ..]) => return Some(after + 2),
            _ => i = after,
        }
    }
    None
}

/// Parses one request from the start of `buf`; a request whose head or head plus body exceeds
/// `limit` bytes is refused.
pub fn parse(buf: &[u8], limit: usize) -> Parse<'_> {
    // RFC 9112 2.2: ignore empty lines before a request line.
    let mut skip = 0;
    loop {
        match &buf[skip..] {
            [b'\r', b'\n', ..] => skip += 2,
            [b'\n', ..] => skip += 1,
            [b'\r'] => return Parse::Incomplete,
            _ => break,
        }
    }
    let buf_all = buf;
    let buf = &buf[skip..];
    let Some(end) = head_end(buf) else {
        return if buf_all.len() > limit {
            Parse::Refused(Refusal::HeadersTooLarge)
        } else {
            Parse::Incomplete
        };
    };
    if skip + end > limit {
        return Parse::Refused(Refusal::HeadersTooLarge);
    }
    let mut lines = buf[..end]
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().unwrap_or(b"");
    let mut parts = request_line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Parse::Refused(Refusal::BadRequest);
    };
    if method.is_empty() || method.len() > 16 || !method.iter().all(|&b| is_tchar(b)) {
        return Parse::Refused(Refusal::BadRequest);
    }
    if !target.starts_with(b"/") || !target.iter().all(|&b| (0x21..0x7f).contains(&b)) {
        return Parse::Refused(Refusal::BadRequest);
    }
    let http11 = match version {
        b"HTTP/1.1" => true,
        b"HTTP/1.0" => false,
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            return Parse::Refused(Refusal::VersionNotSupported)
        }
        _ => return Parse::Refused(Refusal::BadRequest),
    };

    let mut keep_alive = http11;
    let mut content_length: Option<u64> = None;
    let mut host = false;
    for line in lines {
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Parse::Refused(Refusal::BadRequest);
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        // Empty names, whitespace before the colon and obsolete line folding are all refused.
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Parse::Refused(Refusal::BadRequest);
        }
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Parse::Refused(Refusal::BadRequest);
        }
        if name.eq_ignore_ascii_case(b"host") {
            if host {
                return Parse::Refused(Refusal::BadRequest);
            }
            host = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && !http11 {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let Some(n) = parse_decimal(value) else {
                return Parse::Refused(Refusal::BadRequest);
            };
            if content_length.is_some_and(|old| old != n) {
                return Parse::Refused(Refusal::BadRequest);
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Parse::Refused(Refusal::NotImplemented);
        }
    }
    if http11 && !host {
        return Parse::Refused(Refusal::BadRequest);
    }
    let head = (skip + end) as u64;
    let total = head.saturating_add(content_length.unwrap_or(0));
    if total > limit as u64 {
        return Parse::Refused(Refusal::PayloadTooLarge);
    }
    if (buf_all.len() as u64) < total {
        return Parse::Incomplete;
    }
    let path = match target.iter().position(|&b| b == b'?') {
        Some(q) => &target[..q],
        None => target,
    };
    Parse::Complete {
        request: Request {
            method,
            path,
            keep_alive,
        },
        len: total as usize,
    }
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}
