//! Config errors carry line and column and say what was expected.

use std::path::Path;

use super::error::LineIndex;
use super::*;

fn image() -> String {
    let p = std::env::temp_dir().join("summon-config-test.hvt");
    std::fs::write(&p, b"img").unwrap();
    p.display().to_string()
}

fn base(services: &str) -> String {
    format!(
        r#"[dns]
listen = ["127.0.0.1:5300"]
zone = "svc.test."
ttl = 10

[network]
subnet = "10.77.0.0/16"
gateway = "10.77.0.1"
{services}"#
    )
}

fn service(extra: &str) -> String {
    format!(
        "\n[[service]]\nname = \"web\"\nimage = \"{}\"\nip = \"10.77.0.10\"\n{extra}",
        image()
    )
}

fn errors(src: &str) -> Vec<Problem> {
    Config::parse(src, Path::new("/")).expect_err("config should be rejected")
}

fn one_error(src: &str) -> Problem {
    let e = errors(src);
    assert_eq!(e.len(), 1, "{e:?}");
    e.into_iter().next().unwrap()
}

#[test]
fn valid_config_with_defaults_and_generated_net_args() {
    let cfg = Config::parse(&base(&service("args = [\"--port=80\"]")), Path::new("/")).unwrap();
    let s = &cfg.services[0];
    assert_eq!(
        s.args,
        [
            "--ipv4=10.77.0.10/16",
            "--ipv4-gateway=10.77.0.1",
            "--port=80"
        ]
    );
    assert_eq!(s.mac, [0x02, 0x53, 10, 77, 0, 10]);
    assert_eq!(s.idle_timeout, Duration::from_secs(60));
    assert_eq!(s.stop, StopMode::Destroy);
    assert_eq!(s.reply, ReplyMode::Immediate);
    assert_eq!(cfg.dns.nameserver, "ns.svc.test.");
    assert_eq!(cfg.limits, Limits::default());
}

#[test]
fn unknown_key_names_line_and_column() {
    let src = base(&service("colour = \"blue\""));
    let p = one_error(&src);
    assert_eq!(p.line, Some(14), "{p}");
    assert_eq!(p.column, Some(1), "{p}");
    assert!(p.message.contains("unknown field `colour`"), "{p}");
}

#[test]
fn wrong_type_names_position_and_expectation() {
    let src = base(&service("memory_mib = \"lots\""));
    let p = one_error(&src);
    assert_eq!((p.line, p.column), (Some(14), Some(14)), "{p}");
    assert!(p.message.contains("expected u64"), "{p}");
}

#[test]
fn syntax_error_position() {
    let p = one_error("[dns\nlisten = 1\n");
    assert_eq!(p.line, Some(1), "{p}");
}

#[test]
fn semantic_errors_point_at_values() {
    let src = base(&format!(
        "{}{}",
        service("idle_timeout = \"soon\""),
        service("").replace("10.77.0.10", "10.78.0.10")
    ));
    let e = errors(&src);
    let msgs: Vec<String> = e.iter().map(|p| p.to_string()).collect();
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("14:16:") && m.contains("expected a duration")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("18:6:") && m.contains("outside network.subnet")),
        "{msgs:?}"
    );
    let dup = base(&format!(
        "{}{}",
        service(""),
        service("").replace("10.77.0.10", "10.77.0.11")
    ));
    let p = one_error(&dup);
    assert!(
        p.message
            .contains("duplicate service \"web\" (first defined on line 10)"),
        "{p}"
    );
    assert_eq!(p.line, Some(16), "{p}");
}

