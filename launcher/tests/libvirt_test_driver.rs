//! The libvirt backend against libvirt's built-in `test:///default` driver (in-process, no
//! daemon): every state transition and error path, with libvirt's own messages.
//!
//! The test driver keeps its state while at least one connection to it is open, so each test
//! holds its own connection (`Host`) beside the backend's, plays the part of libvirtd, and
//! defines domains under names unique to the test.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use summon_launcher::libvirt::{
    destroy_leftovers, DomainSource, Generated, GuestKind, LibvirtBackend, LibvirtConfig,
    LibvirtError, StopMode,
};
use summon_launcher::{
    Backend, BackendError, EventSink, InstanceEvent, InstanceSpec, InstanceState, NetSpec,
    TapSource,
};
use virt::connect::Connect;

const URI: &str = "test:///default";

struct Host {
    conn: Connect,
}

impl Host {
    fn new() -> Host {
        Host {
            conn: Connect::open(Some(URI)).expect("test:///default opens in-process"),
        }
    }

    /// Defines a persistent domain (shut off) with one NIC of this MAC.
    fn define(&self, name: &str, mac: &str) -> String {
        let xml = format!(
            "<domain type='test'><name>{name}</name><memory unit='MiB'>16</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64'>hvm</type></os><devices>\
             <interface type='ethernet'><mac address='{mac}'/></interface></devices></domain>"
        );
        self.conn
            .define_domain_xml(&xml)
            .expect("define")
            .uuid_string()
            .unwrap()
    }

    fn state(&self, name: &str) -> virt::domain::DomainState {
        let d = self
            .conn
            .lookup_domain_by_name(name)
            .expect("domain exists");
        d.state().unwrap().0.known().unwrap()
    }

    fn undefine(&self, name: &str) {
        if let Ok(d) = self.conn.lookup_domain_by_name(name) {
            let _ = d.destroy();
            let _ = d.undefine();
        }
    }
}

fn recorder() -> (EventSink, Arc<Mutex<Vec<InstanceEvent>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    (Arc::new(move |e| s.lock().unwrap().push(e)), seen)
}

fn spec(name: &str) -> InstanceSpec {
    InstanceSpec {
        name: name.to_string(),
        image: "/nonexistent/kernel.virtio".into(),
        memory_mib: 32,
        nets: Vec::new(),
        blocks: Vec::new(),
        args: vec!["--ipv4=10.0.0.2/24".into()],
        limits: Default::default(),
    }
}

fn existing(name: &str, stop: StopMode) -> LibvirtBackend {
    LibvirtBackend::new(LibvirtConfig {
        uri: URI.into(),
        domain: DomainSource::Existing(name.into()),
        stop,
    })
    .expect("backend connects")
}

fn wait_for(seen: &Mutex<Vec<InstanceEvent>>, want: &InstanceEvent) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if seen.lock().unwrap().contains(want) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

use virt::domain::DomainState as S;

#[test]
fn existing_domain_start_suspend_resume_destroy() {
    let host = Host::new();
    let name = "lv-t-cycle";
    host.define(name, "52:54:00:00:00:01");
    let backend = existing(name, StopMode::Destroy);
    let info = backend.inspect(name).unwrap();
    assert_eq!(info.state, InstanceState::Stopped);
    assert_eq!(info.macs, vec![[0x52, 0x54, 0, 0, 0, 1]]);

    let (sink, seen) = recorder();
    let inst = backend.start(spec(name), sink).unwrap();
    assert_eq!(host.state(name), S::Running);
    assert_eq!(inst.state(), InstanceState::Running);

    inst.suspend().unwrap();
    assert_eq!(host.state(name), S::Paused);
    assert_eq!(inst.state(), InstanceState::Paused);

    inst.resume().unwrap();
    assert_eq!(host.state(name), S::Running);

    inst.stop().unwrap();
    assert_eq!(
        host.state(name),
        S::Shutoff,
        "destroy leaves the domain defined, shut off"
    );
    assert_eq!(inst.state(), InstanceState::Stopped);
    inst.stop().unwrap(); // idempotent
    assert_eq!(
        seen.lock()
            .unwrap()
            .iter()
            .filter(|e| **e == InstanceEvent::Stopped)
            .count(),
        1
    );
    assert!(matches!(
        inst.suspend(),
        Err(BackendError::InvalidState(..))
    ));
    host.undefine(name);
}

