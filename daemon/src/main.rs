use clap::Parser;
use summon_daemon::cli::{status_table, Cli, Command};
use summon_daemon::config::Config;
use tracing_subscriber::EnvFilter;

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
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let body = rt.block_on(summon_daemon::admin::get(admin, "/v1/instances"))?;
            if json {
                print!("{body}");
            } else {
                print!("{}", status_table(&body)?);
            }
            Ok(())
        }
        Some(Command::Stop { service, admin }) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let path = format!("/v1/instances/{service}/stop");
            print!(
                "{}",
                rt.block_on(summon_daemon::admin::request(admin, "POST", &path))?
            );
            Ok(())
        }
        Some(Command::Run) | None => {
            let Some(config) = cli.config else {
                anyhow::bail!("no configuration: use `summond --config FILE`");
            };
            tracing_subscriber::fmt()
                .with_env_filter(EnvFilter::try_from_env("SUMMOND_LOG").unwrap_or_else(|_| {
                    EnvFilter::new("info,hickory_server=warn,netlink_packet_route=error")
                }))
                .with_writer(std::io::stderr)
                .init();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(summon_daemon::daemon::run(config))
        }
    }
}
