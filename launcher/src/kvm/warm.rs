//! Prepared vCPUs: a VM with its vCPU (CPUID and long-mode sregs already set), guest memory
//! already mapped, registered with KVM and holding the ABI's GDT and page tables, its control
//! block and a parked vCPU thread, made ahead of time so that `start` only has to load the
//! image, write the boot info and set the general registers.
//!
//! Creating the VM and vCPU, setting the CPUID and registering the memory slot (which waits for
//! an SRCU grace period) are the costliest steps of a start and depend on nothing in the image,
//! so the backend keeps a few ready ([`Pool`]) and a background thread, at a lower priority,
//! refills the pool after each start. The memory is sized like the previous start's; a start of
//! another size re-registers memory of its own. With the pool empty (a burst of starts, or
//! `prewarm = 0`), `start` prepares one inline: same code, just on the start path.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use kvm_bindings::{kvm_regs, kvm_sregs, CpuId};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

use crate::backend::{EventSink, GuestLimits, InstanceCounters};

use super::devices::Devices;
use super::error::KvmError;
use super::instance::{self, Control, FinishOnDrop};
use super::layout;
use super::memory::GuestMemory;
use super::seccomp;
use super::vcpu::VcpuRunner;
use super::vm;

/// Stack of a vCPU thread: the run loop and hypercall handlers need little.
const VCPU_STACK: usize = 256 << 10;

/// What every guest of this process shares, read once.
pub(super) struct HostInfo {
    pub kvm: Kvm,
    pub cpuid: CpuId,
    pub sregs: kvm_sregs,
    pub tsc_khz: u32,
}

/// A VM and vCPU ready for a guest, and the parked thread that will run it.
pub(super) struct WarmVcpu {
    pub vm: VmFd,
    /// Registered as slot 0 of `vm`, low-memory structures written.
    pub mem: Option<GuestMemory>,
    pub control: Arc<Control>,
    pub job: Sender<Job>,
    pub thread: JoinHandle<()>,
}

