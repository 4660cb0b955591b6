//! Tap interfaces through `/dev/net/tun`: the one place that speaks the tun ioctls, for the
//! daemon (which creates a tap per instance), the embedded VMM (which opens or adopts one) and
//! the tests.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// MTU assumed when a handed-over tap's MTU cannot be read.
pub const DEFAULT_MTU: u16 = 1500;

/// Longest interface name the kernel takes (IFNAMSIZ without the NUL).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

fn ifreq_named(name: &str) -> io::Result<libc::ifreq> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_NAME_LEN || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} must be 1 to {MAX_NAME_LEN} bytes without NUL"),
        ));
    }
    // SAFETY: ifreq is plain C data for which all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    Ok(req)
}

/// Whether reads and writes on the returned fd may block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocking {
    Yes,
    No,
}

/// Creates the tap `name` in the calling thread's network namespace, or attaches to the
/// existing one, as IFF_TAP | IFF_NO_PI (close-on-exec). Without TUNSETPERSIST the interface
/// lives as long as an fd on it.
pub fn open(name: &str, blocking: Blocking) -> io::Result<OwnedFd> {
    let mut req = ifreq_named(name)?;
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    let mut flags = libc::O_RDWR | libc::O_CLOEXEC;
    if blocking == Blocking::No {
        flags |= libc::O_NONBLOCK;
    }
    // SAFETY: a plain open(2) of a NUL-terminated path; the result is checked.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: TUNSETIFF reads (and may write back) one ifreq, which `req` is and which
    // outlives the call; `fd` is an open /dev/net/tun.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Makes the interface outlive its fds (for backends that open the tap by name themselves).
pub fn set_persistent(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: TUNSETPERSIST takes an int by value; on a non-tun fd it fails with an error.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The interface index of `name` in the calling thread's network namespace.
///
/// Through our own socket and SIOCGIFINDEX rather than `if_nametoindex`: when the process is out
/// of fds, glibc's helper socket fails and `if_nametoindex` leaves a misleading errno (ENOENT),
/// while this reports the EMFILE itself.
pub fn index(name: &str) -> io::Result<u32> {
    let req = ifreq_query(name, libc::SIOCGIFINDEX)?;
    // SAFETY: SIOCGIFINDEX succeeded, so the union holds the index.
    let index = unsafe { req.ifr_ifru.ifru_ifindex };
    u32::try_from(index).map_err(|_| io::Error::other(format!("bad interface index {index}")))
}

/// One interface query by name (SIOCGIF*) through a socket of our own; the filled-in ifreq.
fn ifreq_query(name: &str, request: libc::c_ulong) -> io::Result<libc::ifreq> {
    let mut req = ifreq_named(name)?;
    // SAFETY: plain socket(2); the result is checked and then owned.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` was just created and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: the SIOCGIF* queries read the name and write one union member of the ifreq we
    // own, which outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), request, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(req)
}

/// Makes a handed-over fd non-blocking and checks that it is a tap; returns its interface name.
pub fn adopt_fd(fd: RawFd) -> io::Result<String> {
    // SAFETY: fcntl on an fd we were given; results are checked.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: all-zero is a valid ifreq.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: TUNGETIFF writes one ifreq into `req`, which outlives the call.
    if unsafe { libc::ioctl(fd, libc::TUNGETIFF, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel wrote a NUL-terminated name (IFNAMSIZ includes the NUL); reading the
    // union's flags member is fine for a plain integer.
    let (name, tflags) = unsafe {
        (
            CStr::from_ptr(req.ifr_name.as_ptr())
                .to_string_lossy()
                .into_owned(),
            req.ifr_ifru.ifru_flags as libc::c_int,
        )
    };
    if tflags & libc::IFF_TAP == 0 || tflags & libc::IFF_NO_PI == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name} is not a tap opened with IFF_TAP | IFF_NO_PI"),
        ));
    }
    Ok(name)
}

/// The MTU of interface `name` in the current network namespace.
pub fn mtu(name: &str) -> io::Result<u16> {
    let req = ifreq_query(name, libc::SIOCGIFMTU)?;
    // SAFETY: SIOCGIFMTU succeeded, so the union holds the MTU.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    u16::try_from(mtu).map_err(|_| io::Error::other(format!("MTU {mtu} out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_any_syscall() {
        for bad in ["", "sixteen-bytes-xx", "a\0b"] {
            let e = open(bad, Blocking::No).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}: {e}");
        }
        assert!(ifreq_named("fifteen-bytes-x").is_ok());
    }
}
