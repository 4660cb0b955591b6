//! `hostile`: a guest that misbehaves on purpose, to test the launcher's and the daemon's
//! limits. It brings its network device up first (one POLL on it, so the launcher reports it
//! network-ready and the daemon sees a running service), then does one thing forever:
//!
//! - `--mode=console`: PUTS of a 4 KiB block of lines in a tight loop (console flooder);
//! - `--mode=spin`: a busy loop in ring 3, no exits at all (spinner);
//! - `--mode=frames`: NET_WRITE of 1,000-byte broadcast frames nobody asked for (frame flooder);
//! - `--mode=exits`: WALLTIME in a tight loop, the cheapest hypercall (exit storm).
//!
//! Takes the daemon's `--ipv4=`/`--ipv4-gateway=` (accepted, not used beyond validation).
#![no_std]
#![no_main]

use rt::abi::MFT_DEV_NET_BASIC;
use rt::platform::hvt::{boot, hypercall};
use rt::Arg;

rt::main!(main);
rt::manifest!(net "service");

#[derive(Clone, Copy)]
enum Mode {
    Console,
    Spin,
    Frames,
    Exits,
}

/// An EtherType from the IEEE "local experimental" range, so no host stack acts on the frames.
const ETHERTYPE_EXPERIMENTAL: [u8; 2] = [0x88, 0xb5];

fn parse_args() -> Mode {
    let mut net = rt::net::Config::default();
    let mut mode = None;
    for arg in rt::args() {
        match arg {
            Arg::Opt { key, value } => match net.accept(key, value) {
                Ok(true) => {}
                Err(e) => rt::fail(e),
                Ok(false) if key == "mode" => {
                    mode = Some(match value {
                        Some("console") => Mode::Console,
                        Some("spin") => Mode::Spin,
                        Some("frames") => Mode::Frames,
                        Some("exits") => Mode::Exits,
                        _ => rt::fail("--mode: expected console, spin, frames or exits"),
                    })
                }
                Ok(false) => rt::fail(format_args!("--{key}: unknown option")),
            },
            Arg::Word(w) => rt::fail(format_args!("{w}: unexpected argument")),
        }
    }
    mode.unwrap_or_else(|| rt::fail("--mode=console|spin|frames|exits is required"))
}

/// The manifest index of net device "service" (its hypercall handle).
fn net_handle() -> u64 {
    let found = boot::manifest()
        .iter()
        .enumerate()
        .find(|(_, e)| e.kind == MFT_DEV_NET_BASIC && e.name_bytes() == b"service");
    match found {
        Some((i, e)) if e.attached => i as u64,
        _ => rt::fail("net device \"service\" is not attached"),
    }
}

fn main() -> i32 {
    let mode = parse_args();
    let handle = net_handle();
    // One POLL that includes the net device: the launcher's "network is up" signal.
    hypercall::poll(0);
    match mode {
        Mode::Console => {
            rt::println!("hostile: console flood");
            let mut block = [b'x'; 4096];
            for line in block.chunks_mut(128) {
                line[..9].copy_from_slice(b"hostile: ");
                line[127] = b'\n';
            }
            loop {
                rt::console::write(&block);
            }
        }
        Mode::Spin => {
            rt::println!("hostile: spinning");
            let mut n: u64 = 0;
            loop {
                n = core::hint::black_box(n.wrapping_add(1));
            }
        }
        Mode::Frames => {
            rt::println!("hostile: frame flood");
            let mut frame = [0u8; 1000];
            frame[..6].copy_from_slice(&[0xff; 6]);
            frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
            frame[12..14].copy_from_slice(&ETHERTYPE_EXPERIMENTAL);
            loop {
                // Refusals (a rate limit, a full queue) are the point: keep sending.
                let _ = hypercall::net_write(handle, &frame);
            }
        }
        Mode::Exits => {
            rt::println!("hostile: exit storm");
            loop {
                core::hint::black_box(rt::platform::walltime());
            }
        }
    }
}
