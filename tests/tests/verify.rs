//! Every byte a GET sends is verified against the content's BLAKE3 (its tree, stored after its
//! bytes), against a real `ostore dev`: a block rewritten on a drive *together with its CRC*
//! passes every per-block check, yet the GET returns the object's bytes, whole and ranged,
//! raw zstd included, and the shard is rebuilt; the on-demand scrub finds such a block on its
//! own.

use ostore_tests::{flip, random_bytes, shard_files, Dev};
use ostore_wire::shard::{block_len_on_disk, block_offset, seal_block, ShardHeader, HEADER_BYTES};
use reqwest::Method;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Data bytes of a 4+2 stripe.
const STRIPE: usize = 4 * (65536 - 16);

/// The shard files of the content whose BLAKE3 is `h`, with their headers.
fn files_of(dev: &Dev, h: &str) -> Vec<(PathBuf, ShardHeader)> {
    let mut out = Vec::new();
    for p in shard_files(dev, 6) {
        let mut b = vec![0u8; HEADER_BYTES];
        let Ok(mut f) = std::fs::File::open(&p) else {
            continue;
        };
        if f.read_exact(&mut b).is_err() {
            continue;
        }
        if let Ok(hd) = ShardHeader::decode(&b) {
            if hex::encode(hd.blake3) == h {
                out.push((p, hd));
            }
        }
    }
    out
}

/// Rewrites block `index` of a shard file with different bytes and a CRC that matches them:
/// what a firmware bug, a misdirected write or someone with access to the drive leaves.
fn rewrite_block(path: &std::path::Path, tag: u32, index: u64, payload: usize) {
    rewrite_bytes(path, tag, index, payload, 100..200);
}

/// As [`rewrite_block`], changing the block's payload bytes `at`.
fn rewrite_bytes(
    path: &std::path::Path,
    tag: u32,
    index: u64,
    payload: usize,
    at: std::ops::Range<usize>,
) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut block = vec![0u8; block_len_on_disk(payload)];
    f.seek(SeekFrom::Start(block_offset(index))).unwrap();
    f.read_exact(&mut block).unwrap();
    for b in &mut block[at] {
        *b ^= 0x5a;
    }
    seal_block(&mut block, payload, index as u32, tag);
    f.seek(SeekFrom::Start(block_offset(index))).unwrap();
    f.write_all(&block).unwrap();
    f.sync_all().unwrap();
}

