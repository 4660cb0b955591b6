//! The hvt image: ELF64 header, program headers and the Solo5 notes, all checked before a byte
//! reaches guest memory (`docs/hvt-abi.md` section 1, `docs/image-checks.md`).
//!
//! Our own reader rather than `goblin` or `linux-loader`: the subset we read is tiny (one
//! header, the program headers, two notes), the checks *are* the point and each must fail with
//! its own error naming the value, and every byte read goes through [`read_u16`]/[`read_u32`]/
//! [`read_u64`] (slice `get`, no indexing) with `checked_*` arithmetic, so there is one small
//! place for the fuzzer to break. `goblin` parses sections, symbols and relocations we never use
//! and reports its own errors; `linux-loader` loads straight into guest memory and knows nothing
//! of Solo5 notes. Neither would save the checks below, and both grow the dependency tree.
//!
//! From a file, only the ELF header, the program headers and the note segments are read for the
//! checks; the launcher then reads each segment straight into guest memory
//! ([`ElfImage::read_segment`]), as the reference tender does.
//!
//! Segments considered: `PT_LOAD` with a non-zero size. Those with `p_filesz != 0` are copied, as
//! in the reference tender. A bss-only `PT_LOAD` (`p_filesz == 0`, `p_memsz != 0`) is copied from
//! nothing (guest memory starts zeroed) but, unlike the reference tender which skips it entirely,
//! passes the same checks and counts for `kernel_end`: the guest puts its heap at `kernel_end`,
//! so leaving a trailing bss out would hand the same memory out twice. Solo5's linker scripts fold
//! `.bss` into the data segment, so real Solo5/MirageOS images never notice the difference.

use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use summon_hvt_abi as abi;

use crate::error::ImageError;
use crate::manifest::Manifest;

const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const PAGE_SIZE: u64 = 0x1000;

const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EV_CURRENT: u32 = 1;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PF_X: u32 = 1;
const PF_W: u32 = 2;
const PF_R: u32 = 4;

/// Largest image file read: no guest memory can hold more.
pub const MAX_IMAGE_SIZE: u64 = abi::MEM_MAX;

/// A loadable segment that passed every check that does not depend on the memory size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Load address (`p_vaddr`; `p_paddr` is ignored, the guest is identity-mapped).
    pub gpa: u64,
    /// Where the `filesz` bytes start in the file.
    pub file_offset: usize,
    pub filesz: u64,
    pub memsz: u64,
    /// `p_align`, a power of two.
    pub align: u64,
    pub readable: bool,
    pub writable: bool,
    pub executable: bool,
    /// Index of the program header, for messages (the numbering of `readelf -l`).
    pub phdr_index: usize,
}

impl Segment {
    /// `gpa` aligned down to `align`: where the segment's protection starts (4 KiB aligned).
    pub fn aligned_start(&self) -> u64 {
        self.gpa & !self.align.saturating_sub(1)
    }

    /// `gpa + memsz` aligned up to `align`: where the segment's protection ends (4 KiB aligned).
    /// Saturates instead of overflowing for a hand-built `Segment`; parsed ones never overflow.
    pub fn aligned_end(&self) -> u64 {
        let mask = self.align.saturating_sub(1);
        self.gpa.saturating_add(self.memsz).saturating_add(mask) & !mask
    }
}

/// An hvt image that passed every check of `docs/hvt-abi.md` section 1 except those that need
/// the guest memory size (see [`ElfImage::check_fits`]).
#[derive(Clone)]
pub struct ElfImage {
    pub entry: u64,
    /// Non-empty `PT_LOAD` segments in ascending, non-overlapping order.
    pub segments: Vec<Segment>,
    /// Highest aligned segment end: where the guest may start its heap.
    pub kernel_end: u64,
    pub abi: abi::AbiNote,
    pub manifest: Manifest,
    contents: Contents,
}

/// Where an image's bytes are.
#[derive(Clone)]
enum Contents {
    /// All of them in memory ([`ElfImage::parse`]).
    Bytes(Vec<u8>),
    /// In the open file ([`ElfImage::from_file`]): the checks read only the headers and notes,
    /// and each segment is read from the file straight into its destination when it is loaded,
    /// as the reference tender does. The image is never copied whole into the host's heap,
    /// whose fresh pages a one-shot tender would fault in just to copy them out again.
    /// Shared by clones: reads are positioned (`pread`), so they never disturb each other.
    File {
        file: Arc<File>,
        path: PathBuf,
        len: usize,
    },
}

