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
use summon_launcher::kvm::KvmBackend;
use summon_launcher::MacAddr;
use summon_launcher::{
    BlockSpec, EventSink, Instance, InstanceEvent, InstanceSpec, NetSpec, TapSource,
};

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

/// Blocks SIGINT and SIGTERM in every thread and returns a thread-less way to wait for them.
fn block_termination_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local set, then pthread_sigmask for this (the only) thread
    // before any other thread exists, so all threads inherit the mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn run() -> Result<i32> {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("summon-run: {e:#}\n{USAGE}");
            return Ok(1);
        }
    };
    let sigset = block_termination_signals();
    let backend = KvmBackend::new().context("cannot use KVM")?;
    let (tx, rx) = mpsc::channel::<Option<InstanceEvent>>();
    let tx_events = std::sync::Mutex::new(tx.clone());
    let sink: EventSink = Arc::new(move |e| match e {
        InstanceEvent::Console(line) => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(line.as_bytes());
            let _ = out.write_all(b"\n");
            let _ = out.flush();
        }
        InstanceEvent::NetReady => {}
        end => {
            let _ = tx_events.lock().unwrap().send(Some(end));
        }
    });
    let image = opts.image.clone();
    let instance = backend
        .start_kvm(spec(opts), sink)
        .with_context(|| format!("cannot start {}", image.display()))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut sig: libc::c_int = 0;
            // SAFETY: waits for one of the signals blocked above; `sig` receives its number.
            unsafe { libc::sigwait(&sigset, &mut sig) };
            let _ = tx.send(None);
        })
        .context("cannot start the signal thread")?;
    let status = match rx.recv() {
        Ok(Some(InstanceEvent::Exited(status))) => status,
        Ok(Some(InstanceEvent::Faulted(reason))) => {
            eprintln!("summon-run: guest fault: {reason}");
            1
        }
        Ok(Some(_)) => 1,
        Ok(None) | Err(_) => {
            let _ = instance.stop();
            eprintln!("summon-run: terminated by signal");
            1
        }
    };
    Ok(status)
}

fn main() {
    let code = match run() {
        Ok(status) => status,
        Err(e) => {
            eprintln!("summon-run: {e:#}");
            1
        }
    };
    // Exit status is a byte, as for the reference tender (HALT 255 -> 255).
    std::process::exit(code & 0xff);
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
