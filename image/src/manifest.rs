//! The Solo5 manifest (`MFT1` note): the devices an image expects, checked as the reference
//! tender checks them (`docs/hvt-abi.md` section 1, "Manifest note").

use summon_hvt_abi as abi;

use crate::elf::{read_array, read_u32};
use crate::error::ImageError;

/// Size of one `struct mft_entry` in the file.
const ENTRY_SIZE: usize = core::mem::size_of::<abi::MftEntry>();
/// Size of the `struct mft` header (version, entries).
const HEADER_SIZE: usize = core::mem::size_of::<abi::MftHeader>();
const KIND_OFFSET: usize = 68;
const ATTACHED_OFFSET: usize = 96;

/// What a manifest device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    Block,
    Net,
}

impl DeviceKind {
    /// The `type` value of a manifest entry of this kind.
    pub fn mft_type(self) -> u32 {
        match self {
            DeviceKind::Block => abi::MFT_DEV_BLOCK_BASIC,
            DeviceKind::Net => abi::MFT_DEV_NET_BASIC,
        }
    }
}

/// One device the image expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestDevice {
    /// `[A-Za-z0-9]{1,67}`, unique within the manifest.
    pub name: String,
    pub kind: DeviceKind,
}

/// The image's devices: manifest entries 1.. (entry 0, RESERVED_FIRST, is checked and left out).
/// The guest's handle for `devices[i]` is `i + 1`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    pub devices: Vec<ManifestDevice>,
}

impl Manifest {
    /// Parses the descriptor of the `MFT1` note (`descsz` bytes: 4 pad bytes, then `struct mft`).
    pub fn parse_note(desc: &[u8], descsz: u32) -> Result<Manifest, ImageError> {
        let min = (abi::MFT_NOTE_PAD + HEADER_SIZE) as u32;
        if !(min..=abi::MFT_NOTE_DESC_MAX).contains(&descsz) {
            return Err(ImageError::ManifestNoteSize { descsz });
        }
        let mft = desc
            .get(abi::MFT_NOTE_PAD..)
            .ok_or(ImageError::ManifestNoteSize { descsz })?;
        Self::parse(mft)
    }

    /// Parses a `struct mft` of exactly `mft.len()` bytes.
    pub fn parse(mft: &[u8]) -> Result<Manifest, ImageError> {
        let size = mft.len() as u64;
        let version = read_u32(mft, 0).ok_or(ImageError::ManifestSizeMismatch {
            size,
            entries: 0,
            expected: HEADER_SIZE as u64,
        })?;
        if version != abi::MFT_VERSION {
            return Err(ImageError::ManifestVersion { version });
        }
        let entries = read_u32(mft, 4).ok_or(ImageError::ManifestSizeMismatch {
            size,
            entries: 0,
            expected: HEADER_SIZE as u64,
        })?;
        if entries > abi::MFT_MAX_ENTRIES {
            return Err(ImageError::ManifestTooManyEntries { entries });
        }
        // entries <= 64: the product is small, but stay in checked arithmetic all the same.
        let expected = u64::from(entries)
            .checked_mul(ENTRY_SIZE as u64)
            .and_then(|n| n.checked_add(HEADER_SIZE as u64))
            .unwrap_or(u64::MAX);
        if size != expected {
            return Err(ImageError::ManifestSizeMismatch {
                size,
                entries,
                expected,
            });
        }
        let table = mft.get(HEADER_SIZE..).unwrap_or(&[]);
        let mut raw = table.chunks_exact(ENTRY_SIZE);
        let first = raw.next().ok_or(ImageError::ManifestNoEntries)?;
        check_first_entry(first)?;

        let mut devices: Vec<ManifestDevice> = Vec::new();
        for (i, e) in raw.enumerate() {
            let index = i.saturating_add(1);
            let name = entry_name(e, index)?;
            if let Some(first) = devices.iter().position(|d| d.name == name) {
                return Err(ImageError::ManifestNameDuplicate {
                    index,
                    name,
                    first: first.saturating_add(1),
                });
            }
            let kind = match read_u32(e, KIND_OFFSET).unwrap_or(0) {
                abi::MFT_DEV_BLOCK_BASIC => DeviceKind::Block,
                abi::MFT_DEV_NET_BASIC => DeviceKind::Net,
                kind => return Err(ImageError::ManifestEntryType { index, name, kind }),
            };
            check_unattached(e, index, &name)?;
            devices.push(ManifestDevice { name, kind });
        }
        Ok(Manifest { devices })
    }

    /// The guest handle of the device called `name` (its index in the manifest).
    pub fn handle_of(&self, name: &str) -> Option<u64> {
        let i = self.devices.iter().position(|d| d.name == name)?;
        u64::try_from(i).ok()?.checked_add(1)
    }

    /// The manifest as the guest expects to find it: entry 0 (RESERVED_FIRST) and one
    /// unattached entry per device, for the tender to fill in and copy after the boot info.
    pub fn to_entries(&self) -> Vec<abi::MftEntry> {
        std::iter::once(abi::MftEntry::new("", abi::MFT_RESERVED_FIRST))
            .chain(
                self.devices
                    .iter()
                    .map(|d| abi::MftEntry::new(&d.name, d.kind.mft_type())),
            )
            .collect()
    }
}

fn check_first_entry(e: &[u8]) -> Result<(), ImageError> {
    let kind = read_u32(e, KIND_OFFSET).unwrap_or(0);
    if kind != abi::MFT_RESERVED_FIRST {
        return Err(ImageError::ManifestFirstEntryType { kind });
    }
    let name = e.get(..abi::MFT_NAME_SIZE).unwrap_or(&[]);
    if name.first().is_some_and(|&c| c != 0) {
        let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
        return Err(ImageError::ManifestFirstEntryName {
            name: printable(name.get(..end).unwrap_or(&[])),
        });
    }
    check_unattached(e, 0, "")
}

/// The entry's name: NUL-terminated within its 68 bytes, `[A-Za-z0-9]{1,67}`.
fn entry_name(e: &[u8], index: usize) -> Result<String, ImageError> {
    let field = read_array::<{ abi::MFT_NAME_SIZE }>(e, 0).unwrap_or([0; abi::MFT_NAME_SIZE]);
    let end = field
        .iter()
        .position(|&c| c == 0)
        .ok_or(ImageError::ManifestNameUnterminated { index })?;
    let name = field.get(..end).unwrap_or(&[]);
    if name.is_empty() {
        return Err(ImageError::ManifestNameEmpty { index });
    }
    if !name.iter().all(u8::is_ascii_alphanumeric) {
        return Err(ImageError::ManifestNameInvalid {
            index,
            name: printable(name),
        });
    }
    Ok(printable(name))
}

fn check_unattached(e: &[u8], index: usize, name: &str) -> Result<(), ImageError> {
    let value = e.get(ATTACHED_OFFSET).copied().unwrap_or(0);
    if value != 0 {
        return Err(ImageError::ManifestEntryAttached {
            index,
            name: name.to_owned(),
            value,
        });
    }
    Ok(())
}

/// Bytes from the file as text safe to print (control and non-ASCII bytes escaped).
fn printable(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}
