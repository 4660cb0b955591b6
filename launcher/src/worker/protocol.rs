//! What the daemon and a worker process say to each other: JSON, one message per seqpacket.
//! Requests that want an answer carry a sequence number the [`FromWorker::Reply`] repeats.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::backend::{
    BlockSpec, CpuStat, GuestLimits, InstanceEvent, InstanceSpec, NetSpec, TapSource,
};

/// Daemon → worker.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum ToWorker {
    /// Start an instance; answered with [`Answer::Started`]. The message carries one
    /// descriptor per [`TapReq::Fd`] net device, in order.
    Start {
        seq: u64,
        id: u64,
        spec: StartSpec,
    },
    /// Ask the instance to end, without an answer.
    RequestStop {
        id: u64,
    },
    /// End the instance; answered once it has.
    Stop {
        seq: u64,
        id: u64,
    },
    Suspend {
        seq: u64,
        id: u64,
    },
    Resume {
        seq: u64,
        id: u64,
    },
    /// Read its CPU quota statistics; answered with [`Answer::CpuStat`].
    CpuStat {
        seq: u64,
        id: u64,
    },
    /// The daemon dropped its handle: end the instance and free its counter slot.
    Release {
        id: u64,
    },
    /// Daemon exit: end every instance now, but keep their taps open until the daemon closes
    /// the socket (it deletes the taps meanwhile; see `WorkerPool::stop_all`).
    StopAll,
}

/// An [`crate::InstanceSpec`] as it crosses the socket: taps by name or as passed descriptors.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct StartSpec {
    pub name: String,
    /// Named in messages and as the image cache's key; the image itself arrives as the last
    /// descriptor of the request (workers open no image).
    pub image: PathBuf,
    pub memory_mib: u64,
    pub nets: Vec<NetReq>,
    pub blocks: Vec<BlockSpec>,
    pub args: Vec<String>,
    pub limits: GuestLimits,
}

impl StartSpec {
    /// `spec` as it crosses the socket, and the descriptors to pass with it, in order: the
    /// taps, then `image` (the image file, opened by the caller).
    pub fn from_spec(spec: InstanceSpec, image: OwnedFd) -> (StartSpec, Vec<OwnedFd>) {
        let mut fds = Vec::new();
        let nets = spec
            .nets
            .into_iter()
            .map(|n| NetReq {
                name: n.name,
                mac: n.mac.map(Into::into),
                tap: match n.tap {
                    TapSource::Name(s) => TapReq::Name(s),
                    TapSource::Fd(fd) => {
                        fds.push(fd);
                        TapReq::Fd
                    }
                },
            })
            .collect();
        let start = StartSpec {
            name: spec.name,
            image: spec.image,
            memory_mib: spec.memory_mib,
            nets,
            blocks: spec.blocks,
            args: spec.args,
            limits: spec.limits,
        };
        fds.push(image);
        (start, fds)
    }

    /// The instance spec again, each [`TapReq::Fd`] taking the next of `fds`, and the image
    /// file (the last of `fds`).
    pub fn into_spec(self, mut fds: Vec<OwnedFd>) -> Result<(InstanceSpec, File), String> {
        let image = fds
            .pop()
            .map(File::from)
            .ok_or_else(|| format!("image {}: its descriptor is missing", self.image.display()))?;
        let mut fds = fds.into_iter();
        let nets =
            self.nets
                .into_iter()
                .map(|n| {
                    let tap = match n.tap {
                        TapReq::Name(s) => TapSource::Name(s),
                        TapReq::Fd => TapSource::Fd(fds.next().ok_or_else(|| {
                            format!("net device {}: its tap fd is missing", n.name)
                        })?),
                    };
                    Ok(NetSpec {
                        name: n.name,
                        tap,
                        mac: n.mac.map(Into::into),
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
        let spec = InstanceSpec {
            name: self.name,
            image: self.image,
            memory_mib: self.memory_mib,
            nets,
            blocks: self.blocks,
            args: self.args,
            limits: self.limits,
        };
        Ok((spec, image))
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct NetReq {
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub tap: TapReq,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum TapReq {
    /// Open the interface of this name.
    Name(String),
    /// The next descriptor that came with the message.
    Fd,
}

/// Worker → daemon.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum FromWorker {
    /// First message: the worker is ready. Carries the counter region's memory file.
    Hello {
        slots: usize,
    },
    Reply {
        seq: u64,
        result: Result<Answer, String>,
    },
    Event {
        id: u64,
        event: InstanceEvent,
    },
    /// A log line of the worker's own (already formatted, with its level).
    Log(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Answer {
    /// Started; its counters are in this slot of the region. `cpu_quota`: it has a quota
    /// group, so [`ToWorker::CpuStat`] has something to read.
    Started {
        slot: usize,
        cpu_quota: bool,
    },
    Done,
    CpuStat(Option<CpuStat>),
}