#[test]
fn checks_names_ips_images_backends() {
    let bad_name = base(&service("").replace("\"web\"", "\"we_b\""));
    assert!(one_error(&bad_name).message.contains("DNS label"));
    let gw = base(&service("").replace("10.77.0.10", "10.77.0.1"));
    assert!(one_error(&gw).message.contains("gateway"));
    let dup_ip = base(&format!(
        "{}{}",
        service(""),
        service("").replace("\"web\"", "\"api\"")
    ));
    assert!(one_error(&dup_ip)
        .message
        .contains("already used by service \"web\""));
    let missing = base(&service("").replace(&image(), "/nonexistent/x.hvt"));
    let p = one_error(&missing);
    assert!(
        p.message.contains("no such file") && p.line == Some(12),
        "{p}"
    );
    let lv = base(&service("backend = \"libvirt\""));
    assert!(one_error(&lv).message.contains("needs a `libvirt` table"));
    let lv_bad = base(&service(
        "backend = \"libvirt\"\nlibvirt = { uri = \"qemu:///system\", guest = \"lxc\" }",
    ));
    assert!(one_error(&lv_bad).message.contains("libvirt.guest"));
    let lv_ok = Config::parse(
        &base(&service(
            "backend = \"libvirt\"\nlibvirt = { uri = \"qemu:///system\", domain = \"legacy-vm\" }",
        )),
        Path::new("/"),
    )
    .unwrap();
    match &lv_ok.services[0].backend {
        ServiceBackend::Libvirt(l) => assert_eq!(l.existing_domain(), Some("legacy-vm")),
        b => panic!("{b:?}"),
    }
    let stop = base(&service("stop = \"explode\""));
    assert!(
        one_error(&stop).message.contains("destroy"),
        "{:?}",
        errors(&stop)
    );
    let dup_args = base(&service("args = [\"--ipv4=10.77.0.10/16\"]"));
    assert!(one_error(&dup_args).message.contains("net_args"));
    let raw = Config::parse(
        &base(&service(
            "net_args = false\nargs = [\"--ipv4=10.77.0.10/24\"]",
        )),
        Path::new("/"),
    )
    .unwrap();
    assert_eq!(raw.services[0].args, ["--ipv4=10.77.0.10/24"]);
}

#[test]
fn checks_network_and_dns() {
    let src = base(&service("")).replace("10.77.0.0/16", "10.77.0.0");
    assert!(one_error(&src).message.contains("network.subnet"));
    let src = base(&service("")).replace("gateway = \"10.77.0.1\"", "gateway = \"192.168.0.1\"");
    assert!(errors(&src)
        .iter()
        .any(|p| p.message.contains("outside network.subnet")));
    let src = base(&service("")).replace("svc.test.", "bad..zone");
    assert!(one_error(&src).message.contains("dns.zone"));
    let src = base(&service("")).replace("127.0.0.1:5300", "localhost");
    let p = one_error(&src);
    assert_eq!((p.line, p.column), (Some(2), Some(11)), "{p}");
}

#[test]
fn load_error_names_the_file() {
    let dir = std::env::temp_dir().join("summon-config-load-test");
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("bad.toml");
    std::fs::write(&f, base(&service("colour = 1"))).unwrap();
    let e = Config::load(&f).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}:14:1: ", f.display())), "{e}");
}

#[test]
fn hostile_input_is_an_error_not_a_panic() {
    for src in [
        "",
        "\u{0}",
        "[[service]]\n[[service]]",
        "dns = 1",
        &"[".repeat(10_000),
        "a=\"\\u{110000}\"",
    ] {
        let _ = Config::parse(src, Path::new("/"));
    }
}

#[test]
fn shipped_example_is_valid_but_for_its_image_paths() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/example.toml");
    let err = Config::load(&path).expect_err("example images do not exist here");
    assert_eq!(err.problems().len(), 2, "{err}");
    assert!(
        err.problems()
            .iter()
            .all(|p| p.message.starts_with("service.image: no such file")),
        "{err}"
    );
}

#[test]
fn kvm_prewarm_defaults_parses_and_is_bounded() {
    let cfg = Config::parse(&base(&service("")), Path::new("/")).unwrap();
    assert_eq!(cfg.kvm.prewarm, summon_launcher::kvm::DEFAULT_PREWARM);
    let src = base(&format!("\n[kvm]\nprewarm = 0\n{}", service("")));
    assert_eq!(Config::parse(&src, Path::new("/")).unwrap().kvm.prewarm, 0);
    let src = base(&format!("\n[kvm]\nprewarm = 1000\n{}", service("")));
    let e = one_error(&src);
    assert!(e.to_string().contains("kvm.prewarm"), "{e}");
    let src = base(&format!("\n[kvm]\npool = 2\n{}", service("")));
    assert!(!errors(&src).is_empty());
}

