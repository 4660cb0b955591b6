//! The daemon's side: a pool of worker processes that implements [`Backend`].

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, sync_channel, Sender, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::backend::{
    Backend, BackendError, Counters, CpuStat, EventSink, Instance, InstanceEvent, InstanceSpec,
    InstanceState,
};
use crate::counters::CounterRegion;

use super::identity::{Identities, Identity, UidRange};
use super::protocol::{Answer, FromWorker, StartSpec, ToWorker};
use super::{wire, WorkerError, WORKER_FD};

/// How long a request that waits for a guest (stop, suspend) may take: the worker's own wait
/// for the vCPU thread (5 s) and some slack.
const GUEST_WAIT: Duration = Duration::from_secs(7);
/// How long a start or a quick request may take before the worker is deemed wedged.
const QUICK_WAIT: Duration = Duration::from_secs(5);
/// How long a new worker has to say hello (it probes KVM and prepares its first VM).
const HELLO_WAIT: Duration = Duration::from_secs(10);

/// How the pool starts workers.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The worker's program and arguments; the process serves the socket at fd
    /// [`WORKER_FD`] with [`super::serve`].
    pub command: Vec<OsString>,
    /// The most instances one worker process holds.
    pub per_process: usize,
    /// A uid of its own for each worker (`identity.rs`); `None`: summond's own.
    pub uids: Option<UidRange>,
}

/// Worker processes, each running up to `per_process` guests: the daemon's own address space
/// holds no VM. Costs that grow with the VMs of one address space (every `munmap`/`mprotect`
/// calls each VM's MMU notifier, `KVM_CREATE_VM` takes the mmap lock) are then bounded by
/// `per_process`, not by the number of instances on the host; a worker that crashes takes only
/// its own guests with it.
pub struct WorkerPool {
    cfg: WorkerConfig,
    workers: Arc<Mutex<Vec<Arc<Worker>>>>,
    spawner: Mutex<Sender<SpawnRequest>>,
    /// A spare worker is being started in the background.
    spare_pending: Arc<AtomicBool>,
}

/// Instance ids and request sequence numbers: unique among everything in flight.
fn next_number() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// `None`: a spare, in the background. `Some`: a caller waits for a worker with room.
type SpawnRequest = Option<SyncSender<Result<(), WorkerError>>>;

impl WorkerPool {
    /// Starts the first worker (so that a host without KVM fails here, not at the first query).
    pub fn new(cfg: WorkerConfig) -> Result<WorkerPool, WorkerError> {
        if cfg.command.is_empty() || cfg.per_process == 0 {
            return Err(WorkerError::Setup {
                message: "a worker pool needs a command and at least one instance per worker"
                    .into(),
            });
        }
        let workers = Arc::new(Mutex::new(Vec::new()));
        let spare_pending = Arc::new(AtomicBool::new(false));
        let identities = match cfg.uids {
            Some(range) => Some(Identities::new(range).map_err(|e| WorkerError::Setup {
                message: e.to_string(),
            })?),
            None => None,
        };
        let spawner = start_spawner(
            cfg.clone(),
            identities,
            workers.clone(),
            spare_pending.clone(),
        )?;
        let pool = WorkerPool {
            cfg,
            workers,
            spawner: Mutex::new(spawner),
            spare_pending,
        };
        pool.spawn_now()?;
        Ok(pool)
    }

    fn list(&self) -> MutexGuard<'_, Vec<Arc<Worker>>> {
        self.workers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `req` to the spawner thread; false when it is gone.
    fn to_spawner(&self, req: SpawnRequest) -> bool {
        self.spawner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(req)
            .is_ok()
    }

    /// Has a worker started unless one with room exists by the time the spawner gets to it
    /// (a burst of starts that found no room shares the one new worker).
    fn spawn_now(&self) -> Result<(), WorkerError> {
        let (tx, rx) = sync_channel(1);
        if !self.to_spawner(Some(tx)) {
            return Err(WorkerError::Setup {
                message: "the worker spawner thread is gone".into(),
            });
        }
        rx.recv_timeout(HELLO_WAIT + QUICK_WAIT)
            .unwrap_or(Err(WorkerError::Setup {
                message: "no worker started in time".into(),
            }))
    }

