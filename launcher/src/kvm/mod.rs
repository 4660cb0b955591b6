//! The embedded hvt VMM on KVM.
//!
//! [`KvmBackend`] starts guests that follow the Solo5 hvt ABI (docs/hvt-abi.md). Per process it
//! holds what never changes: the supported CPUID, the TSC frequency, the long-mode register
//! template and a cache of parsed images. Per guest, a vCPU thread takes an fd table of its own
//! and creates the VM and its vCPU there (`private.rs`: the process's table holds no fd per
//! guest); `start` maps memory, loads the image, writes the low-memory structures, and hands
//! everything to that thread, which runs the guest to its end and tears it down.

mod boot_info;
pub mod cgroup;
mod cpuid;
pub mod devices;
mod error;
mod hypercall;
mod instance;
mod layout;
mod limit;
mod memory;
mod private;
mod regs;
pub(crate) mod seccomp;
mod shared_pages;
mod vcpu;
mod vm;
mod warm;
mod working_set;

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kvm_ioctls::Kvm;

use crate::backend::{Backend, BackendError, Counters, EventSink, Instance, InstanceSpec};

pub use error::KvmError;
pub use instance::KvmInstance;
pub use summon_image::{ElfImage, ImageError};

use devices::Devices;
use memory::GuestMemory;
use private::{InShared, Outbox};
use shared_pages::SharedPages;
use warm::{HostInfo, Job, Pool, Template, WarmVcpu};
use working_set::Learned;

/// Prepared vCPUs [`KvmBackend::new`] keeps ready (see `warm.rs`).
pub const DEFAULT_PREWARM: usize = 1;

/// Guest memory size in bytes for `mib`, rounded down to 2 MiB, or an error if out of range.
pub fn mem_size_from_mib(mib: u64) -> Result<u64, KvmError> {
    let bytes = mib
        .checked_mul(1 << 20)
        .ok_or(KvmError::MemorySize { mib })?;
    let bytes = bytes & !(summon_hvt_abi::MEM_ALIGN - 1);
    if !(summon_hvt_abi::MEM_MIN..=summon_hvt_abi::MEM_MAX).contains(&bytes) {
        return Err(KvmError::MemorySize { mib });
    }
    Ok(bytes)
}

/// Identity of an image file, to notice when a cached parse is stale.
#[derive(PartialEq, Eq, Clone, Copy)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

/// A parsed image in the cache, with its read-only pages ready to share (`None`: copied into
/// each guest instead, see `shared_pages.rs`).
#[derive(Clone)]
struct Cached {
    stamp: FileStamp,
    image: Arc<ElfImage>,
    shared: Option<Arc<SharedPages>>,
    /// The pages its guests touch as they start (`working_set.rs`).
    learned: Arc<Learned>,
}

/// The embedded KVM backend.
pub struct KvmBackend {
    host: Arc<HostInfo>,
    pool: Option<Arc<Pool>>,
    /// Without a pool, the vCPU thread whose VM was probed for [`HostInfo`], kept for the first
    /// start: a process that runs one guest (summon-run) then creates exactly one VM.
    probe: Mutex<Option<WarmVcpu>>,
    images: Mutex<HashMap<PathBuf, Cached>>,
}

impl KvmBackend {
    /// Opens `/dev/kvm`, reads what every guest shares, and keeps [`DEFAULT_PREWARM`] vCPUs
    /// prepared.
    pub fn new() -> Result<Self, KvmError> {
        Self::with_prewarm(DEFAULT_PREWARM)
    }

    /// Like [`Self::new`], keeping `prewarm` prepared vCPUs (0: prepare each on its start, the
    /// first on the VM probed here). Each costs an idle VM, a vCPU and a parked thread: kernel
    /// memory and two fds in that thread's own table.
    pub fn with_prewarm(prewarm: usize) -> Result<Self, KvmError> {
        let kvm = Kvm::new().map_err(KvmError::OpenKvm)?;
        let api = kvm.get_api_version();
        if api != 12 {
            return Err(KvmError::ApiVersion(api));
        }
        let cpuid = cpuid::supported(&kvm)?;
        // The backend keeps no fd in the process's table: every VM lives in its vCPU thread's.
        drop(kvm);
        instance::install_kick_handler();
        seccomp::install_sigsys_handler();
        private::start_relay()?;
        // The TSC frequency and the vCPU's reset state are read from the first vCPU, made by the
        // first vCPU thread in its own table. Reading changes nothing in it, so it serves the
        // first start (without a pool) or is the pool's first entry. Confined while it waits for
        // its guest, as a pooled vCPU is: without a pool the filter's attach (about 0.2 ms here)
        // then runs alongside the first start's memory set-up and image load instead of after
        // them (summon-run's whole start).
        let mut first = WarmVcpu::prepare(
            Template::Probe(cpuid.clone()),
            0,
            false,
            &[],
            true,
            &warm::spawn_vcpu_thread,
        )?;
        let (tsc_khz, sregs) = first.ready()?.ok_or(KvmError::Sys {
            op: "probing the first vCPU",
            source: std::io::Error::other("no TSC frequency reported"),
        })?;
        let host = Arc::new(HostInfo {
            cpuid,
            sregs,
            tsc_khz,
        });
        let (pool, probe) = if prewarm > 0 {
            (Some(Pool::start(host.clone(), prewarm, Some(first))), None)
        } else {
            (None, Some(first))
        };
        Ok(KvmBackend {
            host,
            pool,
            probe: Mutex::new(probe),
            images: Mutex::new(HashMap::new()),
        })
    }

