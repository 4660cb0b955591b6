//! Valid hvt images parse to the right entry point, segments, `kernel_end` and manifest: images
//! from the in-memory generator, and images made by the real GNU assembler and linker.

use summon_test_support::elfgen;

use std::path::{Path, PathBuf};
use std::process::Command;

use elfgen::{mft_desc, note, ImageBuilder, CODE_GPA, PF_R, PF_W, PT_LOAD};
use summon_hvt_abi as abi;
use summon_image::{DeviceKind, Manifest, ManifestDevice};
use summon_image::{ElfImage, ImageError, Segment};

fn parse(b: &ImageBuilder) -> ElfImage {
    ElfImage::parse(b.to_bytes()).unwrap_or_else(|e| panic!("valid image refused: {e}"))
}

#[test]
fn minimal_image() {
    let b = ImageBuilder::default();
    let img = parse(&b);
    assert_eq!(img.entry, CODE_GPA);
    assert_eq!(img.kernel_end, 0x10_1000);
    assert_eq!(
        img.segments,
        vec![Segment {
            gpa: CODE_GPA,
            file_offset: 0x1000,
            filesz: b.code.len() as u64,
            memsz: b.code.len() as u64,
            align: 0x1000,
            readable: true,
            writable: false,
            executable: true,
            phdr_index: 0,
        }]
    );
    assert_eq!(
        img.segment_data(&img.segments[0]).unwrap(),
        b.code.as_slice()
    );
    assert_eq!(img.segments[0].aligned_start(), CODE_GPA);
    assert_eq!(img.segments[0].aligned_end(), 0x10_1000);
    assert_eq!(
        img.abi,
        abi::AbiNote {
            abi_target: 1,
            abi_version: 2,
            reserved0: 0,
            reserved1: 0
        }
    );
    assert_eq!(img.manifest, Manifest::default());
    img.check_fits(abi::MEM_MIN).expect("fits in 2 MiB");
    // The smallest memory it fits: up to its aligned end, entry inside.
    img.check_fits(0x10_1000).expect("fits exactly");
    img.check_fits(0x10_0fff).expect_err("one byte short");
}

#[test]
fn code_data_and_bss() {
    let b = ImageBuilder {
        code: elfgen::puts_halt_program(CODE_GPA, b"hello\n", 3),
        data: Some((0..=255).collect()),
        bss: 0x3_0000,
        entry: Some(CODE_GPA),
        ..ImageBuilder::default()
    };
    let img = parse(&b);
    assert_eq!(img.segments.len(), 2);
    let data = &img.segments[1];
    assert_eq!(data.gpa, b.data_gpa());
    assert_eq!((data.filesz, data.memsz), (256, 256 + 0x3_0000));
    assert!(data.readable && data.writable && !data.executable);
    assert_eq!(
        img.segment_data(data).unwrap(),
        (0..=255).collect::<Vec<u8>>().as_slice()
    );
    assert_eq!(img.kernel_end, b.expected_kernel_end());
    assert_eq!(img.kernel_end, 0x13_2000);
    img.check_fits(img.kernel_end)
        .expect("fits up to kernel_end");
}

#[test]
fn manifest_devices_in_order_with_handles() {
    let long = "N".repeat(abi::MFT_NAME_MAX); // 67 chars: the NUL sits at [67]
    let b = ImageBuilder::with_devices(&[
        ("net0", abi::MFT_DEV_NET_BASIC),
        ("storage", abi::MFT_DEV_BLOCK_BASIC),
        (&long, abi::MFT_DEV_NET_BASIC),
    ]);
    let img = parse(&b);
    let dev = |name: &str, kind| ManifestDevice {
        name: name.to_owned(),
        kind,
    };
    assert_eq!(
        img.manifest.devices,
        vec![
            dev("net0", DeviceKind::Net),
            dev("storage", DeviceKind::Block),
            dev(&long, DeviceKind::Net)
        ]
    );
    assert_eq!(img.manifest.handle_of("net0"), Some(1));
    assert_eq!(img.manifest.handle_of("storage"), Some(2));
    assert_eq!(img.manifest.handle_of("nope"), None);
    let entries = img.manifest.to_entries();
    assert_eq!(entries.len(), 4);
    assert_eq!(entries[0].kind, abi::MFT_RESERVED_FIRST);
    assert_eq!(entries[0].name_bytes(), b"");
    assert_eq!(entries[2].name_bytes(), b"storage");
    assert_eq!(entries[3].name_bytes(), long.as_bytes());
    assert!(entries.iter().all(|e| !e.attached));
}

