//! The dependency directions the layout promises (docs/architecture.md, "Where the decisions
//! live"), checked from the sources so that a new cycle fails the build's tests rather than a
//! reviewer's eye:
//!
//! - between the workspace's crates, every dependency points down the layers
//!   abi → test-support → image → launcher → {run, daemon} → tests (dev-dependencies of the
//!   crates above the launcher may also use `summon-tests`, the end-to-end helpers);
//! - between the daemon's top-level modules `config`, `net`, `driver`, `registry` and
//!   `cluster`, every dependency points down the order cluster → registry → driver → net →
//!   config (so there is no cycle
//!   among them), except the edges recorded in [`KNOWN_UPWARD`], which may only go away: a new
//!   upward edge fails, and so does a recorded one that is gone (delete it from the list).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The daemon modules whose mutual dependencies must not form a cycle, from the lowest (needs
/// none of the others) to the highest.
const ORDER: &[&str] = &["config", "net", "driver", "registry", "cluster"];

/// Upward edges that exist today, each closing a cycle. None: the `[service.libvirt]` table is
/// typed in `config/`, and the network lease is the driver's own type.
const KNOWN_UPWARD: &[(&str, &str)] = &[];

/// Layer of each workspace crate: a crate may depend only on crates of a lower layer.
const LAYERS: &[(&str, u32)] = &[
    ("summon-hvt-abi", 0),
    ("summon-test-support", 1),
    ("summon-image", 2),
    ("summon-launcher", 3),
    ("summon-run", 4),
    ("summon-daemon", 4),
    ("summon-tests", 5),
];

/// The end-to-end helpers, which need the launcher's types: a test library for the crates above
/// the launcher.
const TEST_LIBRARY: &str = "summon-tests";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("daemon/ sits in the workspace")
        .to_path_buf()
}

fn toml_file(path: &Path) -> toml::Table {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn crates_depend_only_downwards() {
    let root = workspace_root();
    let manifest = toml_file(&root.join("Cargo.toml"));
    let members = manifest["workspace"]["members"]
        .as_array()
        .expect("workspace.members");
    let layer: BTreeMap<&str, u32> = LAYERS.iter().copied().collect();
    let mut bad = Vec::new();
    for member in members {
        let dir = root.join(member.as_str().expect("member path"));
        let krate = toml_file(&dir.join("Cargo.toml"));
        let name = krate["package"]["name"].as_str().expect("package.name");
        let Some(&own) = layer.get(name) else {
            bad.push(format!(
                "{name}: not in LAYERS; give the new crate its layer"
            ));
            continue;
        };
        for table in ["dependencies", "dev-dependencies", "build-dependencies"] {
            let Some(deps) = krate.get(table).and_then(|t| t.as_table()) else {
                continue;
            };
            for dep in deps.keys() {
                if let Some(&theirs) = layer.get(dep.as_str()) {
                    let test_library = table == "dev-dependencies"
                        && dep == TEST_LIBRARY
                        && own > layer["summon-launcher"];
                    if theirs >= own && !test_library {
                        bad.push(format!(
                            "{name} (layer {own}) has {dep} (layer {theirs}) in [{table}]"
                        ));
                    }
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "dependencies against the layers:\n{}",
        bad.join("\n")
    );
}

/// The first path segment of every `crate::` path in `src` (comments stripped), including each
/// item of a grouped `use crate::{a, b::c}`.
fn crate_paths(src: &str) -> BTreeSet<String> {
    let code: String = src
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of the group: split at commas outside nested braces.
            let mut depth = 0;
            let mut item_start = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        out.insert(ident(&group[item_start..i]));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(ident(&group[item_start..i]));
                        item_start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out.remove("");
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Edges between the daemon's top-level modules: module → modules its files name by `crate::`.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(src).expect("under src");
        let first = rel.components().next().expect("non-empty path");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        let text = std::fs::read_to_string(&file).expect("read source");
        for target in crate_paths(&text) {
            if target != module {
                graph.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    graph
}

#[test]
fn modules_config_net_driver_registry_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for m in ORDER {
        assert!(
            src.join(format!("{m}.rs")).exists() || src.join(m).is_dir(),
            "module {m} is gone: update ORDER"
        );
    }
    let rank = |m: &str| ORDER.iter().position(|o| *o == m);
    let mut upward = BTreeSet::new();
    for (from, targets) in module_graph(&src) {
        let Some(f) = rank(&from) else { continue };
        for to in targets {
            if rank(&to).is_some_and(|t| t > f) {
                upward.insert((from.clone(), to));
            }
        }
    }
    let known: BTreeSet<(String, String)> = KNOWN_UPWARD
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let new: Vec<_> = upward.difference(&known).collect();
    let gone: Vec<_> = known.difference(&upward).collect();
    assert!(
        new.is_empty(),
        "new upward module dependencies {new:?} (the order is {ORDER:?}, lowest first): each \
         closes a cycle; move the shared piece down instead"
    );
    assert!(
        gone.is_empty(),
        "{gone:?} no longer exist: remove them from KNOWN_UPWARD"
    );
}

#[test]
fn the_checker_sees_grouped_uses() {
    let paths = crate_paths(
        "use crate::{a, b::{c, d}, e::f};\n// crate::commented\nlet x = crate::g::h(); \
         my_crate::no;",
    );
    let want: BTreeSet<String> = ["a", "b", "e", "g"].iter().map(|s| s.to_string()).collect();
    assert_eq!(paths, want);
}