    /// A worker with room for one more instance, counted in at once. Keeps a spare worker
    /// starting in the background once less than half a worker's room is left, so that a
    /// start rarely waits for a process to come up.
    fn pick(&self) -> Result<Arc<Worker>, WorkerError> {
        // A worker started for us may be filled by others before we look again: a few tries.
        for _ in 0..8 {
            if let Some(w) = self.pick_with_room() {
                return Ok(w);
            }
            self.spawn_now()?;
        }
        Err(WorkerError::Setup {
            message: "every worker filled up faster than new ones started".into(),
        })
    }

    fn pick_with_room(&self) -> Option<Arc<Worker>> {
        let per = self.cfg.per_process;
        let mut list = self.list();
        list.retain(|w| !w.dead());
        let mut room = 0;
        let mut chosen = None;
        for w in list.iter() {
            let left = per.saturating_sub(w.live.load(Ordering::SeqCst));
            room += left;
            if chosen.is_none() && left > 0 {
                chosen = Some(w.clone());
            }
        }
        if let Some(w) = &chosen {
            w.live.fetch_add(1, Ordering::SeqCst);
            room -= 1;
        }
        if room < per.div_ceil(2)
            && !self.spare_pending.swap(true, Ordering::SeqCst)
            && !self.to_spawner(None)
        {
            self.spare_pending.store(false, Ordering::SeqCst);
        }
        chosen
    }

    /// Asks every worker to end all its guests, without waiting (daemon exit): one message per
    /// worker instead of one per guest. The handles of their guests report them stopped from
    /// now on; [`Self::shutdown`] ends the processes.
    ///
    /// Their taps stay open until [`Self::shutdown`]: a caller that deletes the taps in between
    /// has each detached with one RCU grace period instead of two (one at the guest's close,
    /// one at the delete), and the guests' teardown overlaps the deletion.
    pub fn stop_all(&self) {
        for w in self.list().iter() {
            w.tell(&ToWorker::StopAll);
            w.stopping.store(true, Ordering::SeqCst);
        }
    }

    /// Ends every worker (daemon exit): each ends its guests and exits; those still there at
    /// `deadline` are killed.
    pub fn shutdown(&self, deadline: Duration) {
        let workers: Vec<Arc<Worker>> = std::mem::take(&mut *self.list());
        for w in &workers {
            w.close();
        }
        let end = Instant::now() + deadline;
        for w in &workers {
            if w.reap(end) {
                w.waited();
            }
        }
    }
}

impl Backend for WorkerPool {
    fn start(
        &self,
        spec: InstanceSpec,
        events: EventSink,
    ) -> Result<Box<dyn Instance>, BackendError> {
        // The worker may not open images (its Landlock rules): summond does, for each start,
        // so a reload's new images need nothing more.
        let image = std::fs::File::open(&spec.image).map_err(|source| {
            crate::kvm::KvmError::from(summon_image::ImageError::Io {
                path: spec.image.clone(),
                source,
            })
        })?;
        let worker = self.pick()?;
        let id = next_number();
        let seq = next_number();
        let state = Arc::new(AtomicU8::new(RUNNING));
        // Registered before the start is sent: the guest's first events may come before the
        // answer does.
        worker
            .routes()
            .sinks
            .insert(id, tracking(state.clone(), events));
        let name = spec.name.clone();
        let (spec, fds) = StartSpec::from_spec(spec, image.into());
        let req = ToWorker::Start { seq, id, spec };
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let answer = worker.ask(seq, &req, &raw, QUICK_WAIT, "start");
        // The worker has its own copies now (or never will).
        drop(fds);
        let fail = |e: WorkerError| {
            worker.routes().sinks.remove(&id);
            worker.live.fetch_sub(1, Ordering::SeqCst);
            Err(BackendError::from(e))
        };
        match answer {
            Ok(Answer::Started { slot, cpu_quota }) => {
                match Counters::read_from(&worker.region, slot) {
                    Some(counters) => Ok(Box::new(WorkerInstance {
                        worker: worker.clone(),
                        pool: PoolRef {
                            workers: Arc::downgrade(&self.workers),
                            per_process: self.cfg.per_process,
                        },
                        id,
                        name,
                        counters,
                        state,
                        cpu_quota,
                    })),
                    None => {
                        worker.tell(&ToWorker::Release { id });
                        fail(WorkerError::Protocol {
                            pid: worker.pid,
                            message: format!("counter slot {slot} out of range"),
                        })
                    }
                }
            }
            Ok(other) => fail(WorkerError::Protocol {
                pid: worker.pid,
                message: format!("unexpected answer to a start: {other:?}"),
            }),
            Err(e) => {
                if matches!(e, WorkerError::Timeout { .. }) {
                    // It may still start the guest after all: nobody would hold it.
                    worker.tell(&ToWorker::Release { id });
                }
                fail(e)
            }
        }
    }
}

