//! Periodically stops or suspends idle instances (see `Registry::reap_idle`).

use std::time::Duration;

use crate::registry::Registry;

/// Often enough that reaping happens well within `idle_timeout` + 1 s.
pub const PERIOD: Duration = Duration::from_millis(250);

pub fn spawn(registry: Registry) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            registry.reap_idle().await;
        }
    })
}
