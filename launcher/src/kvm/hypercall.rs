//! The eight hvt hypercalls (ABI section 3).
//!
//! Each handler reads the request struct from guest memory, checks every pointer in it (the
//! struct and each buffer must lie inside guest memory, and the host must be allowed to write
//! what it writes), performs the call and writes the out fields back. A bad pointer ends the
//! guest with a fault; a bad argument (wrong handle, out-of-range block) is EINVAL.

use std::mem::{offset_of, size_of};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use summon_hvt_abi::{hc, nr, ret, HYPERCALL_PIO_BASE};

use crate::backend::InstanceEvent;

use super::instance::End;
use super::memory::{AccessError, Pod};
use super::vcpu::VcpuRunner;

/// `Ok(None)`: resume the guest; `Ok(Some(end))`: the guest is over; `Err(detail)`: fault.
pub(super) type HcResult = Result<Option<End>, String>;

fn name(n: u16) -> &'static str {
    match n {
        nr::WALLTIME => "WALLTIME",
        nr::PUTS => "PUTS",
        nr::POLL => "POLL",
        nr::BLOCK_WRITE => "BLOCK_WRITE",
        nr::BLOCK_READ => "BLOCK_READ",
        nr::NET_WRITE => "NET_WRITE",
        nr::NET_READ => "NET_READ",
        nr::HALT => "HALT",
        _ => "unknown",
    }
}

fn access(call: u16, what: &str, gpa: u64, len: u64, e: AccessError, mem_size: u64) -> String {
    match e {
        AccessError::OutOfBounds => format!(
            "hypercall {}: {what} at {gpa:#x} ({len} bytes) is outside guest memory (mem_size {mem_size:#x})",
            name(call)
        ),
        AccessError::ReadOnly => format!(
            "hypercall {}: {what} at {gpa:#x} ({len} bytes) lies in read-only memory",
            name(call)
        ),
    }
}

impl VcpuRunner {
    pub(super) fn hypercall(&mut self, port: u16, gpa: u64) -> HcResult {
        let call = port.wrapping_sub(HYPERCALL_PIO_BASE);
        if port < HYPERCALL_PIO_BASE || call == 0 || call > nr::MAX {
            return Err(format!("out to unknown port {port:#x} (value {gpa:#x})"));
        }
        match call {
            nr::WALLTIME => self.walltime(gpa),
            nr::PUTS => self.puts(gpa),
            nr::POLL => self.poll(gpa),
            nr::BLOCK_WRITE | nr::BLOCK_READ => self.block(call, gpa),
            nr::NET_WRITE => self.net_write(gpa),
            nr::NET_READ => self.net_read(gpa),
            _ => self.halt(gpa),
        }
    }

    /// Reads the request struct of `call` at `gpa`.
    fn request<T: Pod>(&self, call: u16, gpa: u64) -> Result<T, String> {
        self.mem.read_obj::<T>(gpa).map_err(|e| {
            access(
                call,
                "request struct",
                gpa,
                size_of::<T>() as u64,
                e,
                self.mem.size(),
            )
        })
    }

    /// Checks that the out fields of the struct at `gpa` may be written back.
    fn check_out<T>(&self, call: u16, gpa: u64) -> Result<(), String> {
        let len = size_of::<T>() as u64;
        self.mem
            .checked_writable(gpa, len)
            .map(|_| ())
            .map_err(|e| access(call, "request struct", gpa, len, e, self.mem.size()))
    }

    /// Writes one out field; the struct was checked by `check_out`.
    fn put<V: Pod>(&self, gpa: u64, offset: usize, v: V) {
        let _ = self.mem.write_obj(gpa + offset as u64, &v);
    }

    fn walltime(&mut self, gpa: u64) -> HcResult {
        let _: hc::Walltime = self.request(nr::WALLTIME, gpa)?;
        self.check_out::<hc::Walltime>(nr::WALLTIME, gpa)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        self.put(gpa, offset_of!(hc::Walltime, nsecs), now);
        Ok(None)
    }

    fn puts(&mut self, gpa: u64) -> HcResult {
        let r: hc::Puts = self.request(nr::PUTS, gpa)?;
        let data = self
            .mem
            .slice(r.data, r.len)
            .map_err(|e| access(nr::PUTS, "data", r.data, r.len, e, self.mem.size()))?;
        let events = &self.events;
        let dropped = self.console.write(data, &|e| events.send(e));
        if dropped > 0 {
            self.counters
                .console_dropped_bytes
                .fetch_add(dropped, Relaxed);
        }
        Ok(None)
    }

