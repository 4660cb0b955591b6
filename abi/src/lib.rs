//! The Solo5 "hvt" ABI, version 2, as the embedded launcher and the `rt` library OS both see it.
//!
//! One definition, two readers: the launcher (host side, `std`) and `rt` (guest side,
//! `x86_64-unknown-none`). Everything here is `#[repr(C)]` plain data whose layout is fixed by
//! the ABI; the `const` assertions at the bottom pin every size and offset the ABI document names,
//! so a layout slip fails the build instead of corrupting a guest.
//!
//! The document this mirrors is `docs/hvt-abi.md`.
#![no_std]

/// ELF `e_entry` and every `PT_LOAD` segment must lie at or above this guest-physical address.
pub const LOAD_BASE: u64 = 0x10_0000;
/// Guest-physical address of the GDT the tender writes.
pub const GDT_BASE: u64 = 0x1000;
/// Guest-physical address of the tender's PML4 (also the initial CR3).
pub const PML4_BASE: u64 = 0x2000;
/// Guest-physical address of the tender's PDPT (4 entries).
pub const PDPT_BASE: u64 = 0x3000;
/// Guest-physical address of the first of the 4 page directories (`0x4000..0x7fff`).
pub const PD_BASE: u64 = 0x4000;
/// Guest-physical address of the page table that maps the first 2 MiB with 4 KiB pages.
pub const PT_BASE: u64 = 0x8000;
/// Guest-physical address of [`BootInfo`]; the manifest copy and the command line follow it.
pub const BOOT_INFO_BASE: u64 = 0x1_0000;
/// Size of the command-line buffer the tender writes after the manifest (NUL included).
pub const CMDLINE_SIZE: usize = 8192;
/// Lowest guest-physical address that is mapped at all (`0..0xffff` is a guard).
pub const LOW_GUARD_END: u64 = 0x1_0000;

/// Code segment selector of the tender's GDT.
pub const SELECTOR_CODE: u16 = 0x08;
/// Data segment selector of the tender's GDT.
pub const SELECTOR_DATA: u16 = 0x10;

/// Initial control registers (long mode, paging on).
pub const CR0_INIT: u64 = 0x8001_0021; // PE | NE | WP | PG
pub const CR4_INIT: u64 = 0x620; // PAE | OSFXSR | OSXMMEXCPT
pub const EFER_INIT: u64 = 0x500; // LME | LMA
pub const RFLAGS_INIT: u64 = 0x2;

/// Guest memory bounds: `--mem` is rounded down to a multiple of 2 MiB within these.
pub const MEM_ALIGN: u64 = 2 << 20;
pub const MEM_MIN: u64 = 2 << 20;
pub const MEM_MAX: u64 = 4 << 30;

/// Port of hypercall `nr` is `HYPERCALL_PIO_BASE + nr`.
pub const HYPERCALL_PIO_BASE: u16 = 0x500;

/// Hypercall numbers.
pub mod nr {
    pub const WALLTIME: u16 = 1;
    pub const PUTS: u16 = 2;
    pub const POLL: u16 = 3;
    pub const BLOCK_WRITE: u16 = 4;
    pub const BLOCK_READ: u16 = 5;
    pub const NET_WRITE: u16 = 6;
    pub const NET_READ: u16 = 7;
    pub const HALT: u16 = 8;
    /// Highest valid hypercall number.
    pub const MAX: u16 = 8;
}

/// `ret` values of hypercalls that have one.
pub mod ret {
    pub const OK: i32 = 0;
    pub const AGAIN: i32 = 1;
    pub const EINVAL: i32 = 2;
    pub const EUNSPEC: i32 = 3;
}

/// HALT exit statuses with a conventional meaning.
pub mod exit {
    pub const SUCCESS: i32 = 0;
    pub const FAILURE: i32 = 1;
    pub const ABORT: i32 = 255;
}

/// ELF note owner name, NUL included (`n_namesz == 6`).
pub const NOTE_NAME: &[u8; 6] = b"Solo5\0";
/// Note header (12 bytes) plus the name padded to 8 bytes.
pub const NOTE_DESC_OFFSET: usize = 20;
/// Note type of the ABI note ("ABI1").
pub const NOTE_TYPE_ABI: u32 = 0x3149_4241;
/// Note type of the manifest note ("MFT1").
pub const NOTE_TYPE_MFT: u32 = 0x3154_464d;
/// Largest `n_descsz` of the ABI note.
pub const ABI_NOTE_DESC_MAX: u32 = 32;
/// Padding between the note descriptor start and `struct mft`.
pub const MFT_NOTE_PAD: usize = 4;
/// Largest `n_descsz` of the manifest note.
pub const MFT_NOTE_DESC_MAX: u32 = 6668;

/// `abi_target` values; only [`ABI_TARGET_HVT`] runs here.
pub const ABI_TARGET_HVT: u32 = 1;
pub const ABI_TARGET_SPT: u32 = 2;
pub const ABI_TARGET_VIRTIO: u32 = 3;
pub const ABI_TARGET_MUEN: u32 = 4;
pub const ABI_TARGET_GENODE: u32 = 5;
pub const ABI_TARGET_XEN: u32 = 6;
/// The hvt ABI version this crate describes.
pub const ABI_VERSION: u32 = 2;

/// Human name of an `abi_target`, for error messages.
pub fn abi_target_name(target: u32) -> &'static str {
    match target {
        ABI_TARGET_HVT => "hvt",
        ABI_TARGET_SPT => "spt",
        ABI_TARGET_VIRTIO => "virtio",
        ABI_TARGET_MUEN => "muen",
        ABI_TARGET_GENODE => "genode",
        ABI_TARGET_XEN => "xen",
        _ => "unknown",
    }
}

