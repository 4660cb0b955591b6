//! Prepared vCPUs: a parked vCPU thread that made, in its own fd table (`private.rs`), a VM with
//! its vCPU (CPUID and long-mode sregs already set) and guest memory already mapped, registered
//! with KVM and holding the ABI's GDT and page tables, plus its control block, made ahead of time
//! so that `start` only has to load the image, write the boot info and set the general
//! registers.
//!
//! Creating the VM and vCPU, setting the CPUID and registering the memory slot (which waits for
//! an SRCU grace period) are the costliest steps of a start and depend on nothing in the image,
//! so the backend keeps a few ready ([`Pool`]) and a background thread, at a lower priority,
//! refills the pool after each start. The memory is sized like the previous start's; a start of
//! another size maps memory of its own, which the vCPU thread registers instead. With the pool
//! empty (a burst of starts, or `prewarm = 0`), `start` spawns a thread that makes its VM while
//! the start path loads the image into fresh memory.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_regs, kvm_sregs, CpuId};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

use crate::backend::{Counters, GuestLimits};

use super::devices::Devices;
use super::error::KvmError;
use super::instance::{self, Control, FinishOnDrop};
use super::layout;
use super::memory::GuestMemory;
use super::private::{InShared, Outbox, PrivateTable};
use super::regs;
use super::seccomp;
use super::vcpu::VcpuRunner;
use super::vm;
use super::working_set::Learned;

/// Stack of a vCPU thread: the run loop and hypercall handlers need little.
const VCPU_STACK: usize = 256 << 10;

/// What every guest of this process shares, read once.
pub(super) struct HostInfo {
    pub cpuid: CpuId,
    pub sregs: kvm_sregs,
    pub tsc_khz: u32,
}

/// What a vCPU thread sets its new vCPU up with.
pub(super) enum Template {
    /// The host's, known.
    Host(Arc<HostInfo>),
    /// The first vCPU of the process: read the TSC frequency and the reset registers from it
    /// (and report them in [`Ready::probed`]), with this CPUID.
    Probe(CpuId),
}

/// What a vCPU thread reports once its VM and vCPU exist (in its own fd table).
pub(super) struct Ready {
    /// Registered as slot 0 of the thread's VM, low-memory structures written.
    pub mem: Option<GuestMemory>,
    /// For [`Template::Probe`]: the host's TSC frequency (kHz) and long-mode sregs.
    pub probed: Option<(u32, kvm_sregs)>,
}

/// A vCPU thread that has (or is making) its VM and vCPU and waits for a guest. The VM and the
/// vCPU live in the thread's own fd table: only the thread can touch them.
pub(super) struct WarmVcpu {
    /// The thread's report, until taken ([`WarmVcpu::ready`]).
    ready: Option<Receiver<Result<Ready, String>>>,
    /// Slot 0 of the VM, once reported.
    pub mem: Option<GuestMemory>,
    pub control: Arc<Control>,
    pub job: Sender<Job>,
    pub thread: JoinHandle<()>,
}

/// What the start path hands to the parked vCPU thread, plus the general registers to start
/// with. Nothing in it is an fd of the shared table the thread could misuse: the devices travel
/// as [`InShared`], the sink as an [`Outbox`].
pub(super) struct Job {
    pub name: String,
    pub mem: GuestMemory,
    /// `mem` is the memory the thread registered itself (else it registers `mem` as slot 0).
    pub registered: bool,
    pub devices: InShared<Devices>,
    pub events: Outbox,
    pub regs: kvm_regs,
    /// The CPU quota group the vCPU thread enters before the guest runs.
    pub cpu_group: Option<Arc<super::cgroup::Group>>,
    pub limits: GuestLimits,
    pub counters: Counters,
    /// Where the guest records the pages it touched by its first wait for the network, when
    /// nobody has for its image yet (`working_set.rs`).
    pub learn: Option<Arc<Learned>>,
    /// Told when the guest first waits for the network: the pool's refill may start then.
    pub booted: Option<Arc<Pool>>,
}

/// Where the pre-run stub sits: the last page of the read-only low region, present in the ABI's
/// page tables and used by nothing else.
const STUB_GPA: u64 = 0xff000;
/// `out %al, $0x80`.
const STUB: [u8; 2] = [0xe6, 0x80];
const STUB_PORT: u16 = 0x80;

