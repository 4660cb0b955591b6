//! Responses: the page that names the instance, /healthz, /count, and errors.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// What to answer.
pub struct Response {
    pub status: (u16, &'static str),
    pub content_type: &'static str,
    pub body: String,
    pub extra_header: Option<&'static str>,
}

impl Response {
    pub fn text(status: (u16, &'static str), body: String) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body,
            extra_header: None,
        }
    }

    /// The bytes on the wire; `head_only` for HEAD requests.
    pub fn encode(&self, keep_alive: bool, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nServer: summon-http\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n{}\r\n",
            self.status.0,
            self.status.1,
            self.content_type,
            self.body.len(),
            if keep_alive { "keep-alive" } else { "close" },
            self.extra_header.unwrap_or(""),
        )
        .into_bytes();
        if !head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// The home page. `name` is restricted to [A-Za-z0-9._-] by the argument parser, so it needs
/// no escaping.
pub fn page(name: &str, served: u64) -> Response {
    Response {
        status: (200, "OK"),
        content_type: "text/html; charset=utf-8",
        body: format!(
            "<!doctype html>\n<html><head><title>{name}</title></head>\n<body>\n<h1>{name}</h1>\n\
             <p>instance: {name}</p>\n<p>Served by the http unikernel of Summon (rt on hvt).</p>\n\
             <p>requests served: {served}</p>\n</body></html>\n"
        ),
        extra_header: None,
    }
}