#[test]
fn existing_domain_by_uuid_paused_is_resumed_not_restarted() {
    let host = Host::new();
    let name = "lv-t-paused";
    let uuid = host.define(name, "52:54:00:00:00:02");
    let d = host.conn.lookup_domain_by_name(name).unwrap();
    d.create().unwrap();
    d.suspend().unwrap();
    let backend = existing(&uuid, StopMode::Destroy);
    let (sink, _) = recorder();
    let inst = backend.start(spec(name), sink).unwrap();
    assert_eq!(host.state(name), S::Running);
    // Still the same run: the domain id did not change.
    assert_eq!(host.conn.lookup_domain_by_name(name).unwrap().id(), d.id());
    // Running already: start is a no-op.
    let (sink2, _) = recorder();
    backend.start(spec(name), sink2).unwrap();
    assert_eq!(host.conn.lookup_domain_by_name(name).unwrap().id(), d.id());
    inst.stop().unwrap();
    host.undefine(name);
}

#[test]
fn shutdown_stop_mode_shuts_the_domain_off() {
    let host = Host::new();
    let name = "lv-t-shutdown";
    host.define(name, "52:54:00:00:00:03");
    let backend = existing(
        name,
        StopMode::Shutdown {
            timeout: Duration::from_secs(2),
        },
    );
    let (sink, seen) = recorder();
    let inst = backend.start(spec(name), sink).unwrap();
    inst.stop().unwrap();
    assert_eq!(host.state(name), S::Shutoff);
    assert!(seen.lock().unwrap().contains(&InstanceEvent::Stopped));
    host.undefine(name);
}

#[test]
fn unknown_domain_reports_libvirts_message() {
    let _host = Host::new();
    let backend = existing("lv-t-no-such-domain", StopMode::Destroy);
    let (sink, _) = recorder();
    let err = match backend.start(spec("x"), sink) {
        Err(BackendError::Libvirt(e)) => e,
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("an unknown domain started"),
    };
    assert!(err.is_no_domain(), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("Domain not found"),
        "libvirt's text missing: {msg}"
    );
    assert!(msg.contains("lv-t-no-such-domain"), "{msg}");
    // Unknown UUID too.
    let err = backend
        .inspect("00000000-0000-0000-0000-00000000beef")
        .unwrap_err();
    assert!(err.is_no_domain(), "{err}");
}

#[test]
fn bad_uri_reports_libvirts_message() {
    let err = LibvirtBackend::new(LibvirtConfig {
        uri: "nosuchdriver:///system".into(),
        domain: DomainSource::Existing("x".into()),
        stop: StopMode::Destroy,
    })
    .err()
    .expect("no such driver");
    let msg = err.to_string();
    assert!(
        msg.contains("nosuchdriver:///system") && msg.contains("open connection"),
        "{msg}"
    );
    assert!(matches!(err, LibvirtError::Call { .. }));
}

#[test]
fn invalid_transitions_report_libvirts_message() {
    let host = Host::new();
    let name = "lv-t-invalid";
    host.define(name, "52:54:00:00:00:04");
    let backend = existing(name, StopMode::Destroy);
    let (sink, _) = recorder();
    let inst = backend.start(spec(name), sink).unwrap();
    // Resuming a running domain: libvirt refuses, and says why.
    let err = inst.resume().unwrap_err().to_string();
    assert!(
        err.contains("resume") && err.contains("not paused"),
        "{err}"
    );
    inst.suspend().unwrap();
    let err = inst.suspend().unwrap_err().to_string();
    assert!(
        err.contains("suspend") && err.contains("not running"),
        "{err}"
    );
    inst.stop().unwrap();
    host.undefine(name);
}

#[test]
fn reconnects_after_the_connection_is_closed() {
    let host = Host::new();
    let name = "lv-t-reconnect";
    host.define(name, "52:54:00:00:00:05");
    let backend = existing(name, StopMode::Destroy);
    let (sink, _) = recorder();
    let inst = backend.start(spec(name), sink).unwrap();
    backend.conn().disconnect();
    // The next operations open a new connection and find the domain again by UUID.
    inst.suspend().unwrap();
    assert_eq!(host.state(name), S::Paused);
    assert_eq!(inst.state(), InstanceState::Paused);
    backend.conn().disconnect();
    inst.resume().unwrap();
    assert_eq!(host.state(name), S::Running);
    inst.stop().unwrap();
    assert_eq!(host.state(name), S::Shutoff);
    host.undefine(name);
}

