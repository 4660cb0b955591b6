//! The Debian package: built by `scripts/package`, its metadata and contents read back with
//! `dpkg-deb`, checked by lintian, installed with dpkg into a throwaway root (the maintainer
//! scripts run against that root through DPKG_ROOT, never against the host), the installed
//! `summond check-config` run on the installed configuration inside a chroot of that root,
//! `systemd-analyze verify` run on the installed unit, then upgraded in place (an edited
//! conffile survives) and purged.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use summon_tests::require;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run(cmd).stdout).into_owned()
}

/// A temporary directory removed on drop (unmounted first by the namespaces that used it).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("summon-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs scripts/package into `out`; returns the .deb.
fn build_deb(out: &Path) -> PathBuf {
    let mut cmd = Command::new(repo().join("scripts/package"));
    cmd.arg(out);
    // The package is built from the release profile whatever profile runs this test.
    for key in ["CARGO_TARGET_DIR", "RUSTFLAGS"] {
        cmd.env_remove(key);
    }
    run(&mut cmd);
    let debs: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(
        debs.len(),
        1,
        "one .deb expected in {}: {debs:?}",
        out.display()
    );
    debs[0].clone()
}

/// dpkg against the throwaway root, maintainer scripts run outside a chroot with
/// DPKG_ROOT=root (the scripts honour it). Dependencies are not in that root's database.
fn dpkg(root: &Path, args: &[&str]) -> String {
    stdout(
        Command::new("dpkg")
            .arg(format!("--root={}", root.display()))
            .args([
                "--force-script-chrootless",
                "--force-depends",
                "--force-confold",
            ])
            .args(args),
    )
}

/// An empty dpkg database in `root`, plus the /etc systemd-sysusers writes to.
fn make_root(root: &Path) {
    for dir in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/log",
        "etc",
    ] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
}

/// Runs `program args` chrooted into `root`, with the host's shared libraries bind-mounted
/// read-only (and /dev/kvm when `kvm`), in a private mount namespace that disappears with the
/// command.
fn in_chroot(root: &Path, kvm: bool, program: &str, args: &[&str]) -> Output {
    let mut script = String::from("set -e\n");
    for lib in [
        "/lib64",
        "/lib/x86_64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
    ] {
        if Path::new(lib).is_dir() {
            script.push_str(&format!(
                "mkdir -p \"$ROOT{lib}\" && mount --bind -o ro {lib} \"$ROOT{lib}\"\n"
            ));
        }
    }
    if kvm {
        script.push_str(
            "mkdir -p \"$ROOT/dev\" && touch \"$ROOT/dev/kvm\" && mount --bind /dev/kvm \"$ROOT/dev/kvm\"\n",
        );
    }
    script.push_str("exec chroot \"$ROOT\" \"$@\"\n");
    Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
        ])
        .arg(program)
        .args(args)
        .env("ROOT", root)
        .output()
        .expect("run unshare")
}

fn prerequisites() -> bool {
    require::check(
        "package test",
        require::root()
            .and_then(|()| require::tool("dpkg"))
            .and_then(|()| require::tool("dpkg-deb"))
            .and_then(|()| require::tool("lintian"))
            .and_then(|()| require::tool("systemd-analyze"))
            .and_then(|()| require::tool("systemd-sysusers"))
            .and_then(|()| require::tool("unshare")),
    )
}

