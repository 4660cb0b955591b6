//! Ending the guest. `halt(status)` prints `rt: exit status N` on the console (the only place a
//! libvirt user sees it), then tries in turn:
//! 1. QEMU's `isa-debug-exit` device at its default port 0x501 (if the VM has one, e.g.
//!    `-device isa-debug-exit`): QEMU exits at once with code `status * 2 + 1`;
//! 2. ACPI soft-off through the PIIX4 power-management block of the `pc` machine (found by PCI
//!    ID 8086:7113, its I/O base enabled here if the firmware left it off): QEMU shuts down
//!    (exit 0; libvirt: `shutoff`, reason `shutdown`);
//! 3. a triple fault (the IDT is cleared, then `ud2`): QEMU resets, or exits with
//!    `-no-reboot`; libvirt's `<on_reboot>destroy</on_reboot>` ends the domain; Xen crashes it.

use super::pci;
use super::pio::{inw, outb, outw};

const DEBUG_EXIT_PORT: u16 = 0x501;
/// Where the PM block goes if the firmware did not place it (SeaBIOS and qboot use 0x600).
const PM_BASE_DEFAULT: u32 = 0x600;
const SLP_EN: u16 = 1 << 13;

/// Ends the guest with `status` (0 success, 1 failure, 255 abort).
pub fn halt(status: i32) -> ! {
    crate::println!("rt: exit status {status}");
    outb(DEBUG_EXIT_PORT, status as u8);
    acpi_off();
    triple_fault()
}

fn acpi_off() {
    let Some(pm) = pci::find(0x8086, 0x7113, 0) else {
        return;
    };
    let mut pmba = pm.read32(0x40);
    if pmba & 0xffc0 == 0 {
        pmba = PM_BASE_DEFAULT | 1;
        pm.write32(0x40, pmba);
    }
    let misc = pm.read32(0x80);
    if misc & 1 == 0 {
        pm.write32(0x80, misc | 1);
    }
    let base = (pmba & 0xffc0) as u16;
    // PM1a control: SLP_TYP 0 is S5 in QEMU's PIIX4 DSDT.
    let cnt = inw(base + 4);
    outw(base + 4, (cnt & !(7 << 10)) | SLP_EN);
}

fn triple_fault() -> ! {
    // SAFETY: the virtio IDT has 256 gates; clearing them makes the next exception
    // undeliverable, which is the point: #UD -> #NP -> #DF -> shutdown.
    unsafe {
        crate::platform::trap::clear(256);
        core::arch::asm!("ud2", options(noreturn));
    }
}
