//! The worker process: an embedded KVM backend serving one daemon over its socket.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use crate::backend::{Counters, EventSink, Instance, InstanceEvent, TapSource};
use crate::counters::CounterRegion;
use crate::kvm::{KvmBackend, KvmInstance};

use super::protocol::{Answer, FromWorker, StartSpec, ToWorker};
use super::{wire, WorkerError};

/// Messages waiting for the socket; console lines and log lines beyond it are dropped (a daemon
/// that does not read must not stall guests), lifecycle events and answers wait for room.
const OUTBOX: usize = 4096;

/// Where the worker's own log lines go: to the daemon, as [`FromWorker::Log`] messages, lossy.
/// Implements `io::Write` so that a log formatter can write to it.
#[derive(Clone)]
pub struct LogForward(SyncSender<FromWorker>);

impl std::io::Write for LogForward {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let line = String::from_utf8_lossy(buf).trim_end().to_string();
        if !line.is_empty() {
            let _ = self.0.try_send(FromWorker::Log(line));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The socket's sending side, shared by the instances' event sinks and the request loop.
#[derive(Clone)]
struct Outbox {
    queue: SyncSender<FromWorker>,
    sock: Arc<OwnedFd>,
}

impl Outbox {
    fn send(&self, m: FromWorker) {
        match &m {
            FromWorker::Event {
                event: InstanceEvent::Console(_),
                ..
            }
            | FromWorker::Log(_) => {
                if let Err(TrySendError::Full(_)) = self.queue.try_send(m) {
                    // Dropped: the guest's console is rate-limited already, and the daemon
                    // is behind.
                }
            }
            _ => {
                let _ = self.queue.send(m);
            }
        }
    }

    /// Sent at once from the calling thread rather than through the queue: an answer is what
    /// a caller (a start on the cold path) waits for, and a hand-off to the writer thread
    /// would add a wake-up to its wait. Seqpacket sends are atomic, so the two never mix.
    fn reply(&self, seq: u64, result: Result<Answer, String>) {
        if let Ok(bytes) = serde_json::to_vec(&FromWorker::Reply { seq, result }) {
            let _ = wire::send(&self.sock, &bytes, &[]);
        }
    }
}

/// Writes queued messages to the socket until the daemon goes away.
fn write_loop(sock: Arc<OwnedFd>, rx: Receiver<FromWorker>) {
    for m in rx {
        let Ok(bytes) = serde_json::to_vec(&m) else {
            continue;
        };
        if wire::send(&sock, &bytes, &[]).is_err() {
            // The daemon is gone; the request loop sees the same and ends the process.
            return;
        }
    }
}

struct Live {
    instance: Arc<KvmInstance>,
    slot: usize,
    /// A second descriptor of each of its taps, closed only after the guest's own: see
    /// [`ToWorker::StopAll`] and [`ToWorker::Stop`].
    taps: Vec<OwnedFd>,
}

/// The counter slots not in use; a slot returns only once its instance's thread has ended.
type FreeSlots = Arc<Mutex<Vec<usize>>>;

/// Tells summond why this worker cannot serve, before [`serve`] (its stderr goes nowhere):
/// summond logs the reason and fails the start with it.
pub fn report_setup_failure(sock: &OwnedFd, message: &str) {
    if let Ok(bytes) = serde_json::to_vec(&FromWorker::Log(format!("ERROR {message}"))) {
        let _ = wire::send(sock, &bytes, &[]);
    }
}

/// Serves the daemon on `sock` until it closes its end; returns the process's exit status.
/// `log` receives the [`LogForward`] to install as the process's log writer before anything
/// logs. Instances get at most `slots` counter slots (the daemon places at most half that many
/// here, so that slots of instances still winding down never run out).
pub fn serve(sock: OwnedFd, prewarm: usize, slots: usize, log: impl FnOnce(LogForward)) -> i32 {
    // Named in `ps` and /proc (else it is the executable's name, often `exe`).
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"kvm-worker".as_ptr()) };
    // summond ends its workers itself, in an order that matters (their taps must outlive the
    // links' deletion, docs/daemon.md): a SIGTERM sent to the whole service (systemd's default
    // kill mode) or a Ctrl-C to the process group must not end them first. SIGKILL still does.
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: setting a signal's disposition to ignore, before any thread of ours exists.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    let sock = Arc::new(sock);
    let (tx, rx) = sync_channel::<FromWorker>(OUTBOX);
    log(LogForward(tx.clone()));
    let out = Outbox {
        queue: tx,
        sock: sock.clone(),
    };
    let writer = {
        let sock = sock.clone();
        std::thread::Builder::new()
            .name("worker-out".into())
            .spawn(move || write_loop(sock, rx))
    };
    if writer.is_err() {
        return 1;
    }
    let setup = (|| -> Result<(KvmBackend, Arc<CounterRegion>), WorkerError> {
        let backend = KvmBackend::with_prewarm(prewarm).map_err(|e| WorkerError::Setup {
            message: e.to_string(),
        })?;
        let region = CounterRegion::create(slots).map_err(|e| WorkerError::Setup {
            message: format!("counter region: {e}"),
        })?;
        Ok((backend, Arc::new(region)))
    })();
    let (backend, region) = match setup {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            // Say why before going: the daemon logs the line and sees the socket close.
            let _ = wire::send(
                &sock,
                &serde_json::to_vec(&FromWorker::Log(format!("ERROR {e}"))).unwrap_or_default(),
                &[],
            );
            return 1;
        }
    };
    // Sent directly (not queued) so that the region's descriptor travels with it.
    let hello = serde_json::to_vec(&FromWorker::Hello {
        slots: region.slots(),
    })
    .unwrap_or_default();
    if wire::send(&sock, &hello, &[region.fd().as_raw_fd()]).is_err() {
        return 1;
    }
    let free: FreeSlots = Arc::new(Mutex::new((0..region.slots()).rev().collect()));
    let mut live: HashMap<u64, Live> = HashMap::new();
    let mut buf = vec![0u8; wire::MAX_MESSAGE];
    loop {
        let (n, fds) = match wire::recv(&sock, &mut buf) {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                tracing::error!("reading the daemon's socket: {e}");
                break;
            }
        };
        let req: ToWorker = match serde_json::from_slice(&buf[..n]) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("undecodable request from the daemon: {e}");
                continue;
            }
        };
        handle(req, fds, &backend, &region, &free, &mut live, &out);
    }
    // The daemon is gone (or exiting): end every guest, wait for their threads, and leave the
    // rest (cgroups, prepared VMs) to the backend's drop.
    for l in live.values() {
        l.instance.request_stop();
    }
    for (_, l) in live.drain() {
        l.instance.join();
    }
    drop(backend);
    if let Some(h) = crate::kvm::cgroup::detected() {
        h.release(std::time::Duration::from_secs(1));
    }
    0
}