#[test]
fn kvm_worker_uids_is_a_range_above_root_with_a_uid_per_worker() {
    let kvm = |keys: &str| base(&format!("\n[kvm]\n{keys}\n{}", service("")));
    assert_eq!(
        Config::parse(&base(&service("")), Path::new("/"))
            .unwrap()
            .kvm
            .worker_uids,
        None
    );
    // 64 instances (the default limit) in workers of 100: one worker and a spare.
    let cfg = Config::parse(&kvm("worker_uids = \"400000-400001\""), Path::new("/")).unwrap();
    assert_eq!(
        cfg.kvm.worker_uids,
        Some(summon_launcher::worker::UidRange {
            first: 400000,
            count: 2
        })
    );
    for bad in [
        "\"0-10\"",
        "\"10-5\"",
        "\"400000\"",
        "\"a-b\"",
        "\"1-4294967295\"",
    ] {
        let e = one_error(&kvm(&format!("worker_uids = {bad}")));
        assert!(
            e.message.contains("kvm.worker_uids: expected"),
            "{bad}: {e}"
        );
        assert_eq!((e.line, e.column), (Some(11), Some(15)), "{e}");
    }
    let e = one_error(&kvm(
        "instances_per_process = 10\nworker_uids = \"400000-400005\"",
    ));
    assert!(
        e.message
            .contains("6 uids, but limits.max_instances = 64 needs 8 worker processes"),
        "{e}"
    );
    let e = one_error(&kvm(
        "instances_per_process = 0\nworker_uids = \"400000-400005\"",
    ));
    assert!(e.message.contains("guests run in summond itself"), "{e}");
}

#[test]
fn guest_limits_default_and_service_cpu_quota_overrides() {
    let cfg = Config::parse(&base(&service("")), Path::new("/")).unwrap();
    assert_eq!(cfg.limits.guest, DEFAULT_GUEST_LIMITS);
    assert_eq!(cfg.services[0].limits, DEFAULT_GUEST_LIMITS);
    assert_eq!(cfg.services[0].limits.cpu_quota_percent, Some(100));

    let src = base(&format!(
        "\n[limits]\ncpu_quota = \"150%\"\nconsole_bytes_per_sec = 1000\nnet_frames_per_sec = 2000\n\
         net_bytes_per_sec = 3000\nexits_per_sec = 4000\n{}{}",
        service("cpu_quota = \"20%\""),
        service("").replace("\"web\"", "\"api\"").replace("10.77.0.10", "10.77.0.11"),
    ));
    let cfg = Config::parse(&src, Path::new("/")).unwrap();
    let expect = GuestLimits {
        console_bytes_per_sec: Some(1000),
        tx_frames_per_sec: Some(2000),
        tx_bytes_per_sec: Some(3000),
        exits_per_sec: Some(4000),
        cpu_quota_percent: Some(150),
    };
    assert_eq!(cfg.limits.guest, expect);
    assert_eq!(
        cfg.service("web").unwrap().limits,
        GuestLimits {
            cpu_quota_percent: Some(20),
            ..expect
        }
    );
    assert_eq!(cfg.service("api").unwrap().limits, expect);

    let cfg = Config::parse(&base(&service("cpu_quota = \"unlimited\"")), Path::new("/")).unwrap();
    assert_eq!(cfg.services[0].limits.cpu_quota_percent, None);
}

#[test]
fn bad_cpu_quota_names_line_column_and_the_expected_form() {
    for bad in [
        "\"20\"",
        "\"0%\"",
        "\"6401%\"",
        "\"fast\"",
        "\"-5%\"",
        "\"20 percent\"",
    ] {
        let p = one_error(&base(&service(&format!("cpu_quota = {bad}"))));
        assert_eq!((p.line, p.column), (Some(14), Some(13)), "{bad}: {p}");
        assert!(
            p.message
                .contains("service.cpu_quota: expected a share of one core like \"20%\""),
            "{bad}: {p}"
        );
    }
    let src = base(&format!(
        "\n[limits]\ncpu_quota = \"lots\"\n{}",
        service("")
    ));
    let p = one_error(&src);
    assert_eq!((p.line, p.column), (Some(11), Some(13)), "{p}");
    assert!(p.message.starts_with("limits.cpu_quota: expected"), "{p}");
    // A number is not a share: the type error names the position too.
    let p = one_error(&base(&service("cpu_quota = 20")));
    assert_eq!(p.line, Some(14), "{p}");
}

#[test]
fn zero_or_mistyped_rates_are_rejected_with_position() {
    for key in [
        "console_bytes_per_sec",
        "net_frames_per_sec",
        "net_bytes_per_sec",
        "exits_per_sec",
    ] {
        let src = base(&format!("\n[limits]\n{key} = 0\n{}", service("")));
        let p = one_error(&src);
        assert_eq!((p.line, p.column), (Some(11), Some(key.len() + 4)), "{p}");
        assert_eq!(
            p.message,
            format!("limits.{key}: expected a rate of at least 1 per second")
        );
        let src = base(&format!("\n[limits]\n{key} = \"fast\"\n{}", service("")));
        let p = one_error(&src);
        assert_eq!(p.line, Some(11), "{p}");
        assert!(p.message.contains("expected u64"), "{p}");
    }
}

