//! osbench and osctl against a real `ostore dev`.

use ostore_tests::{binary, Dev};
use std::process::Command;

fn osbench(dev: &Dev, args: &[&str], json: &std::path::Path) -> serde_json::Value {
    osbench_at(&dev.http, dev, args, json)
}

/// osbench against `addr` (the native API's, or the S3 API's with `--protocol s3`).
fn osbench_at(addr: &str, dev: &Dev, args: &[&str], json: &std::path::Path) -> serde_json::Value {
    let out = Command::new(binary("osbench"))
        .args(["--endpoint", &format!("http://{addr}"), "--json"])
        .arg(json)
        .arg("--tls-ca")
        .arg(dev.data().join("tls/cert.pem"))
        .args(args)
        .env("OSTORE_SECRET", &dev.secret)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "osbench {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("p99.9"));
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

#[test]
fn osbench_runs_every_workload_through_s3_with_no_errors() {
    let dev = Dev::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let j = dir.path().join("out.json");
    let run = |args: &[&str]| {
        let s3 = ["--protocol", "s3", "--bucket", "bench-s3"];
        osbench_at(&dev.s3, &dev, &[&s3[..], args].concat(), &j)
    };
    for (args, op) in [
        (&["--workload", "put", "--ops", "100"][..], "put"),
        (
            &["--workload", "get", "--objects", "8", "--ops", "50"][..],
            "get",
        ),
        (
            &["--workload", "list", "--objects", "5", "--ops", "10"][..],
            "list",
        ),
        (&["--workload", "delete", "--objects", "10"][..], "delete"),
    ] {
        let r = run(args);
        assert_eq!(r["ops"][op]["errors"], 0, "{args:?}: {r}");
        assert!(r["ops"][op]["count"].as_u64().unwrap() > 0, "{args:?}");
        assert!(r["server_cpu_s"].is_null(), "no --server-pid: {r}");
    }
    // The server's CPU and memory over the measured run, as the side-by-side benchmarks take
    // them: 100 MiB served costs it some CPU time, and it holds some memory.
    let pid = dev.pid().to_string();
    let r = run(&[
        "--workload",
        "get",
        "--size",
        "1MiB",
        "--objects",
        "4",
        "--ops",
        "100",
        "--server-pid",
        &pid,
    ]);
    assert!(r["server_cpu_s"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["server_rss_kib"].as_u64().unwrap() > 1024, "{r}");
    // The objects went through S3 into the bucket the native API sees.
    let (s, list) = dev.json("/objects?bucket=bench-s3&prefix=osbench/&limit=1000");
    assert_eq!(s, 200);
    assert!(list["objects"].as_array().unwrap().len() >= 100, "{list}");
}

#[test]
fn osbench_runs_every_workload_with_verify_and_no_errors() {
    let dev = Dev::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let j = dir.path().join("out.json");
    let cases: &[(&[&str], &[&str])] = &[
        (
            &[
                "--workload",
                "put",
                "--size",
                "4KiB",
                "--ops",
                "300",
                "--concurrency",
                "8",
            ],
            &["put"],
        ),
        (
            &[
                "--workload",
                "get",
                "--size",
                "1MiB",
                "--objects",
                "8",
                "--ops",
                "40",
                "--verify",
            ],
            &["get"],
        ),
        (
            &[
                "--workload",
                "mixed:50/50",
                "--size",
                "1KiB..200KiB",
                "--objects",
                "16",
                "--duration",
                "1s",
                "--verify",
            ],
            &["put", "get"],
        ),
        (
            &["--workload", "list", "--objects", "5", "--ops", "20"],
            &["list"],
        ),
        (&["--workload", "delete", "--objects", "10"], &["delete"]),
    ];
    for (args, ops) in cases {
        let r = osbench(&dev, args, &j);
        for op in *ops {
            let o = &r["ops"][op];
            assert_eq!(o["errors"], 0, "{args:?}");
            assert!(o["count"].as_u64().unwrap() > 0, "{args:?}: no {op}");
            for p in ["p50", "p90", "p99", "p999", "max"] {
                assert!(o["latency_ms"][p].as_f64().unwrap() > 0.0);
            }
        }
    }
    // Open loop: 300 GETs due at 200/s take about 1.5 s whatever the server's speed, and the
    // run says so.
    let t = std::time::Instant::now();
    let r = osbench(
        &dev,
        &[
            "--workload",
            "get",
            "--size",
            "4KiB",
            "--objects",
            "8",
            "--ops",
            "300",
            "--rate",
            "200",
            "--concurrency",
            "8",
            "--verify",
        ],
        &j,
    );
    let took = t.elapsed().as_secs_f64();
    assert_eq!(r["mode"], "open", "{r}");
    assert_eq!(r["ops"]["get"]["count"], 300, "{r}");
    assert_eq!(r["ops"]["get"]["errors"], 0, "{r}");
    assert!(
        took > 1.4,
        "300 operations at 200/s cannot finish in {took:.2} s"
    );
    let achieved = r["rate_achieved"].as_f64().unwrap();
    assert!(achieved <= 200.0 * 1.05, "{r}");
}

/// `osbench --protocol h3 --verify`: every workload over HTTP/3, each GET checked against its
/// BLAKE3, no errors; the server counts the requests as HTTP/3 ones.
#[test]
fn osbench_over_http3_verifies_with_no_errors() {
    let dev = Dev::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let j = dir.path().join("out.json");
    let h3 = ["--protocol", "h3", "--verify"];
    let cases: &[(&[&str], &[&str], u64)] = &[
        (
            &["--workload", "put", "--size", "4KiB", "--ops", "300"],
            &["put"],
            300,
        ),
        (
            &[
                "--workload",
                "get",
                "--size",
                "1MiB",
                "--objects",
                "8",
                "--ops",
                "40",
            ],
            &["get"],
            48,
        ),
        (
            &[
                "--workload",
                "mixed:50/50",
                "--size",
                "1KiB..3MiB",
                "--objects",
                "16",
                "--ops",
                "200",
                "--concurrency",
                "32",
            ],
            &["put", "get"],
            216,
        ),
        (
            &[
                "--workload",
                "get",
                "--size",
                "64KiB",
                "--objects",
                "8",
                "--ops",
                "100",
                "--rate",
                "200",
            ],
            &["get"],
            108,
        ),
        (
            &["--workload", "delete", "--objects", "10"],
            &["delete"],
            20,
        ),
    ];
    for (args, ops, requests) in cases {
        let before = dev.metric("ostore_http3_requests_total");
        let args: Vec<&str> = args.iter().chain(h3.iter()).copied().collect();
        let r = osbench(&dev, &args, &j);
        assert_eq!(r["protocol"], "h3");
        for op in *ops {
            let o = &r["ops"][op];
            assert_eq!(o["errors"], 0, "{args:?}");
            assert!(o["count"].as_u64().unwrap() > 0, "{args:?}: no {op}");
        }
        let served = dev.metric("ostore_http3_requests_total") - before;
        assert!(
            served >= *requests as f64,
            "{args:?}: the server saw {served} HTTP/3 requests"
        );
    }
}

#[test]
fn osbench_cpu_measures_the_per_byte_costs() {
    let dir = tempfile::tempdir().unwrap();
    let j = dir.path().join("cpu.json");
    let out = Command::new(binary("osbench"))
        .args(["cpu", "--size", "8MiB", "--json"])
        .arg(&j)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&j).unwrap()).unwrap();
    for k in [
        "blake3_mb_s",
        "rs_encode_mb_s",
        "crc32c_seal_mb_s",
        "put_limit_mb_s_per_core",
    ] {
        assert!(r[k].as_f64().unwrap() > 0.0, "{k}: {r}");
    }
    // The combined cost is the sum of the parts: slower than the slowest part alone.
    let put = r["put_limit_mb_s_per_core"].as_f64().unwrap();
    for k in ["blake3_mb_s", "rs_encode_mb_s", "crc32c_seal_mb_s"] {
        assert!(put < r[k].as_f64().unwrap(), "{k}: {r}");
    }
}

