//! The launcher's own test helpers, those that need its types (event sinks); the rest is
//! `summon-test-support`'s.

pub use summon_test_support::guests;
use summon_test_support::require;

use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::Duration;

use summon_launcher::{EventSink, InstanceEvent};

/// Whether /dev/kvm can be used (skips outside CI, fails under `CI=true`).
pub fn kvm_available() -> bool {
    require::check("KVM", require::kvm())
}

/// An event sink feeding a channel.
pub fn event_channel() -> (EventSink, Receiver<InstanceEvent>) {
    let (tx, rx) = channel();
    let tx = std::sync::Mutex::new(tx);
    let sink: EventSink = Arc::new(move |e| {
        let _ = tx.lock().unwrap().send(e);
    });
    (sink, rx)
}

/// Waits for the final event (Exited, Faulted or Stopped), collecting console lines.
pub fn wait_end(rx: &Receiver<InstanceEvent>, timeout: Duration) -> (Vec<String>, InstanceEvent) {
    let deadline = std::time::Instant::now() + timeout;
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(InstanceEvent::Console(l)) => lines.push(l),
            Ok(InstanceEvent::NetReady) => {}
            Ok(e) => return (lines, e),
            Err(_) => panic!("no final event within {timeout:?}; console so far: {lines:?}"),
        }
    }
}

/// Waits (up to `timeout`) for the next console line, skipping NetReady.
// Each test binary compiles this module; only kvm_boot and kvm_guard wait for console lines.
#[allow(dead_code)]
pub fn next_line(rx: &Receiver<InstanceEvent>, timeout: Duration) -> String {
    loop {
        match rx.recv_timeout(timeout).expect("console line") {
            InstanceEvent::Console(l) => return l,
            InstanceEvent::NetReady => {}
            other => panic!("expected console output, got {other:?}"),
        }
    }
}
