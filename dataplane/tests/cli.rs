//! The `ostore` command line itself.

use std::process::Command;

#[test]
fn help_lists_the_modes_and_bad_invocations_fail_loudly() {
    let out = Command::new(env!("CARGO_BIN_EXE_ostore"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for mode in ["dev", "control", "node"] {
        assert!(text.contains(mode), "--help lacks {mode}: {text}");
    }
    // Cluster modes: the required flags are enforced by the parser (exit 2) and the secret
    // by the program (exit 1, saying what is missing).
    let out = Command::new(env!("CARGO_BIN_EXE_ostore"))
        .args(["node"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // A control process needs the operator's cluster key (and no client secret stands in for
    // it); a node needs the root secret it checks clients with.
    for (args, needs) in [
        (
            &[
                "control",
                "--listen",
                "127.0.0.1:0",
                "--meta",
                "redb:/nonexistent/x",
            ][..],
            "OSTORE_CLUSTER_KEY",
        ),
        (
            &[
                "node",
                "--control",
                "127.0.0.1:1",
                "--http",
                "127.0.0.1:0",
                "--peer",
                "127.0.0.1:0",
                "--drive",
                "/nonexistent/d",
            ][..],
            "OSTORE_SECRET",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_ostore"))
            .args(args)
            .env_remove("OSTORE_SECRET")
            .env_remove("OSTORE_CLUSTER_KEY")
            .env(
                "OSTORE_SECRET",
                if needs == "OSTORE_SECRET" { "" } else { "s" },
            )
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(needs),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A cluster key shorter than 32 characters is refused.
    let out = Command::new(env!("CARGO_BIN_EXE_ostore"))
        .args([
            "control",
            "--listen",
            "127.0.0.1:0",
            "--meta",
            "redb:/nonexistent/x",
        ])
        .env("OSTORE_CLUSTER_KEY", "short")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 32"));
    let out = Command::new(env!("CARGO_BIN_EXE_ostore"))
        .args(["control", "--listen", "127.0.0.1:0", "--meta", "nosuch:x"])
        .env("OSTORE_CLUSTER_KEY", "k".repeat(32))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("redb:PATH, etcd:HOST:PORT"));
    let out = Command::new(env!("CARGO_BIN_EXE_ostore"))
        .args(["control", "--listen", "127.0.0.1:0", "--meta", "etcd:x"])
        .env("OSTORE_CLUSTER_KEY", "k".repeat(32))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HOST:PORT"));
    let out = Command::new(env!("CARGO_BIN_EXE_ostore"))
        .args(["dev", "--ec", "4-2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
