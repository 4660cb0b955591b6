//! `summond check-config FILE`: exit status and the file:line:column an operator sees.

use std::path::Path;
use std::process::{Command, Output};

fn check_config(dir: &Path, text: &str) -> Output {
    let file = dir.join("summond.toml");
    std::fs::write(&file, text).unwrap();
    Command::new(env!("CARGO_BIN_EXE_summond"))
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap()
}

const HEAD: &str = r#"[dns]
listen = ["127.0.0.1:5300"]
zone = "svc.test."
ttl = 10

[network]
subnet = "10.77.0.0/16"
gateway = "10.77.0.1"
"#;

#[test]
fn a_valid_config_is_accepted_with_its_service_count() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("web.hvt"), b"checked at start, not here").unwrap();
    let text =
        format!("{HEAD}\n[[service]]\nname = \"web\"\nimage = \"web.hvt\"\nip = \"10.77.0.10\"\n");
    let out = check_config(dir.path(), &text);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("ok (1 service"), "{stdout}");
}

#[test]
fn a_syntax_error_names_file_line_and_column_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let text = HEAD.replace("ttl = 10", "ttl = \"ten\"");
    let out = check_config(dir.path(), &text);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("summond.toml:4:7:"), "{stderr}");
    assert!(stderr.contains("expected"), "{stderr}");
}

#[test]
fn semantic_errors_are_reported_with_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{HEAD}\n[[service]]\nname = \"web\"\nimage = \"missing.hvt\"\nip = \"192.0.2.1\"\n"
    );
    let out = check_config(dir.path(), &text);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no such file"), "{stderr}");
    assert!(stderr.contains("192.0.2.1"), "{stderr}");
    assert!(stderr.contains("summond.toml:"), "{stderr}");
}
