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
        #[command(flatten)]
        admin: AdminArgs,
        /// Print the raw JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop (destroy) a service's instance now; the next query boots it again.
    Stop {
        service: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// A worker process that runs guests for summond (started by summond itself, with its
    /// socket at fd 3; see `kvm.instances_per_process`).
    #[command(hide = true)]
    KvmWorker {
        /// Prepared VMs to keep ready.
        #[arg(long)]
        prewarm: usize,
        /// Counter slots (twice the guests the daemon places here).
        #[arg(long)]
        slots: usize,
        /// summond's cpu cgroup: the worker's guests' quota groups go inside it.
        #[arg(long)]
        cgroup_parent: Option<std::path::PathBuf>,
    },
}

/// How `status` and `stop` reach the admin API: flags first, then `--config`'s `[admin]`.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// The daemon's admin.listen address (default: the config's, else 127.0.0.1:9100).
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// A file with the admin bearer token (default: the config's admin.token_file).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

/// The admin listener's address and token for a client command.
pub fn admin_target(
    args: &AdminArgs,
    config: Option<&std::path::Path>,
) -> anyhow::Result<(SocketAddr, Option<String>)> {
    let cfg = match config {
        Some(path) => crate::config::Config::load(path)?.admin,
        None => None,
    };
    let addr = args
        .admin
        .or(cfg.as_ref().map(|a| a.listen))
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9100)));
    let token_file = args
        .token_file
        .clone()
        .or_else(|| cfg.and_then(|a| a.token_file));
    let token = token_file
        .map(|p| crate::admin::read_token(&p))
        .transpose()?;
    Ok((addr, token))
}

/// Renders `/v1/cluster` JSON (a cluster host's view) as a table.
pub fn cluster_table(json: &str) -> anyhow::Result<String> {
    let v: serde_json::Value = serde_json::from_str(json)?;
    let s = |v: &serde_json::Value, k: &str| {
        v.get(k).and_then(|x| x.as_str()).unwrap_or("-").to_string()
    };
    let mut out = format!(
        "cluster: this node {}, lease {}\n{:<20} {:<22} {:>6}\n",
        s(&v, "node"),
        s(&v, "lease"),
        "NODE",
        "DNS",
        "FREE"
    );
    for n in v
        .get("nodes")
        .and_then(|x| x.as_array())
        .into_iter()
        .flatten()
    {
        out.push_str(&format!(
            "{:<20} {:<22} {:>6}\n",
            s(n, "node"),
            s(n, "dns"),
            n.get("free").and_then(|x| x.as_u64()).unwrap_or(0)
        ));
    }
    Ok(out)
}

/// Renders `/v1/instances` JSON as a table.
pub fn status_table(json: &str) -> anyhow::Result<String> {
    let rows: Vec<serde_json::Value> = serde_json::from_str(json)?;
    // A cluster host's rows name each service's owner.
    let clustered = rows.iter().any(|r| r.get("owner").is_some());
    let mut out = format!(
        "{:<20} {:<15} {:<10} {:<16} {:>6} {:>8} {:>10}{}\n",
        "SERVICE",
        "IP",
        "STATE",
        "TAP",
        "BOOTS",
        "FAILURES",
        "FOR",
        if clustered { "  OWNER" } else { "" }
    );
    for r in rows {
        let s = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_string();
        let n = |k: &str| r.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        let secs = r
            .get("state_seconds")
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0);
        out.push_str(&format!(
            "{:<20} {:<15} {:<10} {:<16} {:>6} {:>8} {:>9.1}s{}\n",
            s("service"),
            s("ip"),
            s("state"),
            s("tap"),
            n("boots"),
            n("failures"),
            secs,
            if clustered {
                format!("  {}", s("owner"))
            } else {
                String::new()
            }
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_shows_owners_and_the_cluster_view() {
        let rows = r#"[{"service":"web","ip":"10.77.0.10","state":"running","tap":"sm-web","boots":1,"failures":0,"state_seconds":2.0,"owner":"h0"}]"#;
        let t = status_table(rows).unwrap();
        assert!(t.lines().next().unwrap().ends_with("OWNER"), "{t}");
        assert!(t.contains("  h0"), "{t}");
        let standalone = r#"[{"service":"web","ip":"10.77.0.10","state":"stopped","tap":null,"boots":0,"failures":0,"state_seconds":2.0}]"#;
        assert!(!status_table(standalone).unwrap().contains("OWNER"));
        let view = r#"{"node":"h0","lease":"1f","owners":[],"nodes":[{"node":"h1","dns":"10.99.0.12:53","free":40}]}"#;
        let c = cluster_table(view).unwrap();
        assert!(c.contains("this node h0, lease 1f"), "{c}");
        assert!(
            c.contains("h1") && c.contains("10.99.0.12:53") && c.contains("40"),
            "{c}"
        );
        assert!(cluster_table("not json").is_err());
    }
}
