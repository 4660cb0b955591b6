//! Summon's backends: what boots, stops, suspends and resumes an instance.
//!
//! The daemon sees only [`Backend`] and [`Instance`] (see `backend.rs`); the embedded hvt VMM
//! lives in [`kvm`], domains on any libvirt host in `libvirt` (cargo feature `libvirt`). The
//! image checks the VMM runs before loading a guest are the `summon-image` crate.

pub mod backend;
pub mod counters;
pub mod kvm;
#[cfg(feature = "libvirt")]
pub mod libvirt;
pub mod mac;
pub mod tap;
pub mod worker;

pub use backend::{
    Backend, BackendError, BlockSpec, Counters, CpuStat, EventSink, GuestLimits, Instance,
    InstanceCounters, InstanceEvent, InstanceSpec, InstanceState, NetSpec, TapSource,
};
pub use mac::MacAddr;
