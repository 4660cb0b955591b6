//! Links the summon-run binary as a static PIE.
//!
//! summon-run is a one-shot process whose whole run takes a few milliseconds, and a dynamic link
//! costs it on every start: the loader maps libc and libgcc_s, resolves their symbols, relocates
//! them, and libgcc_s's constructor runs `cpuid` several times (each a trap to the hypervisor on
//! a virtualised host). Static, the binary relocates itself and starts: 30 page faults fewer per
//! run here (docs/launcher.md, "summon-run against solo5-hvt").
//!
//! Cargo can set `+crt-static` only for every crate of a build (proc macros included, which it
//! breaks, and summond links libvirt dynamically), so this does what it would do, for this
//! binary only (`rustc-link-arg-bins`; the package's tests link as usual): rustc still asks the
//! linker for std's shared libraries (`-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc`), so a
//! directory searched before the system's holds linker scripts of those names that name the
//! static archives instead (libgcc_s: the unwinder libgcc_eh and libgcc; panics still unwind),
//! and `-static-pie` makes the link static and the binary position-independent (ASLR as before).
//! Where a static archive is missing (glibc's static libraries not installed), the binary is
//! linked dynamically as any other, with a build warning.

use std::path::{Path, PathBuf};
use std::process::Command;

/// std's shared libraries on linux-gnu, and the static archives that replace them.
const LIBS: &[(&str, &[&str])] = &[
    ("gcc_s", &["libgcc_eh.a", "libgcc.a"]),
    ("util", &["libutil.a"]),
    ("rt", &["librt.a"]),
    ("pthread", &["libpthread.a"]),
    ("m", &["libm.a"]),
    ("dl", &["libdl.a"]),
    ("c", &["libc.a"]),
];

/// Where the C compiler (the linker driver rustc uses) finds `archive`, if it does.
fn find_archive(archive: &str) -> Option<PathBuf> {
    let out = Command::new("cc")
        .arg(format!("-print-file-name={archive}"))
        .output()
        .ok()?;
    // Found: an absolute path; not found: the bare name back.
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    (path.is_absolute() && path.is_file()).then_some(path)
}

fn write_scripts(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for (name, archives) in LIBS {
        let mut paths = Vec::new();
        for archive in *archives {
            let path = find_archive(archive).ok_or_else(|| format!("no {archive}"))?;
            paths.push(path.display().to_string());
        }
        let script = dir.join(format!("lib{name}.so"));
        std::fs::write(&script, format!("GROUP ( {} )\n", paths.join(" ")))
            .map_err(|e| format!("{}: {e}", script.display()))?;
    }
    Ok(())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux")
        || std::env::var("CARGO_CFG_TARGET_ENV").as_deref() != Ok("gnu")
    {
        return;
    }
    let dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("static");
    match write_scripts(&dir) {
        Ok(()) => {
            println!("cargo:rustc-link-arg-bins=-L{}", dir.display());
            println!("cargo:rustc-link-arg-bins=-static-pie");
        }
        Err(e) => println!("cargo:warning=summon-run is linked dynamically: {e}"),
    }
}
