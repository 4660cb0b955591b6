//! Puts the linker script where every binary that links `rt` finds it (`-Thvt.ld` in
//! .cargo/config.toml searches the library path, which propagates to dependents).
use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::write(out.join("hvt.ld"), include_bytes!("hvt.ld")).expect("write hvt.ld to OUT_DIR");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=hvt.ld");
}
