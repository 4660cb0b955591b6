//! Why an instance's host network could not be set up: the step, the tap, and the io or
//! netlink error underneath. The registry records it as the failed boot's reason.

use std::fmt;

use super::NetError;

/// The steps of setting up an instance's network, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlumbStep {
    /// Creating the tap through /dev/net/tun.
    TapOpen,
    /// Setting the link up (with its txqueuelen).
    Link,
    /// Adding the gateway's /32 to the host side.
    Address,
    /// Adding the guest's /32 route.
    Route,
    /// Adding the guest's permanent neighbour entry.
    Neighbour,
    /// Duplicating the tap fd for the launcher.
    LauncherFd,
    /// Making the tap persistent (libvirt opens it by name).
    Persist,
}

impl fmt::Display for PlumbStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PlumbStep::TapOpen => "opening the tap",
            PlumbStep::Link => "setting the link up",
            PlumbStep::Address => "adding the gateway address",
            PlumbStep::Route => "adding the route",
            PlumbStep::Neighbour => "adding the neighbour entry",
            PlumbStep::LauncherFd => "duplicating the tap fd",
            PlumbStep::Persist => "making the tap persistent",
        })
    }
}

/// The error of [`crate::registry::Plumbing::setup`]. Its text (step, tap and the source's
/// text) is what the logs, the SERVFAIL reason and `/v1/instances` `last_error` show.
#[derive(Debug, thiserror::Error)]
#[error("{tap}: {step}: {source}")]
pub struct PlumbError {
    pub step: PlumbStep,
    /// The interface name.
    pub tap: String,
    /// Boxed: a netlink error is large, and this travels in every setup `Result`.
    #[source]
    pub source: Box<NetError>,
}

impl PlumbError {
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
    }
}
