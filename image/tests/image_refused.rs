//! Every refusal of `docs/hvt-abi.md` section 1: a generated image broken in exactly one way is
//! refused with its own error variant, and the message names the offending value.

use summon_test_support::elfgen;

use elfgen::{
    abi_desc, mft_desc, mft_desc_raw, note, Elf, ImageBuilder, RawEntry, CODE_GPA, PF_R, PF_W,
    PF_X, PT_LOAD, PT_NOTE,
};
use summon_hvt_abi as abi;
use summon_image::{ElfImage, ImageError};

const MEM: u64 = 32 << 20;

fn refused(bytes: Vec<u8>) -> ImageError {
    match ElfImage::parse(bytes) {
        Ok(img) => panic!("image was accepted: {img:?}"),
        Err(e) => e,
    }
}

fn refused_elf(elf: &Elf) -> ImageError {
    refused(elf.to_bytes())
}

fn refused_by(b: &ImageBuilder) -> ImageError {
    refused(b.to_bytes())
}

/// The message names every one of `parts`.
fn says(e: &ImageError, parts: &[&str]) {
    let msg = e.to_string();
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} does not mention {p:?}");
    }
}

fn with_data() -> ImageBuilder {
    ImageBuilder {
        data: Some(vec![0x5a; 100]),
        bss: 0x2000,
        ..ImageBuilder::default()
    }
}

/// The first PT_LOAD of a default image, and the image.
fn code_phdr(f: impl FnOnce(&mut elfgen::Phdr)) -> Elf {
    let mut elf = ImageBuilder::default().build();
    let i = elf.phdr_index(PT_LOAD, 0);
    f(&mut elf.phdrs[i]);
    elf
}

// ---- truncation ----

#[test]
fn truncated_before_elf_header() {
    for len in [0, 1, 4, 63] {
        let mut bytes = ImageBuilder::default().to_bytes();
        bytes.truncate(len);
        let e = refused(bytes);
        assert!(
            matches!(e, ImageError::TooShort { len: l } if l == len),
            "{e:?}"
        );
        says(&e, &[&format!("{len} bytes")]);
    }
}

#[test]
fn truncated_program_headers() {
    let mut bytes = ImageBuilder::default().to_bytes();
    bytes.truncate(64 + 56 + 10);
    let e = refused(bytes);
    assert!(
        matches!(
            e,
            ImageError::ProgramHeadersOutOfFile {
                phoff: 64,
                phnum: 3,
                len: 130
            }
        ),
        "{e:?}"
    );
    says(&e, &["truncated", "0x40", "130 bytes"]);
}

#[test]
fn program_header_offset_overflows() {
    let mut elf = ImageBuilder::default().build();
    elf.ehdr.e_phoff = u64::MAX - 8;
    elf.phdrs.clear();
    let e = refused_elf(&elf);
    assert!(
        matches!(e, ImageError::ProgramHeadersOutOfFile { .. }),
        "{e:?}"
    );
    says(&e, &["0xfffffffffffffff7"]);
}

#[test]
fn truncated_code_segment() {
    let b = ImageBuilder {
        notes_in_one_segment: true,
        ..ImageBuilder::default()
    };
    let elf = b.build();
    let mut bytes = elf.to_bytes();
    // Cut 4 bytes into the code (the notes after it go too).
    let code = elf.phdrs[0].clone();
    bytes.truncate((code.p_offset + 4) as usize);
    let e = refused(bytes);
    assert!(
        matches!(
            e,
            ImageError::SegmentOutOfFile {
                index: 0,
                offset: 0x1000,
                ..
            }
        ),
        "{e:?}"
    );
    says(&e, &["truncated", "segment 0", "0x1000"]);
}

#[test]
fn segment_offset_overflows() {
    let elf = code_phdr(|p| p.p_offset = u64::MAX - 1);
    let e = refused_elf(&elf);
    assert!(
        matches!(e, ImageError::SegmentOutOfFile { index: 0, .. }),
        "{e:?}"
    );
    says(&e, &["0xfffffffffffffffe"]);
}

// ---- ELF header ----