/// What the start path hands to the parked vCPU thread: everything but the vCPU, which the
/// thread already owns, plus the general registers to start with.
pub(super) struct Job {
    pub name: String,
    pub vm: VmFd,
    pub mem: GuestMemory,
    pub devices: Devices,
    pub events: EventSink,
    pub control: Arc<Control>,
    pub regs: kvm_regs,
    /// The CPU quota group the vCPU thread enters before the guest runs.
    pub cpu_group: Option<Arc<super::cgroup::Group>>,
    pub limits: GuestLimits,
    pub counters: Arc<InstanceCounters>,
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
fn pre_run(vcpu: &mut VcpuFd) -> Result<(), String> {
    let regs = kvm_regs {
        rip: STUB_GPA,
        rflags: summon_hvt_abi::RFLAGS_INIT,
        ..Default::default()
    };
    vcpu.set_regs(&regs)
        .map_err(|e| format!("KVM_SET_REGS: {e}"))?;
    match vcpu.run() {
        Ok(VcpuExit::IoOut(STUB_PORT, _)) => Ok(()),
        Ok(other) => Err(format!("unexpected exit {other:?}")),
        Err(e) => Err(format!("KVM_RUN: {e}")),
    }
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

impl WarmVcpu {
    /// Prepares a vCPU; with `mem_size > 0` also its memory of that size, and with `pre_run`
    /// (and memory) runs it once through a stub (which waits for the new thread: only for the
    /// prewarm pool, not on a start path). `pooled`: the thread confines itself (seccomp stage
    /// one) while it waits for a guest (also the backend's probed vCPU, whose wait overlaps the
    /// whole start); otherwise, prepared on a start path, it attaches a single filter once its
    /// guest has arrived (two attaches there would only compete with the start). Without the
    /// stub, the memory is mapped and registered after the thread is spawned, while it starts.
    /// `spawn` creates the vCPU thread.
    pub fn prepare(
        host: &HostInfo,
        mem_size: u64,
        pre_run_it: bool,
        pooled: bool,
        spawn: &dyn Fn(VcpuBody) -> std::io::Result<JoinHandle<()>>,
    ) -> Result<WarmVcpu, KvmError> {
        let (vm, vcpu) = new_vcpu(&host.kvm)?;
        Self::from_vcpu(host, vm, vcpu, mem_size, pre_run_it, pooled, spawn)
    }

    /// Like [`Self::prepare`], on a VM and vCPU that are new and have never run (the backend's
    /// probe, see `KvmBackend::with_prewarm`).
    pub fn from_vcpu(
        host: &HostInfo,
        vm: VmFd,
        mut vcpu: VcpuFd,
        mem_size: u64,
        pre_run_it: bool,
        pooled: bool,
        spawn: &dyn Fn(VcpuBody) -> std::io::Result<JoinHandle<()>>,
    ) -> Result<WarmVcpu, KvmError> {
        vcpu.set_cpuid2(&host.cpuid)
            .map_err(KvmError::ioctl("KVM_SET_CPUID2"))?;
        vcpu.set_sregs(&host.sregs)
            .map_err(KvmError::ioctl("KVM_SET_SREGS"))?;
        // The stub needs the memory before the thread runs; otherwise it is made (its slot
        // registration waits for an SRCU grace period) while the new thread starts.
        let mut mem = if mem_size > 0 && pre_run_it {
            Some(memory_for(&vm, mem_size)?)
        } else {
            None
        };
        let immediate_exit =
            std::ptr::addr_of_mut!(vcpu.get_kvm_run().immediate_exit).cast::<AtomicU8>();
        let control = Arc::new(Control::new(immediate_exit)?);
        let pre_run_it = pre_run_it && mem.is_some();
        let later_mem = (mem_size > 0 && mem.is_none()).then_some(mem_size);
        if pre_run_it {
            if let Some(m) = &mem {
                m.load(STUB_GPA, &STUB).map_err(|_| KvmError::MemorySize {
                    mib: mem_size >> 20,
                })?;
            }
        }
        let (job, jobs) = channel::<Job>();
        let (ran_tx, ran) = channel::<Result<(), String>>();
        let thread_control = control.clone();
        let thread = spawn(Box::new(move || {
            // Declared in this order so that `finish` is dropped first: `immediate_exit`
            // points into the vCPU's kvm_run and must be nulled before the vCPU fd closes,
            // whichever way this thread ends.
            let mut vcpu = vcpu;
            let finish = FinishOnDrop(thread_control);
            if pre_run_it {
                let r = pre_run(&mut vcpu);
                let failed = r.is_err();
                let _ = ran_tx.send(r);
                if failed {
                    return;
                }
            }
            // Here rather than on the start path: attaching the filter is the costly part
            // of confining the thread. A failure is the fault of the guest it gets.
            let confined =
                pooled.then(|| seccomp::confine_prepared_thread(instance::kick_signal()));
            // Dropped unused (pool shut down) when the sender goes away.
            if let Ok(job) = jobs.recv() {
                VcpuRunner::start(vcpu, job, finish, confined);
            }
        }))
        .map_err(KvmError::Thread)?;
        if let Some(size) = later_mem {
            mem = Some(memory_for(&vm, size)?);
        }
        if pre_run_it {
            match ran.recv() {
                Ok(Ok(())) => {
                    if let Some(m) = &mem {
                        let _ = m.load(STUB_GPA, &[0; STUB.len()]);
                    }
                }
                Ok(Err(e)) => {
                    return Err(KvmError::Sys {
                        op: "pre-running a prepared vCPU",
                        source: std::io::Error::other(e),
                    })
                }
                Err(_) => {
                    return Err(KvmError::Sys {
                        op: "pre-running a prepared vCPU",
                        source: std::io::Error::other("vCPU thread ended"),
                    })
                }
            }
        }
        {
            use std::os::unix::thread::JoinHandleExt;
            control.set_thread(thread.as_pthread_t());
        }
        Ok(WarmVcpu {
            vm,
            mem,
            control,
            job,
            thread,
        })
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
    let mem = GuestMemory::new(mem_size)?;
    layout::write_low_memory(&mem);
    vm::set_memory(vm, &mem)?;
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
}

impl Pool {
    /// Starts the refill thread, which fills the pool up to `target` right away.
    pub fn start(host: Arc<HostInfo>, target: usize) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            slots: Mutex::new(Vec::with_capacity(target)),
            cond: Condvar::new(),
            target,
            shutdown: AtomicBool::new(false),
            mem_size: AtomicU64::new(0),
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

    fn refill_loop(&self, host: &HostInfo, spawner: &Sender<SpawnRequest>) {
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
            let mem_size = self.mem_size.load(Ordering::SeqCst);
            let mut prepared = WarmVcpu::prepare(host, mem_size, pre_run_works, true, &spawn);
            if pre_run_works && prepared.is_err() {
                // A host where the stub cannot run still gets prepared vCPUs, just not pre-run.
                pre_run_works = false;
                if let Err(e) = &prepared {
                    tracing::warn!("preparing a pre-run vCPU failed ({e}); not pre-running");
                }
                prepared = WarmVcpu::prepare(host, mem_size, false, true, &spawn);
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

    /// A prepared vCPU, if one is ready. Call [`Self::refill`] once the start is done.
    pub fn take(&self, mem_size: u64) -> Option<WarmVcpu> {
        self.mem_size.store(mem_size, Ordering::SeqCst);
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Wakes the refill thread (after a start, so it does not compete with it).
    pub fn refill(&self) {
        self.cond.notify_one();
    }

    /// Number of prepared vCPUs ready now.
    pub fn ready(&self) -> usize {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        self.cond.notify_all();
        // Dropping the slots closes their job channels; their parked threads then exit.
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}