const RUNNING: u8 = 0;
const PAUSED: u8 = 1;
const STOPPED: u8 = 2;

fn state_of(v: u8) -> InstanceState {
    match v {
        RUNNING => InstanceState::Running,
        PAUSED => InstanceState::Paused,
        _ => InstanceState::Stopped,
    }
}

/// The caller's sink, behind a step that marks the handle stopped when the guest ends.
fn tracking(state: Arc<AtomicU8>, events: EventSink) -> EventSink {
    Arc::new(move |ev: InstanceEvent| {
        if ev.is_end() {
            state.store(STOPPED, Ordering::SeqCst);
        }
        events(ev)
    })
}

#[derive(Default)]
struct Routes {
    sinks: HashMap<u64, EventSink>,
    waiting: HashMap<u64, SyncSender<Result<Answer, String>>>,
}

/// One worker process.
struct Worker {
    pid: u32,
    sock: Arc<OwnedFd>,
    region: Arc<CounterRegion>,
    /// Handles given out and not yet dropped.
    live: AtomicUsize,
    routes: Mutex<Routes>,
    dead: AtomicBool,
    /// The daemon closed the socket on purpose ([`Worker::close`]): its end is no fault.
    closing: AtomicBool,
    /// Told to end all its guests ([`WorkerPool::stop_all`]): their handles report them
    /// stopped.
    stopping: AtomicBool,
    child: Mutex<Option<Child>>,
    /// Its uid, given back once the process has been waited for.
    identity: Mutex<Option<Arc<Identity>>>,
}

impl Worker {
    fn routes(&self) -> MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// Closes the socket both ways: the worker ends its guests and exits, the reader thread
    /// stops, and requests fail at once from now on.
    fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.dead.store(true, Ordering::SeqCst);
        // SAFETY: shutdown on a socket this worker owns (the descriptor stays open until drop).
        unsafe { libc::shutdown(self.sock.as_raw_fd(), libc::SHUT_RDWR) };
    }

    /// Sends a request that wants no answer; a worker that is gone makes it moot.
    fn tell(&self, req: &ToWorker) {
        if let Ok(bytes) = serde_json::to_vec(req) {
            let _ = wire::send(&self.sock, &bytes, &[]);
        }
    }

    /// Sends `req` (numbered `seq`) and waits up to `wait` for its answer.
    fn ask(
        &self,
        seq: u64,
        req: &ToWorker,
        fds: &[RawFd],
        wait: Duration,
        what: &'static str,
    ) -> Result<Answer, WorkerError> {
        if self.dead() {
            return Err(WorkerError::Gone { pid: self.pid });
        }
        let (tx, rx) = sync_channel(1);
        self.routes().waiting.insert(seq, tx);
        let bytes = serde_json::to_vec(req).map_err(|e| WorkerError::Protocol {
            pid: self.pid,
            message: e.to_string(),
        });
        let sent = bytes.and_then(|b| {
            wire::send(&self.sock, &b, fds).map_err(|source| WorkerError::Socket {
                pid: self.pid,
                source,
            })
        });
        if let Err(e) = sent {
            self.routes().waiting.remove(&seq);
            return Err(e);
        }
        match rx.recv_timeout(wait) {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(message)) => Err(WorkerError::Reported { message }),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                self.routes().waiting.remove(&seq);
                Err(WorkerError::Timeout {
                    pid: self.pid,
                    request: what,
                    waited: wait,
                })
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                Err(WorkerError::Gone { pid: self.pid })
            }
        }
    }

    /// Waits for the process to exit until `end`, then kills it; false if another caller
    /// took it to wait for.
    fn reap(&self, end: Instant) -> bool {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let Some(c) = child.as_mut() else {
            return false;
        };
        loop {
            match c.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= end => {
                    tracing::warn!(pid = self.pid, "worker did not exit in time; killing it");
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        *child = None;
        true
    }

    /// What goes once the process has been waited for: its cgroup group and its uid.
    fn waited(&self) {
        remove_group(self.pid);
        self.identity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Gone from the pool and from every handle: dead, or shut down already. A process still
        // exiting (its guests' teardown) is waited for on a thread of its own, not here: the
        // last handle may go on a tokio worker or under the pool's lock.
        // Its cgroup group goes once it has been waited for, on that thread too (cgroupfs
        // takes a kernel-wide lock).
        let child = self.child.lock().unwrap_or_else(|p| p.into_inner()).take();
        let identity = self
            .identity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(mut c) = child {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
            }
            let waiter = std::thread::Builder::new()
                .name("worker-reap".into())
                .stack_size(64 << 10)
                .spawn(move || {
                    let pid = c.id();
                    let _ = c.wait();
                    remove_group(pid);
                    drop(identity);
                });
            if waiter.is_err() {
                tracing::warn!(pid = self.pid, "no thread to reap a worker; left a zombie");
            }
        }
    }
}

