//! Scrub against a real `ostore dev`: a flipped byte in a block or a header, and a missing
//! shard file, are found by `osctl scrub --wait` and repaired; the next scrub is clean.

use ostore_tests::{binary, random_bytes, shard_files, Dev};
use std::io::{Read, Seek, SeekFrom, Write};
use std::process::Command;

fn scrub(dev: &Dev) -> serde_json::Value {
    let out = Command::new(binary("osctl"))
        .args([
            "--endpoint",
            &format!("http://{}", dev.http),
            "--json",
            "scrub",
            "--wait",
        ])
        .env("OSTORE_SECRET", &dev.secret)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn flip(path: &std::path::Path, at: u64) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    b[0] ^= 0x40;
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&b).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn scrub_finds_and_repairs_flipped_bytes_and_missing_shards() {
    let dev = Dev::start(&[]);
    let body = random_bytes(77, 2 * 1024 * 1024 + 5);
    assert_eq!(dev.put("s/obj", body.clone()).status(), 201);
    let other = random_bytes(78, 600_000);
    assert_eq!(dev.put("s/other", other.clone()).status(), 201);
    let clean = scrub(&dev);
    assert_eq!(
        (
            clean["contents"].as_u64(),
            clean["shards_checked"].as_u64(),
            clean["corrupt_found"].as_u64()
        ),
        (Some(2), Some(12), Some(0)),
        "{clean}"
    );
    // Damage three shard files of one object: a byte in a block, a byte in a header, and one
    // file gone (two bad shards would already be all that 4+2 tolerates, so damage at most two
    // per object: the third goes to the other object).
    let mut mine: Vec<_> = shard_files(&dev, 6)
        .into_iter()
        .filter(|p| std::fs::metadata(p).unwrap().len() > 512 * 1024)
        .collect();
    mine.sort();
    assert_eq!(mine.len(), 6, "the big object's six shard files");
    flip(&mine[0], 4096 + 70_000);
    flip(&mine[1], 100);
    let small: Vec<_> = shard_files(&dev, 6)
        .into_iter()
        .filter(|p| std::fs::metadata(p).unwrap().len() <= 512 * 1024)
        .collect();
    std::fs::remove_file(&small[0]).unwrap();
    let r = scrub(&dev);
    assert_eq!(r["corrupt_found"], 3, "{r}");
    assert_eq!(r["repaired"], 3, "{r}");
    assert_eq!(r["unrepairable"], 0, "{r}");
    let again = scrub(&dev);
    assert_eq!(
        again["corrupt_found"], 0,
        "the second scrub is clean: {again}"
    );
    assert_eq!(again["shards_checked"], 12);
    assert!(dev.get_bytes("s/obj").1 == body);
    assert!(dev.get_bytes("s/other").1 == other);
    assert_eq!(
        dev.metric("ostore_degraded_reads_total"),
        0.0,
        "reads after the scrub need no parity"
    );
    assert!(dev.metric("ostore_scrub_shards_checked_total") >= 36.0);
}
