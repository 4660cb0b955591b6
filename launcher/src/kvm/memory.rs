//! Guest memory: one anonymous mapping at GPA 0, and bounds-checked access to it.
//!
//! The mapping is `MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE`: a page costs the host nothing
//! until the guest (or the loader) touches it. Every access on behalf of a hypercall goes through
//! [`GuestMemory::checked`] or [`GuestMemory::checked_writable`], so a hostile guest pointer can
//! neither reach outside the mapping nor make the host write into a page it protected read-only
//! (which would kill the whole host process with SIGSEGV).

use std::ops::Range;
use std::os::fd::AsRawFd;

use summon_hvt_abi::{hc, BootInfo, MftHeader};

use super::error::KvmError;

/// Plain data that may be copied in and out of guest memory byte for byte.
///
/// # Safety
/// Implementors must be integers or `#[repr(C)]` types for which every bit pattern is a valid
/// value (reading one from guest bytes then yields a valid value whatever the guest wrote).
pub unsafe trait Pod: Copy {}

/// [`Pod`] types without padding bytes, so that viewing one as bytes reads only initialized
/// memory (the loader copies these into the guest as byte slices).
///
/// # Safety
/// Implementors must have no padding bytes anywhere in their layout.
pub unsafe trait NoPadding: Pod {}

macro_rules! pod {
    ($($t:ty),* $(,)?) => {$(
        // SAFETY: each type listed is an integer or a `#[repr(C)]` struct of integers and byte
        // arrays (see the ABI crate), for which every bit pattern is a valid value.
        unsafe impl Pod for $t {}
    )*};
}

pod!(u8, u32, i32, u64, BootInfo, MftHeader);
pod!(
    hc::Walltime,
    hc::Puts,
    hc::Poll,
    hc::Block,
    hc::Net,
    hc::Halt
);

macro_rules! no_padding {
    ($($t:ty),* $(,)?) => {$(
        // SAFETY: integers have no padding; the ABI crate asserts at compile time that
        // `BootInfo` (5 x u64, 2 x u32, 1 x u64: 56 bytes) and `MftHeader` (2 x u32: 8 bytes)
        // are exactly the sum of their fields.
        unsafe impl NoPadding for $t {}
    )*};
}

no_padding!(u8, u32, i32, u64, BootInfo, MftHeader);

/// Why a guest pointer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessError {
    /// `gpa + len` overflows or is not strictly below `mem_size`.
    OutOfBounds,
    /// The range overlaps memory the host mapped read-only (the image's text or rodata).
    ReadOnly,
}

/// The guest's memory, mapped into the host.
pub struct GuestMemory {
    ptr: *mut u8,
    size: u64,
    /// Ranges protected read-only on the host side, sorted, non-overlapping.
    read_only: Vec<Range<u64>>,
}

// SAFETY: the mapping is owned by this value and lives until drop; the raw pointer is only
// dereferenced through bounds-checked methods. One vCPU thread uses it while the guest is stopped
// in an exit, which is the only time the host reads or writes guest memory.
unsafe impl Send for GuestMemory {}
// SAFETY: see `Send`; shared references only read.
unsafe impl Sync for GuestMemory {}

impl GuestMemory {
    /// Maps `size` bytes (a multiple of the page size) of zeroed, not yet backed memory.
    pub fn new(size: u64) -> Result<Self, KvmError> {
        // SAFETY: an anonymous private mapping at an address of the kernel's choice; no existing
        // memory is affected. The result is checked against MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(KvmError::Mmap {
                size,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(GuestMemory {
            ptr: ptr.cast(),
            size,
            read_only: Vec::new(),
        })
    }

    /// The guest-visible memory size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Host address of GPA 0 (for KVM_SET_USER_MEMORY_REGION).
    pub fn host_base(&self) -> u64 {
        self.ptr as u64
    }

    /// The hypercall rule: `[gpa, gpa + len)` with `gpa + len` strictly below `mem_size`.
    pub fn checked(&self, gpa: u64, len: u64) -> Result<*mut u8, AccessError> {
        match gpa.checked_add(len) {
            Some(end) if end < self.size => {
                // SAFETY: gpa < size, so the offset stays inside the mapping.
                Ok(unsafe { self.ptr.add(gpa as usize) })
            }
            _ => Err(AccessError::OutOfBounds),
        }
    }

    /// Like [`Self::checked`], and the host may also write the range.
    pub fn checked_writable(&self, gpa: u64, len: u64) -> Result<*mut u8, AccessError> {
        let p = self.checked(gpa, len)?;
        let end = gpa + len;
        if len > 0 && self.read_only.iter().any(|r| gpa < r.end && r.start < end) {
            return Err(AccessError::ReadOnly);
        }
        Ok(p)
    }

