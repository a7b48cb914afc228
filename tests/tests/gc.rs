//! Garbage collection against a real `ostore dev`: content no version refers to is deleted
//! from the drives, and never content that a concurrent PUT of the same bytes refers to.

use ostore_tests::{binary, random_bytes, shard_files, Dev};
use reqwest::Method;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

fn osctl(dev: &Dev, args: &[&str]) -> serde_json::Value {
    let out = Command::new(binary("osctl"))
        .args(["--endpoint", &format!("http://{}", dev.http), "--json"])
        .args(args)
        .env("OSTORE_SECRET", &dev.secret)
        .output()
        .unwrap();
    assert!(out.status.success(), "osctl {args:?}: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
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
    // the content's references keep falling to zero and coming back (dedup).
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let (dev, body) = (dev.clone(), body.clone());
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                for i in 0..25 {
                    let key = format!("race/{w}/{i}");
                    let r = dev.put(&key, body.to_vec());
                    assert_eq!(r.status(), 201, "{:?}", r.text());
                    let j: serde_json::Value = r.json().unwrap();
                    if i % 5 == 4 {
                        kept.push(key);
                        continue;
                    }
                    let v = j["version"].as_u64().unwrap();
                    let r = dev
                        .req(Method::DELETE, &format!("/objects/{key}?version={v}"))
                        .send()
                        .unwrap();
                    assert_eq!(r.status(), 204);
                }
                kept
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
    let kept: Vec<String> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    stop.store(true, Ordering::Relaxed);
    gc.join().unwrap();
    eprintln!(
        "gc removed the content {} time(s) while 75 PUTs of it raced",
        collected.load(Ordering::Relaxed)
    );
    assert!(
        collected.load(Ordering::Relaxed) > 0,
        "the race never happened: gc never found the content unreferenced"
    );
    // Every version that was kept reads back, and its content has all of its shards.
    assert_eq!(kept.len(), 15);
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
