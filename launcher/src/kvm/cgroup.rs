//! CPU quota of a guest: the kernel's CFS bandwidth control on its vCPU thread.
//!
//! Each instance with a quota gets a cgroup of its own, holding only its vCPU thread, under a
//! group of this process:
//!
//! - **cgroup v2**, where this process's own v2 group offers the `cpu` controller: a threaded
//!   subtree `OWN/summond-PID/INSTANCE` (`cgroup.type` = threaded, `cpu.max`, the thread moved
//!   in through `cgroup.threads`);
//! - **cgroup v1**, where the `cpu` controller is mounted on its own hierarchy (as on the dev
//!   host): `MOUNT/OWN/summond-PID/INSTANCE` with `cpu.cfs_quota_us` over the default 100 ms
//!   `cpu.cfs_period_us` (a new group's; not written, to save a syscall on every start), the
//!   thread moved in through `tasks`.
//!
//! The vCPU thread moves itself in ([`Group::enter`]) before the guest's first instruction, so a
//! spinning guest never runs unthrottled. A group cannot be removed while a thread is in it, and
//! the vCPU thread is still in it when its instance ends (and may no longer be allowed the
//! syscalls by then), so the thread only hands the group back ([`Entered`]'s drop, no syscall);
//! the next [`Group::enter`] (any instance's, before its guest runs) and the backend's shutdown
//! remove the groups whose threads have exited. Groups of a process that died are removed when
//! the next one detects the hierarchy.
//!
//! A KVM worker process has no capability with which to create a group at the top of a
//! hierarchy (on v1 its directory is not writable without `CAP_DAC_OVERRIDE`): its group is
//! `…/summond-PID/worker-PID`, inside summond's, which as root it may write to
//! ([`nest_in`]); a worker of a uid of its own has summond make it
//! ([`Hierarchy::make_worker_group_for`]).
//!
//! Detection runs once per process ([`support`]); a host without a usable controller runs
//! guests without a quota, which the caller logs and exports.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::backend::CpuStat;

/// CFS period the quota is a share of (the kernel's default period, which v1 groups start with).
const PERIOD_US: u64 = 100_000;

/// Which cgroup hierarchy carries the quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    V1,
    V2,
}

/// Why guests run without a CPU quota.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup hierarchy with the cpu controller is mounted")]
    NoController,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
}

/// This process's group in the hierarchy that carries the quota; instance groups go below.
#[derive(Debug)]
pub struct Hierarchy {
    mode: CgroupMode,
    /// `…/summond-PID`, created at detection.
    base: PathBuf,
    seq: AtomicU64,
    /// Groups whose instances ended; removed once their threads have exited.
    retired: Mutex<Vec<PathBuf>>,
    /// The thread that creates groups and moves vCPU threads into them (see [`Group::enter`]).
    mover: Mutex<std::sync::mpsc::Sender<(Arc<Group>, libc::pid_t)>>,
}

static SUPPORT: OnceLock<Result<Arc<Hierarchy>, CgroupError>> = OnceLock::new();

/// The group this process's group goes inside, when its parent process made one for it.
static PARENT: OnceLock<PathBuf> = OnceLock::new();

/// Puts this process's group inside `parent` (named `worker-PID`) instead of at its own place
/// in the hierarchy: for a process that gives up its capabilities, `parent` being its parent
/// process's group. Call it before [`support`].
pub fn nest_in(parent: PathBuf) {
    let _ = PARENT.set(parent);
}

/// The group of worker process `pid` inside summond's group `parent`.
fn worker_group(parent: &Path, pid: u32) -> PathBuf {
    parent.join(format!("worker-{pid}"))
}

/// A worker process, before it confines itself: makes its own group inside summond's `parent`
/// and returns it, the only part of cgroupfs its sandbox lets it write (not its siblings'
/// groups, where it could change another worker's guests' quotas or move their threads).
/// summond removes it once the worker has ended: the sandbox does not let the worker remove
/// the directory itself, which is an entry of `parent`.
///
/// A worker of a uid of its own (`kvm.worker_uids`) may not write `parent`: summond makes the
/// group for it right after starting it ([`Hierarchy::make_worker_group_for`]), and the worker
/// waits for it here, up to [`WORKER_GROUP_WAIT`].
pub fn make_own_worker_group(parent: &Path) -> io::Result<PathBuf> {
    let dir = worker_group(parent, std::process::id());
    let deadline = std::time::Instant::now() + WORKER_GROUP_WAIT;
    loop {
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(dir),
            Err(e)
                if e.kind() == io::ErrorKind::PermissionDenied
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(e) => return Err(e),
        }
    }
}

