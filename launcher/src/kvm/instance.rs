//! One running guest as the caller sees it: the control state machine shared between the
//! controller (any thread calling `stop`/`suspend`/`resume`) and the vCPU thread.
//!
//! The controller never touches the vCPU itself. It records what it wants in `desired`, then
//! kicks: it sets `immediate_exit` in the vCPU's `kvm_run` and signals the vCPU thread, so a
//! guest inside KVM_RUN (even in an endless loop) comes out with EINTR, and so does a guest
//! sleeping in POLL (or in an exit-storm wait): those sleep in `ppoll` with the kick signal
//! blocked until the call itself unblocks it (see [`Control::sleep`]), so a kick that lands
//! between the check of `desired` and the sleep is not lost. The vCPU thread acts on `desired`
//! between exits. This is Firecracker's scheme; setting `immediate_exit` before the signal closes
//! the race with a thread that is just about to enter KVM_RUN. No fd is involved: the vCPU thread
//! lives in an fd table of its own (`private.rs`), where the controller's fds do not exist.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::backend::{BackendError, Counters, Instance, InstanceState};

use super::error::KvmError;

const RUN: u8 = 0;
const PAUSE: u8 = 1;
const STOP: u8 = 2;

/// How long `stop` and `suspend` wait for the vCPU thread to acknowledge. Only a host syscall
/// stuck on the vCPU thread (e.g. a hung disk) can take longer; the request stays in force.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// The signal that kicks a vCPU thread out of KVM_RUN.
pub(super) fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

extern "C" fn on_kick(_: libc::c_int) {}

/// Installs the (empty) kick handler once per process, without SA_RESTART so that blocking
/// calls on the vCPU thread return EINTR.
pub(super) fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction with an empty `extern "C"` handler and an empty mask is a
        // valid argument; the handler does nothing, so it is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_kick as *const () as usize;
            sa.sa_flags = 0;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(kick_signal(), &sa, std::ptr::null_mut());
        }
    });
}

/// What ended the guest (from the vCPU thread's view).
pub(super) enum End {
    Halt(i32),
    Fault(String),
    Stop,
}

struct Inner {
    state: InstanceState,
    /// `kvm_run.immediate_exit` of the vCPU; null once the vCPU is gone.
    immediate_exit: *const AtomicU8,
    thread: Option<libc::pthread_t>,
}

// SAFETY: the raw pointer is only dereferenced under the mutex while the vCPU thread keeps the
// kvm_run mapping alive (it nulls the pointer under the same mutex before unmapping).
unsafe impl Send for Inner {}

/// Shared between an instance's controller and its vCPU thread.
pub(super) struct Control {
    desired: AtomicU8,
    inner: Mutex<Inner>,
    cond: Condvar,
}

impl Control {
    /// A control block for a vCPU thread that has not attached yet ([`Control::attach`]).
    pub(super) fn new() -> Self {
        Control {
            desired: AtomicU8::new(RUN),
            inner: Mutex::new(Inner {
                state: InstanceState::Running,
                immediate_exit: std::ptr::null(),
                thread: None,
            }),
            cond: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The vCPU's `kvm_run.immediate_exit` (null once the guest has ended).
    pub(super) fn immediate_exit_ptr(&self) -> *const AtomicU8 {
        self.lock().immediate_exit
    }

    /// vCPU thread, once its vCPU exists: records the thread and its vCPU's `immediate_exit`
    /// for kicks. Only through [`FinishOnDrop::attach`], so that `finish` clears both again on
    /// every way out of the thread. A request made before this is seen by the thread's first
    /// check of `desired`.
    fn attach(&self, immediate_exit: *const AtomicU8) {
        let mut inner = self.lock();
        inner.immediate_exit = immediate_exit;
        // SAFETY: pthread_self has no preconditions.
        inner.thread = Some(unsafe { libc::pthread_self() });
    }

    /// Cheap check for the vCPU thread after every exit.
    pub(super) fn requested(&self) -> bool {
        self.desired.load(Ordering::SeqCst) != RUN
    }

    /// vCPU thread: sleeps in `ppoll` on `fds` until one is ready, `timeout` passes (`None`:
    /// no timeout) or a kick comes. Race-free against kicks: the kick signal is blocked while
    /// `desired` is checked and unblocked only by `ppoll` itself, so a kick that comes after the
    /// check interrupts the call at once. `Err(end)` when a request ends the guest; otherwise
    /// what `ppoll` returned (`Ok(0)` also after a kick that did not end it, e.g. a resume).
    pub(super) fn sleep(
        &self,
        fds: &mut [libc::pollfd],
        timeout: Option<&libc::timespec>,
    ) -> Result<std::io::Result<usize>, End> {
        // SAFETY: sigset manipulation on local sets, then pthread_sigmask on this thread.
        let old = unsafe {
            let mut block: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut block);
            libc::sigaddset(&mut block, kick_signal());
            libc::pthread_sigmask(libc::SIG_BLOCK, &block, &mut old);
            old
        };
        let restore = || {
            // SAFETY: puts back the mask read above, on this thread.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        };
        if self.requested() {
            restore();
            return match self.handle_request() {
                Some(end) => Err(end),
                None => Ok(Ok(0)),
            };
        }
        let mut during = old;
        // SAFETY: removes the kick signal from a local copy of the mask.
        unsafe { libc::sigdelset(&mut during, kick_signal()) };
        let tp = timeout.map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `fds` is a valid slice of pollfds for the call, `tp` is null or points to a
        // timespec that outlives it, `during` is a valid sigset.
        let n = unsafe { libc::ppoll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, tp, &during) };
        let result = if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        };
        restore();
        match result {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {
                if self.requested() {
                    if let Some(end) = self.handle_request() {
                        return Err(end);
                    }
                }
                Ok(Ok(0))
            }
            r => Ok(r),
        }
    }