#[test]
fn duplicate_names_and_colliding_interface_names_are_errors() {
    let dup = base(&format!(
        "{}{}",
        service(""),
        service("").replace("10.77.0.10", "10.77.0.11")
    ));
    let p = one_error(&dup);
    assert!(
        p.message
            .contains("duplicate service \"web\" (first defined on line 10)")
            && p.line == Some(16),
        "{p}"
    );
    // Both shorten to sm-servic-3e3e2 (the 20-bit hash meets).
    let a = service("").replace("\"web\"", "\"service-1888xxxx\"");
    let b = service("")
        .replace("\"web\"", "\"service-4894xxxx\"")
        .replace("10.77.0.10", "10.77.0.11");
    assert_eq!(
        super::tap_name("service-1888xxxx"),
        super::tap_name("service-4894xxxx")
    );
    let p = one_error(&base(&format!("{a}{b}")));
    assert!(
        p.message
            .contains("interface name sm-servic-3e3e2, like service \"service-1888xxxx\""),
        "{p}"
    );
}

#[test]
fn line_index_matches_a_plain_scan() {
    let src = "ab\nçd\n\nlast";
    let plain = |offset: usize| {
        let before = &src[..offset];
        let line = before.matches('\n').count() + 1;
        let start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        (line, before[start..].chars().count() + 1)
    };
    let idx = LineIndex::new(src);
    for offset in (0..=src.len()).filter(|&o| src.is_char_boundary(o)) {
        assert_eq!(idx.line_col(offset), plain(offset), "offset {offset}");
    }
    // Inside a multi-byte character and past the end: clamped, never a panic.
    assert_eq!(idx.line_col(4), (2, 1));
    assert_eq!(idx.line_col(999), (4, 5));
}

#[test]
fn dns_hardening_keys_default_parse_and_are_checked() {
    let cfg = Config::parse(&base(&service("")), Path::new("/")).unwrap();
    assert_eq!(cfg.dns.tcp_max_clients, DEFAULT_TCP_MAX_CLIENTS);
    assert_eq!(cfg.dns.max_forwards, DEFAULT_MAX_FORWARDS);
    assert_eq!(cfg.dns.forward_allow, loopback_nets());
    assert_eq!(cfg.dns.rrl, RrlConfig::default());

    let src = base(&service("")).replace(
        "ttl = 10\n",
        "ttl = 10\ntcp_max_clients = 7\nmax_forwards = 3\n\
         forward_allow = [\"10.1.2.3/16\", \"2001:db8::1\"]\n\
         [dns.rrl]\nrate = 0\nslip = 1\nipv4_prefix = 32\nipv6_prefix = 64\n\
         whitelist = []\ntable_size = 1000\n",
    );
    let cfg = Config::parse(&src, Path::new("/")).unwrap();
    assert_eq!((cfg.dns.tcp_max_clients, cfg.dns.max_forwards), (7, 3));
    assert_eq!(
        cfg.dns.forward_allow,
        vec![
            "10.1.0.0/16".parse::<IpNet>().unwrap(),
            "2001:db8::1/128".parse().unwrap()
        ]
    );
    let rrl = &cfg.dns.rrl;
    assert_eq!(
        (rrl.rate, rrl.slip, rrl.ipv4_prefix, rrl.ipv6_prefix),
        (0, 1, 32, 64)
    );
    assert!(rrl.whitelist.is_empty());
    assert_eq!(rrl.table_size, 1000);

    for (bad, want) in [
        ("tcp_max_clients = 0", "dns.tcp_max_clients: expected 1 to"),
        ("max_forwards = 0", "dns.max_forwards: expected 1 to"),
        (
            "forward_allow = [\"10.0.0.0/33\"]",
            "dns.forward_allow: expected a network",
        ),
        (
            "[dns.rrl]\nipv4_prefix = 33",
            "dns.rrl.ipv4_prefix: expected a prefix length of 1 to 32",
        ),
        (
            "[dns.rrl]\nipv6_prefix = 0",
            "dns.rrl.ipv6_prefix: expected a prefix length of 1 to 128",
        ),
        ("[dns.rrl]\nslip = 101", "dns.rrl.slip: expected 0 to 100"),
        (
            "[dns.rrl]\nwhitelist = [\"me\"]",
            "dns.rrl.whitelist: expected a network",
        ),
        (
            "[dns.rrl]\ntable_size = 3",
            "dns.rrl.table_size: expected 64 to",
        ),
    ] {
        let src = base(&service("")).replace("ttl = 10\n", &format!("ttl = 10\n{bad}\n"));
        let e = one_error(&src);
        assert!(e.message.starts_with(want), "{bad}: {e:?}");
        // Each error points at the value: the line after `ttl`, or after `[dns.rrl]`.
        let last = bad.lines().last().unwrap();
        let line = 4 + bad.lines().count();
        let value = last.find("= ").unwrap() + 2;
        // A list's error points at the bad item.
        let col = value + 1 + usize::from(last[value..].starts_with('['));
        assert_eq!((e.line, e.column), (Some(line), Some(col)), "{bad}: {e:?}");
    }
}

