//! smoltcp's view of a legacy virtio-net PCI device (virtio 0.9.5 "legacy" interface, which
//! QEMU's `virtio-net-pci` offers unless `disable-legacy=on`, and libvirt's
//! `virtio-transitional` model), driven by polling from ring 3.
//!
//! Found by PCI ID 1af4:1000 on bus 0; registers in BAR0's I/O space (assigned here if the
//! firmware left it at 0); only VIRTIO_NET_F_MAC is negotiated, so every buffer starts with the
//! 10-byte `virtio_net_hdr` and nothing is offloaded. Two virtqueues in guest memory (legacy
//! layout: descriptors, available ring, used ring on the next page), one descriptor per buffer,
//! buffers of 2 KiB. The event loop looks at the used rings; transmit interrupts are suppressed
//! (`VRING_AVAIL_F_NO_INTERRUPT`). Receive interrupts are on when the PCI interrupt line the
//! firmware assigned could be routed through the IOAPIC: then a halted guest wakes on a frame
//! (idle.rs); otherwise it sleeps in bounded slices and looks (stack.rs).

use alloc::alloc::{alloc_zeroed, Layout};
use core::ptr::addr_of_mut;
use core::sync::atomic::{fence, Ordering};

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::platform::virtio::pci;
use crate::platform::virtio::pio::{inb, inl, inw, outb, outl, outw};

const VENDOR: u16 = 0x1af4;
const DEVICE_NET_TRANSITIONAL: u16 = 0x1000;

// Legacy register offsets in BAR0 (no MSI-X, so the device config starts at 0x14).
const REG_DEVICE_FEATURES: u16 = 0x00;
const REG_GUEST_FEATURES: u16 = 0x04;
const REG_QUEUE_PFN: u16 = 0x08;
const REG_QUEUE_SIZE: u16 = 0x0c;
const REG_QUEUE_SELECT: u16 = 0x0e;
const REG_QUEUE_NOTIFY: u16 = 0x10;
const REG_STATUS: u16 = 0x12;
const REG_ISR: u16 = 0x13;
const REG_MAC: u16 = 0x14;

const STATUS_ACKNOWLEDGE: u8 = 1;
const STATUS_DRIVER: u8 = 2;
const STATUS_DRIVER_OK: u8 = 4;
const STATUS_FAILED: u8 = 0x80;

const F_MAC: u32 = 1 << 5;

const DESC_F_WRITE: u16 = 2;
const AVAIL_F_NO_INTERRUPT: u16 = 1;
const USED_F_NO_NOTIFY: u16 = 1;

const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;
const HDR_LEN: usize = 10;
const BUF_SIZE: usize = 2048;
const MTU: usize = 1500;
/// Buffers posted per queue, at most (fewer if the device's queue is smaller).
const MAX_BUFFERS: u16 = 128;
/// Receive buffers handed back before the device is told (one exit per batch, not per frame).
const RX_NOTIFY_BATCH: u16 = 16;

/// Errors finding or setting up the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceError {
    /// No virtio-net PCI function (1af4:1000) on bus 0.
    NotFound,
    /// BAR0 is not an I/O BAR (a modern-only device: `disable-legacy=on`).
    NoLegacyIo,
    /// A virtqueue the device offers is empty or not a power of two.
    BadQueue,
    /// Out of memory for the rings and buffers.
    NoMemory,
}

impl core::fmt::Display for DeviceError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            DeviceError::NotFound => "no virtio-net PCI device (1af4:1000) found",
            DeviceError::NoLegacyIo => {
                "the virtio-net device has no legacy I/O BAR (use a transitional device)"
            }
            DeviceError::BadQueue => "the virtio-net device offers an unusable queue",
            DeviceError::NoMemory => "out of memory for the virtio-net rings",
        })
    }
}

#[repr(C)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

#[repr(C)]
struct UsedElem {
    id: u32,
    len: u32,
}

/// One virtqueue and its buffers, all in guest memory shared with the device.
struct Queue {
    io: u16,
    index: u16,
    size: u16,
    desc: *mut Desc,
    avail: *mut u16, // flags, idx, ring[size], used_event
    used: *mut u16,  // flags, idx, then ring of UsedElem
    buffers: *mut u8,
    count: u16,
    /// Our next avail index (free-running).
    avail_idx: u16,
    /// The next used index to look at (free-running).
    used_idx: u16,
    /// Entries added to the avail ring since the device was last notified.
    unnotified: u16,
}