/// Reads one worker's messages: answers go to their waiters, events to their instance's sink,
/// log lines to the daemon's log. When the worker goes, every waiter gets an error and every
/// instance it held a fault.
fn read_loop(w: Arc<Worker>) {
    let mut buf = vec![0u8; wire::MAX_MESSAGE];
    loop {
        let n = match wire::recv(&w.sock, &mut buf) {
            Ok(Some((n, _))) => n,
            Ok(None) => break,
            Err(e) => {
                if !w.dead() {
                    tracing::warn!(pid = w.pid, error = %e, "reading a worker's socket");
                }
                break;
            }
        };
        let msg: FromWorker = match serde_json::from_slice(&buf[..n]) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(pid = w.pid, error = %e, "undecodable message from a worker");
                continue;
            }
        };
        match msg {
            FromWorker::Reply { seq, result } => {
                if let Some(tx) = w.routes().waiting.remove(&seq) {
                    let _ = tx.try_send(result);
                }
            }
            FromWorker::Event { id, event } => {
                let end = event.is_end();
                let sink = {
                    let mut r = w.routes();
                    if end {
                        r.sinks.remove(&id)
                    } else {
                        r.sinks.get(&id).cloned()
                    }
                };
                if let Some(s) = sink {
                    s(event);
                }
            }
            FromWorker::Log(line) => log_line(w.pid, &line),
            FromWorker::Hello { .. } => {}
        }
    }
    w.dead.store(true, Ordering::SeqCst);
    if w.closing.load(Ordering::SeqCst) {
        // Ended on the daemon's request: its guests were asked to stop, not faulted.
        let mut r = w.routes();
        r.sinks.clear();
        r.waiting.clear();
        return;
    }
    let (sinks, waiting) = {
        let mut r = w.routes();
        (std::mem::take(&mut r.sinks), std::mem::take(&mut r.waiting))
    };
    drop(waiting);
    if !sinks.is_empty() {
        tracing::error!(
            pid = w.pid,
            instances = sinks.len(),
            "a worker process ended with guests in it"
        );
    }
    for (_, s) in sinks {
        s(InstanceEvent::Faulted(format!(
            "its worker process {} ended",
            w.pid
        )));
    }
    // Not left a zombie until the next start looks at the pool.
    if w.reap(Instant::now() + QUICK_WAIT) {
        w.waited();
    }
}

/// The cgroup group of a worker that has been waited for: a worker may not remove its own
/// (see `cgroup::make_own_worker_group`), and one that was killed could not anyway.
fn remove_group(pid: u32) {
    if let Some(h) = crate::kvm::cgroup::detected() {
        h.remove_worker_group(pid);
    }
}

