//! Finding idle instances (by DNS and by tap traffic) and stopping or suspending them; the
//! timer that drives this is in `crate::reaper`.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{Phase, Registry};
use crate::config::StopMode;

impl Registry {
    /// One reaper pass: stops or suspends instances idle by DNS (2 × TTL) and by tap traffic
    /// (`idle_timeout`).
    pub async fn reap_idle(&self) {
        let ttl_ms = u64::from(self.shared.ttl.load(Ordering::Relaxed)) * 1000;
        let now_ms = self.now_ms();
        for slot in self.slots() {
            let link = {
                let g = slot.lock();
                if g.phase != Phase::Running {
                    continue;
                }
                g.net.as_ref().map(|l| (l.tap.clone(), l.index))
            };
            let packets = match &link {
                Some((tap, index)) => self.shared.plumbing.packets(tap, *index).await,
                None => None,
            };
            let cfg = slot.config();
            let idle = {
                let mut g = slot.lock();
                if g.phase != Phase::Running {
                    continue;
                }
                if let Some(p) = packets {
                    if g.last_packets != Some(p) {
                        if g.last_packets.is_some() {
                            g.last_traffic = Instant::now();
                        }
                        g.last_packets = Some(p);
                    }
                }
                let q = slot.last_query_ms.load(Ordering::Relaxed);
                let dns_idle = now_ms.saturating_sub(q) >= 2 * ttl_ms;
                dns_idle && g.last_traffic.elapsed() >= cfg.idle_timeout
            };
            if idle {
                let mode_label = match cfg.stop {
                    StopMode::Destroy => "destroy",
                    StopMode::Suspend => "suspend",
                };
                if self.stop(&slot, cfg.stop, "idle").await {
                    self.shared
                        .metrics
                        .reaped
                        .with_label_values(&[slot.name.as_str(), mode_label])
                        .inc();
                }
            }
        }
    }
}
