//! Garbage collection against a real `ostore dev`: content no version refers to is deleted
//! from the drives, and never content that a concurrent PUT of the same bytes refers to.

use ostore_tests::{binary, random_bytes, shard_files, Dev};
use reqwest::Method;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

fn osctl(dev: &Dev, args: &[&str]) -> serde_json::Value {
    dev.osctl_json(args)
}

#[test]
fn content_whose_every_version_was_removed_is_reclaimed() {
    let dev = Dev::start(&["--gc-grace", "0s"]);
    let files_before = shard_files(&dev, 6).len();
    let bodies: Vec<Vec<u8>> = (0..3).map(|i| random_bytes(100 + i, 700_000)).collect();
    for b in &bodies {
        assert_eq!(dev.put("gc/k", b.clone()).status(), 201);
    }
    // A second key keeps its own content: it must survive.
    let keep = random_bytes(200, 500_000);
    assert_eq!(dev.put("gc/keep", keep.clone()).status(), 201);
    assert_eq!(shard_files(&dev, 6).len(), files_before + 4 * 6);
    for v in 1..=3 {
        let r = dev
            .req(Method::DELETE, &format!("/objects/gc/k?version={v}"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    let r = osctl(&dev, &["gc", "--wait"]);
    assert_eq!(r["collected"], 3, "{r}");
    assert!(r["bytes_freed"].as_u64().unwrap() >= 3 * 700_000, "{r}");
    assert_eq!(
        shard_files(&dev, 6).len(),
        files_before + 6,
        "only the kept object's shard files remain"
    );
    for b in &bodies {
        let (s, _) = dev.json(&format!("/locate/{}", blake3::hash(b).to_hex()));
        assert_eq!(s, 404);
    }
    assert!(dev.get_bytes("gc/keep").1 == keep);
    assert!(dev.metric("ostore_gc_bytes_freed_total") >= 3.0 * 700_000.0);
    // A second pass has nothing left to do.
    assert_eq!(osctl(&dev, &["gc", "--wait"])["collected"], 0);
}

#[test]
fn gc_racing_puts_of_the_same_content_never_deletes_a_referenced_shard() {
    let dev = Arc::new(Dev::start(&["--gc-grace", "0s"]));
    let body = Arc::new(random_bytes(300, 300_000));
    let stop = Arc::new(AtomicBool::new(false));
    let collected = Arc::new(AtomicU64::new(0));
    // Writers: each PUTs the same bytes under its own key and removes that version again, so
    // the content's references keep falling to zero and coming back (dedup). They go on (at
    // least 25 rounds, at most 60 s) until GC has collected the content at least once, so the
    // race happens however the timing falls on this machine; then each keeps its last version,
    // written while GC still runs. (A version kept earlier would hold the content referenced
    // and end the race.)
    let started = std::time::Instant::now();
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let (dev, body, collected) = (dev.clone(), body.clone(), collected.clone());
            std::thread::spawn(move || {
                for i in 0.. {
                    let last = i >= 25
                        && (collected.load(Ordering::Relaxed) > 0
                            || started.elapsed() > std::time::Duration::from_secs(60));
                    let key = format!("race/{w}/{i}");
                    let r = dev.put(&key, body.to_vec());
                    assert_eq!(r.status(), 201, "{:?}", r.text());
                    if last {
                        return key;
                    }
                    let j: serde_json::Value = r.json().unwrap();
                    let v = j["version"].as_u64().unwrap();
                    let r = dev
                        .req(Method::DELETE, &format!("/objects/{key}?version={v}"))
                        .send()
                        .unwrap();
                    assert_eq!(r.status(), 204);
                }
                unreachable!("the loop returns")
            })
        })
        .collect();
    let gc = {
        let (dev, stop, collected) = (dev.clone(), stop.clone(), collected.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let r = osctl(&dev, &["gc", "--wait"]);
                collected.fetch_add(r["collected"].as_u64().unwrap(), Ordering::Relaxed);
            }
        })
    };
    let kept: Vec<String> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    gc.join().unwrap();
    eprintln!(
        "gc removed the content {} time(s) while PUTs of it raced",
        collected.load(Ordering::Relaxed)
    );
    assert!(
        collected.load(Ordering::Relaxed) > 0,
        "the race never happened: gc never found the content unreferenced"
    );
    // Every version that was kept reads back, and its content has all of its shards.
    assert_eq!(kept.len(), 3);
    for key in &kept {
        let (s, got) = dev.get_bytes(key);
        assert!(s == 200 && got == *body, "{key}: {s}");
    }
    let (s, j) = dev.json(&format!("/locate/{}", blake3::hash(&body).to_hex()));
    assert_eq!(s, 200);
    assert_eq!(j["shards"].as_array().unwrap().len(), 6);
    // No shard was lost: no GET needed reconstruction (a deleted file would have forced it).
    assert_eq!(dev.metric("ostore_degraded_reads_total"), 0.0);
    // And a final pass, with the references held, removes nothing of it.
    let r = osctl(&dev, &["gc", "--wait"]);
    assert_eq!(r["collected"], 0, "{r}");
    assert!(dev.get_bytes(&kept[0]).1 == *body);
}

