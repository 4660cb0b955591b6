//! The unikernels (`unikernels/target/hvt/{hello,http}.hvt`) booted by the embedded KVM
//! launcher on real /dev/kvm; `http` answers real HTTP from the host side of a tap in a network
//! namespace made for each test.

use std::net::SocketAddr;
use std::time::Duration;

use summon_launcher::InstanceEvent;
use summon_tests::guest::{self, Guest, GUEST_MAC};
use summon_tests::http_client::Client;
use summon_tests::netns::NetNs;
use summon_tests::{image, require};

const END: Duration = Duration::from_secs(20);
const GUEST: &str = "10.0.0.2";

fn guest_addr() -> SocketAddr {
    format!("{GUEST}:80").parse().expect("literal address")
}

/// A namespace with tap0 (10.0.0.1/24) and an `http` guest at 10.0.0.2 on it.
struct HttpGuest {
    guest: Guest,
    ns: NetNs,
}

impl HttpGuest {
    fn start(tag: &str, extra: &[&str]) -> HttpGuest {
        let ns = NetNs::new(tag);
        ns.add_tap("tap0", "10.0.0.1/24");
        ns.add_neighbour("tap0", GUEST, GUEST_MAC);
        let mut args = vec!["--ipv4=10.0.0.2/24", "--ipv4-gateway=10.0.0.1"];
        args.extend_from_slice(extra);
        let guest = guest::start_on_tap(&ns, "tap0", tag, "http", &args);
        guest
            .events
            .wait_for(END, |e| *e == InstanceEvent::NetReady)
            .unwrap_or_else(|| {
                panic!(
                    "http never polled its NIC; console: {}",
                    guest.events.console()
                )
            });
        HttpGuest { guest, ns }
    }

    /// Runs `f` in the namespace with a fresh connection to the guest.
    fn with_client<T: Send>(&self, f: impl FnOnce(Client) -> T + Send) -> T {
        self.ns
            .run(|| f(Client::connect(guest_addr()).expect("connect to the guest")))
    }
}

#[test]
fn images_are_built_at_the_documented_path_and_small() {
    for name in ["hello", "http"] {
        let path = image(name);
        let meta =
            std::fs::metadata(&path).unwrap_or_else(|e| panic!("{} missing: {e}", path.display()));
        assert!(path.ends_with(format!("unikernels/target/hvt/{name}.hvt")));
        assert!(
            meta.len() <= 256 * 1024,
            "{name}.hvt is {} bytes (> 256 KiB)",
            meta.len()
        );
        // The launcher's own parser accepts it: hvt ABI note, manifest, W^X segments.
        summon_launcher::kvm::ElfImage::from_file(&path)
            .unwrap_or_else(|e| panic!("{name}.hvt rejected: {e}"));
    }
}

/// The ring-0 part of the boot path, from the disassembly: `_start` up to `rt_entry_end`.
fn ring0_entry(name: &str) -> Vec<String> {
    let out = std::process::Command::new("objdump")
        .args(["-d", "--no-show-raw-insn", "-j", ".text"])
        .arg(image(name))
        .output()
        .expect("run objdump");
    assert!(
        out.status.success(),
        "objdump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text.find("<_start>:").expect("_start in the image");
    let end = text
        .find("<rt_entry_end>:")
        .expect("rt_entry_end in the image");
    text[start..end]
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(":\t").map(|(_, insn)| insn.trim().to_string()))
        .filter(|insn| !insn.is_empty())
        .collect()
}

#[test]
fn ring0_boot_path_is_a_dozen_straight_line_instructions() {
    if !require::check("objdump", require::tool("objdump")) {
        return;
    }
    for name in ["hello", "http"] {
        let insns = ring0_entry(name);
        println!("{name}: {} ring-0 instructions: {insns:#?}", insns.len());
        assert!(insns.len() <= 16, "{name}: {insns:#?}");
        assert_eq!(insns.last().map(String::as_str), Some("iretq"), "{name}");
        // Straight line: no jumps, calls, loops or string instructions before the iretq.
        assert!(
            insns.iter().all(|i| !i.starts_with('j')
                && !i.starts_with("call")
                && !i.starts_with("loop")
                && !i.starts_with("rep")),
            "{name}: {insns:#?}"
        );
    }
}

