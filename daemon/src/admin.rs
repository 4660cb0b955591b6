//! The admin HTTP listener: /metrics (Prometheus text), /healthz, /v1/instances (JSON), and
//! POSTs that stop or suspend instances. A tiny HTTP/1.1 server: one request per connection,
//! bounded request size and time, a bounded number of connections, and with `token_file` a
//! bearer token on everything but /metrics and /healthz.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::cluster::Cluster;
use crate::registry::Registry;

const MAX_REQUEST: usize = 8192;
/// Connections served at once at most (a scraper and an operator need few); fewer when the fd
/// budget's admin share is smaller. More are closed at once.
pub const MAX_CONNECTIONS: usize = 16;
/// A connection that has not sent its whole request (and had it answered) by then is closed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("admin token file {path}: {source}", path = .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("admin token file {path} is empty", path = .path.display())]
    Empty { path: PathBuf },
}

/// The bearer token in `path` (surrounding white space removed).
pub fn read_token(path: &Path) -> Result<String, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(token.to_string())
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves admin requests, `max_connections` at once; with `token`, all but `GET /metrics` and
/// `GET /healthz` need it. With `cluster`, `/v1/instances` names each instance's owner and
/// `/v1/cluster` shows the cluster as this host sees it.
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    cluster: Option<Arc<Cluster>>,
    token: Option<String>,
    max_connections: usize,
) {
    let registry = Arc::new(registry);
    let token: Option<Arc<[u8]>> = token.map(|t| Arc::from(t.into_bytes()));
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "admin connection refused: {max_connections} already open");
            drop(stream);
            continue;
        };
        let registry = registry.clone();
        let cluster = cluster.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(
                REQUEST_TIMEOUT,
                handle(stream, &registry, cluster.as_deref(), token.as_deref()),
            )
            .await;
            drop(permit);
        });
    }
}

/// Compares in time independent of where the first difference is (the length still shows).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the request head carries `Authorization: Bearer <token>`.
fn authorized(head: &str, token: &[u8]) -> bool {
    head.lines().skip(1).any(|line| {
        let Some((name, value)) = line.split_once(':') else {
            return false;
        };
        if !name.trim().eq_ignore_ascii_case("authorization") {
            return false;
        }
        let value = value.trim();
        match value.split_once(' ') {
            Some((scheme, cred)) if scheme.eq_ignore_ascii_case("bearer") => {
                ct_eq(cred.trim().as_bytes(), token)
            }
            _ => false,
        }
    })
}

async fn handle(
    mut stream: TcpStream,
    registry: &Registry,
    cluster: Option<&Cluster>,
    token: Option<&[u8]>,
) -> std::io::Result<()> {
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
    let open = matches!(method, "GET" | "HEAD") && matches!(path, "/metrics" | "/healthz");
    if let Some(token) = token {
        if !open && !authorized(&head, token) {
            return respond(&mut stream, 401, "text/plain", "bearer token required\n").await;
        }
    }
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
            let mut body = tokio::task::spawn_blocking(move || reg.render_metrics())
                .await
                .unwrap_or_default();
            if let Some(c) = cluster {
                body.push_str(&c.render_metrics());
            }
            respond(&mut stream, 200, "text/plain; version=0.0.4", &body).await
        }
        "/healthz" => respond(&mut stream, 200, "text/plain", "ok\n").await,
        "/v1/instances" => {
            let rows = registry.instances();
            let body = match cluster {
                None => serde_json::to_string_pretty(&rows),
                Some(c) => {
                    let rows: Vec<_> = rows
                        .into_iter()
                        .map(|i| {
                            let owner = c.owner(&i.service);
                            (i, owner)
                        })
                        .map(|(info, owner)| OwnedInstance { info, owner })
                        .collect();
                    serde_json::to_string_pretty(&rows)
                }
            }
            .unwrap_or_else(|_| "[]".into());
            respond(&mut stream, 200, "application/json", &(body + "\n")).await
        }
        "/v1/cluster" => match cluster {
            Some(c) => {
                let body = serde_json::to_string_pretty(&c.view()).unwrap_or_default();
                respond(&mut stream, 200, "application/json", &(body + "\n")).await
            }
            None => respond(&mut stream, 404, "text/plain", "standalone: no [cluster]\n").await,
        },
        _ => respond(&mut stream, 404, "text/plain", "not found\n").await,
    }
}

/// A `/v1/instances` row of a cluster host: the instance here, and which host owns the
/// service in the cluster.
#[derive(serde::Serialize)]
struct OwnedInstance {
    #[serde(flatten)]
    info: crate::registry::InstanceInfo,
    owner: Option<String>,
}

async fn respond(
    stream: &mut TcpStream,
    code: u16,
    ctype: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let auth = if code == 401 {
        "WWW-Authenticate: Bearer\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{auth}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Fetches a path from an admin listener (used by `summond status`).
pub async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> std::io::Result<String> {
    request(addr, "GET", path, token).await
}

/// One request to an admin listener, with the bearer token when given; the body of a 200.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_is_checked_exactly() {
        let head =
            |auth: &str| format!("POST /v1/instances/web/stop HTTP/1.1\r\nHost: x\r\n{auth}\r\n");
        assert!(authorized(
            &head("Authorization: Bearer s3cret\r\n"),
            b"s3cret"
        ));
        assert!(authorized(
            &head("authorization:   bearer  s3cret \r\n"),
            b"s3cret"
        ));
        assert!(!authorized(
            &head("Authorization: Bearer s3cre\r\n"),
            b"s3cret"
        ));
        assert!(!authorized(
            &head("Authorization: Bearer s3cretX\r\n"),
            b"s3cret"
        ));
        assert!(!authorized(
            &head("Authorization: Basic s3cret\r\n"),
            b"s3cret"
        ));
        assert!(!authorized(
            &head("X-Authorization: Bearer s3cret\r\n"),
            b"s3cret"
        ));
        assert!(!authorized(&head(""), b"s3cret"));
        // The request line is not a header.
        assert!(!authorized(
            "Authorization: Bearer s3cret\r\n\r\n",
            b"s3cret"
        ));
    }

    #[test]
    fn token_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, " \n").unwrap();
        assert!(read_token(&empty)
            .unwrap_err()
            .to_string()
            .contains("empty"));
        let missing = dir.path().join("missing");
        assert!(read_token(&missing)
            .unwrap_err()
            .to_string()
            .contains(&missing.display().to_string()));
        let good = dir.path().join("good");
        std::fs::write(&good, "abc\n").unwrap();
        assert_eq!(read_token(&good).unwrap(), "abc");
    }
}
