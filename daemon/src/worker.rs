//! `summond kvm-worker`: a process that runs guests for summond (`kvm.instances_per_process`),
//! started by the daemon's worker pool with its socket at fd [`WORKER_FD`].

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use summon_launcher::worker::{
    confine_worker, drop_capabilities, report_setup_failure, restrict_files, serve, FileRules,
    LogForward, WORKER_FD,
};
use tracing_subscriber::EnvFilter;

/// Serves the daemon until it goes away; the process's exit status. `cgroup_parent`: summond's
/// cpu cgroup, inside which this worker's quota groups go.
pub fn run(prewarm: usize, slots: usize, cgroup_parent: Option<PathBuf>) -> i32 {
    // SAFETY: fcntl(F_GETFD) only asks whether the descriptor is open.
    if unsafe { libc::fcntl(WORKER_FD, libc::F_GETFD) } < 0 {
        eprintln!("summond kvm-worker: no socket at fd {WORKER_FD}; summond starts this itself");
        return 2;
    }
    // SAFETY: the pool that started this process put its socket at WORKER_FD, and nothing
    // else in this process owns that descriptor.
    let sock = unsafe { OwnedFd::from_raw_fd(WORKER_FD) };
    // stderr goes nowhere (summond's may be a pipe that stalls): a failure says why on the
    // socket, and summond logs it and fails the start with it.
    let fail = |message: String| {
        report_setup_failure(&sock, &message);
        2
    };
    if let Some(parent) = cgroup_parent.clone() {
        summon_launcher::kvm::cgroup::nest_in(parent);
    }
    // Capabilities are per thread: given up here, before the first other thread exists.
    if let Err(e) = drop_capabilities() {
        return fail(format!("giving up capabilities: {e}"));
    }
    // Likewise the filesystem rules and the seccomp filter: inherited by every thread started
    // after them. A Landlock failure (e.g. a service manager's syscall filter refusing its
    // calls) leaves the worker under seccomp alone, and it says so once it can log.
    let (own_group, group_error) = match cgroup_parent.as_deref() {
        None => (None, None),
        Some(parent) => match summon_launcher::kvm::cgroup::make_own_worker_group(parent) {
            Ok(group) => (Some(group), None),
            Err(e) => (None, Some(format!("{}: {e}", parent.display()))),
        },
    };
    let files = restrict_files(Path::new("/dev/kvm"), own_group.as_deref());
    if let Err(e) = confine_worker() {
        return fail(e.to_string());
    }
    serve(sock, prewarm, slots, |forward: LogForward| {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .without_time()
            .with_ansi(false)
            .with_writer(move || forward.clone())
            .try_init();
        if let Some(e) = group_error {
            tracing::warn!(error = %e, "worker has no cpu cgroup of its own: no CPU quotas");
        }
        match files {
            Err(e) => tracing::warn!(error = %e, "worker not confined to its files"),
            Ok(FileRules::Enforced) => tracing::info!("worker confined: Landlock rules enforced"),
            Ok(FileRules::PartlyEnforced) => tracing::info!(
                "worker confined: Landlock rules partly enforced (an older kernel ABI)"
            ),
            Ok(FileRules::Unavailable) => tracing::warn!(
                "worker not confined to its files: this kernel has no Landlock (seccomp still applies)"
            ),
        }
    })
}