    /// The guest bytes `[gpa, gpa + len)`, checked as for a hypercall buffer.
    pub fn slice(&self, gpa: u64, len: u64) -> Result<&[u8], AccessError> {
        let p = self.checked(gpa, len)?;
        // SAFETY: the range lies inside the mapping, which is readable everywhere and outlives
        // `&self`; the guest does not run while the host handles an exit.
        Ok(unsafe { std::slice::from_raw_parts(p, len as usize) })
    }

    /// Reads a `T` at `gpa` (hypercall bounds rule).
    pub fn read_obj<T: Pod>(&self, gpa: u64) -> Result<T, AccessError> {
        let p = self.checked(gpa, std::mem::size_of::<T>() as u64)?;
        // SAFETY: in bounds (checked above); `T: Pod` accepts any bytes; guest structs may be
        // unaligned, hence read_unaligned.
        Ok(unsafe { std::ptr::read_unaligned(p.cast::<T>()) })
    }

    /// Writes a `T` at `gpa` (hypercall bounds rule, and not into read-only memory).
    pub fn write_obj<T: Pod>(&self, gpa: u64, val: &T) -> Result<(), AccessError> {
        let p = self.checked_writable(gpa, std::mem::size_of::<T>() as u64)?;
        // SAFETY: in bounds and host-writable (checked above).
        unsafe { std::ptr::write_unaligned(p.cast::<T>(), *val) };
        Ok(())
    }

    /// Loader access: copies `data` to `gpa`, which may end exactly at `mem_size`.
    /// Only used before the guest runs and before any page is protected.
    pub fn load(&self, gpa: u64, data: &[u8]) -> Result<(), AccessError> {
        match gpa.checked_add(data.len() as u64) {
            Some(end) if end <= self.size => {
                // SAFETY: the destination lies inside the mapping (checked above), which is
                // read-write until `protect` is called, and does not overlap `data`.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        data.as_ptr(),
                        self.ptr.add(gpa as usize),
                        data.len(),
                    )
                };
                Ok(())
            }
            _ => Err(AccessError::OutOfBounds),
        }
    }

    /// Loader access for reading an image segment straight into the guest: the bytes
    /// `[gpa, gpa + len)` to write, which may end exactly at `mem_size` (as [`Self::load`]).
    /// Refused where the host protected the memory read-only.
    pub fn load_slice(&mut self, gpa: u64, len: u64) -> Result<&mut [u8], AccessError> {
        let end = gpa
            .checked_add(len)
            .filter(|&end| end <= self.size)
            .ok_or(AccessError::OutOfBounds)?;
        if len > 0 && self.read_only.iter().any(|r| gpa < r.end && r.start < end) {
            return Err(AccessError::ReadOnly);
        }
        // SAFETY: the range lies inside the mapping (checked above), which is readable, and
        // writable outside the read-only ranges (checked above); `&mut self` makes the slice the
        // only access to guest memory through this value while it lives, and the guest does not
        // run while the loader holds the memory.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.ptr.add(gpa as usize), len as usize) })
    }

    /// Loader access to a `T` (see [`Self::load`]).
    pub fn load_obj<T: NoPadding>(&self, gpa: u64, val: &T) -> Result<(), AccessError> {
        // SAFETY: `val` is a live `T` of `size_of::<T>()` bytes, borrowed for the slice's
        // lifetime; `T: NoPadding` means every one of those bytes is initialized.
        let bytes = unsafe {
            std::slice::from_raw_parts((val as *const T).cast::<u8>(), std::mem::size_of::<T>())
        };
        self.load(gpa, bytes)
    }

    /// Protects the host mapping of the page-aligned range `[start, end)`: read-only unless
    /// `writable`. The guest's own page tables cannot undo this: KVM honours the host mapping.
    pub fn protect(&mut self, start: u64, end: u64, writable: bool) -> Result<(), KvmError> {
        if start >= end || end > self.size || !start.is_multiple_of(4096) {
            return Ok(());
        }
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        let len = (end - start).div_ceil(4096) * 4096;
        // SAFETY: the range lies inside our own mapping (checked above); changing its protection
        // affects no other memory. Host writes into read-only ranges are refused by
        // `checked_writable` from now on.
        let rc = unsafe { libc::mprotect(self.ptr.add(start as usize).cast(), len as usize, prot) };
        if rc != 0 {
            return Err(KvmError::last_os("mprotect of guest memory"));
        }
        if !writable {
            self.read_only.push(start..start + len);
        }
        Ok(())
    }
}

