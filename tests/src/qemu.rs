//! QEMU running an rt image of the virtio platform (`unikernels/target/virtio/NAME.virtio`):
//! direct kernel boot (PVH) on one of three machine/firmware pairs, COM1 on stdout, optionally
//! a legacy virtio-net NIC on a tap and QEMU's `isa-debug-exit` device. Killed when dropped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::netns::NetNs;

pub const QEMU: &str = "qemu-system-x86_64";
pub const QBOOT: &str = "/usr/share/qemu/qboot.rom";

/// Machine type and firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// `-M microvm` with its own qboot-based firmware; no PCI, so no virtio-net-pci.
    Microvm,
    /// `-M pc -bios qboot.rom`: Debian's qboot, minimal PCI set-up, straight to the kernel.
    PcQboot,
    /// `-M pc` with the default SeaBIOS (and QEMU's PVH option ROM).
    PcSeabios,
}

impl Machine {
    pub const ALL: [Machine; 3] = [Machine::Microvm, Machine::PcQboot, Machine::PcSeabios];

    pub fn name(self) -> &'static str {
        match self {
            Machine::Microvm => "microvm",
            Machine::PcQboot => "pc+qboot",
            Machine::PcSeabios => "pc+SeaBIOS",
        }
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            Machine::Microvm => &["-M", "microvm"],
            Machine::PcQboot => &["-M", "pc", "-bios", QBOOT],
            Machine::PcSeabios => &["-M", "pc"],
        }
    }
}

/// How to run the guest.
#[derive(Debug, Clone)]
pub struct Options {
    pub machine: Machine,
    pub mem_mib: u32,
    pub append: String,
    /// Add `-device isa-debug-exit` (QEMU then exits with `status * 2 + 1`).
    pub debug_exit: bool,
    /// A legacy-capable virtio-net-pci NIC.
    pub nic: Option<(Nic, summon_launcher::MacAddr)>,
    /// More QEMU arguments, appended as they are.
    pub extra: Vec<String>,
}

/// Where the NIC's frames go.
#[derive(Debug, Clone)]
pub enum Nic {
    /// An existing tap QEMU opens by name (QEMU must run in its namespace).
    Tap(String),
    /// An open tap file descriptor QEMU inherits (as libvirt and the daemon hand it over):
    /// frames sent before QEMU runs wait in the tap's queue.
    Fd(i32),
}

impl Options {
    pub fn new(machine: Machine, append: &str) -> Options {
        Options {
            machine,
            mem_mib: 64,
            append: append.into(),
            debug_exit: true,
            nic: None,
            extra: Vec::new(),
        }
    }
}

/// The qemu command line for `image` (without the program name).
pub fn args(image: &Path, o: &Options) -> Vec<String> {
    let mut a: Vec<String> = o.machine.args().iter().map(|s| s.to_string()).collect();
    a.extend(
        [
            "-enable-kvm",
            // QEMU aborts setting MSR 0x10a on this kind of host with arch-capabilities on.
            "-cpu",
            "host,-arch-capabilities",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-serial",
            "stdio",
            "-no-reboot",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    a.push("-m".into());
    a.push(o.mem_mib.to_string());
    a.push("-kernel".into());
    a.push(image.display().to_string());
    a.push("-append".into());
    a.push(o.append.clone());
    if o.debug_exit {
        a.push("-device".into());
        a.push("isa-debug-exit".into());
    }
    if let Some((nic, mac)) = &o.nic {
        a.push("-netdev".into());
        a.push(match nic {
            Nic::Tap(tap) => format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
            Nic::Fd(fd) => format!("tap,id=n0,fd={fd}"),
        });
        a.push("-device".into());
        a.push(format!(
            "virtio-net-pci,netdev=n0,disable-modern=on,mac={mac}"
        ));
    }
    a.extend(o.extra.iter().cloned());
    a
}

/// Console lines with the time each arrived.
#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<(Instant, String)>>,
    cond: Condvar,
}

/// A running QEMU.
pub struct Vm {
    child: Child,
    pub started: Instant,
    lines: Arc<Lines>,
}

impl Vm {
    /// Starts QEMU (inside `ns` if given, for its tap).
    pub fn start(image: &Path, o: &Options, ns: Option<&NetNs>) -> Vm {
        let mut cmd = match ns {
            Some(ns) => ns.command(QEMU),
            None => Command::new(QEMU),
        };
        if let Some((Nic::Fd(fd), _)) = &o.nic {
            // SAFETY: fcntl on a descriptor number; clearing FD_CLOEXEC only lets QEMU inherit it.
            let rc = unsafe { libc::fcntl(*fd, libc::F_SETFD, 0) };
            assert_eq!(rc, 0, "clear FD_CLOEXEC on the tap fd");
        }
        cmd.args(args(image, o))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("run {QEMU}: {e}"));
        let lines = Arc::new(Lines::default());
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        for (stream, prefix) in [
            (Box::new(out) as Box<dyn std::io::Read + Send>, ""),
            (Box::new(err), "qemu stderr: "),
        ] {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let mut l = lines.lines.lock().expect("lines lock");
                    l.push((
                        Instant::now(),
                        format!("{prefix}{}", line.trim_end_matches('\r')),
                    ));
                    lines.cond.notify_all();
                }
            });
        }
        Vm {
            child,
            started,
            lines,
        }
    }

    /// Waits for a console line containing `needle`; returns when it arrived.
    pub fn wait_line(&self, needle: &str, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        let mut l = self.lines.lines.lock().expect("lines lock");
        loop {
            if let Some((t, _)) = l.iter().find(|(_, s)| s.contains(needle)) {
                return Some(*t);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            l = self
                .lines
                .cond
                .wait_timeout(l, deadline - now)
                .expect("lines lock")
                .0;
        }
    }

    /// Everything printed so far.
    pub fn console(&self) -> String {
        let l = self.lines.lines.lock().expect("lines lock");
        l.iter().map(|(_, s)| format!("{s}\n")).collect()
    }

    /// Waits for QEMU to exit; `None` (and QEMU killed) after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for qemu") {
                // Let the reader threads drain the pipes.
                std::thread::sleep(Duration::from_millis(50));
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// QEMU's process ID (for CPU accounting).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// QEMU and /dev/kvm are there.
pub fn available() -> Result<(), String> {
    crate::require::kvm()?;
    crate::require::tool(QEMU)
}
