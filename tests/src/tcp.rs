//! TCP facts the cold-path tests check: a lost SYN shows up as a retransmission.

use std::net::TcpStream;
use std::os::fd::AsRawFd;

/// `tcpi_total_retrans` of a connected socket: segments the client had to send again.
pub fn total_retransmits(s: &TcpStream) -> std::io::Result<u32> {
    // SAFETY: tcp_info is plain data; all-zero is valid.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which we own, on a socket fd
    // that stays open for the call.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info.tcpi_total_retrans)
}
