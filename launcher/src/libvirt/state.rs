//! Libvirt domain states as the backend interface sees them.

use virt::domain::{Domain, DomainState};

use crate::backend::InstanceState;

/// A domain's state, read so that a failed call is an error (virt's `Domain::state` turns a
/// failed `virDomainGetState` into an unknown state instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    pub state: DomainState,
    /// libvirt's raw reason code for that state (e.g. shutoff reason 3 = crashed).
    pub reason: i32,
}

pub fn observe(d: &Domain) -> Result<Observed, virt::error::Error> {
    let (state, reason) = d.state()?;
    match state.known() {
        Some(state) => Ok(Observed {
            state,
            reason: raw_reason(reason),
        }),
        None => Err(virt::error::Error::last_error()),
    }
}

fn raw_reason(r: virt::domain::DomainStateReasonEnum) -> i32 {
    use virt::domain::DomainStateReason as R;
    match r {
        virt::enumutil::Enum::Known(k) => match k {
            R::NoState(e) => e.to_raw() as i32,
            R::Running(e) => e.to_raw() as i32,
            R::Blocked(e) => e.to_raw() as i32,
            R::Paused(e) => e.to_raw() as i32,
            R::Shutdown(e) => e.to_raw() as i32,
            R::Shutoff(e) => e.to_raw() as i32,
            R::Crashed(e) => e.to_raw() as i32,
            R::PMSuspended(e) => e.to_raw() as i32,
        },
        virt::enumutil::Enum::Unknown(raw) => raw,
    }
}

impl Observed {
    pub fn instance_state(self) -> InstanceState {
        match self.state {
            DomainState::Running | DomainState::Blocked => InstanceState::Running,
            DomainState::Paused | DomainState::PMSuspended => InstanceState::Paused,
            DomainState::NoState
            | DomainState::Shutdown
            | DomainState::Shutoff
            | DomainState::Crashed => InstanceState::Stopped,
        }
    }

    pub fn name(self) -> &'static str {
        match self.state {
            DomainState::NoState => "in no state",
            DomainState::Running => "running",
            DomainState::Blocked => "blocked",
            DomainState::Paused => "paused",
            DomainState::Shutdown => "shutting down",
            DomainState::Shutoff => "shut off",
            DomainState::Crashed => "crashed",
            DomainState::PMSuspended => "suspended by guest power management",
        }
    }
}
