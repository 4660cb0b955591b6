//! A block device: a file, read and written at guest-chosen offsets.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::backend::BlockSpec;
use crate::kvm::error::KvmError;

/// Default sector size.
pub const DEFAULT_SECTOR_SIZE: u32 = 512;

pub struct BlockDevice {
    file: File,
    pub capacity: u64,
    pub sector_size: u16,
}

impl BlockDevice {
    pub fn attach(spec: &BlockSpec) -> Result<Self, KvmError> {
        let size = spec.sector_size.unwrap_or(DEFAULT_SECTOR_SIZE);
        // The manifest field is a u16, which bounds the sector size from above.
        if size < 512 || !size.is_power_of_two() || size > u32::from(u16::MAX) {
            return Err(KvmError::BlockSectorSize {
                name: spec.name.clone(),
                size,
            });
        }
        let open_err = |source| KvmError::BlockOpen {
            name: spec.name.clone(),
            path: spec.path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&spec.path)
            .map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        if !meta.is_file() {
            return Err(open_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        let capacity = meta.len();
        if capacity % u64::from(size) != 0 {
            return Err(KvmError::BlockCapacity {
                name: spec.name.clone(),
                path: spec.path.clone(),
                capacity,
                size,
            });
        }
        Ok(BlockDevice {
            file,
            capacity,
            sector_size: size as u16,
        })
    }

    /// The ABI's EINVAL rule: the request must lie inside the device.
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Puts the device on `fd` (a copy of its file); returns the fd it had.
    pub(crate) fn replace_fd(&mut self, fd: OwnedFd) -> OwnedFd {
        OwnedFd::from(std::mem::replace(&mut self.file, File::from(fd)))
    }

    pub fn in_range(&self, offset: u64, len: u64) -> bool {
        offset < self.capacity && offset.checked_add(len).is_some_and(|e| e <= self.capacity)
    }

    /// Writes `len` bytes from `buf` at `offset`; returns the byte count the host managed.
    pub fn write_at(&self, buf: *const u8, len: usize, offset: u64) -> io::Result<usize> {
        // SAFETY: the caller passes a host pointer to `len` readable bytes of guest memory.
        byte_count(unsafe {
            libc::pwrite(
                self.file.as_raw_fd(),
                buf.cast(),
                len,
                offset as libc::off_t,
            )
        })
    }

    /// Reads `len` bytes at `offset` into `buf`; returns the byte count the host managed.
    pub fn read_at(&self, buf: *mut u8, len: usize, offset: u64) -> io::Result<usize> {
        // SAFETY: the caller passes a host pointer to `len` host-writable bytes of guest memory.
        byte_count(unsafe {
            libc::pread(
                self.file.as_raw_fd(),
                buf.cast(),
                len,
                offset as libc::off_t,
            )
        })
    }
}

/// A pread/pwrite result as a byte count, or the errno it left when negative.
fn byte_count(n: libc::ssize_t) -> io::Result<usize> {
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}
