//! A net device: one tap fd, the MAC and MTU the guest is told about.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::backend::{NetSpec, TapSource};
use crate::kvm::error::KvmError;

use crate::tap;
use crate::MacAddr;

pub struct NetDevice {
    pub fd: OwnedFd,
    pub mac: MacAddr,
    pub mtu: u16,
}

impl NetDevice {
    /// Opens (or adopts) the tap of `spec`.
    pub fn attach(spec: NetSpec) -> Result<Self, KvmError> {
        let NetSpec { name, tap, mac } = spec;
        let (fd, mtu) = match tap {
            TapSource::Name(iface) => {
                let fd = tap::open(&iface, tap::Blocking::No).map_err(|source| KvmError::Tap {
                    name: name.clone(),
                    iface: iface.clone(),
                    source,
                })?;
                let mtu = tap::mtu(&iface).map_err(|source| KvmError::Tap {
                    name: name.clone(),
                    iface,
                    source,
                })?;
                (fd, mtu)
            }
            TapSource::Fd(fd) => {
                let iface = tap::adopt_fd(fd.as_raw_fd())
                    .map_err(|source| KvmError::TapFd { name, source })?;
                // In a worker process the query is refused (no sockets: worker/sandbox.rs).
                let mtu = tap::mtu(&iface).unwrap_or(tap::DEFAULT_MTU);
                (fd, mtu)
            }
        };
        Ok(NetDevice {
            fd,
            mac: mac.unwrap_or_else(MacAddr::random_local),
            mtu,
        })
    }

    /// Reads one frame into `buf`; `Ok(None)` when none is waiting.
    pub fn read_frame(&self, buf: *mut u8, len: usize) -> io::Result<Option<usize>> {
        // SAFETY: the caller passes a host pointer to `len` writable bytes of guest memory
        // (checked by `GuestMemory::checked_writable`).
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.cast(), len) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(n as usize))
    }

    /// Writes one whole frame; a short write counts as failure.
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<bool> {
        // SAFETY: `frame` is a valid slice for the duration of the call.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize == frame.len())
    }
}
