//! The vCPU thread: KVM_RUN, exit decoding, and the end of the guest.
//!
//! Every way a guest can end other than HALT is a fault of that guest alone: the thread reports
//! it with the exit's name, RIP and address, tears the VM down and returns. Nothing a guest does
//! can make this thread panic or touch memory outside the guest's mapping.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};

use crate::backend::{EventSink, InstanceEvent};

use super::cgroup::Entered;
use super::devices::{Console, Devices};
use super::instance::{Control, End};
use super::memory::GuestMemory;
use super::warm::Job;

/// Everything the vCPU thread owns. Field order is drop order: the vCPU and the VM go before
/// the memory they map.
pub(super) struct VcpuRunner {
    /// Instance name, for the thread name.
    pub name: String,
    pub vcpu: VcpuFd,
    /// Never used after start, but must outlive `vcpu` and be closed before `mem` is unmapped.
    #[allow(dead_code)]
    pub vm: VmFd,
    pub mem: GuestMemory,
    pub devices: Devices,
    pub console: Console,
    pub events: EventSink,
    pub control: Arc<Control>,
    pub immediate_exit: *const AtomicU8,
    /// Created on the first POLL, so guests that never poll never pay for it.
    pub epoll: Option<OwnedFd>,
    pub net_ready_sent: bool,
    /// The CPU quota group this thread is in; held only to be dropped (retired) with the runner,
    /// on every path.
    #[allow(dead_code)]
    pub cpu_group: Option<Entered>,
}

/// An exit, copied out of kvm_run so the vCPU is free to borrow again.
enum Exit {
    IoOut {
        port: u16,
        data: [u8; 8],
        len: usize,
    },
    IoIn {
        port: u16,
        len: usize,
    },
    Mmio {
        gpa: u64,
        len: usize,
        write: bool,
    },
    MemoryFault {
        gpa: u64,
        size: u64,
    },
    Shutdown,
    InternalError,
    Hlt,
    FailEntry(u64),
    Intr,
    Other(String),
}

impl VcpuRunner {
    /// The parked thread's entry once it has a guest: set the registers, then run.
    pub fn start(vcpu: VcpuFd, job: Job) {
        // Order on this thread: cgroup, then the syscall filter, then the guest.
        let cpu_group = job.cpu_group.as_ref().and_then(|g| match g.enter() {
            Ok(entered) => Some(entered),
            Err(e) => {
                tracing::warn!(instance = %job.name, error = %e, "CPU quota not applied");
                None
            }
        });
        let set = vcpu.set_regs(&job.regs);
        let runner = VcpuRunner {
            name: job.name,
            vcpu,
            vm: job.vm,
            mem: job.mem,
            devices: job.devices,
            console: Console::default(),
            events: job.events,
            immediate_exit: job.control.immediate_exit_ptr(),
            control: job.control,
            epoll: None,
            net_ready_sent: false,
            cpu_group,
        };
        match set {
            Ok(()) => runner.run(),
            Err(e) => {
                (runner.events)(InstanceEvent::Faulted(format!(
                    "KVM_SET_REGS failed before the guest ran: {e}"
                )));
                runner.control.finish();
            }
        }
    }