    /// vCPU thread: acts on a pending request. Blocks while paused; `Some(End::Stop)` when the
    /// guest must end.
    pub(super) fn handle_request(&self) -> Option<End> {
        let mut inner = self.lock();
        loop {
            match self.desired.load(Ordering::SeqCst) {
                STOP => return Some(End::Stop),
                PAUSE => {
                    if inner.state != InstanceState::Paused {
                        inner.state = InstanceState::Paused;
                        self.cond.notify_all();
                    }
                    inner = self.cond.wait(inner).unwrap_or_else(|p| p.into_inner());
                }
                _ => {
                    if inner.state == InstanceState::Paused {
                        inner.state = InstanceState::Running;
                        self.cond.notify_all();
                    }
                    return None;
                }
            }
        }
    }

    /// vCPU thread: the guest is over and the vCPU is about to be dropped. Only called through
    /// [`FinishOnDrop`], so that it runs on every way out of the thread. Cannot panic: the lock
    /// ignores poisoning, the rest are stores and a notify.
    fn finish(&self) {
        let mut inner = self.lock();
        inner.state = InstanceState::Stopped;
        inner.immediate_exit = std::ptr::null();
        inner.thread = None;
        self.cond.notify_all();
    }

    fn kick(&self, inner: &Inner) {
        if !inner.immediate_exit.is_null() {
            // SAFETY: non-null means the vCPU thread still has kvm_run mapped: the thread nulls
            // it under this lock in `finish`, which `FinishOnDrop` runs before the vCPU fd (and
            // so kvm_run) is dropped, on every path out of the thread, unwinding included.
            // immediate_exit is a byte the kernel reads on KVM_RUN entry.
            unsafe { (*inner.immediate_exit).store(1, Ordering::SeqCst) };
            if let Some(t) = inner.thread {
                // SAFETY: `finish` clears `thread` under this lock before the thread can end, so
                // a `Some` names a live thread; the signal's handler is empty.
                unsafe { libc::pthread_kill(t, kick_signal()) };
            }
        }
    }

    fn wait_while<'a>(
        &'a self,
        mut inner: MutexGuard<'a, Inner>,
        cond: impl Fn(&Inner) -> bool,
    ) -> MutexGuard<'a, Inner> {
        let deadline = std::time::Instant::now() + ACK_TIMEOUT;
        while cond(&inner) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            inner = self
                .cond
                .wait_timeout(inner, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        inner
    }

    fn request_stop(&self) -> MutexGuard<'_, Inner> {
        let inner = self.lock();
        if inner.state != InstanceState::Stopped {
            self.desired.store(STOP, Ordering::SeqCst);
            self.kick(&inner);
            self.cond.notify_all();
        }
        inner
    }

    pub(super) fn stop(&self) {
        let inner = self.request_stop();
        drop(self.wait_while(inner, |i| i.state != InstanceState::Stopped));
    }

    pub(super) fn suspend(&self, name: &str) -> Result<(), BackendError> {
        let inner = self.lock();
        if inner.state == InstanceState::Stopped || self.desired.load(Ordering::SeqCst) == STOP {
            return Err(BackendError::InvalidState(name.to_string(), "suspend"));
        }
        self.desired.store(PAUSE, Ordering::SeqCst);
        self.kick(&inner);
        let inner = self.wait_while(inner, |i| {
            i.state == InstanceState::Running && self.desired.load(Ordering::SeqCst) == PAUSE
        });
        match inner.state {
            InstanceState::Paused => Ok(()),
            InstanceState::Stopped => Err(BackendError::InvalidState(name.to_string(), "suspend")),
            InstanceState::Running => {
                // Withdraw the request, or the guest would pause later while the caller
                // believes it runs. A resume or stop that came meanwhile stays as it is.
                let _ =
                    self.desired
                        .compare_exchange(PAUSE, RUN, Ordering::SeqCst, Ordering::SeqCst);
                self.cond.notify_all();
                Err(KvmError::Unacknowledged {
                    name: name.to_string(),
                    request: "suspend",
                    waited: ACK_TIMEOUT,
                }
                .into())
            }
        }
    }

    pub(super) fn resume(&self, name: &str) -> Result<(), BackendError> {
        let inner = self.lock();
        if inner.state == InstanceState::Stopped || self.desired.load(Ordering::SeqCst) == STOP {
            return Err(BackendError::InvalidState(name.to_string(), "resume"));
        }
        self.desired.store(RUN, Ordering::SeqCst);
        self.cond.notify_all();
        Ok(())
    }

    pub(super) fn state(&self) -> InstanceState {
        self.lock().state
    }
}

