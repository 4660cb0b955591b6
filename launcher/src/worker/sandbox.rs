//! The seccomp filter of a whole worker process: what a guest that escaped into its VMM must not
//! reach beyond its own worker.
//!
//! Each vCPU thread has a tight allowlist of its own (`kvm/seccomp.rs`). But the threads of a
//! process share its memory: code running on a vCPU thread may `mprotect` and overwrite what
//! the worker's other threads run, and those threads (the request loop, the socket writer, the
//! prepared-VM refill) open `/dev/kvm`, cgroup files and images, map memory and start threads.
//! This filter, applied before the worker's first thread exists and so inherited by all of
//! them, refuses what none of them ever needs and what would carry an attack out of the worker:
//! signals to other processes (summond, other workers), tracing or reading other processes,
//! `execve`, new sockets (a local socket such as a container runtime's would be reachable with
//! the worker's uid), new namespaces and mounts, the kernel's administrative and
//! attack-surface calls (BPF, perf, io_uring, userfaultfd, keys, modules), and changes to file
//! names, modes, owners and extended attributes.
//!
//! A refused call returns `EPERM` and does nothing; on a vCPU thread its own filter traps first
//! and the call ends that guest as a fault (`kvm/seccomp.rs`), as before.
//!
//! Seccomp cannot tell one path from another, so the files a worker may open are Landlock's
//! ([`restrict_files`]): for writing only `/dev/kvm` (and use its ioctls) and the files of its
//! cgroup directory, where it may also make and remove directories; for reading those and
//! /proc and /sys (images arrive as descriptors); it may create, remove or execute nothing
//! else, nor signal a process outside its own Landlock domain.
//!
//! A worker cannot ask an interface for its MTU (that takes a socket): for a tap passed as a
//! descriptor the query fails and the guest is told the default, 1500, which is what summond's
//! taps have (it creates them at the kernel's default and never changes it).

use std::collections::BTreeMap;
use std::path::Path;

use landlock::{
    path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetError,
    RulesetStatus, Scope, ABI,
};

use super::WorkerError;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule,
};

use crate::kvm::seccomp::compile;

/// Refused in every case.
const REFUSED: &[libc::c_long] = &[
    // Other processes: their memory, their signals, their files.
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_process_madvise,
    libc::SYS_kcmp,
    libc::SYS_pidfd_send_signal,
    libc::SYS_tkill,
    libc::SYS_rt_sigqueueinfo,
    libc::SYS_rt_tgsigqueueinfo,
    libc::SYS_execve,
    libc::SYS_execveat,
    // The network and local sockets: the worker talks to summond over the socket it inherits.
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept,
    libc::SYS_accept4,
    // Namespaces, mounts, the root.
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_fsconfig,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    // The kernel's larger attack surfaces and its administration.
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_syslog,
    libc::SYS_quotactl,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_sethostname,
    libc::SYS_setdomainname,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_personality,
    libc::SYS_vhangup,
    // Identities.
    libc::SYS_setuid,
    libc::SYS_setgid,
    libc::SYS_setreuid,
    libc::SYS_setregid,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_setgroups,
    libc::SYS_setfsuid,
    libc::SYS_setfsgid,
    libc::SYS_capset,
    // File names, modes, owners, attributes (the worker only makes and removes its cgroup
    // directories: mkdir, rmdir, and unlinkat with AT_REMOVEDIR below).
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_link,
    libc::SYS_linkat,
    libc::SYS_symlink,
    libc::SYS_symlinkat,
    libc::SYS_unlink,
    libc::SYS_mknod,
    libc::SYS_mknodat,
    libc::SYS_truncate,
    libc::SYS_chmod,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_chown,
    libc::SYS_fchown,
    libc::SYS_lchown,
    libc::SYS_fchownat,
    libc::SYS_setxattr,
    libc::SYS_lsetxattr,
    libc::SYS_fsetxattr,
    libc::SYS_removexattr,
    libc::SYS_lremovexattr,
    libc::SYS_fremovexattr,
];

fn arg(index: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        index,
        SeccompCmpArgLen::Dword,
        op,
        value,
    )?])
}

/// The refused calls for a process whose id is `pid`: [`REFUSED`], and the calls that name a
/// process when they name another one (a thread of its own may still be kicked and a pidfd of
/// itself opened), and unlinkat of anything but a directory.
fn rules(pid: u32) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        REFUSED.iter().map(|&nr| (nr, Vec::new())).collect();
    for nr in [libc::SYS_kill, libc::SYS_tgkill, libc::SYS_pidfd_open] {
        rules.insert(nr, vec![arg(0, SeccompCmpOp::Ne, pid.into())?]);
    }
    rules.insert(
        libc::SYS_unlinkat,
        vec![arg(
            2,
            SeccompCmpOp::MaskedEq(libc::AT_REMOVEDIR as u64),
            0,
        )?],
    );
    Ok(rules)
}

