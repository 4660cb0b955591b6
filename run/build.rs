//! Links the unwinder (libgcc_eh) into summon-run instead of loading libgcc_s.so at start-up.
//!
//! summon-run is a one-shot process whose whole run is a few milliseconds, and libgcc_s costs it
//! on every start: the dynamic loader opens, maps and relocates one more library, and its
//! constructor (`__cpu_indicator_init`) runs `cpuid` several times, each a trap to the
//! hypervisor on a virtualised host. std only needs the `_Unwind_*` functions from it (panics
//! still unwind: the vCPU thread's `catch_unwind` turns a launcher panic into a guest fault).
//! Whole-archive, because rustc places this library before std's rlibs on the link line: only
//! that way are the symbols defined when std asks for them, and `--as-needed` then leaves
//! libgcc_s.so out. (A fully static summon-run is faster still, but cargo cannot set
//! `+crt-static` for one package; see docs/launcher.md, "summon-run against solo5-hvt".)
fn main() {
    println!("cargo:rustc-link-lib=static:+whole-archive=gcc_eh");
    println!("cargo:rerun-if-changed=build.rs");
}