#[test]
fn bad_magic() {
    let mut elf = ImageBuilder::default().build();
    elf.ehdr.ident[1] = b'X';
    let e = refused_elf(&elf);
    assert!(
        matches!(e, ImageError::BadMagic { found } if found == *b"\x7fXLF"),
        "{e:?}"
    );
    says(&e, &["58"]);
}

#[test]
fn wrong_class() {
    let mut elf = ImageBuilder::default().build();
    elf.ehdr.ident[4] = 1; // ELFCLASS32
    let e = refused_elf(&elf);
    assert!(matches!(e, ImageError::WrongClass { class: 1 }), "{e:?}");
    says(&e, &["class 1"]);
}

#[test]
fn wrong_data_encoding() {
    let mut elf = ImageBuilder::default().build();
    elf.ehdr.ident[5] = 2; // big-endian
    let e = refused_elf(&elf);
    assert!(matches!(e, ImageError::WrongData { data: 2 }), "{e:?}");
    says(&e, &["encoding 2"]);
}

#[test]
fn wrong_version() {
    let mut elf = ImageBuilder::default().build();
    elf.ehdr.e_version = 7;
    let e = refused_elf(&elf);
    assert!(
        matches!(e, ImageError::WrongVersion { version: 7 }),
        "{e:?}"
    );
    says(&e, &["e_version 7"]);
}

#[test]
fn wrong_type() {
    let mut elf = ImageBuilder::default().build();
    elf.ehdr.e_type = 3; // ET_DYN
    let e = refused_elf(&elf);
    assert!(matches!(e, ImageError::WrongType { e_type: 3 }), "{e:?}");
    says(&e, &["e_type 3"]);
}

#[test]
fn wrong_machine() {
    let mut elf = ImageBuilder::default().build();
    elf.ehdr.e_machine = 183; // EM_AARCH64
    let e = refused_elf(&elf);
    assert!(
        matches!(e, ImageError::WrongMachine { machine: 183 }),
        "{e:?}"
    );
    says(&e, &["e_machine 183"]);
}

#[test]
fn wrong_ehsize() {
    let mut elf = ImageBuilder::default().build();
    elf.ehdr.e_ehsize = 52;
    let e = refused_elf(&elf);
    assert!(matches!(e, ImageError::WrongEhsize { ehsize: 52 }), "{e:?}");
    says(&e, &["e_ehsize 52"]);
}

#[test]
fn wrong_phentsize() {
    let mut elf = ImageBuilder::default().build();
    elf.ehdr.e_phentsize = 32;
    let e = refused_elf(&elf);
    assert!(
        matches!(e, ImageError::WrongPhentsize { phentsize: 32 }),
        "{e:?}"
    );
    says(&e, &["e_phentsize 32"]);
}

#[test]
fn no_program_headers() {
    let mut elf = ImageBuilder::default().build();
    elf.ehdr.e_phnum = 0;
    let e = refused_elf(&elf);
    assert!(matches!(e, ImageError::NoProgramHeaders), "{e:?}");
    says(&e, &["e_phnum 0"]);
}

// ---- entry point ----

#[test]
fn entry_below_one_mib() {
    let b = ImageBuilder {
        entry: Some(0xf_f000),
        ..ImageBuilder::default()
    };
    let e = refused_by(&b);
    assert!(
        matches!(e, ImageError::EntryBelowLoadBase { entry: 0xf_f000 }),
        "{e:?}"
    );
    says(&e, &["0xff000"]);
}

#[test]
fn entry_past_memory() {
    let b = ImageBuilder {
        entry: Some(MEM),
        ..ImageBuilder::default()
    };
    let img = ElfImage::parse(b.to_bytes()).expect("entry is only checked against memory later");
    let e = img.check_fits(MEM).expect_err("entry at mem_size accepted");
    assert!(
        matches!(
            e,
            ImageError::EntryOutsideMemory {
                entry: MEM,
                mem_size: MEM
            }
        ),
        "{e:?}"
    );
    says(&e, &["0x2000000"]);
    img.check_fits(MEM + 0x20_0000)
        .expect("fits in more memory");
}

