//! The process-wide parts of `summon_daemon::logging` (subscriber and panic hook), in their own
//! test process: a panic's message and tracing events reach the sink through the queue, and a
//! panicking thread does not wait for a stalled sink beyond a short bound.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Records everything; stalls every write while `stall` is set.
#[derive(Clone, Default)]
struct Sink {
    out: Arc<Mutex<Vec<u8>>>,
    stall: Arc<Mutex<bool>>,
}

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        while *self.stall.lock().unwrap() {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.out.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn panics_and_events_go_through_the_queue_and_never_wait_long() {
    let sink = Sink::default();
    let q = summon_daemon::logging::init_with(sink.clone()).unwrap();
    tracing::info!("an event before the panic");
    let r = std::thread::Builder::new()
        .name("doomed".into())
        .spawn(|| panic!("deliberate test panic"))
        .unwrap()
        .join();
    assert!(r.is_err());
    assert!(q.flush(Duration::from_secs(5)));
    let text = String::from_utf8_lossy(&sink.out.lock().unwrap()).into_owned();
    assert!(text.contains("an event before the panic"), "{text}");
    assert!(
        text.contains("summond: thread 'doomed' panicked at")
            && text.contains("deliberate test panic"),
        "{text}"
    );

    // With the sink stalled, a panic costs its thread at most the hook's short wait.
    *sink.stall.lock().unwrap() = true;
    tracing::info!("this one sits in the writer");
    let t = Instant::now();
    let r = std::thread::spawn(|| panic!("while stalled")).join();
    assert!(r.is_err());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    *sink.stall.lock().unwrap() = false;
    assert!(q.flush(Duration::from_secs(5)));
    let text = String::from_utf8_lossy(&sink.out.lock().unwrap()).into_owned();
    assert!(text.contains("while stalled"), "{text}");
}