/// A worker's log line, logged again at the level its formatter wrote first.
fn log_line(pid: u32, line: &str) {
    let line = line.trim_start();
    let (level, rest) = line.split_once(' ').unwrap_or((line, ""));
    let rest = rest.trim_start();
    match level {
        "ERROR" => tracing::error!(worker = pid, "{rest}"),
        "WARN" => tracing::warn!(worker = pid, "{rest}"),
        "INFO" => tracing::info!(worker = pid, "{rest}"),
        _ => tracing::debug!(worker = pid, "{line}"),
    }
}

/// Whether a live worker has room for another instance.
fn has_room(workers: &Mutex<Vec<Arc<Worker>>>, per_process: usize) -> bool {
    workers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|w| !w.dead() && w.live.load(Ordering::SeqCst) < per_process)
}

/// The thread that starts workers. A worker dies with the thread that forked it
/// (`PR_SET_PDEATHSIG` follows the parent thread), so one long-lived thread does all forks.
/// A waiting caller's request is answered at once when a worker has room by then.
fn start_spawner(
    cfg: WorkerConfig,
    identities: Option<Identities>,
    workers: Arc<Mutex<Vec<Arc<Worker>>>>,
    spare_pending: Arc<AtomicBool>,
) -> Result<Sender<SpawnRequest>, WorkerError> {
    let (tx, rx) = channel::<SpawnRequest>();
    std::thread::Builder::new()
        .name("kvm-workers".into())
        .stack_size(256 << 10)
        .spawn(move || {
            for req in rx {
                if req.is_some() && has_room(&workers, cfg.per_process) {
                    if let Some(reply) = req {
                        let _ = reply.send(Ok(()));
                    }
                    continue;
                }
                let identity = identities.as_ref().map(Identities::take).transpose();
                let r = identity
                    .map_err(|source| WorkerError::Spawn { source })
                    .and_then(|identity| spawn_worker(&cfg, identity))
                    .map(|w| {
                        workers.lock().unwrap_or_else(|p| p.into_inner()).push(w);
                    });
                match req {
                    Some(reply) => {
                        let _ = reply.send(r);
                    }
                    None => {
                        if let Err(e) = r {
                            tracing::error!(error = %e, "starting a spare worker process");
                        }
                        spare_pending.store(false, Ordering::SeqCst);
                    }
                }
            }
        })
        .map_err(|source| WorkerError::Spawn { source })?;
    Ok(tx)
}

fn set_timeout(sock: &OwnedFd, opt: libc::c_int, d: Duration) {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt reads a timeval of the stated size from a local.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
}