    fn halt(&mut self, gpa: u64) -> HcResult {
        let r: hc::Halt = self.request(nr::HALT, gpa)?;
        // The cookie may point to a core-dump area; this launcher writes no core dumps.
        Ok(Some(End::Halt(r.exit_status)))
    }

    fn net_ready(&mut self) {
        if !self.net_ready_sent {
            self.net_ready_sent = true;
            self.emit(InstanceEvent::NetReady);
            if let Some(pool) = self.booted.take() {
                pool.booted();
            }
        }
    }

    fn block(&mut self, call: u16, gpa: u64) -> HcResult {
        let r: hc::Block = self.request(call, gpa)?;
        self.check_out::<hc::Block>(call, gpa)?;
        let ret_at = offset_of!(hc::Block, ret);
        let Some(dev) = self.devices.block(r.handle) else {
            self.put(gpa, ret_at, ret::EINVAL);
            return Ok(None);
        };
        let buf = if call == nr::BLOCK_READ {
            self.mem.checked_writable(r.data, r.len)
        } else {
            self.mem.checked(r.data, r.len)
        }
        .map_err(|e| access(call, "data", r.data, r.len, e, self.mem.size()))?;
        if !dev.in_range(r.offset, r.len) {
            self.put(gpa, ret_at, ret::EINVAL);
            return Ok(None);
        }
        let len = r.len as usize;
        let done = if call == nr::BLOCK_READ {
            dev.read_at(buf, len, r.offset)
        } else {
            dev.write_at(buf, len, r.offset)
        };
        match done {
            Ok(n) if n == len => {
                self.put(gpa, ret_at, ret::OK);
                Ok(None)
            }
            // The ABI makes host-side I/O failures fatal: the guest cannot recover a half-done
            // sector write meaningfully.
            Ok(n) => Err(format!(
                "hypercall {}: short host I/O on block device {}: {n} of {len} bytes at offset {}",
                name(call),
                r.handle,
                r.offset
            )),
            Err(e) => Err(format!(
                "hypercall {}: host I/O error on block device {} at offset {}: {e}",
                name(call),
                r.handle,
                r.offset
            )),
        }
    }

    fn net_write(&mut self, gpa: u64) -> HcResult {
        let r: hc::Net = self.request(nr::NET_WRITE, gpa)?;
        self.check_out::<hc::Net>(nr::NET_WRITE, gpa)?;
        let ret_at = offset_of!(hc::Net, ret);
        let data = self
            .mem
            .slice(r.data, r.len)
            .map_err(|e| access(nr::NET_WRITE, "data", r.data, r.len, e, self.mem.size()))?;
        let Some(dev) = self.devices.net(r.handle) else {
            self.put(gpa, ret_at, ret::EINVAL);
            return Ok(None);
        };
        if let Some(limit) = &mut self.tx_limit {
            if !limit.admit(r.len, Instant::now()) {
                // Dropped as a lossy link drops: the guest was told OK and its network stack
                // retransmits or gives up, as it would on a congested wire.
                self.counters.tx_dropped_frames.fetch_add(1, Relaxed);
                self.put(gpa, ret_at, ret::OK);
                return Ok(None);
            }
        }
        let rc = match dev.write_frame(data) {
            Ok(true) => {
                self.counters.tx_frames.fetch_add(1, Relaxed);
                self.counters.tx_bytes.fetch_add(r.len, Relaxed);
                ret::OK
            }
            Ok(false) => ret::EUNSPEC,
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => ret::AGAIN,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => ret::EINVAL,
            Err(_) => ret::EUNSPEC,
        };
        self.put(gpa, ret_at, rc);
        Ok(None)
    }

