//! Why an instance's host network could not be set up: the step, the tap, and the io or
//! netlink error underneath. The registry records it as the failed boot's reason.

use std::fmt;

use super::NetError;

/// The steps of setting up an instance's network, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlumbStep {
    /// Creating the tap through /dev/net/tun.
    TapOpen,
    /// Making the tap persistent (it outlives its fds until the daemon deletes the link).
    Persist,
    /// Setting the link up (with its txqueuelen).
    Link,
    /// Adding the guest's /32 route.
    Route,
    /// Adding the guest's permanent neighbour entry.
    Neighbour,
}

impl fmt::Display for PlumbStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PlumbStep::TapOpen => "opening the tap",
            PlumbStep::Link => "setting the link up",
            PlumbStep::Route => "adding the route",
            PlumbStep::Neighbour => "adding the neighbour entry",
            PlumbStep::Persist => "making the tap persistent",
        })
    }
}

/// The error of setting up an instance's network (a driver's `setup`). Its text (step, tap, the source's text
/// and what its errno means here) is what the logs, the SERVFAIL reason and `/v1/instances`
/// `last_error` show.
#[derive(Debug, thiserror::Error)]
#[error("{tap}: {step}: {source}{}", meaning_suffix(*.step, .source))]
pub struct PlumbError {
    pub step: PlumbStep,
    /// The interface name.
    pub tap: String,
    /// Boxed: a netlink error is large, and this travels in every setup `Result`.
    #[source]
    pub source: Box<NetError>,
}

/// What an errno means when setting up an instance's network, in the operator's terms: the
/// bare `strerror` text names neither the limit nor the fix.
pub fn errno_meaning(step: PlumbStep, errno: i32) -> Option<&'static str> {
    Some(match errno {
        libc::EMFILE => {
            "summond is out of file descriptors (RLIMIT_NOFILE): fewer instances fit than \
             configured; raise LimitNOFILE or lower limits.max_instances"
        }
        libc::ENFILE => "the host is out of file descriptors (fs.file-max)",
        libc::ENOENT | libc::ENODEV | libc::ENXIO if step == PlumbStep::TapOpen => {
            "/dev/net/tun is missing or the tun module is not loaded (modprobe tun)"
        }
        libc::EBUSY if step == PlumbStep::TapOpen => {
            "the interface name is in use: another process holds a tap of this name"
        }
        libc::EINVAL if step == PlumbStep::TapOpen => "a link of this name exists and is not a tap",
        libc::EPERM | libc::EACCES => {
            "not permitted: summond needs CAP_NET_ADMIN (and access to /dev/net/tun)"
        }
        libc::ENOMEM | libc::ENOBUFS => "the kernel is out of memory for network state",
        libc::EEXIST => "it exists already (a leftover, or another daemon's)",
        _ => return None,
    })
}

fn errno_of(e: &NetError) -> Option<i32> {
    match e {
        NetError::Io { source, .. } => source.raw_os_error(),
        NetError::Netlink {
            source: rtnetlink::Error::NetlinkError(m),
            ..
        } => Some(-m.raw_code()),
        NetError::Netlink { .. } => None,
    }
}

fn meaning_suffix(step: PlumbStep, e: &NetError) -> String {
    errno_of(e)
        .and_then(|errno| errno_meaning(step, errno))
        .map(|m| format!(" ({m})"))
        .unwrap_or_default()
}

impl PlumbError {
    /// The errno underneath, when there is one.
    pub fn errno(&self) -> Option<i32> {
        errno_of(&self.source)
    }

    pub fn new(step: PlumbStep, tap: impl Into<String>, source: NetError) -> PlumbError {
        PlumbError {
            step,
            tap: tap.into(),
            source: Box::new(source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_names_the_tap_the_step_and_the_cause() {
        let e = PlumbError::new(
            PlumbStep::TapOpen,
            "sm-web",
            NetError::Io {
                what: "creating tap sm-web".into(),
                source: std::io::Error::from_raw_os_error(libc::EBUSY),
            },
        );
        let text = e.to_string();
        assert!(
            text.starts_with("sm-web: opening the tap: creating tap sm-web: "),
            "{text}"
        );
        assert!(text.contains(&std::io::Error::from_raw_os_error(libc::EBUSY).to_string()));
        assert!(std::error::Error::source(&e).is_some());
        assert!(matches!(*e.source, NetError::Io { .. }));
        assert_eq!(e.step, PlumbStep::TapOpen);
        assert!(
            text.ends_with(
                "(the interface name is in use: another process holds a tap of this name)"
            ),
            "{text}"
        );
    }

    fn io(step: PlumbStep, errno: i32) -> String {
        PlumbError::new(
            step,
            "sm-a",
            NetError::Io {
                what: "x".into(),
                source: std::io::Error::from_raw_os_error(errno),
            },
        )
        .to_string()
    }

    #[test]
    fn errnos_say_what_they_mean() {
        assert!(io(PlumbStep::TapOpen, libc::EMFILE).contains("RLIMIT_NOFILE"));
        assert!(io(PlumbStep::Persist, libc::EMFILE).contains("LimitNOFILE"));
        assert!(io(PlumbStep::TapOpen, libc::ENFILE).contains("fs.file-max"));
        assert!(io(PlumbStep::TapOpen, libc::ENOENT).contains("/dev/net/tun"));
        assert!(io(PlumbStep::TapOpen, libc::ENODEV).contains("modprobe tun"));
        assert!(io(PlumbStep::TapOpen, libc::EPERM).contains("CAP_NET_ADMIN"));
        // ENOENT elsewhere is not about /dev/net/tun: no invented meaning.
        assert!(!io(PlumbStep::Route, libc::ENOENT).contains("/dev/net/tun"));
        assert!(io(PlumbStep::Route, libc::ENOENT).ends_with("(os error 2)"));
        let e = PlumbError::new(
            PlumbStep::TapOpen,
            "sm-a",
            NetError::Io {
                what: "x".into(),
                source: std::io::Error::from_raw_os_error(libc::EMFILE),
            },
        );
        assert_eq!(e.errno(), Some(libc::EMFILE));
    }
}
