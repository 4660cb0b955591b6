//! Typed errors of the libvirt backend. Libvirt's own message is kept verbatim: operators know
//! those messages from `virsh`, and they name the real cause (permissions, missing firmware, ...).

use std::path::PathBuf;

/// What went wrong talking to libvirt or preparing a domain.
#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    /// A libvirt call failed; `message` is libvirt's own text.
    #[error("libvirt {uri}: {op}: {message}")]
    Call {
        uri: String,
        op: &'static str,
        /// libvirt's `virErrorNumber` (e.g. 42 = VIR_ERR_NO_DOMAIN).
        code: u32,
        message: String,
    },
    /// No domain of this name or UUID (libvirt's message does not always name it).
    #[error("libvirt {uri}: domain {domain}: {message}")]
    UnknownDomain {
        uri: String,
        domain: String,
        message: String,
    },
    /// The domain's XML from libvirt could not be read.
    #[error("libvirt {uri}: domain {domain}: unreadable XML: {reason}")]
    Xml {
        uri: String,
        domain: String,
        reason: String,
    },
    /// The spec asks for something a libvirt domain cannot do.
    #[error("libvirt backend: {0}")]
    Unsupported(String),
    /// The domain is in a state the request cannot start from (e.g. shutting down).
    #[error("libvirt {uri}: domain {domain} is {state}; cannot {op}")]
    State {
        uri: String,
        domain: String,
        state: String,
        op: &'static str,
    },
    /// Preparing the console log file failed.
    #[error("console log {}: {source}", path.display())]
    ConsoleLog {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// libvirt's VIR_ERR_NO_DOMAIN.
pub const VIR_ERR_NO_DOMAIN: u32 = 42;
/// libvirt's VIR_ERR_OPERATION_INVALID (e.g. destroying a domain that is not running).
pub const VIR_ERR_OPERATION_INVALID: u32 = 55;

impl LibvirtError {
    pub(crate) fn call(uri: &str, op: &'static str, e: virt::error::Error) -> LibvirtError {
        LibvirtError::Call {
            uri: uri.to_string(),
            op,
            code: e.code().to_raw(),
            message: e.message().to_string(),
        }
    }

    /// True when libvirt said the domain does not exist (unknown name/UUID, or a transient
    /// domain that has gone away).
    pub fn is_no_domain(&self) -> bool {
        match self {
            LibvirtError::Call { code, .. } => *code == VIR_ERR_NO_DOMAIN,
            LibvirtError::UnknownDomain { .. } => true,
            _ => false,
        }
    }
}