    /// The thread body: run the guest to its end, report it, release everything.
    pub fn run(mut self) {
        set_thread_name(&self.name);
        // A panic here would be a launcher bug (or a panicking event sink); it must still end
        // with `finish`, or stop() would wait for a guest that is no longer run.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let end = self.run_loop();
            self.console.flush(&self.events);
            let event = match end {
                End::Halt(status) => InstanceEvent::Exited(status),
                End::Fault(reason) => InstanceEvent::Faulted(reason),
                End::Stop => InstanceEvent::Stopped,
            };
            (self.events)(event);
        }));
        if outcome.is_err() {
            tracing::error!(instance = %self.name, "vCPU thread panicked; guest ended");
        }
        self.control.finish();
        // Dropping `self` closes the vCPU and VM fds and unmaps guest memory, here on the vCPU
        // thread rather than on anybody's start or stop path, and at a lower priority: nothing
        // waits for it, while starts and running guests on the same cores do.
        // SAFETY: setpriority on this thread's own id (Linux nice values are per thread).
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) };
    }

    fn clear_immediate_exit(&self) {
        // SAFETY: points into our own kvm_run mapping, alive as long as `self.vcpu`.
        unsafe { (*self.immediate_exit).store(0, Ordering::SeqCst) };
    }

    fn run_loop(&mut self) -> End {
        loop {
            if self.control.requested() {
                if let Some(end) = self.control.handle_request() {
                    return end;
                }
            }
            let exit = match self.vcpu.run() {
                Ok(e) => decode(e),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    // Kicked: clear the flag before looking at the request (the controller
                    // sets the request first), or the next KVM_RUN would return at once.
                    self.clear_immediate_exit();
                    continue;
                }
                Err(e) if e.errno() == libc::EFAULT => {
                    return self.fault(
                        "KVM_RUN failed with EFAULT",
                        "guest access to read-only or unbacked host memory".into(),
                    );
                }
                Err(e) => return self.fault("KVM_RUN failed", e.to_string()),
            };
            match exit {
                Exit::IoOut { port, data, len } => {
                    if len != 4 {
                        return self.fault(
                            "KVM_EXIT_IO",
                            format!(
                                "out of {len} bytes to port {port:#x}: hypercalls are 4-byte outl"
                            ),
                        );
                    }
                    let gpa = u64::from(u32::from_le_bytes([data[0], data[1], data[2], data[3]]));
                    match self.hypercall(port, gpa) {
                        Ok(None) => {}
                        Ok(Some(end)) => return end,
                        Err(detail) => return self.fault("KVM_EXIT_IO", detail),
                    }
                }
                Exit::IoIn { port, len } => {
                    return self.fault(
                        "KVM_EXIT_IO",
                        format!("in of {len} bytes from unknown port {port:#x}"),
                    )
                }
                Exit::Mmio { gpa, len, write } => {
                    let what = if gpa < self.mem.size() {
                        "read-only guest memory"
                    } else {
                        "an address outside guest memory"
                    };
                    return self.fault(
                        "KVM_EXIT_MMIO",
                        format!(
                            "{} of {len} bytes at {gpa:#x}: {what}",
                            if write { "write" } else { "read" }
                        ),
                    );
                }
                Exit::MemoryFault { gpa, size } => {
                    return self.fault(
                        "KVM_EXIT_MEMORY_FAULT",
                        format!("access of {size} bytes at {gpa:#x}"),
                    )
                }
                Exit::Shutdown => {
                    let cr2 = self.vcpu.get_sregs().map(|s| s.cr2).unwrap_or(0);
                    return self.fault(
                        "KVM_EXIT_SHUTDOWN",
                        format!("triple fault (last page fault address cr2={cr2:#x})"),
                    );
                }
                Exit::InternalError => {
                    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the
                    // active member of the union.
                    let sub = unsafe { self.vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
                    let what = match sub {
                        1 => "emulation failure: the host could not emulate a guest instruction",
                        2 => "exception while delivering an event",
                        3 => "unexpected exit during event delivery",
                        _ => "internal KVM error",
                    };
                    return self
                        .fault("KVM_EXIT_INTERNAL_ERROR", format!("suberror {sub}: {what}"));
                }
                Exit::Hlt => {
                    return self.fault(
                        "KVM_EXIT_HLT",
                        "hlt with interrupts that never come (use the HALT hypercall)".into(),
                    )
                }
                Exit::FailEntry(reason) => {
                    return self.fault(
                        "KVM_EXIT_FAIL_ENTRY",
                        format!("hardware entry failure reason {reason:#x}"),
                    )
                }
                Exit::Intr => continue,
                Exit::Other(name) => return self.fault(&name, "unexpected exit".into()),
            }
        }
    }

    /// A fault message naming the exit, the RIP and the detail (which names the address).
    pub(super) fn fault(&self, exit: &str, detail: String) -> End {
        let rip = match self.vcpu.get_regs() {
            Ok(r) => format!("{:#x}", r.rip),
            Err(_) => "unknown".into(),
        };
        End::Fault(format!("{exit} at rip {rip}: {detail}"))
    }

    pub(super) fn emit(&self, e: InstanceEvent) {
        (self.events)(e)
    }
}

fn decode(e: VcpuExit<'_>) -> Exit {
    match e {
        VcpuExit::IoOut(port, d) => {
            let mut data = [0u8; 8];
            let len = d.len();
            let n = len.min(8);
            data[..n].copy_from_slice(&d[..n]);
            Exit::IoOut { port, data, len }
        }
        VcpuExit::IoIn(port, d) => Exit::IoIn { port, len: d.len() },
        VcpuExit::MmioRead(gpa, d) => Exit::Mmio {
            gpa,
            len: d.len(),
            write: false,
        },
        VcpuExit::MmioWrite(gpa, d) => Exit::Mmio {
            gpa,
            len: d.len(),
            write: true,
        },
        VcpuExit::MemoryFault { gpa, size, .. } => Exit::MemoryFault { gpa, size },
        VcpuExit::Shutdown => Exit::Shutdown,
        VcpuExit::InternalError => Exit::InternalError,
        VcpuExit::Hlt => Exit::Hlt,
        VcpuExit::FailEntry(reason, _) => Exit::FailEntry(reason),
        VcpuExit::Intr => Exit::Intr,
        other => Exit::Other(format!("unexpected KVM exit {other:?}")),
    }
}

/// Names the (pre-spawned) vCPU thread after its instance; Linux keeps 15 bytes.
fn set_thread_name(name: &str) {
    let mut n: Vec<u8> = format!("vcpu-{name}").into_bytes();
    n.retain(|&b| b != 0);
    n.truncate(15);
    n.push(0);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes, which `n` is.
    unsafe { libc::prctl(libc::PR_SET_NAME, n.as_ptr() as libc::c_ulong, 0, 0, 0) };
}