#[test]
fn hello_prints_its_command_line_and_exits_0() {
    if !require::check("KVM", require::kvm()) {
        return;
    }
    let args = ["first", "second", "word-3"];
    let guest = Guest::start(guest::spec("hello", &image("hello"), &args, None)).expect("start");
    assert_eq!(guest.events.wait_end(END), Ok(0));
    let out = guest.events.console();
    assert!(
        out.contains("Hello from Summon's rt on hvt!"),
        "console: {out}"
    );
    assert!(
        out.contains("command line: \"first second word-3\""),
        "console: {out}"
    );
    assert!(out.contains("since the epoch"), "console: {out}");
}

#[test]
fn hello_refuses_an_unknown_option_with_halt_1() {
    if !require::check("KVM", require::kvm()) {
        return;
    }
    let args = ["--frobnicate=yes"];
    let guest = Guest::start(guest::spec("hello", &image("hello"), &args, None)).expect("start");
    assert_eq!(guest.events.wait_end(END), Ok(1));
    let out = guest.events.console();
    assert!(
        out.contains("error: --frobnicate: unknown option"),
        "console: {out}"
    );
    assert!(!out.contains("Hello"), "console: {out}");
}

#[test]
fn hello_panic_prints_the_message_and_halts_255() {
    if !require::check("KVM", require::kvm()) {
        return;
    }
    let guest =
        Guest::start(guest::spec("hello", &image("hello"), &["--panic"], None)).expect("start");
    assert_eq!(guest.events.wait_end(END), Ok(255));
    let out = guest.events.console();
    assert!(
        out.contains("panic: panicked at hello/src/main.rs"),
        "console: {out}"
    );
    assert!(out.contains("asked to panic by --panic"), "console: {out}");
}

#[test]
fn null_pointer_read_is_reported_as_a_page_fault_and_halts_255() {
    if !require::check("KVM", require::kvm()) {
        return;
    }
    let args = ["--fault=null"];
    let guest = Guest::start(guest::spec("hello", &image("hello"), &args, None)).expect("start");
    assert_eq!(guest.events.wait_end(END), Ok(255));
    let out = guest.events.console();
    assert!(
        out.contains("rt: fatal exception #PF page fault"),
        "console: {out}"
    );
    // Raised in ring 3 (CS 0x23), at address 0 (the unmapped low guard).
    assert!(
        out.contains("cs 0x23") && out.contains("address 0x0"),
        "console: {out}"
    );
}

#[test]
fn http_refuses_bad_network_arguments_with_halt_1() {
    if !require::kvm_and_netns("KVM and network namespaces") {
        return;
    }
    let cases = [
        ("--ipv4=10.0.0.300/24", "error: --ipv4: not an IPv4 address"),
        ("--ipv4=10.0.0.2", "error: --ipv4: expected ADDRESS/PREFIX"),
        (
            "--ipv4=10.0.0.2/33",
            "error: --ipv4: prefix length must be 0-32",
        ),
        ("--port=http", "error: --port: not a port number"),
        ("--name=<script>", "error: --name:"),
        ("--verbose", "error: --verbose: unknown option"),
        ("stray", "error: stray: unexpected argument"),
    ];
    let ns = NetNs::new("uni-badarg");
    for (i, (arg, message)) in cases.into_iter().enumerate() {
        // A tap per guest: a halted guest's fd is released by its own thread, asynchronously.
        let dev = format!("tap{i}");
        ns.add_tap(&dev, &format!("10.0.{i}.1/24"));
        let guest = guest::start_on_tap(&ns, &dev, "http", "http", &[arg]);
        assert_eq!(guest.events.wait_end(END), Ok(1), "{arg}");
        let out = guest.events.console();
        assert!(out.contains(message), "{arg}: console: {out}");
    }
}

