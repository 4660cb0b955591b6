//! Arbitrary bytes as an hvt image: parsing must never panic, and whatever it accepts must
//! satisfy the invariants the VMM relies on when it loads the segments.
#![no_main]

use libfuzzer_sys::fuzz_target;
use summon_image::ElfImage;

fuzz_target!(|data: &[u8]| {
    let img = match ElfImage::parse(data.to_vec()) {
        Ok(img) => img,
        Err(e) => {
            // Formatting walks every field of the error: it must not panic either.
            let _ = e.to_string();
            return;
        }
    };
    assert!(img.entry >= 0x10_0000);
    assert!(!img.segments.is_empty());
    let mut prev_end = 0u64;
    for seg in &img.segments {
        let (start, end) = (seg.aligned_start(), seg.aligned_end());
        assert!(seg.gpa >= 0x10_0000 && start >= 0x10_0000);
        assert!(start <= seg.gpa);
        assert!(seg.memsz >= seg.filesz);
        assert!(
            end >= seg.gpa + seg.memsz,
            "aligned end below the segment's end"
        );
        assert_eq!(start % 0x1000, 0);
        assert_eq!(end % 0x1000, 0);
        assert!(start >= prev_end, "segments overlap");
        assert!(!(seg.writable && seg.executable));
        assert!(end <= img.kernel_end);
        assert_eq!(img.segment_data(seg).unwrap().len() as u64, seg.filesz);
        prev_end = end;
    }
    assert_eq!(img.kernel_end, prev_end);
    for mem in [
        0,
        2 << 20,
        img.kernel_end,
        img.kernel_end.saturating_sub(1),
        4 << 30,
        u64::MAX,
    ] {
        let fits = img.check_fits(mem);
        if fits.is_ok() {
            assert!(img.entry < mem && img.kernel_end <= mem);
        } else if img.entry < mem && img.kernel_end <= mem {
            panic!("refused although it fits: {fits:?}");
        }
    }
    let entries = img.manifest.to_entries();
    assert_eq!(entries.len(), img.manifest.devices.len() + 1);
    for (i, d) in img.manifest.devices.iter().enumerate() {
        assert!(!d.name.is_empty() && d.name.len() <= 67);
        assert!(d.name.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(img.manifest.handle_of(&d.name), Some(i as u64 + 1));
    }
    let _ = format!("{img:?}");
});
