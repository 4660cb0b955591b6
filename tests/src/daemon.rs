//! Helpers of the daemon end-to-end tests: a real `summond` process inside a network namespace
//! made for the test, DNS queries (hickory-proto messages over real UDP/TCP sockets) and HTTP
//! requests from inside that namespace, metrics from its admin listener.

pub mod cold;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::netns::NetNs;
use crate::require;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};

pub const DNS: &str = "127.0.0.1:5300";
pub const ADMIN: &str = "127.0.0.1:9100";
pub const ZONE: &str = "svc.test.";

/// KVM, namespaces and the tools a daemon test needs; false = skip (never under CI=true).
pub fn prerequisites(what: &str) -> bool {
    require::kvm_and_netns(what)
        && require::check(what, require::tool("ip"))
        && require::check(what, require::tool("nsenter"))
}

/// The `summond` binary: $SUMMOND_BIN, or built once into the workspace's target dir.
pub fn summond() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("SUMMOND_BIN") {
            return PathBuf::from(p);
        }
        // tests run from target/<profile>/deps/; the binary lives in target/<profile>/.
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
        let bin = profile_dir.join("summond");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "summon-daemon", "--bin", "summond"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        if let Some(target) = profile_dir.parent() {
            cmd.env("CARGO_TARGET_DIR", target);
        }
        let status = cmd.status().expect("run cargo build for summond");
        assert!(status.success(), "building summond failed");
        assert!(bin.exists(), "{} missing after build", bin.display());
        bin
    })
}

pub fn image(name: &str) -> PathBuf {
    crate::image(name)
}

/// A `[[service]]` block for the http unikernel.
pub fn http_service(name: &str, ip: &str, extra: &str) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nimage = \"{}\"\nip = \"{ip}\"\nmemory_mib = 8\nargs = [\"--port=80\", \"--name={name}\"]\n{extra}\n",
        image("http").display()
    )
}

/// A whole config: the DNS/network/admin sections plus `services`.
pub fn config(ttl: u32, upstream: &[&str], limits: &str, services: &str) -> String {
    let upstream = upstream
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[dns]\nlisten = [\"{DNS}\"]\nzone = \"{ZONE}\"\nttl = {ttl}\nupstream = [{upstream}]\n\n[network]\nsubnet = \"10.77.0.0/16\"\ngateway = \"10.77.0.1\"\n\n[admin]\nlisten = \"{ADMIN}\"\n\n{limits}\n\n{services}"
    )
}

/// `config` text with `keys` added to its `[dns]` table (and any `[dns.*]` table after it).
pub fn with_dns(config_text: &str, keys: &str) -> String {
    config_text.replacen("\n\n[network]", &format!("\n{keys}\n\n[network]"), 1)
}

/// A tiny upstream: answers every A query with 192.0.2.53 and counts what it saw.
pub fn upstream(
    ns: &NetNs,
    port: u16,
    stop: Arc<AtomicBool>,
    seen: Arc<AtomicU32>,
) -> std::thread::JoinHandle<()> {
    let sock = ns.run(move || UdpSocket::bind(("127.0.0.1", port)).unwrap());
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            seen.fetch_add(1, Ordering::Relaxed);
            let mut r = Message::new(q.metadata.id, MessageType::Response, q.metadata.op_code);
            r.metadata.recursion_desired = q.metadata.recursion_desired;
            r.metadata.recursion_available = true;
            r.queries = q.queries.clone();
            if let Some(query) = q.queries.first() {
                if query.query_type() == RecordType::A {
                    r.answers.push(Record::from_rdata(
                        query.name().clone(),
                        42,
                        RData::A(A(Ipv4Addr::new(192, 0, 2, 53))),
                    ));
                } else {
                    r.metadata.response_code = ResponseCode::NXDomain;
                }
            }
            let _ = sock.send_to(&r.to_vec().unwrap(), from);
        }
    })
}

/// Tests run several daemons at once, each in its own network namespace but all in the host's
/// file system: each gets its own lock file in its test folder unless the config names one.
pub fn with_own_lock(config_text: &str, dir: &Path) -> String {
    let lock = dir.join("summond.lock");
    if config_text.lines().any(|l| l.trim() == "[daemon]") {
        return config_text.to_string();
    }
    format!(
        "[daemon]\nlock_file = \"{}\"\n\n{config_text}",
        lock.display()
    )
}