#[test]
fn admin_off_loopback_needs_a_token_file() {
    let with = |admin: &str| base(&format!("\n[admin]\n{admin}\n{}", service("")));
    // Loopback (v4 and v6) needs no token.
    for listen in ["127.0.0.1:9100", "[::1]:9100", "127.0.0.2"] {
        let cfg = Config::parse(
            &with(&format!("listen = \"{listen}\"")),
            Path::new("/etc/summond"),
        )
        .unwrap();
        assert!(cfg.admin.unwrap().token_file.is_none());
    }
    // Anything else without a token: an error at the address.
    let p = one_error(&with("listen = \"0.0.0.0:9100\""));
    assert_eq!((p.line, p.column), (Some(11), Some(10)), "{p}");
    assert!(
        p.message.contains("not a loopback address") && p.message.contains("admin.token_file"),
        "{p}"
    );
    // With one it is accepted; a relative token path is relative to the config's folder.
    let cfg = Config::parse(
        &with("listen = \"10.0.0.1:9100\"\ntoken_file = \"admin.token\""),
        Path::new("/etc/summond"),
    )
    .unwrap();
    let admin = cfg.admin.unwrap();
    assert_eq!(
        admin.token_file.as_deref(),
        Some(Path::new("/etc/summond/admin.token"))
    );
}

#[test]
fn lock_file_must_be_an_absolute_path() {
    let cfg = Config::parse(&base(&service("")), Path::new("/")).unwrap();
    assert_eq!(cfg.daemon.lock_file, Path::new(DEFAULT_LOCK_FILE));
    let src = format!(
        "[daemon]\nlock_file = \"/tmp/x/summond.lock\"\n\n{}",
        base(&service(""))
    );
    let cfg = Config::parse(&src, Path::new("/")).unwrap();
    assert_eq!(cfg.daemon.lock_file, Path::new("/tmp/x/summond.lock"));
    let p = one_error(&format!(
        "[daemon]\nlock_file = \"summond.lock\"\n\n{}",
        base(&service(""))
    ));
    assert_eq!((p.line, p.column), (Some(2), Some(13)), "{p}");
    assert!(
        p.message.contains("daemon.lock_file: expected an absolute"),
        "{p}"
    );
}

#[test]
fn memory_budget_is_mib_of_at_least_two() {
    let with = |v: &str| base(&format!("\n[limits]\nmemory_budget = {v}\n{}", service("")));
    let cfg = Config::parse(&with("512"), Path::new("/")).unwrap();
    assert_eq!(cfg.limits.memory_budget_mib, Some(512));
    let p = one_error(&with("1"));
    assert_eq!((p.line, p.column), (Some(11), Some(17)), "{p}");
    assert!(p.message.contains("limits.memory_budget"), "{p}");
    let p = one_error(&with("\"lots\""));
    assert_eq!(p.line, Some(11), "{p}");
}

