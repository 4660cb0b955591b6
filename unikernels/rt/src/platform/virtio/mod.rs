//! The virtio platform: an image QEMU boots with `-kernel` (PVH entry note; any firmware:
//! qboot, SeaBIOS, microvm's) and libvirt/Xen PVH can start. Ring 0 only for the entry, the
//! sleep gate and exceptions; everything else in ring 3: COM1 console, TSC clock (calibrated),
//! CMOS wall clock, PCI config scan, a legacy virtio-net driver (rt::net), ACPI/debug-exit halt.

pub mod boot;
mod entry;
pub mod idle;
pub mod pci;
pub mod pio;
pub mod power;
pub mod serial;
pub mod tsc;
pub mod wallclock;

pub use power::halt;
pub use serial::write as console_write;
pub use wallclock::walltime;
