//! Ring-3 start: read the PVH start info (command line, memory map), calibrate the clock,
//! install the traps and the sleep gate, move to a stack at the top of RAM, run the application.

use core::arch::asm;

use crate::sync::Once;

/// `hvm_start_info` (Xen's arch-x86/hvm/start_info.h), version 1.
#[repr(C)]
#[derive(Clone, Copy)]
struct StartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

/// `hvm_memmap_table_entry`: an e820 entry.
#[repr(C)]
#[derive(Clone, Copy)]
struct MemmapEntry {
    addr: u64,
    size: u64,
    kind: u32,
    reserved: u32,
}

const START_INFO_MAGIC: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;
/// The page tables map 4 GiB; nothing above is reachable.
const MAPPED_END: u64 = 1 << 32;
/// Lowest address the loader's structures may have (page 0 is mapped while they are read).
const LOW_END: u64 = 0x8;
const CMDLINE_MAX: usize = 8192;
const MEMMAP_MAX: u32 = 128;
const IMAGE_BASE: u64 = 0x10_0000;

/// What rt keeps from the start info.
pub struct Boot {
    pub cmdline: Option<&'static str>,
    /// End of the RAM range the image sits in (below 4 GiB).
    pub mem_end: u64,
}

static BOOT: Once<Boot> = Once::new();

extern "Rust" {
    fn __rt_main() -> i32;
}

extern "C" {
    static rt_image_end: u8;
}

extern "C" {
    /// The page table of the first 2 MiB (shared.rs); entry 0 maps the null page.
    static mut rt_pt: u64;
}

/// Present, user, read-only, accessed: how page 0 is mapped while the start info is read.
const PTE_USER_RO: u64 = 0x25;

/// Runs `f` with page 0 mapped read-only if `needed`: SeaBIOS's PVH option ROM puts the
/// memory map there (at 0x5a8). Making a not-present entry present needs no TLB flush; making
/// it not present again does (the null guard must fault), through the flush gate.
fn with_page_zero<R>(needed: bool, f: impl FnOnce() -> R) -> R {
    if !needed {
        return f();
    }
    let pte = &raw mut rt_pt;
    // SAFETY: rt_pt is the identity page table of the first 2 MiB, user-writable data;
    // entry 0 maps page 0 to itself, read-only.
    unsafe { pte.write_volatile(PTE_USER_RO) };
    let r = f();
    // SAFETY: as above; back to the null guard.
    unsafe { pte.write_volatile(0) };
    super::idle::flush_tlb();
    r
}

/// Jumped to by `iretq` from the entry, in ring 3, on the static boot stack; `info` is what
/// the loader passed in EBX.
#[unsafe(no_mangle)]
extern "C" fn rt_start(info: u32) -> ! {
    super::serial::init();
    // The gates (the TLB flush among them) must be in place before page 0 is touched.
    crate::platform::trap::install();
    super::idle::init();
    let boot = with_page_zero(needs_page_zero(u64::from(info)), || {
        read_start_info(u64::from(info))
    })
    .unwrap_or_else(|e| crate::fatal(e));
    let mem_end = boot.mem_end;
    BOOT.set(boot);
    crate::time::init(super::tsc::frequency());
    let image_end = &raw const rt_image_end as u64;
    let stack = (mem_end / 8).clamp(64 << 10, 1 << 20);
    if image_end + stack + (1 << 20) > mem_end {
        crate::fatal("less than 1 MiB of RAM left after the image and the stack");
    }
    crate::heap::init(image_end, mem_end - stack);
    // SAFETY: [mem_end - stack, mem_end) is RAM (the memory map says so), identity-mapped
    // read-write, and nothing else uses it; run_main never returns, so nothing on the boot stack
    // is needed again.
    unsafe {
        asm!(
            "mov rsp, {top}",
            "call {main}",
            "ud2",
            top = in(reg) mem_end,
            main = sym run_main,
            options(noreturn)
        )
    }
}

