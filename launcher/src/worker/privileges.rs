//! What a worker process gives up before it runs any guest: every capability. A worker runs
//! guest code through KVM and holds guests' taps, but creates no link, binds no port and
//! reads no other user's file: /dev/kvm is opened by group or owner, taps arrive as
//! descriptors, and cgroupfs (CPU quotas) checks only file modes. summond keeps
//! `CAP_NET_ADMIN` for the plumbing; a VMM compromised by its guest does not get it.
//!
//! A worker is also made non-dumpable. Workers share one uid and, with no capabilities, one
//! (empty) permitted set, which is all the kernel asks before it lets one of them open
//! another's `/proc/PID/mem`: guest memory of other services. Landlock already refuses that
//! across workers where the kernel has it (each worker is a domain of its own); this holds
//! without it, and keeps guest memory out of core dumps.

use std::io;

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Empties this process's effective, permitted, inheritable and ambient capability sets, sets
/// `no_new_privs` and clears the dumpable flag, for every thread created from now on (call it
/// before any other thread exists). The bounding set is emptied too where the process may
/// (`CAP_SETPCAP`); without it an empty permitted set and `no_new_privs` already mean an
/// `execve` gains nothing.
pub fn drop_capabilities() -> io::Result<()> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes integer arguments only. EINVAL on kernels without
    // ambient capabilities, which then have none to clear.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    for cap in 0..=last_cap() {
        // SAFETY: PR_CAPBSET_DROP takes integer arguments only; EPERM (no CAP_SETPCAP) or
        // EINVAL (a number this kernel does not know) leave the set as it was.
        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
    }
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads a version-3 header and two data words that live through the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: PR_SET_DUMPABLE takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The highest capability number this kernel knows.
fn last_cap() -> libc::c_ulong {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}