/// Runs the vCPU once through a one-instruction stub, so that the guest's first KVM_RUN does not
/// pay for KVM's first-run setup and for shadowing the ABI's page tables. Runs on the vCPU's own
/// thread (a change of thread on KVM_RUN has its own cost on older kernels).
fn pre_run(vcpu: &mut VcpuFd, mem: &GuestMemory) -> Result<(), String> {
    mem.load(STUB_GPA, &STUB)
        .map_err(|_| "guest memory too small for the pre-run stub".to_string())?;
    let regs = kvm_regs {
        rip: STUB_GPA,
        rflags: summon_hvt_abi::RFLAGS_INIT,
        ..Default::default()
    };
    vcpu.set_regs(&regs)
        .map_err(|e| format!("KVM_SET_REGS: {e}"))?;
    let r = match vcpu.run() {
        Ok(VcpuExit::IoOut(STUB_PORT, _)) => Ok(()),
        Ok(other) => Err(format!("unexpected exit {other:?}")),
        Err(e) => Err(format!("KVM_RUN: {e}")),
    };
    let _ = mem.load(STUB_GPA, &[0; STUB.len()]);
    r
}

/// The body of a vCPU thread.
pub(super) type VcpuBody = Box<dyn FnOnce() + Send>;

/// A request to the spawner thread: the body, and where to send the thread's handle.
type SpawnRequest = (VcpuBody, Sender<std::io::Result<JoinHandle<()>>>);

/// Spawns a vCPU thread from the calling thread (which passes on its nice value).
pub(super) fn spawn_vcpu_thread(body: VcpuBody) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("vcpu".into())
        .stack_size(VCPU_STACK)
        .spawn(body)
}

/// A thread at the process's own priority that spawns vCPU threads for the refill thread.
/// Linux threads inherit the nice value of the thread that creates them, and an unprivileged
/// thread cannot lower its nice value again: a vCPU thread spawned by the refill thread (nice 10)
/// would run its guest at nice 10 for life, which on busy cores made the boot to network-ready
/// several times slower than with an unpooled start.
fn start_spawner() -> std::io::Result<Sender<SpawnRequest>> {
    let (tx, rx) = channel::<SpawnRequest>();
    std::thread::Builder::new()
        .name("kvm-spawner".into())
        .stack_size(64 << 10)
        .spawn(move || {
            // Ends when the refill thread (the only sender) ends.
            while let Ok((body, reply)) = rx.recv() {
                let _ = reply.send(spawn_vcpu_thread(body));
            }
        })?;
    Ok(tx)
}

/// A VM and its vCPU made by the vCPU thread, in its own table.
struct Made {
    vm: VmFd,
    vcpu: VcpuFd,
    ready: Ready,
}

/// The vCPU thread's preparation: its own `/dev/kvm`, VM and vCPU (CPUID and long-mode sregs
/// set), memory of `mem_size` as slot 0 when non-zero with the `populate` ranges backed, and
/// the pre-run when asked.
fn make(
    template: &Template,
    mem_size: u64,
    pre_run_it: bool,
    populate: &[Range<u64>],
) -> Result<Made, String> {
    // Opened here, in the thread's table, only to create the VM; the VM does not need it after.
    let kvm = Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    let (vm, mut vcpu) = new_vcpu(&kvm).map_err(|e| e.to_string())?;
    drop(kvm);
    let (cpuid, sregs, probed) = match template {
        Template::Host(h) => (&h.cpuid, h.sregs, None),
        Template::Probe(cpuid) => {
            let tsc = vcpu
                .get_tsc_khz()
                .map_err(|e| format!("KVM_GET_TSC_KHZ: {e}"))?;
            let reset = vcpu
                .get_sregs()
                .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
            let sregs = regs::long_mode_sregs(&reset);
            (cpuid, sregs, Some((tsc, sregs)))
        }
    };
    vcpu.set_cpuid2(cpuid)
        .map_err(|e| format!("KVM_SET_CPUID2: {e}"))?;
    vcpu.set_sregs(&sregs)
        .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
    let mem = if mem_size > 0 {
        let m = memory_for(&vm, mem_size).map_err(|e| e.to_string())?;
        m.populate(populate);
        if pre_run_it {
            pre_run(&mut vcpu, &m).map_err(|e| format!("pre-running a prepared vCPU: {e}"))?;
        }
        Some(m)
    } else {
        None
    };
    Ok(Made {
        vm,
        vcpu,
        ready: Ready { mem, probed },
    })
}

