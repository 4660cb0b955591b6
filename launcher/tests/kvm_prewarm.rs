//! Prepared vCPUs run their guests at the process's priority, not at the refill thread's
//! lowered one (alone in its own test binary: it looks at every thread of the process).

use std::time::{Duration, Instant};

use summon_launcher::kvm::KvmBackend;
use summon_test_support::require;

/// (name, nice) of every thread of this process.
fn threads() -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("read /proc/self/task") {
        let path = task.expect("task entry").path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("stat")),
        ) else {
            continue; // the thread ended meanwhile
        };
        // Fields after the parenthesised command name: state is field 3, nice field 19.
        let rest = &stat[stat.rfind(')').expect("stat has a comm") + 2..];
        let nice = rest
            .split(' ')
            .nth(16)
            .and_then(|n| n.parse().ok())
            .expect("nice in stat");
        out.push((comm.trim().to_string(), nice));
    }
    out
}

#[test]
fn prepared_vcpu_threads_keep_the_process_priority() {
    if !require::check("KVM", require::kvm()) {
        return;
    }
    // SAFETY: getpriority on this thread's own id; -1 with errno set is not checked because
    // nice -1 is a valid answer and the comparison below would then fail loudly anyway.
    let base =
        i64::from(unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) });
    let backend = KvmBackend::with_prewarm(2).expect("KVM backend");
    let t0 = Instant::now();
    let vcpus = loop {
        let all = threads();
        let vcpus: Vec<i64> = all
            .iter()
            .filter(|(n, _)| n == "vcpu")
            .map(|(_, nice)| *nice)
            .collect();
        if vcpus.len() >= 2 {
            let refill = all.iter().find(|(n, _)| n == "kvm-prewarm");
            assert_eq!(
                refill.map(|r| r.1),
                Some(10),
                "refill thread niced: {all:?}"
            );
            break vcpus;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the pool did not prepare 2 vCPUs: {all:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        vcpus.iter().all(|n| *n == base),
        "prepared vCPU threads at nice {vcpus:?}, the process at {base}"
    );
    drop(backend);
}
