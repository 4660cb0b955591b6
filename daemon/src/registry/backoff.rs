//! Exponential backoff after failed boots, so a crashing image cannot cause a boot storm.

use std::time::Duration;

/// Delay before the next boot after `failures` consecutive failures (>= 1):
/// `initial`, `2 × initial`, `4 × initial`, ... capped at `max`.
pub fn delay(failures: u32, initial: Duration, max: Duration) -> Duration {
    let shift = failures.saturating_sub(1).min(20);
    initial.saturating_mul(1 << shift).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_and_caps() {
        let i = Duration::from_millis(500);
        let m = Duration::from_secs(4);
        assert_eq!(delay(1, i, m), Duration::from_millis(500));
        assert_eq!(delay(2, i, m), Duration::from_secs(1));
        assert_eq!(delay(3, i, m), Duration::from_secs(2));
        assert_eq!(delay(4, i, m), Duration::from_secs(4));
        assert_eq!(delay(50, i, m), Duration::from_secs(4));
        assert_eq!(delay(u32::MAX, i, m), Duration::from_secs(4));
    }
}
