//! The initial vCPU state of the hvt ABI (section 2): already in 64-bit long mode.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use summon_hvt_abi::{
    BOOT_INFO_BASE, CR0_INIT, CR4_INIT, EFER_INIT, GDT_BASE, PML4_BASE, RFLAGS_INIT, SELECTOR_CODE,
    SELECTOR_DATA,
};

use super::layout::GDT_LIMIT;

fn code_segment() -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: SELECTOR_CODE,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        ..Default::default()
    }
}

fn data_segment() -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: SELECTOR_DATA,
        type_: 0x3,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        ..Default::default()
    }
}

/// Long-mode special registers, starting from `base` (the vCPU's reset state, so that fields the
/// ABI does not name, such as the APIC base, keep KVM's defaults).
pub fn long_mode_sregs(base: &kvm_sregs) -> kvm_sregs {
    let mut s = *base;
    s.cs = code_segment();
    let data = data_segment();
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = kvm_segment {
        base: 0,
        limit: 0,
        selector: 0,
        type_: 11,
        present: 1,
        ..Default::default()
    };
    s.ldt = kvm_segment {
        type_: 2,
        present: 0,
        unusable: 1,
        ..Default::default()
    };
    s.gdt.base = GDT_BASE;
    s.gdt.limit = GDT_LIMIT;
    s.idt.base = 0;
    s.idt.limit = 0;
    s.cr0 = CR0_INIT;
    s.cr2 = 0;
    s.cr3 = PML4_BASE;
    s.cr4 = CR4_INIT;
    s.efer = EFER_INIT;
    s
}

/// General registers: entry point, stack at the top of memory, boot info in RDI.
pub fn initial_regs(entry: u64, mem_size: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsp: mem_size - 8,
        rdi: BOOT_INFO_BASE,
        rflags: RFLAGS_INIT,
        ..Default::default()
    }
}
