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
    /// A new or changed service's driver could not be built (e.g. its libvirt URI does not
    /// answer).
    #[error(transparent)]
    Driver(#[from] crate::driver::DriverError),
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
pub async fn reload(
    path: &Path,
    current: &Config,
    zone: &SharedZone,
    registry: &Registry,
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
    if new.cluster != current.cluster {
        // Joining, leaving or changing node name mid-flight would strand claims in etcd.
        tracing::warn!("[cluster] changes take effect after a restart");
    }
    let prev_serial = {
        let z = zone.read().unwrap_or_else(|p| p.into_inner());
        match &z.soa.data {
            hickory_proto::rr::RData::SOA(s) => s.serial,
            _ => 0,
        }
    };
    let new_zone = Zone::from_config(&new, next_serial(prev_serial))?;
    // Registry first: a name that appears in the zone must already have its slot (and its
    // driver); a removed one answers NXDOMAIN from the zone check meanwhile either way.
    registry
        .apply(&new.services, new.limits, new.dns.ttl)
        .await?;
    *zone.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new_zone);
    Ok(new)
}

#[cfg(test)]
mod tests {
    use std::sync::RwLock;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::metrics::Metrics;
    use crate::testkit::RefusingDrivers;

    /// `n` services; `shift` renames the first `shift` of them so a reload removes and adds.
    fn config_text(n: usize, shift: usize, image: &Path) -> String {
        let mut s = String::from(
            "[dns]\nlisten = [\"127.0.0.1:5300\"]\nzone = \"svc.test.\"\nttl = 10\n\
             [network]\nsubnet = \"10.64.0.0/10\"\ngateway = \"10.64.0.1\"\n",
        );
        for i in 0..n {
            let ip = std::net::Ipv4Addr::from(0x0a40_0000u32 + 10 + i as u32);
            let name = if i < shift {
                format!("new{i:05}")
            } else {
                format!("s{i:05}")
            };
            s.push_str(&format!(
                "\n[[service]]\nname = \"{name}\"\nimage = \"{}\"\nip = \"{ip}\"\nmemory_mib = 8\n",
                image.display()
            ));
        }
        s
    }

    /// Load, zone, registry, then a SIGHUP reload that renames a tenth of the services.
    async fn load_and_reload(dir: &Path, n: usize) -> Duration {
        let image = dir.join("img.hvt");
        let path = dir.join(format!("summond-{n}.toml"));
        std::fs::write(&path, config_text(n, 0, &image)).unwrap();
        let t = Instant::now();
        let cfg = Config::load(&path).unwrap();
        let zone: SharedZone = Arc::new(RwLock::new(Arc::new(Zone::from_config(&cfg, 1).unwrap())));
        let registry = Registry::new(
            &cfg.services,
            cfg.limits,
            cfg.dns.ttl,
            Arc::new(RefusingDrivers),
            Arc::new(Metrics::new()),
        )
        .unwrap();
        let loaded = t.elapsed();
        std::fs::write(&path, config_text(n, n / 10, &image)).unwrap();
        let t = Instant::now();
        let new = reload(&path, &cfg, &zone, &registry).await.unwrap();
        let reloaded = t.elapsed();
        assert_eq!(new.services.len(), n);
        assert!(registry.get("new00000").is_some() && registry.get("s00000").is_none());
        loaded + reloaded
    }

    fn median(mut v: Vec<Duration>) -> Duration {
        v.sort();
        v[v.len() / 2]
    }

    /// Twice the services must cost less than three times as long (linear or n log n passes;
    /// a quadratic step would give four times). Not a wall-clock bound: the ratio holds on a
    /// slow or busy machine too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn load_and_reload_scale_n_log_n() {
        let dir = std::env::temp_dir().join(format!("summon-reload-scale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("img.hvt"), b"img").unwrap();
        let n = 4_000;
        let mut small = Vec::new();
        let mut large = Vec::new();
        for _ in 0..3 {
            small.push(load_and_reload(&dir, n).await);
            large.push(load_and_reload(&dir, 2 * n).await);
        }
        let (s, l) = (median(small), median(large));
        let _ = std::fs::remove_dir_all(&dir);
        eprintln!(
            "load + reload: {n} services {s:?}, {} services {l:?}",
            2 * n
        );
        assert!(
            l.as_secs_f64() < 3.0 * s.as_secs_f64(),
            "{} services took {l:?}, {n} took {s:?}: worse than n log n",
            2 * n
        );
    }
}
