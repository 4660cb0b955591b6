//! Platforms rt runs on, chosen at build time: **hvt** (the Solo5 hvt ABI, our KVM launcher;
//! the default) or **virtio** (feature `virtio`: a PVH-booted image for QEMU `-kernel`, libvirt
//! and Xen PVH, with a 16550 console and a legacy virtio-net driver). Each provides the same
//! few functions (console, wall clock, halt, command line) and a net device for smoltcp.

#[cfg(not(feature = "virtio"))]
pub mod hvt;
#[cfg(not(feature = "virtio"))]
pub use hvt as current;

/// The Solo5 notes are data only; a virtio image still compiles the manifest an application
/// declares (its linker script drops the notes), so `rt::manifest!` works on both platforms.
#[cfg(feature = "virtio")]
pub mod hvt {
    pub mod notes;
}
#[cfg(feature = "virtio")]
pub mod virtio;
#[cfg(feature = "virtio")]
pub use virtio as current;

mod shared;
pub(crate) mod trap;

/// The platform's name, as the images' file extension: "hvt" or "virtio".
#[cfg(not(feature = "virtio"))]
pub const NAME: &str = "hvt";
/// The platform's name, as the images' file extension: "hvt" or "virtio".
#[cfg(feature = "virtio")]
pub const NAME: &str = "virtio";

pub use current::{console_write, halt, walltime};

/// The command line, or `None` if the platform's pointer is bad or it is not UTF-8.
pub fn cmdline() -> Option<&'static str> {
    current::boot::cmdline()
}
