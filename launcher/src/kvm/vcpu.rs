//! The vCPU thread: KVM_RUN, exit decoding, and the end of the guest.
//!
//! Every way a guest can end other than HALT is a fault of that guest alone: the thread reports
//! it with the exit's name, RIP and address, tears the VM down and returns. Nothing a guest does
//! can make this thread panic or touch memory outside the guest's mapping.
//!
//! Should the launcher itself panic on this thread (a bug, or an event sink that panics), the
//! guest still ends as `Faulted("vCPU thread panicked: ...")` and the control block is marked
//! finished by a drop guard, so `stop`/`suspend` from other threads neither wait for nor kick a
//! thread that is gone.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};

use crate::backend::{Counters, InstanceEvent};

use super::cgroup::Entered;
use super::devices::{Console, Devices};
use super::error::KvmError;
use super::instance::{kick_signal, Control, End, FinishOnDrop};
use super::limit::{ExitLimit, TxLimit};
use super::memory::GuestMemory;
use super::private::{Outbox, PrivateTable};
use super::seccomp;
use super::vm;
use super::warm::Job;
use super::working_set::Learned;

/// Everything the vCPU thread owns. Field order is drop order: `finish` goes first, so that
/// nobody can kick into kvm_run once the vCPU fd (and with it kvm_run) is closed; the vCPU and
/// the VM go before the memory they map.
pub(super) struct VcpuRunner {
    finish: FinishOnDrop,
    pub vcpu: VcpuFd,
    /// Never used after start, but must outlive `vcpu` and be closed before `mem` is unmapped.
    #[allow(dead_code)]
    pub vm: VmFd,
    pub mem: GuestMemory,
    pub devices: Devices,
    pub console: Console,
    /// The only way out for events: the thread runs in its own fd table (`private.rs`).
    pub events: Outbox,
    pub control: Arc<Control>,
    pub immediate_exit: *const AtomicU8,
    /// POLL's set: one entry per net device (fd, POLLIN), built on the first POLL.
    pub poll_fds: Vec<libc::pollfd>,
    /// The guest's handle of each entry of `poll_fds`.
    pub poll_handles: Vec<u64>,
    pub net_ready_sent: bool,
    /// Where to record the guest's working set at its first wait for the network, if nobody
    /// has for its image yet (see `hypercall.rs`, POLL).
    pub learn: Option<Arc<Learned>>,
    /// Told (once) when the guest first waits for the network: see `Pool::booted`.
    pub booted: Option<Arc<super::warm::Pool>>,
    /// Shared with the instance handle; only this thread writes them.
    pub counters: Counters,
    pub tx_limit: Option<TxLimit>,
    pub exit_limit: Option<ExitLimit>,
    /// The CPU quota group this thread is in; held only to be dropped (retired) with the runner,
    /// on every path.
    #[allow(dead_code)]
    pub cpu_group: Option<Entered>,
    /// This thread's own fd table, where every fd above lives.
    #[allow(dead_code)]
    pub table: PrivateTable,
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
    /// The parked thread's entry once it has a guest: take the devices into this thread's fd
    /// table, register the guest's memory unless it is the prepared one, end the setup stage,
    /// set the registers, then run. `finish` was created by the thread before it could panic;
    /// `had_mem`: the VM has a memory slot already; `confined` is how its stage-one seccomp
    /// filter went, `None` if it has none yet (see `seccomp.rs`).
    pub fn start(
        vcpu: VcpuFd,
        vm: VmFd,
        had_mem: bool,
        mut table: PrivateTable,
        job: Job,
        finish: FinishOnDrop,
        confined: Option<Result<(), KvmError>>,
    ) {
        set_thread_name(&job.name);
        let limits = job.limits;
        // Order on this thread: name, CPU cgroup, devices and memory, then the syscall filter,
        // then the guest.
        let cpu_group = job.cpu_group.as_ref().map(|g| g.enter());
        let devices =
            match table.import_with(job.devices, |d| d.raw_fds(), |d, fds| d.with_fds(fds)) {
                Ok(d) => d,
                Err(e) => {
                    let reason = format!("taking the devices into the vCPU thread's fd table: {e}");
                    return Self::report_early(&job.events, finish, reason);
                }
            };
        let registered = if job.registered {
            Ok(())
        } else {
            // The prepared memory (if any) was of another size; its slot goes first.
            let cleared = if had_mem {
                vm::clear_memory(&vm)
            } else {
                Ok(())
            };
            cleared.and_then(|()| vm::set_memory(&vm, &job.mem))
        };
        let control = finish.0.clone();
        let runner = VcpuRunner {
            finish,
            vcpu,
            vm,
            mem: job.mem,
            devices,
            console: Console::new(limits.console_bytes_per_sec),
            events: job.events,
            immediate_exit: control.immediate_exit_ptr(),
            control,
            poll_fds: Vec::new(),
            poll_handles: Vec::new(),
            net_ready_sent: false,
            learn: job.learn,
            booted: job.booted,
            cpu_group,
            counters: job.counters,
            tx_limit: TxLimit::new(limits.tx_frames_per_sec, limits.tx_bytes_per_sec),
            exit_limit: ExitLimit::new(limits.exits_per_sec),
            table,
        };
        let ready = registered.and_then(|()| match confined {
            Some(stage_one) => stage_one.and_then(|()| seccomp::end_setup()),
            None => seccomp::confine_running_thread(kick_signal()),
        });
        let ready = ready.map_err(|e| e.to_string()).and_then(|()| {
            runner
                .vcpu
                .set_regs(&job.regs)
                .map_err(|e| format!("KVM_SET_REGS failed before the guest ran: {e}"))
        });
        match ready {
            Ok(()) => runner.run(),
            Err(reason) => runner.end(Ok(End::Fault(reason))),
        }
    }

