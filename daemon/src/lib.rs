//! summond: an authoritative DNS server that boots the unikernel behind a name when the name
//! is resolved, and stops it again when it is idle.
//!
//! Where things live: [`config`] (TOML → checked config), [`dns`] (the hickory-server front),
//! [`registry`] (services, instance state machine, backoff, limits), [`driver`] (what runs each
//! service's instances: network, start, teardown, traffic), [`net`] (taps, routes, neighbours
//! over netlink), [`reaper`], [`fds`] (the descriptor budget), [`metrics`], [`logging`],
//! [`admin`], [`systemd`], [`reload`].

pub mod admin;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod dns;
pub mod driver;
pub mod fds;
pub mod hostlock;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod reaper;
pub mod registry;
pub mod reload;
pub mod systemd;
pub mod testkit;
pub mod worker;