// ---- segments ----

#[test]
fn segment_below_one_mib() {
    let elf = code_phdr(|p| p.p_vaddr = 0x8_0000);
    let e = refused_elf(&elf);
    assert!(
        matches!(
            e,
            ImageError::SegmentBelowLoadBase {
                index: 0,
                vaddr: 0x8_0000
            }
        ),
        "{e:?}"
    );
    says(&e, &["segment 0", "0x80000"]);
}

#[test]
fn segment_aligned_start_below_one_mib() {
    let elf = code_phdr(|p| p.p_align = 0x20_0000);
    let e = refused_elf(&elf);
    assert!(
        matches!(
            e,
            ImageError::AlignedStartBelowLoadBase {
                index: 0,
                vaddr: CODE_GPA,
                align: 0x20_0000,
                start: 0
            }
        ),
        "{e:?}"
    );
    says(&e, &["segment 0", "0x200000", "starts at 0x0"]);
}

#[test]
fn segment_align_not_power_of_two() {
    for align in [0u64, 3, 0x1800] {
        let elf = code_phdr(|p| p.p_align = align);
        let e = refused_elf(&elf);
        assert!(
            matches!(e, ImageError::BadAlign { index: 0, align: a, .. } if a == align),
            "{e:?}"
        );
        says(&e, &[&format!("p_align {align:#x}"), "power of two"]);
    }
}

#[test]
fn segment_not_page_aligned() {
    let elf = code_phdr(|p| {
        p.p_vaddr = CODE_GPA + 0x800;
        p.p_align = 0x800;
    });
    let e = refused_elf(&elf);
    assert!(
        matches!(
            e,
            ImageError::SegmentNotPageAligned {
                index: 0,
                start: 0x10_0800,
                ..
            }
        ),
        "{e:?}"
    );
    says(&e, &["0x100800", "4 KiB"]);
}

#[test]
fn segment_end_not_page_aligned() {
    // Start page aligned, end aligned only to 16 bytes.
    let elf = code_phdr(|p| p.p_align = 16);
    let e = refused_elf(&elf);
    assert!(
        matches!(
            e,
            ImageError::SegmentNotPageAligned {
                index: 0,
                start: CODE_GPA,
                ..
            }
        ),
        "{e:?}"
    );
    says(&e, &["segment 0", "0x100000..0x100020"]);
}

#[test]
fn segments_unsorted() {
    let mut elf = with_data().build();
    elf.phdrs.swap(0, 1);
    let data_gpa = with_data().data_gpa();
    let e = refused_elf(&elf);
    assert!(
        matches!(e, ImageError::SegmentsUnsorted { index: 1, vaddr: CODE_GPA, prev_vaddr } if prev_vaddr == data_gpa),
        "{e:?}"
    );
    says(&e, &["segment 1", "0x100000", "0x101000", "ascending"]);
}

#[test]
fn segments_overlap() {
    let mut elf = with_data().build();
    // The data segment starts inside the code segment's page.
    elf.phdrs[1].p_vaddr = CODE_GPA + 0x10;
    elf.phdrs[1].p_align = 0x10;
    let e = refused_elf(&elf);
    assert!(
        matches!(
            e,
            ImageError::SegmentsOverlap {
                index: 1,
                start: 0x10_0010,
                prev_end: 0x10_1000,
                ..
            }
        ),
        "{e:?}"
    );
    says(&e, &["segment 1", "0x100010", "0x101000", "overlaps"]);
}

#[test]
fn segment_writable_and_executable() {
    let mut elf = with_data().build();
    elf.phdrs[1].p_flags = PF_R | PF_W | PF_X;
    let gpa = with_data().data_gpa();
    let e = refused_elf(&elf);
    assert!(
        matches!(e, ImageError::WritableAndExecutable { index: 1, vaddr } if vaddr == gpa),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "segment 1 at 0x101000 is writable and executable"
    );
}