#[test]
fn osbench_disk_measures_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let j = dir.path().join("disk.json");
    let out = Command::new(binary("osbench"))
        .args(["disk", "--size", "64MiB", "--random-seconds", "1", "--path"])
        .arg(dir.path())
        .arg("--json")
        .arg(&j)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&j).unwrap()).unwrap();
    for k in ["write_mb_s", "read_mb_s", "rand_read_4k_iops"] {
        assert!(r[k].as_f64().unwrap() > 0.0, "{k}");
    }
    assert!(
        !dir.path().join(".osbench-disk").exists(),
        "scratch file left behind"
    );
}

#[test]
fn osctl_status_and_versions() {
    let dev = Dev::start(&[]);
    dev.put("v", "1");
    dev.put("v", "2");
    let osctl = |args: &[&str]| {
        Command::new(binary("osctl"))
            .args(["--endpoint", &format!("http://{}", dev.http)])
            .args(args)
            .env("OSTORE_SECRET", &dev.secret)
            .output()
            .unwrap()
    };
    let out = osctl(&["--json", "status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["drives"], 6.0);
    assert_eq!(s["drives_healthy"], 6.0);
    let out = osctl(&["--json", "versions", "v"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["versions"].as_array().unwrap().len(), 2);
    let out = osctl(&["versions", "never"]);
    assert_eq!(out.status.code(), Some(1));
    let out = osctl(&["--json", "nodes"]);
    let n: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(n["nodes"].as_array().unwrap().len(), 1, "{n}");
    // In dev, repair verifies every sharded object: one here.
    dev.put("big", vec![7u8; 100_000]);
    let out = osctl(&["--json", "repair", "--wait", "--timeout", "60"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (r["queued"].as_u64(), r["done"].as_bool()),
        (Some(1), Some(true)),
        "{r}"
    );
    // Draining needs a cluster: a clear error, exit 1.
    let out = osctl(&["drain", "dev"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("single-node"),
        "{out:?}"
    );
    // The counters: two keys (v with two versions, big), three contents; a delete marker
    // makes v a version more and an object less.
    let status = || {
        let out = osctl(&["--json", "status"]);
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let s = status();
    assert_eq!(
        (
            s["objects"].as_i64(),
            s["versions"].as_i64(),
            s["contents"].as_i64()
        ),
        (Some(2), Some(3), Some(3)),
        "{s}"
    );
    assert_eq!(s["logical_bytes"].as_i64(), Some(100_002), "{s}");
    assert_eq!(
        (s["repair_queued"].as_u64(), s["missing_shards"].as_i64()),
        (Some(0), Some(0)),
        "{s}"
    );
    assert!(
        s["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["kind"] != "repair"),
        "{s}"
    );
    assert_eq!(
        dev.req(reqwest::Method::DELETE, "/objects/v")
            .send()
            .unwrap()
            .status(),
        204
    );
    let s = status();
    assert_eq!(
        (s["objects"].as_i64(), s["versions"].as_i64()),
        (Some(1), Some(4)),
        "{s}"
    );
    let out = osctl(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("objects         1 (4 versions, 3 distinct contents)"),
        "{text}"
    );
    let out = Command::new(binary("osctl"))
        .args(["--endpoint", &format!("http://{}", dev.http), "status"])
        .env("OSTORE_SECRET", "wrong")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    // The same over HTTP/3, with a key that needs escaping.
    dev.put("a%20b%3F", "x");
    let cert = dev.data().join("tls/cert.pem");
    let h3 = |args: &[&str]| {
        let mut all = vec!["--protocol", "h3", "--tls-ca", cert.to_str().unwrap()];
        all.extend_from_slice(args);
        osctl(&all)
    };
    let before = dev.metric("ostore_http3_requests_total");
    let out = h3(&["--json", "versions", "a b?"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["key"], "a b?");
    assert_eq!(v["versions"].as_array().unwrap().len(), 1);
    let out = h3(&["--json", "status"]);
    assert!(out.status.success());
    assert!(dev.metric("ostore_http3_requests_total") - before >= 2.0);
    let out = h3(&["versions", "never"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
}
