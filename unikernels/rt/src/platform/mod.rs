//! Platforms rt runs on. Only hvt so far; a virtio/PVH platform would sit beside it.

pub mod hvt;
