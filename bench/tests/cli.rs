//! osbench's command line.

use std::process::Command;

#[test]
fn rejects_bad_arguments_with_a_message() {
    let bin = env!("CARGO_BIN_EXE_osbench");
    let out = Command::new(bin)
        .args(["--workload", "mixed:50/60", "--secret", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("100"));
    let out = Command::new(bin)
        .args(["--size", "4XB", "--secret", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = Command::new(bin).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--concurrency"));
}
