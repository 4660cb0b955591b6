//! One libvirt connection per URI that survives connection loss and libvirtd restarts: every
//! call that fails on a dead connection reopens it and is tried once more. Domains are always
//! looked up again by UUID on the current connection, so no stale handle outlives a reconnect.

use std::sync::{Arc, Mutex};

use virt::connect::Connect;
use virt::domain::Domain;

use super::error::LibvirtError;

/// A reconnecting libvirt connection.
pub struct Conn {
    uri: String,
    current: Mutex<Option<Connect>>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("uri", &self.uri).finish()
    }
}

impl Conn {
    /// Opens the connection now, so that a bad URI or an unreachable host is reported when the
    /// service is configured rather than at its first summon.
    pub fn open(uri: &str) -> Result<Arc<Conn>, LibvirtError> {
        // libvirt's default handler prints every error to stderr; ours carry the message.
        static QUIET: std::sync::Once = std::sync::Once::new();
        QUIET.call_once(virt::error::clear_error_callback);
        let conn = Arc::new(Conn {
            uri: uri.to_string(),
            current: Mutex::new(None),
        });
        conn.connection()?;
        Ok(conn)
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Runs `f` on the connection; when it fails and the connection turns out to be dead
    /// (libvirtd restarted, remote host gone, connection closed), reconnects and runs it again.
    pub fn call<T>(
        &self,
        op: &'static str,
        f: impl Fn(&Connect) -> Result<T, virt::error::Error>,
    ) -> Result<T, LibvirtError> {
        let conn = self.connection()?;
        match f(&conn) {
            Ok(v) => Ok(v),
            Err(e) => {
                if conn.is_alive().unwrap_or(false) {
                    return Err(LibvirtError::call(&self.uri, op, e));
                }
                tracing::info!(uri = %self.uri, %op, "libvirt connection lost; reconnecting");
                self.forget(&conn);
                let conn = self.connection()?;
                f(&conn).map_err(|e| LibvirtError::call(&self.uri, op, e))
            }
        }
    }

    /// Runs `f` on the domain with this UUID, looked up on the current connection.
    pub fn with_domain<T>(
        &self,
        uuid: &str,
        op: &'static str,
        f: impl Fn(&Domain) -> Result<T, virt::error::Error>,
    ) -> Result<T, LibvirtError> {
        self.call(op, |c| {
            let d = c.lookup_domain_by_uuid_string(uuid)?;
            f(&d)
        })
    }

    /// Drops the current connection as if it had been lost; the next call reconnects.
    pub fn disconnect(&self) {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        *cur = None;
    }

    fn connection(&self) -> Result<Connect, LibvirtError> {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cur.as_ref() {
            return Ok(c.clone());
        }
        let c = Connect::open(Some(&self.uri))
            .map_err(|e| LibvirtError::call(&self.uri, "open connection", e))?;
        // Keepalive lets the client notice a dead remote (qemu+ssh://) instead of hanging.
        if !self.uri.starts_with("test:") {
            let _ = c.set_keep_alive(5, 3);
        }
        *cur = Some(c.clone());
        Ok(c)
    }

    fn forget(&self, dead: &Connect) {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: only compares the two raw pointers, never dereferences them.
        let same = cur
            .as_ref()
            .is_some_and(|c| unsafe { c.as_ptr() == dead.as_ptr() });
        if same {
            *cur = None;
        }
    }
}
