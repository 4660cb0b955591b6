//! Summon's backends: what boots, stops, suspends and resumes an instance.
//!
//! The daemon sees only [`Backend`] and [`Instance`] (see `backend.rs`); the embedded hvt VMM
//! lives in [`kvm`].

pub mod backend;
pub mod kvm;

pub use backend::{
    Backend, BackendError, BlockSpec, EventSink, Instance, InstanceEvent, InstanceSpec,
    InstanceState, NetSpec, TapSource,
};
