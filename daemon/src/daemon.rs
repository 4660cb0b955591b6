//! `summond run`: wire config, network, registry, DNS, admin, reaper, signals and systemd.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::cluster::Cluster;
use crate::config::Config;
use crate::dns::rrl::{Prefixes, Rrl};
use crate::dns::{self, DnsFront, Zone};
use crate::driver::HostDrivers;
use crate::fds::{self, FdBudget};
use crate::hostlock::HostLock;
use crate::metrics::Metrics;
use crate::net::{remove_leftovers, NetPlumber, Netlink};
use crate::registry::Registry;
use crate::{admin, reaper, reload, systemd};

/// Idle TCP DNS connections are closed after this.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);

/// Raises the soft RLIMIT_NOFILE and splits it (see [`crate::fds`]). A failed raise is logged
/// and the budget follows the limit the process has.
fn start_fd_budget() -> anyhow::Result<FdBudget> {
    match fds::raise_nofile() {
        Ok(n) => tracing::info!(
            before = n.before,
            soft = n.soft,
            hard = n.hard,
            "RLIMIT_NOFILE"
        ),
        Err(e) => tracing::warn!(error = %e, "could not raise RLIMIT_NOFILE"),
    }
    let budget = FdBudget::current()?;
    tracing::info!(
        limit = budget.limit(),
        client_fds = budget.client_fds(),
        boot_fds = budget.boot_fds(),
        "file descriptor budget"
    );
    Ok(budget)
}

