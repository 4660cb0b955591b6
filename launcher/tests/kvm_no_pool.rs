//! A backend without a prepared-vCPU pool (`with_prewarm(0)`, summon-run's): its first start runs
//! on the VM it probed at construction, later starts on VMs prepared inline, and guests of
//! different memory sizes boot on both.

mod support;

use std::time::Duration;

use summon_launcher::kvm::KvmBackend;
use summon_launcher::{InstanceEvent, InstanceSpec};

fn hello(memory_mib: u64) -> InstanceSpec {
    InstanceSpec {
        name: "hello".into(),
        image: support::guests::build("hello"),
        memory_mib,
        nets: vec![],
        blocks: vec![],
        args: vec![],
        limits: Default::default(),
    }
}

#[test]
fn probed_vm_then_inline_vms_boot_guests() {
    if !support::kvm_available() {
        return;
    }
    let backend = KvmBackend::with_prewarm(0).unwrap();
    assert_eq!(backend.prewarmed(), 0);
    for mib in [16, 16, 32] {
        let (sink, rx) = support::event_channel();
        let inst = backend.start_kvm(hello(mib), sink).unwrap();
        let (lines, end) = support::wait_end(&rx, Duration::from_secs(20));
        assert_eq!(lines, vec!["Hello from a Summon test guest".to_string()]);
        assert_eq!(end, InstanceEvent::Exited(0), "{mib} MiB");
        inst.join();
    }
    assert_eq!(backend.prewarmed(), 0);
}