impl WarmVcpu {
    /// Spawns a vCPU thread (with `spawn`) that takes its own fd table and makes its VM and
    /// vCPU there; with `mem_size > 0` also memory of that size, with the `populate` ranges
    /// backed, and with `pre_run` (and memory) runs it once through a stub. `pooled`: the thread confines itself (seccomp stage one)
    /// while it waits for a guest; otherwise, prepared on a start path, it attaches a single
    /// filter once its guest has arrived (two attaches there would only compete with the start).
    /// Returns at once; [`WarmVcpu::ready`] waits for the thread's report.
    pub fn prepare(
        template: Template,
        mem_size: u64,
        pre_run_it: bool,
        populate: &[Range<u64>],
        pooled: bool,
        spawn: &dyn Fn(VcpuBody) -> std::io::Result<JoinHandle<()>>,
    ) -> Result<WarmVcpu, KvmError> {
        let control = Arc::new(Control::new());
        let (job, jobs) = channel::<Job>();
        let (ready_tx, ready) = channel::<Result<Ready, String>>();
        let thread_control = control.clone();
        let populate = populate.to_vec();
        let thread = spawn(Box::new(move || {
            // Before anything on this thread opens an fd.
            let table = match PrivateTable::enter() {
                Ok(t) => t,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    // Still take the guest, to report the failure through its sink.
                    if let Ok(job) = jobs.recv() {
                        VcpuRunner::fail(job, FinishOnDrop(thread_control), e.to_string());
                    }
                    return;
                }
            };
            match make(&template, mem_size, pre_run_it, &populate) {
                Ok(Made { vm, vcpu, ready }) => {
                    let had_mem = ready.mem.is_some();
                    // Declared after `vcpu` so that it is dropped first: `immediate_exit`
                    // points into the vCPU's kvm_run and must be nulled before the vCPU fd
                    // closes, whichever way this thread ends.
                    let mut vcpu = vcpu;
                    let finish = FinishOnDrop(thread_control);
                    let immediate_exit = std::ptr::addr_of_mut!(vcpu.get_kvm_run().immediate_exit)
                        .cast::<AtomicU8>();
                    finish.attach(immediate_exit);
                    let _ = ready_tx.send(Ok(ready));
                    // Here rather than on the start path: attaching the filter is the costly
                    // part of confining the thread. A failure is the fault of the guest it gets.
                    let confined =
                        pooled.then(|| seccomp::confine_prepared_thread(instance::kick_signal()));
                    // Dropped unused (pool shut down) when the sender goes away.
                    if let Ok(job) = jobs.recv() {
                        VcpuRunner::start(vcpu, vm, had_mem, table, job, finish, confined);
                    }
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.clone()));
                    if let Ok(job) = jobs.recv() {
                        VcpuRunner::fail(job, FinishOnDrop(thread_control), e);
                    }
                }
            }
        }))
        .map_err(KvmError::Thread)?;
        Ok(WarmVcpu {
            ready: Some(ready),
            mem: None,
            control,
            job,
            thread,
        })
    }

    /// Waits for the thread's report (once; later calls return what the first one kept):
    /// takes its memory, returns the probe's figures.
    pub fn ready(&mut self) -> Result<Option<(u32, kvm_sregs)>, KvmError> {
        let Some(rx) = self.ready.take() else {
            return Ok(None);
        };
        let failed = |e: String| KvmError::Sys {
            op: "preparing a vCPU",
            source: std::io::Error::other(e),
        };
        match rx.recv() {
            Ok(Ok(r)) => {
                self.mem = r.mem;
                Ok(r.probed)
            }
            Ok(Err(e)) => Err(failed(e)),
            Err(_) => Err(failed("vCPU thread ended".into())),
        }
    }
}

