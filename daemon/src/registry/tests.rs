//! Registry behaviour with a scripted backend and in-memory plumbing (no KVM, no netlink):
//! the state machine, one start per instance, backoff, limits, suspend/resume, reaping, reload.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use summon_launcher::{
    Backend, BackendError, Counters, EventSink, Instance, InstanceCounters, InstanceEvent,
    InstanceSpec, InstanceState, NetSpec, TapSource,
};

use super::*;
use crate::config::{Limits, ReplyMode, ServiceBackend, ServiceConfig, StopMode};
use crate::driver::{Lease, Traffic, NET_DEVICE};
use crate::net::{NetError, PlumbError, PlumbStep};

#[derive(Clone, Copy, PartialEq)]
enum Script {
    /// Starts, reports network-ready.
    Healthy,
    /// start() returns an error.
    FailStart,
    /// Starts, then halts at once (like `hello`).
    ExitAtOnce,
    /// Starts but never becomes ready.
    Silent,
}

/// What the fake instance's suspend does.
#[derive(Clone, Copy, PartialEq, Debug)]
enum SuspendScript {
    Ack,
    /// Blocks (like a vCPU that does not answer) until the script changes.
    Hold,
    /// Returns an error (the launcher's "not acknowledged").
    Fail,
}

type SuspendGate = Arc<(Mutex<SuspendScript>, std::sync::Condvar)>;

fn set_suspend(gate: &SuspendGate, to: SuspendScript) {
    *gate.0.lock().unwrap() = to;
    gate.1.notify_all();
}

struct FakeBackend {
    script: Mutex<Script>,
    suspend: SuspendGate,
    starts: AtomicU32,
    stops: Arc<AtomicU32>,
    boot_delay: Duration,
    fail_resume: Arc<AtomicBool>,
    /// `Hold` makes resumes wait (like a libvirt RPC) until it is set back.
    resume_gate: SuspendGate,
    /// The limits of the last spec started.
    last_limits: Mutex<Option<summon_launcher::GuestLimits>>,
    /// Live counters the instances report, like the embedded launcher's (`None`: none, like
    /// libvirt's).
    counters: Mutex<Option<Arc<InstanceCounters>>>,
}

struct FakeInstance {
    suspend: SuspendGate,
    paused: AtomicBool,
    stopped: AtomicBool,
    stops: Arc<AtomicU32>,
    resumes: Arc<AtomicU64>,
    fail_resume: Arc<AtomicBool>,
    resume_gate: SuspendGate,
    counters: Option<Arc<InstanceCounters>>,
}

impl Instance for FakeInstance {
    fn stop(&self) -> Result<(), BackendError> {
        if !self.stopped.swap(true, Ordering::SeqCst) {
            self.stops.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
    fn suspend(&self) -> Result<(), BackendError> {
        let (m, cv) = &*self.suspend;
        let mut script = m.lock().unwrap();
        while *script == SuspendScript::Hold {
            script = cv.wait(script).unwrap();
        }
        if *script == SuspendScript::Fail {
            return Err(BackendError::InvalidState(
                "fake".into(),
                "suspend (no ack)",
            ));
        }
        self.paused.store(true, Ordering::SeqCst);
        Ok(())
    }
    fn resume(&self) -> Result<(), BackendError> {
        let (m, cv) = &*self.resume_gate;
        let mut gate = m.lock().unwrap();
        while *gate == SuspendScript::Hold {
            gate = cv.wait(gate).unwrap();
        }
        drop(gate);
        if self.fail_resume.load(Ordering::SeqCst) {
            return Err(BackendError::InvalidState("fake".into(), "resume"));
        }
        self.paused.store(false, Ordering::SeqCst);
        self.resumes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn counters(&self) -> Option<Counters> {
        self.counters.clone().map(Counters::from)
    }
    fn state(&self) -> InstanceState {
        if self.stopped.load(Ordering::SeqCst) {
            InstanceState::Stopped
        } else if self.paused.load(Ordering::SeqCst) {
            InstanceState::Paused
        } else {
            InstanceState::Running
        }
    }
}

static RESUMES: std::sync::OnceLock<Arc<AtomicU64>> = std::sync::OnceLock::new();

impl Backend for FakeBackend {
    fn start(
        &self,
        spec: InstanceSpec,
        events: EventSink,
    ) -> Result<Box<dyn Instance>, BackendError> {
        self.starts.fetch_add(1, Ordering::SeqCst);
        assert_eq!(spec.nets.len(), 1);
        *self.last_limits.lock().unwrap() = Some(spec.limits);
        std::thread::sleep(self.boot_delay);
        let script = *self.script.lock().unwrap();
        if script == Script::FailStart {
            return Err(BackendError::InvalidState(spec.name, "start"));
        }
        let ev = events.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            match script {
                Script::Healthy => ev(InstanceEvent::NetReady),
                Script::ExitAtOnce => ev(InstanceEvent::Exited(0)),
                _ => {}
            }
        });
        Ok(Box::new(FakeInstance {
            suspend: self.suspend.clone(),
            paused: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            stops: self.stops.clone(),
            resumes: RESUMES.get_or_init(Default::default).clone(),
            fail_resume: self.fail_resume.clone(),
            resume_gate: self.resume_gate.clone(),
            counters: self.counters.lock().unwrap().clone(),
        }))
    }
}

#[derive(Default)]
struct FakePlumbing {
    live: Mutex<Vec<String>>,
    packets: AtomicU64,
    /// Calls of `towards_guest` (netlink reads, in the real plumbing).
    reads: AtomicU64,
    /// Makes teardown slow, so that a test can act while an instance is Stopping.
    teardown_delay_ms: AtomicU64,
}

impl FakePlumbing {
    async fn setup(&self, svc: &ServiceConfig) -> Result<Lease, PlumbError> {
        let tap = crate::net::tap_name(&svc.name);
        let mut live = self.live.lock().unwrap();
        if live.contains(&tap) {
            return Err(PlumbError::new(
                PlumbStep::TapOpen,
                &tap,
                NetError::Io {
                    what: "exists twice".into(),
                    source: std::io::ErrorKind::AlreadyExists.into(),
                },
            ));
        }
        live.push(tap.clone());
        Ok(Lease::Link {
            name: tap,
            index: 1,
        })
    }
    async fn teardown(&self, lease: Lease) {
        let delay = self.teardown_delay_ms.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let tap = lease.tap().map(str::to_string);
        self.live
            .lock()
            .unwrap()
            .retain(|t| Some(t) != tap.as_ref());
    }
    async fn towards_guest(&self, links: &[u32]) -> HashMap<u32, u64> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let n = self.packets.load(Ordering::SeqCst);
        links.iter().map(|&i| (i, n)).collect()
    }
}