fn blake3_of(dev: &Dev, key: &str) -> String {
    let r = dev
        .req(Method::HEAD, &format!("/objects/{key}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // The ETag of an object written whole is its BLAKE3.
    r.headers()["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .to_string()
}

/// Damages block 0 of data shard 0 of `key`, returning that file.
fn damage(dev: &Dev, key: &str) -> PathBuf {
    damage_shard(dev, key, 0)
}

/// Damages block 0 of shard `index` of `key` (its CRC rewritten to match), returning that file.
fn damage_shard(dev: &Dev, key: &str, index: u8) -> PathBuf {
    let h = blake3_of(dev, key);
    let files = files_of(dev, &h);
    assert_eq!(files.len(), 6, "six shard files of {key}");
    let (path, hd) = files
        .into_iter()
        .find(|(_, hd)| hd.shard_index == index)
        .expect("the shard");
    rewrite_block(&path, hd.file_tag, 0, 65536 - 16);
    path
}

fn wait_gone(path: &std::path::Path, what: &str) {
    let t = Instant::now();
    while path.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{what}: the damaged shard file was not replaced within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn get(dev: &Dev, key: &str, headers: &[(&str, &str)]) -> (u16, Vec<u8>) {
    let mut r = dev.req(Method::GET, &format!("/objects/{key}"));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().unwrap();
    let st = r.status().as_u16();
    (st, r.bytes().unwrap().to_vec())
}

#[test]
fn a_block_rewritten_with_its_crc_is_caught_served_right_and_repaired() {
    let dev = Dev::start(&["--cores", "1", "--stripe-cache", "0"]);
    // Random bytes: stored as they are, 5 stripes and a part.
    let body = random_bytes(21, 5 * STRIPE + 777);
    assert_eq!(dev.put("v/plain", body.clone()).status(), 201);
    let path = damage(&dev, "v/plain");

    // Every per-block check passes, yet a GET sends the object's bytes.
    let (st, got) = get(&dev, "v/plain", &[]);
    assert_eq!(st, 200);
    assert!(got == body, "the GET sent the rewritten block");
    for (a, b) in [(0, 1), (150, 160), (60_000, 70_000), (0, body.len())] {
        let range = format!("bytes={a}-{}", b - 1);
        let (st, got) = get(&dev, "v/plain", &[("Range", &range)]);
        assert_eq!(st, 206);
        assert!(got == body[a..b], "range {a}..{b}");
    }
    assert!(dev.metric("ostore_degraded_reads_total") >= 1.0);
    // The GET reported the shard: the repair worker rebuilds it (a new file replaces it).
    wait_gone(&path, "after a GET");
    let report = dev.osctl_json(&["scrub", "--wait"]);
    assert_eq!(report["corrupt_found"], 0, "{report}");
    assert!(get(&dev, "v/plain", &[]).1 == body);

    // A byte flipped without its CRC (bit rot): a client read takes blocks in place without
    // their CRC, as the tree checks every byte, so the tree catches it, the group is read again
    // with CRCs, and the shard whose CRC fails is the one read around and rebuilt.
    let body = random_bytes(23, 2 * STRIPE + 5);
    assert_eq!(dev.put("v/rot", body.clone()).status(), 201);
    let h = blake3_of(&dev, "v/rot");
    let (path, _) = files_of(&dev, &h)
        .into_iter()
        .find(|(_, hd)| hd.shard_index == 2)
        .expect("data shard 2");
    flip(&path, block_offset(1) + 4321);
    let (st, got) = get(&dev, "v/rot", &[]);
    assert_eq!(st, 200);
    assert!(got == body, "bit rot was sent");
    wait_gone(&path, "bit rot, after a GET");
    assert!(get(&dev, "v/rot", &[]).1 == body);

    // Two shards rewritten with their CRCs inside the same group (the first 64 KiB of the
    // object: data shard 0's first block and the first bytes of shard 1's): no single shard
    // read around gives the group's bytes, a pair does, and both are rebuilt.
    let body = random_bytes(24, 2 * STRIPE + 9);
    assert_eq!(dev.put("v/two", body.clone()).status(), 201);
    let h = blake3_of(&dev, "v/two");
    let files = files_of(&dev, &h);
    let mut damaged = Vec::new();
    for (index, at) in [(0u8, 100..200), (1, 0..8)] {
        let (path, hd) = files
            .iter()
            .find(|(_, hd)| hd.shard_index == index)
            .expect("data shard")
            .clone();
        rewrite_bytes(&path, hd.file_tag, 0, 65536 - 16, at);
        damaged.push(path);
    }
    let (st, got) = get(&dev, "v/two", &[]);
    assert_eq!(st, 200);
    assert!(got == body, "two rewritten blocks in one group were sent");
    for path in &damaged {
        wait_gone(path, "two bad shards, after a GET");
    }
    assert!(get(&dev, "v/two", &[]).1 == body);
    let report = dev.osctl_json(&["scrub", "--wait"]);
    assert_eq!(report["corrupt_found"], 0, "{report}");
}

#[test]
fn the_scrub_finds_a_block_rewritten_with_its_crc_and_zstd_reads_stay_right() {
    let dev = Dev::start(&["--cores", "1", "--stripe-cache", "0"]);
    let body = random_bytes(22, 3 * STRIPE + 99);
    assert_eq!(dev.put("v/scrubbed", body.clone()).status(), 201);
    let path = damage(&dev, "v/scrubbed");
    // Nothing reads it: the scrub finds it by the tree (every CRC holds) and rebuilds it.
    let report = dev.osctl_json(&["scrub", "--wait"]);
    assert_eq!(report["corrupt_found"], 1, "{report}");
    assert_eq!(report["repaired"], 1, "{report}");
    assert!(!path.exists(), "the damaged file was replaced");
    assert!(get(&dev, "v/scrubbed", &[]).1 == body);
    let report = dev.osctl_json(&["scrub", "--wait"]);
    assert_eq!(report["corrupt_found"], 0, "{report}");

    // A parity block rewritten with its CRC: no read of the object uses it, the data verifies,
    // and the scrub finds that the parity is not the data's encoding.
    let path = damage_shard(&dev, "v/scrubbed", 4);
    assert!(get(&dev, "v/scrubbed", &[]).1 == body);
    let report = dev.osctl_json(&["scrub", "--wait"]);
    assert_eq!(report["corrupt_found"], 1, "{report}");
    assert_eq!(report["repaired"], 1, "{report}");
    wait_gone(&path, "a parity shard, after a scrub");
    let report = dev.osctl_json(&["scrub", "--wait"]);
    assert_eq!(report["corrupt_found"], 0, "{report}");

    // A compressible object (stored as zstd frames): decoded reads verify the object's bytes.
    let text: Vec<u8> = (0..400_000u32)
        .flat_map(|i| format!("{{\"row\":{i},\"name\":\"item-{}\"}}\n", i % 977).into_bytes())
        .take(3 << 20)
        .collect();
    assert_eq!(dev.put("v/text", text.clone()).status(), 201);
    let h = blake3_of(&dev, "v/text");
    let stored = files_of(&dev, &h);
    assert_eq!(stored.len(), 6);
    let path = damage(&dev, "v/text");
    let (st, got) = get(&dev, "v/text", &[]);
    assert_eq!(st, 200);
    assert!(got == text, "a decoded GET sent bytes that fail the tree");
    let range = "bytes=1000-299999";
    let (st, got) = get(&dev, "v/text", &[("Range", range)]);
    assert_eq!(st, 206);
    assert!(got == text[1000..300_000]);
    wait_gone(&path, "zstd, after a GET");
    // The stored frames as they are, once repaired: they decode to the object.
    let (st, raw) = get(&dev, "v/text", &[("Accept-Encoding", "zstd")]);
    assert_eq!(st, 200);
    let decoded = zstd::stream::decode_all(&raw[..]).unwrap();
    assert!(decoded == text);
}

#[test]
fn a_recovered_group_never_reaches_the_stripe_cache() {
    let dev = Dev::start(&["--cores", "1", "--stripe-cache", "64MiB"]);
    // The object's last group lies wholly in its last stripe, which the cache may hold.
    let body = random_bytes(25, 300_000);
    assert_eq!(dev.put("v/last", body.clone()).status(), 201);
    let h = blake3_of(&dev, "v/last");
    let (path, hd) = files_of(&dev, &h)
        .into_iter()
        .find(|(_, hd)| hd.shard_index == 0)
        .expect("data shard 0");
    // Stripe 1 holds bytes 262,080.. of the object and then its outboard (5 groups, 160
    // bytes): 38,080 bytes, so chunks of 9,520. Byte 100 of shard 0's block 1 is the object's
    // byte 262,180, in its last group (262,144..300,000).
    rewrite_bytes(&path, hd.file_tag, 1, 9_520, 100..101);
    for round in 0..4 {
        let (st, got) = get(&dev, "v/last", &[]);
        assert_eq!(st, 200);
        assert!(got == body, "round {round}: a GET sent the rewritten byte");
        let range = "bytes=270000-299999";
        let (st, got) = get(&dev, "v/last", &[("Range", range)]);
        assert_eq!(st, 206);
        assert!(
            got == body[270_000..],
            "round {round}: a range sent the rewritten byte"
        );
    }
}
