//! The image parser's own source files, compiled here as they are in `summon-launcher`.
//!
//! Mounted by path instead of depending on `summon-launcher`: the parser needs only the ABI
//! crate and `thiserror`, so the fuzzer builds without KVM crates, and a half-finished VMM module
//! elsewhere in the launcher cannot stop a fuzzing run. The code under test is the same files.

// On an inline module, `path` names the directory its file modules are read from.
#[path = "../../src/kvm"]
pub mod kvm {
    pub mod elf;
    pub mod image_error;
    pub mod manifest;
}
