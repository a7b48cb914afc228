//! osctl's command line.

use std::process::Command;

#[test]
fn help_and_missing_secret() {
    let bin = env!("CARGO_BIN_EXE_osctl");
    let out = Command::new(bin).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for c in [
        "status",
        "nodes",
        "drain",
        "scrub",
        "gc",
        "repair",
        "versions",
        "retention",
        "keys",
        "secret",
    ] {
        assert!(text.contains(c), "--help lacks {c}");
    }
    let out = Command::new(bin)
        .arg("status")
        .env_remove("OSTORE_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("secret"));
}