/// The folder of the daemon test in namespace `ns` (config, log, lock).
pub fn test_dir(ns: &str) -> PathBuf {
    std::env::temp_dir().join(format!("summond-test-{ns}"))
}

/// The alias summond marks its links with when its lock is the harness's default one for
/// namespace `ns` (see `summon_daemon::hostlock::link_mark`).
pub fn link_mark(ns: &str) -> String {
    format!("summond:{}", test_dir(ns).join("summond.lock").display())
}

/// A running summond in its own namespace. Killed (and the namespace deleted) on drop.
pub struct Daemon {
    pub ns: NetNs,
    child: Option<Child>,
    pub dir: PathBuf,
    pub config: PathBuf,
    log: PathBuf,
    notify: UnixDatagram,
}

impl Daemon {
    pub fn start(tag: &str, config_text: &str) -> Daemon {
        let ns = NetNs::new(tag);
        Self::start_in(ns, config_text)
    }

    pub fn start_in(ns: NetNs, config_text: &str) -> Daemon {
        Self::start_env(ns, config_text, &[])
    }

    pub fn start_env(ns: NetNs, config_text: &str, env: &[(&str, &str)]) -> Daemon {
        Self::start_opts(ns, config_text, env, None)
    }

    /// Like [`Daemon::start_env`]; `stderr` replaces the log file as summond's stderr (then
    /// [`Daemon::log`] is empty).
    pub fn start_opts(
        ns: NetNs,
        config_text: &str,
        env: &[(&str, &str)],
        stderr: Option<Stdio>,
    ) -> Daemon {
        Self::start_full(ns, config_text, env, stderr, &[])
    }

