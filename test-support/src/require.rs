//! Prerequisites of a test. Missing ones fail the test when `CI=true` and skip it (with the
//! reason printed) elsewhere.

use std::path::Path;
use std::process::Command;

/// Whether this run is CI (`CI=true`), where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Returns true if the test can go on; false (after printing why) if it should be skipped.
/// Panics under CI.
pub fn check(what: &str, result: Result<(), String>) -> bool {
    match result {
        Ok(()) => true,
        Err(reason) if in_ci() => panic!("{what} is required under CI=true: {reason}"),
        Err(reason) => {
            eprintln!("SKIPPED: {what} unavailable: {reason}");
            false
        }
    }
}

/// /dev/kvm can be opened read-write.
pub fn kvm() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(|e| format!("/dev/kvm: {e}"))
}

/// Running as root (namespaces, mounts, chroot).
pub fn root() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root (namespaces, mounts and chroot need CAP_SYS_ADMIN)".into());
    }
    Ok(())
}

/// Network namespaces and taps can be made: root, `ip`, /dev/net/tun.
pub fn netns() -> Result<(), String> {
    root()?;
    if !Path::new("/dev/net/tun").exists() {
        return Err("/dev/net/tun missing".into());
    }
    tool("ip")
}

/// `name` runs (found on PATH).
pub fn tool(name: &str) -> Result<(), String> {
    match Command::new(name).arg("--version").output() {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("{name}: {e}")),
    }
}

/// KVM plus network namespaces.
pub fn kvm_and_netns(what: &str) -> bool {
    check(what, kvm().and_then(|()| netns()))
}
