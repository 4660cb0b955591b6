//! Command line: `summond [run] --config FILE`, `summond check-config FILE`, `summond status`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "summond",
    version,
    about = "DNS-triggered summoning of unikernels",
    long_about = "summond is the authoritative DNS server of a zone of services. An A query for \
                  NAME.<zone> boots the service's unikernel when it is not running (the \
                  embedded KVM launcher for hvt images, or a libvirt domain), answers with the \
                  service's IP while the client's first packets wait in the instance's tap, and \
                  stops or suspends the instance again when it has been idle. Run without a \
                  subcommand (or with `run`) it is the daemon: systemd's Type=notify with a \
                  watchdog, SIGHUP re-reads the configuration, SIGTERM stops every instance and \
                  exits."
)]
pub struct Cli {
    /// Configuration file (for running the daemon).
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (the default).
    Run,
    /// Check a configuration file and exit (0 valid, 1 invalid).
    CheckConfig { file: PathBuf },
    /// Print the instances of a running daemon as a table.
    Status {
        /// The daemon's admin.listen address.
        #[arg(long, default_value = "127.0.0.1:9100")]
        admin: SocketAddr,
        /// Print the raw JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop (destroy) a service's instance now; the next query boots it again.
    Stop {
        service: String,
        /// The daemon's admin.listen address.
        #[arg(long, default_value = "127.0.0.1:9100")]
        admin: SocketAddr,
    },
}

/// Renders `/v1/instances` JSON as a table.
pub fn status_table(json: &str) -> anyhow::Result<String> {
    let rows: Vec<serde_json::Value> = serde_json::from_str(json)?;
    let mut out = format!(
        "{:<20} {:<15} {:<10} {:<16} {:>6} {:>8} {:>10}\n",
        "SERVICE", "IP", "STATE", "TAP", "BOOTS", "FAILURES", "FOR"
    );
    for r in rows {
        let s = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_string();
        let n = |k: &str| r.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        let secs = r
            .get("state_seconds")
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0);
        out.push_str(&format!(
            "{:<20} {:<15} {:<10} {:<16} {:>6} {:>8} {:>9.1}s\n",
            s("service"),
            s("ip"),
            s("state"),
            s("tap"),
            n("boots"),
            n("failures"),
            secs
        ));
    }
    Ok(out)
}