    /// The entry of a thread that could not make its VM: the guest it was given ends at once as
    /// a fault with `reason`.
    pub fn fail(job: Job, finish: FinishOnDrop, reason: String) {
        Self::report_early(&job.events, finish, reason);
    }

    fn report_early(events: &Outbox, finish: FinishOnDrop, reason: String) {
        events.send(InstanceEvent::Faulted(reason));
        finish.now();
    }

    /// The thread body: run the guest to its end, report it, release everything.
    fn run(mut self) {
        // A panic here would be a launcher bug (or a panicking event sink): the guest ends as a
        // fault, and `finish` still runs (also on any panic outside this, through its guard).
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let end = self.run_loop();
            let events = &self.events;
            self.console.flush(&|e| events.send(e));
            end
        }));
        self.end(outcome);
    }

    /// Reports how the guest ended, marks it finished and releases everything.
    fn end(mut self, outcome: std::thread::Result<End>) {
        let event = match outcome {
            Ok(End::Halt(status)) => InstanceEvent::Exited(status),
            Ok(End::Fault(reason)) => InstanceEvent::Faulted(reason),
            Ok(End::Stop) => InstanceEvent::Stopped,
            Err(payload) => {
                let what = panic_message(payload.as_ref());
                drop_payload(payload);
                InstanceEvent::Faulted(format!("vCPU thread panicked: {what}"))
            }
        };
        // The relay calls the sink (and survives a sink that panics). No logging here: a broken
        // log sink is one way to get here.
        self.events.send(event);
        // Taps before the guest counts as stopped: whoever stopped it may hand its tap to the
        // next instance right away (the worker keeps a second descriptor, so this close is
        // not the tap's last and costs no grace period here).
        self.devices.close_nets();
        self.finish.now();
        // Dropping `self` closes the vCPU and VM fds and unmaps guest memory, here on the vCPU
        // thread rather than on anybody's start or stop path, and at a lower priority: nothing
        // waits for it, while starts and running guests on the same cores do.
        // SAFETY: setpriority on this thread's own id (Linux nice values are per thread).
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) };
    }

    /// Charges one exit to `exits_per_sec`; a guest out of budget waits here, where stop and
    /// suspend still reach it at once (see `Control::sleep`).
    fn charge_exit(&mut self) -> Option<End> {
        // Until the exit is paid for: the wait only brings the budget back.
        loop {
            let wait = self.exit_limit.as_mut()?.charge(Instant::now())?;
            self.counters
                .exits_throttled
                .fetch_add(1, Ordering::Relaxed);
            if let Some(end) = self.throttle_wait(wait) {
                return Some(end);
            }
        }
    }

    /// Sleeps `wait` (kicks still reach it); `Some` when a stop came meanwhile.
    fn throttle_wait(&self, wait: Duration) -> Option<End> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let ts = libc::timespec {
                tv_sec: left.as_secs() as libc::time_t,
                tv_nsec: left.subsec_nanos() as libc::c_long,
            };
            match self.control.sleep(&mut [], Some(&ts)) {
                Err(end) => return Some(end),
                Ok(Err(_)) => {
                    // ppoll on no fds does not fail; should it, retrying at once would spin,
                    // so sleep out the wait (in short steps, to see requests).
                    std::thread::sleep(left.min(Duration::from_millis(10)));
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    fn clear_immediate_exit(&self) {
        // SAFETY: points into our own kvm_run mapping, alive as long as `self.vcpu`.
        unsafe { (*self.immediate_exit).store(0, Ordering::SeqCst) };
    }

    fn run_loop(&mut self) -> End {
        loop {
            // Set by the SIGSYS handler when something on this thread (a hypercall handler or the
            // event sink) made a syscall the filter refuses; the call itself returned EPERM.
            if let Some(nr) = seccomp::take_violation() {
                return End::Fault(format!(
                    "seccomp: disallowed syscall {nr} on the vCPU thread"
                ));
            }
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
            if !matches!(exit, Exit::Intr) {
                if let Some(end) = self.charge_exit() {
                    return end;
                }
            }
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
        self.events.send(e)
    }
}

/// The text of a panic payload (`panic!` makes a `&str` or a `String`).
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

/// Drops a panic payload whose own drop might panic again (leaking it then).
fn drop_payload(payload: Box<dyn Any + Send>) {
    if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        std::mem::forget(again);
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
