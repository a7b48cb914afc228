//! Durability and efficiency of `ostore dev` on real drives: erasure-coding overhead, dedup,
//! kill -9 at the worst moments, emptied drives, and flipped bits.

use ostore_tests::{bytes_of, eventually, random_bytes, shard_files, Dev};
use reqwest::Method;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

const DRIVES: usize = 6;

fn read_status(s: &mut TcpStream) -> u16 {
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn erasure_coding_overhead_and_dedup() {
    let dev = Dev::start(&[]);
    let size = 8 * 1024 * 1024 + 777;
    let body = random_bytes(11, size);
    let before = bytes_of(&shard_files(&dev, DRIVES));
    assert_eq!(dev.put("a", body.clone()).status(), 201);
    let files = shard_files(&dev, DRIVES);
    let used = bytes_of(&files) - before;
    let ratio = used as f64 / size as f64;
    assert!(
        (1.45..1.6).contains(&ratio),
        "6 shards of a 4+2 code should cost ~1.5x, got {ratio:.3}"
    );
    assert_eq!(files.len(), 6, "one shard file per drive");
    for d in 0..DRIVES {
        assert_eq!(
            ostore_tests::files_under(&dev.drive(d).join("shards")).len(),
            1,
            "drive {d} holds one shard"
        );
    }
    for f in &files {
        let len = std::fs::metadata(f).unwrap().len() as usize;
        assert!(
            len < size / 3,
            "{} holds {len} bytes of a {size}-byte object",
            f.display()
        );
    }
    // The same content under another key costs nothing on the drives.
    let r = dev.put("b", body.clone());
    assert_eq!(r.status(), 201);
    assert_eq!(bytes_of(&shard_files(&dev, DRIVES)), before + used);
    assert_eq!(shard_files(&dev, DRIVES).len(), 6);
    assert!(dev.get_bytes("b").1 == body);
    // With X-Blake3 and Expect: 100-continue the body is never sent.
    let h = blake3::hash(&body).to_hex().to_string();
    let mut s = dev.raw_put_head(
        "c",
        size as u64,
        &format!("X-Blake3: {h}\r\nExpect: 100-continue\r\n"),
    );
    assert_eq!(
        read_status(&mut s),
        201,
        "known content must be accepted without its body"
    );
    drop(s);
    assert!(dev.get_bytes("c").1 == body);
    // Unknown content with Expect: 100-continue is asked for and stored normally.
    let other = random_bytes(12, 300_000);
    let r = dev
        .req(Method::PUT, "/objects/d")
        .header("X-Blake3", blake3::hash(&other).to_hex().as_str())
        .header("Expect", "100-continue")
        .body(other.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(dev.get_bytes("d").1 == other);
    let (s, loc) = dev.json(&format!("/locate/{h}"));
    assert_eq!(s, 200);
    let shards = loc["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 6);
    let mut drives: Vec<&str> = shards
        .iter()
        .map(|s| s["drive"].as_str().unwrap())
        .collect();
    drives.sort();
    drives.dedup();
    assert_eq!(drives.len(), 6, "shards on distinct drives");
    assert_eq!(loc["ec"]["data"], 4);
    assert_eq!(loc["ec"]["parity"], 2);
}

#[test]
fn kill9_right_after_201_keeps_the_object() {
    let mut dev = Dev::start(&[]);
    let big = random_bytes(21, 3_000_000);
    assert_eq!(dev.put("big", big.clone()).status(), 201);
    assert_eq!(dev.put("small", "tiny").status(), 201);
    dev.kill9();
    dev.restart();
    assert!(dev.get_bytes("big").1 == big);
    assert_eq!(dev.get_bytes("small").1, b"tiny");
}

#[test]
fn kill9_during_put_leaves_no_version_and_no_files() {
    let mut dev = Dev::start(&[]);
    assert_eq!(dev.put("other", random_bytes(30, 500_000)).status(), 201);
    let baseline: Vec<PathBuf> = shard_files(&dev, DRIVES);
    let total = 20 * 1024 * 1024;
    let mut s = dev.raw_put_head("half", total, "");
    let body = random_bytes(31, 6 * 1024 * 1024);
    s.write_all(&body).unwrap();
    s.flush().unwrap();
    assert!(
        eventually(Duration::from_secs(20), || shard_files(&dev, DRIVES).len()
            > baseline.len()),
        "the interrupted PUT never started writing shards"
    );
    dev.kill9();
    drop(s);
    dev.restart();
    assert_eq!(dev.get("half").status(), 404);
    assert_eq!(dev.json("/versions/half").0, 404);
    let mut after = shard_files(&dev, DRIVES);
    let mut want = baseline.clone();
    after.sort();
    want.sort();
    assert_eq!(
        after, want,
        "shard files of the interrupted PUT were left behind"
    );
}

fn objects(dev: &Dev) -> Vec<(String, Vec<u8>)> {
    let sizes = [100usize, 20_000, 300_000, 1_000_000, 2_500_000];
    let mut out = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let key = format!("obj/{i}");
        let body = random_bytes(100 + i as u64, *size);
        assert_eq!(dev.put(&key, body.clone()).status(), 201);
        out.push((key, body));
    }
    out
}

fn empty_dir(p: &std::path::Path) {
    for e in std::fs::read_dir(p).unwrap().flatten() {
        let path = e.path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
    }
}

#[test]
fn two_drives_emptied_are_survived_and_refilled_three_are_not() {
    let dev = Dev::start(&[]);
    let objs = objects(&dev);
    let sharded = objs.iter().filter(|(_, b)| b.len() > 16 * 1024).count();
    empty_dir(&dev.drive(1));
    empty_dir(&dev.drive(4));
    for (k, body) in &objs {
        let (s, got) = dev.get_bytes(k);
        assert_eq!(s, 200, "{k} with two drives empty");
        assert!(got == *body, "{k} read back wrong with two drives empty");
    }
    let refilled = eventually(Duration::from_secs(60), || {
        [1, 4]
            .iter()
            .all(|d| ostore_tests::files_under(&dev.drive(*d).join("shards")).len() == sharded)
    });
    assert!(refilled, "emptied drives were not refilled");
    // Files appear before the repair commits and counts them: wait for the count, then check
    // that every missing shard was rebuilt exactly once.
    let repaired = || dev.metric("ostore_shards_repaired_total") as u64;
    eventually(Duration::from_secs(30), || repaired() >= 2 * sharded as u64);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(repaired(), 2 * sharded as u64);
    // Now the refilled drives carry the data: lose two others and still read everything.
    empty_dir(&dev.drive(0));
    empty_dir(&dev.drive(2));
    for (k, body) in &objs {
        assert!(
            dev.get_bytes(k).1 == *body,
            "{k} after losing drives 0 and 2 (1 and 4 were rebuilt)"
        );
    }
    assert!(eventually(Duration::from_secs(60), || {
        [0, 2]
            .iter()
            .all(|d| ostore_tests::files_under(&dev.drive(*d).join("shards")).len() == sharded)
    }));
    // Three of six: fewer than K shards; nothing partial is served.
    empty_dir(&dev.drive(3));
    empty_dir(&dev.drive(4));
    empty_dir(&dev.drive(5));
    for (k, body) in &objs {
        let r = dev.get(k);
        if body.len() > 16 * 1024 {
            assert_eq!(r.status(), 503, "{k} with three drives empty");
            let j: serde_json::Value = r.json().unwrap();
            assert_eq!(j["error"]["code"], "InsufficientShards");
        } else {
            assert!(
                r.bytes().unwrap() == *body,
                "inline objects live in metadata"
            );
        }
    }
    // Repair gives up on them and marks them damaged; uploading the same bytes again (even
    // under another key) must replace the damaged copy, not deduplicate against it.
    let unrepairable = || dev.metric("ostore_unrepairable_total") as u64;
    assert!(eventually(Duration::from_secs(30), || unrepairable() >= sharded as u64));
    let (k, body) = objs.iter().find(|(_, b)| b.len() > 16 * 1024).unwrap();
    assert_eq!(dev.put("reupload", body.clone()).status(), 201);
    assert!(
        dev.get_bytes("reupload").1 == *body,
        "the re-upload did not replace the damaged copy"
    );
    assert!(
        dev.get_bytes(k).1 == *body,
        "the old key shares the repaired content"
    );
}

#[test]
fn a_flipped_byte_is_caught_and_repaired() {
    let dev = Dev::start(&[]);
    let body = random_bytes(7, 1_200_000);
    assert_eq!(dev.put("flip", body.clone()).status(), 201);
    let files = shard_files(&dev, DRIVES);
    let victim = files
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "0"))
        .unwrap()
        .clone();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[4096 + 1000] ^= 0x01;
    std::fs::write(&victim, &bytes).unwrap();
    let (s, got) = dev.get_bytes("flip");
    assert_eq!(s, 200);
    assert!(got == body, "corrupt block served");
    assert!(
        eventually(Duration::from_secs(30), || !victim.exists()
            && shard_files(&dev, DRIVES).len() == 6),
        "the corrupt shard was not rewritten"
    );
    // The old file goes just before the repair is counted.
    assert!(eventually(Duration::from_secs(10), || dev
        .metric("ostore_shards_repaired_total")
        >= 1.0));
    assert_eq!(dev.metric("ostore_shards_repaired_total"), 1.0);
    let degraded_before = dev.metric("ostore_degraded_reads_total");
    assert!(dev.get_bytes("flip").1 == body);
    assert_eq!(
        degraded_before,
        dev.metric("ostore_degraded_reads_total"),
        "the repaired shard still reads as bad"
    );
}

