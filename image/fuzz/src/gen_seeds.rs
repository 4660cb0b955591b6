//! Writes the seed corpus for `elf_parse`: valid images of every shape `elfgen` makes, plus a few
//! that fail late (in the manifest, in check_fits) so the fuzzer starts deep in the parser.
//!
//! Usage: `cargo +nightly run --bin gen_seeds -- corpus/elf_parse`

use summon_test_support::elfgen;

use elfgen::{mft_desc, mft_desc_raw, note, ImageBuilder, RawEntry, CODE_GPA};
use summon_hvt_abi as abi;
use summon_image::ElfImage;

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "corpus/elf_parse".into());
    std::fs::create_dir_all(&dir).expect("create corpus dir");
    let names: Vec<String> = (1..64).map(|i| format!("d{i}")).collect();
    let full: Vec<(&str, u32)> = names.iter().map(|n| (n.as_str(), 1)).collect();
    let seeds: Vec<(&str, ImageBuilder)> = vec![
        ("minimal", ImageBuilder::default()),
        (
            "data-bss",
            ImageBuilder {
                code: elfgen::puts_halt_program(CODE_GPA, b"hi\n", 0),
                data: Some(vec![1, 2, 3, 4, 5, 6, 7, 8]),
                bss: 0x2000,
                ..ImageBuilder::default()
            },
        ),
        (
            "devices",
            ImageBuilder::with_devices(&[("net0", 2), ("disk", 1), ("service", 2)]),
        ),
        (
            "one-note-segment",
            ImageBuilder {
                notes_in_one_segment: true,
                mft_desc: Some(mft_desc(&[("net0", 2)])),
                ..ImageBuilder::default()
            },
        ),
        (
            "foreign-notes",
            ImageBuilder {
                extra_notes: note(b"GNU\0", 3, &[0xab; 20]),
                gnu_stack: true,
                ..ImageBuilder::default()
            },
        ),
        (
            "full-manifest",
            ImageBuilder {
                mft_desc: Some(mft_desc(&full)),
                ..ImageBuilder::default()
            },
        ),
        (
            "attached-entry",
            ImageBuilder {
                mft_desc: Some(mft_desc_raw(
                    1,
                    2,
                    &[RawEntry::reserved_first(), {
                        let mut e = RawEntry::new("x", 2);
                        e.attached = 1;
                        e
                    }],
                )),
                ..ImageBuilder::default()
            },
        ),
        (
            "spt",
            ImageBuilder {
                abi_desc: Some(elfgen::abi_desc(abi::ABI_TARGET_SPT, 2)),
                ..ImageBuilder::default()
            },
        ),
        (
            "entry-high",
            ImageBuilder {
                entry: Some(0x4000_0000),
                ..ImageBuilder::default()
            },
        ),
    ];
    for (name, b) in &seeds {
        write(&dir, name, b.to_bytes());
    }
    // Small files make for fast mutation: the same minimal image, with the code page pulled in
    // right after the headers (file offset 0x200 instead of 0x1000).
    let mut elf = ImageBuilder::default().build();
    let code = elf.phdrs[0].clone();
    let tail = elf.body.split_off(code.p_offset as usize);
    elf.body.truncate(0x200);
    elf.body.extend_from_slice(&tail);
    for ph in &mut elf.phdrs {
        if ph.p_offset >= code.p_offset {
            ph.p_offset -= code.p_offset - 0x200;
        }
    }
    write(&dir, "compact", elf.to_bytes());
    println!("{} seeds in {dir}", seeds.len() + 1);
}

/// Writes one seed and says how the parser takes it, so a seed meant to be valid that is not
/// shows up at once.
fn write(dir: &str, name: &str, bytes: Vec<u8>) {
    std::fs::write(format!("{dir}/seed-{name}"), &bytes).expect("write seed");
    match ElfImage::parse(bytes) {
        Ok(img) => match img.check_fits(512 << 20) {
            Ok(()) => println!("{name}: valid"),
            Err(e) => println!("{name}: parses, does not fit 512 MiB: {e}"),
        },
        Err(e) => println!("{name}: refused: {e}"),
    }
}