    /// Starts summond through `wrapper` (e.g. `["prlimit", "--nofile=128:128", "--"]`).
    pub fn start_wrapped(
        ns: NetNs,
        config_text: &str,
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> Daemon {
        Self::start_full(ns, config_text, env, None, wrapper)
    }

    fn start_full(
        ns: NetNs,
        config_text: &str,
        env: &[(&str, &str)],
        stderr: Option<Stdio>,
        wrapper: &[&str],
    ) -> Daemon {
        let dir = test_dir(ns.name());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("summond.toml");
        std::fs::write(&config, with_own_lock(config_text, &dir)).unwrap();
        let sock = dir.join("notify.sock");
        let notify = UnixDatagram::bind(&sock).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let log = dir.join("summond.log");
        let stderr = stderr.unwrap_or_else(|| std::fs::File::create(&log).unwrap().into());
        let child = spawn(&ns, &config, &sock, env, stderr, wrapper);
        let mut d = Daemon {
            ns,
            child: Some(child),
            dir,
            config,
            log,
            notify,
        };
        d.wait_notify("READY=1", Duration::from_secs(30));
        d
    }

    /// SIGKILL, as a machine that fails: nothing of summond's exit path runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether summond was started and not killed (it may have exited on its own).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts summond again in the same namespace with the same config (after
    /// [`Daemon::kill9`]); its log is appended to the same file.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart: summond still runs");
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.log)
            .unwrap();
        let sock = self.dir.join("notify.sock");
        self.child = Some(spawn(&self.ns, &self.config, &sock, &[], log.into(), &[]));
        self.wait_notify("READY=1", Duration::from_secs(30));
    }

    /// Waits for an sd_notify datagram containing `what`; returns the datagram.
    pub fn wait_notify(&mut self, what: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.notify.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg.lines().any(|l| l == what) {
                    return msg;
                }
            }
            if let Some(status) = self.try_wait() {
                panic!("summond exited ({status}) before {what}:\n{}", self.log());
            }
        }
        panic!("no {what} from summond within {timeout:?}:\n{}", self.log());
    }

    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// summond and its worker processes (`kvm.instances_per_process`): the processes whose
    /// threads run this daemon's guests.
    pub fn processes(&self) -> Vec<i32> {
        process_family(self.pid())
    }

    /// Service `service`'s vCPU threads (named `vcpu-NAME`, cut to the kernel's 15 bytes) among
    /// [`Daemon::processes`], as (process, thread) ids.
    pub fn vcpu_threads(&self, service: &str) -> Vec<(i32, u32)> {
        let want: String = format!("vcpu-{service}").chars().take(15).collect();
        let mut found = Vec::new();
        for pid in self.processes() {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            found.extend(tasks.flatten().filter_map(|t| {
                let tid: u32 = t.file_name().to_str()?.parse().ok()?;
                let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
                (comm.trim_end() == want).then_some((pid, tid))
            }));
        }
        found
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.terminate_within(Duration::from_secs(20))
    }

    /// SIGTERM; the exit status, which must come within `bound`.
    pub fn terminate_within(&mut self, bound: Duration) -> std::process::ExitStatus {
        let t = Instant::now();
        self.signal(libc::SIGTERM);
        loop {
            if let Some(s) = self.try_wait() {
                self.child = None;
                return s;
            }
            assert!(
                t.elapsed() < bound,
                "summond did not exit within {bound:?} of SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log without ANSI colour sequences (tracing colours field names).
    pub fn plain_log(&self) -> String {
        plain(&self.log())
    }

    /// Replaces the config file and sends SIGHUP; waits for the daemon's READY after reload.
    pub fn reload(&mut self, config_text: &str) {
        std::fs::write(&self.config, with_own_lock(config_text, &self.dir)).unwrap();
        self.signal(libc::SIGHUP);
        self.wait_notify("RELOADING=1", Duration::from_secs(10));
        self.wait_notify("READY=1", Duration::from_secs(30));
    }

    pub fn query(&self, name: &str, qtype: RecordType) -> Message {
        let name = name.to_string();
        self.ns
            .run(move || query_udp(DNS.parse().unwrap(), &name, qtype).expect("DNS query"))
    }

    /// Summons http service `name` through DNS (its A record must be `ip`) and fetches its page,
    /// which must name it.
    pub fn summon_http(&self, name: &str, ip: Ipv4Addr) {
        let m = self.query(&format!("{name}.{ZONE}"), RecordType::A);
        assert_eq!(a_records(&m).first().map(|r| r.0), Some(ip), "{m:?}");
        let addr = SocketAddr::from((ip, 80));
        let page = self.ns.run(move || http_get(addr, "/")).expect("GET /");
        assert!(page.contains(name), "{page}");
    }

    pub fn query_tcp(&self, name: &str, qtype: RecordType) -> Message {
        let name = name.to_string();
        self.ns
            .run(move || query_tcp(DNS.parse().unwrap(), &name, qtype).expect("DNS query (TCP)"))
    }

    pub fn admin(&self, path: &str) -> String {
        let path = path.to_string();
        self.ns
            .run(move || http_get(ADMIN.parse().unwrap(), &path).expect("admin GET"))
    }

    /// Sum of all samples of a metric whose label set contains every `labels` pair.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&self.admin("/metrics"), name, labels)
    }

    /// `ip -n NS ARGS` output.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .arg("-n")
            .arg(self.ns.name())
            .args(args)
            .output()
            .expect("run ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The threads of summond and its workers (`PID/TID`) that have the tap `name` open, from
    /// the tun driver's `iff:` line in their fdinfo. Per thread, because a vCPU thread keeps
    /// its descriptors in an fd table of its own.
    pub fn tap_holders(&self, name: &str) -> Vec<String> {
        let wanted = format!("iff:\t{name}\n");
        let mut out = Vec::new();
        for pid in process_family(self.pid()) {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for t in tasks.flatten() {
                let Ok(fds) = std::fs::read_dir(t.path().join("fdinfo")) else {
                    continue;
                };
                let holds = fds.flatten().any(|f| {
                    std::fs::read_to_string(f.path()).is_ok_and(|info| info.contains(&wanted))
                });
                if holds {
                    out.push(format!("{pid}/{}", t.file_name().to_string_lossy()));
                }
            }
        }
        out
    }

    /// Names of the namespace's interfaces starting with "sm-", up or down.
    pub fn taps(&self) -> Vec<String> {
        self.sm_links(None)
    }

    /// The `sm-` links that are up: the taps of live instances.
    pub fn live_taps(&self) -> Vec<String> {
        self.sm_links(Some(true))
    }

    /// The `sm-` links that are down: spare taps kept for their service's next start
    /// (`network.spare_taps`).
    pub fn spare_taps(&self) -> Vec<String> {
        self.sm_links(Some(false))
    }

    /// The `sm-` links, those whose administrative state is up (or down) only with `up`.
    fn sm_links(&self, up: Option<bool>) -> Vec<String> {
        self.ip(&["-o", "link", "show"])
            .lines()
            .filter(|l| {
                let flags = l.split('<').nth(1).and_then(|f| f.split('>').next());
                up.is_none_or(|up| flags.is_some_and(|f| f.split(',').any(|x| x == "UP")) == up)
            })
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.starts_with("sm-"))
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            if std::thread::panicking() {
                eprintln!("--- summond log ---\n{}", self.log());
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Spawns summond in `ns` with `config`, telling `sock` its sd_notify state.
fn spawn(
    ns: &NetNs,
    config: &Path,
    sock: &Path,
    env: &[(&str, &str)],
    stderr: Stdio,
    wrapper: &[&str],
) -> Child {
    let summond = summond().to_str().unwrap();
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = ns.command_net_only(program);
            c.args(args).arg(summond);
            c
        }
        None => ns.command_net_only(summond),
    };
    cmd.arg("--config")
        .arg(config)
        .env("NOTIFY_SOCKET", sock)
        .env(
            "SUMMOND_LOG",
            "info,summon_daemon=debug,hickory_server=warn,netlink_packet_route=error",
        )
        // After the default, so that a test's own SUMMOND_LOG wins.
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn summond")
}

pub fn build_query(name: &str, qtype: RecordType, id: u16) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_str(name).unwrap(), qtype));
    let mut e = Edns::new();
    e.set_max_payload(1232);
    m.set_edns(e);
    m.to_vec().unwrap()
}

