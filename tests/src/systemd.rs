//! A systemd unit's system call filter as the installed systemd reads it: the names its
//! `SystemCallFilter=` lines allow, groups expanded by `systemd-analyze syscall-filter`, and
//! their numbers on this architecture, for the `syscall-allowlist` helper binary.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// The entries of every `SystemCallFilter=` line of `unit` (systemd joins allow lists). A deny
/// list (`~…`) is an error: the helper reproduces allow lists only.
pub fn unit_syscall_filter(unit: &str) -> Result<Vec<String>, String> {
    let mut entries = Vec::new();
    for line in unit.lines() {
        let Some(value) = line.trim().strip_prefix("SystemCallFilter=") else {
            continue;
        };
        if value.starts_with('~') {
            return Err(format!("a deny list: {line}"));
        }
        entries.extend(value.split_whitespace().map(str::to_owned));
    }
    if entries.is_empty() {
        return Err("the unit has no SystemCallFilter= line".into());
    }
    Ok(entries)
}

/// The system call names `entries` allow, with every `@group` expanded as this host's systemd
/// defines it.
pub fn expand(entries: &[String]) -> Result<BTreeSet<String>, String> {
    let mut names = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut todo: Vec<String> = entries.to_vec();
    while let Some(entry) = todo.pop() {
        if !entry.starts_with('@') {
            names.insert(entry);
            continue;
        }
        if !seen.insert(entry.clone()) {
            continue;
        }
        let out = Command::new("systemd-analyze")
            .args(["syscall-filter", &entry])
            .output()
            .map_err(|e| format!("systemd-analyze: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "systemd-analyze syscall-filter {entry}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        // The group's name, then its members indented, comments starting with '#'.
        for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
            let member = line.trim();
            if member.is_empty() || member.starts_with('#') {
                continue;
            }
            todo.push(member.to_owned());
        }
    }
    Ok(names)
}

/// The numbers of `names` on this architecture, from the kernel headers' table; names this
/// architecture lacks are left out, as systemd leaves them out of its filter.
pub fn numbers(names: &BTreeSet<String>) -> Result<Vec<i64>, String> {
    let table = Path::new("/usr/include/x86_64-linux-gnu/asm/unistd_64.h");
    let text = std::fs::read_to_string(table)
        .map_err(|e| format!("{}: {e} (package linux-libc-dev)", table.display()))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some("#define"), Some(name), Some(nr)) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        if let (Some(name), Ok(nr)) = (name.strip_prefix("__NR_"), nr.parse::<i64>()) {
            if names.contains(name) {
                out.push(nr);
            }
        }
    }
    if out.is_empty() {
        return Err(format!("no known system call in {}", table.display()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_lines_are_joined_and_deny_lists_refused() {
        let unit =
            "[Service]\nSystemCallFilter=@system-service\nX=1\nSystemCallFilter=seccomp kcmp\n";
        assert_eq!(
            unit_syscall_filter(unit).unwrap(),
            ["@system-service", "seccomp", "kcmp"]
        );
        assert!(unit_syscall_filter("SystemCallFilter=~@mount\n").is_err());
        assert!(unit_syscall_filter("[Service]\n").is_err());
    }
}