/// A new VM with its one vCPU.
pub(super) fn new_vcpu(kvm: &Kvm) -> Result<(VmFd, VcpuFd), KvmError> {
    let vm = kvm.create_vm().map_err(KvmError::ioctl("KVM_CREATE_VM"))?;
    let vcpu = vm
        .create_vcpu(0)
        .map_err(KvmError::ioctl("KVM_CREATE_VCPU"))?;
    Ok((vm, vcpu))
}

/// Fresh guest memory of `mem_size` with the low-memory structures, as slot 0 of `vm`.
pub(super) fn memory_for(vm: &VmFd, mem_size: u64) -> Result<GuestMemory, KvmError> {
    let mem = fresh_memory(mem_size)?;
    vm::set_memory(vm, &mem)?;
    Ok(mem)
}

/// Fresh guest memory of `mem_size` with the low-memory structures, in no VM yet.
pub(super) fn fresh_memory(mem_size: u64) -> Result<GuestMemory, KvmError> {
    let mem = GuestMemory::new(mem_size)?;
    layout::write_low_memory(&mem);
    Ok(mem)
}

/// Prepared vCPUs kept ready, refilled by a background thread.
pub(super) struct Pool {
    slots: Mutex<Vec<WarmVcpu>>,
    cond: Condvar,
    target: usize,
    shutdown: AtomicBool,
    /// Memory size of the latest start: what the next prepared vCPU gets.
    mem_size: AtomicU64,
    /// The latest start's image's working set: what the next prepared vCPU's memory has backed.
    learned: Mutex<Option<Arc<Learned>>>,
    /// No refill before this: the guest that took a prepared vCPU is booting and answering its
    /// first client (see [`REFILL_QUIET`]).
    quiet_until: Mutex<Option<Instant>>,
    /// Signalled when `quiet_until` comes earlier ([`Pool::booted`]).
    quiet_over: Condvar,
}

/// How long after a start the refill keeps still at most. Preparing a vCPU is not done at the
/// refill thread's low priority: the new vCPU thread makes its VM itself, at the priority its
/// guest will have (threads cannot raise their priority back). Right after a start that work
/// competed with the new guest's boot and first answer for the CPU and for its process's memory
/// map: on two cores a cold summon's boot took 1.8 ms with it and 1.2 ms without
/// (docs/benchmarks.md). A start within the quiet period of an earlier one does not extend it.
const REFILL_QUIET: Duration = Duration::from_millis(3);

/// The quiet ends this long after the new guest first waits for the network, if that is
/// sooner: time for the first exchange with the client that summoned it, while a burst of
/// starts (one every 2–3 ms) still finds a prepared vCPU each time. Measured on two cores
/// against 0 and 1.5 ms and a fixed [`REFILL_QUIET`] (docs/benchmarks.md).
const BOOTED_GRACE: Duration = Duration::from_millis(1);

impl Pool {
    /// Starts the refill thread, which fills the pool up to `target` right away (`first`, the
    /// probe's vCPU, counts).
    pub fn start(host: Arc<HostInfo>, target: usize, first: Option<WarmVcpu>) -> Arc<Pool> {
        let mut slots = Vec::with_capacity(target);
        slots.extend(first);
        let pool = Arc::new(Pool {
            slots: Mutex::new(slots),
            cond: Condvar::new(),
            target,
            shutdown: AtomicBool::new(false),
            mem_size: AtomicU64::new(0),
            learned: Mutex::new(None),
            quiet_until: Mutex::new(None),
            quiet_over: Condvar::new(),
        });
        let p = pool.clone();
        let spawned = start_spawner().and_then(|spawner| {
            std::thread::Builder::new()
                .name("kvm-prewarm".into())
                .spawn(move || p.refill_loop(&host, &spawner))
        });
        if spawned.is_err() {
            // Without the refill thread every start prepares inline; nothing else changes.
            tracing::warn!("cannot start the vCPU prewarm thread; starts will prepare inline");
        }
        pool
    }

