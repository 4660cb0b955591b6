//! Helpers shared by the tests and benchmarks of every crate, in one library instead of source
//! files included by path: prerequisites that skip outside CI and fail under it ([`require`]),
//! generated hvt images ([`elfgen`]), the hand-written test guests ([`guests`]), the PVH test
//! kernel for libvirt ([`pvh_ticker`]) and benchmark percentiles ([`stats`]).
//!
//! It depends on nothing of Summon but the ABI crate, so the image checks, the launcher, the
//! daemon and the end-to-end tests can all use it as a dev-dependency without a cycle. Helpers
//! that need the launcher's or the daemon's types live in `summon-tests`.

pub mod elfgen;
pub mod guests;
pub mod pvh_ticker;
pub mod require;
pub mod stats;