    /// TSC frequency the guests are told, in kHz.
    pub fn tsc_khz(&self) -> u32 {
        self.host.tsc_khz
    }

    /// Prepared vCPUs ready right now.
    pub fn prewarmed(&self) -> usize {
        self.pool.as_ref().map_or(0, |p| p.ready())
    }

    /// Bytes of guest memory already backed in each prepared vCPU's memory (low-memory
    /// structures, and the boot working set of the latest start's image, `working_set.rs`).
    pub fn prewarmed_backed(&self) -> Vec<u64> {
        self.pool.as_ref().map_or(Vec::new(), |p| p.backed())
    }

    /// Parses the image at `path` (read into memory: the cache holds no fd), or returns the
    /// cached parse if the file has not changed.
    pub fn load_image(&self, path: &Path) -> Result<Arc<ElfImage>, KvmError> {
        Ok(self.cached(path, None)?.image)
    }

    /// The image at `path`, read from `opened` when the caller opened it for us (a worker
    /// process may not open images itself), else by path.
    fn cached(&self, path: &Path, opened: Option<File>) -> Result<Cached, KvmError> {
        let io = |source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = match &opened {
            Some(f) => f.metadata(),
            None => std::fs::metadata(path),
        }
        .map_err(io)?;
        let stamp = FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        };
        let cache = || self.images.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache().get(path) {
            if c.stamp == stamp {
                return Ok(c.clone());
            }
        }
        // Parsed without the lock, so starts of other images do not wait for this one.
        let image = Arc::new(match opened {
            Some(f) => ElfImage::read_opened(f, path)?,
            None => ElfImage::read(path)?,
        });
        let shared = match SharedPages::build(&image) {
            Ok(s) => s.map(Arc::new),
            Err(e) => {
                tracing::warn!(image = %path.display(), error = %e, "read-only pages not shared; copied into each guest");
                None
            }
        };
        let c = Cached {
            stamp,
            image,
            shared,
            learned: Arc::default(),
        };
        cache().insert(path.to_path_buf(), c.clone());
        Ok(c)
    }

    /// Starts `spec` with its image read through the cache (see [`Self::load_image`]).
    pub fn start_kvm(
        &self,
        spec: InstanceSpec,
        events: EventSink,
    ) -> Result<KvmInstance, KvmError> {
        self.start_counted(spec, None, events, Counters::default())
    }

    /// Like [`Self::start_kvm`], with the instance's counters kept in `counters` (a slot of
    /// memory shared with another process, for a worker process's instances), and the image
    /// read from `image` when given (opened by summond for a worker that may not open it).
    pub fn start_counted(
        &self,
        spec: InstanceSpec,
        image: Option<File>,
        events: EventSink,
        counters: Counters,
    ) -> Result<KvmInstance, KvmError> {
        let c = self.cached(&spec.image, image)?;
        self.start_image_counted(c.image, c.shared, Some(c.learned), spec, events, counters)
    }

    /// Starts an already parsed image; `spec.image` is then only used in messages.
    pub fn start_image(
        &self,
        image: Arc<ElfImage>,
        spec: InstanceSpec,
        events: EventSink,
    ) -> Result<KvmInstance, KvmError> {
        self.start_image_counted(image, None, None, spec, events, Counters::default())
    }

    fn start_image_counted(
        &self,
        image: Arc<ElfImage>,
        shared: Option<Arc<SharedPages>>,
        learned: Option<Arc<Learned>>,
        spec: InstanceSpec,
        events: EventSink,
        counters: Counters,
    ) -> Result<KvmInstance, KvmError> {
        let mem_size = mem_size_from_mib(spec.memory_mib)?;
        image.check_fits(mem_size)?;
        let cmdline = boot_info::cmdline(&spec.args)?;
        let devices = Devices::attach(&image.manifest, spec.nets, spec.blocks)?;
        // Named here (no syscall); created by the vCPU thread as it enters it. Only for a quota
        // below one core: a guest has one vCPU thread, which can never use more than that, so a
        // larger quota limits nothing and its group would cost for nothing (setting a quota
        // makes the kernel check every task group of the host; at thousands of guests that is
        // milliseconds per start, docs/benchmarks.md, Density).
        let cpu_group = spec
            .limits
            .cpu_quota_percent
            .filter(|&p| p < 100)
            .and_then(|p| {
                let h = cgroup::support().as_ref().ok()?;
                Some(Arc::new(h.group(&spec.name, p)))
            });

        // A vCPU prepared here makes its VM on its own thread while this one loads the image
        // into memory of its own (registered by the thread when the guest arrives).
        let mut warm = match self
            .pool
            .as_ref()
            .and_then(|p| p.take(mem_size, learned.clone()))
        {
            Some(w) => w,
            None => match self.take_probe() {
                Some(w) => w,
                None => WarmVcpu::prepare(
                    Template::Host(self.host.clone()),
                    0,
                    false,
                    &[],
                    false,
                    &warm::spawn_vcpu_thread,
                )?,
            },
        };
        let loaded = self.load(
            &mut warm,
            &image,
            shared.as_deref(),
            mem_size,
            &devices,
            &cmdline,
        );
        if let Some(p) = &self.pool {
            p.refill();
        }
        let (mem, registered) = loaded?;
        let mem_range = (mem.host_base(), mem.size());
        let WarmVcpu {
            control,
            job,
            thread,
            ..
        } = warm;
        let job_sent = job.send(Job {
            name: spec.name.clone(),
            mem,
            registered,
            devices: InShared::new(devices),
            events: Outbox::new(events),
            regs: regs::initial_regs(image.entry, mem_size),
            cpu_group: cpu_group.clone(),
            limits: spec.limits,
            counters: counters.clone(),
            learn: learned.filter(|l| !l.is_known()),
            booted: self.pool.clone(),
        });
        if job_sent.is_err() {
            // The parked thread is gone (its pre-run failed after all): nothing ran yet.
            return Err(KvmError::Sys {
                op: "handing the guest to its vCPU thread",
                source: std::io::Error::other("vCPU thread ended"),
            });
        }
        Ok(KvmInstance {
            name: spec.name,
            mem: mem_range,
            control,
            thread: Mutex::new(Some(thread)),
            cpu_group,
            counters,
        })
    }
}

