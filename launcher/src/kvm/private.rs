//! vCPU threads run in a private fd table, and the only ways across its border.
//!
//! RLIMIT_NOFILE bounds fd numbers per fd table, not per process. Each vCPU thread therefore
//! unshares its table ([`PrivateTable::enter`], `close_range(3, ~0, CLOSE_RANGE_UNSHARE)`: a new
//! table with only fds 0–2 copied) before it opens anything, and opens `/dev/kvm`, its VM and its
//! vCPU there; the taps and block files the start path opened in the process's shared table are
//! copied in with `pidfd_getfd` ([`PrivateTable::import`]). The process's shared table then holds
//! no fd per live instance (a start uses one or two transiently), and 10,000 guests fit under a
//! hard limit of a few thousand.
//!
//! The price: on a vCPU thread an fd number of the shared table names a different file (or
//! none). Anything that acts on a shared fd by number — a tokio waker (mio's eventfd), a log file,
//! closing an fd the start path opened — would act on the wrong file. So what crosses the border
//! is typed:
//! - events leave only through an [`Outbox`], which hands them to one relay thread in the shared
//!   table (a std channel: a futex, no fd) that calls the caller's [`EventSink`] there;
//! - anything that owns shared-table fds (the start path's devices, the caller's sink with
//!   whatever it captured) travels as [`InShared`], which the vCPU thread can only import or send
//!   back: dropping it hands it to the relay, which drops it in the shared table.
//!
//! Log lines from a vCPU thread are safe only because the daemon's log writer is a queue (std
//! channel) drained by its own thread; nothing else on a vCPU thread uses an fd it did not open.

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{channel, Sender};
use std::sync::OnceLock;

use crate::backend::{EventSink, InstanceEvent};

use super::error::KvmError;

/// What the relay thread does for a vCPU thread.
enum Relayed {
    /// Call the sink with the event (in the shared table, where its wakers are valid).
    Event(EventSink, InstanceEvent),
    /// Drop this here: it owns fds (or wakers) of the shared table.
    Drop(Box<dyn Send>),
}

/// The relay's queue; the thread is started by [`start_relay`] from a thread of the shared table.
static RELAY: OnceLock<Sender<Relayed>> = OnceLock::new();

/// Starts the relay thread once per process. Must be called on a thread in the shared fd table
/// (the backend's constructor), so that the relay runs there.
pub(super) fn start_relay() -> Result<(), KvmError> {
    if RELAY.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = channel::<Relayed>();
    let spawned = std::thread::Builder::new()
        .name("kvm-relay".into())
        .stack_size(256 << 10)
        .spawn(move || {
            // Runs for the life of the process: the static sender never goes away.
            for r in rx {
                match r {
                    Relayed::Event(sink, ev) => {
                        // A panicking sink must not take every other guest's events with it.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink(ev)));
                    }
                    Relayed::Drop(b) => drop(b),
                }
            }
        })
        .map_err(KvmError::Thread)?;
    drop(spawned);
    // A concurrent first call may have won; its thread serves, ours ends when `tx` drops.
    let _ = RELAY.set(tx);
    Ok(())
}

fn relay(r: Relayed) {
    match RELAY.get() {
        Some(tx) => {
            if let Err(back) = tx.send(r) {
                // The relay never ends while the process lives; leak rather than drop here.
                std::mem::forget(back);
            }
        }
        // Unreachable: every backend starts the relay before any vCPU thread exists. Leaking is
        // the only safe answer on the wrong table.
        None => std::mem::forget(r),
    }
}

/// Something that owns fds (or wakers) of the process's shared table, on a vCPU thread. The
/// thread cannot use or drop it: [`PrivateTable::import_with`] takes the fds out by copy, and
/// dropping it sends it to the relay.
pub(super) struct InShared<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> InShared<T> {
    /// Wraps `value`, made on a thread of the shared table, for the trip to a vCPU thread.
    pub(super) fn new(value: T) -> Self {
        InShared(Some(value))
    }
}

impl<T: Send + 'static> Drop for InShared<T> {
    fn drop(&mut self) {
        if let Some(v) = self.0.take() {
            relay(Relayed::Drop(Box::new(v)));
        }
    }
}

/// The caller's event sink as a vCPU thread sees it: events go through the relay.
pub(super) struct Outbox {
    sink: InShared<EventSink>,
}

impl Outbox {
    pub(super) fn new(sink: EventSink) -> Self {
        Outbox {
            sink: InShared::new(sink),
        }
    }

    /// Queues `ev` for the sink; never blocks, never calls the sink here.
    pub(super) fn send(&self, ev: InstanceEvent) {
        if let Some(s) = &self.sink.0 {
            relay(Relayed::Event(s.clone(), ev));
        }
    }
}

/// Marks the calling thread as one that runs in its own fd table; made only by
/// [`PrivateTable::enter`], never sent to another thread.
pub(super) struct PrivateTable {
    /// The process's id, read at [`PrivateTable::enter`] (before the thread's syscall filter,
    /// which refuses getpid).
    pid: libc::pid_t,
    /// The process's pidfd in this table, for `pidfd_getfd`; opened on the first import.
    pidfd: Option<OwnedFd>,
    _not_send: PhantomData<*const ()>,
}

