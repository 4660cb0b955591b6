//! The seccomp filter of every vCPU thread, and how a violation becomes that guest's fault.
//!
//! A vCPU thread runs guest-controlled exits through the hypercall handlers, so it is where a
//! guest that found a bug in them would get code execution. Its filter allows only what the run
//! loop, the hypercalls, the event sink (which must not block: a channel send or a log line,
//! futex and write at most), the allocator and the thread's own end need.
//!
//! A disallowed syscall is not executed: the filter answers it with `SECCOMP_RET_TRAP`, and the
//! process-wide SIGSYS handler below records the syscall number in a thread-local and makes the
//! call return `EPERM`. The run loop checks that record after every exit and ends the guest with
//! `Faulted("seccomp: disallowed syscall N on the vCPU thread")`, then tears the VM down as on any
//! other fault. Killing the thread instead (`SECCOMP_RET_KILL_THREAD`, or `exit` from the
//! handler) would leave the VM, its memory and the control block behind with nobody to report
//! the fault; killing the process would let one guest take every other one down.
//!
//! Two stages, because attaching a filter costs the kernel about 20 us plus 1 us per BPF
//! instruction here (170 us for the whole list, measured on this host), too much for the start
//! path:
//! - [`confine_prepared_thread`]: the whole list, plus the few calls the instance's own setup on
//!   this thread needs (naming it, copying its devices into the thread's fd table, registering
//!   memory of a new size: [`SETUP`], [`SETUP_IOCTLS`]). Applied by the prepared thread right after its preparation, before it waits for
//!   a guest, so in the background for pooled vCPUs.
//! - [`end_setup`]: a second, small filter that refuses those setup calls again. Applied at the
//!   start of each guest, after its setup, before its first KVM_RUN. Stacked filters all apply,
//!   the strictest answer wins.
//!
//! A vCPU prepared on the start path itself (empty pool) gets its guest at once: there the
//! thread attaches the run loop's list alone, after its setup ([`confine_running_thread`]).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::{Once, OnceLock};

use kvm_bindings::{kvm_regs, kvm_sregs};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

use super::error::KvmError;

/// `_IOC(dir, 0xAE, nr, size)`: the KVM ioctl numbers as the kernel headers build them.
const fn kvm_ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (0xAE << 8) | nr
}
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
const KVM_RUN: u64 = kvm_ioc(0, 0x80, 0);
const KVM_GET_REGS: u64 = kvm_ioc(IOC_READ, 0x81, std::mem::size_of::<kvm_regs>());
const KVM_SET_REGS: u64 = kvm_ioc(IOC_WRITE, 0x82, std::mem::size_of::<kvm_regs>());
const KVM_GET_SREGS: u64 = kvm_ioc(IOC_READ, 0x83, std::mem::size_of::<kvm_sregs>());
const KVM_SET_USER_MEMORY_REGION: u64 = kvm_ioc(
    IOC_WRITE,
    0x46,
    std::mem::size_of::<kvm_bindings::kvm_userspace_memory_region>(),
);

/// What the thread's setup for one guest needs, between its preparation and the guest's first
/// KVM_RUN: naming the thread (`prctl(PR_SET_NAME)`), copying the guest's devices into the
/// thread's own fd table (`pidfd_open`, `pidfd_getfd`: see `private.rs`), and attaching the
/// second stage (`prctl(PR_SET_NO_NEW_PRIVS)`, `seccomp`). The second stage refuses all of these
/// again; `seccomp` in particular, whose TSYNC flag could filter every thread of the process.
/// (The CPU cgroup is entered by the mover thread, and the thread made its own table, VM and
/// vCPU before its first filter: no `open`, `mkdir` or `close_range` here.) Registering guest
/// memory of a new size (`KVM_SET_USER_MEMORY_REGION`) is in [`SETUP_IOCTLS`]. The second stage
/// sits on every start path, and its cost grows with its length.
const SETUP: &[libc::c_long] = &[
    libc::SYS_prctl,
    libc::SYS_seccomp,
    libc::SYS_pidfd_open,
    libc::SYS_pidfd_getfd,
];

