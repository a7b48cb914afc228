//! The native API over HTTP/3, checked with an independent HTTP/3 stack (Python's aioquic, in
//! the venv `.ci/run` makes) against the real `ostore dev`: a 7 MiB PUT and GET, a Range GET,
//! 401 without credentials, 400 and nothing stored for a body short of its Content-Length,
//! and 32 concurrent Range GETs on one connection, all exact. The
//! certificate is the self-signed one `ostore dev` makes under `DIR/tls`, pinned by the client.

use ostore_tests::{random_bytes, Dev};
use std::path::PathBuf;
use std::process::{Command, Stdio};

#[test]
fn aioquic_puts_and_gets_over_http3() {
    let Some(py) = ostore_tests::python_with("aioquic") else {
        eprintln!(
            "SKIP aioquic_puts_and_gets_over_http3: no Python with aioquic \
             (set OSTORE_TEST_PYTHON or run .ci/run, which makes target/pyvenv)"
        );
        return;
    };
    let dev = Dev::start(&[]);
    assert_eq!(
        dev.quic.as_deref(),
        Some(dev.http.as_str()),
        "quic= in the ready line"
    );
    let port = dev.http.rsplit(':').next().unwrap().to_string();
    let cert = dev.data().join("tls/cert.pem");
    assert!(
        cert.exists(),
        "ostore dev made no certificate at {}",
        cert.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("seven.bin");
    let body = random_bytes(7, 7 << 20);
    std::fs::write(&file, &body).unwrap();
    let out = Command::new(py)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/h3_checks.py"))
        .args(["127.0.0.1", &port])
        .arg(&cert)
        .arg(&dev.secret)
        .arg(&file)
        .arg("h3/seven")
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "the aioquic client failed");
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["put"], 201, "{seen}");
    assert_eq!(seen["get"], 200, "{seen}");
    assert_eq!(seen["get_len"], 7 << 20, "{seen}");
    assert_eq!(seen["get_exact"], true, "{seen}");
    assert_eq!(seen["range"], 206, "{seen}");
    assert_eq!(seen["range_exact"], true, "{seen}");
    assert_eq!(seen["no_credentials"], 401, "{seen}");
    assert_eq!(
        seen["short_body"], 400,
        "a body short of its Content-Length: {seen}"
    );
    assert_eq!(seen["short_get"], 404, "nothing stored for it: {seen}");
    assert_eq!(seen["concurrent"], 32, "{seen}");
    assert_eq!(seen["concurrent_206"], 32, "{seen}");
    assert_eq!(seen["concurrent_exact"], 32, "{seen}");
    // What went in over HTTP/3 reads back the same over HTTP/1.1, which advertises HTTP/3.
    let r = dev.get("h3/seven");
    assert_eq!(r.status(), 200);
    let alt = r.headers()["alt-svc"].to_str().unwrap().to_string();
    assert_eq!(alt, format!("h3=\":{port}\"; ma=86400"));
    assert!(r.bytes().unwrap() == body, "HTTP/1.1 reads other bytes");
}