/// Blocks every signal on the calling thread but the kick and the synchronous ones a fault of
/// its own raises (which cannot be blocked anyway). A process-directed signal (SIGTERM,
/// SIGHUP, SIGINT, SIGCHLD, ...) goes to some thread that does not block it, and its handler
/// runs there: tokio's signal handler writes to its wake-up pipe *by fd number*, which in a
/// private table names another file (a tap, a VM) or none, so the daemon would never see its
/// SIGTERM. Blocked here, such signals go to the shared-table threads.
fn block_process_signals() {
    // SAFETY: sigset manipulation on a local set, then pthread_sigmask on the calling thread;
    // every argument is a valid set or null.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for sig in [
            super::instance::kick_signal(),
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGILL,
            libc::SIGFPE,
            libc::SIGSYS,
            libc::SIGABRT,
        ] {
            libc::sigdelset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

impl PrivateTable {
    /// Gives the calling thread a table of its own holding only fds 0–2 (the process's stdio).
    /// Call before the thread opens anything, on a thread that holds no fd of its own.
    pub(super) fn enter() -> Result<PrivateTable, KvmError> {
        block_process_signals();
        // SAFETY: close_range with CLOSE_RANGE_UNSHARE first gives this thread a copy of the
        // table, then closes 3.. in that copy; the shared table and other threads are untouched.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_UNSHARE,
            )
        };
        if rc != 0 {
            return Err(KvmError::last_os("close_range(CLOSE_RANGE_UNSHARE)"));
        }
        Ok(PrivateTable {
            // SAFETY: getpid has no preconditions and cannot fail.
            pid: unsafe { libc::getpid() },
            pidfd: None,
            _not_send: PhantomData,
        })
    }

    /// A copy in this table of `fd`, a number in the process's shared table.
    fn copy_in(&mut self, fd: RawFd) -> io::Result<OwnedFd> {
        let pidfd = match &self.pidfd {
            Some(p) => p.as_raw_fd(),
            None => {
                // SAFETY: pidfd_open(2) of our own process (the thread-group leader, whose table
                // is the shared one) returns a new fd or -1.
                let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid, 0) };
                if raw < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: `raw` was just opened in this table and is owned by nobody else.
                let p = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
                let r = p.as_raw_fd();
                self.pidfd = Some(p);
                r
            }
        };
        // SAFETY: pidfd_getfd(2) copies fd `fd` of the leader's (shared) table into ours and
        // returns the new number (close-on-exec), or -1; it reads no memory of ours.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is new in this table and owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(raw as RawFd) })
    }

    /// Takes `value` out of the shared table: `fds` lists the shared fds it holds, `rebuild`
    /// gets the same value back with each replaced by its copy here, and returns the
    /// shared-table originals (sent to the relay to be closed). On any failure the value goes to
    /// the relay whole and the copies made so far are closed here.
    pub(super) fn import_with<T: Send + 'static, O: Send + 'static>(
        &mut self,
        mut value: InShared<T>,
        fds: impl Fn(&T) -> Vec<RawFd>,
        rebuild: impl FnOnce(T, Vec<OwnedFd>) -> (T, O),
    ) -> io::Result<T> {
        let Some(inner) = value.0.as_ref() else {
            return Err(io::Error::other("already imported"));
        };
        let mut copies = Vec::new();
        for fd in fds(inner) {
            copies.push(self.copy_in(fd)?);
        }
        let inner = value.0.take().expect("checked above");
        let (ours, originals) = rebuild(inner, copies);
        drop(InShared::new(originals));
        // The pidfd is not needed once the guest runs.
        self.pidfd = None;
        Ok(ours)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek};

    /// Whether `sig` is blocked on the calling thread.
    fn blocked(sig: libc::c_int) -> bool {
        // SAFETY: reads the calling thread's mask into a local set.
        unsafe {
            let mut cur: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut cur);
            libc::sigismember(&cur, sig) == 1
        }
    }

    #[test]
    fn a_private_table_thread_takes_no_process_directed_signal_but_the_kick() {
        let got = std::thread::spawn(|| {
            let _table = PrivateTable::enter().unwrap();
            [
                libc::SIGTERM,
                libc::SIGINT,
                libc::SIGHUP,
                libc::SIGCHLD,
                libc::SIGPIPE,
                super::super::instance::kick_signal(),
                libc::SIGSEGV,
                libc::SIGSYS,
            ]
            .map(blocked)
        })
        .join()
        .unwrap();
        assert_eq!(
            got,
            [true, true, true, true, true, false, false, false],
            "blocked: SIGTERM, SIGINT, SIGHUP, SIGCHLD, SIGPIPE, kick, SIGSEGV, SIGSYS"
        );
    }

    #[test]
    fn a_private_table_holds_none_of_the_shared_fds_and_imports_by_copy() {
        start_relay().unwrap();
        let shared = std::fs::File::open("/proc/self/stat").unwrap();
        let raw = shared.as_raw_fd();
        let got = std::thread::spawn(move || {
            let mut table = PrivateTable::enter().unwrap();
            // SAFETY: fcntl(F_GETFD) only asks whether `raw` is open in this thread's table.
            let missing = unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0;
            let file = table.import_with(
                InShared::new(shared),
                |f| vec![f.as_raw_fd()],
                |f, mut fds| (std::fs::File::from(fds.remove(0)), f),
            );
            let mut text = String::new();
            let read = file.map(|mut f| {
                f.rewind().unwrap();
                f.read_to_string(&mut text).unwrap()
            });
            (missing, read.map_err(|e| e.to_string()), text)
        })
        .join()
        .unwrap();
        assert!(
            got.0,
            "fd {raw} of the shared table is open in the private one"
        );
        assert!(got.1.unwrap() > 0, "{}", got.2);
    }
}