extern "C" fn run_main() -> ! {
    // SAFETY: `main!` defines __rt_main with this signature.
    let status = unsafe { __rt_main() };
    super::halt(status)
}

/// Whether the start info, or the memory map or command line it points to, lies in page 0.
fn needs_page_zero(addr: u64) -> bool {
    if addr < 0x1000 {
        return true;
    }
    if addr >= MAPPED_END - core::mem::size_of::<StartInfo>() as u64 {
        return false;
    }
    // SAFETY: the start info lies above page 0 in mapped memory (it may be garbage if this was
    // not a PVH boot; only the two pointers are looked at).
    let info = unsafe { (addr as *const StartInfo).read_unaligned() };
    info.memmap_paddr < 0x1000 || info.cmdline_paddr < 0x1000
}

fn read_start_info(addr: u64) -> Result<Boot, &'static str> {
    let size = core::mem::size_of::<StartInfo>() as u64;
    if addr < LOW_END || addr.saturating_add(size) > MAPPED_END || !addr.is_multiple_of(4) {
        return Err("PVH start info pointer out of range (not booted through PVH?)");
    }
    // SAFETY: inside the identity-mapped 4 GiB and not the null page; the loader wrote it.
    let info = unsafe { (addr as *const StartInfo).read_unaligned() };
    if info.magic != START_INFO_MAGIC {
        return Err("bad PVH start info magic (not booted through PVH?)");
    }
    let cmdline = read_cmdline(info.cmdline_paddr);
    if info.version < 1 || info.memmap_entries == 0 {
        return Err("the PVH start info has no memory map (version 0 loader)");
    }
    let entries = info.memmap_entries.min(MEMMAP_MAX) as u64;
    let esize = core::mem::size_of::<MemmapEntry>() as u64;
    let map = info.memmap_paddr;
    if map < LOW_END || map.saturating_add(entries * esize) > MAPPED_END {
        return Err("PVH memory map pointer out of range");
    }
    let mut mem_end = 0;
    for i in 0..entries {
        // SAFETY: checked above to lie in mapped memory.
        let e = unsafe { ((map + i * esize) as *const MemmapEntry).read_unaligned() };
        let end = e.addr.saturating_add(e.size).min(MAPPED_END);
        if e.kind == E820_RAM && e.addr <= IMAGE_BASE && end > IMAGE_BASE {
            mem_end = end & !0xfff;
        }
    }
    if mem_end == 0 {
        return Err("no RAM at 1 MiB in the PVH memory map");
    }
    Ok(Boot { cmdline, mem_end })
}

/// The command line, copied out of the loader's memory (which may be page 0, unmapped later).
static mut CMDLINE: [u8; CMDLINE_MAX] = [0; CMDLINE_MAX];

fn read_cmdline(addr: u64) -> Option<&'static str> {
    if !(LOW_END..MAPPED_END).contains(&addr) {
        return None;
    }
    let len = (CMDLINE_MAX as u64).min(MAPPED_END - addr) as usize;
    // SAFETY: [addr, addr + len) is identity-mapped; the loader does not change it.
    let bytes = unsafe { core::slice::from_raw_parts(addr as *const u8, len) };
    let end = bytes.iter().position(|&b| b == 0)?;
    // SAFETY: start-up, one CPU: nothing else refers to CMDLINE yet, and it is never written
    // again after this copy, so the shared slice handed out stays valid.
    let copy = unsafe {
        let buf = core::slice::from_raw_parts_mut((&raw mut CMDLINE).cast::<u8>(), CMDLINE_MAX);
        buf[..end].copy_from_slice(&bytes[..end]);
        &buf[..end]
    };
    core::str::from_utf8(copy).ok()
}

/// The command line (`-append`, libvirt's `<cmdline>`), if any.
pub fn cmdline() -> Option<&'static str> {
    BOOT.get().cmdline
}

/// End of usable RAM.
pub fn mem_end() -> u64 {
    BOOT.get().mem_end
}