#[test]
fn domain_ending_outside_summond_is_reported() {
    let host = Host::new();
    let name = "lv-t-external";
    host.define(name, "52:54:00:00:00:06");
    let backend = existing(name, StopMode::Destroy);
    let (sink, seen) = recorder();
    let inst = backend.start(spec(name), sink).unwrap();
    host.conn
        .lookup_domain_by_name(name)
        .unwrap()
        .destroy()
        .unwrap();
    assert!(
        wait_for(&seen, &InstanceEvent::Exited(0)),
        "{:?}",
        seen.lock().unwrap()
    );
    assert_eq!(inst.state(), InstanceState::Stopped);
    host.undefine(name);
}

fn generated(kind: GuestKind) -> LibvirtBackend {
    let mut gen = Generated::new(kind);
    gen.console_dir = std::env::temp_dir();
    LibvirtBackend::new(LibvirtConfig {
        uri: URI.into(),
        domain: DomainSource::Generated(gen),
        stop: StopMode::Destroy,
    })
    .unwrap()
}

#[test]
fn generated_transient_domain_lives_and_goes() {
    let host = Host::new();
    let backend = generated(GuestKind::Kvm);
    let mut s = spec("lv-t-gen");
    s.nets.push(NetSpec {
        name: "service".into(),
        tap: TapSource::Name("smv-lvtgen".into()),
        mac: Some([0x02, 0, 0, 0, 0, 7].into()),
    });
    let (sink, _) = recorder();
    let inst = backend.start(s, sink).unwrap();
    let name = "summon-lv-t-gen";
    assert_eq!(host.state(name), S::Running);
    let d = host.conn.lookup_domain_by_name(name).unwrap();
    assert!(
        !d.is_persistent().unwrap(),
        "generated domains are transient"
    );
    let xml = d.xml_desc(0).unwrap();
    assert!(
        xml.contains("02:00:00:00:00:07") && xml.contains("smv-lvtgen"),
        "{xml}"
    );
    inst.suspend().unwrap();
    assert_eq!(host.state(name), S::Paused);
    inst.resume().unwrap();
    inst.stop().unwrap();
    assert!(
        host.conn.lookup_domain_by_name(name).is_err(),
        "destroyed transient domain is gone"
    );
}

#[test]
fn leftover_generated_domains_are_replaced_and_cleaned() {
    let host = Host::new();
    let backend = generated(GuestKind::Kvm);
    let (sink, _) = recorder();
    let first = backend.start(spec("lv-t-left"), sink).unwrap();
    let first_id = host
        .conn
        .lookup_domain_by_name("summon-lv-t-left")
        .unwrap()
        .id();
    drop(first); // the daemon "crashed": the domain stays
    let (sink, _) = recorder();
    let second = backend.start(spec("lv-t-left"), sink).unwrap();
    let second_id = host
        .conn
        .lookup_domain_by_name("summon-lv-t-left")
        .unwrap()
        .id();
    assert_ne!(first_id, second_id, "the leftover was replaced");
    drop(second);
    let gone = destroy_leftovers(backend.conn()).unwrap();
    assert!(gone.contains(&"summon-lv-t-left".to_string()), "{gone:?}");
    assert!(host.conn.lookup_domain_by_name("summon-lv-t-left").is_err());
}

#[test]
fn generated_domain_refuses_what_libvirt_cannot_do() {
    let _host = Host::new();
    let backend = generated(GuestKind::Kvm);
    let mut s = spec("lv-t-fd");
    let fd = std::fs::File::open("/dev/null").unwrap();
    s.nets.push(NetSpec {
        name: "service".into(),
        tap: TapSource::Fd(fd.into()),
        mac: None,
    });
    let (sink, _) = recorder();
    let err = backend
        .start(s, sink)
        .err()
        .expect("fd refused")
        .to_string();
    assert!(err.contains("give its name"), "{err}");
    // A persistent domain of someone else's under our name is never destroyed.
    let host = Host::new();
    host.define("summon-lv-t-theirs", "52:54:00:00:00:08");
    host.conn
        .lookup_domain_by_name("summon-lv-t-theirs")
        .unwrap()
        .create()
        .unwrap();
    let (sink, _) = recorder();
    let err = backend
        .start(spec("lv-t-theirs"), sink)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("not generated by summond"), "{err}");
    assert_eq!(host.state("summon-lv-t-theirs"), S::Running);
    host.undefine("summon-lv-t-theirs");
}