#[test]
fn retention_keeps_the_newest_versions_and_gc_frees_the_rest() {
    let dev = Dev::start(&["--gc-grace", "0s"]);
    let r = osctl(&dev, &["retention", "show"]);
    assert!(r["keep"].is_null(), "every version is kept by default: {r}");
    let files_before = shard_files(&dev, 6).len();
    let bodies: Vec<Vec<u8>> = (0..6).map(|i| random_bytes(400 + i, 600_000)).collect();
    for b in &bodies {
        assert_eq!(dev.put("ret/k", b.clone()).status(), 201);
    }
    // Another key with two versions then a delete marker: markers count as versions.
    assert_eq!(dev.put("ret/m", random_bytes(500, 300_000)).status(), 201);
    assert_eq!(dev.put("ret/m", random_bytes(501, 300_000)).status(), 201);
    assert_eq!(
        dev.req(Method::DELETE, "/objects/ret/m")
            .send()
            .unwrap()
            .status(),
        204
    );
    assert_eq!(shard_files(&dev, 6).len(), files_before + 8 * 6);
    let r = osctl(&dev, &["retention", "set", "3"]);
    assert_eq!(r["keep"], 3, "{r}");
    let r = osctl(&dev, &["gc", "--wait"]);
    assert_eq!(r["versions_trimmed"], 3, "{r}");
    assert_eq!(r["collected"], 3, "{r}");
    let (_, j) = dev.json("/versions/ret/k");
    let kept: Vec<u64> = j["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(kept, vec![6, 5, 4]);
    for (i, b) in bodies.iter().enumerate() {
        let v = i as u64 + 1;
        let r = dev
            .req(Method::GET, &format!("/objects/ret/k?version={v}"))
            .send()
            .unwrap();
        if v >= 4 {
            assert!(r.status() == 200 && r.bytes().unwrap() == *b, "version {v}");
        } else {
            assert_eq!(r.status(), 404, "version {v}");
        }
    }
    // ret/m had 3 versions (2 + the marker): untouched, and still reads 404.
    let (_, j) = dev.json("/versions/ret/m");
    assert_eq!(j["versions"].as_array().unwrap().len(), 3);
    assert_eq!(dev.get("ret/m").status(), 404);
    assert_eq!(
        shard_files(&dev, 6).len(),
        files_before + 5 * 6,
        "the three trimmed versions' shard files are deleted"
    );
    // A bucket override, down to 1: the marker alone remains of ret/m.
    let out = Command::new(binary("osctl"))
        .args(["--endpoint", &format!("http://{}", dev.http)])
        .args(["retention", "set", "1", "--bucket", "default"])
        .env("OSTORE_SECRET", &dev.secret)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("keep the newest 1"));
    let r = osctl(&dev, &["gc", "--wait"]);
    assert_eq!(r["versions_trimmed"], 4, "{r}");
    let (_, j) = dev.json("/versions/ret/m");
    assert_eq!(j["versions"][0]["delete_marker"], true);
    assert_eq!(j["versions"].as_array().unwrap().len(), 1);
    assert!(dev.get_bytes("ret/k").1 == bodies[5]);
    assert_eq!(shard_files(&dev, 6).len(), files_before + 6);
    // Zero is refused.
    let out = Command::new(binary("osctl"))
        .args(["--endpoint", &format!("http://{}", dev.http)])
        .args(["retention", "set", "0"])
        .env("OSTORE_SECRET", &dev.secret)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn the_orphan_scan_deletes_only_files_nothing_refers_to() {
    let dev = Dev::start(&["--gc-grace", "0s"]);
    let body = random_bytes(500, 900_000);
    assert_eq!(dev.put("o/kept", body.clone()).status(), 201);
    // The stored object's files (complete, with headers); the upload's come after.
    let mut kept = shard_files(&dev, 6);
    kept.sort();
    // An upload in progress: its files exist before any version refers to them.
    let r = dev
        .req(Method::POST, "/uploads")
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", "2000000")
        .header(
            "Upload-Metadata",
            format!("key {}", ostore_tests::base64(b"o/up")),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let url = r.headers()["location"].to_str().unwrap().to_string();
    let part = random_bytes(501, 2_000_000);
    let r = dev
        .req(Method::PATCH, &url)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Offset", "0")
        .header("Content-Type", "application/offset+octet-stream")
        .body(part[..1_100_000].to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
    let before = shard_files(&dev, 6).len();
    // Two strays: a copy of a stored shard under another file id (a valid header, but no
    // content lists it), and a file of garbage (no readable header: kept, it might be a
    // damaged shard). The upload's files have no header yet: they are kept because the upload
    // lists them.
    let dir = kept[0].parent().unwrap().to_path_buf();
    let copy = dir.join("00000000deadbe00.0");
    std::fs::copy(&kept[0], &copy).unwrap();
    let junk = dir.join("00000000deadbe01.3");
    std::fs::write(&junk, random_bytes(502, 70_000)).unwrap();
    // Only files older than the grace (0 s here) plus a second are considered.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = osctl(&dev, &["gc", "--wait"]);
    assert_eq!(r["orphans_removed"], 1, "{r}");
    assert_eq!(r["files_unreadable"], 1, "{r}");
    assert!(!copy.exists() && junk.exists());
    assert_eq!(
        shard_files(&dev, 6).len(),
        before + 1,
        "everything else stays"
    );
    // The upload goes on and the kept object reads back.
    let r = dev
        .req(Method::PATCH, &url)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Offset", "1100000")
        .header("Content-Type", "application/offset+octet-stream")
        .body(part[1_100_000..].to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(dev.get_bytes("o/up").1 == part);
    assert!(dev.get_bytes("o/kept").1 == body);
}
