//! A multi-GiB object streams through `ostore dev` with the server's memory staying flat; read
//! again and again, the server holds no more than its stripe cache on top.
//! `OSTORE_TEST_BIG_BYTES` sets the size (default 2 GiB).

use ostore_tests::{rss_bytes, sample_rss, Dev, RandomReader};
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Upper bound on the server's resident memory while moving the object; the object is 2 GiB.
const RSS_BYTES_MAX: u64 = 256 << 20;
/// The stripe cache the server is given (`--stripe-cache`).
const CACHE_BYTES: u64 = 128 << 20;

/// GETs `key` and returns its length and BLAKE3.
fn read_all(dev: &Dev, key: &str) -> (u64, blake3::Hash) {
    let mut resp = dev.get(key);
    assert_eq!(resp.status(), 200);
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = resp.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    (n, h.finalize())
}

#[test]
fn multi_gib_round_trip_with_flat_memory() {
    let size: u64 = std::env::var("OSTORE_TEST_BIG_BYTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2 << 30);
    let dev = Dev::start(&["--stripe-cache", "128MiB"]);
    let pid = dev.pid();
    let baseline = rss_bytes(pid);

    let expect = {
        let mut h = blake3::Hasher::new();
        std::io::copy(&mut RandomReader::new(99, size), &mut h).unwrap();
        h.finalize()
    };

    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = sample_rss(pid, stop.clone(), peak.clone());
    let body = reqwest::blocking::Body::sized(RandomReader::new(99, size), size);
    let r = dev.put("huge", body);
    assert_eq!(r.status(), 201);
    let j: serde_json::Value = r.json().unwrap();
    assert_eq!(j["blake3"], expect.to_hex().as_str());
    assert_eq!(j["size"], size);
    let put_peak = peak.swap(0, Ordering::Relaxed);

    let (n, got) = read_all(&dev, "huge");
    let get_peak = peak.swap(0, Ordering::Relaxed);
    // Read twice more: the second read asks for every stripe again, so stripes enter the cache
    // until it is full; the third is served partly from it.
    for _ in 0..2 {
        assert_eq!(read_all(&dev, "huge"), (size, expect), "a repeated GET");
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let cached_peak = peak.load(Ordering::Relaxed);
    assert_eq!(n, size);
    assert_eq!(got, expect, "GET returned different bytes");
    let cached = dev.metric("ostore_stripe_cache_bytes") as u64;
    assert!(cached > 0 && cached <= CACHE_BYTES, "cache holds {cached}");
    eprintln!(
        "RSS: baseline {} MiB, peak during PUT {} MiB, during GET {} MiB, during repeated GETs {} MiB (cache {} MiB), object {} MiB",
        baseline >> 20,
        put_peak >> 20,
        get_peak >> 20,
        cached_peak >> 20,
        cached >> 20,
        size >> 20
    );
    assert!(
        put_peak < RSS_BYTES_MAX,
        "PUT peak RSS {} MiB",
        put_peak >> 20
    );
    assert!(
        get_peak < RSS_BYTES_MAX,
        "GET peak RSS {} MiB",
        get_peak >> 20
    );
    assert!(
        cached_peak < RSS_BYTES_MAX + CACHE_BYTES,
        "peak RSS over repeated GETs {} MiB, more than the cache over the streaming bound",
        cached_peak >> 20
    );
}