/// Held by the vCPU thread from before anything on it can panic: marks the guest finished (and
/// `immediate_exit` null) when dropped, whichever way the thread ends. It must be dropped before
/// the vCPU fd, whose kvm_run mapping `immediate_exit` points into.
pub(super) struct FinishOnDrop(pub Arc<Control>);

impl FinishOnDrop {
    /// Records this thread and its vCPU's `immediate_exit` (see [`Control::attach`]). The guard
    /// must be dropped before the vCPU fd.
    pub(super) fn attach(&self, immediate_exit: *const AtomicU8) {
        self.0.attach(immediate_exit);
    }

    /// Marks the guest finished now (the drop does it again, harmlessly).
    pub(super) fn now(&self) {
        self.0.finish();
    }
}

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// A guest started by [`super::KvmBackend`]. Dropping the handle stops the guest.
pub struct KvmInstance {
    pub(super) name: String,
    /// Host address and size of guest memory, for [`KvmInstance::guest_resident_bytes`].
    pub(super) mem: (u64, u64),
    pub(super) control: Arc<Control>,
    pub(super) thread: Mutex<Option<JoinHandle<()>>>,
    /// The CPU quota group, for its statistics.
    pub(super) cpu_group: Option<Arc<super::cgroup::Group>>,
    pub(super) counters: Counters,
}

impl KvmInstance {
    /// Waits until the vCPU thread has ended and released the VM and its memory.
    pub fn join(&self) {
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the guest runs under a CPU quota group (what [`Instance::cpu_stat`] reads).
    pub fn has_cpu_quota(&self) -> bool {
        self.cpu_group.is_some()
    }

    /// Bytes of guest memory resident on the host (pages the guest or the loader touched);
    /// 0 once the guest's memory is gone.
    pub fn guest_resident_bytes(&self) -> u64 {
        if self.control.state() == InstanceState::Stopped {
            return 0;
        }
        let (base, size) = self.mem;
        let pages = size.div_ceil(4096) as usize;
        let mut vec = vec![0u8; pages];
        // SAFETY: mincore only reads page-table state of the range and writes one byte per page
        // into `vec`, which has room for all of them. Should the vCPU thread have unmapped the
        // range meanwhile, it fails with ENOMEM (or, if the addresses were mapped again, counts
        // another mapping's pages): a wrong figure at worst, never an access to that memory.
        let rc =
            unsafe { libc::mincore(base as *mut libc::c_void, size as usize, vec.as_mut_ptr()) };
        if rc != 0 {
            return 0;
        }
        vec.iter().filter(|&&b| b & 1 != 0).count() as u64 * 4096
    }
}

impl std::fmt::Debug for KvmInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmInstance")
            .field("name", &self.name)
            .field("state", &self.control.state())
            .finish()
    }
}

impl Instance for KvmInstance {
    fn stop(&self) -> Result<(), BackendError> {
        self.control.stop();
        Ok(())
    }

    fn request_stop(&self) {
        drop(self.control.request_stop());
    }

    fn suspend(&self) -> Result<(), BackendError> {
        self.control.suspend(&self.name)
    }

    fn resume(&self) -> Result<(), BackendError> {
        self.control.resume(&self.name)
    }

    fn state(&self) -> InstanceState {
        self.control.state()
    }

    fn cpu_stat(&self) -> Option<crate::backend::CpuStat> {
        self.cpu_group.as_ref()?.stat()
    }

    fn counters(&self) -> Option<Counters> {
        Some(self.counters.clone())
    }
}

impl Drop for KvmInstance {
    fn drop(&mut self) {
        // Without a handle nobody could stop the guest any more. The vCPU thread finishes and
        // tears down on its own; we do not wait for it here.
        drop(self.control.request_stop());
    }
}
