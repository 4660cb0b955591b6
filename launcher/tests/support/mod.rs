//! Shared helpers of the launcher's integration tests.
#![allow(dead_code)]

pub mod guests;

use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::Duration;

use summon_launcher::{EventSink, InstanceEvent};

/// Whether /dev/kvm can be used. Under CI=true a missing KVM fails the test; elsewhere the test
/// is skipped with a printed reason.
pub fn kvm_available() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("/dev/kvm is required under CI: {e}");
            }
            eprintln!("skipping: /dev/kvm unavailable: {e}");
            false
        }
    }
}

/// Whether a command-line tool exists (same CI rule as [`kvm_available`]).
pub fn tool_available(tool: &str) -> bool {
    let ok = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{tool} is required under CI");
        }
        eprintln!("skipping: {tool} not found");
    }
    ok
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