/// Descriptor of the ABI note.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AbiNote {
    pub abi_target: u32,
    pub abi_version: u32,
    pub reserved0: u32,
    pub reserved1: u32,
}

/// Manifest format version.
pub const MFT_VERSION: u32 = 1;
/// Most entries a manifest may hold.
pub const MFT_MAX_ENTRIES: u32 = 64;
/// Length of [`MftEntry::name`], NUL included.
pub const MFT_NAME_SIZE: usize = 68;
/// Longest device name.
pub const MFT_NAME_MAX: usize = MFT_NAME_SIZE - 1;

/// Device types of a manifest entry.
pub const MFT_DEV_BLOCK_BASIC: u32 = 1;
pub const MFT_DEV_NET_BASIC: u32 = 2;
pub const MFT_RESERVED_FIRST: u32 = 1 << 30;

/// Size in bytes of a manifest with `entries` entries.
pub const fn mft_size(entries: u32) -> usize {
    core::mem::size_of::<MftHeader>() + entries as usize * core::mem::size_of::<MftEntry>()
}

/// Header of `struct mft`; `entries` [`MftEntry`] values follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MftHeader {
    pub version: u32,
    pub entries: u32,
}

/// Block device parameters filled in by the tender.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MftBlock {
    pub capacity: u64,
    pub block_size: u16,
}

/// Net device parameters filled in by the tender.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MftNet {
    pub mac: [u8; 6],
    pub mtu: u16,
}

/// The device-specific part of a manifest entry.
#[repr(C)]
#[derive(Clone, Copy)]
pub union MftDevice {
    pub block: MftBlock,
    pub net: MftNet,
}

/// One device of the manifest (104 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct MftEntry {
    pub name: [u8; MFT_NAME_SIZE],
    pub kind: u32,
    pub device: MftDevice,
    pub host_private: u64,
    pub attached: bool,
}

impl MftEntry {
    /// The entry's name up to its NUL.
    pub fn name_bytes(&self) -> &[u8] {
        let end = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.name.len());
        &self.name[..end]
    }

    /// An unattached entry of `kind` named `name` (truncated to [`MFT_NAME_MAX`] bytes).
    pub const fn new(name: &str, kind: u32) -> Self {
        let mut n = [0u8; MFT_NAME_SIZE];
        let b = name.as_bytes();
        let mut i = 0;
        while i < b.len() && i < MFT_NAME_MAX {
            n[i] = b[i];
            i += 1;
        }
        MftEntry {
            name: n,
            kind,
            device: MftDevice {
                block: MftBlock {
                    capacity: 0,
                    block_size: 0,
                },
            },
            host_private: 0,
            attached: false,
        }
    }
}

/// `struct hvt_boot_info` at [`BOOT_INFO_BASE`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootInfo {
    pub mem_size: u64,
    pub kernel_end: u64,
    pub cpu_cycle_freq: u64,
    pub cmdline: u64,
    pub mft: u64,
    pub host_features: u32,
    pub guest_features: u32,
    pub net_ring: u64,
}

/// Hypercall argument structs, one per hypercall, as the guest lays them out in its memory.
pub mod hc {
    /// WALLTIME: CLOCK_REALTIME in nanoseconds.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub struct Walltime {
        pub nsecs: u64,
    }

    /// PUTS: console output.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub struct Puts {
        pub data: u64,
        pub len: u64,
    }

    /// POLL: wait for a readable net device or the timeout.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub struct Poll {
        pub timeout_nsecs: u64,
        pub ready_set: u64,
        pub ret: i32,
    }

    /// BLOCK_WRITE and BLOCK_READ.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub struct Block {
        pub handle: u64,
        pub offset: u64,
        pub data: u64,
        pub len: u64,
        pub ret: i32,
    }

    /// NET_WRITE and NET_READ (`len` in: buffer size, out: frame length for NET_READ).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub struct Net {
        pub handle: u64,
        pub data: u64,
        pub len: u64,
        pub ret: i32,
    }

    /// HALT: the guest is done.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub struct Halt {
        pub cookie: u64,
        pub exit_status: i32,
    }

    /// Size of the core-dump area a non-zero HALT cookie points to.
    pub const HALT_COOKIE_SIZE: u64 = 512;
}

// The ABI document's sizes and offsets, checked at build time.
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<AbiNote>() == 16);
    assert!(size_of::<MftHeader>() == 8);
    assert!(size_of::<MftEntry>() == 104);
    assert!(offset_of!(MftEntry, kind) == 68);
    assert!(offset_of!(MftEntry, device) == 72);
    assert!(offset_of!(MftEntry, host_private) == 88);
    assert!(offset_of!(MftEntry, attached) == 96);
    assert!(offset_of!(MftNet, mtu) == 6);
    assert!(offset_of!(MftBlock, block_size) == 8);
    assert!(size_of::<BootInfo>() == 56);
    assert!(offset_of!(BootInfo, host_features) == 40);
    assert!(offset_of!(BootInfo, net_ring) == 48);
    assert!(size_of::<hc::Walltime>() == 8);
    assert!(size_of::<hc::Puts>() == 16);
    assert!(size_of::<hc::Poll>() == 24);
    assert!(size_of::<hc::Block>() == 40);
    assert!(size_of::<hc::Net>() == 32);
    assert!(size_of::<hc::Halt>() == 16);
    assert!(mft_size(MFT_MAX_ENTRIES) + MFT_NOTE_PAD == MFT_NOTE_DESC_MAX as usize);
};