/// How long a worker waits for summond to make its group (a few milliseconds at most: summond
/// makes it as soon as the process exists).
const WORKER_GROUP_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The files of a group its owner writes: moving threads in (v1 `tasks`, `cgroup.procs`, v2
/// `cgroup.threads`), making it threaded and handing `cpu` to its children (v2).
const DELEGATED_FILES: [&str; 5] = [
    "tasks",
    "cgroup.procs",
    "cgroup.threads",
    "cgroup.type",
    "cgroup.subtree_control",
];

/// The process-wide hierarchy, detected (its leftovers cleaned, the outcome logged) on first
/// use: the first start with a quota, or a host program asking up front (summond, for its
/// metric). A process that never asks for a quota (summon-run) never touches cgroupfs and never
/// starts the mover thread.
pub fn support() -> &'static Result<Arc<Hierarchy>, CgroupError> {
    SUPPORT.get_or_init(|| {
        let detected = Hierarchy::detect().map(Arc::new);
        match &detected {
            Ok(h) => tracing::info!(
                mode = ?h.mode(),
                group = %h.base().display(),
                "guest CPU quotas through the cpu cgroup controller"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                "guest CPU quotas are not applied: no usable cpu cgroup controller"
            ),
        }
        detected
    })
}

/// The hierarchy if [`support`] has already detected one; never detects.
pub fn detected() -> Option<&'static Arc<Hierarchy>> {
    SUPPORT.get().and_then(|r| r.as_ref().ok())
}

