//! `hello`: greets, shows its command line and the clocks, halts 0. Plain words are accepted
//! as they are; an option (`--...`) it does not know is an error (HALT 1).
#![no_std]
#![no_main]

rt::main!(main);
rt::manifest!();

fn main() -> i32 {
    for arg in rt::args() {
        if let rt::Arg::Opt { key, .. } = arg {
            rt::fail(format_args!(
                "--{key}: unknown option (hello takes plain words only)"
            ));
        }
    }
    rt::println!("Hello from Summon's rt on hvt!");
    rt::println!("command line: \"{}\"", rt::cmdline());
    let wall = rt::time::wall_ns();
    rt::println!(
        "wall clock: {}.{:09} s since the epoch; up {} us",
        wall / 1_000_000_000,
        wall % 1_000_000_000,
        rt::time::monotonic_ns() / 1000
    );
    0
}
