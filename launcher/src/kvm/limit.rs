//! Token buckets for the per-guest limits of [`GuestLimits`](crate::GuestLimits): console bytes,
//! transmitted frames and bytes, VM exits.
//!
//! A bucket is only ever touched by its instance's vCPU thread, so it needs no atomics, and it
//! reads the clock only when the guest does what is limited (the caller passes `now`, read with
//! `Instant::now()`, a vDSO call that makes no syscall).

use std::time::{Duration, Instant};

/// `rate` tokens per second, at most `capacity` saved up; starts full.
#[derive(Debug)]
pub(super) struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A bucket of `rate` per second holding `capacity` (both at least 1).
    pub fn new(rate: u64, capacity: u64, now: Instant) -> Self {
        let capacity = capacity.max(1) as f64;
        TokenBucket {
            rate: rate.max(1) as f64,
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.capacity);
    }

    /// Takes as many of `n` tokens as there are; returns how many it took.
    pub fn take_up_to(&mut self, n: u64, now: Instant) -> u64 {
        self.refill(now);
        let granted = (self.tokens.floor() as u64).min(n);
        self.tokens -= granted as f64;
        granted
    }

    /// Whether `n` tokens are there (refilling first), without taking them.
    pub fn has(&mut self, n: u64, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= n as f64
    }

    /// Takes `n` tokens, which [`Self::has`] just confirmed.
    pub fn take(&mut self, n: u64) {
        self.tokens -= n as f64;
    }

    /// How long until `n` tokens (at most the capacity) are there, from the last refill.
    pub fn time_for(&self, n: u64) -> Duration {
        let want = (n as f64).min(self.capacity);
        let missing = (want - self.tokens).max(0.0);
        Duration::from_secs_f64(missing / self.rate)
    }
}

/// `GuestLimits::tx_frames_per_sec` and `tx_bytes_per_sec`: a frame passes only when both
/// buckets have room for it, and then costs both.
#[derive(Debug)]
pub(super) struct TxLimit {
    frames: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
}

/// The largest frame a tap takes (64 KiB with offloads); the byte bucket holds at least this
/// much, so that a limit below one frame per second still lets frames through at that rate
/// instead of dropping every one.
const MAX_FRAME: u64 = 65536;

impl TxLimit {
    /// `None` when neither limit is set, so unlimited guests never read the clock.
    pub fn new(frames_per_sec: Option<u64>, bytes_per_sec: Option<u64>) -> Option<Self> {
        if frames_per_sec.is_none() && bytes_per_sec.is_none() {
            return None;
        }
        let now = Instant::now();
        Some(TxLimit {
            frames: frames_per_sec.map(|r| TokenBucket::new(r, r, now)),
            bytes: bytes_per_sec.map(|r| TokenBucket::new(r, r.max(MAX_FRAME), now)),
        })
    }

    /// Whether a frame of `len` bytes may be sent now (and if so, charges it).
    pub fn admit(&mut self, len: u64, now: Instant) -> bool {
        let frames_ok = self.frames.as_mut().is_none_or(|b| b.has(1, now));
        let bytes_ok = self.bytes.as_mut().is_none_or(|b| b.has(len, now));
        if !(frames_ok && bytes_ok) {
            return false;
        }
        if let Some(b) = &mut self.frames {
            b.take(1);
        }
        if let Some(b) = &mut self.bytes {
            b.take(len);
        }
        true
    }
}

/// `GuestLimits::exits_per_sec`. The burst is a twentieth of a second's worth, so that the exits
/// of any one-second window stay within 5 % of the limit; a guest out of budget waits until a
/// hundredth of a second's worth has come back, so the thread wakes at most 100 times a second.
#[derive(Debug)]
pub(super) struct ExitLimit {
    bucket: TokenBucket,
    batch: u64,
}

impl ExitLimit {
    pub fn new(exits_per_sec: Option<u64>) -> Option<Self> {
        let rate = exits_per_sec?;
        Some(ExitLimit {
            bucket: TokenBucket::new(rate, rate / 20, Instant::now()),
            batch: (rate / 100).max(1),
        })
    }

    /// Charges one exit; `Some(wait)` when the guest is out of budget and must wait that long.
    pub fn charge(&mut self, now: Instant) -> Option<Duration> {
        if self.bucket.take_up_to(1, now) == 1 {
            return None;
        }
        Some(self.bucket.time_for(self.batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_grants_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, 100, t0);
        assert_eq!(b.take_up_to(150, t0), 100);
        assert_eq!(b.take_up_to(10, t0), 0);
        assert_eq!(b.take_up_to(100, t0 + Duration::from_millis(500)), 50);
        // Never more than the capacity, however long it rested.
        assert_eq!(b.take_up_to(1000, t0 + Duration::from_secs(60)), 100);
        let wait = b.time_for(10);
        assert!(wait > Duration::from_millis(99) && wait < Duration::from_millis(101));
    }

    #[test]
    fn tx_needs_room_in_both_buckets() {
        let t0 = Instant::now();
        let mut l = TxLimit::new(Some(2), Some(100_000)).unwrap();
        assert!(l.admit(60_000, t0));
        // The byte bucket has 40,000 left: a 50,000-byte frame is dropped and costs nothing.
        assert!(!l.admit(50_000, t0));
        assert!(l.admit(1000, t0));
        // Frames exhausted.
        assert!(!l.admit(10, t0));
        assert!(TxLimit::new(None, None).is_none());
        // A byte limit below one frame still lets a frame through.
        let mut small = TxLimit::new(None, Some(100)).unwrap();
        assert!(small.admit(1500, t0));
    }

    #[test]
    fn exits_wait_for_a_batch() {
        let t0 = Instant::now();
        let mut l = ExitLimit::new(Some(1000)).unwrap();
        for _ in 0..50 {
            assert!(l.charge(t0).is_none());
        }
        let wait = l.charge(t0).expect("out of budget");
        assert!(wait >= Duration::from_millis(9) && wait <= Duration::from_millis(11));
        assert!(l.charge(t0 + wait).is_none());
    }
}