impl Hierarchy {
    fn detect() -> Result<Hierarchy, CgroupError> {
        let mounts = read("/proc/self/mountinfo")?;
        let own = read("/proc/self/cgroup")?;
        let (mode, group) = match v2_group(&mounts, &own) {
            Some(g) if controllers(&g).iter().any(|c| c == "cpu") => (CgroupMode::V2, g),
            _ => (
                CgroupMode::V1,
                v1_cpu_group(&mounts, &own).ok_or(CgroupError::NoController)?,
            ),
        };
        let base = match PARENT.get() {
            // A worker leaves the groups of ended workers to summond (`remove_worker_group`):
            // its sandbox cannot tell whether another worker is alive.
            Some(parent) => worker_group(parent, std::process::id()),
            None => {
                remove_leftovers(&group, "summond-");
                if mode == CgroupMode::V2 {
                    write(&group.join("cgroup.subtree_control"), "+cpu")?;
                }
                group.join(format!("summond-{}", std::process::id()))
            }
        };
        match fs::create_dir(&base) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(CgroupError::Create { path: base, source }),
        }
        if mode == CgroupMode::V2 {
            write(&base.join("cgroup.type"), "threaded")?;
            write(&base.join("cgroup.subtree_control"), "+cpu")?;
        }
        Ok(Hierarchy {
            mode,
            base,
            seq: AtomicU64::new(0),
            retired: Mutex::new(Vec::new()),
            mover: Mutex::new(spawn_mover()?),
        })
    }

    pub fn mode(&self) -> CgroupMode {
        self.mode
    }

    /// This process's group (`…/summond-PID`).
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// A group for instance `name` (nothing is created until [`Group::enter`]).
    pub fn group(self: &Arc<Self>, name: &str, percent: u32) -> Group {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        safe.truncate(64);
        Group {
            hierarchy: self.clone(),
            dir: self.base.join(format!("{n}-{safe}")),
            percent,
            retired: AtomicBool::new(false),
        }
    }

    /// Removes retired groups whose threads have exited; keeps the others for the next sweep.
    pub fn sweep(&self) {
        let retired = std::mem::take(&mut *self.retired.lock().unwrap_or_else(|p| p.into_inner()));
        if retired.is_empty() {
            return;
        }
        let busy: Vec<PathBuf> = retired
            .into_iter()
            .filter(|dir| match fs::remove_dir(dir) {
                Ok(()) => false,
                Err(e) => e.kind() != io::ErrorKind::NotFound,
            })
            .collect();
        if !busy.is_empty() {
            self.retired
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(busy);
        }
    }

    /// Removes the group of worker process `pid` once summond has waited for it (a worker may
    /// not remove its own, see [`make_own_worker_group`], and a killed one could not).
    pub fn remove_worker_group(&self, pid: u32) {
        let dir = worker_group(&self.base, pid);
        match remove_tree(&dir) {
            Ok(()) => tracing::debug!(group = %dir.display(), "removed an ended worker's cgroup"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(group = %dir.display(), error = %e, "cannot remove an ended worker's cgroup")
            }
        }
    }

    /// Makes the group of worker process `pid`, which runs as `uid` and may not make it itself,
    /// and gives it (the directory and [`DELEGATED_FILES`]) to that uid, as systemd delegates
    /// a subtree: the worker makes its guests' groups inside it.
    pub fn make_worker_group_for(&self, pid: u32, uid: u32) -> io::Result<()> {
        let dir = worker_group(&self.base, pid);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        std::os::unix::fs::chown(&dir, Some(uid), Some(uid))?;
        for f in DELEGATED_FILES {
            match std::os::unix::fs::chown(dir.join(f), Some(uid), Some(uid)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// Removes the groups of worker processes that have ended and whose group is still there.
    fn remove_ended_workers(&self) {
        remove_leftovers(&self.base, "worker-");
    }

    /// At exit, once every instance is stopped: removes the retired groups (waiting up to
    /// `wait` for their threads to exit) and then this process's own group.
    pub fn release(&self, wait: std::time::Duration) {
        let deadline = std::time::Instant::now() + wait;
        // The groups of worker processes that ended without removing theirs (killed).
        self.remove_ended_workers();
        let has_groups = || {
            fs::read_dir(&self.base).is_ok_and(|mut d| {
                d.any(|e| e.is_ok_and(|e| e.file_type().is_ok_and(|t| t.is_dir())))
            })
        };
        loop {
            self.sweep();
            // A stopped instance's thread retires its group only as it ends, just after stop
            // returned: wait for the groups themselves, not for the retired list.
            if !has_groups() || std::time::Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if PARENT.get().is_some() {
            // A worker's own group goes with summond's sweep (`make_own_worker_group`).
            return;
        }
        if let Err(e) = fs::remove_dir(&self.base) {
            tracing::warn!(group = %self.base.display(), error = %e, "cannot remove summond's cpu cgroup");
        }
    }

    /// Groups retired but not yet removed.
    pub fn retired(&self) -> usize {
        self.retired.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// One instance's group.
#[derive(Debug)]
pub struct Group {
    hierarchy: Arc<Hierarchy>,
    dir: PathBuf,
    percent: u32,
    /// Set when the instance's thread is done with the group, before it is put on the retired
    /// list; the mover then no longer creates it.
    retired: AtomicBool,
}

impl Group {
    /// Has the group created with its quota and the calling thread moved into it, by the
    /// hierarchy's mover thread; returns at once. Moving a thread between cgroups waits for an
    /// RCU grace period in the kernel (cgroup_threadgroup_rwsem): measured 8–15 ms on our nested
    /// hosts, on every cold start when it ran here, between the guest's start and its first
    /// instruction. So the guest starts at once and its quota applies a few milliseconds later.
    /// Call on the vCPU thread itself (its tid is what moves).
    pub fn enter(self: &Arc<Self>) -> Entered {
        // SAFETY: gettid has no preconditions and cannot fail.
        let tid = unsafe { libc::gettid() };
        let sent = self
            .hierarchy
            .mover
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send((self.clone(), tid));
        if sent.is_err() {
            tracing::warn!(group = %self.dir.display(), "cgroup mover thread is gone; CPU quota not applied");
        }
        Entered {
            group: self.clone(),
        }
    }

    /// The mover's part of [`Group::enter`]: create the group, set its quota, move `tid` in.
    fn create_and_move(&self, tid: libc::pid_t) -> Result<(), CgroupError> {
        self.hierarchy.sweep();
        if self.retired.load(Ordering::SeqCst) {
            return Ok(());
        }
        match fs::create_dir(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(CgroupError::Create {
                    path: self.dir.clone(),
                    source,
                })
            }
        }
        // Retired while we created it: its Entered was dropped before the group existed, so
        // nobody else will remove it. Set before the push to the retired list, so when this
        // reads false the push (and the sweep that removes the group) is still to come.
        if self.retired.load(Ordering::SeqCst) {
            let _ = fs::remove_dir(&self.dir);
            return Ok(());
        }
        let quota = u64::from(self.percent) * PERIOD_US / 100;
        let tid = tid.to_string();
        match self.hierarchy.mode {
            CgroupMode::V1 => {
                write(&self.dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                write(&self.dir.join("tasks"), &tid)?;
            }
            CgroupMode::V2 => {
                write(&self.dir.join("cgroup.type"), "threaded")?;
                write(&self.dir.join("cpu.max"), &format!("{quota} {PERIOD_US}"))?;
                write(&self.dir.join("cgroup.threads"), &tid)?;
            }
        }
        Ok(())
    }

    /// Throttling so far, read from the group's `cpu.stat`; `None` before the group exists or
    /// after it is gone.
    pub fn stat(&self) -> Option<CpuStat> {
        let text = fs::read_to_string(self.dir.join("cpu.stat")).ok()?;
        Some(parse_cpu_stat(&text))
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn percent(&self) -> u32 {
        self.percent
    }
}

/// Held by the vCPU thread while it is in its group; dropping it retires the group (no
/// syscall: the thread may be past its syscall filter by then).
#[derive(Debug)]
pub struct Entered {
    group: Arc<Group>,
}

impl Drop for Entered {
    fn drop(&mut self) {
        self.group.retired.store(true, Ordering::SeqCst);
        self.group
            .hierarchy
            .retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(self.group.dir.clone());
    }
}

/// `nr_periods`, `nr_throttled` and the throttled time of a `cpu.stat` (v1: `throttled_time`
/// in ns; v2: `throttled_usec`).
pub fn parse_cpu_stat(text: &str) -> CpuStat {
    let mut s = CpuStat::default();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(k), Some(v)) = (it.next(), it.next().and_then(|v| v.parse::<u64>().ok())) else {
            continue;
        };
        match k {
            "nr_periods" => s.periods = v,
            "nr_throttled" => s.throttled_periods = v,
            "throttled_time" => s.throttled_ns = v,
            "throttled_usec" => s.throttled_ns = v.saturating_mul(1000),
            _ => {}
        }
    }
    s
}

/// The thread that does [`Group::enter`]'s slow part: one per process, started with the
/// hierarchy (vCPU threads may not create threads once their syscall filter is on), idle
/// between starts.
fn spawn_mover() -> Result<std::sync::mpsc::Sender<(Arc<Group>, libc::pid_t)>, CgroupError> {
    let (tx, rx) = std::sync::mpsc::channel::<(Arc<Group>, libc::pid_t)>();
    std::thread::Builder::new()
        .name("cgroup-mover".into())
        .spawn(move || {
            for (group, tid) in rx {
                if let Err(e) = group.create_and_move(tid) {
                    tracing::warn!(group = %group.dir.display(), error = %e, "CPU quota not applied");
                }
            }
        })
        .map_err(|source| CgroupError::Create {
            path: "cgroup-mover thread".into(),
            source,
        })?;
    Ok(tx)
}

fn read(path: &str) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.into(),
        source,
    })
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    // One write(2) of the whole value: cgroup files act on each write.
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|source| CgroupError::Write {
            path: path.to_path_buf(),
            value: value.to_string(),
            source,
        })
}

