//! PCI configuration space through the legacy ports 0xcf8/0xcfc (bus 0 is all a QEMU `pc`
//! guest with a few devices needs).

use super::pio::{inl, outl};

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;

/// A function on bus 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Function {
    pub device: u8,
    pub function: u8,
}

impl Function {
    fn address(self, offset: u8) -> u32 {
        0x8000_0000
            | (u32::from(self.device & 0x1f) << 11)
            | (u32::from(self.function & 7) << 8)
            | u32::from(offset & 0xfc)
    }

    pub fn read32(self, offset: u8) -> u32 {
        outl(CONFIG_ADDRESS, self.address(offset));
        inl(CONFIG_DATA)
    }

    pub fn write32(self, offset: u8, value: u32) {
        outl(CONFIG_ADDRESS, self.address(offset));
        outl(CONFIG_DATA, value);
    }

    /// Vendor and device ID.
    pub fn ids(self) -> (u16, u16) {
        let v = self.read32(0);
        (v as u16, (v >> 16) as u16)
    }
}

/// The `n`th (from 0) function on bus 0 with this vendor and device ID.
pub fn find(vendor: u16, device: u16, mut n: usize) -> Option<Function> {
    for dev in 0..32 {
        for func in 0..8 {
            let f = Function {
                device: dev,
                function: func,
            };
            let (v, d) = f.ids();
            if v == 0xffff {
                if func == 0 {
                    break; // no device in this slot
                }
                continue;
            }
            if (v, d) == (vendor, device) {
                if n == 0 {
                    return Some(f);
                }
                n -= 1;
            }
            // Only multi-function devices (header type bit 7) have functions 1-7.
            if func == 0 && (f.read32(0x0c) >> 16) & 0x80 == 0 {
                break;
            }
        }
    }
    None
}