#[test]
fn http_serves_page_healthz_count_and_404_over_one_keep_alive_connection() {
    if !require::kvm_and_netns("KVM and network namespaces") {
        return;
    }
    let h = HttpGuest::start("uni-http", &["--name=alpha"]);
    h.with_client(|mut c| {
        let page = c.get("/").expect("GET /");
        assert_eq!(page.status, 200);
        assert_eq!(
            page.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        assert!(page.body.contains("<h1>alpha</h1>"), "{}", page.body);
        assert!(page.body.contains("requests served: 1"), "{}", page.body);

        let health = c.get("/healthz").expect("GET /healthz");
        assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));

        let missing = c.get("/no/such/page").expect("GET 404");
        assert_eq!(missing.status, 404);

        // Several more requests on the same connection, the counter following along.
        for n in 4..=10 {
            let count = c.get("/count").expect("GET /count");
            assert_eq!(count.status, 200);
            assert_eq!(count.body.trim(), n.to_string());
            assert_eq!(count.header("connection"), Some("keep-alive"));
        }
        let page = c.get("/?x=1").expect("GET / again");
        assert!(page.body.contains("requests served: 11"), "{}", page.body);
    });
}

#[test]
fn http_answers_pipelined_requests_in_order() {
    if !require::kvm_and_netns("KVM and network namespaces") {
        return;
    }
    let h = HttpGuest::start("uni-pipe", &[]);
    h.with_client(|mut c| {
        let mut burst = Vec::new();
        for path in ["/healthz", "/count", "/missing", "/count"] {
            burst.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        }
        c.send(&burst).expect("send burst");
        let statuses: Vec<_> = (0..4)
            .map(|_| c.read_response().expect("response"))
            .map(|r| (r.status, r.body))
            .collect();
        assert_eq!(statuses[0], (200, "ok\n".to_string()));
        assert_eq!(statuses[1], (200, "2\n".to_string()));
        assert_eq!(statuses[2].0, 404);
        assert_eq!(statuses[3], (200, "4\n".to_string()));
    });
}