impl Queue {
    fn new(io: u16, index: u16, writable: bool) -> Result<Queue, DeviceError> {
        outw(io + REG_QUEUE_SELECT, index);
        let size = inw(io + REG_QUEUE_SIZE);
        if size == 0 || !size.is_power_of_two() {
            return Err(DeviceError::BadQueue);
        }
        let n = usize::from(size);
        let avail_off = 16 * n;
        let used_off = (avail_off + 6 + 2 * n).next_multiple_of(4096);
        let ring_bytes = used_off + (6 + 8 * n).next_multiple_of(4096);
        let count = size.min(MAX_BUFFERS);
        let layout =
            |bytes| Layout::from_size_align(bytes, 4096).map_err(|_| DeviceError::NoMemory);
        // SAFETY: both layouts are non-zero in size.
        let ring = unsafe { alloc_zeroed(layout(ring_bytes)?) };
        // SAFETY: as above.
        let buffers = unsafe { alloc_zeroed(layout(BUF_SIZE * usize::from(count))?) };
        if ring.is_null() || buffers.is_null() {
            return Err(DeviceError::NoMemory);
        }
        let q = Queue {
            io,
            index,
            size,
            desc: ring.cast(),
            // SAFETY: both offsets lie inside the ring allocation.
            avail: unsafe { ring.add(avail_off) }.cast(),
            // SAFETY: as above.
            used: unsafe { ring.add(used_off) }.cast(),
            buffers,
            count,
            avail_idx: 0,
            used_idx: 0,
            unnotified: 0,
        };
        for i in 0..count {
            // SAFETY: i < count <= size: a descriptor of this queue.
            unsafe {
                q.desc.add(usize::from(i)).write_volatile(Desc {
                    addr: q.buffer(i) as u64,
                    len: BUF_SIZE as u32,
                    flags: if writable { DESC_F_WRITE } else { 0 },
                    next: 0,
                })
            };
        }
        // We look at the used rings ourselves; no interrupts.
        // SAFETY: avail[0] is the avail ring's flags word.
        unsafe { q.avail.write_volatile(AVAIL_F_NO_INTERRUPT) };
        // Memory is identity-mapped, so the pointer is the guest-physical address.
        outl(io + REG_QUEUE_PFN, (ring as u64 >> 12) as u32);
        Ok(q)
    }

    fn buffer(&self, i: u16) -> *mut u8 {
        // SAFETY: callers pass i < count; the buffer area holds `count` buffers.
        unsafe { self.buffers.add(usize::from(i) * BUF_SIZE) }
    }

    /// Puts descriptor `id` on the avail ring (the device sees it after the index update).
    fn push(&mut self, id: u16) {
        let slot = usize::from(self.avail_idx % self.size);
        // SAFETY: avail ring entries follow its two header words; slot < size.
        unsafe { self.avail.add(2 + slot).write_volatile(id) };
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // The ring entry must be visible before the index that publishes it.
        fence(Ordering::Release);
        // SAFETY: avail[1] is the avail index.
        unsafe { self.avail.add(1).write_volatile(self.avail_idx) };
        self.unnotified += 1;
    }

    /// Tells the device about new avail entries, unless it asked not to be told.
    fn notify(&mut self) {
        if self.unnotified == 0 {
            return;
        }
        self.unnotified = 0;
        fence(Ordering::SeqCst);
        // SAFETY: used[0] is the used ring's flags word, written by the device.
        if unsafe { self.used.read_volatile() } & USED_F_NO_NOTIFY == 0 {
            outw(self.io + REG_QUEUE_NOTIFY, self.index);
        }
    }

    /// The next used element, if the device has returned one.
    fn pop_used(&mut self) -> Option<UsedElem> {
        // SAFETY: used[1] is the used index, written by the device.
        let device_idx = unsafe { self.used.add(1).read_volatile() };
        if device_idx == self.used_idx {
            return None;
        }
        fence(Ordering::Acquire);
        let slot = usize::from(self.used_idx % self.size);
        // SAFETY: the used elements start 4 bytes into the used ring; slot < size.
        let elem = unsafe {
            self.used
                .add(2)
                .cast::<UsedElem>()
                .add(slot)
                .read_volatile()
        };
        self.used_idx = self.used_idx.wrapping_add(1);
        Some(elem)
    }

