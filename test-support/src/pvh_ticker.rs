//! The PVH test kernel for the libvirt tests and benches (the launcher's and summon-tests'):
//! launcher/tests/libvirt_guest/pvh-ticker.S (32-bit PVH entry, prints on COM1), assembled and
//! linked with the host's gcc and ld.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `src/pvh-ticker.S` with `src/pvh.ld` into `dir/ticker.elf`, world-readable (QEMU
/// runs as libvirt-qemu); `src` is the launcher's tests/libvirt_guest.
pub fn build(src: &Path, dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let obj = dir.join("ticker.o");
    let elf = dir.join("ticker.elf");
    let ok = Command::new("gcc")
        .args(["-m32", "-c"])
        .arg(src.join("pvh-ticker.S"))
        .arg("-o")
        .arg(&obj)
        .status()
        .unwrap()
        .success();
    assert!(ok, "gcc failed on pvh-ticker.S");
    let ok = Command::new("ld")
        .args(["-m", "elf_i386", "-T"])
        .arg(src.join("pvh.ld"))
        .arg("-o")
        .arg(&elf)
        .arg(&obj)
        .status()
        .unwrap()
        .success();
    assert!(ok, "ld failed on pvh-ticker.o");
    std::fs::set_permissions(&elf, std::fs::Permissions::from_mode(0o644)).unwrap();
    elf
}