impl Contents {
    fn len(&self) -> usize {
        match self {
            Contents::Bytes(b) => b.len(),
            Contents::File { len, .. } => *len,
        }
    }

    /// The bytes `[off, off + n)`; `Ok(None)` when that range is not inside the image. A file
    /// that ends before its length at open time is an I/O error (it changed meanwhile).
    fn get(&self, off: usize, n: usize) -> Result<Option<Cow<'_, [u8]>>, ImageError> {
        let Some(end) = off.checked_add(n).filter(|&end| end <= self.len()) else {
            return Ok(None);
        };
        match self {
            Contents::Bytes(b) => Ok(b.get(off..end).map(Cow::Borrowed)),
            Contents::File { .. } => {
                let mut buf = vec![0; n];
                self.read_into(off, &mut buf)?;
                Ok(Some(Cow::Owned(buf)))
            }
        }
    }

    /// Fills `dst` from offset `off`, which the caller checked lies inside the image.
    fn read_into(&self, off: usize, dst: &mut [u8]) -> Result<(), ImageError> {
        match self {
            Contents::Bytes(b) => {
                let src = off
                    .checked_add(dst.len())
                    .and_then(|end| b.get(off..end))
                    .ok_or(ImageError::TooShort { len: b.len() })?;
                dst.copy_from_slice(src);
                Ok(())
            }
            Contents::File { file, path, .. } => {
                file.read_exact_at(dst, off as u64)
                    .map_err(|source| ImageError::Io {
                        path: path.clone(),
                        source,
                    })
            }
        }
    }
}

impl fmt::Debug for ElfImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ElfImage")
            .field("entry", &format_args!("{:#x}", self.entry))
            .field("segments", &self.segments)
            .field("kernel_end", &format_args!("{:#x}", self.kernel_end))
            .field("abi", &self.abi)
            .field("manifest", &self.manifest)
            .field("file_len", &self.contents.len())
            .finish()
    }
}

/// The fields of one program header we look at.
#[derive(Clone, Copy)]
struct Phdr {
    p_type: u32,
    p_flags: u32,
    p_offset: u64,
    p_vaddr: u64,
    p_filesz: u64,
    p_memsz: u64,
    p_align: u64,
}

/// A Solo5 note found in a `PT_NOTE` segment: which segment, and its descriptor.
struct FoundNote {
    index: usize,
    desc: Vec<u8>,
    descsz: u32,
}

/// Opens the image at `path` and checks its size against the largest any guest can hold;
/// returns the file and its length.
fn open_image(path: &Path) -> Result<(File, usize), ImageError> {
    let file = File::open(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    sized(file, path)
}

/// `file` (opened from `path`) with its length, checked against [`MAX_IMAGE_SIZE`].
fn sized(file: File, path: &Path) -> Result<(File, usize), ImageError> {
    let io = |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    };
    let size = file.metadata().map_err(io)?.len();
    let len = usize::try_from(size)
        .ok()
        .filter(|_| size <= MAX_IMAGE_SIZE)
        .ok_or_else(|| too_large(path, size))?;
    Ok((file, len))
}

fn too_large(path: &Path, size: u64) -> ImageError {
    ImageError::FileTooLarge {
        path: path.to_path_buf(),
        size,
        max: MAX_IMAGE_SIZE,
    }
}

impl ElfImage {
    /// Opens `path` and checks it as [`ElfImage::parse`] does, reading only the headers and
    /// notes; the file stays open, and [`Self::read_segment`] reads the segments from it.
    pub fn from_file(path: &Path) -> Result<ElfImage, ImageError> {
        let (file, len) = open_image(path)?;
        Self::check(Contents::File {
            file: Arc::new(file),
            path: path.to_path_buf(),
            len,
        })
    }

    /// Reads the whole file at `path` into memory and checks it as [`ElfImage::parse`] does.
    /// For caches that outlive many guests (summond): the image then holds no fd, so the
    /// number of distinct images costs nothing in the process's fd table, and every boot copies
    /// its segments from memory.
    pub fn read(path: &Path) -> Result<ElfImage, ImageError> {
        let (file, len) = open_image(path)?;
        Self::read_all(file, len, path)
    }

