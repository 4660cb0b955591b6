//! Guests started through the launcher's `Backend` trait, with their events collected.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::netns::NetNs;
use summon_launcher::kvm::KvmBackend;
use summon_launcher::{tap, MacAddr};
use summon_launcher::{
    Backend, BackendError, EventSink, Instance, InstanceEvent, InstanceSpec, NetSpec, TapSource,
};

/// The MAC the tests give guests (locally administered).
pub const GUEST_MAC: MacAddr = MacAddr::new([0x02, 0x00, 0x00, 0x00, 0x00, 0x02]);

/// One backend per test process: it caches CPUID and parsed images, as the daemon's does.
pub fn backend() -> &'static KvmBackend {
    static BACKEND: OnceLock<KvmBackend> = OnceLock::new();
    BACKEND.get_or_init(|| KvmBackend::new().expect("open /dev/kvm"))
}

/// Events in arrival order, each with the time it arrived.
type Log = Mutex<Vec<(Instant, InstanceEvent)>>;

/// Events of one instance.
#[derive(Clone, Default)]
pub struct Events {
    inner: Arc<(Log, Condvar)>,
}

impl Events {
    pub fn sink(&self) -> EventSink {
        let inner = self.inner.clone();
        Arc::new(move |event| {
            let (list, cond) = &*inner;
            list.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((Instant::now(), event));
            cond.notify_all();
        })
    }

    /// The first event matching `pred`, waiting up to `timeout` for it.
    pub fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&InstanceEvent) -> bool,
    ) -> Option<(Instant, InstanceEvent)> {
        let deadline = Instant::now() + timeout;
        let (list, cond) = &*self.inner;
        let mut guard = list.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(found) = guard.iter().find(|(_, e)| pred(e)) {
                return Some(found.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            guard = cond
                .wait_timeout(guard, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The guest's end: `Ok(status)` for HALT, `Err(reason)` for a fault or stop.
    pub fn wait_end(&self, timeout: Duration) -> Result<i32, String> {
        let end = self.wait_for(timeout, InstanceEvent::is_end);
        match end {
            Some((_, InstanceEvent::Exited(status))) => Ok(status),
            Some((_, other)) => Err(format!("{other:?}; console: {}", self.console())),
            None => Err(format!(
                "no end within {timeout:?}; console: {}",
                self.console()
            )),
        }
    }

    /// Console output so far, one line per event.
    pub fn console(&self) -> String {
        let (list, _) = &*self.inner;
        let list = list.lock().unwrap_or_else(|p| p.into_inner());
        list.iter()
            .filter_map(|(_, e)| match e {
                InstanceEvent::Console(line) => Some(format!("{line}\n")),
                _ => None,
            })
            .collect()
    }
}

/// A running guest; stopped when dropped.
pub struct Guest {
    pub instance: Box<dyn Instance>,
    pub events: Events,
}

impl Guest {
    pub fn start(spec: InstanceSpec) -> Result<Guest, BackendError> {
        let events = Events::default();
        let instance = backend().start(spec, events.sink())?;
        Ok(Guest { instance, events })
    }
}

/// Starts the image `image_name` with `args` inside `ns` on its tap `dev`, which is opened
/// there: a tap is found by name only in its own namespace.
pub fn start_on_tap(ns: &NetNs, dev: &str, name: &str, image_name: &str, args: &[&str]) -> Guest {
    ns.run(|| {
        let fd = tap::open(dev, tap::Blocking::No).unwrap_or_else(|e| panic!("open {dev}: {e:?}"));
        Guest::start(spec(
            name,
            &crate::image(image_name),
            args,
            Some(TapSource::Fd(fd)),
        ))
        .unwrap_or_else(|e| panic!("start {image_name}: {e:?}"))
    })
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.instance.stop();
    }
}

/// A spec for `image` with `args`, 16 MiB and the given taps (as manifest device `service`).
pub fn spec(name: &str, image: &Path, args: &[&str], tap: Option<TapSource>) -> InstanceSpec {
    InstanceSpec {
        name: name.into(),
        image: image.to_path_buf(),
        memory_mib: 16,
        nets: tap
            .map(|tap| NetSpec {
                name: "service".into(),
                tap,
                mac: Some(GUEST_MAC),
            })
            .into_iter()
            .collect(),
        blocks: Vec::new(),
        args: args.iter().map(|s| s.to_string()).collect(),
        limits: Default::default(),
    }
}