#[test]
fn the_deb_builds_installs_into_a_throwaway_root_and_its_summond_checks_its_config() {
    if !prerequisites() {
        return;
    }
    let tmp = TempDir::new("deb");
    let out = tmp.0.join("out");
    let deb = build_deb(&out);
    let deb_s = deb.to_str().unwrap();

    // Metadata.
    let info = stdout(Command::new("dpkg-deb").args(["-I", deb_s]));
    for needed in [
        "Package: summon\n",
        "Architecture: amd64\n",
        "Section: net\n",
        "Maintainer: ",
        " postinst",
        " prerm",
        " postrm",
        " conffiles",
    ] {
        assert!(
            info.contains(needed),
            "dpkg-deb -I lacks {needed:?}:\n{info}"
        );
    }
    let depends = info
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("Depends: "))
        .unwrap_or_else(|| panic!("no Depends:\n{info}"));
    for dep in ["libc6", "systemd", "init-system-helpers"] {
        assert!(depends.contains(dep), "Depends lacks {dep}: {depends}");
    }
    let conffiles = stdout(Command::new("dpkg-deb").args(["-I", deb_s, "conffiles"]));
    assert_eq!(conffiles.trim(), "/etc/summon/summond.toml");

    // Contents.
    let contents = stdout(Command::new("dpkg-deb").args(["-c", deb_s]));
    for path in [
        "./usr/bin/summond",
        "./usr/bin/summon-run",
        "./lib/systemd/system/summond.service",
        "./etc/summon/summond.toml",
        "./usr/share/summon/images/http.hvt",
        "./usr/share/summon/images/hello.hvt",
        "./usr/share/man/man8/summond.8.gz",
        "./usr/share/man/man5/summond.toml.5.gz",
        "./usr/share/man/man1/summon-run.1.gz",
        "./usr/lib/sysusers.d/summon.conf",
        "./usr/share/doc/summon/copyright",
        "./usr/share/doc/summon/changelog.Debian.gz",
        "./usr/share/doc/summon/README.md",
        "./usr/share/doc/summon/operations.md",
        "./usr/share/doc/summon/config.md",
        "./usr/share/doc/summon/examples/example.toml",
        "./usr/share/doc/summon/examples/prometheus.yml",
        "./usr/share/doc/summon/examples/summon-rules.yml",
        "./usr/share/doc/summon/examples/summon-rules.test.yml",
        "./usr/share/doc/summon/examples/grafana-dashboard.json",
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(path)),
            "the package lacks {path}:\n{contents}"
        );
    }
    // The binaries are executable by everyone, the rest is not executable.
    for line in contents.lines() {
        let (mode, path) = (&line[..10], line.rsplit(' ').next().unwrap());
        if mode.starts_with('-') {
            let exec = path.starts_with("./usr/bin/");
            assert_eq!(mode.contains('x'), exec, "mode of {path}: {mode}");
        }
    }

    // Lintian: no errors and no warnings (overrides carry their reasons in the package).
    let lintian = Command::new("lintian")
        .args([
            "--fail-on",
            "error,warning",
            "--no-tag-display-limit",
            deb_s,
        ])
        .output()
        .expect("run lintian");
    let report = String::from_utf8_lossy(&lintian.stdout).into_owned()
        + &String::from_utf8_lossy(&lintian.stderr);
    assert!(lintian.status.success(), "lintian:\n{report}");
    assert!(
        !report
            .lines()
            .any(|l| l.starts_with("E: ") || l.starts_with("W: ")),
        "lintian:\n{report}"
    );

    // Install into a throwaway root.
    let root = tmp.0.join("root");
    make_root(&root);
    dpkg(&root, &["-i", deb_s]);
    let status = stdout(
        Command::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                root.join("var/lib/dpkg").display()
            ))
            .args(["-W", "-f=${Status} ${Conffiles}", "summon"]),
    );
    assert!(
        status.starts_with("install ok installed") && status.contains("/etc/summon/summond.toml"),
        "{status}"
    );
    // postinst: the kvm group the unit joins, and the unit enabled (in the root only).
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap();
    assert!(group.lines().any(|l| l.starts_with("kvm:")), "{group}");
    let wants = root.join("etc/systemd/system/multi-user.target.wants/summond.service");
    assert_eq!(
        std::fs::read_link(&wants).expect("summond.service enabled"),
        Path::new("/lib/systemd/system/summond.service")
    );

    // The installed summond accepts the installed configuration (which names the installed
    // images), and refuses it without them.
    let check = in_chroot(
        &root,
        false,
        "/usr/bin/summond",
        &["check-config", "/etc/summon/summond.toml"],
    );
    let check_out = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "check-config:\n{check_out}");
    assert!(
        check_out.contains("/etc/summon/summond.toml: ok (2 services)"),
        "{check_out}"
    );
    let image = root.join("usr/share/summon/images/http.hvt");
    let aside = root.join("usr/share/summon/images/http.hvt.aside");
    std::fs::rename(&image, &aside).unwrap();
    let check = in_chroot(
        &root,
        false,
        "/usr/bin/summond",
        &["check-config", "/etc/summon/summond.toml"],
    );
    std::fs::rename(&aside, &image).unwrap();
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(
        !check.status.success() && stderr.contains("http.hvt"),
        "check-config without the image: {stderr}"
    );

    // summon-run(1) is written by hand: it describes every flag of the installed summon-run's
    // usage line.
    let usage = in_chroot(&root, false, "/usr/bin/summon-run", &[]);
    let usage = String::from_utf8_lossy(&usage.stderr).into_owned();
    let flags: Vec<&str> = usage
        .split(|c: char| c.is_whitespace() || c == '[' || c == ']')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.split(['=', ':']).next().unwrap())
        .collect();
    assert!(flags.len() >= 5, "usage: {usage}");
    let page = stdout(
        Command::new("gzip")
            .args(["-dc"])
            .arg(root.join("usr/share/man/man1/summon-run.1.gz")),
    );
    for flag in flags {
        let roff = format!("\\fB{}", flag.replace('-', "\\-"));
        assert!(
            page.contains(&roff),
            "summon-run(1) does not describe {flag}"
        );
    }

    // The installed summon-run boots the installed hello image (it prints and exits 0).
    if require::kvm().is_ok() {
        let hello = in_chroot(
            &root,
            true,
            "/usr/bin/summon-run",
            &["--mem=8", "/usr/share/summon/images/hello.hvt"],
        );
        let out = String::from_utf8_lossy(&hello.stdout).into_owned()
            + &String::from_utf8_lossy(&hello.stderr);
        assert!(hello.status.success(), "summon-run hello.hvt:\n{out}");
        assert!(out.contains("Hello"), "{out}");
    }

    // systemd verifies the installed unit, its ExecStart= pointed at the installed binary
    // (systemd-analyze runs on the host, whose /usr/bin has no summond); the man pages its
    // Documentation= names are in the package and render without warnings.
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/summond.service")).unwrap();
    let installed = root.join("usr/bin/summond");
    let unit = unit.replace("/usr/bin/summond", installed.to_str().unwrap());
    let unit_copy = tmp.0.join("summond.service");
    std::fs::write(&unit_copy, &unit).unwrap();
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit_copy)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
    for (doc, page) in [
        ("man:summond(8)", "usr/share/man/man8/summond.8.gz"),
        (
            "man:summond.toml(5)",
            "usr/share/man/man5/summond.toml.5.gz",
        ),
    ] {
        assert!(unit.contains(doc), "Documentation= lacks {doc}");
        if require::tool("man").is_ok() {
            let out = run(Command::new("man")
                .args(["--warnings", "-l"])
                .arg(root.join(page))
                .env("MANWIDTH", "80"));
            let warnings = String::from_utf8_lossy(&out.stderr);
            assert!(warnings.trim().is_empty(), "{page}: {warnings}");
            assert!(String::from_utf8_lossy(&out.stdout).contains("NAME"));
        }
    }

    // Upgrade in place: an edited conffile is kept, the binaries are replaced.
    let conf = root.join("etc/summon/summond.toml");
    let edited = std::fs::read_to_string(&conf).unwrap() + "# edited by the admin\n";
    std::fs::write(&conf, &edited).unwrap();
    std::fs::write(root.join("usr/bin/summond"), "stale").unwrap();
    dpkg(&root, &["-i", deb_s]);
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), edited);
    assert!(
        std::fs::metadata(root.join("usr/bin/summond"))
            .unwrap()
            .len()
            > 1000
    );
    assert!(
        wants.symlink_metadata().is_ok(),
        "still enabled after upgrade"
    );

    // Purge: files, the conffile and the enablement are gone.
    dpkg(&root, &["--purge", "summon"]);
    for gone in [
        "usr/bin/summond",
        "etc/summon/summond.toml",
        "lib/systemd/system/summond.service",
        "etc/systemd/system/multi-user.target.wants/summond.service",
    ] {
        assert!(
            root.join(gone).symlink_metadata().is_err(),
            "{gone} left after purge"
        );
    }
}