    /// Like [`Self::read`], from `file`, already opened (by a process that may open `path`,
    /// for one that may not); `path` names it in errors.
    pub fn read_opened(file: File, path: &Path) -> Result<ElfImage, ImageError> {
        let (file, len) = sized(file, path)?;
        Self::read_all(file, len, path)
    }

    fn read_all(file: File, len: usize, path: &Path) -> Result<ElfImage, ImageError> {
        let mut bytes = Vec::with_capacity(len);
        // At most one byte more than checked: a file that grew since is refused, not truncated.
        (&file)
            .take(MAX_IMAGE_SIZE + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| ImageError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        if bytes.len() as u64 > MAX_IMAGE_SIZE {
            return Err(too_large(path, bytes.len() as u64));
        }
        Self::parse(bytes)
    }

    /// Checks everything that does not depend on the guest memory size; [`Self::check_fits`]
    /// does the rest once it is known.
    pub fn parse(bytes: Vec<u8>) -> Result<ElfImage, ImageError> {
        Self::check(Contents::Bytes(bytes))
    }

    fn check(contents: Contents) -> Result<ElfImage, ImageError> {
        let len = contents.len();
        let ehdr = contents
            .get(0, EHDR_SIZE)?
            .ok_or(ImageError::TooShort { len })?;
        let ehdr = ehdr.as_ref();
        let field16 = |off| read_u16(ehdr, off).ok_or(ImageError::TooShort { len });
        let field32 = |off| read_u32(ehdr, off).ok_or(ImageError::TooShort { len });
        let field64 = |off| read_u64(ehdr, off).ok_or(ImageError::TooShort { len });

        let magic = read_array::<4>(ehdr, 0).ok_or(ImageError::TooShort { len })?;
        if &magic != b"\x7fELF" {
            return Err(ImageError::BadMagic { found: magic });
        }
        let class = ehdr.get(4).copied().unwrap_or(0);
        if class != ELFCLASS64 {
            return Err(ImageError::WrongClass { class });
        }
        let data = ehdr.get(5).copied().unwrap_or(0);
        if data != ELFDATA2LSB {
            return Err(ImageError::WrongData { data });
        }
        let e_type = field16(16)?;
        let machine = field16(18)?;
        let version = field32(20)?;
        let entry = field64(24)?;
        let phoff = field64(32)?;
        let ehsize = field16(52)?;
        let phentsize = field16(54)?;
        let phnum = field16(56)?;
        if version != EV_CURRENT {
            return Err(ImageError::WrongVersion { version });
        }
        if e_type != ET_EXEC {
            return Err(ImageError::WrongType { e_type });
        }
        if machine != EM_X86_64 {
            return Err(ImageError::WrongMachine { machine });
        }
        if usize::from(ehsize) != EHDR_SIZE {
            return Err(ImageError::WrongEhsize { ehsize });
        }
        if usize::from(phentsize) != PHDR_SIZE {
            return Err(ImageError::WrongPhentsize { phentsize });
        }
        if phnum == 0 {
            return Err(ImageError::NoProgramHeaders);
        }
        let phdrs = read_phdrs(&contents, phoff, phnum)?;
        if entry < abi::LOAD_BASE {
            return Err(ImageError::EntryBelowLoadBase { entry });
        }

        for (index, ph) in phdrs.iter().enumerate() {
            if ph.p_filesz == 0 {
                continue;
            }
            let in_file = ph
                .p_offset
                .checked_add(ph.p_filesz)
                .is_some_and(|end| end <= len as u64);
            if !in_file {
                return Err(ImageError::SegmentOutOfFile {
                    index,
                    offset: ph.p_offset,
                    filesz: ph.p_filesz,
                    len,
                });
            }
        }

        // Notes first: an image for another Solo5 target should say so, not fail on a segment.
        let (abi_note, mft_note) = find_solo5_notes(&contents, &phdrs)?;
        let abi_note = abi_note.ok_or(ImageError::MissingAbiNote)?;
        let abi = parse_abi_note(&abi_note)?;
        let mft_note = mft_note.ok_or(ImageError::MissingManifestNote)?;
        let manifest = Manifest::parse_note(&mft_note.desc, mft_note.descsz)?;

        let segments = check_segments(&phdrs, len)?;
        let kernel_end = segments
            .iter()
            .map(Segment::aligned_end)
            .max()
            .ok_or(ImageError::NoLoadableSegments)?;

        Ok(ElfImage {
            entry,
            segments,
            kernel_end,
            abi,
            manifest,
            contents,
        })
    }

    /// The checks that need the guest memory size: the entry point and every segment lie inside
    /// `[0, mem_size)`.
    pub fn check_fits(&self, mem_size: u64) -> Result<(), ImageError> {
        if self.entry >= mem_size {
            return Err(ImageError::EntryOutsideMemory {
                entry: self.entry,
                mem_size,
            });
        }
        for seg in &self.segments {
            let data_end = seg.gpa.checked_add(seg.filesz);
            if data_end.is_none_or(|end| end > mem_size) {
                return Err(ImageError::SegmentDataOutsideMemory {
                    index: seg.phdr_index,
                    vaddr: seg.gpa,
                    end: data_end.unwrap_or(u64::MAX),
                    mem_size,
                });
            }
            let end = seg.aligned_end();
            if end > mem_size {
                return Err(ImageError::SegmentOutsideMemory {
                    index: seg.phdr_index,
                    vaddr: seg.gpa,
                    end,
                    mem_size,
                });
            }
        }
        Ok(())
    }

    /// Reads the `filesz` bytes of `seg` into `dst`, which must be exactly that long (empty for
    /// a bss-only segment). Refused for a segment that did not come from this image.
    pub fn read_segment(&self, seg: &Segment, dst: &mut [u8]) -> Result<(), ImageError> {
        let (off, n) = self.segment_range(seg)?;
        if n != dst.len() {
            return Err(self.segment_out_of_file(seg));
        }
        if n == 0 {
            return Ok(());
        }
        self.contents.read_into(off, dst)
    }

    /// The `filesz` bytes of `seg`, read into a new buffer (see [`Self::read_segment`]).
    pub fn segment_data(&self, seg: &Segment) -> Result<Vec<u8>, ImageError> {
        let (_, n) = self.segment_range(seg)?;
        let mut data = vec![0; n];
        self.read_segment(seg, &mut data)?;
        Ok(data)
    }

    /// Offset and length of `seg`'s bytes in the file, if they lie inside it.
    fn segment_range(&self, seg: &Segment) -> Result<(usize, usize), ImageError> {
        usize::try_from(seg.filesz)
            .ok()
            .filter(|&n| {
                seg.file_offset
                    .checked_add(n)
                    .is_some_and(|end| end <= self.contents.len())
            })
            .map(|n| (seg.file_offset, n))
            .ok_or_else(|| self.segment_out_of_file(seg))
    }

    fn segment_out_of_file(&self, seg: &Segment) -> ImageError {
        ImageError::SegmentOutOfFile {
            index: seg.phdr_index,
            offset: seg.file_offset as u64,
            filesz: seg.filesz,
            len: self.contents.len(),
        }
    }

    /// Size of the image file in bytes.
    pub fn file_len(&self) -> usize {
        self.contents.len()
    }
}

fn read_phdrs(contents: &Contents, phoff: u64, phnum: u16) -> Result<Vec<Phdr>, ImageError> {
    let out_of_file = || ImageError::ProgramHeadersOutOfFile {
        phoff,
        phnum,
        len: contents.len(),
    };
    let start = usize::try_from(phoff).map_err(|_| out_of_file())?;
    // phnum is a u16: the table is at most 64 KiB * 56 bytes, no overflow.
    let table = contents
        .get(start, usize::from(phnum) * PHDR_SIZE)?
        .ok_or_else(out_of_file)?;
    Ok(table
        .chunks_exact(PHDR_SIZE)
        .map(|ph| Phdr {
            p_type: read_u32(ph, 0).unwrap_or(0),
            p_flags: read_u32(ph, 4).unwrap_or(0),
            p_offset: read_u64(ph, 8).unwrap_or(0),
            p_vaddr: read_u64(ph, 16).unwrap_or(0),
            p_filesz: read_u64(ph, 32).unwrap_or(0),
            p_memsz: read_u64(ph, 40).unwrap_or(0),
            p_align: read_u64(ph, 48).unwrap_or(0),
        })
        .collect())
}

/// The `PT_LOAD` checks that need no memory size, in the reference tender's order.
fn check_segments(phdrs: &[Phdr], file_len: usize) -> Result<Vec<Segment>, ImageError> {
    let mut segments: Vec<Segment> = Vec::new();
    let mut prev_vaddr = 0u64;
    let mut prev_end = 0u64;
    for (index, ph) in phdrs.iter().enumerate() {
        if ph.p_type != PT_LOAD || (ph.p_filesz == 0 && ph.p_memsz == 0) {
            continue;
        }
        let vaddr = ph.p_vaddr;
        let align = ph.p_align;
        if vaddr < abi::LOAD_BASE {
            return Err(ImageError::SegmentBelowLoadBase { index, vaddr });
        }
        if vaddr < prev_vaddr {
            return Err(ImageError::SegmentsUnsorted {
                index,
                vaddr,
                prev_vaddr,
            });
        }
        if !align.is_power_of_two() {
            return Err(ImageError::BadAlign {
                index,
                vaddr,
                align,
            });
        }
        let mask = align.wrapping_sub(1); // align >= 1 here
        let start = vaddr & !mask;
        if start < abi::LOAD_BASE {
            return Err(ImageError::AlignedStartBelowLoadBase {
                index,
                vaddr,
                align,
                start,
            });
        }
        if start < prev_end {
            return Err(ImageError::SegmentsOverlap {
                index,
                vaddr,
                start,
                prev_end,
            });
        }
        if ph.p_memsz < ph.p_filesz {
            return Err(ImageError::MemszBelowFilesz {
                index,
                vaddr,
                memsz: ph.p_memsz,
                filesz: ph.p_filesz,
            });
        }
        let end = vaddr
            .checked_add(ph.p_memsz)
            .and_then(|e| e.checked_add(mask))
            .map(|e| e & !mask)
            .ok_or(ImageError::SegmentOverflow {
                index,
                vaddr,
                memsz: ph.p_memsz,
                align,
            })?;
        if start % PAGE_SIZE != 0 || end % PAGE_SIZE != 0 {
            return Err(ImageError::SegmentNotPageAligned {
                index,
                vaddr,
                align,
                start,
                end,
            });
        }
        let writable = ph.p_flags & PF_W != 0;
        let executable = ph.p_flags & PF_X != 0;
        if writable && executable {
            return Err(ImageError::WritableAndExecutable { index, vaddr });
        }
        // Checked against the file in `parse` for p_filesz != 0; a bss-only segment's offset
        // means nothing, so it gets one that makes `segment_data` empty.
        let file_offset = if ph.p_filesz == 0 {
            0
        } else {
            usize::try_from(ph.p_offset).map_err(|_| ImageError::SegmentOutOfFile {
                index,
                offset: ph.p_offset,
                filesz: ph.p_filesz,
                len: file_len,
            })?
        };
        prev_vaddr = vaddr;
        prev_end = end;
        segments.push(Segment {
            gpa: vaddr,
            file_offset,
            filesz: ph.p_filesz,
            memsz: ph.p_memsz,
            align,
            readable: ph.p_flags & PF_R != 0,
            writable,
            executable,
            phdr_index: index,
        });
    }
    Ok(segments)
}

/// Walks every note of every `PT_NOTE` segment and picks the Solo5 ABI and manifest notes.
///
/// The ABI document puts each note alone in its own segment (the reference tender reads only the
/// first note of each), but linkers without an explicit `PHDRS` (lld for our Rust unikernels)
/// merge adjacent note sections into one segment, so we read all notes of each segment. Names
/// and descriptors are 4-byte aligned (Solo5's descriptor sits at note offset 20); a 4-byte zero
/// word at an offset that is 4 mod 8 is the padding a linker puts before an 8-aligned note and is
/// skipped. A second ABI or manifest note is refused rather than guessed between.
fn find_solo5_notes(
    contents: &Contents,
    phdrs: &[Phdr],
) -> Result<(Option<FoundNote>, Option<FoundNote>), ImageError> {
    let mut abi_note: Option<FoundNote> = None;
    let mut mft_note: Option<FoundNote> = None;
    for (index, ph) in phdrs.iter().enumerate() {
        if ph.p_type != PT_NOTE || ph.p_filesz == 0 {
            continue;
        }
        // In the file: checked in `check` before we get here; `get` keeps this panic-free anyway.
        let out_of_file = || ImageError::SegmentOutOfFile {
            index,
            offset: ph.p_offset,
            filesz: ph.p_filesz,
            len: contents.len(),
        };
        let (off, size) = usize::try_from(ph.p_offset)
            .ok()
            .zip(usize::try_from(ph.p_filesz).ok())
            .ok_or_else(out_of_file)?;
        let seg = contents.get(off, size)?.ok_or_else(out_of_file)?;
        let seg = seg.as_ref();
        let mut pos = 0usize;
        while pos < seg.len() {
            let have = seg.len().saturating_sub(pos);
            if pos % 8 == 4 && read_u32(seg, pos) == Some(0) {
                pos = pos.saturating_add(4);
                continue;
            }
            let truncated = |need: u64| ImageError::NoteTruncated {
                index,
                offset: pos,
                need,
                have,
            };
            let (Some(namesz), Some(descsz), Some(ntype)) = (
                read_u32(seg, pos),
                read_u32(seg, pos.saturating_add(4)),
                read_u32(seg, pos.saturating_add(8)),
            ) else {
                return Err(truncated(12));
            };
            // All in u64 from here: a u32 size plus a usize offset cannot overflow it.
            let name_start = pos as u64 + 12;
            let name_end = name_start + u64::from(namesz);
            let desc_start = align4(name_end);
            let desc_end = desc_start + u64::from(descsz);
            if desc_end > seg.len() as u64 {
                return Err(truncated(desc_end - pos as u64));
            }
            // desc_end <= seg.len(), so every offset below fits in usize.
            let name = seg
                .get(name_start as usize..name_end as usize)
                .unwrap_or(&[]);
            let desc = seg
                .get(desc_start as usize..desc_end as usize)
                .unwrap_or(&[]);
            if name == abi::NOTE_NAME {
                // Other Solo5 note types are skipped, as the reference tender does.
                let slot = match ntype {
                    abi::NOTE_TYPE_ABI => Some((&mut abi_note, "ABI")),
                    abi::NOTE_TYPE_MFT => Some((&mut mft_note, "manifest")),
                    _ => None,
                };
                if let Some((slot, which)) = slot {
                    if let Some(first) = slot {
                        return Err(ImageError::DuplicateNote {
                            which,
                            first: first.index,
                            second: index,
                        });
                    }
                    *slot = Some(FoundNote {
                        index,
                        desc: desc.to_vec(),
                        descsz,
                    });
                }
            }
            pos = usize::try_from(align4(desc_end)).unwrap_or(usize::MAX);
        }
    }
    Ok((abi_note, mft_note))
}

fn parse_abi_note(note: &FoundNote) -> Result<abi::AbiNote, ImageError> {
    let descsz = note.descsz;
    if !(16..=abi::ABI_NOTE_DESC_MAX).contains(&descsz) {
        return Err(ImageError::AbiNoteSize { descsz });
    }
    let word = |off| read_u32(&note.desc, off).ok_or(ImageError::AbiNoteSize { descsz });
    let abi = abi::AbiNote {
        abi_target: word(0)?,
        abi_version: word(4)?,
        reserved0: word(8)?,
        reserved1: word(12)?,
    };
    if abi.abi_target != abi::ABI_TARGET_HVT {
        return Err(ImageError::WrongAbiTarget {
            target: abi.abi_target,
            name: abi::abi_target_name(abi.abi_target),
        });
    }
    if abi.abi_version != abi::ABI_VERSION {
        return Err(ImageError::WrongAbiVersion {
            version: abi.abi_version,
        });
    }
    Ok(abi)
}

/// `x` rounded up to a multiple of 4; only called on values far below `u64::MAX`.
fn align4(x: u64) -> u64 {
    x.saturating_add(3) & !3
}

pub(super) fn read_array<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    b.get(off..off.checked_add(N)?)?.try_into().ok()
}

pub(super) fn read_u16(b: &[u8], off: usize) -> Option<u16> {
    read_array(b, off).map(u16::from_le_bytes)
}

pub(super) fn read_u32(b: &[u8], off: usize) -> Option<u32> {
    read_array(b, off).map(u32::from_le_bytes)
}

pub(super) fn read_u64(b: &[u8], off: usize) -> Option<u64> {
    read_array(b, off).map(u64::from_le_bytes)
}
