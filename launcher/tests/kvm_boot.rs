//! Boots the hand-written test guests through `KvmBackend` on the real /dev/kvm.

mod support;

use std::time::Duration;

use summon_launcher::kvm::KvmBackend;
use summon_launcher::{Backend, InstanceEvent, InstanceSpec, InstanceState};

fn spec(name: &str, guest: &str) -> InstanceSpec {
    InstanceSpec {
        name: name.to_string(),
        image: support::guests::build(guest),
        memory_mib: 16,
        nets: vec![],
        blocks: vec![],
        args: vec![],
    }
}

const LONG: Duration = Duration::from_secs(20);

#[test]
fn hello_prints_and_exits_zero() {
    if !support::kvm_available() {
        return;
    }
    let backend = KvmBackend::new().unwrap();
    let (sink, rx) = support::event_channel();
    let inst = backend.start(spec("hello", "hello"), sink).unwrap();
    let (lines, end) = support::wait_end(&rx, LONG);
    assert_eq!(lines, vec!["Hello from a Summon test guest".to_string()]);
    assert_eq!(end, InstanceEvent::Exited(0));
    assert_eq!(inst.state(), InstanceState::Stopped);
}
