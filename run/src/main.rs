//! `summon-run`: boot one hvt image by hand, a drop-in for the reference tender `solo5-hvt`.
//!
//! ```text
//! summon-run [--mem=MiB] [--net:NAME=IFACE] [--net-mac:NAME=MAC] [--block:NAME=PATH]
//!            [--block-sector-size:NAME=N] [--] IMAGE [ARGS...]
//! ```
//!
//! Exit status: the guest's HALT status; 1 on launcher errors, guest faults, and SIGINT/SIGTERM.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use summon_launcher::kvm::{ElfImage, KvmBackend};
use summon_launcher::MacAddr;
use summon_launcher::{BlockSpec, EventSink, InstanceEvent, InstanceSpec, NetSpec, TapSource};

const USAGE: &str = "usage: summon-run [--mem=MiB] [--net:NAME=IFACE] [--net-mac:NAME=MAC] \
[--block:NAME=PATH] [--block-sector-size:NAME=N] [--] IMAGE [ARGS...]";

/// The reference tender's default guest memory.
const DEFAULT_MEM_MIB: u64 = 512;

#[derive(Debug, Default)]
struct Options {
    mem_mib: Option<u64>,
    nets: BTreeMap<String, String>,
    macs: BTreeMap<String, MacAddr>,
    blocks: BTreeMap<String, PathBuf>,
    sector_sizes: BTreeMap<String, u32>,
    image: PathBuf,
    args: Vec<String>,
}

/// Splits `NAME=VALUE` after a `--flag:` prefix.
fn name_value<'a>(flag: &str, rest: &'a str) -> Result<(&'a str, &'a str)> {
    let (name, value) = rest
        .split_once('=')
        .ok_or_else(|| anyhow!("{flag}:{rest}: expected {flag}:NAME=VALUE"))?;
    if name.is_empty() || value.is_empty() {
        bail!("{flag}:{rest}: expected {flag}:NAME=VALUE");
    }
    Ok((name, value))
}

fn parse_args(argv: impl IntoIterator<Item = String>) -> Result<Options> {
    let mut o = Options::default();
    let mut it = argv.into_iter();
    let mut image = None;
    while let Some(arg) = it.next() {
        if arg == "--" {
            image = it.next();
            break;
        }
        if !arg.starts_with("--") {
            image = Some(arg);
            break;
        }
        if let Some(v) = arg.strip_prefix("--mem=") {
            let mib: u64 = v
                .parse()
                .map_err(|_| anyhow!("--mem={v}: not a number of MiB"))?;
            o.mem_mib = Some(mib);
        } else if let Some(rest) = arg.strip_prefix("--net:") {
            let (n, v) = name_value("--net", rest)?;
            if o.nets.insert(n.into(), v.into()).is_some() {
                bail!("--net:{n} given twice");
            }
        } else if let Some(rest) = arg.strip_prefix("--net-mac:") {
            let (n, v) = name_value("--net-mac", rest)?;
            o.macs.insert(n.into(), v.parse()?);
        } else if let Some(rest) = arg.strip_prefix("--block:") {
            let (n, v) = name_value("--block", rest)?;
            if o.blocks.insert(n.into(), v.into()).is_some() {
                bail!("--block:{n} given twice");
            }
        } else if let Some(rest) = arg.strip_prefix("--block-sector-size:") {
            let (n, v) = name_value("--block-sector-size", rest)?;
            let size = v
                .parse()
                .map_err(|_| anyhow!("--block-sector-size:{n}={v}: not a number"))?;
            o.sector_sizes.insert(n.into(), size);
        } else {
            bail!("unknown option {arg}");
        }
    }
    o.image = image.ok_or_else(|| anyhow!("no image given"))?.into();
    o.args = it.collect();
    for n in o.macs.keys() {
        if !o.nets.contains_key(n) {
            bail!("--net-mac:{n} given without --net:{n}");
        }
    }
    for n in o.sector_sizes.keys() {
        if !o.blocks.contains_key(n) {
            bail!("--block-sector-size:{n} given without --block:{n}");
        }
    }
    Ok(o)
}

fn spec(o: Options) -> InstanceSpec {
    let name = o
        .image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "guest".into());
    InstanceSpec {
        name,
        image: o.image,
        memory_mib: o.mem_mib.unwrap_or(DEFAULT_MEM_MIB),
        nets: o
            .nets
            .iter()
            .map(|(n, iface)| NetSpec {
                name: n.clone(),
                tap: TapSource::Name(iface.clone()),
                mac: o.macs.get(n).copied(),
            })
            .collect(),
        blocks: o
            .blocks
            .iter()
            .map(|(n, path)| BlockSpec {
                name: n.clone(),
                path: path.clone(),
                sector_size: o.sector_sizes.get(n).copied(),
            })
            .collect(),
        args: o.args,
        limits: Default::default(),
    }
}