impl KvmBackend {
    /// The probed vCPU thread, the first time only (none when there is a pool).
    fn take_probe(&self) -> Option<WarmVcpu> {
        if self.pool.is_some() {
            return None;
        }
        self.probe.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Puts the guest into the prepared vCPU's memory, which it takes, or into fresh memory;
    /// `true` with the prepared memory (already the VM's slot 0). The read-only segments are
    /// mapped from `shared` when given, else copied and protected.
    fn load(
        &self,
        warm: &mut WarmVcpu,
        image: &ElfImage,
        shared: Option<&SharedPages>,
        mem_size: u64,
        devices: &Devices,
        cmdline: &[u8],
    ) -> Result<(GuestMemory, bool), KvmError> {
        let (mut mem, registered) = match warm.mem.take() {
            Some(m) if m.size() == mem_size => (m, true),
            // Prepared for another size (or none): the vCPU thread replaces the slot with this
            // memory before the guest runs, and nothing runs in the VM meanwhile.
            _ => (warm::fresh_memory(mem_size)?, false),
        };
        for seg in image
            .segments
            .iter()
            .filter(|s| s.writable || shared.is_none())
        {
            let dst = mem
                .load_slice(seg.gpa, seg.filesz)
                .map_err(|_| image_error_fits(image, mem_size))?;
            image.read_segment(seg, dst)?;
        }
        // Fresh anonymous memory is zero, so bss needs no writes; writable segments are already
        // read-write, so only the read-only runs need work: a mapping of the shared pages, or an
        // mprotect of the copy (one per run of adjacent read-only segments; text and rodata are
        // usually one).
        match shared {
            Some(s) => s.map_into(&mut mem)?,
            None => {
                for (start, end) in shared_pages::read_only_runs(image) {
                    mem.protect(start, end, false)?;
                }
            }
        }
        let mft = devices.manifest_bytes(&image.manifest);
        boot_info::write_boot_info(&mem, image.kernel_end, self.host.tsc_khz, &mft, cmdline);
        Ok((mem, registered))
    }
}

impl Drop for KvmBackend {
    fn drop(&mut self) {
        if let Some(p) = &self.pool {
            p.shutdown();
        }
        if let Some(h) = cgroup::detected() {
            h.sweep();
        }
    }
}

/// The error for a segment that does not fit; `check_fits` normally catches it first.
fn image_error_fits(image: &ElfImage, mem_size: u64) -> KvmError {
    match image.check_fits(mem_size) {
        Err(e) => e.into(),
        Ok(()) => KvmError::MemorySize {
            mib: mem_size >> 20,
        },
    }
}

impl Backend for KvmBackend {
    fn start(
        &self,
        spec: InstanceSpec,
        events: EventSink,
    ) -> Result<Box<dyn Instance>, BackendError> {
        Ok(Box::new(self.start_kvm(spec, events)?))
    }
}