/// The ioctls of the setup for one guest (see [`SETUP`]).
const SETUP_IOCTLS: &[u64] = &[KVM_SET_USER_MEMORY_REGION];

/// The vCPU ioctls the run loop and the fault reports use.
const RUN_IOCTLS: &[u64] = &[KVM_RUN, KVM_GET_REGS, KVM_SET_REGS, KVM_GET_SREGS];

/// The syscalls a vCPU thread may make while it runs a guest, by group, with why.
fn ioctl_rules(reqs: &[u64]) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    reqs.iter()
        .map(|&req| {
            SeccompRule::new(vec![SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                req,
            )?])
        })
        .collect()
}

fn rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut allow = |nrs: &[libc::c_long]| {
        for &nr in nrs {
            rules.insert(nr, Vec::new());
        }
    };
    // Guest devices: tap frames (read/write), block sectors (pread64/pwrite64); write and
    // writev also carry log lines written straight to stderr (fd 2 is the process's in every
    // table).
    allow(&[
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
    ]);
    // POLL and the throttled exit-storm wait: ppoll on the taps (or on nothing), with the kick
    // signal let in by the call's mask (no eventfd, no epoll).
    allow(&[libc::SYS_ppoll]);
    // Locks and condvars (the control block, the event relay's channel, the log queue),
    // and time: WALLTIME, POLL deadlines and rate limits read the clock (a vDSO call unless the
    // host clocksource forbids it).
    allow(&[
        libc::SYS_futex,
        libc::SYS_clock_gettime,
        libc::SYS_gettimeofday,
        libc::SYS_nanosleep,
        libc::SYS_clock_nanosleep,
        libc::SYS_sched_yield,
    ]);
    // The allocator (console lines, event strings, fault reasons) grows and trims its arenas.
    allow(&[
        libc::SYS_brk,
        libc::SYS_mmap,
        libc::SYS_mremap,
        libc::SYS_munmap,
        libc::SYS_mprotect,
        libc::SYS_madvise,
    ]);
    // Which guest pages are backed, read once per image for its working set (`working_set.rs`).
    allow(&[libc::SYS_mincore]);
    // Teardown on this thread: closing the vCPU, VM, tap and block fds, unmapping guest memory
    // (munmap above), lowering the thread's priority first, and the thread's own end (glibc frees
    // the alternate signal stack, advises the stack away and calls exit).
    allow(&[
        libc::SYS_close,
        libc::SYS_gettid,
        libc::SYS_setpriority,
        libc::SYS_sigaltstack,
        libc::SYS_exit,
    ]);
    // Signals: the kick handler and the SIGSYS handler return through rt_sigreturn; masks are
    // saved and restored around them, and the kick signal is blocked around POLL's check.
    allow(&[libc::SYS_rt_sigreturn, libc::SYS_rt_sigprocmask]);
    // KVM: only the vCPU ioctls the run loop and the fault reports use. Everything else (new
    // memory slots, new vCPUs, device ioctls on taps) stays with the start path.
    rules.insert(libc::SYS_ioctl, ioctl_rules(RUN_IOCTLS)?);
    // Rust's standard library checks with fcntl(F_GETFD) that an owned fd is still open before
    // closing it (debug builds); nothing else of fcntl is needed.
    rules.insert(
        libc::SYS_fcntl,
        vec![SeccompRule::new(vec![SeccompCondition::new(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::F_GETFD as u64,
        )?])?],
    );
    Ok(rules)
}

/// Compiles a filter that answers the syscalls of `rules` with `on_match`, all others with
/// `otherwise` (also the worker process's filter, `worker/sandbox.rs`).
pub(crate) fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    otherwise: SeccompAction,
    on_match: SeccompAction,
) -> Result<BpfProgram, String> {
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())?;
    let filter = SeccompFilter::new(rules, otherwise, on_match, arch).map_err(|e| e.to_string())?;
    BpfProgram::try_from(filter).map_err(|e| e.to_string())
}

