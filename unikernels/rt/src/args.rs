//! The command line, split MirageOS style: `--key=value` options and plain words.

use core::fmt;

/// One word of the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg<'a> {
    /// `--key=value`, or `--key` (value `None`).
    Opt {
        key: &'a str,
        value: Option<&'a str>,
    },
    /// Anything not starting with `--`.
    Word(&'a str),
}

/// Splits `cmdline` on whitespace into [`Arg`]s.
pub fn parse(cmdline: &str) -> impl Iterator<Item = Arg<'_>> {
    cmdline
        .split_ascii_whitespace()
        .map(|w| match w.strip_prefix("--") {
            Some(opt) => match opt.split_once('=') {
                Some((key, value)) => Arg::Opt {
                    key,
                    value: Some(value),
                },
                None => Arg::Opt {
                    key: opt,
                    value: None,
                },
            },
            None => Arg::Word(w),
        })
}

/// The guest's command line ("" if the tender passed none).
pub fn cmdline() -> &'static str {
    crate::platform::cmdline().unwrap_or("")
}

/// The guest's arguments.
pub fn args() -> impl Iterator<Item = Arg<'static>> {
    parse(cmdline())
}

/// A command-line error, printed as `error: ...` before HALT 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgError {
    /// The option's key (without `--`), or the whole word for a plain word.
    pub option: alloc::string::String,
    pub reason: &'static str,
    /// The error is about a plain word, not an option.
    pub word: bool,
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dashes = if self.word { "" } else { "--" };
        write!(f, "{dashes}{}: {}", self.option, self.reason)
    }
}

impl ArgError {
    /// An error about option `--key`.
    pub fn new(key: &str, reason: &'static str) -> Self {
        ArgError {
            option: key.into(),
            reason,
            word: false,
        }
    }

    /// An error about the plain word `word`.
    pub fn word(word: &str, reason: &'static str) -> Self {
        ArgError {
            word: true,
            ..ArgError::new(word, reason)
        }
    }
}

/// The value of `--key=value`, or an error naming the option.
pub fn require<'a>(key: &str, value: Option<&'a str>) -> Result<&'a str, ArgError> {
    match value {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(ArgError::new(key, "needs a value (--KEY=VALUE)")),
    }
}

/// `--key=N` as a u16 port in 1..=65535.
pub fn port(key: &str, value: Option<&str>) -> Result<u16, ArgError> {
    match require(key, value)?.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(ArgError::new(key, "not a port number (1-65535)")),
    }
}