    fn net_read(&mut self, gpa: u64) -> HcResult {
        let r: hc::Net = self.request(nr::NET_READ, gpa)?;
        self.check_out::<hc::Net>(nr::NET_READ, gpa)?;
        let ret_at = offset_of!(hc::Net, ret);
        let buf = self
            .mem
            .checked_writable(r.data, r.len)
            .map_err(|e| access(nr::NET_READ, "buffer", r.data, r.len, e, self.mem.size()))?;
        let Some(dev) = self.devices.net(r.handle) else {
            self.put(gpa, ret_at, ret::EINVAL);
            return Ok(None);
        };
        let result = dev.read_frame(buf, r.len as usize);
        self.net_ready();
        match result {
            Ok(Some(n)) => {
                self.counters.rx_frames.fetch_add(1, Relaxed);
                self.counters.rx_bytes.fetch_add(n as u64, Relaxed);
                self.put(gpa, offset_of!(hc::Net, len), n as u64);
                self.put(gpa, ret_at, ret::OK);
            }
            Ok(None) => self.put(gpa, ret_at, ret::AGAIN),
            Err(_) => self.put(gpa, ret_at, ret::EUNSPEC),
        }
        Ok(None)
    }

    /// POLL's set, built once: the net devices' fds (in this thread's own table).
    fn poll_set(&mut self) {
        if self.poll_fds.len() == self.devices.nets().count() {
            return;
        }
        let (fds, handles) = self
            .devices
            .nets()
            .map(|(h, n)| {
                let fd = libc::pollfd {
                    fd: n.fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                (fd, h)
            })
            .unzip();
        self.poll_fds = fds;
        self.poll_handles = handles;
    }

    /// At the guest's first wait for the network (nothing ready on its NICs), records the pages
    /// it has touched as its image's working set (`working_set.rs`). Until then each POLL costs
    /// one more `ppoll`, with a zero timeout; the record is one `mincore`, once per image.
    fn learn_if_waiting(&mut self) {
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        for p in &mut self.poll_fds {
            p.revents = 0;
        }
        // SAFETY: ppoll on this runner's own pollfd array with its length, a zero timeout and no
        // signal mask (a kick that interrupts it only makes it return -1).
        let n = unsafe {
            libc::ppoll(
                self.poll_fds.as_mut_ptr(),
                self.poll_fds.len() as libc::nfds_t,
                &zero,
                std::ptr::null(),
            )
        };
        if n == 0 {
            if let Some(l) = self.learn.take() {
                l.learn(&self.mem);
            }
        }
    }

    fn poll(&mut self, gpa: u64) -> HcResult {
        let r: hc::Poll = self.request(nr::POLL, gpa)?;
        self.check_out::<hc::Poll>(nr::POLL, gpa)?;
        if self.devices.has_net() {
            self.net_ready();
        }
        self.poll_set();
        if self.learn.is_some() && self.net_ready_sent {
            self.learn_if_waiting();
        }
        // A timeout too large to represent means "wait for a frame or a request". No eventfd,
        // no epoll: ppoll on the taps, and a stop or suspend kicks with a signal that only the
        // call itself lets in (see `Control::sleep`).
        let deadline = Instant::now().checked_add(Duration::from_nanos(r.timeout_nsecs));
        loop {
            let timeout = deadline.map(|d| {
                let left = d.saturating_duration_since(Instant::now());
                libc::timespec {
                    tv_sec: left.as_secs() as libc::time_t,
                    tv_nsec: left.subsec_nanos() as libc::c_long,
                }
            });
            for p in &mut self.poll_fds {
                p.revents = 0;
            }
            let n = match self.control.sleep(&mut self.poll_fds, timeout.as_ref()) {
                Err(end) => return Ok(Some(end)),
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(format!("hypercall POLL: ppoll failed: {e}")),
            };
            let mut ready: u64 = 0;
            let mut count = 0;
            if n > 0 {
                for (p, &h) in self.poll_fds.iter_mut().zip(&self.poll_handles) {
                    // Level-triggered, like the reference tender: a frame left unread keeps
                    // POLL ready.
                    if p.revents & libc::POLLIN != 0 {
                        if let Some(bit) = 1u64.checked_shl(h as u32) {
                            ready |= bit;
                            count += 1;
                        }
                    } else if p.revents != 0 {
                        // An error or hang-up without data: the tap is gone (its link deleted,
                        // as at daemon exit). Polled no more (ppoll skips a negative fd), so
                        // the guest neither wakes for it nor spins on it; its writes fail.
                        p.fd = -1;
                    }
                }
            }
            let expired = deadline.is_some_and(|d| Instant::now() >= d);
            if count > 0 || expired {
                self.put(gpa, offset_of!(hc::Poll, ready_set), ready);
                self.put(gpa, offset_of!(hc::Poll, ret), count);
                return Ok(None);
            }
        }
    }
}
