//! Console output: PUTS bytes cut into lines for the instance's event sink, at most
//! `GuestLimits::console_bytes_per_sec` of them.

use std::time::{Duration, Instant};

use crate::backend::InstanceEvent;
use crate::kvm::limit::TokenBucket;

/// A line longer than this is delivered in pieces, so a guest cannot grow host memory unbounded.
const MAX_LINE: usize = 4096;

/// After dropping starts, how long until one line says how much was dropped: the time the
/// bucket (one second's worth) takes to refill, so a flooder gets one such line a second.
const NOTICE_EVERY: Duration = Duration::from_secs(1);

/// Collects console bytes and delivers each complete line as `InstanceEvent::Console`.
#[derive(Default)]
pub struct Console {
    line: Vec<u8>,
    limit: Option<Limit>,
}

/// The console rate limit: a bucket of one second's worth, and the drops not yet reported.
struct Limit {
    bucket: TokenBucket,
    unreported: u64,
    since: Instant,
}

impl Console {
    /// A console passing at most `bytes_per_sec` (a burst of one second's worth); `None`: all.
    pub fn new(bytes_per_sec: Option<u64>) -> Self {
        let now = Instant::now();
        Console {
            line: Vec::new(),
            limit: bytes_per_sec.map(|r| Limit {
                bucket: TokenBucket::new(r, r, now),
                unreported: 0,
                since: now,
            }),
        }
    }

    /// Adds guest output within the rate limit and emits every line it completes; returns the
    /// number of bytes the limit dropped.
    pub fn write(&mut self, bytes: &[u8], sink: &dyn Fn(InstanceEvent)) -> u64 {
        let Some(limit) = &mut self.limit else {
            self.split(bytes, sink);
            return 0;
        };
        let now = Instant::now();
        let granted = limit.bucket.take_up_to(bytes.len() as u64, now) as usize;
        let dropped = (bytes.len() - granted) as u64;
        if dropped > 0 {
            if limit.unreported == 0 {
                limit.since = now;
            }
            limit.unreported += dropped;
        }
        if limit.unreported > 0 && now.saturating_duration_since(limit.since) >= NOTICE_EVERY {
            self.notice(sink, now);
        }
        self.split(&bytes[..granted], sink);
        dropped
    }

    /// Tells the operator why console lines are missing.
    fn notice(&mut self, sink: &dyn Fn(InstanceEvent), now: Instant) {
        if let Some(limit) = &mut self.limit {
            if limit.unreported > 0 {
                let n = std::mem::take(&mut limit.unreported);
                limit.since = now;
                sink(InstanceEvent::Console(format!(
                    "[summon: console rate limit: {n} bytes of guest output dropped]"
                )));
            }
        }
    }

    fn split(&mut self, mut bytes: &[u8], sink: &dyn Fn(InstanceEvent)) {
        while !bytes.is_empty() {
            let room = MAX_LINE - self.line.len();
            let take = bytes.len().min(room);
            match bytes[..take].iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    self.line.extend_from_slice(&bytes[..nl]);
                    self.emit(sink);
                    bytes = &bytes[nl + 1..];
                }
                None => {
                    self.line.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if self.line.len() == MAX_LINE {
                        self.emit(sink);
                    }
                }
            }
        }
    }

    /// Delivers a pending partial line and drop notice (at guest exit).
    pub fn flush(&mut self, sink: &dyn Fn(InstanceEvent)) {
        if !self.line.is_empty() {
            self.emit(sink);
        }
        self.notice(sink, Instant::now());
    }

    fn emit(&mut self, sink: &dyn Fn(InstanceEvent)) {
        if self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
        let text = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        sink(InstanceEvent::Console(text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::EventSink;
    use std::sync::{Arc, Mutex};

    #[test]
    fn splits_lines_and_bounds_them() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let sink: EventSink = Arc::new(move |e| g.lock().unwrap().push(e));
        let mut c = Console::new(None);
        c.write(b"hel", &*sink);
        c.write(b"lo\r\nworld\n\npart", &*sink);
        c.write(&vec![b'x'; MAX_LINE + 1], &*sink);
        c.flush(&*sink);
        let got = got.lock().unwrap();
        let lines: Vec<String> = got
            .iter()
            .map(|e| match e {
                InstanceEvent::Console(s) => s.clone(),
                _ => panic!(),
            })
            .collect();
        assert_eq!(lines[0], "hello");
        assert_eq!(lines[1], "world");
        assert_eq!(lines[2], "");
        assert_eq!(lines[3].len(), MAX_LINE);
        assert!(lines[3].starts_with("partx"));
        assert_eq!(lines[4].len(), 5);
        assert_eq!(lines.len(), 5);
    }

    #[test]
    fn rate_limit_drops_the_excess_and_says_so_once() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let sink: EventSink = Arc::new(move |e| g.lock().unwrap().push(e));
        let mut c = Console::new(Some(10));
        assert_eq!(c.write(b"0123456789abcdef\n", &*sink), 7);
        assert_eq!(c.write(b"more\n", &*sink), 5);
        c.flush(&*sink);
        let got = got.lock().unwrap();
        assert_eq!(
            *got,
            vec![
                InstanceEvent::Console("0123456789".into()),
                InstanceEvent::Console(
                    "[summon: console rate limit: 12 bytes of guest output dropped]".into()
                ),
            ]
        );
    }
}