#[test]
fn truncated_body_commits_nothing() {
    let dev = Dev::start(&[]);
    for len in [1000u64, 2_000_000] {
        let before = shard_files(&dev, DRIVES).len();
        let mut s = dev.raw_put_head("trunc", len, "");
        s.write_all(&random_bytes(1, (len / 2) as usize)).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert_eq!(dev.get("trunc").status(), 404);
        assert!(eventually(Duration::from_secs(10), || shard_files(
            &dev, DRIVES
        )
        .len()
            == before));
    }
}

/// Keys of every live object with their BLAKE3 and size, through the listing API.
fn listing(dev: &Dev) -> Vec<(String, String, u64)> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = "/objects?limit=1000".to_string();
        if let Some(a) = &after {
            path.push_str(&format!("&start_after={a}"));
        }
        let (s, j) = dev.json(&path);
        assert_eq!(s, 200);
        for o in j["objects"].as_array().unwrap() {
            out.push((
                o["key"].as_str().unwrap().to_string(),
                o["blake3"].as_str().unwrap().to_string(),
                o["size"].as_u64().unwrap(),
            ));
        }
        match j["next_start_after"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => return out,
        }
    }
}

#[test]
fn kill9_at_random_moments_loses_nothing_acknowledged() {
    use std::sync::{Arc, Mutex};
    let mut dev = Dev::start(&[]);
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    for round in 0u64..6 {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut threads = Vec::new();
        for t in 0u64..4 {
            let (url, secret, acked, stop) =
                (dev.url(""), dev.secret.clone(), acked.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let c = reqwest::blocking::Client::new();
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let seed = round * 1_000_000 + t * 10_000 + i;
                    let size =
                        (blake3::hash(&seed.to_le_bytes()).as_bytes()[0] as usize) * 3000 + 1;
                    let body = random_bytes(seed, size);
                    let key = format!("crash/{round}/{t}/{i}");
                    if let Ok(r) = c
                        .put(format!("{url}/objects/{key}"))
                        .bearer_auth(&secret)
                        .body(body.clone())
                        .send()
                    {
                        if r.status() == 201 {
                            acked
                                .lock()
                                .unwrap()
                                .push((key, blake3::hash(&body).to_hex().to_string()));
                        }
                    }
                    i += 1;
                }
            }));
        }
        let wait_ms = 100 + (blake3::hash(&round.to_le_bytes()).as_bytes()[0] as u64) * 2;
        std::thread::sleep(Duration::from_millis(wait_ms));
        dev.kill9();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        dev.restart();
        // Everything acknowledged is there, byte for byte.
        for (key, h) in acked.lock().unwrap().iter() {
            let (s, got) = dev.get_bytes(key);
            assert_eq!(s, 200, "round {round}: acknowledged {key} is missing");
            assert_eq!(
                blake3::hash(&got).to_hex().as_str(),
                h,
                "round {round}: {key} changed"
            );
        }
        // Exactly the shard files of the live objects remain: none of interrupted writes.
        let objects = listing(&dev);
        let mut contents: Vec<&String> = objects
            .iter()
            .filter(|o| o.2 > 16 * 1024)
            .map(|o| &o.1)
            .collect();
        contents.sort();
        contents.dedup();
        assert_eq!(
            shard_files(&dev, DRIVES).len(),
            6 * contents.len(),
            "round {round}: leftover or missing shard files"
        );
    }
    assert!(
        acked.lock().unwrap().len() > 20,
        "too few PUTs were acknowledged to mean anything"
    );
}
