//! `summon-run` as a drop-in for `solo5-hvt`: exit statuses, console output, flag and image
//! errors.

use summon_test_support::{guests, require};

use std::process::{Command, Output};

fn summon_run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_summon-run"))
        .args(args)
        .output()
        .expect("run summon-run")
}

fn image(name: &str) -> String {
    guests::build(name).display().to_string()
}

/// Whether /dev/kvm can be used (skips outside CI, fails under `CI=true`).
fn kvm() -> bool {
    require::check("KVM", require::kvm())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn exit_status_is_the_halt_status() {
    if !kvm() {
        return;
    }
    let o = summon_run(&["--mem=16", &image("hello")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "Hello from a Summon test guest\n"
    );
    let o = summon_run(&["--mem=16", "--", &image("panic"), "ignored", "args"]);
    assert_eq!(o.status.code(), Some(255), "{}", stderr(&o));
    // Default memory (512 MiB, as the reference tender) works too.
    let o = summon_run(&[&image("hello")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn guest_fault_exits_one_with_the_reason() {
    if !kvm() {
        return;
    }
    let o = summon_run(&["--mem=16", &image("badport")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("unknown port 0x600"), "{}", stderr(&o));
}

#[test]
fn bad_flags_exit_one_with_usage() {
    for args in [
        vec!["--bogus", "x.hvt"],
        vec!["--mem=lots", "x.hvt"],
        vec!["--net:service0", "x.hvt"],
        vec!["--net:a=tap0", "--net-mac:a=02:00:00:00:00", "x.hvt"],
        vec!["--block-sector-size:a=512", "x.hvt"],
        vec![],
    ] {
        let o = summon_run(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&o).contains("usage: summon-run"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
}

#[test]
fn malformed_image_is_refused_clearly() {
    if !kvm() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("text.hvt");
    std::fs::write(
        &text,
        "this is not an ELF file at all, just text\n".repeat(4),
    )
    .unwrap();
    let o = summon_run(&["--mem=16", text.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("text.hvt"), "{e}");
    assert!(e.contains("not an ELF file"), "{e}");

    let short = dir.path().join("short.hvt");
    std::fs::write(&short, b"\x7fELF").unwrap();
    let o = summon_run(&["--mem=16", short.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("short.hvt"), "{}", stderr(&o));

    let o = summon_run(&["--mem=16", "/nonexistent/x.hvt"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/nonexistent/x.hvt"), "{}", stderr(&o));

    // A valid image whose manifest device is not attached.
    let o = summon_run(&["--mem=16", &image("block")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--block:storage="), "{}", stderr(&o));
}

#[test]
fn sigterm_ends_a_spinning_guest_with_status_one() {
    if !kvm() {
        return;
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_summon-run"))
        .args(["--mem=16", &image("loop")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the guest's line so the signal arrives while it spins in KVM_RUN.
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 8];
    std::io::Read::read_exact(&mut out, &mut buf).unwrap();
    assert_eq!(&buf, b"looping\n");
    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
}

/// One guest, one VM: no probe VM thrown away, no prepared-vCPU pool torn down unused (each cost
/// whole milliseconds of the process's time). Counted from the ioctls themselves.
#[test]
fn creates_exactly_one_vm_and_one_vcpu() {
    if !kvm() || !require::check("strace", require::tool("strace")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("ioctls");
    let o = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=ioctl", "-o"])
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_summon-run"))
        .arg(image("hello"))
        .output()
        .expect("run strace");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let trace = std::fs::read_to_string(&trace).unwrap();
    let count = |ioctl: &str| trace.lines().filter(|l| l.contains(ioctl)).count();
    assert!(count("KVM_RUN") >= 1, "the guest never ran:\n{trace}");
    assert_eq!(count("KVM_CREATE_VM"), 1, "{trace}");
    assert_eq!(count("KVM_CREATE_VCPU"), 1, "{trace}");
}

/// Console output into a pipe nobody reads any more fails quietly (SIGPIPE ignored, as std's
/// start-up does for every Rust program): the guest still ends with its own status.
#[test]
fn console_into_a_closed_pipe_does_not_kill_the_tender() {
    if !kvm() {
        return;
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_summon-run"))
        .args(["--mem=16", &image("hello")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run summon-run");
    drop(child.stdout.take());
    let status = child.wait().expect("wait for summon-run");
    assert_eq!(status.code(), Some(0), "{status:?}");
}