/// Stage one, built once per process: the run loop's list plus [`SETUP`].
fn prepared_program() -> Result<&'static BpfProgram, KvmError> {
    static PROGRAM: OnceLock<Result<BpfProgram, String>> = OnceLock::new();
    PROGRAM
        .get_or_init(|| {
            let mut rules = rules().map_err(|e| e.to_string())?;
            for &nr in SETUP {
                rules.insert(nr, Vec::new());
            }
            let mut ioctls = RUN_IOCTLS.to_vec();
            ioctls.extend_from_slice(SETUP_IOCTLS);
            rules.insert(
                libc::SYS_ioctl,
                ioctl_rules(&ioctls).map_err(|e| e.to_string())?,
            );
            compile(rules, SeccompAction::Trap, SeccompAction::Allow)
        })
        .as_ref()
        .map_err(|e| KvmError::Seccomp(e.clone()))
}

/// The run loop's list alone, for a thread confined only once its guest has arrived.
fn running_program() -> Result<&'static BpfProgram, KvmError> {
    static PROGRAM: OnceLock<Result<BpfProgram, String>> = OnceLock::new();
    PROGRAM
        .get_or_init(|| {
            compile(
                rules().map_err(|e| e.to_string())?,
                SeccompAction::Trap,
                SeccompAction::Allow,
            )
        })
        .as_ref()
        .map_err(|e| KvmError::Seccomp(e.clone()))
}

/// Stage two, built once per process: [`SETUP`] refused.
fn end_setup_program() -> Result<&'static BpfProgram, KvmError> {
    static PROGRAM: OnceLock<Result<BpfProgram, String>> = OnceLock::new();
    PROGRAM
        .get_or_init(|| {
            let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
                SETUP.iter().map(|&nr| (nr, Vec::new())).collect();
            rules.insert(
                libc::SYS_ioctl,
                ioctl_rules(SETUP_IOCTLS).map_err(|e| e.to_string())?,
            );
            compile(rules, SeccompAction::Allow, SeccompAction::Trap)
        })
        .as_ref()
        .map_err(|e| KvmError::Seccomp(e.clone()))
}

thread_local! {
    /// The first disallowed syscall of this thread, plus one (0: none). Const-initialised and
    /// without a destructor, so reading and writing it is a plain TLS access, safe in a signal
    /// handler.
    static VIOLATION: Cell<u64> = const { Cell::new(0) };
}

/// `si_code` of a SIGSYS raised by a seccomp filter.
const SYS_SECCOMP: libc::c_int = 1;

/// The start of a SIGSYS `siginfo_t` on 64-bit Linux (`_sigsys` member of the union).
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t (at least as large as `SigsysInfo`) and, for an
    // SA_SIGINFO handler, a valid ucontext_t of the interrupted thread; both live for the call.
    // Only async-signal-safe work happens: a TLS store and a register write.
    unsafe {
        let info = &*info.cast::<SigsysInfo>();
        if info.code != SYS_SECCOMP {
            // Somebody sent SIGSYS by hand: not a filter violation, nothing to do.
            return;
        }
        let nr = u64::try_from(info.syscall).unwrap_or(u64::MAX - 1);
        VIOLATION.with(|v| {
            if v.get() == 0 {
                v.set(nr + 1);
            }
        });
        // The trapped call was not executed; make it return EPERM to its caller.
        let uc = ctx.cast::<libc::ucontext_t>();
        (*uc).uc_mcontext.gregs[libc::REG_RAX as usize] = -i64::from(libc::EPERM);
    }
}

/// Installs the SIGSYS handler once per process.
pub(super) fn install_sigsys_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction with an SA_SIGINFO handler of the right signature and an
        // empty mask is a valid argument; the handler is async-signal-safe (see `on_sigsys`).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigsys as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut());
        }
    });
}

/// Stage one: confines the calling (prepared, not yet running a guest) thread to the vCPU list
/// plus the guest setup calls. The thread must not block SIGSYS (a blocked SIGSYS from a filter
/// kills the whole process), so this unblocks it first, together with the kick signal.
pub(super) fn confine_prepared_thread(kick: libc::c_int) -> Result<(), KvmError> {
    confine(prepared_program()?, kick)
}

/// Both stages in one attach, for a thread whose guest has arrived and whose setup is done (a
/// vCPU prepared on the start path: one attach costs less there than two).
pub(super) fn confine_running_thread(kick: libc::c_int) -> Result<(), KvmError> {
    confine(running_program()?, kick)
}