#[test]
fn segment_memsz_below_filesz() {
    let elf = code_phdr(|p| p.p_memsz = p.p_filesz - 1);
    let e = refused_elf(&elf);
    assert!(
        matches!(e, ImageError::MemszBelowFilesz { index: 0, .. }),
        "{e:?}"
    );
    let len = ImageBuilder::default().code.len();
    says(
        &e,
        &[
            "segment 0",
            &format!("{:#x}", len - 1),
            &format!("{len:#x}"),
        ],
    );
}

#[test]
fn segment_size_overflows() {
    // p_vaddr + p_memsz wraps.
    let elf = code_phdr(|p| p.p_memsz = u64::MAX - 0x1000);
    let e = refused_elf(&elf);
    assert!(
        matches!(e, ImageError::SegmentOverflow { index: 0, .. }),
        "{e:?}"
    );
    says(&e, &["overflows", "0xffffffffffffefff"]);
    // p_vaddr + p_memsz fits, aligning it up does not.
    let elf = code_phdr(|p| p.p_memsz = u64::MAX - CODE_GPA - 1);
    let e = refused_elf(&elf);
    assert!(
        matches!(e, ImageError::SegmentOverflow { index: 0, .. }),
        "{e:?}"
    );
}

#[test]
fn no_loadable_segment() {
    let elf = code_phdr(|p| {
        p.p_filesz = 0;
        p.p_memsz = 0;
    });
    let e = refused_elf(&elf);
    assert!(matches!(e, ImageError::NoLoadableSegments), "{e:?}");
    says(&e, &["PT_LOAD"]);
}

#[test]
fn segment_data_past_memory() {
    let b = with_data();
    let img = ElfImage::parse(b.to_bytes()).expect("valid image");
    let data_end = b.data_gpa() + 100;
    let mem = data_end - 1;
    let e = img.check_fits(mem).expect_err("data past memory accepted");
    assert!(
        matches!(e, ImageError::SegmentDataOutsideMemory { index: 1, end, mem_size, .. } if end == data_end && mem_size == mem),
        "{e:?}"
    );
    says(
        &e,
        &["segment 1", &format!("{data_end:#x}"), &format!("{mem:#x}")],
    );
}

#[test]
fn segment_bss_past_memory() {
    let b = with_data();
    let img = ElfImage::parse(b.to_bytes()).expect("valid image");
    let end = b.expected_kernel_end();
    let mem = end - 0x1000; // holds the file bytes, not the bss
    let e = img.check_fits(mem).expect_err("bss past memory accepted");
    assert!(
        matches!(e, ImageError::SegmentOutsideMemory { index: 1, end: e2, mem_size, .. } if e2 == end && mem_size == mem),
        "{e:?}"
    );
    says(
        &e,
        &["segment 1", &format!("{end:#x}"), &format!("{mem:#x}")],
    );
    img.check_fits(end).expect("fits exactly");
}

#[test]
fn bss_only_segment_is_checked() {
    // A trailing bss-only segment is not copied but still must not overlap the code.
    let mut elf = ImageBuilder::default().build();
    elf.phdrs.push(elfgen::Phdr {
        p_type: PT_LOAD,
        p_flags: PF_R | PF_W,
        p_vaddr: CODE_GPA,
        p_memsz: 0x1000,
        p_align: 0x1000,
        ..Default::default()
    });
    elf.ehdr.e_phnum += 1;
    let e = refused_elf(&elf);
    assert!(
        matches!(e, ImageError::SegmentsOverlap { index: 3, .. }),
        "{e:?}"
    );
}

// ---- notes ----

