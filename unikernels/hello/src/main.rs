//! `hello`: greets, shows its command line and the clocks, halts 0.
//!
//! Plain words are accepted as they are. Two options exercise rt's failure paths:
//! `--panic` panics (message, then HALT 255) and `--fault=null` reads address 0, which the page
//! tables leave unmapped (exception report, then HALT 255). Any other option is an error (HALT 1).
#![no_std]
#![no_main]

rt::main!(main);
rt::manifest!();

enum Then {
    Exit,
    Panic,
    NullRead,
}

fn main() -> i32 {
    let mut then = Then::Exit;
    for arg in rt::args() {
        if let rt::Arg::Opt { key, value } = arg {
            then = match (key, value) {
                ("panic", None) => Then::Panic,
                ("fault", Some("null")) => Then::NullRead,
                ("fault", _) => rt::fail("--fault: the only fault on offer is --fault=null"),
                _ => rt::fail(format_args!(
                    "--{key}: unknown option (hello takes plain words, --panic, --fault=null)"
                )),
            };
        }
    }
    rt::println!("Hello from Summon's rt on {}!", rt::platform::NAME);
    rt::println!("command line: \"{}\"", rt::cmdline());
    let wall = rt::time::wall_ns();
    rt::println!(
        "wall clock: {}.{:09} s since the epoch; up {} us",
        wall / 1_000_000_000,
        wall % 1_000_000_000,
        rt::time::monotonic_ns() / 1000
    );
    #[cfg(feature = "virtio")]
    rt::println!(
        "tsc: {} kHz ({:?})",
        rt::time::ns_to_ticks(1_000_000),
        rt::platform::virtio::tsc::source()
    );
    match then {
        Then::Exit => 0,
        Then::Panic => panic!("asked to panic by --panic"),
        Then::NullRead => {
            // SAFETY: deliberately unsound: address 0 is unmapped, so this read faults and rt's
            // exception path ends the guest; it never returns a value.
            let v = unsafe { core::ptr::read_volatile(core::ptr::null::<u64>()) };
            v as i32
        }
    }
}