    /// Whether the device has returned something not yet looked at.
    fn has_used(&self) -> bool {
        // SAFETY: as in pop_used.
        unsafe { self.used.add(1).read_volatile() != self.used_idx }
    }
}

/// Routes the function's INTx to the CPU: the line the firmware assigned (PCI config 0x3c),
/// made sure of in the PIIX3's PIRQ routing registers (0x60-0x63 of 00:01.0; reset value
/// 0x80 = disabled, which some firmware leaves), then through the IOAPIC. False if any step
/// is not possible (no PIIX3, no line, no halting).
fn route_pci_interrupt(f: pci::Function) -> bool {
    let reg = f.read32(0x3c);
    let (line, pin) = (reg as u8, (reg >> 8) as u8);
    if !(1..=4).contains(&pin) || !(1..=15).contains(&line) {
        return false;
    }
    let Some(isa) = pci::find(0x8086, 0x7000, 0) else {
        return false;
    };
    // QEMU's PIIX: PIRQ = (slot - 1 + pin - 1) mod 4.
    let pirq = (u32::from(f.device) + u32::from(pin) + 2) % 4;
    let word = isa.read32(0x60);
    let shift = 8 * pirq;
    if (word >> shift) & 0xff != u32::from(line) {
        isa.write32(0x60, (word & !(0xff << shift)) | (u32::from(line) << shift));
    }
    crate::platform::virtio::idle::route_level_irq(line)
}

/// The virtio-net device.
pub struct VirtioNet {
    io: u16,
    mac: [u8; 6],
    rx: Queue,
    tx: Queue,
    /// Transmit buffers in flight (posted, not yet returned).
    tx_in_flight: u16,
    /// Received frames raise the (routed) interrupt line: sleeps need no slices.
    irq: bool,
    /// Frames dropped: oversized, or a used element naming no buffer of ours (should stay 0).
    pub errors: u64,
}