#[test]
fn full_manifest_of_64_entries() {
    let names: Vec<String> = (1..64).map(|i| format!("dev{i}")).collect();
    let devices: Vec<(&str, u32)> = names
        .iter()
        .map(|n| (n.as_str(), abi::MFT_DEV_BLOCK_BASIC))
        .collect();
    let desc = mft_desc(&devices);
    assert_eq!(desc.len(), abi::MFT_NOTE_DESC_MAX as usize);
    let img = parse(&ImageBuilder {
        mft_desc: Some(desc),
        ..ImageBuilder::default()
    });
    assert_eq!(img.manifest.devices.len(), 63);
    assert_eq!(img.manifest.handle_of("dev63"), Some(63));
}

#[test]
fn both_notes_in_one_segment() {
    let b = ImageBuilder {
        notes_in_one_segment: true,
        mft_desc: Some(mft_desc(&[("net0", abi::MFT_DEV_NET_BASIC)])),
        ..ImageBuilder::default()
    };
    let img = parse(&b);
    assert_eq!(img.manifest.devices.len(), 1);
}

#[test]
fn padding_before_an_eight_aligned_note() {
    // ABI note (36 bytes) + 4 zero bytes + manifest note at offset 40, as a linker lays out a
    // 4-aligned note section followed by an 8-aligned one in one segment.
    let mut elf = ImageBuilder {
        notes_in_one_segment: true,
        mft_desc: Some(mft_desc(&[("disk", abi::MFT_DEV_BLOCK_BASIC)])),
        ..ImageBuilder::default()
    }
    .build();
    let i = elf.phdr_index(elfgen::PT_NOTE, 0);
    let off = elf.phdrs[i].p_offset as usize;
    elf.body.splice(off + 36..off + 36, [0u8; 4]);
    elf.phdrs[i].p_filesz += 4;
    let img = ElfImage::parse(elf.to_bytes()).expect("padded notes refused");
    assert_eq!(img.manifest.devices[0].name, "disk");
}

#[test]
fn foreign_notes_and_gnu_stack_are_ignored() {
    let mut extra = note(b"GNU\0", 3, &[0xab; 20]); // build-id
    extra.extend(note(b"Solo5\0", 0x4242_4242, &[1, 2, 3])); // another Solo5 note type
    extra.extend(note(b"Solo", abi::NOTE_TYPE_ABI, &[0; 16])); // n_namesz 4: not ours
    let b = ImageBuilder {
        extra_notes: extra,
        gnu_stack: true,
        ..ImageBuilder::default()
    };
    let img = parse(&b);
    assert_eq!(img.segments.len(), 1);
}

#[test]
fn bss_only_segment_counts_for_kernel_end() {
    let b = ImageBuilder::default();
    let mut elf = b.build();
    elf.phdrs.push(elfgen::Phdr {
        p_type: PT_LOAD,
        p_flags: PF_R | PF_W,
        p_offset: 0x7777_7777, // meaningless for filesz 0
        p_vaddr: 0x20_0000,
        p_memsz: 0x1800,
        p_align: 0x1000,
        ..Default::default()
    });
    elf.ehdr.e_phnum += 1;
    let img = ElfImage::parse(elf.to_bytes()).expect("bss-only segment refused");
    assert_eq!(img.segments.len(), 2);
    assert_eq!(img.kernel_end, 0x20_2000);
    assert!(img.segment_data(&img.segments[1]).unwrap().is_empty());
    img.check_fits(0x20_2000).expect("fits");
    img.check_fits(0x20_1000).expect_err("bss past memory");
}

#[test]
fn empty_load_segment_is_skipped() {
    let mut elf = ImageBuilder::default().build();
    elf.phdrs.insert(
        0,
        elfgen::Phdr {
            p_type: PT_LOAD,
            p_vaddr: 0x1234, // neither checked nor loaded: it occupies nothing
            ..Default::default()
        },
    );
    elf.ehdr.e_phnum += 1;
    let img = ElfImage::parse(elf.to_bytes()).expect("empty PT_LOAD refused");
    assert_eq!(img.segments.len(), 1);
    assert_eq!(img.segments[0].phdr_index, 1);
}

