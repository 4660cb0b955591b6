//! Logging that never blocks and never panics.
//!
//! Every log line (tracing events, the panic hook) goes into one bounded queue that a single
//! writer thread drains into stderr. A caller never waits for the sink: when the queue is full
//! the line is dropped and counted (`summon_log_dropped_total`), and once the sink keeps up
//! again the writer says how many lines were lost. A sink that fails (EPIPE when the reader has
//! exited, ENOSPC, EAGAIN on a non-blocking fd) costs the failed line and nothing else: the
//! writer never panics and never stops. This matters because the callers include tokio
//! workers answering DNS and the registry's event task fed by guests' consoles: a stalled
//! journald or a pipe nobody reads must not stall them.

use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Bytes of log the queue holds before new lines are dropped: several thousand typical lines,
/// enough to ride out a sink's short stall without letting a long one eat memory.
pub const QUEUE_BYTES: usize = 1024 * 1024;
/// The longest line kept whole; longer ones are cut (a guest controls its console's lines).
const MAX_LINE: usize = 4 * 1024;
/// How long a write that would block (a non-blocking stderr) is retried before the line goes.
const WOULD_BLOCK_PATIENCE: Duration = Duration::from_millis(50);
/// At exit, how long the daemon waits for queued lines to reach the sink.
pub const EXIT_FLUSH: Duration = Duration::from_millis(500);
/// How long a panicking thread waits for its message to be written before unwinding on.
const PANIC_FLUSH: Duration = Duration::from_millis(200);

/// The queue's shared state: counters the senders, the writer and the metrics read.
struct Shared {
    /// Lines dropped, queue full or sink failing; exported as `summon_log_dropped_total`.
    dropped: IntCounter,
    /// Lines put into the queue and lines the writer has finished with (written or failed).
    queued: AtomicU64,
    done: AtomicU64,
    /// Bytes in the queue now, and the most it may hold.
    bytes: AtomicUsize,
    budget: usize,
}

/// The sending side: cheap to clone, never blocks.
#[derive(Clone)]
pub struct LogQueue {
    tx: Sender<Vec<u8>>,
    shared: Arc<Shared>,
}

impl LogQueue {
    /// Starts the writer thread over `sink` with room for `budget` bytes; drops are counted
    /// in `dropped`.
    pub fn start(
        sink: impl Write + Send + 'static,
        budget: usize,
        dropped: IntCounter,
    ) -> io::Result<LogQueue> {
        // Unbounded as a channel, bounded in bytes by `push`.
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            dropped,
            queued: AtomicU64::new(0),
            done: AtomicU64::new(0),
            bytes: AtomicUsize::new(0),
            budget,
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("summond-log".into())
            .spawn(move || writer_loop(rx, sink, &s))?;
        Ok(LogQueue { tx, shared })
    }

    /// Queues one line (or several) without waiting; drops and counts it when the queue is full.
    pub fn push(&self, mut line: Vec<u8>) {
        if line.len() > MAX_LINE {
            line.truncate(MAX_LINE);
            line.extend_from_slice(b" [cut]\n");
        }
        let len = line.len();
        let s = &self.shared;
        if s.bytes.fetch_add(len, Ordering::AcqRel) + len > s.budget {
            s.bytes.fetch_sub(len, Ordering::AcqRel);
            s.dropped.inc();
            return;
        }
        s.queued.fetch_add(1, Ordering::AcqRel);
        if self.tx.send(line).is_err() {
            // The writer thread is gone (it never returns while a sender lives; belt and braces).
            s.bytes.fetch_sub(len, Ordering::AcqRel);
            s.done.fetch_add(1, Ordering::AcqRel);
            s.dropped.inc();
        }
    }

    /// Lines dropped so far.
    pub fn dropped(&self) -> &IntCounter {
        &self.shared.dropped
    }

