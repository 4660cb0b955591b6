//! An interface on one net device and the event loop: poll smoltcp, let the application act on
//! its sockets, then sleep for as long as smoltcp allows. On hvt the sleep is POLL (no busy
//! polling: with nothing to do the guest sits in the tender until a frame arrives or a TCP
//! timer is due). On virtio the guest halts until smoltcp's timer or the NIC's receive
//! interrupt; where that interrupt cannot be routed, in slices of at most `VIRTIO_SLICE_NS`,
//! looking at the receive ring after each (see `wait`).

use smoltcp::iface::{Config as IfaceConfig, Interface, PollResult, SocketSet};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

use super::{Config, DeviceError, NetDevice};
use crate::time;

/// Longest single wait when smoltcp has no timer pending; any frame ends it at once. On hvt,
/// none: an idle guest sleeps in the tender's POLL until a frame comes (or the host stops it),
/// so 10,000 idle guests cost the host nothing — with a bound of 10 s they woke 1,000 times a
/// second together, and each wake runs the guest's ring-0 code, which a nested host emulates.
#[cfg(not(feature = "virtio"))]
const IDLE_POLL_NS: Option<u64> = None;
/// On virtio the wait halts in slices anyway (see `wait`); the bound only ends the loop.
#[cfg(feature = "virtio")]
const IDLE_POLL_NS: Option<u64> = Some(10_000_000_000);

/// An interface, its device and its sockets.
pub struct Stack {
    pub iface: Interface,
    pub device: NetDevice,
    pub sockets: SocketSet<'static>,
}

/// Smoltcp's clock: the TSC since boot.
pub fn now() -> Instant {
    Instant::from_micros((time::monotonic_ns() / 1000) as i64)
}

impl Stack {
    /// Opens net device `name` of the manifest and configures it with `config`, with room for
    /// `sockets` sockets reserved up front: a set that grows moves (and so touches again) every
    /// socket in it, and each first touch of a page costs a host fault.
    pub fn new(name: &str, config: &Config, sockets: usize) -> Result<Self, DeviceError> {
        let mut device = NetDevice::open(name)?;
        let mut iface_config =
            IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(device.mac())));
        iface_config.random_seed = time::rdtsc() ^ time::wall_ns();
        let mut iface = Interface::new(iface_config, &mut device, now());
        iface.update_ip_addrs(|addrs| {
            // The interface starts with no address, so there is room for one.
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(config.address), config.prefix));
        });
        if let Some(gw) = config.gateway {
            // Only fails when the route table is full; it is empty here.
            let _ = iface.routes_mut().add_default_ipv4_route(gw);
        }
        #[cfg(feature = "virtio")]
        announce(&mut device, config.address);
        Ok(Stack {
            iface,
            device,
            sockets: SocketSet::new(alloc::vec::Vec::with_capacity(sockets)),
        })
    }

    /// Runs forever: `app` is called after every poll with the sockets and returns whether it
    /// did anything (queued data, closed or reopened a socket), in which case the stack is
    /// polled again before the guest sleeps.
    pub fn run(&mut self, mut app: impl FnMut(&mut SocketSet<'static>) -> bool) -> ! {
        // The application sets its sockets up (listens) before the first frame is read.
        app(&mut self.sockets);
        loop {
            let now = now();
            let mut changed = self.iface.poll(now, &mut self.device, &mut self.sockets)
                == PollResult::SocketStateChanged;
            // Let the application act until it is done; each round may queue more to send.
            for _ in 0..8 {
                if !app(&mut self.sockets) && !changed {
                    break;
                }
                changed = self.iface.poll(now, &mut self.device, &mut self.sockets)
                    == PollResult::SocketStateChanged;
            }
            if self.device.rx_ready() {
                continue;
            }
            let timeout = match self.iface.poll_delay(self::now(), &self.sockets) {
                Some(d) => d.total_micros().saturating_mul(1000),
                None => u64::MAX,
            };
            if timeout == 0 {
                continue;
            }
            wait(
                &mut self.device,
                IDLE_POLL_NS.map_or(timeout, |cap| timeout.min(cap)),
            );
        }
    }
}

/// Sends a gratuitous ARP (a request for our own address) as soon as the NIC is up: the host
/// learns our MAC, and whoever holds early packets for this guest (the daemon's SYN hold for
/// libvirt domains) sees that its network is up — which matters on virtio, where QEMU loses the
/// first frame it took from the tap before the driver was ready (docs/unikernels.md).
#[cfg(feature = "virtio")]
fn announce(device: &mut NetDevice, address: core::net::Ipv4Addr) {
    use smoltcp::phy::{Device, TxToken};
    let mac = device.mac();
    let ip = address.octets();
    let Some(tx) = device.transmit(now()) else {
        return;
    };
    tx.consume(42, |f| {
        f[0..6].fill(0xff);
        f[6..12].copy_from_slice(&mac);
        f[12..14].copy_from_slice(&[0x08, 0x06]); // ARP
        f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]); // Ethernet/IPv4, request
        f[22..28].copy_from_slice(&mac);
        f[28..32].copy_from_slice(&ip);
        f[32..38].fill(0);
        f[38..42].copy_from_slice(&ip);
    });
}

/// Sleeps in POLL until a frame is ready or `timeout_ns` passed.
#[cfg(not(feature = "virtio"))]
fn wait(device: &mut NetDevice, timeout_ns: u64) {
    let ready = crate::platform::hvt::hypercall::poll(timeout_ns);
    if ready & device.ready_mask() != 0 {
        device.set_rx_ready();
    }
}

/// Longest halt between two looks at the receive ring: a frame arriving while the guest is
/// idle waits at most this long (plus the wake-up) before it is seen.
#[cfg(feature = "virtio")]
const VIRTIO_SLICE_NS: u64 = 1_000_000;
/// After activity, look at the ring without halting for this long first (follow-up frames of
/// a conversation usually arrive within it; ring 3 spins natively, costing no exits).
#[cfg(feature = "virtio")]
const VIRTIO_SPIN_NS: u64 = 50_000;

/// Waits until a frame is ready or `timeout_ns` passed: spins briefly, then halts (until the
/// interrupt or the deadline, or in slices without an interrupt).
#[cfg(feature = "virtio")]
fn wait(device: &mut NetDevice, timeout_ns: u64) {
    use crate::platform::virtio::idle;
    device.flush();
    let start = time::rdtsc();
    let deadline = start.saturating_add(time::ns_to_ticks(timeout_ns));
    let spin_end = start.saturating_add(time::ns_to_ticks(VIRTIO_SPIN_NS));
    let slice = time::ns_to_ticks(VIRTIO_SLICE_NS);
    loop {
        if device.rx_ready() {
            return;
        }
        let now = time::rdtsc();
        if now >= deadline {
            return;
        }
        if now < spin_end {
            core::hint::spin_loop();
        } else if device.interrupts() {
            idle::sleep_until_then(deadline, || device.ack_interrupt());
        } else {
            idle::sleep_until(deadline.min(now.saturating_add(slice)));
        }
    }
}