#[test]
fn from_file_reads_the_image() {
    let dir = tempdir("from-file");
    let path = dir.join("hello.hvt");
    let b = ImageBuilder::with_devices(&[("service", abi::MFT_DEV_NET_BASIC)]);
    std::fs::write(&path, b.to_bytes()).unwrap();
    let img = ElfImage::from_file(&path);
    std::fs::remove_dir_all(&dir).unwrap();
    let img = img.expect("valid file refused");
    assert_eq!(img.manifest.handle_of("service"), Some(1));
    assert_eq!(img.file_len(), b.to_bytes().len());
    // The segments come from the (still open, now unlinked) file, byte for byte as from memory.
    let in_memory = parse(&b);
    assert_eq!(img.segments, in_memory.segments);
    for seg in &img.segments {
        assert_eq!(
            img.segment_data(seg).unwrap(),
            in_memory.segment_data(seg).unwrap()
        );
        let mut wrong_size = vec![0; seg.filesz as usize + 1];
        assert!(img.read_segment(seg, &mut wrong_size).is_err());
    }
}

/// `read` takes the whole file into memory: the segments are the same, and nothing stays open.
#[test]
fn read_takes_the_image_into_memory() {
    let dir = tempdir("read");
    let path = dir.join("hello.hvt");
    let b = ImageBuilder::with_devices(&[("service", abi::MFT_DEV_NET_BASIC)]);
    std::fs::write(&path, b.to_bytes()).unwrap();
    let img = ElfImage::read(&path);
    // Truncated after the read: an image in memory does not notice.
    std::fs::write(&path, b"").unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let img = img.expect("valid file refused");
    let in_memory = parse(&b);
    assert_eq!(img.segments, in_memory.segments);
    for seg in &img.segments {
        assert_eq!(
            img.segment_data(seg).unwrap(),
            in_memory.segment_data(seg).unwrap()
        );
    }
    assert!(matches!(
        ElfImage::read(&dir.join("missing.hvt")),
        Err(summon_image::ImageError::Io { .. })
    ));
}