pub fn query_udp(server: SocketAddr, name: &str, qtype: RecordType) -> std::io::Result<Message> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let id = rand_id();
    s.send_to(&build_query(name, qtype, id), server)?;
    let mut buf = [0u8; 4096];
    loop {
        let (n, _) = s.recv_from(&mut buf)?;
        let m = Message::from_vec(&buf[..n]).map_err(std::io::Error::other)?;
        if m.metadata.id == id {
            return Ok(m);
        }
    }
}

pub fn query_tcp(server: SocketAddr, name: &str, qtype: RecordType) -> std::io::Result<Message> {
    let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let id = rand_id();
    let q = build_query(name, qtype, id);
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    s.write_all(&framed)?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf)?;
    Message::from_vec(&buf).map_err(std::io::Error::other)
}

fn rand_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static N: AtomicU16 = AtomicU16::new(0);
    (std::process::id() as u16) ^ N.fetch_add(7919, Ordering::Relaxed)
}

/// The A addresses of an answer.
pub fn a_records(m: &Message) -> Vec<(Ipv4Addr, u32)> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some((a.0, r.ttl)),
            _ => None,
        })
        .collect()
}

/// A one-shot HTTP/1.1 GET; returns the body of a 200 response.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("bad response {text:?}")))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("status: {head}")));
    }
    Ok(body.to_string())
}

/// A POST to the admin listener (e.g. `/v1/instances/NAME/stop`); returns the body.
pub fn admin_post(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

/// Sums the samples of `name` whose labels include all of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, lbls) = match series.split_once('{') {
            Some((m, l)) => (m, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| lbls.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
        {
            sum += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    sum
}

/// A field of /proc/PID/status (e.g. `CapEff`), as the kernel prints it.
pub fn status_field(pid: i32, field: &str) -> String {
    status_field_of(&format!("/proc/{pid}"), field)
}

/// A field of `DIR/status`, DIR a process's or a thread's /proc directory.
pub fn status_field_of(dir: &str, field: &str) -> String {
    let status = std::fs::read_to_string(format!("{dir}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {field} in {dir}/status"))
}

/// `pid` and its descendants, from `/proc/PID/task/*/children`.
pub fn process_family(pid: i32) -> Vec<i32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        i += 1;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            out.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<i32>().ok()),
            );
        }
    }
    out
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// `text` without ANSI colour sequences.
pub fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}