/// Blocks SIGINT and SIGTERM in this (the only) thread, so that every thread started from here
/// on (the vCPU thread) inherits the block and they can only reach this one.
fn block_termination_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local set, then pthread_sigmask for the calling thread
    // with a valid set and no old-set output.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// SIGINT/SIGTERM: ends the process with status 1 as the reference tender does; the kernel
/// frees the VM with the process. Only async-signal-safe calls.
extern "C" fn on_termination_signal(_: libc::c_int) {
    const MSG: &[u8] = b"summon-run: terminated by signal\n";
    // SAFETY: write(2) and _exit(2) are async-signal-safe; MSG is a static buffer of MSG.len()
    // bytes.
    unsafe {
        libc::write(2, MSG.as_ptr().cast(), MSG.len());
        libc::_exit(1);
    }
}

/// Installs [`on_termination_signal`] and unblocks the signals in this thread only: the vCPU
/// thread keeps them blocked (its seccomp filter would refuse the handler's exit).
fn handle_termination_signals(set: &libc::sigset_t) {
    // SAFETY: a zeroed sigaction with a valid `extern "C"` handler and an empty mask is a valid
    // argument; `set` is an initialized signal set; no old action or mask is asked for.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_termination_signal as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut());
        libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut());
        libc::pthread_sigmask(libc::SIG_UNBLOCK, set, std::ptr::null_mut());
    }
}

/// Ends the process with `status` as its exit status (a byte, as for the reference tender:
/// HALT 255 -> 255), after the console output.
fn exit(status: i32) -> ! {
    let _ = std::io::stdout().lock().flush();
    std::process::exit(status & 0xff)
}

/// Starts the guest and ends the process with its final event. This thread waits for that event
/// and handles SIGINT/SIGTERM; the guest's vCPU thread, confined by seccomp, only hands the event
/// over (a futex wake).
fn run() -> Result<()> {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("summon-run: {e:#}\n{USAGE}");
            exit(1);
        }
    };
    let sigset = block_termination_signals();
    // One guest per process: no prepared-vCPU pool, whose VMs would only be created and torn
    // down unused; the guest runs on the one VM the backend probes.
    let backend = KvmBackend::with_prewarm(0).context("cannot use KVM")?;
    let (tx, rx) = mpsc::channel::<InstanceEvent>();
    let tx = std::sync::Mutex::new(tx);
    let sink: EventSink = Arc::new(move |e| match e {
        InstanceEvent::Console(line) => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(line.as_bytes());
            let _ = out.write_all(b"\n");
            let _ = out.flush();
        }
        InstanceEvent::NetReady => {}
        end => {
            let _ = tx.lock().unwrap_or_else(|p| p.into_inner()).send(end);
        }
    });
    let image = opts.image.clone();
    // A one-shot tender reads the segments straight from the file into guest memory; the
    // backend's cache (for summond) would read the whole image into the heap first.
    let parsed = Arc::new(
        ElfImage::from_file(&image).with_context(|| format!("cannot start {}", image.display()))?,
    );
    let _instance = backend
        .start_image(parsed, spec(opts), sink)
        .with_context(|| format!("cannot start {}", image.display()))?;
    handle_termination_signals(&sigset);
    match rx.recv() {
        Ok(InstanceEvent::Exited(status)) => exit(status),
        Ok(InstanceEvent::Faulted(reason)) => {
            eprintln!("summon-run: guest fault: {reason}");
            exit(1)
        }
        Ok(_) | Err(_) => exit(1),
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("summon-run: {e:#}");
        exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_reference_tender_flags() {
        let o = parse_args(args(&[
            "--mem=64",
            "--net:service=tap0",
            "--net-mac:service=02:00:00:00:00:2a",
            "--block:storage=/tmp/disk.img",
            "--block-sector-size:storage=4096",
            "--",
            "img.hvt",
            "--ipv4=10.0.0.2/24",
        ]))
        .unwrap();
        assert_eq!(o.mem_mib, Some(64));
        assert_eq!(o.nets["service"], "tap0");
        assert_eq!(o.macs["service"], [2, 0, 0, 0, 0, 0x2a]);
        assert_eq!(o.blocks["storage"], PathBuf::from("/tmp/disk.img"));
        assert_eq!(o.sector_sizes["storage"], 4096);
        assert_eq!(o.image, PathBuf::from("img.hvt"));
        assert_eq!(o.args, vec!["--ipv4=10.0.0.2/24"]);
    }

    #[test]
    fn image_without_separator_and_errors() {
        let o = parse_args(args(&["img.hvt", "a", "--b"])).unwrap();
        assert_eq!(o.args, vec!["a", "--b"]);
        assert!(parse_args(args(&["--mem=x", "img"])).is_err());
        assert!(parse_args(args(&["--bogus", "img"])).is_err());
        assert!(parse_args(args(&["--net:x", "img"])).is_err());
        assert!(parse_args(args(&["--net-mac:x=02:00:00:00:00:01", "img"])).is_err());
        assert!(parse_args(args(&["--net:x=t", "--net-mac:x=zz", "img"])).is_err());
        assert!(parse_args(args(&["--mem=16"])).is_err());
    }
}