/// The filter for process `pid`: [`rules`] answered with `EPERM`, everything else allowed.
fn program(pid: u32) -> Result<BpfProgram, String> {
    compile(
        rules(pid).map_err(|e| e.to_string())?,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
    )
}

/// Confines the calling thread and every thread it starts from now on; call it before the
/// process's first other thread exists. Needs `no_new_privs` (set by
/// [`super::drop_capabilities`]) or `CAP_SYS_ADMIN`.
pub fn confine_worker() -> Result<(), WorkerError> {
    let setup = |message: String| WorkerError::Setup {
        message: format!("the worker's seccomp filter: {message}"),
    };
    let program = program(std::process::id()).map_err(setup)?;
    seccompiler::apply_filter(&program).map_err(|e| setup(e.to_string()))
}

/// How much of the worker's filesystem rules this kernel enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileRules {
    Enforced,
    /// An older Landlock ABI: some of the rights are not restricted (e.g. device ioctls before
    /// Linux 6.10, signals before 6.12).
    PartlyEnforced,
    /// No Landlock in this kernel (or it is not enabled at boot).
    Unavailable,
}

/// What a worker may still read by path: its own process's entries and the host's CPU and
/// cgroup facts (`/proc/self/mountinfo`, `cgroup.controllers`, the CPU count). Nothing of
/// summond's: not its configuration, the admin token, the cluster's credentials or the images
/// (summond passes each start's image as a descriptor).
const READABLE: [&str; 2] = ["/proc", "/sys"];

/// Restricts what the calling thread and the threads it starts from now on may open by path:
/// `kvm` (the KVM device) for reading and writing, with its ioctls; beneath `cgroup`, files to
/// read and write and directories to list, make and remove; beneath [`READABLE`], files and
/// directories to read. Nothing else may be opened, written, created, removed, renamed or
/// executed (descriptors already open, or passed in, are not affected), and no signal goes
/// outside the thread's Landlock domain. Needs `no_new_privs` (set by
/// [`super::drop_capabilities`]).
pub fn restrict_files(kvm: &Path, cgroup: Option<&Path>) -> Result<FileRules, WorkerError> {
    restrict_files_beneath(kvm, cgroup, &READABLE.map(Path::new))
}

