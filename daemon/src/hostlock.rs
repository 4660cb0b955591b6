//! One summond per host state: an exclusive `flock` on a file, taken before summond touches
//! any link or instance, held for the life of the process (the kernel drops it when the
//! process ends, however it ends, so a crash leaves no stale lock).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another summond (pid {holder}) holds {path}: one daemon per host state", holder = .holder.as_deref().unwrap_or("unknown"), path = .path.display())]
    Held {
        path: PathBuf,
        holder: Option<String>,
    },
    #[error("lock file {path}: {what}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The held lock; dropping it releases it.
#[derive(Debug)]
pub struct HostLock {
    path: PathBuf,
    _file: File,
}

impl HostLock {
    /// Takes the lock without waiting and writes our pid into the file for the next one to
    /// name. Creates the parent folder (mode 0755) when it is missing.
    pub fn acquire(path: &Path) -> Result<HostLock, LockError> {
        let io = |what: &'static str| {
            let path = path.to_path_buf();
            move |source| LockError::Io { path, what, source }
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io("creating its folder"))?;
        }
        // Not truncated on open: the holder's pid must survive a loser's open.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io("opening"))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(LockError::Held {
                    path: path.to_path_buf(),
                    holder: (!pid.is_empty()).then(|| pid.chars().take(32).collect()),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io("locking")(e)),
        }
        file.set_len(0).map_err(io("truncating"))?;
        file.rewind().map_err(io("rewinding"))?;
        writeln!(file, "{}", std::process::id()).map_err(io("writing the pid"))?;
        Ok(HostLock {
            path: path.to_path_buf(),
            _file: file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The mark summond puts on the links it creates under this lock (their alias), so that
    /// its clean-up never touches a link it did not make: another daemon's on another host
    /// state, or an operator's own `sm-*` interface.
    pub fn link_mark(&self) -> String {
        link_mark(&self.path)
    }
}

/// `summond:` + the lock's path (IFALIASZ is 256; a longer path is hashed).
pub fn link_mark(lock: &Path) -> String {
    let p = lock.display().to_string();
    if p.len() <= 200 {
        return format!("summond:{p}");
    }
    // FNV-1a: stable across runs, so a restarted daemon recognises its links.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in p.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("summond:#{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_first_ones_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/summond.lock");
        let first = HostLock::acquire(&path).unwrap();
        // flock locks belong to the open file description: a second open in the same process
        // conflicts just as another process would.
        let err = HostLock::acquire(&path).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        let again = HostLock::acquire(&path).unwrap();
        assert_eq!(again.path(), path);
    }

    #[test]
    fn marks_fit_an_interface_alias_and_differ_by_lock() {
        let a = link_mark(Path::new("/run/summond/summond.lock"));
        assert_eq!(a, "summond:/run/summond/summond.lock");
        let long = format!("/{}", "x".repeat(300));
        let l = link_mark(Path::new(&long));
        assert!(l.len() < 256 && l != link_mark(Path::new(&format!("{long}y"))));
    }
}
