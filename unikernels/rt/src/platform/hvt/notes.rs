//! The two Solo5 ELF notes every hvt image carries: the ABI note (target hvt, version 2), defined
//! here once, and the manifest of devices, which each application declares with
//! [`manifest!`](crate::manifest). hvt.ld puts each into its own `PT_NOTE` segment.

use summon_hvt_abi::{
    AbiNote, MftEntry, MftHeader, ABI_TARGET_HVT, ABI_VERSION, MFT_NOTE_PAD, MFT_RESERVED_FIRST,
    MFT_VERSION, NOTE_TYPE_ABI, NOTE_TYPE_MFT,
};

/// ELF note header plus the owner name "Solo5" padded to 8 bytes.
#[repr(C)]
pub struct NoteHeader {
    pub namesz: u32,
    pub descsz: u32,
    pub kind: u32,
    pub name: [u8; 8],
}

impl NoteHeader {
    const fn new(kind: u32, descsz: usize) -> Self {
        NoteHeader {
            namesz: 6,
            descsz: descsz as u32,
            kind,
            name: *b"Solo5\0\0\0",
        }
    }
}

/// The ABI note.
#[repr(C)]
pub struct AbiNoteSection {
    header: NoteHeader,
    desc: AbiNote,
}

#[used]
#[unsafe(link_section = ".note.solo5.abi")]
static ABI_NOTE: AbiNoteSection = AbiNoteSection {
    header: NoteHeader::new(NOTE_TYPE_ABI, core::mem::size_of::<AbiNote>()),
    desc: AbiNote {
        abi_target: ABI_TARGET_HVT,
        abi_version: ABI_VERSION,
        reserved0: 0,
        reserved1: 0,
    },
};

/// The manifest note with `N` entries (the reserved first one included).
#[repr(C)]
pub struct MftNote<const N: usize> {
    header: NoteHeader,
    pad: [u8; MFT_NOTE_PAD],
    mft: MftHeader,
    entries: [MftEntry; N],
}

impl<const N: usize> MftNote<N> {
    /// A manifest of `devices`, which must start with [`reserved_first`].
    pub const fn new(entries: [MftEntry; N]) -> Self {
        MftNote {
            header: NoteHeader::new(
                NOTE_TYPE_MFT,
                MFT_NOTE_PAD + summon_hvt_abi::mft_size(N as u32),
            ),
            pad: [0; MFT_NOTE_PAD],
            mft: MftHeader {
                version: MFT_VERSION,
                entries: N as u32,
            },
            entries,
        }
    }
}

/// The mandatory first manifest entry.
pub const fn reserved_first() -> MftEntry {
    MftEntry::new("", MFT_RESERVED_FIRST)
}

/// Declares the image's manifest: the devices the application uses, each `net "NAME"` or
/// `block "NAME"`. Every application invokes it exactly once (`rt::manifest!();` for none).
#[macro_export]
macro_rules! manifest {
    ($($kind:ident $name:literal),* $(,)?) => {
        #[used]
        #[unsafe(link_section = ".note.solo5.manifest")]
        static __RT_SOLO5_MANIFEST: $crate::platform::hvt::notes::MftNote<
            { 1 $(+ $crate::manifest!(@one $name))* },
        > = $crate::platform::hvt::notes::MftNote::new([
            $crate::platform::hvt::notes::reserved_first(),
            $($crate::manifest!(@entry $kind $name)),*
        ]);
    };
    (@one $name:literal) => { 1 };
    (@entry net $name:literal) => {
        $crate::abi::MftEntry::new($name, $crate::abi::MFT_DEV_NET_BASIC)
    };
    (@entry block $name:literal) => {
        $crate::abi::MftEntry::new($name, $crate::abi::MFT_DEV_BLOCK_BASIC)
    };
}