/// The controllers a v2 group offers.
fn controllers(group: &Path) -> Vec<String> {
    fs::read_to_string(group.join("cgroup.controllers"))
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Mount points of `fstype` with their super options, from /proc/self/mountinfo.
fn mounts_of<'a>(mountinfo: &'a str, fstype: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
    mountinfo.lines().filter_map(move |l| {
        let (left, right) = l.split_once(" - ")?;
        let mut r = right.split_whitespace();
        if r.next()? != fstype {
            return None;
        }
        let super_opts = r.nth(1).unwrap_or("");
        let mount_point = left.split_whitespace().nth(4)?;
        Some((mount_point, super_opts))
    })
}

/// This process's v2 group (`MOUNT/PATH` from the `0::PATH` line), when v2 is mounted.
fn v2_group(mountinfo: &str, own: &str) -> Option<PathBuf> {
    let (mount, _) = mounts_of(mountinfo, "cgroup2").next()?;
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(Path::new(mount).join(path.trim_start_matches('/')))
}

/// This process's v1 group in the hierarchy that has the `cpu` controller.
fn v1_cpu_group(mountinfo: &str, own: &str) -> Option<PathBuf> {
    let (mount, _) =
        mounts_of(mountinfo, "cgroup").find(|(_, opts)| opts.split(',').any(|o| o == "cpu"))?;
    let path = own.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        ctrls.split(',').any(|c| c == "cpu").then_some(path)
    })?;
    Some(Path::new(mount).join(path.trim_start_matches('/')))
}