fn handle(
    req: ToWorker,
    fds: Vec<OwnedFd>,
    backend: &KvmBackend,
    region: &Arc<CounterRegion>,
    free: &FreeSlots,
    live: &mut HashMap<u64, Live>,
    out: &Outbox,
) {
    match req {
        ToWorker::Start { seq, id, spec } => {
            let result = start(backend, region, free, out, id, spec, fds);
            let answer = match result {
                Ok(l) => {
                    let slot = l.slot;
                    let cpu_quota = l.instance.has_cpu_quota();
                    live.insert(id, l);
                    Ok(Answer::Started { slot, cpu_quota })
                }
                Err(e) => Err(e),
            };
            out.reply(seq, answer);
        }
        ToWorker::RequestStop { id } => {
            if let Some(l) = live.get(&id) {
                l.instance.request_stop();
            }
        }
        // A stop of an instance already released has nothing left to do; a suspend fails.
        // The stop is answered once the taps are closed too: the daemon hands a stopped
        // instance's tap to its service's next start, which cannot attach while we hold it.
        // Their last close waits for an RCU grace period; here, not on that start.
        ToWorker::Stop { seq, id } => {
            let taps = live
                .get_mut(&id)
                .map(|l| std::mem::take(&mut l.taps))
                .unwrap_or_default();
            waiting(live, id, seq, out, Ok(Answer::Done), "stop", move |i| {
                let r = i.stop();
                drop(taps);
                r
            })
        }
        ToWorker::Suspend { seq, id } => {
            let gone = Err(format!("instance {id} is not running"));
            waiting(live, id, seq, out, gone, "suspend", |i| i.suspend())
        }
        ToWorker::Resume { seq, id } => {
            let r = match live.get(&id) {
                Some(l) => l.instance.resume().map(|()| Answer::Done),
                None => Ok(Answer::Done),
            };
            out.reply(seq, r.map_err(|e| e.to_string()));
        }
        ToWorker::CpuStat { seq, id } => {
            let stat = live.get(&id).and_then(|l| l.instance.cpu_stat());
            out.reply(seq, Ok(Answer::CpuStat(stat)));
        }
        ToWorker::StopAll => {
            // The guests end now, in parallel; their taps stay open (`Live::taps`) until the
            // daemon, having deleted them, stops each guest or closes the socket. A tap deleted
            // while open is detached with one RCU grace period; one closed first costs another
            // at its close.
            for l in live.values() {
                l.instance.request_stop();
            }
        }
        ToWorker::Release { id } => {
            if let Some(Live {
                instance,
                slot,
                taps,
            }) = live.remove(&id)
            {
                instance.request_stop();
                let free = free.clone();
                // The slot is free once the vCPU thread has ended (it counts until then); the
                // taps need not wait for its memory to be unmapped.
                let joined = std::thread::Builder::new()
                    .name("worker-join".into())
                    .stack_size(64 << 10)
                    .spawn(move || {
                        drop(taps);
                        instance.join();
                        free.lock().unwrap_or_else(|p| p.into_inner()).push(slot);
                    });
                if joined.is_err() {
                    tracing::warn!("no thread to wait for a released instance; slot kept");
                }
            }
        }
    }
}

