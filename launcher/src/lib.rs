//! Summon's backends: what boots, stops, suspends and resumes an instance.
//!
//! The daemon sees only [`Backend`] and [`Instance`] (see `backend.rs`); the embedded hvt VMM
//! lives in [`kvm`], domains on any libvirt host in [`libvirt`].

pub mod backend;
pub mod kvm;
pub mod libvirt;

pub use backend::{
    Backend, BackendError, BlockSpec, CpuStat, EventSink, GuestLimits, Instance, InstanceCounters,
    InstanceEvent, InstanceSpec, InstanceState, NetSpec, TapSource,
};
