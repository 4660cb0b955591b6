//! Shared helpers of the end-to-end tests and benchmarks: where the unikernel images are,
//! network namespaces with taps, guests started through the launcher's `Backend` trait, a real
//! `summond` to query ([`daemon`]) and libvirt services behind it ([`libvirt`]), a small HTTP
//! client and a reproducible random generator. Prerequisites (KVM, root, tools) are
//! `summon-test-support`'s, re-exported as [`require`] for the tests here.

pub mod cluster;
pub mod daemon;
pub mod guest;
pub mod http_client;
pub mod libvirt;
pub mod netns;
pub mod qemu;
pub mod rng;
pub mod systemd;
pub mod tcp;

pub use summon_test_support::require;

use std::path::PathBuf;

/// Directory holding the unikernel images (`unikernels/target/hvt`), built by this crate's
/// build script.
pub fn image_dir() -> PathBuf {
    PathBuf::from(env!("SUMMON_UNIKERNEL_DIR"))
}

/// Path of the image `name` (`unikernels/target/hvt/NAME.hvt`).
pub fn image(name: &str) -> PathBuf {
    image_dir().join(format!("{name}.hvt"))
}

/// Directory holding the virtio-platform images (`unikernels/target/virtio`).
pub fn virtio_image_dir() -> PathBuf {
    PathBuf::from(env!("SUMMON_VIRTIO_DIR"))
}

/// Path of the virtio-platform image `name` (`unikernels/target/virtio/NAME.virtio`).
pub fn virtio_image(name: &str) -> PathBuf {
    virtio_image_dir().join(format!("{name}.virtio"))
}
