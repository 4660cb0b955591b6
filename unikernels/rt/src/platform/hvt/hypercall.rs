//! Hypercalls: `outl` of the request struct's guest-physical address to port 0x500 + nr.
//! Memory is identity-mapped, so a pointer is its GPA; the whole image and heap sit below 4 GiB.

use core::arch::asm;
use summon_hvt_abi::{hc, nr, ret, HYPERCALL_PIO_BASE};

/// Issues hypercall `nr` with the request at `arg`.
///
/// # Safety
/// `arg` must point to the request struct of hypercall `nr`, and every buffer it names must be
/// valid for the access that hypercall makes.
#[inline(always)]
unsafe fn hypercall<T>(nr: u16, arg: *mut T) {
    // SAFETY: port I/O is allowed in ring 3 (IOPL=3) and ring 0; the tender reads and writes
    // only the request and the buffers it names, which the caller guarantees; the asm has no
    // `nomem`, so the compiler keeps the request's stores before it and re-reads it after.
    unsafe {
        asm!(
            "out dx, eax",
            in("dx") HYPERCALL_PIO_BASE + nr,
            in("eax") arg as usize as u32,
            options(nostack, preserves_flags)
        );
    }
}

/// Writes `data` to the console.
pub fn puts(data: &[u8]) {
    let mut req = hc::Puts {
        data: data.as_ptr() as u64,
        len: data.len() as u64,
    };
    // SAFETY: `req` names `data`, which lives across the call.
    unsafe { hypercall(nr::PUTS, &mut req) }
}

/// CLOCK_REALTIME of the host, in nanoseconds since the Unix epoch.
pub fn walltime() -> u64 {
    let mut req = hc::Walltime::default();
    // SAFETY: WALLTIME only writes `req`.
    unsafe { hypercall(nr::WALLTIME, &mut req) }
    req.nsecs
}

/// Waits until a net device is readable or `timeout_ns` passed; returns the ready set.
pub fn poll(timeout_ns: u64) -> u64 {
    let mut req = hc::Poll {
        timeout_nsecs: timeout_ns,
        ..Default::default()
    };
    // SAFETY: POLL only writes `req`.
    unsafe { hypercall(nr::POLL, &mut req) }
    req.ready_set
}

/// Outcome of a net hypercall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetResult {
    /// Done; for a read, the frame's length.
    Ok(usize),
    /// Nothing to read.
    Again,
    /// The tender refused the request (`ret` as the ABI defines it).
    Error(i32),
}

fn net_result(r: i32, len: u64) -> NetResult {
    match r {
        ret::OK => NetResult::Ok(len as usize),
        ret::AGAIN => NetResult::Again,
        e => NetResult::Error(e),
    }
}

/// Writes one whole Ethernet frame to net device `handle`.
pub fn net_write(handle: u64, frame: &[u8]) -> NetResult {
    let mut req = hc::Net {
        handle,
        data: frame.as_ptr() as u64,
        len: frame.len() as u64,
        ret: 0,
    };
    // SAFETY: the tender reads `frame.len()` bytes of `frame`, which lives across the call.
    unsafe { hypercall(nr::NET_WRITE, &mut req) }
    net_result(req.ret, req.len)
}

/// Reads one frame from net device `handle` into `buf`.
pub fn net_read(handle: u64, buf: &mut [u8]) -> NetResult {
    let mut req = hc::Net {
        handle,
        data: buf.as_mut_ptr() as u64,
        len: buf.len() as u64,
        ret: 0,
    };
    // SAFETY: the tender writes at most `buf.len()` bytes into `buf`, exclusively borrowed here.
    unsafe { hypercall(nr::NET_READ, &mut req) }
    match net_result(req.ret, req.len) {
        NetResult::Ok(n) if n > buf.len() => NetResult::Error(ret::EUNSPEC),
        r => r,
    }
}

/// Ends the guest with `status` (0 success, 1 failure, 255 abort).
pub fn halt(status: i32) -> ! {
    let mut req = hc::Halt {
        cookie: 0,
        exit_status: status,
    };
    // SAFETY: HALT reads `req`; a zero cookie names no buffer.
    unsafe { hypercall(nr::HALT, &mut req) }
    // A tender never resumes a halted guest; should one do so, stay put without burning CPU.
    loop {
        poll(u64::from(u32::MAX));
    }
}
