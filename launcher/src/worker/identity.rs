//! A uid of its own for each worker process (`kvm.worker_uids`), when summond runs as root.
//!
//! Workers that share a uid are kept apart by Landlock, seccomp and their cleared dumpable
//! flag; the kernel's own permission checks between processes and on files only see uids.
//! With one uid each, a worker that its guest took over cannot signal, trace or read another
//! worker even on a kernel without Landlock, and as a uid other than 0 it owns none of the
//! host's files. Each worker also gets a gid equal to its uid and, as its one supplementary
//! group, the group of `/dev/kvm` (opened by group, like QEMU under libvirt).
//!
//! A uid returns to the range only once its worker has been waited for, so two live workers
//! never share one.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};

/// `count` consecutive uids (and gids) from `first`, for worker processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    pub first: u32,
    pub count: u32,
}

/// The uids not held by a live worker.
#[derive(Debug)]
pub(super) struct Identities {
    range: UidRange,
    /// Group of `/dev/kvm`, given to every worker as its supplementary group.
    kvm_gid: Option<u32>,
    free: Arc<Mutex<Free>>,
}

#[derive(Debug, Default)]
struct Free {
    /// Uids given back, used first.
    returned: Vec<u32>,
    /// How many of the range have been handed out at least once.
    used: u32,
}

/// A worker's uid, gid and groups; the uid returns to its range when this is dropped (after
/// the process has been waited for).
#[derive(Debug)]
pub(super) struct Identity {
    pub uid: u32,
    pub groups: Vec<libc::gid_t>,
    free: Arc<Mutex<Free>>,
}

impl Identities {
    /// Fails unless this process may change uids (root, or `CAP_SETUID` and `CAP_SETGID`).
    pub fn new(range: UidRange) -> io::Result<Identities> {
        // SAFETY: geteuid has no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "kvm.worker_uids needs summond to run as root, to start its workers as other uids",
            ));
        }
        let kvm_gid = std::fs::metadata("/dev/kvm").ok().map(|m| m.gid());
        Ok(Identities {
            range,
            kvm_gid,
            free: Arc::new(Mutex::new(Free::default())),
        })
    }

    /// A uid no live worker has; an error when the range is used up.
    pub fn take(&self) -> io::Result<Identity> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let uid = match free.returned.pop() {
            Some(uid) => uid,
            None if free.used < self.range.count => {
                free.used += 1;
                self.range.first + free.used - 1
            }
            None => {
                return Err(io::Error::other(format!(
                    "every uid of kvm.worker_uids ({} from {}) has a live worker",
                    self.range.count, self.range.first
                )))
            }
        };
        Ok(Identity {
            uid,
            groups: self.kvm_gid.into_iter().collect(),
            free: self.free.clone(),
        })
    }
}

impl Drop for Identity {
    fn drop(&mut self) {
        self.free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .returned
            .push(self.uid);
    }
}

impl Identity {
    /// Becomes this identity: in the forked child, before `exec`. Calls only async-signal-safe
    /// functions (setgroups, setresgid, setresuid) on data prepared before the fork.
    pub fn assume(&self) -> io::Result<()> {
        // SAFETY: setgroups reads `groups.len()` gids from a live slice; setresgid and
        // setresuid take integers. All three are system calls, safe between fork and exec.
        unsafe {
            if libc::setgroups(self.groups.len(), self.groups.as_ptr()) != 0
                || libc::setresgid(self.uid, self.uid, self.uid) != 0
                || libc::setresuid(self.uid, self.uid, self.uid) != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identities(count: u32) -> Identities {
        Identities {
            range: UidRange { first: 5000, count },
            kvm_gid: Some(36),
            free: Arc::new(Mutex::new(Free::default())),
        }
    }

    #[test]
    fn no_two_live_workers_share_a_uid_and_a_returned_one_is_used_again() {
        let ids = identities(2);
        let a = ids.take().unwrap();
        let b = ids.take().unwrap();
        assert_eq!((a.uid, b.uid), (5000, 5001));
        assert_eq!(a.groups, vec![36]);
        let err = ids.take().unwrap_err().to_string();
        assert!(err.contains("every uid of kvm.worker_uids"), "{err}");
        drop(a);
        assert_eq!(ids.take().unwrap().uid, 5000);
    }
}
