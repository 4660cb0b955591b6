//! The embedded hvt VMM on KVM.

pub mod elf;
pub mod image_error;
pub mod manifest;

/// Errors of the embedded KVM backend.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("not implemented yet")]
    Unimplemented,
}
