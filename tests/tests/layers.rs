//! The dependency rules of ARCHITECTURE.md, checked on the source tree:
//! - the crates depend on each other only downwards, as the map draws them;
//! - no runtime, socket or database crate in `wire` or `engine` (they are sans-IO), and none
//!   of glommio, tokio, hyper or QUIC in `control`'s metadata code;
//! - `bench` and `tools` are clients: they never reach into the data plane or the control
//!   plane's internals;
//! - no import circle between the modules of any crate (test code aside).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

/// The workspace's crates: directory name → the `[dependencies]` (not dev or build) of its
/// Cargo.toml, by package name.
fn crates() -> BTreeMap<String, BTreeSet<String>> {
    let ws = std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml");
    let members = ws
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("workspace members");
    let mut out = BTreeMap::new();
    for m in members.split('"').skip(1).step_by(2) {
        let toml = std::fs::read_to_string(root().join(m).join("Cargo.toml")).expect("manifest");
        let mut deps = BTreeSet::new();
        let mut section = String::new();
        for line in toml.lines() {
            let l = line.trim();
            if l.starts_with('[') {
                section = l.to_string();
                continue;
            }
            if section != "[dependencies]" || l.is_empty() || l.starts_with('#') {
                continue;
            }
            let name = l
                .split(['=', '.', ' '])
                .next()
                .expect("a dependency name")
                .trim();
            deps.insert(name.to_string());
        }
        out.insert(m.to_string(), deps);
    }
    out
}

