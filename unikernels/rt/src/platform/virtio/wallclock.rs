//! Wall clock: the CMOS RTC, read once (a dozen port reads) and then advanced by the TSC.

use core::sync::atomic::{AtomicU64, Ordering};

use super::pio::{inb, outb};

/// Wall-clock nanoseconds at monotonic time 0, plus one (0 = not read yet).
static BASE: AtomicU64 = AtomicU64::new(0);

/// Nanoseconds since the Unix epoch.
pub fn walltime() -> u64 {
    let mut base = BASE.load(Ordering::Relaxed);
    if base == 0 {
        let now = read_rtc();
        base = now
            .saturating_sub(crate::time::monotonic_ns())
            .saturating_add(1);
        BASE.store(base, Ordering::Relaxed);
    }
    (base - 1).saturating_add(crate::time::monotonic_ns())
}

fn cmos(reg: u8) -> u8 {
    outb(0x70, reg);
    inb(0x71)
}

fn read_rtc() -> u64 {
    if cmos(0x0a) == 0xff {
        return 0; // no RTC (microvm without one): the epoch, plus the time since boot
    }
    // Wait (bounded) until no update is in progress, then read; repeat if a field changed.
    let mut last = [0u8; 7];
    for _ in 0..8 {
        for _ in 0..10_000 {
            if cmos(0x0a) & 0x80 == 0 {
                break;
            }
        }
        let now = [
            cmos(0x00),
            cmos(0x02),
            cmos(0x04),
            cmos(0x07),
            cmos(0x08),
            cmos(0x09),
            cmos(0x32),
        ];
        if now == last {
            break;
        }
        last = now;
    }
    let b = cmos(0x0b);
    let bcd = b & 0x04 == 0;
    let conv = |v: u8| -> u64 {
        if bcd {
            u64::from((v & 0x0f) + (v >> 4) * 10)
        } else {
            u64::from(v)
        }
    };
    let [sec, min, hour, day, month, year, century] = last;
    let twelve_hour = b & 0x02 == 0;
    let pm = hour & 0x80 != 0;
    let mut hour = conv(hour & 0x7f);
    if twelve_hour {
        hour = hour % 12 + if pm { 12 } else { 0 };
    }
    let century = match conv(century) {
        19..=21 => conv(century),
        _ => 20,
    };
    let year = century * 100 + conv(year);
    let secs = days_from_civil(year, conv(month), conv(day)) * 86_400
        + hour * 3600
        + conv(min) * 60
        + conv(sec);
    secs * 1_000_000_000
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let m = m.clamp(1, 12);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d.clamp(1, 31) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).saturating_sub(719_468)
}
