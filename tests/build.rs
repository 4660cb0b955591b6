//! Builds the unikernels workspace (`unikernels/`, target x86_64-unknown-none) as part of the
//! normal build, twice: for rt's hvt platform (images copied to `unikernels/target/hvt/NAME.hvt`,
//! the documented path the tests, benchmarks and the demo config use) and for its virtio
//! platform (feature `virtio`, its own target dir, images at `unikernels/target/virtio/NAME.virtio`
//! for QEMU `-kernel` and libvirt).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const IMAGES: &[&str] = &["hello", "http"];
/// Images built for hvt alone: guests aimed at the embedded launcher's limits.
const HVT_ONLY: &[&str] = &["hostile"];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("tests/ sits in the repository")
        .to_path_buf();
    let unikernels = root.join("unikernels");
    let target_dir = unikernels.join("target");

    for path in [
        "Cargo.toml",
        "Cargo.lock",
        ".cargo/config.toml",
        "rt",
        "hello",
        "http",
        "http-request",
        "hostile",
    ] {
        println!("cargo:rerun-if-changed={}", unikernels.join(path).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("abi").display());

    build(&unikernels, &target_dir, &[]);
    let virtio_target = target_dir.join("virtio-build");
    let features: Vec<String> = IMAGES.iter().map(|i| format!("{i}/virtio")).collect();
    let mut virtio_args = vec![
        "--features".to_string(),
        features.join(","),
        "--workspace".to_string(),
    ];
    for name in HVT_ONLY {
        virtio_args.extend(["--exclude".to_string(), name.to_string()]);
    }
    build(&unikernels, &virtio_target, &virtio_args);

    let hvt_images: Vec<&str> = IMAGES.iter().chain(HVT_ONLY).copied().collect();
    let hvt = install(&target_dir, &target_dir, "hvt", &hvt_images);
    println!("cargo:rustc-env=SUMMON_UNIKERNEL_DIR={}", hvt.display());
    let virtio = install(&virtio_target, &target_dir, "virtio", IMAGES);
    println!("cargo:rustc-env=SUMMON_VIRTIO_DIR={}", virtio.display());
}

/// Runs the unikernels' cargo build into `target_dir` with `extra` arguments.
fn build(unikernels: &Path, target_dir: &Path, extra: &[String]) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    // Run inside unikernels/ so its .cargo/config.toml (target, linker script) applies, and
    // keep the outer build's settings out: its flags, target dir and wrappers (clippy's too)
    // are for the host crates, not for the guests.
    cmd.current_dir(unikernels)
        .args(["build", "--release", "--target", "x86_64-unknown-none"])
        .arg("--manifest-path")
        .arg(unikernels.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .args(extra);
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let leaks = (key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_MAKEFLAGS")
            || key.starts_with("RUSTC")
            || matches!(
                key,
                "RUSTFLAGS"
                    | "RUSTDOCFLAGS"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "PROFILE"
                    | "OPT_LEVEL"
                    | "DEBUG"
                    | "NUM_JOBS"
                    | "RUSTDOC"
            );
        if leaks {
            cmd.env_remove(key);
        }
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the unikernels: {e}"));
    assert!(
        status.success(),
        "building the unikernels failed ({status})"
    );
}

/// Copies the images built in `built_dir` to `target_dir/PLATFORM/NAME.PLATFORM`.
fn install(built_dir: &Path, target_dir: &Path, platform: &str, images: &[&str]) -> PathBuf {
    let built = built_dir.join("x86_64-unknown-none").join("release");
    let dir = target_dir.join(platform);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    for name in images {
        let (from, to) = (built.join(name), dir.join(format!("{name}.{platform}")));
        copy(&from, &to);
        // Deleted or replaced images bring this script back. Both files keep the inner build's
        // mtime, so an unchanged image never looks newer than this run and causes no rerun.
        println!("cargo:rerun-if-changed={}", from.display());
        println!("cargo:rerun-if-changed={}", to.display());
    }
    dir
}

fn copy(from: &Path, to: &Path) {
    // Write to a temporary name and rename, so a test running meanwhile never sees half a file.
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), tmp.display()));
    let mtime = std::fs::metadata(from)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("mtime of {}: {e}", from.display()));
    std::fs::File::options()
        .write(true)
        .open(&tmp)
        .and_then(|f| f.set_modified(mtime))
        .unwrap_or_else(|e| panic!("set mtime of {}: {e}", tmp.display()));
    std::fs::rename(&tmp, to)
        .unwrap_or_else(|e| panic!("rename {} to {}: {e}", tmp.display(), to.display()));
}
