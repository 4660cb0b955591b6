//! Ring-3 start: check the boot info, set up clock, traps and heap, run the application.

use summon_hvt_abi::{BootInfo, MftEntry, MftHeader, CMDLINE_SIZE, MFT_MAX_ENTRIES};

use crate::sync::Once;

use super::hypercall;
use crate::platform::trap;

static BOOT: Once<BootInfo> = Once::new();

extern "Rust" {
    /// The application's `main`, named by [`main!`](crate::main).
    fn __rt_main() -> i32;
}

extern "C" {
    /// End of the image (hvt.ld), page aligned.
    static rt_image_end: u8;
}

/// Jumped to by `iretq` from the ring-0 entry, in ring 3, RSP = top of memory minus 8.
#[unsafe(no_mangle)]
extern "C" fn rt_start(boot: *const BootInfo) -> ! {
    // SAFETY: the tender passes the address of the boot info it wrote, mapped read-only for us.
    let info = unsafe { boot.read() };
    BOOT.set(info);
    crate::time::init(info.cpu_cycle_freq);
    trap::install();
    let image_end = &raw const rt_image_end as u64;
    let heap_start = info.kernel_end.max(image_end);
    let stack = (info.mem_size / 8).clamp(64 << 10, 1 << 20);
    crate::heap::init(heap_start, info.mem_size.saturating_sub(stack));
    // SAFETY: `main!` defines __rt_main with this signature.
    let status = unsafe { __rt_main() };
    hypercall::halt(status)
}

/// The boot info the tender passed.
pub fn info() -> &'static BootInfo {
    BOOT.get()
}

/// The command line, or `None` if the tender's pointer is bad or it is not UTF-8.
pub fn cmdline() -> Option<&'static str> {
    let info = info();
    let start = info.cmdline;
    if start < summon_hvt_abi::LOW_GUARD_END || start >= info.mem_size {
        return None;
    }
    let len = (CMDLINE_SIZE as u64).min(info.mem_size - start) as usize;
    // SAFETY: [start, start + len) is inside guest memory, which is identity-mapped, and the
    // tender never changes it once we run.
    let bytes = unsafe { core::slice::from_raw_parts(start as *const u8, len) };
    let end = bytes.iter().position(|&b| b == 0)?;
    core::str::from_utf8(&bytes[..end]).ok()
}

/// The tender's filled-in copy of the manifest (devices, MACs, MTUs).
pub fn manifest() -> &'static [MftEntry] {
    let info = info();
    let start = info.mft;
    let header_size = core::mem::size_of::<MftHeader>() as u64;
    if start < summon_hvt_abi::LOW_GUARD_END
        || !start.is_multiple_of(8)
        || start.saturating_add(header_size) > info.mem_size
    {
        return &[];
    }
    // SAFETY: the header lies inside identity-mapped guest memory and is aligned.
    let header = unsafe { (start as *const MftHeader).read() };
    let entries = header.entries.min(MFT_MAX_ENTRIES) as u64;
    let size = entries * core::mem::size_of::<MftEntry>() as u64;
    if (start + header_size).saturating_add(size) > info.mem_size {
        return &[];
    }
    // SAFETY: `entries` entries follow the header inside guest memory; the tender (trusted, it
    // runs us) writes only 0 or 1 into their `attached` bools.
    unsafe {
        core::slice::from_raw_parts((start + header_size) as *const MftEntry, entries as usize)
    }
}
