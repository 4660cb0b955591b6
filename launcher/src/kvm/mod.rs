//! The embedded hvt VMM on KVM.

/// Errors of the embedded KVM backend.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("not implemented yet")]
    Unimplemented,
}
