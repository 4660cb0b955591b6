//! The low-memory structures the tender writes (hvt ABI section 2): GDT at 0x1000, an identity
//! map of the first 4 GiB with 2 MiB pages at 0x2000..0x7fff, and the 4 KiB page table for the
//! first 2 MiB at 0x8000.
//!
//! They never change, so they are built once per process as one byte image of 0x1000..0x9000 and
//! copied into each guest with a single memcpy.

use std::sync::OnceLock;

use summon_hvt_abi::{GDT_BASE, LOAD_BASE, LOW_GUARD_END, PDPT_BASE, PD_BASE, PML4_BASE, PT_BASE};

use super::memory::GuestMemory;

const PAGE: u64 = 4096;
const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const PAGE_SIZE_2M: u64 = 1 << 7;

/// Start and end (exclusive) of the region the template covers.
const TEMPLATE_START: u64 = GDT_BASE;
const TEMPLATE_END: u64 = PT_BASE + PAGE;

/// GDT entries: null, 64-bit code (0x08), data (0x10).
pub const GDT: [u64; 3] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
];
/// GDTR limit: three 8-byte entries.
pub const GDT_LIMIT: u16 = 23;

/// Packs a segment descriptor from its flags (type, S, DPL, P in bits 0..8, AVL/L/DB/G in 12..16),
/// base and 20-bit limit.
const fn gdt_entry(flags: u64, base: u64, limit: u64) -> u64 {
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

fn template() -> &'static [u8] {
    static T: OnceLock<Vec<u8>> = OnceLock::new();
    T.get_or_init(|| {
        let mut t = vec![0u8; (TEMPLATE_END - TEMPLATE_START) as usize];
        let mut put = |gpa: u64, val: u64| {
            let off = (gpa - TEMPLATE_START) as usize;
            t[off..off + 8].copy_from_slice(&val.to_le_bytes());
        };
        for (i, e) in GDT.iter().enumerate() {
            put(GDT_BASE + 8 * i as u64, *e);
        }
        put(PML4_BASE, PDPT_BASE | PRESENT | WRITABLE);
        for i in 0..4u64 {
            put(PDPT_BASE + 8 * i, (PD_BASE + i * PAGE) | PRESENT | WRITABLE);
        }
        // 2048 2 MiB pages = 4 GiB; the first one is replaced by the 4 KiB page table.
        for i in 0..2048u64 {
            put(
                PD_BASE + 8 * i,
                (i << 21) | PRESENT | WRITABLE | PAGE_SIZE_2M,
            );
        }
        put(PD_BASE, PT_BASE | PRESENT | WRITABLE);
        for i in 0..512u64 {
            let addr = i * PAGE;
            let flags = if addr < LOW_GUARD_END {
                0
            } else if addr < LOAD_BASE {
                PRESENT
            } else {
                PRESENT | WRITABLE
            };
            put(PT_BASE + 8 * i, if flags == 0 { 0 } else { addr | flags });
        }
        t
    })
}

/// Writes the GDT and page tables into fresh guest memory.
pub fn write_low_memory(mem: &GuestMemory) {
    // The template ends at 0x9000, far below the 2 MiB minimum guest memory.
    mem.load(TEMPLATE_START, template())
        .expect("low memory structures fit in the minimum guest memory");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_matches_the_abi() {
        // The classic flat 64-bit code and data descriptors.
        assert_eq!(GDT[1], 0x00af_9b00_0000_ffff);
        assert_eq!(GDT[2], 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn page_tables_guard_low_memory() {
        let t = template();
        let at = |gpa: u64| {
            let o = (gpa - TEMPLATE_START) as usize;
            u64::from_le_bytes(t[o..o + 8].try_into().unwrap())
        };
        assert_eq!(at(PT_BASE), 0);
        assert_eq!(at(PT_BASE + 8 * 15), 0);
        assert_eq!(at(PT_BASE + 8 * 16), 0x10000 | PRESENT);
        assert_eq!(at(PT_BASE + 8 * 256), 0x100000 | PRESENT | WRITABLE);
        assert_eq!(at(PD_BASE + 8), (2 << 20) | 0x83);
        assert_eq!(at(PD_BASE + 8 * 2047), (2047 << 21) | 0x83);
    }
}
