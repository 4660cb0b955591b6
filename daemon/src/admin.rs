//! The admin HTTP listener: /metrics (Prometheus text), /healthz, /v1/instances (JSON).
//! A tiny HTTP/1.1 server: one request per connection, bounded request size and time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::registry::Registry;

const MAX_REQUEST: usize = 8192;

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

pub async fn serve(listener: TcpListener, registry: Registry) {
    let registry = Arc::new(registry);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), handle(stream, &registry)).await;
        });
    }
}

async fn handle(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            return respond(&mut stream, 431, "text/plain", "request too large\n").await;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method == "POST" {
        // POST /v1/instances/NAME/stop: destroy the instance now; .../suspend: pause it
        // (operators, benchmarks).
        let rest = path.strip_prefix("/v1/instances/");
        let (name, mode) = match rest {
            Some(r) if r.ends_with("/stop") => {
                (r.strip_suffix("/stop"), crate::config::StopMode::Destroy)
            }
            Some(r) => (r.strip_suffix("/suspend"), crate::config::StopMode::Suspend),
            None => (None, crate::config::StopMode::Destroy),
        };
        return match name.and_then(|n| registry.get(&n.to_ascii_lowercase())) {
            Some(slot) => {
                let stopped = registry.stop(&slot, mode, "admin request").await;
                let body = if stopped {
                    "stopped\n"
                } else {
                    "not running\n"
                };
                respond(&mut stream, 200, "text/plain", body).await
            }
            None => respond(&mut stream, 404, "text/plain", "no such service\n").await,
        };
    }
    if method != "GET" && method != "HEAD" {
        return respond(
            &mut stream,
            405,
            "text/plain",
            "GET, or POST .../stop or .../suspend\n",
        )
        .await;
    }
    match path {
        "/metrics" => {
            // Reads the live instances' quota groups (cgroupfs): off the async workers.
            let reg = registry.clone();
            let body = tokio::task::spawn_blocking(move || reg.render_metrics())
                .await
                .unwrap_or_default();
            respond(&mut stream, 200, "text/plain; version=0.0.4", &body).await
        }
        "/healthz" => respond(&mut stream, 200, "text/plain", "ok\n").await,
        "/v1/instances" => {
            let body =
                serde_json::to_string_pretty(&registry.instances()).unwrap_or_else(|_| "[]".into());
            respond(&mut stream, 200, "application/json", &(body + "\n")).await
        }
        _ => respond(&mut stream, 404, "text/plain", "not found\n").await,
    }
}

async fn respond(
    stream: &mut TcpStream,
    code: u16,
    ctype: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Fetches a path from an admin listener (used by `summond status`).
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    request(addr, "GET", path).await
}

/// One request to an admin listener; the body of a 200 response.
pub async fn request(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("malformed HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!(
            "admin answered: {}",
            head.lines().next().unwrap_or("")
        )));
    }
    Ok(body.to_string())
}
