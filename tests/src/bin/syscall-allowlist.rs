//! `syscall-allowlist NR[,NR...] -- PROGRAM [ARGS...]`: runs PROGRAM under a seccomp filter
//! that lets through only the listed system call numbers and fails every other call with
//! `EPERM`, with `no_new_privs` set: what systemd does for a unit's `SystemCallFilter=` allow
//! list with `SystemCallErrorNumber=EPERM` and `NoNewPrivileges=yes`, for hosts where the test
//! cannot start a real unit.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

fn program(allowed: &str) -> Result<BpfProgram, String> {
    let mut rules = BTreeMap::new();
    for nr in allowed.split(',').filter(|s| !s.is_empty()) {
        let nr: i64 = nr
            .parse()
            .map_err(|e| format!("system call number {nr:?}: {e}"))?;
        rules.insert(nr, Vec::new());
    }
    if rules.is_empty() {
        return Err("no system call allowed".into());
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| e.to_string())?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(allowed), Some("--"), Some(cmd)) =
        (args.first(), args.get(1).map(String::as_str), args.get(2))
    else {
        eprintln!("usage: syscall-allowlist NR[,NR...] -- PROGRAM [ARGS...]");
        return ExitCode::from(2);
    };
    let filter = match program(allowed) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("syscall-allowlist: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = seccompiler::apply_filter(&filter) {
        eprintln!("syscall-allowlist: installing the filter: {e}");
        return ExitCode::from(2);
    }
    let e = Command::new(cmd).args(&args[3..]).exec();
    eprintln!("syscall-allowlist: exec {cmd}: {e}");
    ExitCode::from(127)
}
