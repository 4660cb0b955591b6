//! Why an hvt image was refused.
//!
//! One variant per check of `docs/hvt-abi.md` section 1, each carrying the offending values so
//! the message alone tells the user what is wrong with the file (the reference tender's messages
//! are the model). "segment N" is the index of the program header, as `readelf -l` counts them.

use std::path::PathBuf;

/// An hvt image the launcher will not run, and why.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read image {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image {path} is {size} bytes, larger than the {max} bytes any guest memory can hold")]
    FileTooLarge { path: PathBuf, size: u64, max: u64 },

    // The ELF header.
    #[error("file is {len} bytes, too short for the 64-byte ELF header")]
    TooShort { len: usize },
    #[error("not an ELF file (magic {found:02x?}, expected [7f, 45, 4c, 46])")]
    BadMagic { found: [u8; 4] },
    #[error("ELF class {class} is not ELFCLASS64 (2)")]
    WrongClass { class: u8 },
    #[error("ELF data encoding {data} is not little-endian (ELFDATA2LSB, 1)")]
    WrongData { data: u8 },
    #[error("ELF e_version {version} is not EV_CURRENT (1)")]
    WrongVersion { version: u32 },
    #[error("ELF e_type {e_type} is not ET_EXEC (2): the image must be a static executable")]
    WrongType { e_type: u16 },
    #[error("ELF e_machine {machine} is not EM_X86_64 (62)")]
    WrongMachine { machine: u16 },
    #[error("ELF e_ehsize {ehsize} is not 64")]
    WrongEhsize { ehsize: u16 },
    #[error("ELF e_phentsize {phentsize} is not 56")]
    WrongPhentsize { phentsize: u16 },
    #[error("ELF file has no program headers (e_phnum 0)")]
    NoProgramHeaders,
    #[error(
        "file is truncated: {phnum} program headers at offset {phoff:#x} do not fit in its {len} bytes"
    )]
    ProgramHeadersOutOfFile { phoff: u64, phnum: u16, len: usize },

    // The entry point.
    #[error("entry point {entry:#x} is below the 1 MiB load base (0x100000)")]
    EntryBelowLoadBase { entry: u64 },
    #[error("entry point {entry:#x} is outside guest memory ({mem_size:#x} bytes)")]
    EntryOutsideMemory { entry: u64, mem_size: u64 },

    // Segments.
    #[error(
        "file is truncated: segment {index} needs bytes {offset:#x}+{filesz:#x} but the file has {len} bytes"
    )]
    SegmentOutOfFile {
        index: usize,
        offset: u64,
        filesz: u64,
        len: usize,
    },
    #[error("segment {index} at {vaddr:#x} is below the 1 MiB load base (0x100000)")]
    SegmentBelowLoadBase { index: usize, vaddr: u64 },
    #[error(
        "segment {index} at {vaddr:#x} aligned down to {align:#x} starts at {start:#x}, below the 1 MiB load base (0x100000)"
    )]
    AlignedStartBelowLoadBase {
        index: usize,
        vaddr: u64,
        align: u64,
        start: u64,
    },
    #[error("segment {index} at {vaddr:#x} has p_align {align:#x}, not a power of two")]
    BadAlign {
        index: usize,
        vaddr: u64,
        align: u64,
    },
    #[error(
        "segment {index} at {vaddr:#x} aligned to {align:#x} spans {start:#x}..{end:#x}, not 4 KiB aligned"
    )]
    SegmentNotPageAligned {
        index: usize,
        vaddr: u64,
        align: u64,
        start: u64,
        end: u64,
    },
    #[error(
        "segment {index} at {vaddr:#x} comes after a segment at {prev_vaddr:#x}: segments must be in ascending order"
    )]
    SegmentsUnsorted {
        index: usize,
        vaddr: u64,
        prev_vaddr: u64,
    },
    #[error(
        "segment {index} at {vaddr:#x} (aligned start {start:#x}) overlaps the previous segment, which ends at {prev_end:#x}"
    )]
    SegmentsOverlap {
        index: usize,
        vaddr: u64,
        start: u64,
        prev_end: u64,
    },
    #[error("segment {index} at {vaddr:#x} is writable and executable")]
    WritableAndExecutable { index: usize, vaddr: u64 },
    #[error(
        "segment {index} at {vaddr:#x} has p_memsz {memsz:#x} smaller than p_filesz {filesz:#x}"
    )]
    MemszBelowFilesz {
        index: usize,
        vaddr: u64,
        memsz: u64,
        filesz: u64,
    },
    #[error(
        "segment {index}: p_vaddr {vaddr:#x} + p_memsz {memsz:#x} aligned up to {align:#x} overflows 64 bits"
    )]
    SegmentOverflow {
        index: usize,
        vaddr: u64,
        memsz: u64,
        align: u64,
    },
    #[error("image has no PT_LOAD segment with a non-zero size: nothing to run")]
    NoLoadableSegments,
    #[error(
        "segment {index}: file bytes end at {end:#x} (p_vaddr {vaddr:#x} + p_filesz), outside guest memory ({mem_size:#x} bytes)"
    )]
    SegmentDataOutsideMemory {
        index: usize,
        vaddr: u64,
        end: u64,
        mem_size: u64,
    },
    #[error(
        "segment {index} at {vaddr:#x}: aligned end {end:#x} is outside guest memory ({mem_size:#x} bytes)"
    )]
    SegmentOutsideMemory {
        index: usize,
        vaddr: u64,
        end: u64,
        mem_size: u64,
    },

    // Notes.
    #[error(
        "note segment {index} is truncated: the note at byte {offset:#x} needs {need} bytes, the segment has {have} left"
    )]
    NoteTruncated {
        index: usize,
        offset: usize,
        need: u64,
        have: usize,
    },
    #[error("image has two Solo5 {which} notes (segments {first} and {second})")]
    DuplicateNote {
        which: &'static str,
        first: usize,
        second: usize,
    },
    #[error("image has no Solo5 ABI note (type ABI1): not a Solo5 unikernel")]
    MissingAbiNote,
    #[error("Solo5 ABI note has n_descsz {descsz}, expected 16..=32")]
    AbiNoteSize { descsz: u32 },
    #[error(
        "image is built for the Solo5 {name} target (abi_target {target}); this launcher runs only hvt (abi_target 1)"
    )]
    WrongAbiTarget { target: u32, name: &'static str },
    #[error("image uses hvt ABI version {version}; this launcher implements version 2")]
    WrongAbiVersion { version: u32 },

    // The manifest.
    #[error("image has no Solo5 manifest note (type MFT1, section .note.solo5.manifest)")]
    MissingManifestNote,
    #[error("Solo5 manifest note has n_descsz {descsz}, expected 12..=6668")]
    ManifestNoteSize { descsz: u32 },
    #[error("manifest version {version} is not 1")]
    ManifestVersion { version: u32 },
    #[error("manifest has {entries} entries, at most 64 are allowed")]
    ManifestTooManyEntries { entries: u32 },
    #[error("manifest is {size} bytes, but {entries} entries need exactly {expected}")]
    ManifestSizeMismatch {
        size: u64,
        entries: u32,
        expected: u64,
    },
    #[error("manifest has no entries: entry 0 (RESERVED_FIRST) is required")]
    ManifestNoEntries,
    #[error("manifest entry 0 has type {kind:#x}, expected RESERVED_FIRST (0x40000000)")]
    ManifestFirstEntryType { kind: u32 },
    #[error("manifest entry 0 has name \"{name}\", expected an empty name")]
    ManifestFirstEntryName { name: String },
    #[error("manifest entry {index}: name is not NUL-terminated within 68 bytes")]
    ManifestNameUnterminated { index: usize },
    #[error("manifest entry {index}: name is empty")]
    ManifestNameEmpty { index: usize },
    #[error("manifest entry {index}: name \"{name}\" has characters outside [A-Za-z0-9]")]
    ManifestNameInvalid { index: usize, name: String },
    #[error("manifest entry {index}: name \"{name}\" is already used by entry {first}")]
    ManifestNameDuplicate {
        index: usize,
        name: String,
        first: usize,
    },
    #[error(
        "manifest entry {index} (\"{name}\") has type {kind:#x}, expected BLOCK_BASIC (1) or NET_BASIC (2)"
    )]
    ManifestEntryType {
        index: usize,
        name: String,
        kind: u32,
    },
    #[error(
        "manifest entry {index} (\"{name}\") is marked attached in the file (byte {value:#x})"
    )]
    ManifestEntryAttached {
        index: usize,
        name: String,
        value: u8,
    },
}
