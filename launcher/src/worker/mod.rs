//! Guests in worker processes: the daemon keeps no VM in its own address space.
//!
//! KVM ties a VM to the address space that created it, and some of its costs grow with the
//! number of VMs in one: every `munmap`, `mprotect` or `madvise` in the process calls the MMU
//! notifier of every VM in it, and `KVM_CREATE_VM` takes the process's mmap lock. At thousands
//! of guests in one process a cold start paid milliseconds for every other guest
//! (docs/benchmarks.md, Density). [`WorkerPool`] spreads the guests over worker processes of at
//! most `per_process` guests each, so those costs stop growing with the host's instance count;
//! a worker that crashes ends only its own guests, which are reported as faulted.
//!
//! - `client.rs`: the daemon's side, a [`crate::Backend`] whose instances are handles to guests
//!   in a worker; picks a worker with room and keeps a spare one starting in the background.
//! - `server.rs`: the worker process, an embedded [`crate::kvm::KvmBackend`] serving the daemon
//!   ([`serve`]).
//! - `privileges.rs`: what a worker gives up before it runs a guest (every capability);
//!   `identity.rs`: a uid of its own for each worker, when configured;
//!   `sandbox.rs`: the seccomp filter and the Landlock rules of the whole worker process.
//! - `protocol.rs`: the messages; `wire.rs`: one message per `SOCK_SEQPACKET` packet, taps
//!   passed with `SCM_RIGHTS`.
//!
//! Each instance's counters live in a memory region the worker shares with the daemon
//! ([`crate::counters::CounterRegion`]), so the reaper still reads them without a syscall.

mod client;
mod identity;
mod privileges;
mod protocol;
mod sandbox;
mod server;
mod wire;

use std::time::Duration;

pub use client::{WorkerConfig, WorkerPool};
pub use identity::UidRange;
pub use privileges::drop_capabilities;
pub use sandbox::{confine_worker, restrict_files, FileRules};
pub use server::{report_setup_failure, serve, LogForward};

/// The descriptor number at which a worker process finds its socket to the daemon.
pub const WORKER_FD: i32 = 3;

/// Why a worker could not be started or asked, or what it reported.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("starting a worker process: {source}")]
    Spawn {
        #[source]
        source: std::io::Error,
    },
    #[error("setting up a worker process: {message}")]
    Setup { message: String },
    #[error("talking to worker process {pid}: {source}")]
    Socket {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("worker process {pid} is gone")]
    Gone { pid: u32 },
    #[error("worker process {pid} did not answer a {request} request within {waited:?}")]
    Timeout {
        pid: u32,
        request: &'static str,
        waited: Duration,
    },
    #[error("worker process {pid}: {message}")]
    Protocol { pid: u32, message: String },
    /// The worker's own error, as it worded it.
    #[error("{message}")]
    Reported { message: String },
}
