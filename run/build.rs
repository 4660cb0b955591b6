//! Links the unwinder (libgcc_eh) into summon-run instead of loading libgcc_s.so at start-up.
//!
//! summon-run is a one-shot process whose whole run is a few milliseconds, and libgcc_s costs it
//! on every start: the dynamic loader opens, maps and relocates one more library, and its
//! constructor (`__cpu_indicator_init`) runs `cpuid` several times, each a trap to the
//! hypervisor on a virtualised host. std only needs the `_Unwind_*` functions from it (panics
//! still unwind: the vCPU thread's `catch_unwind` turns a launcher panic into a guest fault).
//! Whole-archive, because rustc places this library before std's rlibs on the link line: only
//! that way are the symbols defined when std asks for them, and `--as-needed` then leaves
//! libgcc_s.so out.
//!
//! A fully static summon-run would save about 30 more page faults per run (docs/launcher.md,
//! "summon-run against solo5-hvt"), but cargo sets `+crt-static` only for every crate of a build,
//! and forcing it from here (`-static-pie`, linker scripts standing in for std's shared
//! libraries) breaks in the package build: built together with summond, summon-launcher's
//! `libvirt` feature is on for summon-run too, `-lvirt` brings the shared libc back into the
//! link, and the result is a static PIE with dynamic relocations that crashes once stripped.
fn main() {
    println!("cargo:rustc-link-lib=static:+whole-archive=gcc_eh");
    println!("cargo:rerun-if-changed=build.rs");
}
