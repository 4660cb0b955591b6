//! Tap interfaces through `/dev/net/tun`: open one by name, learn the name and MTU of one that
//! was handed over as an fd.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// MTU assumed when a handed-over tap's MTU cannot be read.
pub const DEFAULT_MTU: u16 = 1500;

fn ifreq_named(name: &str) -> io::Result<libc::ifreq> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "interface name must be 1 to {} bytes without NUL",
                libc::IFNAMSIZ - 1
            ),
        ));
    }
    // SAFETY: ifreq is plain C data for which all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    Ok(req)
}

/// Opens the existing tap `name` (IFF_TAP | IFF_NO_PI), non-blocking.
pub fn open_tap(name: &str) -> io::Result<OwnedFd> {
    let mut req = ifreq_named(name)?;
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: a plain open(2) of a NUL-terminated path; the result is checked.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: TUNSETIFF reads an ifreq, which `req` is and which outlives the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Makes a handed-over fd non-blocking and checks that it is a tap; returns its interface name.
pub fn adopt_tap_fd(fd: RawFd) -> io::Result<String> {
    // SAFETY: fcntl on an fd we were given; results are checked.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: all-zero is a valid ifreq; TUNGETIFF fills it in and outlives nothing.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: TUNGETIFF writes one ifreq into `req`.
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
pub fn interface_mtu(name: &str) -> io::Result<u16> {
    let mut req = ifreq_named(name)?;
    // SAFETY: a plain socket(2); the result is checked and owned below.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `s` was just created and is owned by nobody else.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    // SAFETY: SIOCGIFMTU reads the name and writes the MTU into `req`.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFMTU, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled in the mtu member of the union.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    u16::try_from(mtu).map_err(|_| io::Error::other(format!("MTU {mtu} out of range")))
}