/// The scripted backend and the in-memory plumbing as one service's driver.
struct FakeDriver {
    backend: Arc<FakeBackend>,
    plumbing: Arc<FakePlumbing>,
    /// Starts through this driver (each service has its own).
    starts: AtomicU32,
    /// Whether its calls count as short (KVM) or as possibly blocking (libvirt).
    inline: AtomicBool,
}

#[async_trait::async_trait]
impl Driver for FakeDriver {
    async fn setup(&self, svc: &ServiceConfig) -> Result<(Lease, Vec<NetSpec>), PlumbError> {
        let lease = self.plumbing.setup(svc).await?;
        let nets = vec![NetSpec {
            name: NET_DEVICE.to_string(),
            tap: TapSource::Name(lease.tap().unwrap_or_default().to_string()),
            mac: Some(svc.mac),
        }];
        Ok((lease, nets))
    }
    fn starts_inline(&self) -> bool {
        self.inline.load(Ordering::SeqCst)
    }
    fn resumes_inline(&self) -> bool {
        self.inline.load(Ordering::SeqCst)
    }
    fn start(
        &self,
        spec: InstanceSpec,
        events: EventSink,
    ) -> Result<Box<dyn Instance>, BackendError> {
        self.starts.fetch_add(1, Ordering::SeqCst);
        self.backend.start(spec, events)
    }
    fn traffic(&self, instance: &dyn Instance, lease: &Lease) -> Traffic {
        match (instance.counters(), lease) {
            (Some(c), _) => Traffic::Counted(c),
            (None, Lease::Link { index, .. }) => Traffic::Link(*index),
            _ => Traffic::Unknown,
        }
    }
    async fn teardown(&self, lease: Lease) {
        self.plumbing.teardown(lease).await
    }
}

/// Builds a driver of its own for each service it is asked for, and remembers them.
struct FakeDrivers {
    backend: Arc<FakeBackend>,
    plumbing: Arc<FakePlumbing>,
    built: Mutex<Vec<(String, Arc<FakeDriver>)>>,
    /// A service whose driver cannot be built (like a libvirt URI that does not answer).
    refuse: Mutex<Option<String>>,
}

impl FakeDrivers {
    /// The drivers built for `service`, oldest first.
    fn of(&self, service: &str) -> Vec<Arc<FakeDriver>> {
        let built = self.built.lock().unwrap();
        built
            .iter()
            .filter(|(n, _)| n == service)
            .map(|(_, d)| d.clone())
            .collect()
    }
}

#[async_trait::async_trait]
impl Drivers for FakeDrivers {
    fn for_service(&self, svc: &ServiceConfig) -> Result<Arc<dyn Driver>, DriverError> {
        if self.refuse.lock().unwrap().as_deref() == Some(svc.name.as_str()) {
            return Err(DriverError::Libvirt {
                service: svc.name.clone(),
                uri: "test:///unreachable".into(),
                source: Box::new(summon_launcher::libvirt::LibvirtError::Unsupported(
                    "refused by the test".into(),
                )),
            });
        }
        let d = Arc::new(FakeDriver {
            backend: self.backend.clone(),
            plumbing: self.plumbing.clone(),
            starts: AtomicU32::new(0),
            inline: AtomicBool::new(true),
        });
        self.built
            .lock()
            .unwrap()
            .push((svc.name.clone(), d.clone()));
        Ok(d)
    }
    async fn towards_guest(&self, links: &[u32]) -> HashMap<u32, u64> {
        self.plumbing.towards_guest(links).await
    }
}