    /// Waits, at most `bound`, until every line queued before the call is written (or failed).
    /// Returns whether it got there.
    pub fn flush(&self, bound: Duration) -> bool {
        let target = self.shared.queued.load(Ordering::Acquire);
        let deadline = Instant::now() + bound;
        while self.shared.done.load(Ordering::Acquire) < target {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }
}

fn writer_loop(rx: Receiver<Vec<u8>>, mut sink: impl Write, shared: &Shared) {
    let mut reported = 0u64;
    loop {
        // Report losses when the queue has drained, so the report follows the lines it
        // concerns instead of interleaving with a flood.
        let line = match rx.try_recv() {
            Ok(line) => line,
            Err(mpsc::TryRecvError::Disconnected) => return,
            Err(mpsc::TryRecvError::Empty) => {
                let dropped = shared.dropped.get();
                if dropped > reported {
                    let msg = format!(
                        "summond: {} log lines dropped (log sink slow or failing)\n",
                        dropped - reported
                    );
                    reported = dropped;
                    // A report that itself fails is not counted: it would report itself forever.
                    let _ = write_line(&mut sink, msg.as_bytes());
                }
                match rx.recv() {
                    Ok(line) => line,
                    Err(_) => return,
                }
            }
        };
        if write_line(&mut sink, &line).is_err() {
            shared.dropped.inc();
        }
        shared.bytes.fetch_sub(line.len(), Ordering::AcqRel);
        shared.done.fetch_add(1, Ordering::AcqRel);
    }
}

/// Writes a whole line; every error ends the attempt (EINTR is retried by `write_all`).
fn write_line(sink: &mut impl Write, mut line: &[u8]) -> io::Result<()> {
    let mut waited = Duration::ZERO;
    while !line.is_empty() {
        match sink.write(line) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => line = &line[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && waited < WOULD_BLOCK_PATIENCE => {
                std::thread::sleep(Duration::from_millis(5));
                waited += Duration::from_millis(5);
            }
            Err(e) => return Err(e),
        }
    }
    sink.flush()
}

/// One event's bytes, sent to the queue when the fmt layer is done with it.
pub struct LineWriter {
    queue: LogQueue,
    buf: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.queue.push(std::mem::take(&mut self.buf));
        }
    }
}

impl<'a> MakeWriter<'a> for LogQueue {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            queue: self.clone(),
            buf: Vec::with_capacity(256),
        }
    }
}

static QUEUE: OnceLock<LogQueue> = OnceLock::new();

/// The process's count of dropped log lines, exported by [`crate::metrics::Metrics`].
pub fn dropped_counter() -> &'static IntCounter {
    static DROPPED: OnceLock<IntCounter> = OnceLock::new();
    DROPPED.get_or_init(|| {
        IntCounter::new(
            "summon_log_dropped_total",
            "Log lines dropped because the log sink was slow or failing",
        )
        .expect("valid metric")
    })
}

/// The process's log queue once [`init`] ran (metrics export its drop counter).
pub fn queue() -> Option<&'static LogQueue> {
    QUEUE.get()
}

/// Installs the tracing subscriber (filter from `SUMMOND_LOG`) over a queue to stderr, and a
/// panic hook that goes through the same queue. Call once, before anything logs.
pub fn init() -> io::Result<&'static LogQueue> {
    init_with(io::stderr())
}

/// [`init`] with another sink (tests).
pub fn init_with(sink: impl Write + Send + 'static) -> io::Result<&'static LogQueue> {
    let q = LogQueue::start(sink, QUEUE_BYTES, dropped_counter().clone())?;
    let q = QUEUE.get_or_init(|| q);
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("SUMMOND_LOG").unwrap_or_else(|_| {
            EnvFilter::new("info,hickory_server=warn,netlink_packet_route=error")
        }))
        .with_ansi(io::stderr().is_terminal())
        // Our writer never fails; should it, the fallback would be `eprintln!`, which panics
        // on a broken stderr.
        .log_internal_errors(false)
        .with_writer(q.clone())
        .init();
    std::panic::set_hook(Box::new(panic_hook));
    Ok(q)
}