#[test]
fn max_instances_beyond_the_host_capacity_is_an_error() {
    let capacity =
        crate::fds::InstanceCapacity::of_host(crate::config::DEFAULT_INSTANCES_PER_PROCESS);
    let cap = capacity.instances;
    if cap >= u64::from(u32::MAX) {
        eprintln!("no host limit bounds the instances here; nothing to exceed");
        return;
    }
    let fits = base(&format!(
        "\n[limits]\nmax_instances = {cap}\n{}",
        service("")
    ));
    assert_eq!(
        Config::parse(&fits, Path::new("/"))
            .unwrap()
            .limits
            .max_instances as u64,
        cap
    );
    let over = base(&format!(
        "\n[limits]\nmax_instances = {}\n{}",
        cap + 1,
        service("")
    ));
    let p = one_error(&over);
    assert_eq!((p.line, p.column), (Some(11), Some(17)), "{p}");
    assert!(
        p.message
            .contains(&format!("host's {}, which holds {cap}", capacity.limit)),
        "{p}"
    );
}

fn with_cluster(keys: &str) -> String {
    base(&format!("\n[cluster]\n{keys}\n{}", service("")))
}

#[test]
fn no_cluster_section_is_standalone() {
    let cfg = Config::parse(&base(&service("")), Path::new("/")).unwrap();
    assert_eq!(cfg.cluster, None);
}

#[test]
fn cluster_section_parsed_with_defaults() {
    let src = with_cluster(
        "node = \"Host-A\"\netcd = [\"http://10.0.0.1:2379\", \"http://10.0.0.2:2379/\"]\nmode = \"route\"\nadvertise = \"10.0.0.11\"",
    );
    let c = Config::parse(&src, Path::new("/"))
        .unwrap()
        .cluster
        .unwrap();
    assert_eq!(c.node, "host-a");
    assert_eq!(c.etcd, ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]);
    assert_eq!(c.lease_ttl, DEFAULT_LEASE_TTL);
    assert_eq!(c.mode, ClusterMode::Route);
    assert_eq!(c.advertise, "10.0.0.11:53".parse().unwrap());

    let src = with_cluster(
        "node = \"a\"\netcd = [\"http://10.0.0.1:2379\"]\nmode = \"arp\"\nuplink = \"eth0\"\nlease_ttl = \"3s\"\nadvertise = \"10.0.0.11:5300\"",
    );
    let c = Config::parse(&src, Path::new("/"))
        .unwrap()
        .cluster
        .unwrap();
    assert_eq!(
        c.mode,
        ClusterMode::Arp {
            uplink: "eth0".into()
        }
    );
    assert_eq!(c.lease_ttl, Duration::from_secs(3));
}

#[test]
fn cluster_errors_point_at_values() {
    // Line 10 is `[cluster]`; its keys follow from line 11.
    let p = one_error(&with_cluster(
        "node = \"a\"\netcd = [\"http://10.0.0.1:2379\"]\nmode = \"arp\"\nadvertise = \"10.0.0.11\"",
    ));
    assert_eq!((p.line, p.column), (Some(13), Some(8)), "{p}");
    assert!(p.message.contains("needs cluster.uplink"), "{p}");

    let p = one_error(&with_cluster(
        "node = \"a\"\netcd = [\"10.0.0.1:2379\"]\nmode = \"route\"\nadvertise = \"10.0.0.11\"",
    ));
    assert_eq!((p.line, p.column), (Some(12), Some(9)), "{p}");
    assert!(
        p.message.contains("cluster.etcd: expected an endpoint"),
        "{p}"
    );

    let p = one_error(&with_cluster(
        "node = \"a\"\netcd = [\"http://h:2379\"]\nmode = \"bgp\"\nadvertise = \"10.0.0.11\"",
    ));
    assert!(p.message.contains("expected \"arp\" or \"route\""), "{p}");

    let p = one_error(&with_cluster(
        "node = \"a\"\netcd = [\"http://h:2379\"]\nmode = \"route\"\nlease_ttl = \"1500ms\"\nadvertise = \"10.0.0.11\"",
    ));
    assert_eq!(p.line, Some(14), "{p}");
    assert!(
        p.message
            .contains("cluster.lease_ttl: expected whole seconds"),
        "{p}"
    );

    let p = one_error(&with_cluster(
        "node = \"a b\"\netcd = [\"http://h:2379\"]\nmode = \"route\"\nadvertise = \"10.0.0.11\"",
    ));
    assert!(p.message.contains("cluster.node"), "{p}");

    // dns.listen is loopback only in `base`: the other hosts could not relay to it.
    let p = one_error(&with_cluster(
        "node = \"a\"\netcd = [\"http://h:2379\"]\nmode = \"route\"",
    ));
    assert!(p.message.contains("cluster.advertise: needed"), "{p}");

    let p = one_error(&with_cluster(
        "node = \"a\"\netcd = [\"http://h:2379\"]\nmode = \"route\"\nuplink = \"eth0\"\nadvertise = \"10.0.0.11\"",
    ));
    assert!(p.message.contains("only used with mode = \"arp\""), "{p}");

    let p = one_error(&with_cluster("node = \"a\"\nmode = \"route\""));
    assert!(p.message.contains("missing field `etcd`"), "{p}");
}

