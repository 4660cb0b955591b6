//! The devices of one instance, indexed by the handle the guest uses (its manifest index).

pub mod block;
pub mod console;
pub mod net;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use summon_hvt_abi::{
    mft_size, MftEntry, MFT_DEV_BLOCK_BASIC, MFT_DEV_NET_BASIC, MFT_NAME_MAX, MFT_RESERVED_FIRST,
    MFT_VERSION,
};

use crate::backend::{BlockSpec, NetSpec};

use super::error::KvmError;
use summon_image::{DeviceKind, Manifest};

pub use block::BlockDevice;
pub use console::Console;
pub use net::NetDevice;

pub enum Device {
    Net(NetDevice),
    Block(BlockDevice),
}

/// Attached devices; `entries[h]` is handle `h` (entry 0 is the manifest's reserved one).
pub struct Devices {
    entries: Vec<Option<Device>>,
}

fn kind_name(kind: &DeviceKind) -> &'static str {
    match kind {
        DeviceKind::Net => "net",
        DeviceKind::Block => "block",
    }
}

impl Devices {
    /// Matches the caller's devices to the image's manifest and opens them. Every manifest
    /// device must be attached, and nothing else may be.
    pub fn attach(
        manifest: &Manifest,
        nets: Vec<NetSpec>,
        blocks: Vec<BlockSpec>,
    ) -> Result<Self, KvmError> {
        let mut entries: Vec<Option<Device>> = Vec::with_capacity(manifest.devices.len() + 1);
        entries.resize_with(manifest.devices.len() + 1, || None);
        let find = |name: &str, attached: &'static str| -> Result<usize, KvmError> {
            let (i, d) = manifest
                .devices
                .iter()
                .enumerate()
                .find(|(_, d)| d.name == name)
                .ok_or_else(|| KvmError::UnknownDevice {
                    name: name.to_string(),
                })?;
            let declared = kind_name(&d.kind);
            if declared != attached {
                return Err(KvmError::DeviceKindMismatch {
                    name: name.to_string(),
                    declared,
                    attached,
                });
            }
            Ok(i + 1)
        };
        for spec in nets {
            let h = find(&spec.name, "net")?;
            if entries[h].is_some() {
                return Err(KvmError::DuplicateDevice { name: spec.name });
            }
            entries[h] = Some(Device::Net(NetDevice::attach(spec)?));
        }
        for spec in &blocks {
            let h = find(&spec.name, "block")?;
            if entries[h].is_some() {
                return Err(KvmError::DuplicateDevice {
                    name: spec.name.clone(),
                });
            }
            entries[h] = Some(Device::Block(BlockDevice::attach(spec)?));
        }
        for (i, d) in manifest.devices.iter().enumerate() {
            if entries[i + 1].is_none() {
                let kind = kind_name(&d.kind);
                return Err(KvmError::DeviceNotAttached {
                    name: d.name.clone(),
                    kind,
                    flag: kind,
                });
            }
        }
        Ok(Devices { entries })
    }

    pub fn net(&self, handle: u64) -> Option<&NetDevice> {
        match self.entries.get(usize::try_from(handle).ok()?)? {
            Some(Device::Net(n)) => Some(n),
            _ => None,
        }
    }

    pub fn block(&self, handle: u64) -> Option<&BlockDevice> {
        match self.entries.get(usize::try_from(handle).ok()?)? {
            Some(Device::Block(b)) => Some(b),
            _ => None,
        }
    }

    /// The net devices with their handles.
    pub fn nets(&self) -> impl Iterator<Item = (u64, &NetDevice)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(h, d)| match d {
                Some(Device::Net(n)) => Some((h as u64, n)),
                _ => None,
            })
    }

    /// The fd of every device, in handle order (what [`Devices::with_fds`] takes back).
    pub fn raw_fds(&self) -> Vec<RawFd> {
        self.entries
            .iter()
            .flatten()
            .map(|d| match d {
                Device::Net(n) => n.fd.as_raw_fd(),
                Device::Block(b) => b.raw_fd(),
            })
            .collect()
    }

    /// The same devices on `fds` (one per device, in the order of [`Devices::raw_fds`]), and the
    /// fds they had. Moving a guest's devices into its vCPU thread's own fd table (`private.rs`).
    pub fn with_fds(mut self, fds: Vec<OwnedFd>) -> (Devices, Vec<OwnedFd>) {
        let mut fds = fds.into_iter();
        let mut old = Vec::new();
        for d in self.entries.iter_mut().flatten() {
            let Some(new) = fds.next() else { break };
            old.push(match d {
                Device::Net(n) => std::mem::replace(&mut n.fd, new),
                Device::Block(b) => b.replace_fd(new),
            });
        }
        (self, old)
    }

    /// Closes the net devices' fds (the guest is over). A tap takes one file at a time: closing
    /// ours before the guest is reported stopped lets its next instance attach to it at once.
    pub fn close_nets(&mut self) {
        for d in &mut self.entries {
            if matches!(d, Some(Device::Net(_))) {
                *d = None;
            }
        }
    }

    pub fn has_net(&self) -> bool {
        self.nets().next().is_some()
    }

    /// The manifest copy the guest sees (`struct mft`, header included): the image's entries
    /// with the tender's fill-ins. Built byte by byte at the ABI's offsets so that no padding or
    /// inactive union bytes are ever copied into the guest.
    pub fn manifest_bytes(&self, manifest: &Manifest) -> Vec<u8> {
        let entries = manifest.devices.len() + 1;
        let mut out = vec![0u8; mft_size(entries as u32)];
        out[0..4].copy_from_slice(&MFT_VERSION.to_le_bytes());
        out[4..8].copy_from_slice(&(entries as u32).to_le_bytes());
        let entry = |i: usize| 8 + i * std::mem::size_of::<MftEntry>();
        {
            let e = &mut out[entry(0)..entry(1)];
            e[68..72].copy_from_slice(&MFT_RESERVED_FIRST.to_le_bytes());
            e[96] = 1;
        }
        for (i, d) in manifest.devices.iter().enumerate() {
            let e = &mut out[entry(i + 1)..entry(i + 2)];
            let name = d.name.as_bytes();
            let n = name.len().min(MFT_NAME_MAX);
            e[..n].copy_from_slice(&name[..n]);
            let kind = match d.kind {
                DeviceKind::Net => MFT_DEV_NET_BASIC,
                DeviceKind::Block => MFT_DEV_BLOCK_BASIC,
            };
            e[68..72].copy_from_slice(&kind.to_le_bytes());
            match &self.entries[i + 1] {
                Some(Device::Net(net)) => {
                    e[72..78].copy_from_slice(&net.mac.octets());
                    e[78..80].copy_from_slice(&net.mtu.to_le_bytes());
                    e[88..96].copy_from_slice(&(net.fd.as_raw_fd() as u64).to_le_bytes());
                }
                Some(Device::Block(b)) => {
                    e[72..80].copy_from_slice(&b.capacity.to_le_bytes());
                    e[80..82].copy_from_slice(&b.sector_size.to_le_bytes());
                }
                None => {}
            }
            e[96] = 1;
        }
        out
    }
}
