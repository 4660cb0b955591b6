//! The Solo5 hvt platform (docs/hvt-abi.md): entry, boot info, hypercalls, ELF notes, traps.

pub mod boot;
mod entry;
pub mod hypercall;
pub mod notes;

pub use hypercall::{halt, puts as console_write, walltime};
