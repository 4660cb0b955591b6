use clap::Parser;
use summon_daemon::cli::{admin_target, cluster_table, status_table, Cli, Command};
use summon_daemon::config::Config;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { file }) => match Config::load(&file) {
            Ok(cfg) => {
                println!("{}: ok ({} services)", file.display(), cfg.services.len());
                Ok(())
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        },
        Some(Command::Status { admin, json }) => {
            let (addr, token) = admin_target(&admin, cli.config.as_deref())?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let body = rt.block_on(summon_daemon::admin::get(
                addr,
                "/v1/instances",
                token.as_deref(),
            ))?;
            // 404 on a standalone host.
            let cluster = rt
                .block_on(summon_daemon::admin::get(
                    addr,
                    "/v1/cluster",
                    token.as_deref(),
                ))
                .ok();
            if json {
                print!("{body}");
            } else {
                print!("{}", status_table(&body)?);
                if let Some(c) = cluster {
                    print!("\n{}", cluster_table(&c)?);
                }
            }
            Ok(())
        }
        Some(Command::Stop { service, admin }) => {
            let (addr, token) = admin_target(&admin, cli.config.as_deref())?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let path = format!("/v1/instances/{service}/stop");
            print!(
                "{}",
                rt.block_on(summon_daemon::admin::request(
                    addr,
                    "POST",
                    &path,
                    token.as_deref()
                ))?
            );
            Ok(())
        }
        Some(Command::KvmWorker {
            prewarm,
            slots,
            cgroup_parent,
        }) => std::process::exit(summon_daemon::worker::run(prewarm, slots, cgroup_parent)),
        Some(Command::Run) | None => {
            let Some(config) = cli.config else {
                anyhow::bail!("no configuration: use `summond --config FILE`");
            };
            let log = summon_daemon::logging::init()?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let result = rt.block_on(summon_daemon::daemon::run(config));
            // Blocking tasks (an instance's stop) must not hold the exit hostage.
            rt.shutdown_timeout(std::time::Duration::from_secs(2));
            if let Err(e) = &result {
                tracing::error!("{e:#}");
            }
            // Bounded: a stalled log reader delays exit by at most this much.
            log.flush(summon_daemon::logging::EXIT_FLUSH);
            match result {
                Ok(()) => Ok(()),
                // Already logged through the queue; printing it again to stderr synchronously
                // could block on the very sink that is stalled.
                Err(_) => std::process::exit(1),
            }
        }
    }
}
