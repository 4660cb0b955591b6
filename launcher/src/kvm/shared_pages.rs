//! The read-only part of an image (text, rodata), shared by every guest of that image in this
//! process instead of copied into each guest's memory.
//!
//! Built once per cached image: the bytes each run of adjacent read-only segments has in guest
//! memory (segment contents, zeros around and after them up to the page boundaries) go into a
//! sealed memory file, and each start maps the runs from it over the guest's memory, read-only.
//! The guest sees what a copy would have given it, and a write faults as it does on a copy
//! protected read-only; the pages exist once for a hundred guests. Sealed (no write, grow or
//! shrink), so nothing can change them under a running guest, unlike a mapping of the image
//! file itself.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use summon_image::ElfImage;

use super::error::KvmError;
use super::memory::GuestMemory;

const PAGE: u64 = 4096;

/// One run: guest addresses `[start, start + len)` are file offsets `[offset, offset + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    start: u64,
    len: u64,
    offset: u64,
}

/// The read-only runs of one image in a sealed memory file.
#[derive(Debug)]
pub(super) struct SharedPages {
    file: OwnedFd,
    runs: Vec<Run>,
}

/// The page-aligned runs of adjacent read-only segments (what `mprotect` would protect).
pub(super) fn read_only_runs(image: &ElfImage) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for seg in image.segments.iter().filter(|s| !s.writable) {
        let (start, end) = (seg.aligned_start(), seg.aligned_end());
        match runs.last_mut() {
            Some((_, e)) if *e == start => *e = end,
            _ => runs.push((start, end)),
        }
    }
    runs
}

impl SharedPages {
    /// The image's read-only runs in a new sealed memory file; `None` when the image has none,
    /// or when a writable segment shares a page with one (that page cannot be read-only).
    pub(super) fn build(image: &ElfImage) -> Result<Option<SharedPages>, KvmError> {
        let ranges = read_only_runs(image);
        let clash = image.segments.iter().filter(|s| s.writable).any(|w| {
            let (ws, we) = (w.gpa & !(PAGE - 1), (w.gpa + w.memsz).div_ceil(PAGE) * PAGE);
            ranges.iter().any(|&(s, e)| ws < e && s < we)
        });
        if ranges.is_empty() || clash {
            return Ok(None);
        }
        let sys = |op: &'static str| move |source: io::Error| KvmError::Sys { op, source };
        // SAFETY: the name is a NUL-terminated literal and the flags are valid.
        let raw = unsafe {
            libc::memfd_create(
                c"summon-image-text".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if raw < 0 {
            return Err(sys("memfd_create for shared image pages")(
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: memfd_create returned this new descriptor, owned by nothing else.
        let file = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut runs = Vec::new();
        let mut offset = 0u64;
        for (start, end) in ranges {
            let mut bytes = vec![0u8; (end - start) as usize];
            for seg in image
                .segments
                .iter()
                .filter(|s| !s.writable && s.gpa >= start && s.gpa + s.filesz <= end)
            {
                let at = (seg.gpa - start) as usize;
                image.read_segment(seg, &mut bytes[at..at + seg.filesz as usize])?;
            }
            write_all_at(&file, &bytes, offset).map_err(sys("writing shared image pages"))?;
            runs.push(Run {
                start,
                len: end - start,
                offset,
            });
            offset += end - start;
        }
        let seals =
            libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
        // SAFETY: fcntl(F_ADD_SEALS) on a memfd we own, with valid seal flags.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(sys("sealing shared image pages")(io::Error::last_os_error()));
        }
        Ok(Some(SharedPages { file, runs }))
    }

    /// Maps every run over `mem`, read-only.
    pub(super) fn map_into(&self, mem: &mut GuestMemory) -> Result<(), KvmError> {
        for r in &self.runs {
            mem.map_read_only(r.start, r.len, &self.file, r.offset)?;
        }
        Ok(())
    }
}

fn write_all_at(file: &OwnedFd, mut bytes: &[u8], mut offset: u64) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: pwrite reads `bytes.len()` initialised bytes from the slice.
        let n = unsafe {
            libc::pwrite(
                file.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                offset as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        bytes = &bytes[n as usize..];
        offset += n as u64;
    }
    Ok(())
}