/// The package name of a workspace directory.
fn package(dir: &str) -> String {
    let toml = std::fs::read_to_string(root().join(dir).join("Cargo.toml")).expect("manifest");
    toml.lines()
        .find_map(|l| l.strip_prefix("name = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("a package name")
        .to_string()
}

/// Every crate (by directory) a crate depends on within the workspace, directly or not.
fn workspace_closure(dir: &str, all: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<String> {
    let by_package: BTreeMap<String, String> =
        all.keys().map(|d| (package(d), d.clone())).collect();
    let mut seen = BTreeSet::new();
    let mut todo = vec![dir.to_string()];
    while let Some(d) = todo.pop() {
        for dep in &all[&d] {
            if let Some(sub) = by_package.get(dep) {
                if seen.insert(sub.clone()) {
                    todo.push(sub.clone());
                }
            }
        }
    }
    seen
}

/// The third-party crates a crate pulls in directly, itself and through the workspace crates
/// it depends on.
fn external_closure(dir: &str, all: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<String> {
    let mut dirs = workspace_closure(dir, all);
    dirs.insert(dir.to_string());
    dirs.iter()
        .flat_map(|d| all[d].iter().cloned())
        .filter(|d| !d.starts_with("ostore-"))
        .collect()
}

const RUNTIMES: &[&str] = &[
    "glommio",
    "tokio",
    "monoio",
    "monoio-compat",
    "hyper",
    "hyper-util",
    "reqwest",
    "quinn",
    "quinn-proto",
    "quinn-udp",
    "h3",
    "h3-quinn",
    "socket2",
    "redb",
    "foundationdb",
    "signal-hook",
];

#[test]
fn sans_io_crates_pull_in_no_runtime() {
    let all = crates();
    for dir in ["wire", "engine", "s3"] {
        let ext = external_closure(dir, &all);
        let bad: Vec<&&str> = RUNTIMES.iter().filter(|r| ext.contains(**r)).collect();
        assert!(
            bad.is_empty(),
            "{dir} must stay sans-IO but depends on {bad:?}"
        );
    }
    // The metadata code runs over a store (redb, FoundationDB) but on no async runtime.
    let ext = external_closure("control", &all);
    let bad: Vec<&&str> = RUNTIMES
        .iter()
        .filter(|r| !["redb", "foundationdb"].contains(r) && ext.contains(**r))
        .collect();
    assert!(bad.is_empty(), "control depends on {bad:?}");
}

#[test]
fn crates_depend_only_downwards() {
    let all = crates();
    // Each crate and the workspace crates it may use; anything else is a layering error.
    let allowed: &[(&str, &[&str])] = &[
        ("wire", &[]),
        ("engine", &["wire"]),
        ("control", &["engine", "wire"]),
        // The etcd backend of the metadata store: the Kv interface over etcd's gRPC API.
        ("etcd", &["control", "engine", "wire"]),
        ("transport", &["wire"]),
        // The S3 protocol (SigV4, aws-chunked, XML), sans-IO: it knows nothing of the store.
        ("s3", &[]),
        // What every server process shares: HTTP/1.1 serving, guarded tasks, metrics, signals.
        ("server", &[]),
        // The control-plane API's client and server, with the leader's jobs: below the data
        // plane, which only calls it.
        (
            "controlplane",
            &["control", "engine", "etcd", "server", "transport", "wire"],
        ),
        (
            "dataplane",
            &[
                "control",
                "controlplane",
                "engine",
                "etcd",
                "s3",
                "server",
                "transport",
                "wire",
            ],
        ),
        ("client", &[]),
        // osctl: the client, and the join-token format it makes offline.
        ("tools", &["client", "wire"]),
        ("bench", &["client", "engine", "s3", "transport", "wire"]),
        (
            "tests",
            &[
                "client",
                "transport",
                "engine",
                "wire",
                "control",
                "etcd",
                "s3",
            ],
        ),
        (
            "fuzz",
            &[
                "wire",
                "engine",
                "control",
                "controlplane",
                "dataplane",
                "etcd",
                "s3",
                "server",
                "transport",
            ],
        ),
        // The simulator runs the decisions and the metadata code, never the runtime.
        ("sim", &["control", "engine", "wire"]),
    ];
    for dir in all.keys() {
        let (_, may) = allowed
            .iter()
            .find(|(d, _)| d == dir)
            .unwrap_or_else(|| panic!("crate {dir} has no place in the layering rules here"));
        let uses = workspace_closure(dir, &all);
        let bad: Vec<&String> = uses.iter().filter(|u| !may.contains(&u.as_str())).collect();
        assert!(bad.is_empty(), "{dir} must not depend on {bad:?}");
    }
    // The simulator is sans-IO too, but for the metadata stores that come with control (it
    // runs redb in memory).
    let ext = external_closure("sim", &all);
    let bad: Vec<&&str> = RUNTIMES
        .iter()
        .filter(|r| !["redb", "foundationdb"].contains(r) && ext.contains(**r))
        .collect();
    assert!(bad.is_empty(), "sim depends on {bad:?}");
    // Clients above all: bench and tools reach the store only through its APIs.
    for dir in ["bench", "tools"] {
        let uses = workspace_closure(dir, &all);
        assert!(
            !uses.contains("dataplane") && !uses.contains("control"),
            "{dir}: {uses:?}"
        );
    }
}

/// Source with comments, string contents and `#[cfg(test)]` items removed.
fn production_code(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i + 1 < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' && (i == 0 || b[i - 1] != b'\'') {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i..].starts_with(b"#[cfg(test)]") {
            // Skip the attribute and the item it guards: up to its `;` or its closing brace.
            i += "#[cfg(test)]".len();
            let mut depth = 0usize;
            while i < b.len() {
                match b[i] {
                    b'{' => depth += 1,
                    b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            i += 1;
                            break;
                        }
                    }
                    b';' if depth == 0 => {
                        i += 1;
                        break;
                    }
                    _ => {}
                }
                i += 1;
            }
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// The names `text` reaches through `crate::` paths, `use crate::{a, b::c}` groups included.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
    }
    out
}

/// The module graph of one crate: each file module (and the root, `lib` or `main`) with the
/// modules it names. A name that is not a module is an item of the root.
fn module_graph(dir: &str) -> BTreeMap<String, BTreeSet<String>> {
    let src = root().join(dir).join("src");
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    for e in std::fs::read_dir(&src).expect("src") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "rs") {
            let name = p.file_stem().expect("stem").to_string_lossy().to_string();
            let text = std::fs::read_to_string(&p).expect("source");
            files.insert(name, production_code(&text));
        }
    }
    assert!(
        !src.join("bin").exists() && files.keys().all(|f| f != "mod"),
        "{dir}: nested module directories are not scanned here; extend the scanner"
    );
    // A crate with both a library and a binary: the binary is a user of the library.
    let root_name = if files.contains_key("lib") {
        "lib"
    } else {
        "main"
    };
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, text) in &files {
        if name == "main" && root_name == "lib" {
            continue;
        }
        let mut to = BTreeSet::new();
        for p in crate_paths(text) {
            if files.contains_key(&p) && p != "main" && p != "lib" {
                to.insert(p);
            } else {
                to.insert(root_name.to_string());
            }
        }
        if name == root_name {
            // The root uses a module when it names it outside its declaration.
            for m in files.keys() {
                let used = text.match_indices(&format!("{m}::")).any(|(at, _)| {
                    at == 0
                        || !text.as_bytes()[at - 1].is_ascii_alphanumeric()
                            && text.as_bytes()[at - 1] != b'_'
                            && text.as_bytes()[at - 1] != b':'
                });
                if used && m != root_name {
                    to.insert(m.clone());
                }
            }
        }
        to.remove(name);
        graph.insert(name.clone(), to);
    }
    graph
}