/// `read_opened` reads a file someone else opened: the same image as by path, the file's path
/// named in its errors, and its size checked like any other.
#[test]
fn read_opened_takes_an_open_file_as_read_takes_a_path() {
    let dir = tempdir("opened");
    let path = dir.join("hello.hvt");
    let b = ImageBuilder::with_devices(&[("service", abi::MFT_DEV_NET_BASIC)]);
    std::fs::write(&path, b.to_bytes()).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let img = ElfImage::read_opened(file, &path).expect("valid file refused");
    assert_eq!(img.segments, ElfImage::read(&path).unwrap().segments);
    let empty = dir.join("empty.hvt");
    std::fs::write(&empty, b"").unwrap();
    let err = ElfImage::read_opened(std::fs::File::open(&empty).unwrap(), &empty);
    assert!(err.is_err(), "an empty file was accepted");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A file cut short after its headers were checked: loading a segment is a clear I/O error.
#[test]
fn file_truncated_after_the_checks_is_an_error_at_load() {
    let dir = tempdir("truncated");
    let path = dir.join("hello.hvt");
    let b = ImageBuilder::with_devices(&[]);
    std::fs::write(&path, b.to_bytes()).unwrap();
    let img = ElfImage::from_file(&path).expect("valid file refused");
    let code = img.segments[0].clone();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(code.file_offset as u64 + 1)
        .unwrap();
    let mut dst = vec![0; code.filesz as usize];
    let e = img
        .read_segment(&code, &mut dst)
        .expect_err("short read accepted");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(matches!(e, ImageError::Io { .. }), "{e}");
    assert!(e.to_string().contains("hello.hvt"), "{e}");
}

// ---- images from the real toolchain ----

/// The tools the real-toolchain tests need; `None` (with the reason printed) lets them skip
/// outside CI, and CI=true turns a missing tool into a failure.
fn toolchain() -> Option<()> {
    for tool in ["as", "ld"] {
        if Command::new(tool).arg("--version").output().is_err() {
            let msg = format!("`{tool}` not found: cannot build a real image");
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{msg}");
            }
            eprintln!("skipping: {msg}");
            return None;
        }
    }
    Some(())
}

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("summon-image-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Assembly of a tiny hvt image: HALT(7) in .text, one word in .data, 8 KiB of .bss, and the
/// two Solo5 notes (ABI 4-aligned, manifest 8-aligned, as Solo5's C headers declare them).
const ASM: &str = r#"
    .section .text
    .globl _start
_start:
    movl $halt_args, %eax
    movw $0x508, %dx
    outl %eax, %dx
1:  jmp 1b

    .section .rodata
    .p2align 3
halt_args:
    .quad 0
    .long 7
    .long 0

    .section .data
    .quad 0x1122334455667788

    .section .bss
    .zero 8192

    .section .note.solo5.abi, "a", @note
    .p2align 2
    .long 6, 16, 0x31494241
    .asciz "Solo5"
    .p2align 2
    .long 1, 2, 0, 0

    .section .note.solo5.manifest, "a", @note
    .p2align 3
    .long 6, 4 + 8 + 2 * 104, 0x3154464d
    .asciz "Solo5"
    .p2align 2
    .long 0                 # pad: struct mft at note offset 24
    .long 1, 2              # version, entries
    .zero 68                # e[0]: empty name
    .long 0x40000000        #       RESERVED_FIRST
    .zero 32
    .ascii "service0"       # e[1]
    .zero 60
    .long 2                 #       NET_BASIC
    .zero 32
"#;

/// A linker script with one PT_NOTE per note (`separate`) or both in one.
fn script(separate: bool) -> String {
    let (phdr_notes, abi_seg, mft_seg) = if separate {
        (
            "note_abi PT_NOTE; note_mft PT_NOTE;",
            ":rodata :note_abi",
            ":rodata :note_mft",
        )
    } else {
        ("notes PT_NOTE;", ":rodata :notes", ":rodata :notes")
    };
    format!(
        r#"ENTRY(_start)
PHDRS {{
    text PT_LOAD FLAGS(5);
    rodata PT_LOAD FLAGS(4);
    data PT_LOAD FLAGS(6);
    {phdr_notes}
}}
SECTIONS {{
    . = 0x100000;
    .text : {{ *(.text) }} :text
    . = ALIGN(0x1000);
    .rodata : {{ *(.rodata) }} :rodata
    .note.solo5.abi : {{ *(.note.solo5.abi) }} {abi_seg}
    .note.solo5.manifest : {{ *(.note.solo5.manifest) }} {mft_seg}
    . = ALIGN(0x1000);
    .data : {{ *(.data) }} :data
    .bss : {{ *(.bss) }} :data
    . = ALIGN(0x1000);
    /DISCARD/ : {{ *(.note.gnu.property) *(.comment) }}
}}
"#
    )
}

fn link(dir: &Path, separate: bool) -> PathBuf {
    let src = dir.join("image.s");
    let obj = dir.join("image.o");
    let lds = dir.join("image.lds");
    let out = dir.join("image.hvt");
    std::fs::write(&src, ASM).unwrap();
    std::fs::write(&lds, script(separate)).unwrap();
    let run = |cmd: &mut Command| {
        let o = cmd.output().expect("spawn");
        assert!(
            o.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(Command::new("as").arg("-o").arg(&obj).arg(&src));
    run(Command::new("ld")
        .args(["-static", "-nostdlib", "-z", "max-page-size=0x1000", "-T"])
        .arg(&lds)
        .arg("-o")
        .arg(&out)
        .arg(&obj));
    out
}

fn check_linked(img: &ElfImage) {
    assert_eq!(img.entry, CODE_GPA);
    let kinds: Vec<(bool, bool, bool)> = img
        .segments
        .iter()
        .map(|s| (s.readable, s.writable, s.executable))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (true, false, true),
            (true, false, false),
            (true, true, false)
        ]
    );
    let data = &img.segments[2];
    assert_eq!(data.filesz, 8);
    assert_eq!(data.memsz, 8 + 8192);
    assert_eq!(
        img.segment_data(data).unwrap(),
        0x1122334455667788u64.to_le_bytes().as_slice()
    );
    assert_eq!(img.kernel_end, data.aligned_end());
    assert_eq!(img.kernel_end % 0x1000, 0);
    assert_eq!(
        img.manifest.devices,
        vec![ManifestDevice {
            name: "service0".into(),
            kind: DeviceKind::Net
        }]
    );
    // The code really is ours: `mov $imm32, %eax` first.
    assert_eq!(
        img.segment_data(&img.segments[0]).unwrap().first(),
        Some(&0xb8)
    );
    img.check_fits(abi::MEM_MIN).expect("fits in 2 MiB");
}

#[test]
fn gnu_ld_image_with_one_note_per_segment() {
    if toolchain().is_none() {
        return;
    }
    let dir = tempdir("ld-separate");
    let img = ElfImage::from_file(&link(&dir, true));
    std::fs::remove_dir_all(&dir).unwrap();
    check_linked(&img.expect("ld output refused"));
}

#[test]
fn gnu_ld_image_with_both_notes_in_one_segment() {
    if toolchain().is_none() {
        return;
    }
    let dir = tempdir("ld-merged");
    let img = ElfImage::from_file(&link(&dir, false));
    std::fs::remove_dir_all(&dir).unwrap();
    check_linked(&img.expect("ld output refused"));
}
