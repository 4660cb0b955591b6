//! The console: COM1, a 16550 at 0x3f8, polled. Every byte is a port write (an exit to the
//! VMM), so the FIFO is enabled and the line status is read only once per 16 bytes, when the
//! FIFO may be full, rather than before every byte.

use super::pio::{inb, outb};
use crate::sync::Global;

const COM1: u16 = 0x3f8;
const LSR_THR_EMPTY: u8 = 0x20;

/// Bytes written since the FIFO was last seen empty.
static IN_FIFO: Global<u32> = Global::new(16);

pub(crate) fn init() {
    outb(COM1 + 1, 0x00); // no interrupts
    outb(COM1 + 3, 0x03); // 8N1, DLAB off (the VMM ignores the baud rate)
    outb(COM1 + 2, 0x07); // FIFO on, both cleared
}

/// Writes `bytes` to COM1 as they are (`\n` stays `\n`, as on hvt's console).
pub fn write(bytes: &[u8]) {
    IN_FIFO.with(|n| {
        for &b in bytes {
            put(n, b);
        }
    })
}

fn put(in_fifo: &mut u32, b: u8) {
    if *in_fifo >= 16 {
        // Bounded: a UART that never drains loses bytes rather than hanging the guest.
        for _ in 0..100_000 {
            if inb(COM1 + 5) & LSR_THR_EMPTY != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        *in_fifo = 0;
    }
    outb(COM1, b);
    *in_fifo += 1;
}
