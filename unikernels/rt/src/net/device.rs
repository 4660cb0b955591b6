//! smoltcp's view of an hvt net device: NET_READ / NET_WRITE, one Ethernet frame each.

use alloc::vec;
use alloc::vec::Vec;

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::abi::MFT_DEV_NET_BASIC;
use crate::platform::hvt::{boot, hypercall, hypercall::NetResult};

/// Ethernet header plus room for a VLAN tag the host may leave on.
const FRAME_OVERHEAD: usize = 18;

/// Errors finding the net device of the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceError {
    /// No NET_BASIC entry of that name in the manifest.
    NotInManifest,
    /// The tender did not attach it.
    NotAttached,
}

impl core::fmt::Display for DeviceError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            DeviceError::NotInManifest => "no such net device in the manifest",
            DeviceError::NotAttached => "net device not attached by the tender",
        })
    }
}

/// One attached hvt net device.
pub struct HvtNet {
    handle: u64,
    mac: [u8; 6],
    mtu: usize,
    rx: Vec<u8>,
    tx: Vec<u8>,
    /// POLL said a frame is waiting (or we have not asked yet); cleared when NET_READ says AGAIN,
    /// so smoltcp's poll costs no hypercall when nothing arrived.
    rx_ready: bool,
    /// Frames the tender refused to send or receive (should stay 0).
    pub errors: u64,
}

impl HvtNet {
    /// The manifest's net device `name`, as the tender filled it in.
    pub fn open(name: &str) -> Result<Self, DeviceError> {
        let (handle, entry) = boot::manifest()
            .iter()
            .enumerate()
            .find(|(_, e)| e.kind == MFT_DEV_NET_BASIC && e.name_bytes() == name.as_bytes())
            .ok_or(DeviceError::NotInManifest)?;
        if !entry.attached {
            return Err(DeviceError::NotAttached);
        }
        // SAFETY: the entry's kind is NET_BASIC, so the tender filled in the `net` variant.
        let net = unsafe { entry.device.net };
        let mtu = if net.mtu == 0 {
            1500
        } else {
            usize::from(net.mtu)
        };
        Ok(HvtNet {
            handle: handle as u64,
            mac: net.mac,
            mtu,
            rx: vec![0; mtu + FRAME_OVERHEAD],
            tx: vec![0; mtu + FRAME_OVERHEAD],
            rx_ready: true,
            errors: 0,
        })
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The device's bit in POLL's ready set.
    pub fn ready_mask(&self) -> u64 {
        1u64.checked_shl(self.handle as u32).unwrap_or(0)
    }

    /// Whether a frame may be waiting (POLL said so and no NET_READ said AGAIN since).
    pub fn rx_ready(&self) -> bool {
        self.rx_ready
    }

    pub(crate) fn set_rx_ready(&mut self) {
        self.rx_ready = true;
    }
}

/// A received frame.
pub struct RxToken<'a>(&'a [u8]);

/// Room for one frame to send.
pub struct TxToken<'a> {
    handle: u64,
    buf: &'a mut [u8],
    errors: &'a mut u64,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let len = len.min(self.buf.len());
        let frame = &mut self.buf[..len];
        let r = f(frame);
        if hypercall::net_write(self.handle, frame) != NetResult::Ok(len) {
            *self.errors += 1;
        }
        r
    }
}

impl phy::Device for HvtNet {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        if !self.rx_ready {
            return None;
        }
        match hypercall::net_read(self.handle, &mut self.rx) {
            NetResult::Ok(len) => Some((
                RxToken(&self.rx[..len]),
                TxToken {
                    handle: self.handle,
                    buf: &mut self.tx,
                    errors: &mut self.errors,
                },
            )),
            NetResult::Again => {
                self.rx_ready = false;
                None
            }
            NetResult::Error(_) => {
                self.errors += 1;
                self.rx_ready = false;
                None
            }
        }
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        Some(TxToken {
            handle: self.handle,
            buf: &mut self.tx,
            errors: &mut self.errors,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu + 14;
        caps.max_burst_size = None;
        caps
    }
}
