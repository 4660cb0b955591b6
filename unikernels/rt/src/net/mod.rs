//! Networking: a smoltcp [`phy::Device`](smoltcp::phy::Device) over the hvt net hypercalls
//! ([`device`]) or a legacy virtio-net device ([`virtio`], on the virtio platform), and an
//! interface plus event loop that sleeps until a frame or a timer is due ([`stack`]),
//! configured from the command line MirageOS style (`--ipv4=ADDR/PREFIX --ipv4-gateway=ADDR`).

#[cfg(not(feature = "virtio"))]
pub mod device;
pub mod stack;
#[cfg(feature = "virtio")]
pub mod virtio;

use core::net::Ipv4Addr;

#[cfg(not(feature = "virtio"))]
pub use device::{DeviceError, HvtNet, HvtNet as NetDevice};
pub use smoltcp;
pub use stack::Stack;
#[cfg(feature = "virtio")]
pub use virtio::{DeviceError, VirtioNet, VirtioNet as NetDevice};

use crate::args::{require, ArgError};

/// IPv4 settings of one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
}

impl Default for Config {
    /// MirageOS' defaults: 10.0.0.2/24, no gateway.
    fn default() -> Self {
        Config {
            address: Ipv4Addr::new(10, 0, 0, 2),
            prefix: 24,
            gateway: None,
        }
    }
}

impl Config {
    /// Takes `--ipv4=ADDR/PREFIX` and `--ipv4-gateway=ADDR`; `Ok(false)` for other options.
    pub fn accept(&mut self, key: &str, value: Option<&str>) -> Result<bool, ArgError> {
        match key {
            "ipv4" => {
                let v = require(key, value)?;
                let (addr, prefix) = v.split_once('/').ok_or_else(|| {
                    ArgError::new(key, "expected ADDRESS/PREFIX, e.g. 10.0.0.2/24")
                })?;
                self.address = parse_addr(key, addr)?;
                self.prefix = match prefix.parse::<u8>() {
                    Ok(p) if p <= 32 => p,
                    _ => return Err(ArgError::new(key, "prefix length must be 0-32")),
                };
                if self.address.is_unspecified()
                    || self.address.is_broadcast()
                    || self.address.is_multicast()
                {
                    return Err(ArgError::new(key, "not a usable host address"));
                }
                Ok(true)
            }
            "ipv4-gateway" => {
                self.gateway = Some(parse_addr(key, require(key, value)?)?);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

fn parse_addr(key: &str, s: &str) -> Result<Ipv4Addr, ArgError> {
    s.parse()
        .map_err(|_| ArgError::new(key, "not an IPv4 address (a.b.c.d)"))
}