fn confine(prog: &BpfProgram, kick: libc::c_int) -> Result<(), KvmError> {
    install_sigsys_handler();
    // SAFETY: sigset manipulation on a local set, then pthread_sigmask on the calling thread.
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGSYS);
        libc::sigaddset(&mut set, kick);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(KvmError::Seccomp(format!(
            "cannot unblock SIGSYS: {}",
            std::io::Error::from_raw_os_error(rc)
        )));
    }
    seccompiler::apply_filter(prog).map_err(|e| KvmError::Seccomp(e.to_string()))
}

/// Stage two: refuses the setup calls from now on (call after the guest's setup, before its
/// first KVM_RUN, on a thread that went through [`confine_prepared_thread`]).
pub(super) fn end_setup() -> Result<(), KvmError> {
    seccompiler::apply_filter(end_setup_program()?).map_err(|e| KvmError::Seccomp(e.to_string()))
}

/// The first syscall this thread made that the filter refused, if any (and forgets it).
pub(super) fn take_violation() -> Option<u64> {
    match VIOLATION.with(|v| v.replace(0)) {
        0 => None,
        n => Some(n - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_ioctl_numbers_match_the_kernel_headers() {
        // From <linux/kvm.h> on x86_64.
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_SET_REGS, 0x4090_ae82);
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
    }

    #[test]
    fn a_thread_confined_in_one_attach_gets_no_setup_calls() {
        let got = std::thread::spawn(|| {
            confine_running_thread(libc::SIGRTMIN() + 1).unwrap();
            let opened = std::fs::File::open("/proc/self/stat").is_ok();
            (
                opened,
                take_violation(),
                end_setup().is_err(),
                take_violation(),
            )
        })
        .join()
        .unwrap();
        assert!(!got.0);
        assert_eq!(got.1, Some(libc::SYS_openat as u64));
        assert!(got.2);
        assert_eq!(got.3, Some(libc::SYS_prctl as u64));
    }

    #[test]
    fn a_refused_syscall_returns_eperm_and_is_recorded() {
        // On a thread of its own: the filter stays with the thread and dies with it.
        // SAFETY: getpid has no preconditions (and is refused once the thread is confined).
        let pid = unsafe { libc::getpid() };
        let got = std::thread::spawn(move || {
            confine_prepared_thread(libc::SIGRTMIN() + 1).unwrap();
            // SAFETY: plain socket(2); the filter refuses it before it runs.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
            let err = std::io::Error::last_os_error().raw_os_error();
            let first = take_violation();
            let again = take_violation();
            // Setup may still copy fds in until `end_setup`, and not after.
            let pidfd = || {
                // SAFETY: pidfd_open(2) of our own process; a new fd (closed below) or -1.
                let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
                if fd >= 0 {
                    // SAFETY: closes the fd just opened.
                    unsafe { libc::close(fd as libc::c_int) };
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error().raw_os_error())
                }
            };
            let before = pidfd();
            end_setup().unwrap();
            let after = pidfd().err();
            let opened = take_violation();
            // Nor may it add filters (TSYNC would reach every thread of the process).
            let third = end_setup().is_err();
            (
                fd,
                err,
                first,
                again,
                before,
                after,
                opened,
                third,
                take_violation(),
            )
        })
        .join()
        .unwrap();
        assert_eq!(got.0, -1);
        assert_eq!(got.1, Some(libc::EPERM));
        assert_eq!(got.2, Some(libc::SYS_socket as u64));
        assert_eq!(got.3, None);
        assert_eq!(got.4, Ok(()), "setup could not open a pidfd");
        assert_eq!(got.5, Some(Some(libc::EPERM)));
        assert_eq!(got.6, Some(libc::SYS_pidfd_open as u64));
        assert!(got.7);
        // prctl(PR_SET_NO_NEW_PRIVS) is the first call of attaching a filter.
        assert_eq!(got.8, Some(libc::SYS_prctl as u64));
        // This thread is not confined.
        // SAFETY: plain socket(2), closed right away.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
        assert!(fd >= 0);
        // SAFETY: closes the fd just opened.
        unsafe { libc::close(fd) };
    }
}