impl VirtioNet {
    /// Sets up the first virtio-net device (the manifest's device name is not needed: a
    /// virtio image uses the first NIC of the VM).
    pub fn open(_name: &str) -> Result<Self, DeviceError> {
        let f = pci::find(VENDOR, DEVICE_NET_TRANSITIONAL, 0).ok_or(DeviceError::NotFound)?;
        let mut bar0 = f.read32(0x10);
        if bar0 & 1 == 0 {
            return Err(DeviceError::NoLegacyIo);
        }
        if bar0 & !3 == 0 {
            // Unassigned (a firmware that leaves PCI alone): pick a free spot in the usual
            // PCI I/O window.
            f.write32(0x10, 0xc000);
            bar0 = f.read32(0x10);
        }
        // I/O decoding and bus mastering (the device DMAs into our rings).
        let cmd = f.read32(0x04);
        f.write32(0x04, (cmd & 0xffff) | 0x5);
        let io = (bar0 & 0xfffc) as u16;
        // The interrupt line the firmware assigned (qboot and SeaBIOS do): if it can be routed,
        // a halted guest wakes on a received frame instead of at the next slice.
        let irq = route_pci_interrupt(f);

        // Reset, unless the device is fresh from power-on (status 0) and so already reset.
        if inb(io + REG_STATUS) != 0 {
            outb(io + REG_STATUS, 0);
        }
        outb(io + REG_STATUS, STATUS_ACKNOWLEDGE);
        outb(io + REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        let features = inl(io + REG_DEVICE_FEATURES) & F_MAC;
        outl(io + REG_GUEST_FEATURES, features);
        let mac = if features & F_MAC != 0 {
            core::array::from_fn(|i| inb(io + REG_MAC + i as u16))
        } else {
            // Locally administered, from the TSC: the device did not say.
            let t = crate::time::rdtsc().to_le_bytes();
            [0x02, t[0], t[1], t[2], t[3], t[4]]
        };
        let queues = Queue::new(io, RX_QUEUE, true).and_then(|rx| {
            let tx = Queue::new(io, TX_QUEUE, false)?;
            Ok((rx, tx))
        });
        let (mut rx, tx) = match queues {
            Ok(q) => q,
            Err(e) => {
                outb(io + REG_STATUS, STATUS_FAILED);
                return Err(e);
            }
        };
        if irq {
            // Interrupt on received frames only; transmit completions are polled.
            // SAFETY: avail[0] is the avail ring's flags word.
            unsafe { rx.avail.write_volatile(0) };
        }
        for i in 0..rx.count {
            rx.push(i);
        }
        outb(
            io + REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK,
        );
        rx.notify();
        Ok(VirtioNet {
            io,
            mac,
            rx,
            tx,
            tx_in_flight: 0,
            irq,
            errors: 0,
        })
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The legacy I/O base (for diagnostics).
    pub fn io_base(&self) -> u16 {
        self.io
    }

    /// Whether a received frame ends a sleep by itself (its interrupt is routed).
    pub fn interrupts(&self) -> bool {
        self.irq
    }

    /// Reads (and so clears) the interrupt status, which lowers the level-triggered line.
    pub fn ack_interrupt(&self) {
        if self.irq {
            inb(self.io + REG_ISR);
        }
    }

    /// Whether a received frame is waiting.
    pub fn rx_ready(&self) -> bool {
        self.rx.has_used()
    }

    /// Hands returned receive buffers back to the device now (before sleeping).
    pub fn flush(&mut self) {
        self.rx.notify();
    }

    fn reclaim_tx(&mut self) {
        while self.tx.pop_used().is_some() {
            self.tx_in_flight = self.tx_in_flight.saturating_sub(1);
        }
    }
}

/// A received frame: buffer `id` of the receive queue, handed back when consumed.
pub struct RxToken<'a> {
    queue: &'a mut Queue,
    id: u16,
    len: usize,
}

/// Room for one frame to send.
pub struct TxToken<'a> {
    queue: &'a mut Queue,
    in_flight: &'a mut u16,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let buf = self.queue.buffer(self.id);
        // SAFETY: the device wrote `len` (<= BUF_SIZE, checked) bytes into this buffer and
        // returned it; it is ours until pushed again below.
        let frame = unsafe { core::slice::from_raw_parts(buf.add(HDR_LEN), self.len - HDR_LEN) };
        let r = f(frame);
        self.queue.push(self.id);
        if self.queue.unnotified >= RX_NOTIFY_BATCH {
            self.queue.notify();
        }
        r
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let len = len.min(BUF_SIZE - HDR_LEN);
        // Descriptors are used in ring order and the device returns transmit buffers in
        // order, so the next avail slot's descriptor is free (transmit() checked the count).
        let id = self.queue.avail_idx % self.queue.count;
        let buf = self.queue.buffer(id);
        // SAFETY: buffer `id` is not in flight (see above) and holds BUF_SIZE bytes.
        let (hdr, frame) = unsafe {
            (
                core::slice::from_raw_parts_mut(buf, HDR_LEN),
                core::slice::from_raw_parts_mut(buf.add(HDR_LEN), len),
            )
        };
        hdr.fill(0); // no checksum offload, no GSO
        let r = f(frame);
        // SAFETY: descriptor `id` belongs to this queue; only its length changes.
        unsafe {
            addr_of_mut!((*self.queue.desc.add(usize::from(id))).len)
                .write_volatile((HDR_LEN + len) as u32)
        };
        self.queue.push(id);
        *self.in_flight += 1;
        self.queue.notify();
        r
    }
}

impl phy::Device for VirtioNet {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        self.reclaim_tx();
        if self.tx_in_flight >= self.tx.count {
            return None;
        }
        loop {
            let elem = self.rx.pop_used()?;
            let id = elem.id as u16;
            let len = elem.len as usize;
            if u32::from(id) != elem.id || id >= self.rx.count {
                self.errors += 1;
                continue;
            }
            if !(HDR_LEN..=BUF_SIZE).contains(&len) {
                self.errors += 1;
                self.rx.push(id);
                continue;
            }
            return Some((
                RxToken {
                    queue: &mut self.rx,
                    id,
                    len,
                },
                TxToken {
                    queue: &mut self.tx,
                    in_flight: &mut self.tx_in_flight,
                },
            ));
        }
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        self.reclaim_tx();
        if self.tx_in_flight >= self.tx.count {
            return None;
        }
        Some(TxToken {
            queue: &mut self.tx,
            in_flight: &mut self.tx_in_flight,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MTU + 14;
        caps.max_burst_size = None;
        caps
    }
}
