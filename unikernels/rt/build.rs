//! Puts the platform's linker script where every binary that links `rt` finds it as `rt.ld`
//! (`-Trt.ld` in .cargo/config.toml searches the library path, which propagates to
//! dependents): hvt.ld by default, virtio.ld with the `virtio` feature; both INCLUDE the GDT
//! they share, written beside it as `rt-gdt.ld`.
use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let script: &[u8] = if env::var_os("CARGO_FEATURE_VIRTIO").is_some() {
        include_bytes!("virtio.ld")
    } else {
        include_bytes!("hvt.ld")
    };
    fs::write(out.join("rt.ld"), script).expect("write rt.ld to OUT_DIR");
    fs::write(out.join("rt-gdt.ld"), include_bytes!("gdt.ld")).expect("write rt-gdt.ld to OUT_DIR");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=hvt.ld");
    println!("cargo:rerun-if-changed=virtio.ld");
    println!("cargo:rerun-if-changed=gdt.ld");
}
