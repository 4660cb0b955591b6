//! rt: Summon's library OS for unikernels on the Solo5 hvt ABI, or (feature `virtio`) booted by
//! QEMU/libvirt/Xen through PVH with a 16550 console and virtio-net (docs/unikernels.md).
//!
//! The tender enters the image in ring 0; a dozen straight-line instructions (platform/hvt/
//! entry.rs; 25 from PVH's 32-bit entry in platform/virtio/entry.rs) switch to ring 3, where
//! everything else runs: on nested hosts ring 0 is emulated and slow, ring 3 is native. An application is a `no_std` binary that calls
//! [`main!`] and [`manifest!`], prints with [`println!`], reads [`args`], allocates (`alloc`),
//! reads the clocks in [`time`] and, with the `net` feature, serves TCP through [`net`].
#![no_std]

extern crate alloc;

pub use summon_hvt_abi as abi;

pub mod args;
pub mod console;
pub mod heap;
#[cfg(feature = "net")]
pub mod net;
mod panic;
pub mod platform;
mod sync;
pub mod time;

pub use args::{args, cmdline, Arg, ArgError};
pub use platform::halt;

/// Ends the guest with `status` (0 success, 1 failure, 255 abort).
pub fn exit(status: i32) -> ! {
    halt(status)
}

/// Prints `error: MSG` and halts with status 1 (bad arguments, missing devices).
pub fn fail(msg: impl core::fmt::Display) -> ! {
    println!("error: {}", msg);
    halt(abi::exit::FAILURE)
}

/// Prints `rt: MSG` and halts with 255: a broken invariant of rt itself.
pub(crate) fn fatal(msg: &str) -> ! {
    println!("rt: {}", msg);
    halt(abi::exit::ABORT)
}

/// Names the application's entry point: `rt::main!(main);` with `fn main() -> i32` (the HALT
/// status).
#[macro_export]
macro_rules! main {
    ($main:path) => {
        #[unsafe(no_mangle)]
        fn __rt_main() -> i32 {
            $main()
        }
    };
}