pub async fn run(config_path: PathBuf) -> anyhow::Result<()> {
    let mut config = Config::load(&config_path)?;
    // Before anything on the host is touched: a second daemon on the same state stops here.
    let lock = HostLock::acquire(&config.daemon.lock_file)?;
    let mark = lock.link_mark();
    let admin_token = match config.admin.as_ref().and_then(|a| a.token_file.as_ref()) {
        Some(path) => Some(admin::read_token(path)?),
        None => None,
    };
    let fd_budget = start_fd_budget()?;
    let metrics = Arc::new(Metrics::new());

    let nl = Netlink::connect().context("netlink")?;
    match remove_leftovers(&nl, &mark).await {
        Ok(removed) if !removed.is_empty() => {
            tracing::warn!(?removed, "removed interfaces left by an earlier summond")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "looking for leftover interfaces"),
    }
    // The address stays what it was at start: a reload does not move the gateway.
    let gateway = config.network.gateway;
    nl.add_host_address(gateway)
        .await
        .with_context(|| format!("adding the guests' gateway {gateway}"))?;
    if let Some(problem) = crate::net::gateway_arp_problem() {
        tracing::error!("{problem}");
    }
    let plumber = NetPlumber::new(
        nl.clone(),
        config.network.gateway,
        config.network.txqueuelen,
        mark.clone(),
        config.network.spare_taps as usize,
    );

    // Their shutdown at exit removes the libvirt SYN hold's iptables rules.
    let drivers = Arc::new(HostDrivers::new(
        config.kvm,
        plumber,
        Some(metrics.held_packets.clone()),
    )?);
    // The KVM backend logged whether it can (detection runs once per process).
    metrics
        .cpu_quota_enforced
        .set(i64::from(summon_launcher::kvm::cgroup::support().is_ok()));
    let registry = Registry::new(
        &config.services,
        config.limits,
        config.dns.ttl,
        drivers.clone(),
        metrics.clone(),
    )?;
    let capacity = fds::InstanceCapacity::of_host(config.kvm.instances_per_process);
    tracing::info!(
        instances = capacity.instances,
        limit = capacity.limit,
        "instance capacity of this host"
    );
    registry.set_host_capacity(capacity.instances, capacity.limit);
    let zone = Arc::new(RwLock::new(Arc::new(Zone::from_config(
        &config,
        reload::next_serial(0),
    )?)));

    // Each client kind is capped by its configured maximum and by its share of the fd budget.
    let max_forwards = config.dns.max_forwards.min(fd_budget.forwards());
    let tcp_max_clients = config
        .dns
        .tcp_max_clients
        .min(fd_budget.dns_tcp_connections());
    let admin_max_clients = admin::MAX_CONNECTIONS.min(fd_budget.admin_connections());
    if tcp_max_clients < config.dns.tcp_max_clients
        || max_forwards < config.dns.max_forwards
        || (config.admin.is_some() && admin_max_clients < admin::MAX_CONNECTIONS)
    {
        tracing::warn!(
            tcp_max_clients,
            max_forwards,
            admin_max_clients,
            limit = fd_budget.limit(),
            "client caps lowered to fit the file descriptor budget"
        );
    }
    // Standalone unless [cluster] is set: then, and only then, etcd is contacted.
    let cluster = match &config.cluster {
        Some(c) => Some(
            Cluster::start(
                c.clone(),
                &config.dns.zone,
                config.dns.ttl,
                registry.clone(),
                nl.clone(),
                metrics.clone(),
            )
            .await
            .context("joining the cluster")?,
        ),
        None => None,
    };
    let mut front = DnsFront::new(
        zone.clone(),
        registry.clone(),
        metrics.clone(),
        max_forwards,
        Rrl::new(&config.dns.rrl),
    );
    if let Some(c) = &cluster {
        front = front.with_cluster(c.clone());
    }
    let prefixes = Prefixes::new(&config.dns.rrl);
    let tcp_clients = Arc::new(Semaphore::new(tcp_max_clients));
    let mut dns_servers = JoinSet::new();
    for addr in &config.dns.listen {
        let udp = tokio::net::UdpSocket::bind(addr)
            .await
            .with_context(|| format!("binding DNS UDP {addr}"))?;
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding DNS TCP {addr}"))?;
        dns_servers.spawn(dns::udp::serve(udp, front.clone(), prefixes));
        dns_servers.spawn(dns::tcp::serve(
            tcp,
            front.clone(),
            tcp_clients.clone(),
            TCP_TIMEOUT,
        ));
    }
    if let Some(a) = &config.admin {
        let l = admin::bind(a.listen)
            .await
            .with_context(|| format!("binding admin {}", a.listen))?;
        tokio::spawn(admin::serve(
            l,
            registry.clone(),
            cluster.clone(),
            admin_token,
            admin_max_clients,
        ));
    }
    let reaper = reaper::spawn(registry.clone());

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;

    tracing::info!(
        zone = %config.dns.zone, listen = ?config.dns.listen,
        admin = ?config.admin.as_ref().map(|a| a.listen), lock = %lock.path().display(),
        services = config.services.len(), "summond ready"
    );
    systemd::ready(&format!("serving {} services", config.services.len()));
    systemd::spawn_watchdog();

    loop {
        tokio::select! {
            _ = hup.recv() => {
                systemd::reloading();
                match reload::reload(&config_path, &config, &zone, &registry).await {
                    Ok(new) => {
                        tracing::info!(services = new.services.len(), "configuration reloaded");
                        config = new;
                    }
                    Err(e) => tracing::error!("reload rejected, keeping the running configuration: {e}"),
                }
                systemd::ready(&format!("serving {} services", config.services.len()));
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }

    tracing::info!("stopping");
    systemd::stopping();
    reaper.abort();
    // Queries still waiting for a boot go unanswered: every instance is about to stop.
    dns_servers.shutdown().await;
    registry.stop_all().await;
    if let Some(c) = &cluster {
        c.shutdown().await;
    }
    // Waits (bounded) for the guests' worker processes: off the async workers.
    let d = drivers.clone();
    let _ = tokio::task::spawn_blocking(move || d.shutdown()).await;
    if let Ok(h) = summon_launcher::kvm::cgroup::support() {
        let h = h.clone();
        let _ = tokio::task::spawn_blocking(move || h.release(Duration::from_secs(1))).await;
    }
    match remove_leftovers(&nl, &mark).await {
        Ok(left) if !left.is_empty() => tracing::warn!(?left, "removed remaining interfaces"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "final interface cleanup"),
    }
    if let Err(e) = nl.del_host_address(gateway).await {
        tracing::warn!(error = %e, "removing the guests' gateway address");
    }
    tracing::info!("stopped");
    drop(lock);
    Ok(())
}
