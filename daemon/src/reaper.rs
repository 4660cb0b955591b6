//! Runs reaper passes (`Registry::reap_idle`) when the earliest idle deadline comes, and sleeps
//! otherwise: nothing runs per tick, whatever the number of live instances.

use std::time::Duration;

use crate::registry::Registry;

/// The longest sleep without a deadline; a backstop only (a new earlier deadline wakes the
/// reaper at once).
const MAX_SLEEP: Duration = Duration::from_secs(60);

pub fn spawn(registry: Registry) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let next = registry.reap_idle().await;
            let until = next.unwrap_or_else(|| std::time::Instant::now() + MAX_SLEEP);
            // A deadline armed during the pass left a permit (`Notify::notify_one`), so this
            // returns at once rather than missing it.
            tokio::select! {
                _ = tokio::time::sleep_until(until.into()) => {}
                _ = registry.reap_changed() => {}
            }
        }
    })
}
