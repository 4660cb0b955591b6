//! A started libvirt domain behind the [`Instance`] interface, with a watcher thread that turns
//! the serial console log into console events and notices the domain ending on its own.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virt::domain::DomainState;

use super::conn::Conn;
use super::error::{LibvirtError, VIR_ERR_OPERATION_INVALID};
use super::state::{observe, Observed};
use super::StopMode;
use crate::backend::{BackendError, EventSink, Instance, InstanceEvent, InstanceState};

const POLL: Duration = Duration::from_millis(100);

pub struct LibvirtInstance {
    shared: Arc<Shared>,
}

struct Shared {
    conn: Arc<Conn>,
    uuid: String,
    name: String,
    stop: StopMode,
    events: EventSink,
    /// The end was reported (stopped on request, or seen ending); no more events follow.
    ended: AtomicBool,
    /// stop() is under way: the domain vanishing is its doing, not the guest's.
    stopping: AtomicBool,
    /// The handle was dropped: the watcher leaves the domain alone and exits.
    detached: AtomicBool,
    last: AtomicU8,
}

impl LibvirtInstance {
    pub(crate) fn new(
        conn: Arc<Conn>,
        uuid: String,
        name: String,
        stop: StopMode,
        events: EventSink,
        console: Option<Console>,
    ) -> LibvirtInstance {
        let shared = Arc::new(Shared {
            conn,
            uuid,
            name,
            stop,
            events,
            ended: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            detached: AtomicBool::new(false),
            last: AtomicU8::new(encode(InstanceState::Running)),
        });
        let watcher = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("libvirt-{}", shared.name))
            .spawn(move || watch(watcher, console));
        if let Err(e) = spawned {
            tracing::warn!(domain = %shared.name, error = %e, "no watcher thread: no console events");
        }
        LibvirtInstance { shared }
    }

    /// The domain's UUID, stable across reconnects.
    pub fn uuid(&self) -> &str {
        &self.shared.uuid
    }

    fn end(&self, event: InstanceEvent) {
        if !self.shared.ended.swap(true, Ordering::SeqCst) {
            self.shared
                .last
                .store(encode(InstanceState::Stopped), Ordering::SeqCst);
            (self.shared.events)(event);
        }
    }

    fn destroy(&self) -> Result<(), LibvirtError> {
        match self
            .shared
            .conn
            .with_domain(&self.shared.uuid, "destroy", |d| d.destroy())
        {
            Ok(()) => Ok(()),
            // Gone already (a transient domain that ended) or not running: stopped either way.
            Err(e) if e.is_no_domain() || is_operation_invalid(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn shutdown(&self, timeout: Duration) -> Result<(), LibvirtError> {
        match self
            .shared
            .conn
            .with_domain(&self.shared.uuid, "shutdown", |d| d.shutdown())
        {
            Ok(()) => {}
            Err(e) if e.is_no_domain() || is_operation_invalid(&e) => return Ok(()),
            Err(e) => return Err(e),
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.observe() {
                Ok(o) if o.instance_state() == InstanceState::Stopped => return Ok(()),
                Err(e) if e.is_no_domain() => return Ok(()),
                _ => std::thread::sleep(POLL),
            }
        }
        tracing::info!(domain = %self.shared.name, "shutdown timed out; destroying");
        self.destroy()
    }

    fn observe(&self) -> Result<Observed, LibvirtError> {
        self.shared
            .conn
            .with_domain(&self.shared.uuid, "get state", observe)
    }
}

fn is_operation_invalid(e: &LibvirtError) -> bool {
    matches!(e, LibvirtError::Call { code, .. } if *code == VIR_ERR_OPERATION_INVALID)
}

impl Instance for LibvirtInstance {
    fn stop(&self) -> Result<(), BackendError> {
        if self.shared.ended.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.shared.stopping.store(true, Ordering::SeqCst);
        let result = match self.shared.stop {
            StopMode::Destroy => self.destroy(),
            StopMode::Shutdown { timeout } => self.shutdown(timeout),
        };
        if let Err(e) = result {
            self.shared.stopping.store(false, Ordering::SeqCst);
            return Err(e.into());
        }
        self.end(InstanceEvent::Stopped);
        Ok(())
    }

    fn suspend(&self) -> Result<(), BackendError> {
        if self.shared.ended.load(Ordering::SeqCst) {
            return Err(BackendError::InvalidState(
                self.shared.name.clone(),
                "suspend",
            ));
        }
        self.shared
            .conn
            .with_domain(&self.shared.uuid, "suspend", |d| d.suspend())?;
        self.shared
            .last
            .store(encode(InstanceState::Paused), Ordering::SeqCst);
        Ok(())
    }

    fn resume(&self) -> Result<(), BackendError> {
        if self.shared.ended.load(Ordering::SeqCst) {
            return Err(BackendError::InvalidState(
                self.shared.name.clone(),
                "resume",
            ));
        }
        self.shared
            .conn
            .with_domain(&self.shared.uuid, "resume", |d| d.resume())?;
        self.shared
            .last
            .store(encode(InstanceState::Running), Ordering::SeqCst);
        Ok(())
    }

    /// Asks libvirt; when libvirt cannot be reached, the last state seen.
    fn state(&self) -> InstanceState {
        if self.shared.ended.load(Ordering::SeqCst) {
            return InstanceState::Stopped;
        }
        match self.observe() {
            Ok(o) => {
                let s = o.instance_state();
                self.shared.last.store(encode(s), Ordering::SeqCst);
                s
            }
            Err(e) if e.is_no_domain() => InstanceState::Stopped,
            Err(e) => {
                tracing::debug!(domain = %self.shared.name, error = %e, "state unknown");
                decode(self.shared.last.load(Ordering::SeqCst))
            }
        }
    }
}

impl Drop for LibvirtInstance {
    fn drop(&mut self) {
        self.shared.detached.store(true, Ordering::SeqCst);
    }
}

fn encode(s: InstanceState) -> u8 {
    match s {
        InstanceState::Running => 0,
        InstanceState::Paused => 1,
        InstanceState::Stopped => 2,
    }
}

fn decode(v: u8) -> InstanceState {
    match v {
        0 => InstanceState::Running,
        1 => InstanceState::Paused,
        _ => InstanceState::Stopped,
    }
}

/// Follows the console log and the domain's state until the domain ends or the handle goes.
fn watch(shared: Arc<Shared>, console: Option<Console>) {
    let mut tail = console.map(ConsoleTail::new);
    let mut last_check = Instant::now();
    loop {
        if shared.ended.load(Ordering::SeqCst) || shared.detached.load(Ordering::SeqCst) {
            if let Some(t) = tail.as_mut() {
                t.pump(&shared.events);
            }
            return;
        }
        if let Some(t) = tail.as_mut() {
            t.pump(&shared.events);
        }
        if last_check.elapsed() >= Duration::from_millis(250)
            && !shared.stopping.load(Ordering::SeqCst)
        {
            last_check = Instant::now();
            let ended = match shared.conn.with_domain(&shared.uuid, "get state", observe) {
                Ok(o) => match o.state {
                    DomainState::Shutoff if o.reason == SHUTOFF_CRASHED => Some(
                        InstanceEvent::Faulted(format!("libvirt: domain {} crashed", shared.name)),
                    ),
                    DomainState::Crashed => Some(InstanceEvent::Faulted(format!(
                        "libvirt: domain {} crashed",
                        shared.name
                    ))),
                    DomainState::Shutoff => Some(InstanceEvent::Exited(0)),
                    _ => None,
                },
                // A transient domain disappears when its guest powers off.
                Err(e) if e.is_no_domain() => Some(InstanceEvent::Exited(0)),
                Err(e) => {
                    tracing::debug!(domain = %shared.name, error = %e, "watcher: state unknown");
                    None
                }
            };
            if let Some(ev) = ended {
                if let Some(t) = tail.as_mut() {
                    t.pump(&shared.events);
                }
                if !shared.ended.swap(true, Ordering::SeqCst) {
                    shared
                        .last
                        .store(encode(InstanceState::Stopped), Ordering::SeqCst);
                    (shared.events)(ev);
                }
                return;
            }
        }
        std::thread::sleep(POLL / 2);
    }
}

/// libvirt's VIR_DOMAIN_SHUTOFF_CRASHED.
const SHUTOFF_CRASHED: i32 = 3;

/// A serial console log file to follow.
#[derive(Debug, Clone)]
pub(crate) struct Console {
    pub path: PathBuf,
    /// Skip what is in the file already (a domain that was running or paused before the summon:
    /// its old output is not news).
    pub from_end: bool,
}

/// Reads what the serial console wrote since the last call and emits whole lines.
struct ConsoleTail {
    path: PathBuf,
    file: Option<File>,
    offset: u64,
    partial: Vec<u8>,
}

impl ConsoleTail {
    fn new(console: Console) -> ConsoleTail {
        let offset = if console.from_end {
            std::fs::metadata(&console.path)
                .map(|m| m.len())
                .unwrap_or(0)
        } else {
            0
        };
        ConsoleTail {
            path: console.path,
            file: None,
            offset,
            partial: Vec::new(),
        }
    }

    fn pump(&mut self, events: &EventSink) {
        if self.file.is_none() {
            self.file = File::open(&self.path).ok();
        }
        let Some(f) = self.file.as_mut() else { return };
        // Truncated under us (the domain was started again with append='off'): start over.
        if f.metadata().is_ok_and(|m| m.len() < self.offset) {
            self.offset = 0;
            self.partial.clear();
        }
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = [0u8; 4096];
        loop {
            match f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    self.offset += n as u64;
                    self.partial.extend_from_slice(&buf[..n]);
                }
            }
        }
        while let Some(pos) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line[..pos]);
            events(InstanceEvent::Console(
                text.trim_end_matches('\r').to_string(),
            ));
        }
        // A guest printing without newlines must not grow this without bound.
        if self.partial.len() > 16 * 1024 {
            let text = String::from_utf8_lossy(&self.partial).into_owned();
            self.partial.clear();
            events(InstanceEvent::Console(text));
        }
    }
}