#[test]
fn http_serves_parallel_clients() {
    if !require::kvm_and_netns("KVM and network namespaces") {
        return;
    }
    let h = HttpGuest::start("uni-par", &["--name=par"]);
    const CLIENTS: usize = 12;
    const EACH: usize = 20;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            h.ns.spawn(|| {
                let mut c = Client::connect(guest_addr()).expect("connect");
                for _ in 0..EACH {
                    let r = c.get("/").expect("GET /");
                    assert_eq!(r.status, 200);
                    assert!(r.body.contains("<h1>par</h1>"));
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client thread");
    }
    let total = h.with_client(|mut c| c.get("/count").expect("count").body);
    assert_eq!(total.trim(), (CLIENTS * EACH + 1).to_string());
}

/// More connections open at once than the server keeps listening ahead (16): each one
/// connected makes it listen on another socket, up to its capacity (64 unless memory is small).
#[test]
fn http_holds_more_open_connections_than_it_listens_for_ahead() {
    if !require::kvm_and_netns("KVM and network namespaces") {
        return;
    }
    let h = HttpGuest::start("uni-many", &["--name=many"]);
    const OPEN: usize = 40;
    let done = h.ns.run(|| {
        let mut open = Vec::new();
        for i in 0..OPEN {
            let mut c =
                Client::connect(guest_addr()).unwrap_or_else(|e| panic!("connection {i}: {e}"));
            let r = c
                .get("/")
                .unwrap_or_else(|e| panic!("GET on connection {i}: {e}"));
            assert_eq!(r.status, 200);
            open.push(c);
        }
        // All still open and served again, in reverse order.
        for (i, c) in open.iter_mut().enumerate().rev() {
            let r = c
                .get("/healthz")
                .unwrap_or_else(|e| panic!("second GET on {i}: {e}"));
            assert_eq!(r.status, 200);
        }
        open.len()
    });
    assert_eq!(done, OPEN);
    let total = h.with_client(|mut c| c.get("/count").expect("count").body);
    assert_eq!(total.trim(), (2 * OPEN + 1).to_string());
}

#[test]
fn http_answers_malformed_requests_400_and_keeps_serving() {
    if !require::kvm_and_netns("KVM and network namespaces") {
        return;
    }
    let h = HttpGuest::start("uni-bad", &[]);
    let bad: [&[u8]; 6] = [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\nHost: t\r\n\r\n",
        b"GET noslash HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 12x\r\n\r\n",
    ];
    for request in bad {
        h.with_client(|mut c| {
            c.send(request).expect("send");
            let r = c.read_response().expect("a response to a bad request");
            assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(request));
            assert_eq!(r.header("connection"), Some("close"));
            assert!(c.closed_by_peer(), "connection left open after 400");
        });
    }
    // Binary junk, then a client that behaves: served as usual.
    h.with_client(|mut c| {
        c.send(&[0u8, 0xff, 0x13, 0x37, b'\r', b'\n', b'\r', b'\n'])
            .expect("send");
        assert_eq!(c.read_response().expect("response").status, 400);
    });
    h.with_client(|mut c| {
        let r = c.get("/healthz").expect("GET after bad clients");
        assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    });
    assert_eq!(
        h.guest.instance.state(),
        summon_launcher::InstanceState::Running
    );
}

#[test]
fn http_refuses_requests_over_the_size_limit() {
    if !require::kvm_and_netns("KVM and network namespaces") {
        return;
    }
    let h = HttpGuest::start("uni-big", &[]);
    // A head that never ends within 8 KiB: 431.
    h.with_client(|mut c| {
        let mut req = b"GET / HTTP/1.1\r\nHost: t\r\n".to_vec();
        while req.len() < 10_000 {
            req.extend_from_slice(
                b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            );
        }
        // The server may close before reading everything; a failed write is fine then.
        let _ = c.send(&req);
        let r = c.read_response().expect("431 response");
        assert_eq!(r.status, 431);
    });
    // A body announced larger than the limit: 413 without waiting for it.
    h.with_client(|mut c| {
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n")
            .expect("send");
        let r = c.read_response().expect("413 response");
        assert_eq!(r.status, 413);
    });
    // A request just under the limit still works.
    h.with_client(|mut c| {
        let mut req = b"GET /healthz HTTP/1.1\r\nHost: t\r\n".to_vec();
        while req.len() < 7_000 {
            req.extend_from_slice(
                b"X-Filler: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\n",
            );
        }
        req.extend_from_slice(b"\r\n");
        c.send(&req).expect("send");
        let r = c.read_response().expect("response");
        assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    });
}

#[test]
fn http_head_other_methods_and_http10_connection_semantics() {
    if !require::kvm_and_netns("KVM and network namespaces") {
        return;
    }
    let h = HttpGuest::start("uni-meth", &[]);
    h.with_client(|mut c| {
        c.send(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n").expect("send");
        // A HEAD response announces the page's length but carries no body: the next response
        // on the connection must start right after its head.
        let head = c.read_response_head().expect("HEAD response");
        assert_eq!(head.status, 200);
        assert!(head.header("content-length").is_some_and(|l| l != "0"));
        let r = c.get("/healthz").expect("GET after HEAD");
        assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));

        c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
            .expect("send");
        let r = c.read_response().expect("405");
        assert_eq!(r.status, 405);
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
        // The body was consumed, the connection is still usable.
        let r = c.get("/healthz").expect("GET after POST");
        assert_eq!(r.status, 200);
    });
    // HTTP/1.0 closes by default, stays open with keep-alive; unknown versions get 505.
    h.with_client(|mut c| {
        c.send(b"GET /healthz HTTP/1.0\r\n\r\n").expect("send");
        let r = c.read_response().expect("1.0 response");
        assert_eq!((r.status, r.header("connection")), (200, Some("close")));
        assert!(c.closed_by_peer());
    });
    h.with_client(|mut c| {
        c.send(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .expect("send");
        let r = c.read_response().expect("1.0 keep-alive response");
        assert_eq!(r.header("connection"), Some("keep-alive"));
        assert_eq!(c.get("/healthz").expect("second request").status, 200);
    });
    h.with_client(|mut c| {
        c.send(b"GET / HTTP/2.0\r\nHost: t\r\n\r\n").expect("send");
        assert_eq!(c.read_response().expect("505").status, 505);
    });
}

#[test]
fn http_serves_curl_in_the_namespace() {
    if !require::kvm_and_netns("KVM and network namespaces")
        || !require::check("curl", require::tool("curl"))
    {
        return;
    }
    let h = HttpGuest::start("uni-curl", &["--name=curled", "--port=8080"]);
    let out =
        h.ns.command("curl")
            .args(["-sS", "-m", "10", "--fail"])
            .args(["http://10.0.0.2:8080/", "http://10.0.0.2:8080/count"])
            .output()
            .expect("run curl");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(body.contains("<h1>curled</h1>"), "{body}");
    assert!(body.ends_with("2\n"), "{body}");
}
