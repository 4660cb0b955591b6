//! An image's boot working set (launcher `kvm/working_set.rs`): the pages the first `http` guest
//! had touched when it first waited for the network are backed ahead of time in the memory of
//! the VMs prepared for the next starts, and a guest started on such memory serves as before.
//! Alone in its binary: it counts the shared test backend's prepared VMs.

use std::time::{Duration, Instant};

use summon_launcher::InstanceEvent;
use summon_tests::guest::{self, Guest, GUEST_MAC};
use summon_tests::http_client::Client;
use summon_tests::netns::NetNs;
use summon_tests::require;

const ARGS: &[&str] = &["--ipv4=10.0.0.2/24", "--ipv4-gateway=10.0.0.1", "--name=ws"];

/// Waits until the backend has a prepared VM again.
fn wait_prepared() {
    let t0 = Instant::now();
    while guest::backend().prewarmed() < 1 {
        assert!(t0.elapsed() < Duration::from_secs(10), "no VM prepared");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts `http` in a namespace of its own and checks that it serves `GET /`; then stops it.
fn serve_once(name: &str) {
    let ns = NetNs::new(name);
    ns.add_tap("tap0", "10.0.0.1/24");
    ns.add_neighbour("tap0", "10.0.0.2", GUEST_MAC);
    let g: Guest = guest::start_on_tap(&ns, "tap0", name, "http", ARGS);
    g.events
        .wait_for(Duration::from_secs(10), |e| *e == InstanceEvent::NetReady)
        .unwrap_or_else(|| panic!("{name} never polled its NIC: {}", g.events.console()));
    let page = ns.run(|| {
        let mut c = Client::connect("10.0.0.2:80".parse().unwrap()).expect("connect");
        c.get("/").expect("GET /")
    });
    assert_eq!(page.status, 200, "{name}");
    assert!(page.body.contains("<h1>ws</h1>"), "{name}: {}", page.body);
    g.instance.stop().expect("stop");
}

#[test]
fn the_next_prepared_vms_have_the_images_boot_pages_backed() {
    if !require::kvm_and_netns("KVM and network namespaces") {
        return;
    }
    // A guest that never waits for the network teaches no set: the VM prepared after its start
    // (of the same memory size) is the baseline.
    let hello = Guest::start(guest::spec(
        "uni-ws-hello",
        &summon_tests::image("hello"),
        &[],
        None,
    ))
    .expect("start hello");
    hello
        .events
        .wait_for(Duration::from_secs(10), |e| {
            matches!(e, InstanceEvent::Exited(_))
        })
        .unwrap_or_else(|| panic!("hello did not exit: {}", hello.events.console()));
    drop(hello);
    wait_prepared();
    let before = guest::backend().prewarmed_backed();
    assert_eq!(before.len(), 1, "one prepared VM's memory: {before:?}");
    // The first http guest learns the set at its first wait (the VM prepared after its start
    // may or may not have it, depending on whether the refill's quiet period ended first); the
    // one prepared after the second guest's start has it backed.
    serve_once("uni-ws-a");
    serve_once("uni-ws-b");
    wait_prepared();
    let after = guest::backend().prewarmed_backed();
    assert_eq!(after.len(), 1, "one prepared VM's memory: {after:?}");
    eprintln!(
        "prepared memory backed: {} KiB before the set was learned, {} KiB after",
        before[0] >> 10,
        after[0] >> 10
    );
    assert!(
        after[0] >= before[0] + (32 << 10),
        "prepared memory: {} bytes backed before the set was learned, {} after",
        before[0],
        after[0]
    );
    assert!(
        after[0] <= before[0] + (512 << 10),
        "more backed ahead than the cap: {} bytes against {}",
        after[0],
        before[0]
    );
    // A guest on that memory boots and serves as one on fresh memory does.
    serve_once("uni-ws-c");
}
