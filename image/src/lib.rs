//! The hvt image: what an ELF file must be before the launcher loads a byte of it.
//!
//! Its own crate, as `linux-loader` is in rust-vmm, so that the checks build and are fuzzed
//! (`image/fuzz`) without KVM or libvirt, and so that anything that only reads images (the
//! tests, tools) need not link a VMM. It depends on nothing but the ABI crate.

pub mod elf;
pub mod error;
pub mod manifest;

pub use elf::{ElfImage, Segment};
pub use error::ImageError;
pub use manifest::{DeviceKind, Manifest, ManifestDevice};