fn spawn_worker(
    cfg: &WorkerConfig,
    identity: Option<Identity>,
) -> Result<Arc<Worker>, WorkerError> {
    let (ours, theirs) = wire::socket_pair().map_err(|source| WorkerError::Spawn { source })?;
    let their_fd = theirs.as_raw_fd();
    let mut cmd = Command::new(&cfg.command[0]);
    // Named for `ps`: the program may be `/proc/self/exe`.
    cmd.arg0("summond")
        .args(&cfg.command[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // The worker logs through its socket: a stalled or broken stderr never reaches it.
        .stderr(Stdio::null());
    let identity = identity.map(Arc::new);
    let becomes = identity.clone();
    // SAFETY: runs in the forked child before exec and calls only async-signal-safe functions
    // (dup2, fcntl, setgroups, setresgid, setresuid, prctl) on an fd that is open in the child
    // (inherited, close-on-exec) and on data made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if their_fd == WORKER_FD {
                let flags = libc::fcntl(WORKER_FD, libc::F_GETFD);
                if flags < 0 || libc::fcntl(WORKER_FD, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(their_fd, WORKER_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(id) = &becomes {
                id.assume()?;
            }
            // After the change of uid, which clears it.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|source| WorkerError::Spawn { source })?;
    drop(theirs);
    let pid = child.id();
    // A worker of its own uid cannot make its group inside summond's: summond makes it for
    // it (the worker waits for it), owned by that uid.
    if let (Some(id), Some(h)) = (&identity, crate::kvm::cgroup::detected()) {
        if let Err(e) = h.make_worker_group_for(pid, id.uid) {
            tracing::warn!(pid, error = %e, "making a worker's cpu cgroup");
        }
    }
    let kill = |mut c: Child| {
        let _ = c.kill();
        let _ = c.wait();
    };
    // The hello, bounded; afterwards reads block (the reader thread) and sends time out (a
    // wedged worker must not hold a caller forever).
    set_timeout(&ours, libc::SO_RCVTIMEO, HELLO_WAIT);
    let mut buf = vec![0u8; wire::MAX_MESSAGE];
    let mut region = None;
    let mut setup_error = None;
    while region.is_none() {
        match wire::recv(&ours, &mut buf) {
            Ok(Some((n, fds))) => match serde_json::from_slice::<FromWorker>(&buf[..n]) {
                Ok(FromWorker::Hello { slots }) => {
                    let Some(fd) = fds.into_iter().next() else {
                        kill(child);
                        return Err(WorkerError::Protocol {
                            pid,
                            message: "hello without its counter region".into(),
                        });
                    };
                    match CounterRegion::open(fd, slots) {
                        Ok(r) => region = Some(r),
                        Err(e) => {
                            kill(child);
                            return Err(WorkerError::Protocol {
                                pid,
                                message: format!("mapping its counter region: {e}"),
                            });
                        }
                    }
                }
                Ok(FromWorker::Log(line)) => {
                    log_line(pid, &line);
                    let reason = line.trim_start();
                    setup_error = Some(reason.strip_prefix("ERROR ").unwrap_or(reason).to_owned());
                }
                _ => {}
            },
            Ok(None) | Err(_) => {
                kill(child);
                return Err(WorkerError::Setup {
                    message: setup_error.unwrap_or_else(|| {
                        format!("worker process {pid} exited or said nothing before it was ready")
                    }),
                });
            }
        }
    }
    set_timeout(&ours, libc::SO_RCVTIMEO, Duration::ZERO);
    set_timeout(&ours, libc::SO_SNDTIMEO, QUICK_WAIT);
    let w = Arc::new(Worker {
        pid,
        sock: Arc::new(ours),
        region: Arc::new(region.expect("set by the loop above")),
        live: AtomicUsize::new(0),
        routes: Mutex::new(Routes::default()),
        dead: AtomicBool::new(false),
        closing: AtomicBool::new(false),
        stopping: AtomicBool::new(false),
        child: Mutex::new(Some(child)),
        identity: Mutex::new(identity),
    });
    let reader = w.clone();
    let spawned = std::thread::Builder::new()
        .name("kvm-worker-rx".into())
        .stack_size(256 << 10)
        .spawn(move || read_loop(reader));
    if let Err(source) = spawned {
        w.dead.store(true, Ordering::SeqCst);
        return Err(WorkerError::Spawn { source });
    }
    tracing::debug!(pid, "worker process ready");
    Ok(w)
}

/// An instance in a worker process, as the daemon holds it.
struct WorkerInstance {
    worker: Arc<Worker>,
    pool: PoolRef,
    id: u64,
    name: String,
    counters: Counters,
    state: Arc<AtomicU8>,
    /// It has a CPU quota group in the worker: only then does a scrape ask for its statistics.
    cpu_quota: bool,
}

impl Instance for WorkerInstance {
    fn stop(&self) -> Result<(), BackendError> {
        if self.state() == InstanceState::Stopped {
            return Ok(());
        }
        let seq = next_number();
        let r = self.worker.ask(
            seq,
            &ToWorker::Stop { seq, id: self.id },
            &[],
            GUEST_WAIT,
            "stop",
        );
        match r {
            Ok(_) | Err(WorkerError::Gone { .. }) => {
                self.state.store(STOPPED, Ordering::SeqCst);
                Ok(())
            }
            // The daemon closed this worker: it ends all its guests.
            Err(_) if self.worker.closing.load(Ordering::SeqCst) => {
                self.state.store(STOPPED, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn request_stop(&self) {
        if self.state() != InstanceState::Stopped && !self.worker.dead() {
            self.worker.tell(&ToWorker::RequestStop { id: self.id });
        }
    }

    fn suspend(&self) -> Result<(), BackendError> {
        if self.state() == InstanceState::Stopped {
            return Err(BackendError::InvalidState(self.name.clone(), "suspend"));
        }
        let seq = next_number();
        let req = ToWorker::Suspend { seq, id: self.id };
        self.worker.ask(seq, &req, &[], GUEST_WAIT, "suspend")?;
        let _ = self
            .state
            .compare_exchange(RUNNING, PAUSED, Ordering::SeqCst, Ordering::SeqCst);
        Ok(())
    }

    fn resume(&self) -> Result<(), BackendError> {
        if self.state() == InstanceState::Stopped {
            return Err(BackendError::InvalidState(self.name.clone(), "resume"));
        }
        if self.worker.dead() {
            return Err(WorkerError::Gone {
                pid: self.worker.pid,
            }
            .into());
        }
        // Sent, not asked: a resume never waits in the launcher either (it only lets the vCPU
        // thread go on), and the registry resumes under the service's lock. A guest that ended
        // meanwhile reports so through its events.
        let seq = next_number();
        self.worker.tell(&ToWorker::Resume { seq, id: self.id });
        let _ = self
            .state
            .compare_exchange(PAUSED, RUNNING, Ordering::SeqCst, Ordering::SeqCst);
        Ok(())
    }

    fn state(&self) -> InstanceState {
        if self.worker.stopping.load(Ordering::SeqCst) {
            return InstanceState::Stopped;
        }
        state_of(self.state.load(Ordering::SeqCst))
    }

    fn counters(&self) -> Option<Counters> {
        Some(self.counters.clone())
    }

    fn cpu_stat(&self) -> Option<CpuStat> {
        if !self.cpu_quota || self.worker.dead() {
            return None;
        }
        let seq = next_number();
        let req = ToWorker::CpuStat { seq, id: self.id };
        match self
            .worker
            .ask(seq, &req, &[], QUICK_WAIT, "cpu statistics")
        {
            Ok(Answer::CpuStat(s)) => s,
            _ => None,
        }
    }
}

impl Drop for WorkerInstance {
    fn drop(&mut self) {
        self.worker.routes().sinks.remove(&self.id);
        // A stopping worker keeps its guests' taps until it exits (see `stop_all`).
        if !self.worker.dead() && !self.worker.stopping.load(Ordering::SeqCst) {
            self.worker.tell(&ToWorker::Release { id: self.id });
        }
        let was = self.worker.live.fetch_sub(1, Ordering::SeqCst);
        if was == 1 && !self.worker.stopping.load(Ordering::SeqCst) {
            self.pool.retire_if_idle(&self.worker);
        }
    }
}

/// What an instance's handle needs of its pool: to end its worker once the last guest is gone.
struct PoolRef {
    workers: Weak<Mutex<Vec<Arc<Worker>>>>,
    per_process: usize,
}

impl PoolRef {
    /// Ends `worker` if it holds no guest and the other workers have a whole worker's room
    /// without it: the workers a burst needed do not outlive it (each keeps a few MiB, threads
    /// and a prepared VM), and the next start still finds room at once.
    fn retire_if_idle(&self, worker: &Arc<Worker>) {
        let Some(workers) = self.workers.upgrade() else {
            return;
        };
        let mut list = workers.lock().unwrap_or_else(|p| p.into_inner());
        // Counted in only under this lock (`pick_with_room`): no start is on its way to it.
        if worker.live.load(Ordering::SeqCst) != 0 || worker.dead() {
            return;
        }
        let per = self.per_process;
        let others: usize = list
            .iter()
            .filter(|w| !Arc::ptr_eq(w, worker) && !w.dead())
            .map(|w| per.saturating_sub(w.live.load(Ordering::SeqCst)))
            .sum();
        if others < per {
            return;
        }
        list.retain(|w| !Arc::ptr_eq(w, worker));
        drop(list);
        worker.close();
        tracing::debug!(
            pid = worker.pid,
            "ended a worker process left without guests"
        );
    }
}