fn restrict_files_beneath(
    kvm: &Path,
    cgroup: Option<&Path>,
    readable: &[&Path],
) -> Result<FileRules, WorkerError> {
    let setup = |e: RulesetError| WorkerError::Setup {
        message: format!("the worker's Landlock rules: {e}"),
    };
    let abi = ABI::V6;
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(setup)?
        .scope(Scope::from_all(abi))
        .map_err(setup)?
        .create()
        .map_err(setup)?
        .add_rules(path_beneath_rules(
            [kvm],
            AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev,
        ))
        .map_err(setup)?
        .add_rules(path_beneath_rules(
            cgroup,
            AccessFs::from_read(abi)
                | AccessFs::WriteFile
                | AccessFs::MakeDir
                | AccessFs::RemoveDir,
        ))
        .map_err(setup)?
        .add_rules(path_beneath_rules(readable, AccessFs::from_read(abi)))
        .map_err(setup)?
        .restrict_self()
        .map_err(setup)?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => FileRules::Enforced,
        RulesetStatus::PartiallyEnforced => FileRules::PartlyEnforced,
        RulesetStatus::NotEnforced => FileRules::Unavailable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    fn errno<T: Into<i64>>(r: T) -> Option<i32> {
        (r.into() < 0).then(|| std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }

    /// The filter on one thread of the test process (a filter without TSYNC binds only the
    /// thread that applies it): what carries out of the process is refused, what the worker
    /// does to itself is not.
    #[test]
    fn a_confined_thread_reaches_no_other_process_and_keeps_its_own() {
        let dir = std::env::temp_dir().join(format!("summon-sandbox-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let file = dir.join("f");
        std::fs::write(&file, b"x").unwrap();
        let parent = std::os::unix::process::parent_id() as libc::pid_t;
        let path = CString::new(file.to_str().unwrap()).unwrap();
        let sub = dir.join("sub");
        let sub_c = CString::new(sub.to_str().unwrap()).unwrap();
        let got = std::thread::spawn(move || {
            confine_worker().unwrap();
            let me = std::process::id() as libc::pid_t;
            // SAFETY: each call below takes integers or NUL-terminated strings that live
            // through it; signal 0 only checks that a signal could be sent.
            unsafe {
                let tid = libc::gettid();
                // A path that does not exist: allowed, execve would fail with ENOENT (and
                // never replace the test process).
                let missing = c"/nonexistent/summon-sandbox-test";
                let argv = [missing.as_ptr(), std::ptr::null()];
                let envp = [std::ptr::null::<libc::c_char>()];
                (
                    errno(libc::kill(parent, 0)),
                    errno(libc::kill(me, 0)),
                    errno(libc::syscall(libc::SYS_tgkill, me, tid, 0)),
                    errno(libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0)),
                    errno(libc::execve(missing.as_ptr(), argv.as_ptr(), envp.as_ptr())),
                    errno(libc::syscall(libc::SYS_pidfd_open, parent, 0)),
                    errno(libc::chmod(path.as_ptr(), 0o777)),
                    errno(libc::unlink(path.as_ptr())),
                    errno(libc::unlinkat(libc::AT_FDCWD, path.as_ptr(), 0)),
                    errno(libc::mkdir(sub_c.as_ptr(), 0o700)),
                    errno(libc::rmdir(sub_c.as_ptr())),
                    errno(libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0)),
                )
            }
        })
        .join()
        .unwrap();
        let eperm = Some(libc::EPERM);
        assert_eq!(got.0, eperm, "kill of another process");
        assert_eq!(got.1, None, "kill of itself");
        assert_eq!(got.2, None, "tgkill of its own thread");
        assert_eq!(got.3, eperm, "socket");
        assert_eq!(got.4, eperm, "execve");
        assert_eq!(got.5, eperm, "pidfd_open of another process");
        assert_eq!(got.6, eperm, "chmod");
        assert_eq!(got.7, eperm, "unlink");
        assert_eq!(got.8, eperm, "unlinkat of a file");
        assert_eq!(got.9, None, "mkdir");
        assert_eq!(got.10, None, "rmdir");
        assert_eq!(got.11, eperm, "ptrace");
        // Nothing refused happened, and the rest of the process is not confined.
        assert!(file.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The filesystem rules on one thread of the test process (Landlock binds the thread that
    /// restricts itself and its future children): the stand-ins for /dev/kvm and the cgroup
    /// directory stay writable, nothing else does, and only those and the readable tree (here a
    /// stand-in for /proc and /sys) can be read.
    #[test]
    fn a_restricted_thread_opens_only_kvm_its_cgroup_directory_proc_and_sys() {
        let dir = std::env::temp_dir().join(format!("summon-landlock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cgroup = dir.join("cgroup");
        std::fs::create_dir_all(&cgroup).unwrap();
        let kvm = dir.join("kvm");
        let other = dir.join("other");
        let tasks = cgroup.join("tasks");
        let readable = dir.join("proc");
        std::fs::create_dir_all(&readable).unwrap();
        let stat = readable.join("stat");
        for f in [&kvm, &other, &tasks, &stat] {
            std::fs::write(f, b"x").unwrap();
        }
        let parent = std::os::unix::process::parent_id() as libc::pid_t;
        let (k, c, o, t) = (kvm.clone(), cgroup.clone(), other.clone(), tasks.clone());
        let (r, st) = (readable.clone(), stat.clone());
        let (rules, got) = std::thread::spawn(move || {
            // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only (and binds this thread).
            let nnp = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            assert_eq!(nnp, 0);
            let rules = restrict_files_beneath(&k, Some(&c), &[&r]).unwrap();
            let write = |p: &Path| std::fs::OpenOptions::new().write(true).open(p).is_ok();
            // SAFETY: kill(2) with signal 0 only checks that a signal could be sent.
            let signal = unsafe { libc::kill(parent, 0) } == 0;
            let got = (
                write(&k),
                write(&t),
                std::fs::create_dir(c.join("g")).is_ok(),
                std::fs::remove_dir(c.join("g")).is_ok(),
                write(&o),
                std::fs::File::create(c.join("new")).is_ok(),
                std::fs::remove_file(&o).is_ok(),
                std::fs::read(&st).is_ok()
                    && std::fs::read(&t).is_ok()
                    && std::fs::read(&k).is_ok(),
                std::fs::read(&o).is_ok(),
                signal,
            );
            (rules, got)
        })
        .join()
        .unwrap();
        if rules == FileRules::Unavailable {
            assert!(
                std::env::var_os("CI").is_none(),
                "this kernel has no Landlock, which CI's must have"
            );
            eprintln!("skipped: this kernel has no Landlock");
            return;
        }
        assert_eq!(rules, FileRules::Enforced, "Landlock ABI older than 6");
        assert_eq!(
            got,
            (true, true, true, true, false, false, false, true, false, false),
            "(kvm, cgroup file, mkdir, rmdir, other file, new file, unlink, allowed reads, \
             other read, signal out)"
        );
        // The rest of the process is not restricted.
        assert!(std::fs::OpenOptions::new().write(true).open(&other).is_ok());
        assert!(std::fs::read(&other).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