/// The modules of `graph` that reach each other in a circle, in groups (the strongly
/// connected components with more than one member).
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(n) = todo.pop() {
            for m in graph.get(&n).into_iter().flatten() {
                if seen.insert(m.clone()) {
                    todo.push(m.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> =
        graph.keys().map(|n| (n, reach(n))).collect();
    let mut out: Vec<BTreeSet<String>> = Vec::new();
    for n in graph.keys() {
        if !reaches[n].contains(n) || out.iter().any(|c| c.contains(n)) {
            continue;
        }
        out.push(
            graph
                .keys()
                .filter(|m| reaches[n].contains(*m) && reaches[*m].contains(n))
                .cloned()
                .collect(),
        );
    }
    out
}

#[test]
fn the_circle_finder_finds_circles() {
    let g = |edges: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            g.entry(a.to_string()).or_default().insert(b.to_string());
            g.entry(b.to_string()).or_default();
        }
        g
    };
    assert!(circles(&g(&[("a", "b"), ("b", "c"), ("a", "c")])).is_empty());
    let c = circles(&g(&[
        ("a", "b"),
        ("b", "c"),
        ("c", "a"),
        ("c", "d"),
        ("d", "e"),
        ("e", "d"),
    ]));
    let names = |c: &BTreeSet<String>| c.iter().cloned().collect::<Vec<_>>().join(" ");
    assert_eq!(c.iter().map(names).collect::<Vec<_>>(), ["a b c", "d e"]);
    assert_eq!(
        crate_paths("use crate::{a, b::C};\nlet x = crate::c::f();"),
        ["a", "b", "c"].iter().map(|s| s.to_string()).collect()
    );
    assert_eq!(
        production_code("a // crate::x\n\"crate::y\" #[cfg(test)]\nmod t { crate::z }\nb"),
        "a \n\"\" \nb"
    );
}

#[test]
fn no_module_imports_another_in_a_circle() {
    let mut found = Vec::new();
    for dir in crates().keys() {
        for c in circles(&module_graph(dir)) {
            let names: Vec<&str> = c.iter().map(|s| s.as_str()).collect();
            found.push(format!("{dir}: {}", names.join(", ")));
        }
    }
    assert!(
        found.is_empty(),
        "modules that import each other in a circle:\n{}",
        found.join("\n")
    );
}
