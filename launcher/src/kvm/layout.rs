//! The low-memory structures the tender writes (hvt ABI section 2): GDT at 0x1000, an identity
//! map of the first 4 GiB with 2 MiB pages at 0x2000..0x7fff, and the 4 KiB page table for the
//! first 2 MiB at 0x8000.
//!
//! They are written straight into each guest's fresh (zeroed) memory, only the non-zero entries:
//! a template built once and copied would touch its own 8 pages of host heap on top of the
//! guest's, and a page fault costs several microseconds on a nested host (a one-shot process
//! like summon-run pays for every one).

use summon_hvt_abi::{GDT_BASE, LOAD_BASE, LOW_GUARD_END, PDPT_BASE, PD_BASE, PML4_BASE, PT_BASE};

use super::memory::GuestMemory;

const PAGE: u64 = 4096;
const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const PAGE_SIZE_2M: u64 = 1 << 7;

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

/// Calls `put(gpa, entry)` for every non-zero 8-byte entry of the GDT and page tables.
fn entries(mut put: impl FnMut(u64, u64)) {
    // The null descriptor stays zero.
    for (i, e) in GDT.iter().enumerate().skip(1) {
        put(GDT_BASE + 8 * i as u64, *e);
    }
    put(PML4_BASE, PDPT_BASE | PRESENT | WRITABLE);
    for i in 0..4u64 {
        put(PDPT_BASE + 8 * i, (PD_BASE + i * PAGE) | PRESENT | WRITABLE);
    }
    // 2048 2 MiB pages = 4 GiB; the first one is the 4 KiB page table.
    put(PD_BASE, PT_BASE | PRESENT | WRITABLE);
    for i in 1..2048u64 {
        put(
            PD_BASE + 8 * i,
            (i << 21) | PRESENT | WRITABLE | PAGE_SIZE_2M,
        );
    }
    // The guard pages below LOW_GUARD_END stay zero (not present).
    for i in LOW_GUARD_END / PAGE..512 {
        let addr = i * PAGE;
        let flags = if addr < LOAD_BASE {
            PRESENT
        } else {
            PRESENT | WRITABLE
        };
        put(PT_BASE + 8 * i, addr | flags);
    }
}

/// Writes the GDT and page tables into fresh (zeroed) guest memory.
pub fn write_low_memory(mem: &GuestMemory) {
    // The tables end at 0x9000, far below the 2 MiB minimum guest memory.
    entries(|gpa, val| {
        mem.load_obj(gpa, &val)
            .expect("low memory structures fit in the minimum guest memory")
    });
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
        let mem = GuestMemory::new(2 << 20).unwrap();
        write_low_memory(&mem);
        let at = |gpa: u64| mem.read_obj::<u64>(gpa).unwrap();
        assert_eq!(at(GDT_BASE + 8), GDT[1]);
        assert_eq!(at(PML4_BASE), PDPT_BASE | PRESENT | WRITABLE);
        assert_eq!(
            at(PDPT_BASE + 8 * 3),
            (PD_BASE + 3 * PAGE) | PRESENT | WRITABLE
        );
        assert_eq!(at(PD_BASE), PT_BASE | PRESENT | WRITABLE);
        assert_eq!(at(PT_BASE), 0);
        assert_eq!(at(PT_BASE + 8 * 15), 0);
        assert_eq!(at(PT_BASE + 8 * 16), 0x10000 | PRESENT);
        assert_eq!(at(PT_BASE + 8 * 256), 0x100000 | PRESENT | WRITABLE);
        assert_eq!(at(PT_BASE + 8 * 511), 0x1ff000 | PRESENT | WRITABLE);
        assert_eq!(at(PD_BASE + 8), (2 << 20) | 0x83);
        assert_eq!(at(PD_BASE + 8 * 2047), (2047 << 21) | 0x83);
    }
}