fn svc(name: &str, last_octet: u8) -> ServiceConfig {
    ServiceConfig {
        name: name.into(),
        backend: ServiceBackend::Kvm,
        image: PathBuf::from("/nonexistent"),
        ip: Ipv4Addr::new(10, 77, 0, last_octet),
        mac: [2, 0, 0, 0, 0, last_octet].into(),
        memory_mib: 16,
        args: vec![],
        idle_timeout: Duration::from_millis(300),
        stop: StopMode::Destroy,
        reply: ReplyMode::Immediate,
        ready_timeout: Duration::from_secs(2),
        limits: Default::default(),
    }
}

struct Fixture {
    reg: Registry,
    backend: Arc<FakeBackend>,
    plumbing: Arc<FakePlumbing>,
    drivers: Arc<FakeDrivers>,
}

fn fixture(services: Vec<ServiceConfig>, limits: Limits, script: Script) -> Fixture {
    let backend = Arc::new(FakeBackend {
        script: Mutex::new(script),
        suspend: Arc::new((Mutex::new(SuspendScript::Ack), std::sync::Condvar::new())),
        resume_gate: Arc::new((Mutex::new(SuspendScript::Ack), std::sync::Condvar::new())),
        starts: AtomicU32::new(0),
        stops: Arc::new(AtomicU32::new(0)),
        boot_delay: Duration::from_millis(30),
        fail_resume: Arc::new(AtomicBool::new(false)),
        last_limits: Mutex::new(None),
        counters: Mutex::new(None),
    });
    let plumbing = Arc::new(FakePlumbing::default());
    let drivers = Arc::new(FakeDrivers {
        backend: backend.clone(),
        plumbing: plumbing.clone(),
        built: Mutex::new(Vec::new()),
        refuse: Mutex::new(None),
    });
    let reg = Registry::new(
        &services,
        limits,
        0,
        drivers.clone(),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    Fixture {
        reg,
        backend,
        plumbing,
        drivers,
    }
}

async fn wait_phase(slot: &Arc<Slot>, phase: Phase) {
    for _ in 0..400 {
        if slot.phase() == phase {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!(
        "{} stayed {:?}, wanted {:?}",
        slot.name,
        slot.phase(),
        phase
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_summons_share_one_start() {
    let f = fixture(vec![svc("web", 10)], Limits::default(), Script::Healthy);
    let slot = f.reg.get("web").unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let reg = f.reg.clone();
            let slot = slot.clone();
            tokio::spawn(async move { reg.summon(&slot).await })
        })
        .collect();
    for t in tasks {
        let (ip, _) = t.await.unwrap().unwrap();
        assert_eq!(ip, Ipv4Addr::new(10, 77, 0, 10));
    }
    assert_eq!(f.backend.starts.load(Ordering::SeqCst), 1);
    assert_eq!(slot.phase(), Phase::Running);
    assert_eq!(f.reg.summon(&slot).await.unwrap().1, Served::Warm);
    assert_eq!(f.backend.starts.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_guest_limits_reach_the_backend() {
    let limits = summon_launcher::GuestLimits {
        console_bytes_per_sec: Some(10),
        tx_frames_per_sec: Some(20),
        tx_bytes_per_sec: Some(30),
        exits_per_sec: Some(40),
        cpu_quota_percent: Some(25),
    };
    let mut s = svc("web", 10);
    s.limits = limits;
    let f = fixture(vec![s], Limits::default(), Script::Healthy);
    let slot = f.reg.get("web").unwrap();
    f.reg.summon(&slot).await.unwrap();
    assert_eq!(*f.backend.last_limits.lock().unwrap(), Some(limits));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_counters_are_live_plus_the_totals_of_ended_instances() {
    let f = fixture(vec![svc("web", 10)], Limits::default(), Script::Healthy);
    let slot = f.reg.get("web").unwrap();
    let line =
        |v: u64| format!("summon_guest_console_dropped_bytes_total{{service=\"web\"}} {v}\n");
    // Each instance gets counters of its own, as the launcher's do.
    let fresh = || {
        *f.backend.counters.lock().unwrap() = Some(Arc::new(InstanceCounters::default()));
    };
    let set = |v: u64| {
        let c = f.backend.counters.lock().unwrap().clone().unwrap();
        c.console_dropped_bytes.store(v, Ordering::Relaxed);
        c.exits_throttled.store(v * 10, Ordering::Relaxed);
    };
    fresh();
    f.reg.summon(&slot).await.unwrap();
    set(5);
    assert!(f.reg.render_metrics().contains(&line(5)));
    assert!(f.reg.stop(&slot, StopMode::Destroy, "test").await);
    // Ended: kept in the totals.
    let text = f.reg.render_metrics();
    assert!(text.contains(&line(5)), "{text}");
    fresh();
    f.reg.summon(&slot).await.unwrap();
    set(3);
    let text = f.reg.render_metrics();
    assert!(text.contains(&line(8)), "{text}");
    assert!(
        text.contains("summon_guest_exits_throttled_total{service=\"web\"} 80\n"),
        "{text}"
    );
    assert!(text.contains("# TYPE summon_guest_cpu_throttled_seconds_total counter"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_boot_backs_off_then_retries() {
    let limits = Limits {
        backoff_initial: Duration::from_millis(200),
        backoff_max: Duration::from_secs(1),
        ..Limits::default()
    };
    let f = fixture(vec![svc("bad", 11)], limits, Script::FailStart);
    let slot = f.reg.get("bad").unwrap();
    assert!(matches!(
        f.reg.summon(&slot).await,
        Err(SummonError::BootFailed(_))
    ));
    assert_eq!(slot.phase(), Phase::Failed);
    for _ in 0..20 {
        assert_eq!(f.reg.summon(&slot).await, Err(SummonError::BackingOff));
    }
    assert_eq!(f.backend.starts.load(Ordering::SeqCst), 1);
    assert!(
        f.plumbing.live.lock().unwrap().is_empty(),
        "tap left after failed boot"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    *f.backend.script.lock().unwrap() = Script::Healthy;
    assert_eq!(f.reg.summon(&slot).await.unwrap().1, Served::Cold);
    assert_eq!(f.backend.starts.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_exiting_before_ready_is_a_failed_boot() {
    let limits = Limits {
        backoff_initial: Duration::from_millis(300),
        ..Limits::default()
    };
    let f = fixture(vec![svc("hello", 12)], limits, Script::ExitAtOnce);
    let slot = f.reg.get("hello").unwrap();
    // Immediate mode answers as soon as the boot is under way.
    assert!(f.reg.summon(&slot).await.is_ok());
    wait_phase(&slot, Phase::Failed).await;
    assert_eq!(f.reg.summon(&slot).await, Err(SummonError::BackingOff));
    assert!(f.plumbing.live.lock().unwrap().is_empty());
    let m = f.reg.metrics().render();
    assert!(
        m.contains("summon_boot_failures_total{reason=\"exit\",service=\"hello\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refuse_at_once() {
    let limits = Limits {
        max_instances: 1,
        ..Limits::default()
    };
    let f = fixture(vec![svc("a", 10), svc("b", 11)], limits, Script::Healthy);
    let a = f.reg.get("a").unwrap();
    let b = f.reg.get("b").unwrap();
    f.reg.summon(&a).await.unwrap();
    let t = std::time::Instant::now();
    assert_eq!(
        f.reg.summon(&b).await,
        Err(SummonError::Limit(Limit::Instances))
    );
    assert!(t.elapsed() < Duration::from_millis(20));
    assert!(f.reg.stop(&a, StopMode::Destroy, "test").await);
    f.reg.summon(&b).await.unwrap();

    let limits = Limits {
        max_concurrent_boots: 1,
        ..Limits::default()
    };
    let f = fixture(vec![svc("a", 10), svc("b", 11)], limits, Script::Healthy);
    let a = f.reg.get("a").unwrap();
    let b = f.reg.get("b").unwrap();
    let reg = f.reg.clone();
    let first = tokio::spawn(async move { reg.summon(&a).await });
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        f.reg.summon(&b).await,
        Err(SummonError::Limit(Limit::Boots))
    );
    first.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_and_resume_without_reboot() {
    let mut s = svc("keep", 13);
    s.stop = StopMode::Suspend;
    let f = fixture(vec![s], Limits::default(), Script::Healthy);
    let slot = f.reg.get("keep").unwrap();
    f.reg.summon(&slot).await.unwrap();
    assert!(f.reg.stop(&slot, StopMode::Suspend, "test").await);
    assert_eq!(slot.phase(), Phase::Suspended);
    assert_eq!(
        f.plumbing.live.lock().unwrap().len(),
        1,
        "suspended instance keeps its tap"
    );
    assert_eq!(f.reg.summon(&slot).await.unwrap().1, Served::Resumed);
    assert_eq!(f.backend.starts.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_exports_one_instance_state_series() {
    let mut s = svc("cycle", 14);
    s.stop = StopMode::Suspend;
    let f = fixture(vec![s], Limits::default(), Script::Healthy);
    let slot = f.reg.get("cycle").unwrap();
    f.reg.summon(&slot).await.unwrap();
    assert!(f.reg.stop(&slot, StopMode::Suspend, "test").await);
    f.reg.summon(&slot).await.unwrap();
    assert!(f.reg.stop(&slot, StopMode::Destroy, "test").await);
    let text = f.reg.metrics().render();
    let series: Vec<_> = text
        .lines()
        .filter(|l| l.starts_with("summon_instances{") && l.contains("service=\"cycle\""))
        .collect();
    assert_eq!(series.len(), 1, "{series:?}");
    assert!(series[0].contains("state=\"stopped\"") && series[0].ends_with(" 1"));
}

// One worker: if the suspend's wait ran on it, nothing below could make progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_suspend_waiting_for_its_ack_blocks_no_worker_and_no_slot_lock() {
    let mut a = svc("sleepy", 20);
    a.stop = StopMode::Suspend;
    let f = fixture(
        vec![a, svc("other", 21)],
        Limits::default(),
        Script::Healthy,
    );
    let slot = f.reg.get("sleepy").unwrap();
    let other = f.reg.get("other").unwrap();
    f.reg.summon(&slot).await.unwrap();
    set_suspend(&f.backend.suspend, SuspendScript::Hold);
    let stop = {
        let (reg, slot) = (f.reg.clone(), slot.clone());
        tokio::spawn(async move { reg.stop(&slot, StopMode::Suspend, "test").await })
    };
    // The slot's lock is free (phase() takes it) and timers run while the suspend waits.
    wait_phase(&slot, Phase::Suspending).await;
    // A query for it waits for the outcome instead of being answered by a pausing guest...
    let waiting = {
        let (reg, slot) = (f.reg.clone(), slot.clone());
        tokio::spawn(async move { reg.summon(&slot).await })
    };
    // ...while another service boots and answers on the same single worker.
    let cold = tokio::time::timeout(Duration::from_secs(5), f.reg.summon(&other))
        .await
        .expect("another service's summon hung behind a blocked suspend");
    assert_eq!(cold.unwrap().1, Served::Cold);
    assert!(f.reg.instances().iter().any(|i| i.state == "suspending"));
    assert!(!waiting.is_finished() && !stop.is_finished());
    set_suspend(&f.backend.suspend, SuspendScript::Ack);
    assert!(stop.await.unwrap());
    // The waiting query resumes the now suspended instance; no second boot.
    assert_eq!(waiting.await.unwrap().unwrap().1, Served::Resumed);
    assert_eq!(slot.phase(), Phase::Running);
    assert_eq!(f.backend.starts.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_suspend_destroys_the_instance() {
    let mut a = svc("noack", 22);
    a.stop = StopMode::Suspend;
    let f = fixture(vec![a], Limits::default(), Script::Healthy);
    let slot = f.reg.get("noack").unwrap();
    f.reg.summon(&slot).await.unwrap();
    set_suspend(&f.backend.suspend, SuspendScript::Fail);
    assert!(f.reg.stop(&slot, StopMode::Suspend, "idle").await);
    assert_eq!(slot.phase(), Phase::Stopped);
    assert_eq!(f.backend.stops.load(Ordering::SeqCst), 1);
    assert!(f.plumbing.live.lock().unwrap().is_empty(), "tap left");
    // Its memory and place are given back: the next query boots it afresh.
    assert_eq!(f.reg.summon(&slot).await.unwrap().1, Served::Cold);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaper_stops_idle_and_spares_busy() {
    let f = fixture(vec![svc("idle", 14)], Limits::default(), Script::Healthy);
    let slot = f.reg.get("idle").unwrap();
    f.reg.summon(&slot).await.unwrap();
    let reaper = crate::reaper::spawn(f.reg.clone());
    // Traffic keeps it alive past idle_timeout (300 ms).
    for _ in 0..8 {
        f.plumbing.packets.fetch_add(3, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    f.plumbing.packets.fetch_add(3, Ordering::SeqCst);
    let last_traffic = std::time::Instant::now();
    assert_eq!(slot.phase(), Phase::Running);
    // Never before idle_timeout after the last traffic...
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(slot.phase(), Phase::Running);
    // ...and within idle_timeout + 1/8 of it + the 40 ms grid (350 ms), with slack for a busy
    // machine.
    wait_phase(&slot, Phase::Stopped).await;
    assert!(
        last_traffic.elapsed() < Duration::from_millis(700),
        "reaped {:?} after the last traffic",
        last_traffic.elapsed()
    );
    assert!(f.plumbing.live.lock().unwrap().is_empty());
    assert_eq!(f.backend.stops.load(Ordering::SeqCst), 1);
    reaper.abort();
}

/// With the launcher's counters, only frames delivered to the guest keep it alive; what the
/// guest sends does not, and no netlink read is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaper_counts_only_traffic_towards_the_guest() {
    let f = fixture(vec![svc("talk", 14)], Limits::default(), Script::Healthy);
    let c = Arc::new(InstanceCounters::default());
    *f.backend.counters.lock().unwrap() = Some(c.clone());
    let slot = f.reg.get("talk").unwrap();
    let reaper = crate::reaper::spawn(f.reg.clone());
    f.reg.summon(&slot).await.unwrap();
    let mut quiet = std::time::Instant::now();
    for _ in 0..10 {
        c.rx_frames.fetch_add(1, Ordering::Relaxed);
        quiet = std::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert_eq!(slot.phase(), Phase::Running, "frames to the guest keep it");
    let chatter = {
        let c = c.clone();
        tokio::spawn(async move {
            loop {
                c.tx_frames.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    wait_phase(&slot, Phase::Stopped).await;
    chatter.abort();
    assert!(
        quiet.elapsed() >= Duration::from_millis(300),
        "{:?}",
        quiet.elapsed()
    );
    assert_eq!(f.plumbing.reads.load(Ordering::SeqCst), 0);
    reaper.abort();
}

/// Running instances cost the reaper nothing until their deadline: no reads, one heap entry
/// each, and re-arming does not pile up entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaper_looks_only_at_due_instances() {
    let services: Vec<_> = (0..200u32)
        .map(|i| {
            let mut s = svc(&format!("s{i}"), 0);
            s.ip = Ipv4Addr::from(0x0a4d_0100 + i);
            s.idle_timeout = Duration::from_secs(3600);
            s
        })
        .collect();
    let f = fixture(
        services,
        Limits {
            max_instances: 500,
            max_concurrent_boots: 500,
            ..Limits::default()
        },
        Script::Healthy,
    );
    let reaper = crate::reaper::spawn(f.reg.clone());
    for i in 0..200 {
        f.reg
            .summon(&f.reg.get(&format!("s{i}")).unwrap())
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(f.plumbing.reads.load(Ordering::SeqCst), 0);
    assert_eq!(f.reg.shared.reap.len(), 200);
    // Suspend and resume one: its old entry lapses, the new one replaces it when due.
    let s0 = f.reg.get("s0").unwrap();
    assert!(f.reg.stop(&s0, StopMode::Suspend, "test").await);
    assert_eq!(f.reg.summon(&s0).await.unwrap().1, Served::Resumed);
    assert_eq!(f.reg.shared.reap.len(), 201);
    assert_eq!(f.reg.reap_idle().await.map(|_| ()), Some(()));
    reaper.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_mode_waits_and_times_out() {
    let mut s = svc("slow", 15);
    s.reply = ReplyMode::Ready;
    s.ready_timeout = Duration::from_millis(300);
    let f = fixture(vec![s], Limits::default(), Script::Silent);
    let slot = f.reg.get("slow").unwrap();
    assert_eq!(f.reg.summon(&slot).await, Err(SummonError::Timeout));
    wait_phase(&slot, Phase::Stopped).await;
    assert!(f.plumbing.live.lock().unwrap().is_empty());

    *f.backend.script.lock().unwrap() = Script::Healthy;
    assert_eq!(f.reg.summon(&slot).await.unwrap().1, Served::Cold);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_unchanged_and_replaces_changed() {
    let f = fixture(
        vec![svc("same", 10), svc("changed", 11), svc("gone", 12)],
        Limits::default(),
        Script::Healthy,
    );
    for n in ["same", "changed", "gone"] {
        let s = f.reg.get(n).unwrap();
        f.reg.summon(&s).await.unwrap();
    }
    let mut changed = svc("changed", 11);
    changed.memory_mib = 32;
    f.reg
        .apply(
            &[svc("same", 10), changed, svc("new", 13)],
            Limits::default(),
            0,
        )
        .await
        .unwrap();
    assert_eq!(f.reg.get("same").unwrap().phase(), Phase::Running);
    assert_eq!(f.reg.get("changed").unwrap().phase(), Phase::Stopped);
    assert_eq!(f.reg.get("changed").unwrap().config().memory_mib, 32);
    assert!(f.reg.get("gone").is_none());
    assert_eq!(f.reg.get("new").unwrap().phase(), Phase::Stopped);
    assert_eq!(
        f.plumbing.live.lock().unwrap().clone(),
        vec![crate::net::tap_name("same")]
    );
    f.reg.stop_all().await;
    assert!(f.plumbing.live.lock().unwrap().is_empty());
}

/// Each service's driver is built once, at load; a reload builds drivers only for new and
/// changed services, and every start goes through the driver of its service's current config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drivers_are_built_at_load_and_reload_and_used_per_service() {
    let f = fixture(
        vec![svc("a", 10), svc("b", 11)],
        Limits::default(),
        Script::Healthy,
    );
    for n in ["a", "b"] {
        assert_eq!(f.drivers.of(n).len(), 1, "{n}: one driver at load");
    }
    for _ in 0..2 {
        let a = f.reg.get("a").unwrap();
        f.reg.summon(&a).await.unwrap();
        assert!(f.reg.stop(&a, StopMode::Destroy, "test").await);
    }
    let b = f.reg.get("b").unwrap();
    f.reg.summon(&b).await.unwrap();
    assert_eq!(f.drivers.of("a")[0].starts.load(Ordering::SeqCst), 2);
    assert_eq!(f.drivers.of("b")[0].starts.load(Ordering::SeqCst), 1);
    assert_eq!(
        f.drivers.built.lock().unwrap().len(),
        2,
        "no driver per start"
    );

    let mut changed = svc("b", 11);
    changed.memory_mib = 32;
    f.reg
        .apply(&[svc("a", 10), changed, svc("c", 12)], Limits::default(), 0)
        .await
        .unwrap();
    assert_eq!(f.drivers.of("a").len(), 1, "unchanged: kept");
    assert_eq!(f.drivers.of("b").len(), 2, "changed: rebuilt");
    assert_eq!(f.drivers.of("c").len(), 1, "new: built");
    // The old instance of b was stopped (through its own driver's teardown) before the swap.
    assert!(f.plumbing.live.lock().unwrap().is_empty());
    let b = f.reg.get("b").unwrap();
    f.reg.summon(&b).await.unwrap();
    assert_eq!(f.drivers.of("b")[0].starts.load(Ordering::SeqCst), 1);
    assert_eq!(f.drivers.of("b")[1].starts.load(Ordering::SeqCst), 1);
    f.reg.stop_all().await;
    assert!(f.plumbing.live.lock().unwrap().is_empty());
}

/// A reload in which one service's driver cannot be built changes nothing: no service is
/// stopped, added, removed or given a new config or limits, and the error names the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_whose_driver_cannot_be_built_changes_nothing() {
    let f = fixture(
        vec![svc("keep", 10), svc("changed", 11), svc("gone", 12)],
        Limits::default(),
        Script::Healthy,
    );
    for n in ["keep", "changed", "gone"] {
        let s = f.reg.get(n).unwrap();
        f.reg.summon(&s).await.unwrap();
    }
    *f.drivers.refuse.lock().unwrap() = Some("new".into());
    let mut changed = svc("changed", 11);
    changed.memory_mib = 32;
    let limits = Limits {
        max_instances: 1,
        ..Limits::default()
    };
    let err = f
        .reg
        .apply(&[svc("keep", 10), changed, svc("new", 13)], limits, 0)
        .await
        .expect_err("the new service's driver is refused");
    assert!(err.to_string().contains("service new"), "{err}");
    for n in ["keep", "changed", "gone"] {
        assert_eq!(f.reg.get(n).unwrap().phase(), Phase::Running, "{n}");
    }
    assert_eq!(f.reg.get("changed").unwrap().config().memory_mib, 16);
    assert!(f.reg.get("new").is_none());
    assert_eq!(f.drivers.of("changed").len(), 2, "built, then dropped");
    assert_eq!(f.reg.shared.limits.read().unwrap().max_instances, 64);
    assert_eq!(f.plumbing.live.lock().unwrap().len(), 3);
    f.reg.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_during_a_boot_stops_the_instance_it_started() {
    let f = fixture(vec![svc("web", 10)], Limits::default(), Script::Healthy);
    let slot = f.reg.get("web").unwrap();
    let reg = f.reg.clone();
    let s2 = slot.clone();
    let summon = tokio::spawn(async move { reg.summon(&s2).await });
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(slot.phase(), Phase::Starting);
    let mut changed = svc("web", 10);
    changed.memory_mib = 64;
    f.reg.apply(&[changed], Limits::default(), 0).await.unwrap();
    let _ = summon.await.unwrap();
    assert_eq!(slot.phase(), Phase::Stopped);
    assert_eq!(slot.config().memory_mib, 64);
    assert!(f.plumbing.live.lock().unwrap().is_empty());
    assert_eq!(f.backend.stops.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_resume_destroys_and_the_next_query_boots() {
    for inline in [true, false] {
        let f = fixture(vec![svc("keep", 13)], Limits::default(), Script::Healthy);
        f.drivers.of("keep")[0]
            .inline
            .store(inline, Ordering::SeqCst);
        let slot = f.reg.get("keep").unwrap();
        f.reg.summon(&slot).await.unwrap();
        assert!(f.reg.stop(&slot, StopMode::Suspend, "test").await);
        f.backend.fail_resume.store(true, Ordering::SeqCst);
        match f.reg.summon(&slot).await {
            Err(SummonError::BootFailed(e)) => assert!(e.contains("resume"), "{e}"),
            other => panic!("inline {inline}: {other:?}"),
        }
        wait_phase(&slot, Phase::Stopped).await;
        assert!(f.plumbing.live.lock().unwrap().is_empty());
        assert_eq!(f.reg.summon(&slot).await.unwrap().1, Served::Cold);
        assert_eq!(f.backend.starts.load(Ordering::SeqCst), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_during_a_stop_boots_a_fresh_instance_after_it() {
    let f = fixture(vec![svc("race", 17)], Limits::default(), Script::Healthy);
    let slot = f.reg.get("race").unwrap();
    f.reg.summon(&slot).await.unwrap();
    f.plumbing.teardown_delay_ms.store(200, Ordering::SeqCst);
    let (reg, s) = (f.reg.clone(), slot.clone());
    let stop = tokio::spawn(async move { reg.stop(&s, StopMode::Destroy, "idle").await });
    wait_phase(&slot, Phase::Stopping).await;
    let (_, served) = f
        .reg
        .summon(&slot)
        .await
        .expect("a query racing the stop boots again");
    assert_eq!(served, Served::Cold);
    assert!(stop.await.unwrap());
    assert_eq!(slot.phase(), Phase::Running);
    assert_eq!(f.backend.starts.load(Ordering::SeqCst), 2);
    assert_eq!(f.plumbing.live.lock().unwrap().len(), 1);
}

/// Beyond what the host's limits hold a boot is refused at once with `Limit::Host` (reason
/// `limit`), never tried until a thread or a mapping fails half-way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boots_beyond_the_host_capacity_are_refused_as_limit() {
    let f = fixture(
        vec![svc("a", 10), svc("b", 11)],
        Limits::default(),
        Script::Healthy,
    );
    f.reg.set_host_capacity(1, "vm.max_map_count");
    let a = f.reg.get("a").unwrap();
    let b = f.reg.get("b").unwrap();
    f.reg.summon(&a).await.unwrap();
    let e = f.reg.summon(&b).await.unwrap_err();
    assert_eq!(e, SummonError::Limit(Limit::Host));
    assert_eq!(e.result_label(), "limit");
    assert_eq!(f.backend.starts.load(Ordering::SeqCst), 1);
    assert!(f
        .reg
        .metrics()
        .render()
        .contains("summon_summons_total{result=\"limit\",service=\"b\"} 1"));
    assert!(f.reg.stop(&a, StopMode::Destroy, "test").await);
    f.reg.summon(&b).await.unwrap();
}

/// Polls `f` once in place, as the DNS UDP loop does: whether it was ready at once.
fn ready_at_first_poll<F: std::future::Future>(f: F) -> bool {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    f.as_mut().poll(&mut cx).is_ready()
}

#[tokio::test]
async fn a_resume_that_may_block_is_not_ready_at_the_first_poll() {
    for inline in [true, false] {
        let mut s = svc("nap", 22);
        s.stop = StopMode::Suspend;
        let f = fixture(vec![s], Limits::default(), Script::Healthy);
        f.drivers.of("nap")[0]
            .inline
            .store(inline, Ordering::SeqCst);
        let slot = f.reg.get("nap").unwrap();
        f.reg.summon(&slot).await.unwrap();
        // A warm answer is ready at once whatever the backend.
        assert!(ready_at_first_poll(f.reg.summon(&slot)), "inline {inline}");
        assert!(f.reg.stop(&slot, StopMode::Suspend, "test").await);
        assert_eq!(
            ready_at_first_poll(f.reg.summon(&slot)),
            inline,
            "inline {inline}"
        );
        // KVM resumed in that poll; libvirt's resume goes on in a task of its own, which the
        // dropped query does not cancel.
        wait_phase(&slot, Phase::Running).await;
        assert_eq!(f.reg.summon(&slot).await.unwrap().1, Served::Warm);
    }
}

/// A resume that waits (a libvirt RPC) holds neither the slot's lock nor a tokio worker: the
/// slot reads `Resuming` meanwhile, another service keeps answering, and every query that
/// waited is answered as resumed once it is done, none of them booting another instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_resume_holds_no_lock_and_no_worker() {
    let mut s = svc("nap", 22);
    s.stop = StopMode::Suspend;
    let f = fixture(
        vec![s, svc("other", 23)],
        Limits::default(),
        Script::Healthy,
    );
    f.drivers.of("nap")[0].inline.store(false, Ordering::SeqCst);
    let slot = f.reg.get("nap").unwrap();
    let other = f.reg.get("other").unwrap();
    f.reg.summon(&slot).await.unwrap();
    f.reg.summon(&other).await.unwrap();
    assert!(f.reg.stop(&slot, StopMode::Suspend, "test").await);
    set_suspend(&f.backend.resume_gate, SuspendScript::Hold);
    let queries: Vec<_> = (0..4)
        .map(|_| {
            let (reg, s) = (f.reg.clone(), slot.clone());
            tokio::spawn(async move { reg.summon(&s).await })
        })
        .collect();
    wait_phase(&slot, Phase::Resuming).await;
    for _ in 0..20 {
        assert_eq!(f.reg.summon(&other).await.unwrap().1, Served::Warm);
    }
    assert_eq!(slot.phase(), Phase::Resuming);
    set_suspend(&f.backend.resume_gate, SuspendScript::Ack);
    for q in queries {
        assert_eq!(q.await.unwrap().unwrap().1, Served::Resumed);
    }
    assert_eq!(slot.phase(), Phase::Running);
    assert_eq!(f.backend.starts.load(Ordering::SeqCst), 2);
}