/// Runs a request that waits for the guest (stop, suspend) on a thread of its own, so that the
/// request loop keeps serving the other instances meanwhile.
fn waiting(
    live: &HashMap<u64, Live>,
    id: u64,
    seq: u64,
    out: &Outbox,
    if_gone: Result<Answer, String>,
    what: &'static str,
    f: impl FnOnce(&KvmInstance) -> Result<(), crate::BackendError> + Send + 'static,
) {
    let Some(l) = live.get(&id) else {
        out.reply(seq, if_gone);
        return;
    };
    let inst = l.instance.clone();
    let reply = out.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("worker-{what}"))
        .stack_size(64 << 10)
        .spawn(move || {
            let r = f(&inst).map(|()| Answer::Done).map_err(|e| e.to_string());
            reply.reply(seq, r);
        });
    if let Err(e) = spawned {
        out.reply(seq, Err(format!("no thread to {what} the instance: {e}")));
    }
}

fn start(
    backend: &KvmBackend,
    region: &Arc<CounterRegion>,
    free: &FreeSlots,
    out: &Outbox,
    id: u64,
    spec: StartSpec,
    fds: Vec<OwnedFd>,
) -> Result<Live, String> {
    let (spec, image) = spec.into_spec(fds)?;
    // Second descriptors of the taps (see `Live::taps`): one fd each in this process's table,
    // at most two per guest. The image's is closed once it is read (or found in the cache).
    let taps = spec
        .nets
        .iter()
        .filter_map(|n| match &n.tap {
            TapSource::Fd(fd) => Some(fd.try_clone()),
            TapSource::Name(_) => None,
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("duplicating a tap descriptor: {e}"))?;
    let slot = free
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop()
        .ok_or_else(|| "every counter slot of this worker is in use".to_string())?;
    let give_back = |slot| free.lock().unwrap_or_else(|p| p.into_inner()).push(slot);
    let Some(counters) = Counters::in_region(region, slot) else {
        give_back(slot);
        return Err(format!("counter slot {slot} out of range"));
    };
    let sink_out = out.clone();
    let sink: EventSink = Arc::new(move |event| sink_out.send(FromWorker::Event { id, event }));
    match backend.start_counted(spec, Some(image), sink, counters) {
        Ok(instance) => Ok(Live {
            instance: Arc::new(instance),
            slot,
            taps,
        }),
        Err(e) => {
            give_back(slot);
            Err(e.to_string())
        }
    }
}