impl GuestMemory {
    /// Replaces the page-aligned range `[start, start + len)` with a read-only shared mapping of
    /// `file` at `offset` (a sealed memory file, see `shared_pages.rs`): the guest reads those
    /// bytes and cannot write them, as after [`Self::protect`], and guests of one image share
    /// the pages.
    pub fn map_read_only(
        &mut self,
        start: u64,
        len: u64,
        file: &impl AsRawFd,
        offset: u64,
    ) -> Result<(), KvmError> {
        let end = start.checked_add(len).filter(|&e| e <= self.size);
        if len == 0 || end.is_none() || !start.is_multiple_of(4096) || !len.is_multiple_of(4096) {
            return Err(KvmError::Sys {
                op: "mapping shared image pages",
                source: std::io::Error::other("range outside guest memory or not page-aligned"),
            });
        }
        // SAFETY: MAP_FIXED over a page-aligned range inside our own mapping (checked above):
        // it replaces only pages of guest memory, which no reference of ours points into while
        // the loader holds `&mut self`. The file is only ever mapped read-only.
        let p = unsafe {
            libc::mmap(
                self.ptr.add(start as usize).cast(),
                len as usize,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_FIXED,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(KvmError::last_os("mapping shared image pages"));
        }
        self.read_only.push(start..start + len);
        Ok(())
    }

    /// The pages the host has backed so far (touched by the guest or the loader), as GPA
    /// ranges, leaving out the read-only ones (the image's shared text and rodata).
    pub fn resident(&self) -> Vec<Range<u64>> {
        let pages = (self.size / PAGE) as usize;
        let mut flags = vec![0u8; pages];
        // SAFETY: mincore reads the residency of our own mapping (page-aligned, `size` bytes,
        // alive until drop) into a vector of one byte per page; it touches no page.
        let r = unsafe { libc::mincore(self.ptr.cast(), self.size as usize, flags.as_mut_ptr()) };
        if r != 0 {
            return Vec::new();
        }
        let mut out: Vec<Range<u64>> = Vec::new();
        for (i, f) in flags.iter().enumerate() {
            let gpa = i as u64 * PAGE;
            if f & 1 == 0 || self.read_only.iter().any(|ro| ro.contains(&gpa)) {
                continue;
            }
            match out.last_mut() {
                Some(last) if last.end == gpa => last.end = gpa + PAGE,
                _ => out.push(gpa..gpa + PAGE),
            }
        }
        out
    }

    /// Has the host back `ranges` (GPA ranges) now, zero-filled, so that the guest's first
    /// touches of them need no host fault. Best effort: a range outside the mapping, or a kernel
    /// without `MADV_POPULATE_WRITE`, leaves the pages to be faulted in on use.
    pub fn populate(&self, ranges: &[Range<u64>]) {
        for r in ranges {
            if r.start >= r.end || r.end > self.size || r.start % PAGE != 0 {
                continue;
            }
            // SAFETY: the range lies inside our own writable mapping (checked above, and the
            // read-only ranges are left out by `resident`); populating only backs its pages with
            // zeroed memory, which is what the guest would read there anyway.
            unsafe {
                libc::madvise(
                    self.ptr.add(r.start as usize).cast(),
                    (r.end - r.start) as usize,
                    libc::MADV_POPULATE_WRITE,
                )
            };
        }
    }
}

/// The host's page size, which guest memory is mapped in.
const PAGE: u64 = 4096;

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`, which nothing references any more
        // (the VM that used it is dropped before the memory, see `vcpu.rs`).
        unsafe { libc::munmap(self.ptr.cast(), self.size as usize) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_strict_and_overflow_safe() {
        let mut m = GuestMemory::new(2 << 20).unwrap();
        assert!(m.checked(0, 16).is_ok());
        assert!(m.checked((2 << 20) - 17, 16).is_ok());
        assert_eq!(m.checked((2 << 20) - 16, 16), Err(AccessError::OutOfBounds));
        assert_eq!(m.checked(u64::MAX - 4, 16), Err(AccessError::OutOfBounds));
        assert_eq!(m.checked(8, u64::MAX), Err(AccessError::OutOfBounds));
        m.protect(0x100000, 0x101000, false).unwrap();
        assert_eq!(m.checked_writable(0x100ff8, 16), Err(AccessError::ReadOnly));
        assert!(m.checked_writable(0x101000, 16).is_ok());
        assert!(m.checked_writable(0xff000, 0x1000).is_ok());
        assert_eq!(m.write_obj(0x100000, &7u64), Err(AccessError::ReadOnly));
        m.write_obj(0x200, &7u64).unwrap();
        assert_eq!(m.read_obj::<u64>(0x200).unwrap(), 7);
        // The loader's slice may end exactly at the end, never past it or in read-only pages.
        assert_eq!(m.load_slice((2 << 20) - 16, 16).unwrap().len(), 16);
        assert_eq!(
            m.load_slice((2 << 20) - 16, 17).err(),
            Some(AccessError::OutOfBounds)
        );
        assert_eq!(
            m.load_slice(u64::MAX, 2).err(),
            Some(AccessError::OutOfBounds)
        );
        assert_eq!(
            m.load_slice(0xff800, 0x1000).err(),
            Some(AccessError::ReadOnly)
        );
        m.load_slice(0x300, 8)
            .unwrap()
            .copy_from_slice(&9u64.to_le_bytes());
        assert_eq!(m.read_obj::<u64>(0x300).unwrap(), 9);
    }
}
