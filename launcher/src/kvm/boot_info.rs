//! `struct hvt_boot_info` at 0x10000, the manifest copy after it, then the command line.

use summon_hvt_abi::{BootInfo, BOOT_INFO_BASE, CMDLINE_SIZE};

use super::error::KvmError;
use super::memory::GuestMemory;

/// Joins the arguments into the guest command line, checking it fits the ABI's buffer.
pub fn cmdline(args: &[String]) -> Result<Vec<u8>, KvmError> {
    let line = args.join(" ");
    if line.as_bytes().contains(&0) {
        return Err(KvmError::CmdlineNul);
    }
    if line.len() >= CMDLINE_SIZE {
        return Err(KvmError::CmdlineTooLong {
            len: line.len(),
            max: CMDLINE_SIZE - 1,
        });
    }
    Ok(line.into_bytes())
}

/// Writes the boot info, the manifest copy `mft` and the command line `cmdline` (without NUL;
/// the memory is fresh and zeroed, so the terminator is already there).
pub fn write_boot_info(
    mem: &GuestMemory,
    kernel_end: u64,
    tsc_khz: u32,
    mft: &[u8],
    cmdline: &[u8],
) {
    let mft_gpa = BOOT_INFO_BASE + std::mem::size_of::<BootInfo>() as u64;
    let cmdline_gpa = mft_gpa + mft.len() as u64;
    let info = BootInfo {
        mem_size: mem.size(),
        kernel_end,
        cpu_cycle_freq: u64::from(tsc_khz) * 1000,
        cmdline: cmdline_gpa,
        mft: mft_gpa,
        host_features: 0,
        guest_features: 0,
        net_ring: 0,
    };
    // The whole block (56 + at most 6664 + 8192 bytes) ends below 0x14000, far inside the
    // 2 MiB minimum, and below the load base, so it cannot collide with the image.
    let fits = "boot info fits below the load base";
    mem.load_obj(BOOT_INFO_BASE, &info).expect(fits);
    mem.load(mft_gpa, mft).expect(fits);
    mem.load(cmdline_gpa, cmdline).expect(fits);
}
