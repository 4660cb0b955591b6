//! An instance's live counters, and where they live: on the heap when the VMM runs in the
//! caller's process, or in a memory region shared with the caller when it runs in a worker
//! process (`worker/`). Either way a reader (the daemon's reaper, a metrics scrape) reads them
//! with an atomic load, never a syscall.

use std::io;
use std::ops::Deref;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// Counters one instance keeps while it runs, readable without a syscall (atomics, updated by
/// the instance's own thread). The reaper judges idleness by `rx_frames`: only traffic towards
/// the guest keeps it alive, never what the guest sends on its own.
///
/// `repr(C)` and atomics only, so that it may sit in memory shared between processes.
#[derive(Debug, Default)]
#[repr(C)]
pub struct InstanceCounters {
    /// Frames delivered to the guest (host → guest).
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Frames the guest sent that reached the tap (guest → host).
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Frames the guest sent that the rate limit dropped.
    pub tx_dropped_frames: AtomicU64,
    /// Console bytes the rate limit dropped.
    pub console_dropped_bytes: AtomicU64,
    /// Times the vCPU thread was made to wait because the guest exited too often.
    pub exits_throttled: AtomicU64,
}

impl InstanceCounters {
    /// Every counter back to zero (a shared slot taken by a new instance).
    fn reset(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        for c in [
            &self.rx_frames,
            &self.rx_bytes,
            &self.tx_frames,
            &self.tx_bytes,
            &self.tx_dropped_frames,
            &self.console_dropped_bytes,
            &self.exits_throttled,
        ] {
            c.store(0, Relaxed);
        }
    }
}

/// Bytes per slot of a [`CounterRegion`]: a cache line, so that two instances' counters never
/// share one.
const SLOT: usize = 64;
const _: () = assert!(std::mem::size_of::<InstanceCounters>() <= SLOT);

/// A handle to one instance's counters (cheap to clone).
#[derive(Clone, Debug)]
pub struct Counters(Home);

#[derive(Clone, Debug)]
enum Home {
    Heap(Arc<InstanceCounters>),
    Shared(Arc<CounterRegion>, usize),
}

impl Counters {
    /// Slot `index` of `region`, zeroed: the caller owns the slot until its instance is gone.
    pub fn in_region(region: &Arc<CounterRegion>, index: usize) -> Option<Counters> {
        if index >= region.slots || !region.writable {
            return None;
        }
        let c = Counters(Home::Shared(region.clone(), index));
        c.reset();
        Some(c)
    }

    /// Slot `index` of a region mapped for reading ([`CounterRegion::open`]), as it is.
    pub fn read_from(region: &Arc<CounterRegion>, index: usize) -> Option<Counters> {
        (index < region.slots).then(|| Counters(Home::Shared(region.clone(), index)))
    }
}

impl Default for Counters {
    fn default() -> Self {
        Counters(Home::Heap(Arc::default()))
    }
}

impl From<Arc<InstanceCounters>> for Counters {
    fn from(c: Arc<InstanceCounters>) -> Self {
        Counters(Home::Heap(c))
    }
}

impl Deref for Counters {
    type Target = InstanceCounters;

    fn deref(&self) -> &InstanceCounters {
        match &self.0 {
            Home::Heap(c) => c,
            Home::Shared(region, i) => region.slot(*i),
        }
    }
}

/// Counter slots in a shared memory file (memfd), mapped by the process that writes them (the
/// worker, read-write) and by the one that reads them (the daemon, read-only).
#[derive(Debug)]
pub struct CounterRegion {
    base: *mut u8,
    slots: usize,
    /// Mapped read-write (the writer's side); the reader's mapping is never written.
    writable: bool,
    /// Kept so that it can be handed to the reading process.
    fd: OwnedFd,
}

// SAFETY: the region is only ever accessed through `&InstanceCounters` (atomics), which may be
// shared between threads; `base` is a mapping owned by this value until its drop.
unsafe impl Send for CounterRegion {}
// SAFETY: as above: shared access is atomic loads and stores only.
unsafe impl Sync for CounterRegion {}