/// Replaces the default hook, which writes to stderr synchronously: a panic while the sink
/// is stalled would block the panicking thread forever, and a second failure there aborts.
fn panic_hook(info: &std::panic::PanicHookInfo<'_>) {
    static IN_HOOK: AtomicBool = AtomicBool::new(false);
    let Some(q) = QUEUE.get() else { return };
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("<unnamed>");
    let mut msg = format!("summond: thread '{name}' {info}\n");
    // Only the first concurrent panic pays for a backtrace; it is the one worth reading.
    if !IN_HOOK.swap(true, Ordering::AcqRel) {
        let bt = std::backtrace::Backtrace::capture();
        if bt.status() == std::backtrace::BacktraceStatus::Captured {
            msg.push_str(&format!("stack backtrace:\n{bt}\n"));
        }
        IN_HOOK.store(false, Ordering::Release);
    }
    q.push(msg.into_bytes());
    q.flush(PANIC_FLUSH);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A sink that blocks until released, then records what it got.
    struct Gate {
        open: Arc<(Mutex<bool>, std::sync::Condvar)>,
        out: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let (m, cv) = &*self.open;
            let mut open = m.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            self.out.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct Failing(io::ErrorKind, Arc<AtomicU64>);

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            self.1.fetch_add(1, Ordering::Relaxed);
            Err(self.0.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_sink_drops_and_reports_instead_of_blocking() {
        let open = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let out = Arc::new(Mutex::new(Vec::new()));
        let q = LogQueue::start(
            Gate {
                open: open.clone(),
                out: out.clone(),
            },
            32,
            counter(),
        )
        .unwrap();
        let t = Instant::now();
        for i in 0..100 {
            q.push(format!("line {i}\n").into_bytes());
        }
        // 100 pushes into a stalled sink return at once: nothing waits for the writer.
        assert!(t.elapsed() < Duration::from_secs(2));
        // At most the queue's 32 bytes plus the line in the writer's hands survive.
        assert!(q.dropped().get() >= 94, "dropped {}", q.dropped().get());
        *open.0.lock().unwrap() = true;
        open.1.notify_all();
        assert!(q.flush(Duration::from_secs(5)));
        let want = format!("{} log lines dropped", q.dropped().get());
        assert!(
            wait(|| String::from_utf8_lossy(&out.lock().unwrap()).contains(&want)),
            "{}",
            String::from_utf8_lossy(&out.lock().unwrap())
        );
        let text = String::from_utf8_lossy(&out.lock().unwrap()).into_owned();
        assert!(text.starts_with("line 0\n"), "{text}");
    }

    #[test]
    fn sink_errors_are_counted_and_never_stop_the_writer() {
        for kind in [
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::StorageFull,
            io::ErrorKind::WouldBlock,
        ] {
            let writes = Arc::new(AtomicU64::new(0));
            let q = LogQueue::start(Failing(kind, writes.clone()), 1024, counter()).unwrap();
            for i in 0..10 {
                q.push(format!("line {i}\n").into_bytes());
                assert!(q.flush(Duration::from_secs(5)), "{kind:?}");
            }
            assert_eq!(q.dropped().get(), 10, "{kind:?}");
            // Every line got its attempt: the writer is still alive after each failure.
            assert!(writes.load(Ordering::Relaxed) >= 10, "{kind:?}");
        }
    }

    #[test]
    fn overlong_lines_are_cut() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let open = Arc::new((Mutex::new(true), std::sync::Condvar::new()));
        let q = LogQueue::start(
            Gate {
                open,
                out: out.clone(),
            },
            MAX_LINE * 8,
            counter(),
        )
        .unwrap();
        q.push(vec![b'x'; MAX_LINE * 4]);
        assert!(q.flush(Duration::from_secs(5)));
        let n = out.lock().unwrap().len();
        assert!(n <= MAX_LINE + 16, "{n}");
    }

    fn counter() -> IntCounter {
        IntCounter::new("t", "t").unwrap()
    }

    fn wait(mut f: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
}
