//! SIGHUP: re-read the config; apply it if valid, keep the old one (and say why) if not.

use std::path::Path;
use std::sync::Arc;

use crate::config::Config;
use crate::dns::{SharedZone, Zone};
use crate::registry::Registry;

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("[network] changed ({0}); that needs a restart of summond")]
    NetworkChanged(String),
    #[error(transparent)]
    Zone(#[from] crate::dns::zone::ZoneError),
    /// The backends could not take the new services (e.g. a libvirt URI is unreachable).
    #[error("{0}")]
    Backends(String),
}

/// Zone serials: seconds since the epoch, but always growing, even for reloads within a second.
pub fn next_serial(prev: u32) -> u32 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0);
    now.max(prev.wrapping_add(1))
}

/// Loads `path` and applies it over `current`; on success returns the new config.
/// `prepare_backends` runs before the registry sees the new services, so that a new service's
/// backend exists before its first query (libvirt services have one each).
pub async fn reload(
    path: &Path,
    current: &Config,
    zone: &SharedZone,
    registry: &Registry,
    prepare_backends: impl FnOnce(&Config) -> Result<(), String>,
) -> Result<Config, ReloadError> {
    let new = Config::load(path)?;
    if new.network != current.network {
        return Err(ReloadError::NetworkChanged(format!(
            "{:?} -> {:?}",
            current.network, new.network
        )));
    }
    if new.dns.listen != current.dns.listen || new.admin != current.admin {
        tracing::warn!("dns.listen and [admin] changes take effect after a restart");
    }
    if new.daemon != current.daemon {
        tracing::warn!("[daemon] lock_file changes take effect after a restart");
    }
    if new.kvm != current.kvm {
        tracing::warn!("kvm.prewarm changes take effect after a restart");
    }
    let prev_serial = {
        let z = zone.read().unwrap_or_else(|p| p.into_inner());
        match &z.soa.data {
            hickory_proto::rr::RData::SOA(s) => s.serial,
            _ => 0,
        }
    };
    let new_zone = Zone::from_config(&new, next_serial(prev_serial))?;
    prepare_backends(&new).map_err(ReloadError::Backends)?;
    // Registry first: a name that appears in the zone must already have its slot; a removed
    // one answers NXDOMAIN from the zone check meanwhile either way.
    registry.apply(&new.services, new.limits, new.dns.ttl).await;
    *zone.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new_zone);
    Ok(new)
}