impl CounterRegion {
    /// A new region of `slots` zeroed slots, mapped read-write.
    pub fn create(slots: usize) -> io::Result<CounterRegion> {
        let len = slots
            .max(1)
            .checked_mul(SLOT)
            .and_then(|l| libc::off_t::try_from(l).ok())
            .ok_or_else(|| io::Error::other("counter region too large"))?;
        // SAFETY: the name is a NUL-terminated literal; the flags are valid.
        let raw = unsafe {
            libc::memfd_create(
                c"summon-counters".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: memfd_create just returned this fd, which nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ftruncate on an fd we own, to a non-negative length.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // Its size fixed for good: a reader's mapping can never run past the file's end.
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: fcntl(F_ADD_SEALS) on a memfd we own, with valid seal flags.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Self::map(fd, slots.max(1), true)
    }

    /// Maps a region another process created (read-only: this side only reads). Refused unless
    /// the file is sealed against shrinking (a shrunk file would fault this side's reads).
    pub fn open(fd: OwnedFd, slots: usize) -> io::Result<CounterRegion> {
        // SAFETY: fcntl(F_GET_SEALS) only reads the seals of an fd we own.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err(io::Error::other(
                "counter region is not sealed against shrinking",
            ));
        }
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat writes a stat into `st` for an fd we own.
        if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fstat succeeded, so `st` is initialised.
        let size = unsafe { st.assume_init() }.st_size as usize;
        if slots == 0 || slots.checked_mul(SLOT).is_none_or(|need| size < need) {
            return Err(io::Error::other(format!(
                "counter region of {size} bytes cannot hold {slots} slots"
            )));
        }
        Self::map(fd, slots, false)
    }

    fn map(fd: OwnedFd, slots: usize, writable: bool) -> io::Result<CounterRegion> {
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a new shared mapping of a file we own, at an address the kernel picks; the
        // length is within the file (checked or set by the callers).
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                slots * SLOT,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(CounterRegion {
            base: base.cast(),
            slots,
            writable,
            fd,
        })
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    /// The memory file, to hand to the reading process.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    fn slot(&self, i: usize) -> &InstanceCounters {
        assert!(i < self.slots, "counter slot {i} out of {}", self.slots);
        // SAFETY: `base` maps `slots * SLOT` bytes for as long as `self` lives, page-aligned
        // (so every slot is 64-byte aligned, enough for AtomicU64); an InstanceCounters is
        // `repr(C)` atomics, valid for any bit pattern, and fits a slot. Only shared references
        // are made, and all access through them is atomic. A read-only mapping is only read.
        unsafe { &*self.base.add(i * SLOT).cast::<InstanceCounters>() }
    }
}

impl Counters {
    fn reset(&self) {
        self.deref().reset();
    }
}

impl Drop for CounterRegion {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; no reference into it outlives
        // `self` (each `Counters` holds an Arc of the region).
        unsafe { libc::munmap(self.base.cast(), self.slots * SLOT) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn a_reader_mapping_sees_the_writers_counts_and_a_new_owner_starts_at_zero() {
        let w = Arc::new(CounterRegion::create(4).unwrap());
        let fd = w.fd().try_clone().unwrap();
        let r = Arc::new(CounterRegion::open(fd, 4).unwrap());
        let a = Counters::in_region(&w, 2).unwrap();
        a.rx_frames.fetch_add(5, Relaxed);
        let seen = Counters::read_from(&r, 2).unwrap();
        assert_eq!(seen.rx_frames.load(Relaxed), 5);
        assert_eq!(
            Counters::read_from(&r, 1).unwrap().rx_frames.load(Relaxed),
            0
        );
        assert!(Counters::read_from(&r, 4).is_none());
        // The reader's mapping is never handed out for writing.
        assert!(Counters::in_region(&r, 1).is_none());
        let again = Counters::in_region(&w, 2).unwrap();
        assert_eq!(again.rx_frames.load(Relaxed), 0);
        assert!(Counters::in_region(&w, 4).is_none());
    }

    #[test]
    fn a_short_file_is_refused() {
        let w = CounterRegion::create(1).unwrap();
        let fd = w.fd().try_clone().unwrap();
        assert!(CounterRegion::open(fd, 1000).is_err());
    }
}