#[test]
fn shipped_example_cluster_section_is_valid_when_uncommented() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/example.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let start = text
        .find("# [cluster]\n")
        .expect("example has a [cluster] block");
    let block: String = text[start..]
        .lines()
        .take_while(|l| l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| l.starts_with('[') || l.contains(" = "))
        .map(|l| format!("{l}\n"))
        .collect();
    let c = Config::parse(&with_cluster_block(&block), Path::new("/"))
        .unwrap()
        .cluster
        .unwrap();
    assert_eq!(c.node, "host-a");
    assert_eq!(c.etcd.len(), 3);
    assert_eq!(c.advertise, "10.0.0.11:53".parse().unwrap());
}

fn with_cluster_block(block: &str) -> String {
    base(&format!("\n{block}\n{}", service("")))
}

fn libvirt_service(table: &str) -> Result<LibvirtService, Vec<Problem>> {
    let cfg = Config::parse(
        &base(&service(&format!(
            "backend = \"libvirt\"\nargs = [\"--port=8080\"]\n[service.libvirt]\n{table}"
        ))),
        Path::new("/"),
    )?;
    match cfg.services.into_iter().next().map(|s| s.backend) {
        Some(ServiceBackend::Libvirt(l)) => Ok(l),
        b => panic!("{b:?}"),
    }
}

#[test]
fn libvirt_tables() {
    use summon_launcher::libvirt::{DomainSource, GuestKind, StopMode as LvStop};
    let s = libvirt_service("uri = 'qemu:///system'\ndomain = 'legacy-vm'").unwrap();
    assert_eq!(
        s.launcher.domain,
        DomainSource::Existing("legacy-vm".into())
    );
    assert_eq!(s.probe_port, 8080, "the port from args");
    let s = libvirt_service("uri = 'xen:///system'\nguest = 'xen-pvh'\nvcpus = 2\nprobe_port = 81")
        .unwrap();
    match s.launcher.domain {
        DomainSource::Generated(g) => assert_eq!((g.kind, g.vcpus), (GuestKind::XenPvh, 2)),
        d => panic!("{d:?}"),
    }
    assert_eq!(s.probe_port, 81);
    let s = libvirt_service("uri = 'qemu:///system'\nstop = 'shutdown'\nshutdown_timeout = '3s'")
        .unwrap();
    assert_eq!(
        s.launcher.stop,
        LvStop::Shutdown {
            timeout: Duration::from_secs(3)
        }
    );
}

#[test]
fn bad_libvirt_tables_name_the_key_at_its_line() {
    let err = |table: &str| {
        let e = libvirt_service(table).expect_err("table should be rejected");
        assert_eq!(e.len(), 1, "{e:?}");
        e.into_iter().next().unwrap()
    };
    // The table's keys start on line 17 of `base(service(..))`.
    for (table, key, line) in [
        ("uri = 'qemu:///system'\nguest = 'lxc'", "libvirt.guest", 18),
        ("uri = 'qemu:///system'\nstop = 'pause'", "libvirt.stop", 18),
        ("uri = 'qemu:///system'\nvcpus = 0", "libvirt.vcpus", 18),
        (
            "uri = 'qemu:///system'\nshutdown_timeout = 'soon'",
            "shutdown_timeout",
            18,
        ),
        ("uri = 'qemu:///system'\nnope = 1", "nope", 18),
        ("uri = ''", "libvirt.uri", 17),
        ("uri = 'qemu:///system'\ndomain = ''", "libvirt.domain", 18),
    ] {
        let p = err(table);
        assert!(p.message.contains(key), "{table}: {p}");
        assert_eq!(p.line, Some(line), "{table}: {p}");
        assert!(p.column.is_some(), "{table}: {p}");
    }
    assert!(err("domain = 'x'").message.contains("uri"));
    let kvm_with_table = base(&service("[service.libvirt]\nuri = 'qemu:///system'"));
    assert!(one_error(&kvm_with_table)
        .message
        .contains("only valid with backend = \"libvirt\""));
}
