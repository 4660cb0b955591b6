//! The boot working set of an image: the guest pages its first guest had touched by the time it
//! first waited for the network, learned once and populated ahead of time in the memory of the
//! prepared VMs that the next guests of the image take.
//!
//! A guest's start-up is mostly first touches of its pages, and each one is a host page fault
//! taken while the guest waits (on the nested development host about 25 µs, of which about 20 µs
//! is the host's own fault, docs/host-notes.md; on a VMX host a few µs). The prepared VMs are
//! made off the start path, at a lower priority, so backing those pages there moves that cost
//! off the cold path. Only pages the image's guests touch anyway are backed (the set is that of
//! a real start, capped at [`CAP`]), so a guest of the same image costs no more memory; a guest
//! of another image that takes the VM pays at most the set's size.

use std::ops::Range;
use std::sync::OnceLock;

use super::memory::GuestMemory;

/// The most a working set backs ahead, so that a guest that went idle only after touching much
/// of its memory does not make every later guest of its image that large from the start.
pub const CAP: u64 = 512 << 10;

/// The pages one guest of a memory size had touched when it first waited for the network.
#[derive(Debug)]
struct WorkingSet {
    mem_size: u64,
    ranges: Vec<Range<u64>>,
}

/// One image's working set, learned once, by the first of its guests to wait for the network.
#[derive(Debug, Default)]
pub struct Learned(OnceLock<WorkingSet>);

impl Learned {
    /// Whether a guest still has to learn it.
    pub fn is_known(&self) -> bool {
        self.0.get().is_some()
    }

    /// The ranges to back for a guest of `mem_size` (none for another size than the one learned).
    pub fn ranges(&self, mem_size: u64) -> &[Range<u64>] {
        match self.0.get() {
            Some(w) if w.mem_size == mem_size => &w.ranges,
            _ => &[],
        }
    }

    /// Learns it from `mem`, the memory of a guest that is waiting for the network now (its
    /// vCPU thread is in POLL, so the pages cannot change under the look). The first one wins.
    pub fn learn(&self, mem: &GuestMemory) {
        let _ = self.0.set(WorkingSet {
            mem_size: mem.size(),
            ranges: capped(mem.resident(), CAP),
        });
    }
}

/// The first `cap` bytes of `ranges`.
fn capped(ranges: Vec<Range<u64>>, cap: u64) -> Vec<Range<u64>> {
    let mut left = cap;
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        if left == 0 {
            break;
        }
        let len = (r.end - r.start).min(left);
        left -= len;
        out.push(r.start..r.start + len);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_is_capped_and_kept_for_its_memory_size_only() {
        let r = capped(vec![0..4096, 8192..20480, 40960..45056], 12288);
        assert_eq!(r, vec![0..4096, 8192..16384]);
        let mem = GuestMemory::new(1 << 20).unwrap();
        mem.load(0x3000, &[1]).unwrap();
        mem.load(0x5000, &[1; 8192]).unwrap();
        let l = Learned::default();
        assert!(!l.is_known());
        l.learn(&mem);
        assert!(l.is_known());
        assert_eq!(l.ranges(1 << 20), &[0x3000..0x4000, 0x5000..0x7000]);
        assert!(l.ranges(2 << 20).is_empty());
        // Backing them ahead makes exactly those pages resident in fresh memory.
        let fresh = GuestMemory::new(1 << 20).unwrap();
        fresh.populate(l.ranges(1 << 20));
        assert_eq!(fresh.resident(), vec![0x3000..0x4000, 0x5000..0x7000]);
    }
}
