//! Why the KVM backend could not start an instance.
//!
//! Guest faults are not errors of this type: a guest that misbehaves after it started is reported
//! through `InstanceEvent::Faulted`, and the host process carries on.

use std::path::PathBuf;

use summon_image::ImageError;

/// Errors of the embedded KVM backend.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM API version {0} is not the supported version 12")]
    ApiVersion(i32),
    #[error("{op} failed: {source}")]
    Ioctl {
        op: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("{op} failed: {source}")]
    Sys {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("guest memory of {mib} MiB is out of range: it must be between 2 MiB and 4096 MiB")]
    MemorySize { mib: u64 },
    #[error("cannot map {size} bytes of guest memory: {source}")]
    Mmap {
        size: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("the guest command line is {len} bytes; at most {max} fit")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("the command line contains a NUL byte")]
    CmdlineNul,
    #[error("device {name}: the image's manifest has no device of that name")]
    UnknownDevice { name: String },
    #[error("device {name}: the image declares it as a {declared} device, but it was attached as {attached}")]
    DeviceKindMismatch {
        name: String,
        declared: &'static str,
        attached: &'static str,
    },
    #[error("device {name} is attached twice")]
    DuplicateDevice { name: String },
    #[error(
        "the image needs {kind} device {name}, which is not attached (use --{flag}:{name}=...)"
    )]
    DeviceNotAttached {
        name: String,
        kind: &'static str,
        flag: &'static str,
    },
    #[error("net device {name}: cannot open tap interface {iface}: {source}")]
    Tap {
        name: String,
        iface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("net device {name}: the handed-over fd is unusable: {source}")]
    TapFd {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("block device {name}: cannot open {path}: {source}")]
    BlockOpen {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("block device {name}: sector size {size} is not a power of two >= 512")]
    BlockSectorSize { name: String, size: u32 },
    #[error("block device {name}: capacity {capacity} of {path} is not a multiple of the sector size {size}")]
    BlockCapacity {
        name: String,
        path: PathBuf,
        capacity: u64,
        size: u32,
    },
    #[error("cannot start the vCPU thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("cannot confine the vCPU thread with seccomp: {0}")]
    Seccomp(String),
    #[error("instance {name}: the vCPU thread did not acknowledge the {request} within {waited:?}; the request was withdrawn")]
    Unacknowledged {
        name: String,
        request: &'static str,
        waited: std::time::Duration,
    },
}

impl KvmError {
    pub(crate) fn ioctl(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
        move |source| KvmError::Ioctl { op, source }
    }

    pub(crate) fn last_os(op: &'static str) -> KvmError {
        KvmError::Sys {
            op,
            source: std::io::Error::last_os_error(),
        }
    }
}