#[test]
fn note_truncated() {
    let mut elf = ImageBuilder::default().build();
    let i = elf.phdr_index(PT_NOTE, 0);
    elf.phdrs[i].p_filesz -= 4;
    let e = refused_elf(&elf);
    assert!(
        matches!(
            e,
            ImageError::NoteTruncated {
                index: 1,
                offset: 0,
                need: 36,
                have: 32
            }
        ),
        "{e:?}"
    );
    says(&e, &["segment 1", "36 bytes", "32 left"]);

    // Not even a note header.
    let mut elf = ImageBuilder::default().build();
    elf.phdrs[i].p_filesz = 5;
    let e = refused_elf(&elf);
    assert!(
        matches!(
            e,
            ImageError::NoteTruncated {
                need: 12,
                have: 5,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn note_size_overflow_is_truncation() {
    let mut elf = ImageBuilder::default().build();
    let i = elf.phdr_index(PT_NOTE, 0);
    let off = elf.phdrs[i].p_offset as usize;
    elf.body[off + 4..off + 8].copy_from_slice(&u32::MAX.to_le_bytes()); // n_descsz
    let e = refused_elf(&elf);
    assert!(
        matches!(e, ImageError::NoteTruncated { index: 1, .. }),
        "{e:?}"
    );
    says(&e, &["4294967315"]);
}

#[test]
fn missing_abi_note() {
    let b = ImageBuilder {
        abi_desc: None,
        ..ImageBuilder::default()
    };
    let e = refused_by(&b);
    assert!(matches!(e, ImageError::MissingAbiNote), "{e:?}");
    says(&e, &["ABI note"]);
}

#[test]
fn abi_note_under_another_owner_is_not_the_abi_note() {
    let b = ImageBuilder {
        abi_desc: None,
        extra_notes: note(b"Solo6\0", abi::NOTE_TYPE_ABI, &abi_desc(1, 2)),
        ..ImageBuilder::default()
    };
    let e = refused_by(&b);
    assert!(matches!(e, ImageError::MissingAbiNote), "{e:?}");
}

#[test]
fn duplicate_abi_note() {
    let b = ImageBuilder {
        extra_notes: note(abi::NOTE_NAME, abi::NOTE_TYPE_ABI, &abi_desc(1, 2)),
        ..ImageBuilder::default()
    };
    let e = refused_by(&b);
    assert!(
        matches!(
            e,
            ImageError::DuplicateNote {
                which: "ABI",
                first: 1,
                second: 1
            }
        ),
        "{e:?}"
    );
    says(&e, &["two Solo5 ABI notes"]);
}

#[test]
fn abi_note_wrong_size() {
    for descsz in [8usize, 40] {
        let mut d = abi_desc(1, 2);
        d.resize(descsz, 0);
        let b = ImageBuilder {
            abi_desc: Some(d),
            ..ImageBuilder::default()
        };
        let e = refused_by(&b);
        assert!(
            matches!(e, ImageError::AbiNoteSize { descsz: s } if s as usize == descsz),
            "{e:?}"
        );
        says(&e, &[&format!("n_descsz {descsz}")]);
    }
}

#[test]
fn abi_note_of_other_targets() {
    for (target, name) in [
        (2, "spt"),
        (3, "virtio"),
        (4, "muen"),
        (5, "genode"),
        (6, "xen"),
        (0, "unknown"),
        (77, "unknown"),
    ] {
        let b = ImageBuilder {
            abi_desc: Some(abi_desc(target, 2)),
            ..ImageBuilder::default()
        };
        let e = refused_by(&b);
        assert!(
            matches!(e, ImageError::WrongAbiTarget { target: t, name: n } if t == target && n == name),
            "{e:?}"
        );
        says(&e, &[name, &format!("abi_target {target}")]);
    }
}

#[test]
fn abi_note_other_target_reported_before_segment_errors() {
    let mut elf = ImageBuilder {
        abi_desc: Some(abi_desc(abi::ABI_TARGET_SPT, 2)),
        ..ImageBuilder::default()
    }
    .build();
    elf.phdrs[0].p_flags = PF_R | PF_W | PF_X;
    let e = refused_elf(&elf);
    assert!(
        matches!(e, ImageError::WrongAbiTarget { target: 2, .. }),
        "{e:?}"
    );
}

#[test]
fn abi_note_wrong_version() {
    let b = ImageBuilder {
        abi_desc: Some(abi_desc(1, 1)),
        ..ImageBuilder::default()
    };
    let e = refused_by(&b);
    assert!(
        matches!(e, ImageError::WrongAbiVersion { version: 1 }),
        "{e:?}"
    );
    says(&e, &["version 1"]);
}

// ---- manifest ----

fn refused_manifest(desc: Vec<u8>) -> ImageError {
    refused_by(&ImageBuilder {
        mft_desc: Some(desc),
        ..ImageBuilder::default()
    })
}

#[test]
fn missing_manifest_note() {
    let b = ImageBuilder {
        mft_desc: None,
        ..ImageBuilder::default()
    };
    let e = refused_by(&b);
    assert!(matches!(e, ImageError::MissingManifestNote), "{e:?}");
    says(&e, &["manifest note"]);
}

#[test]
fn duplicate_manifest_note() {
    let b = ImageBuilder {
        notes_in_one_segment: true,
        extra_notes: note(abi::NOTE_NAME, abi::NOTE_TYPE_MFT, &mft_desc(&[])),
        ..ImageBuilder::default()
    };
    let e = refused_by(&b);
    assert!(
        matches!(
            e,
            ImageError::DuplicateNote {
                which: "manifest",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn manifest_note_too_large_or_small() {
    // 65 entries would be 6772 bytes: over the note limit before the entry limit.
    let mut entries = vec![RawEntry::reserved_first()];
    entries.extend((0..64).map(|i| RawEntry::new(&format!("d{i}"), 1)));
    let e = refused_manifest(mft_desc_raw(1, 65, &entries));
    assert!(
        matches!(e, ImageError::ManifestNoteSize { descsz: 6772 }),
        "{e:?}"
    );
    says(&e, &["6772", "6668"]);

    let e = refused_manifest(vec![0; 8]);
    assert!(
        matches!(e, ImageError::ManifestNoteSize { descsz: 8 }),
        "{e:?}"
    );
    says(&e, &["n_descsz 8"]);
}

#[test]
fn manifest_wrong_version() {
    let mut d = mft_desc(&[]);
    d[4..8].copy_from_slice(&2u32.to_le_bytes());
    let e = refused_manifest(d);
    assert!(
        matches!(e, ImageError::ManifestVersion { version: 2 }),
        "{e:?}"
    );
    says(&e, &["version 2"]);
}

#[test]
fn manifest_too_many_entries() {
    let e = refused_manifest(mft_desc_raw(1, 65, &[RawEntry::reserved_first()]));
    assert!(
        matches!(e, ImageError::ManifestTooManyEntries { entries: 65 }),
        "{e:?}"
    );
    says(&e, &["65 entries"]);
    let e = refused_manifest(mft_desc_raw(1, u32::MAX, &[RawEntry::reserved_first()]));
    assert!(
        matches!(e, ImageError::ManifestTooManyEntries { .. }),
        "{e:?}"
    );
}

#[test]
fn manifest_size_mismatch() {
    // Declares 2 entries, holds 1.
    let e = refused_manifest(mft_desc_raw(1, 2, &[RawEntry::reserved_first()]));
    assert!(
        matches!(
            e,
            ImageError::ManifestSizeMismatch {
                size: 112,
                entries: 2,
                expected: 216
            }
        ),
        "{e:?}"
    );
    says(&e, &["112 bytes", "2 entries", "216"]);
    // One byte too many.
    let mut d = mft_desc(&[]);
    d.push(0);
    let e = refused_manifest(d);
    assert!(
        matches!(e, ImageError::ManifestSizeMismatch { size: 113, .. }),
        "{e:?}"
    );
}

#[test]
fn manifest_without_entries() {
    let e = refused_manifest(mft_desc_raw(1, 0, &[]));
    assert!(matches!(e, ImageError::ManifestNoEntries), "{e:?}");
    says(&e, &["RESERVED_FIRST"]);
}

#[test]
fn manifest_first_entry_wrong_type() {
    let e = refused_manifest(mft_desc_raw(1, 1, &[RawEntry::new("", 2)]));
    assert!(
        matches!(e, ImageError::ManifestFirstEntryType { kind: 2 }),
        "{e:?}"
    );
    says(&e, &["type 0x2"]);
}

#[test]
fn manifest_first_entry_named() {
    let e = refused_manifest(mft_desc_raw(
        1,
        1,
        &[RawEntry::new("boot", abi::MFT_RESERVED_FIRST)],
    ));
    assert!(
        matches!(e, ImageError::ManifestFirstEntryName { ref name } if name == "boot"),
        "{e:?}"
    );
    says(&e, &["\"boot\""]);
}

fn refused_entry(entry: RawEntry) -> ImageError {
    refused_manifest(mft_desc_raw(
        1,
        3,
        &[RawEntry::reserved_first(), RawEntry::new("net0", 2), entry],
    ))
}

#[test]
fn manifest_name_unterminated() {
    let mut e = RawEntry::new("", 1);
    e.name = [b'a'; 68];
    let e = refused_entry(e);
    assert!(
        matches!(e, ImageError::ManifestNameUnterminated { index: 2 }),
        "{e:?}"
    );
    says(&e, &["entry 2", "68 bytes"]);
}

#[test]
fn manifest_name_empty() {
    let e = refused_entry(RawEntry::new("", 1));
    assert!(
        matches!(e, ImageError::ManifestNameEmpty { index: 2 }),
        "{e:?}"
    );
    says(&e, &["entry 2", "empty"]);
}

#[test]
fn manifest_name_invalid() {
    for (bad, shown) in [("net-0", "net-0"), ("a b", "a b"), ("n\u{1b}x", "n\\x1bx")] {
        let e = refused_entry(RawEntry::new(bad, 1));
        assert!(
            matches!(e, ImageError::ManifestNameInvalid { index: 2, ref name } if name == shown),
            "{e:?}"
        );
        says(&e, &["entry 2", shown, "[A-Za-z0-9]"]);
    }
}

#[test]
fn manifest_name_duplicate() {
    let e = refused_entry(RawEntry::new("net0", 1));
    assert!(
        matches!(e, ImageError::ManifestNameDuplicate { index: 2, first: 1, ref name } if name == "net0"),
        "{e:?}"
    );
    says(&e, &["entry 2", "\"net0\"", "entry 1"]);
}

#[test]
fn manifest_entry_wrong_type() {
    for kind in [0, 3, abi::MFT_RESERVED_FIRST] {
        let e = refused_entry(RawEntry::new("disk", kind));
        assert!(
            matches!(e, ImageError::ManifestEntryType { index: 2, kind: k, .. } if k == kind),
            "{e:?}"
        );
        says(&e, &["entry 2", "\"disk\"", &format!("type {kind:#x}")]);
    }
}

#[test]
fn manifest_entry_attached() {
    let mut entry = RawEntry::new("disk", 1);
    entry.attached = 1;
    let e = refused_entry(entry);
    assert!(
        matches!(
            e,
            ImageError::ManifestEntryAttached {
                index: 2,
                value: 1,
                ..
            }
        ),
        "{e:?}"
    );
    says(&e, &["entry 2", "\"disk\"", "attached"]);

    let mut first = RawEntry::reserved_first();
    first.attached = 0xff;
    let e = refused_manifest(mft_desc_raw(1, 1, &[first]));
    assert!(
        matches!(
            e,
            ImageError::ManifestEntryAttached {
                index: 0,
                value: 0xff,
                ..
            }
        ),
        "{e:?}"
    );
}

// ---- files ----

#[test]
fn missing_file() {
    let path = std::path::Path::new("/nonexistent/summon/image.hvt");
    let e = ElfImage::from_file(path).expect_err("missing file accepted");
    assert!(matches!(e, ImageError::Io { .. }), "{e:?}");
    says(&e, &["/nonexistent/summon/image.hvt"]);
}

#[test]
fn file_larger_than_any_memory() {
    let dir = std::env::temp_dir().join(format!("summon-image-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("huge.hvt");
    let f = std::fs::File::create(&path).unwrap();
    // Sparse: costs no disk space, and the size check comes before any read.
    f.set_len(abi::MEM_MAX + 1).unwrap();
    let e = ElfImage::from_file(&path);
    std::fs::remove_dir_all(&dir).unwrap();
    let e = e.expect_err("4 GiB + 1 image accepted");
    assert!(
        matches!(e, ImageError::FileTooLarge { size, .. } if size == abi::MEM_MAX + 1),
        "{e:?}"
    );
    says(&e, &["4294967297"]);
}