    fn refill_loop(&self, host: &Arc<HostInfo>, spawner: &Sender<SpawnRequest>) {
        let spawn = |body: VcpuBody| {
            let (reply, handle) = channel();
            spawner
                .send((body, reply))
                .map_err(|_| std::io::Error::other("vCPU spawner thread gone"))?;
            handle
                .recv()
                .map_err(|_| std::io::Error::other("vCPU spawner thread gone"))?
        };
        // Refilling is never urgent: let guests that just started have the CPU first.
        // SAFETY: setpriority on this thread's own id (Linux nice values are per thread).
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) };
        let mut pre_run_works = true;
        loop {
            {
                let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
                while slots.len() >= self.target && !self.shutdown.load(Ordering::SeqCst) {
                    slots = self.cond.wait(slots).unwrap_or_else(|p| p.into_inner());
                }
                if self.shutdown.load(Ordering::SeqCst) {
                    return;
                }
            }
            self.wait_for_quiet_end();
            let mem_size = self.mem_size.load(Ordering::SeqCst);
            let populate: Vec<Range<u64>> = self
                .learned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(|l| l.ranges(mem_size).to_vec())
                .unwrap_or_default();
            let prepare = |pre_run_it: bool| {
                let mut w = WarmVcpu::prepare(
                    Template::Host(host.clone()),
                    mem_size,
                    pre_run_it,
                    &populate,
                    true,
                    &spawn,
                )?;
                w.ready()?;
                Ok::<_, KvmError>(w)
            };
            let mut prepared = prepare(pre_run_works);
            if pre_run_works && mem_size > 0 && prepared.is_err() {
                // A host where the stub cannot run still gets prepared vCPUs, just not pre-run.
                pre_run_works = false;
                if let Err(e) = &prepared {
                    tracing::warn!("preparing a pre-run vCPU failed ({e}); not pre-running");
                }
                prepared = prepare(false);
            }
            match prepared {
                Ok(w) => self.slots.lock().unwrap_or_else(|p| p.into_inner()).push(w),
                Err(e) => {
                    // E.g. out of fds or memory: back off instead of spinning; starts still
                    // work by preparing inline (and report the error themselves).
                    tracing::warn!("prewarming a vCPU failed: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        }
    }

    /// A prepared vCPU, if one is ready. Call [`Self::refill`] once the start is done. The next
    /// ones are prepared for this start's memory size and image (`learned`).
    pub fn take(&self, mem_size: u64, learned: Option<Arc<Learned>>) -> Option<WarmVcpu> {
        self.mem_size.store(mem_size, Ordering::SeqCst);
        *self.learned.lock().unwrap_or_else(|p| p.into_inner()) = learned;
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Until [`BOOTED_GRACE`] after the latest start's guest has booted, or [`REFILL_QUIET`]
    /// after the start. Shutdown does not wait for this: it is a few milliseconds at most.
    fn wait_for_quiet_end(&self) {
        let mut quiet = self.quiet_until.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(until) = *quiet {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            quiet = self
                .quiet_over
                .wait_timeout(quiet, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *quiet = None;
    }

    /// Told by a guest's vCPU thread when the guest first waits for the network: its boot is
    /// over, and the refill may start [`BOOTED_GRACE`] later.
    pub fn booted(&self) {
        let end = Instant::now() + BOOTED_GRACE;
        let mut quiet = self.quiet_until.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(until) = *quiet {
            *quiet = Some(until.min(end));
        }
        drop(quiet);
        self.quiet_over.notify_one();
    }

    /// Wakes the refill thread (after a start), which prepares the next vCPU once the quiet
    /// period after it is over.
    pub fn refill(&self) {
        let now = Instant::now();
        let mut quiet = self.quiet_until.lock().unwrap_or_else(|p| p.into_inner());
        if quiet.is_none_or(|t| t <= now) {
            *quiet = Some(now + REFILL_QUIET);
        }
        drop(quiet);
        self.cond.notify_one();
    }

    /// Number of prepared vCPUs ready now.
    pub fn ready(&self) -> usize {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Bytes backed in each ready prepared vCPU's memory.
    pub fn backed(&self) -> Vec<u64> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .iter()
            .filter_map(|w| w.mem.as_ref())
            .map(|m| m.resident().iter().map(|r| r.end - r.start).sum())
            .collect()
    }

    pub fn shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        self.cond.notify_all();
        // Dropping the slots closes their job channels; their parked threads then exit.
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}
