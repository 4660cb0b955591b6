//! Builds the hand-written test guests (launcher/tests/guests/*.S) with gcc at test time.

use std::path::{Path, PathBuf};
use std::process::Command;

fn guests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../launcher/tests/guests")
}

/// `target/tmp/guests`: the directory cargo names `CARGO_TARGET_TMPDIR` for integration tests
/// and benchmarks, found from the running test binary (`target/PROFILE/deps/NAME`), since a
/// library does not get that variable.
fn out_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("test binaries run from target/PROFILE/deps");
    target.join("tmp").join("guests")
}

/// Assembles and links `launcher/tests/guests/NAME.S` into an hvt image and returns its path.
/// Rebuilt when the source, hvt.h or the linker script is newer than the image.
pub fn build(name: &str) -> PathBuf {
    // Tests of one binary run in parallel threads: build one guest at a time per process.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let src_dir = guests_dir();
    let src = src_dir.join(format!("{name}.S"));
    let script = src_dir.join("guest.ld");
    let out_dir = out_dir();
    std::fs::create_dir_all(&out_dir).expect("create guest output dir");
    let out = out_dir.join(format!("{name}.hvt"));
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let newest_input = [&src, &script, &src_dir.join("hvt.h")]
        .iter()
        .filter_map(|p| mtime(p))
        .max();
    if let (Some(o), Some(i)) = (mtime(&out), newest_input) {
        if o >= i {
            return out;
        }
    }
    // Several test binaries may build the same guest at once: link to a private name, then
    // rename into place atomically.
    let tmp = out_dir.join(format!("{name}.{}.tmp", std::process::id()));
    let status = Command::new("gcc")
        .args(["-nostdlib", "-static", "-no-pie", "-Wl,--build-id=none"])
        .arg(format!("-Wl,-T,{}", script.display()))
        .arg("-I")
        .arg(&src_dir)
        .arg("-o")
        .arg(&tmp)
        .arg(&src)
        .status()
        .expect("run gcc (needed to build the test guests)");
    assert!(status.success(), "gcc failed to build guest {name}");
    std::fs::rename(&tmp, &out).expect("move guest into place");
    out
}