/// False only when no process `pid` exists. Asked with a null signal rather than by looking in
/// /proc: workers are not dumpable, and under the unit's `ProtectProc=invisible` a process that
/// is not dumpable has no /proc entry for anybody without `CAP_SYS_PTRACE`. A process we may
/// not signal (`EPERM`: another user's, or refused by a worker's own sandbox) counts as
/// existing, so its group is kept.
fn process_may_exist(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    if pid <= 0 {
        return true;
    }
    // SAFETY: kill(2) with signal 0 sends nothing; it only checks that `pid` exists (a positive
    // pid names one process, never a group).
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Removes the `PREFIX-PID` groups (`summond-`, `worker-`) of processes that no longer exist,
/// with the groups below them, which no thread can hold any more. Groups of live processes are
/// left alone.
fn remove_leftovers(group: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(group) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if process_may_exist(pid) {
            continue;
        }
        let dir = e.path();
        match remove_tree(&dir) {
            Ok(()) => {
                tracing::info!(group = %dir.display(), "removed the cgroup of a process that is gone")
            }
            Err(e) => {
                tracing::warn!(group = %dir.display(), error = %e, "cannot remove the cgroup of a process that is gone")
            }
        }
    }
}

/// Removes a group and the groups below it, deepest first (a cgroup directory's files go with
/// it; only its subdirectories must go before it).
fn remove_tree(dir: &Path) -> io::Result<()> {
    if let Ok(children) = fs::read_dir(dir) {
        for c in children.flatten() {
            if c.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = remove_tree(&c.path());
            }
        }
    }
    fs::remove_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_v1_cpu_group_and_the_v2_group() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
31 25 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 25 0:28 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
";
        let own = "2:cpuacct:/\n1:cpu:/system.slice/summond.service\n0::/x\n";
        assert_eq!(
            v1_cpu_group(mountinfo, own),
            Some(PathBuf::from(
                "/sys/fs/cgroup/cpu/system.slice/summond.service"
            ))
        );
        assert_eq!(
            v2_group(mountinfo, own),
            Some(PathBuf::from("/sys/fs/cgroup/unified/x"))
        );
        let combined =
            "31 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n";
        assert_eq!(
            v1_cpu_group(combined, "4:cpu,cpuacct:/\n"),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(v1_cpu_group("", own), None);
    }

    #[test]
    fn parses_v1_and_v2_cpu_stat() {
        let v1 = "nr_periods 50\nnr_throttled 40\nthrottled_time 3200000000\nnr_bursts 0\n";
        assert_eq!(
            parse_cpu_stat(v1),
            CpuStat {
                periods: 50,
                throttled_periods: 40,
                throttled_ns: 3_200_000_000
            }
        );
        let v2 = "usage_usec 10\nnr_periods 7\nnr_throttled 3\nthrottled_usec 250\n";
        assert_eq!(
            parse_cpu_stat(v2),
            CpuStat {
                periods: 7,
                throttled_periods: 3,
                throttled_ns: 250_000
            }
        );
        assert_eq!(
            parse_cpu_stat("garbage\nnr_periods x\n"),
            CpuStat::default()
        );
    }

    /// On a host with a usable controller (the dev host: v1): a thread in a 20 % group spinning
    /// for 1 s gets throttled, and its group goes away after it exits.
    #[test]
    fn a_spinning_thread_in_a_quota_group_is_throttled_and_its_group_removed() {
        let h = match support() {
            Ok(h) => h.clone(),
            Err(e) => {
                let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
                assert!(!ci, "a usable cpu cgroup is required under CI=true: {e}");
                eprintln!("SKIPPED: no usable cpu cgroup: {e}");
                return;
            }
        };
        let group = Arc::new(h.group("unit test", 20));
        let g = group.clone();
        let ran = std::thread::spawn(move || {
            let entered = g.enter();
            let t = std::time::Instant::now();
            let mut n = 0u64;
            while t.elapsed() < std::time::Duration::from_millis(1000) {
                n = std::hint::black_box(n.wrapping_add(1));
            }
            drop(entered);
        });
        ran.join().unwrap();
        let stat = group.stat().expect("group exists until swept");
        assert!(stat.throttled_periods >= 3, "{stat:?}");
        assert!(stat.throttled_ns > 100_000_000, "{stat:?}");
        // The thread has exited: the next sweep removes the group.
        h.sweep();
        assert!(
            !group.path().exists(),
            "{} left behind",
            group.path().display()
        );
    }
}
