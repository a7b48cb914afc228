//! Scrub against a real `ostore dev`: a flipped byte in a block or a header, and a missing
//! shard file, are found by `osctl scrub --wait` and repaired; the next scrub is clean.

use ostore_tests::{flip, random_bytes, shard_files, Dev};

/// `osctl --json scrub --wait` against `dev`.
fn run_scrub(dev: &Dev) -> std::process::Output {
    dev.osctl(&["scrub", "--wait"])
}

fn scrub(dev: &Dev) -> serde_json::Value {
    let out = run_scrub(dev);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
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

fn osctl(dev: &Dev, args: &[&str]) -> serde_json::Value {
    dev.osctl_json(args)
}

fn drives(status: &serde_json::Value) -> Vec<serde_json::Value> {
    status["drives"].as_array().unwrap().clone()
}

#[test]
fn the_continuous_scrub_finds_a_flipped_byte_and_the_next_pass_is_clean() {
    let dev = Dev::start(&[]);
    let body = random_bytes(5, 3 * 1024 * 1024);
    assert_eq!(dev.put("c/obj", body.clone()).status(), 201);
    let mut files = shard_files(&dev, 6);
    files.sort();
    flip(&files[2], 4096 + 123_456);
    // Nothing is checked before the schedule allows (the first pass, over an empty store,
    // ended at start-up; an hour's rest follows by default).
    let s = osctl(&dev, &["scrub-schedule"]);
    assert!(
        drives(&s)
            .iter()
            .all(|d| d["passes"] == 1 && d["corrupt_found_total"] == 0),
        "{s}"
    );
    osctl(
        &dev,
        &["scrub-schedule", "--rate", "256MiB", "--pause", "0s"],
    );
    let ok = ostore_tests::eventually(std::time::Duration::from_secs(60), || {
        dev.metric("ostore_scrub_corrupt_total") >= 1.0
    });
    assert!(ok, "the continuous scrub did not find the flipped byte");
    // The repair queue rebuilds the shard; then a whole pass of every drive is clean.
    let ok = ostore_tests::eventually(std::time::Duration::from_secs(60), || {
        let s = osctl(&dev, &["scrub-schedule"]);
        drives(&s).iter().all(|d| {
            d["last_pass"]["corrupt_found"] == 0
                && d["last_pass"]["shards"] == 1
                && d["passes"].as_u64() > Some(3)
        })
    });
    assert!(
        ok,
        "no clean pass after the repair: {}",
        osctl(&dev, &["scrub-schedule"])
    );
    // Only the damaged drive reported corruption (once per pass until the repair landed).
    let s = osctl(&dev, &["scrub-schedule"]);
    let damaged: Vec<String> = drives(&s)
        .iter()
        .filter(|d| d["corrupt_found_total"].as_u64() > Some(0))
        .map(|d| d["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(damaged.len(), 1, "{s}");
    assert!(
        files[2].starts_with(&damaged[0]),
        "{damaged:?} vs {:?}",
        files[2]
    );
    assert!(dev.get_bytes("c/obj").1 == body);
    assert_eq!(dev.metric("ostore_degraded_reads_total"), 0.0);
    // Per-drive gauges: health, shards held, scrub passes and progress.
    for d in 0..6 {
        assert_eq!(
            dev.metric(&format!("ostore_drive_healthy{{drive=\"{d}\"}}")),
            1.0
        );
        assert_eq!(
            dev.metric(&format!("ostore_drive_shards{{drive=\"{d}\"}}")),
            1.0
        );
        assert!(dev.metric(&format!("ostore_scrub_passes{{drive=\"{d}\"}}")) > 3.0);
        let r = dev.metric(&format!(
            "ostore_scrub_pass_progress_ratio{{drive=\"{d}\"}}"
        ));
        assert!((0.0..=1.0).contains(&r));
    }
    assert!(dev.metric("ostore_scrub_bytes_total") > 3.0 * 3.0 * 1024.0 * 1024.0 / 4.0);
    assert!(dev.metric("ostore_shards_repaired_total") >= 1.0);
}

#[test]
fn the_scrub_cursor_survives_kill_9() {
    let mut dev = Dev::start(&[]);
    for i in 0..8u64 {
        assert_eq!(
            dev.put(&format!("k/{i}"), random_bytes(i, 4 << 20))
                .status(),
            201
        );
    }
    // About 8 MiB per drive at 1 MiB/s (the six drive directories share one device, so its rate
    // is six times that): a pass takes ~8 s.
    osctl(&dev, &["scrub-schedule", "--rate", "6MiB", "--pause", "0s"]);
    let mut seen = Vec::new();
    let ok = ostore_tests::eventually(std::time::Duration::from_secs(30), || {
        seen = drives(&osctl(&dev, &["scrub-schedule"]));
        seen.iter().all(|d| d["pass"]["shards"].as_u64() >= Some(2))
    });
    assert!(ok, "the pass did not progress: {seen:?}");
    dev.kill9();
    dev.restart_same_address();
    let after = drives(&osctl(&dev, &["scrub-schedule"]));
    for (b, a) in seen.iter().zip(&after) {
        assert_eq!(a["passes"], b["passes"], "{a}");
        assert_eq!(
            a["pass"]["started"], b["pass"]["started"],
            "the same pass goes on: {a}"
        );
        assert!(
            a["pass"]["shards"].as_u64() >= b["pass"]["shards"].as_u64(),
            "{b} then {a}"
        );
    }
    // The pass ends having checked every shard on each drive exactly once.
    let ok = ostore_tests::eventually(std::time::Duration::from_secs(60), || {
        let now = drives(&osctl(&dev, &["scrub-schedule"]));
        now.iter()
            .zip(&seen)
            .all(|(n, b)| n["passes"].as_u64() > b["passes"].as_u64())
    });
    assert!(ok, "the pass did not finish");
    for d in drives(&osctl(&dev, &["scrub-schedule"])) {
        assert_eq!(d["last_pass"]["shards"], d["shards_on_drive"], "{d}");
        assert_eq!(d["shards_on_drive"], 8, "{d}");
    }
}

/// Three of six shards damaged late in the object (more than the two 4+2 tolerates): scrub
/// reports the object unrepairable, and from then on GET answers 503 before sending anything.
/// It once answered 200 and then a truncated body, since the first stripes still read well.
#[test]
fn an_object_scrub_found_unrepairable_answers_503_not_a_truncated_200() {
    let dev = Dev::start(&["--compression", "off"]);
    let body = random_bytes(79, 3 * 1024 * 1024);
    assert_eq!(dev.put("s/lost", body.clone()).status(), 201);
    let mut files = shard_files(&dev, 6);
    files.sort();
    assert_eq!(files.len(), 6);
    // A byte in block 10 of three shard files (the header takes the first 4 KiB).
    for f in &files[..3] {
        flip(f, 4096 + 10 * 65536 + 100);
    }
    let out = run_scrub(&dev);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["unrepairable"], 1, "{r}");
    let got = dev.get("s/lost");
    assert_eq!(got.status(), 503);
    let e: serde_json::Value = got.json().unwrap();
    assert_eq!(e["error"]["code"], "InsufficientShards", "{e}");
    let head = dev
        .req(reqwest::Method::HEAD, "/objects/s/lost")
        .send()
        .unwrap();
    assert_eq!(head.status(), 503);
    // The next upload of the same bytes replaces the damaged copy, and it reads again.
    assert_eq!(dev.put("s/again", body.clone()).status(), 201);
    assert!(dev.get_bytes("s/lost").1 == body);
}
