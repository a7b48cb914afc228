//! The `ostore` command line itself.

use std::process::Command;

#[test]
fn help_lists_the_modes_and_cluster_modes_fail_loudly() {
    let out = Command::new(env!("CARGO_BIN_EXE_ostore"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for mode in ["dev", "control", "node"] {
        assert!(text.contains(mode), "--help lacks {mode}: {text}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ostore"))
        .args(["node"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not available"));
    let out = Command::new(env!("CARGO_BIN_EXE_ostore"))
        .args(["dev", "--ec", "4-2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
