//! The stripe cache against a real `ostore dev` (one executor, so every request meets the same
//! cache): a one-off read admits nothing, a second read admits the object's stripes, later
//! reads and ranges are served from memory with the right bytes, and an overwrite, a delete or
//! a repair is never answered with what was cached before it.

use ostore_tests::{random_bytes, shard_files, Dev};
use reqwest::Method;

/// Data bytes of a 4+2 stripe.
const STRIPE: usize = 4 * (65536 - 16);

fn counters(dev: &Dev) -> (f64, f64, f64, f64) {
    (
        dev.metric("ostore_stripe_cache_hits_total"),
        dev.metric("ostore_stripe_cache_misses_total"),
        dev.metric("ostore_stripe_cache_admitted_total"),
        dev.metric("ostore_stripe_cache_bytes"),
    )
}

fn get_range(dev: &Dev, key: &str, a: usize, b: usize) -> Vec<u8> {
    let r = dev
        .req(Method::GET, &format!("/objects/{key}"))
        .header("Range", format!("bytes={a}-{}", b - 1))
        .send()
        .unwrap();
    assert_eq!(r.status(), 206);
    r.bytes().unwrap().to_vec()
}

#[test]
fn hot_objects_come_from_memory_and_never_outlive_their_bytes() {
    let dev = Dev::start(&["--cores", "1", "--stripe-cache", "64MiB"]);
    // Random bytes: stored as they are (no compression), 8 whole stripes and a part.
    let body = random_bytes(5, 8 * STRIPE + 1234);
    assert_eq!(dev.put("hot", body.clone()).status(), 201);

    // A one-off read admits nothing.
    let (st, got) = dev.get_bytes("hot");
    assert_eq!(st, 200);
    assert!(got == body);
    let (hits, misses, admitted, bytes) = counters(&dev);
    assert_eq!((hits, admitted, bytes), (0.0, 0.0, 0.0));
    assert!(misses >= 1.0, "the read looked its stripes up: {misses}");

    // The second read admits its whole stripes (the last, partial in the object but whole as
    // a stripe, too).
    let (_, got) = dev.get_bytes("hot");
    assert!(got == body);
    let (hits, _, admitted, bytes) = counters(&dev);
    assert_eq!(hits, 0.0);
    assert_eq!(admitted, 9.0, "every stripe of the object");
    assert_eq!(bytes as usize, body.len());

    // Later reads are hits, whole or ranged, and the bytes are the object's.
    let (_, got) = dev.get_bytes("hot");
    assert!(got == body);
    let (hits, ..) = counters(&dev);
    assert_eq!(hits, 9.0);
    for (a, b) in [
        (0, 1),
        (STRIPE - 5, STRIPE + 5),
        (3 * STRIPE + 17, 6 * STRIPE + 4000),
        (8 * STRIPE, body.len()),
        (100, body.len()),
    ] {
        assert!(get_range(&dev, "hot", a, b) == body[a..b], "range {a}..{b}");
    }
    let (after_ranges, ..) = counters(&dev);
    assert!(after_ranges > hits, "ranges were served from memory");

    // A repair writes new files: their stripes are looked up anew and the bytes stay right.
    let files: Vec<_> = shard_files(&dev, 6)
        .into_iter()
        .filter(|p| std::fs::metadata(p).unwrap().len() > 2 * 65536)
        .collect();
    assert!(!files.is_empty());
    std::fs::remove_file(&files[0]).unwrap();
    let report = dev.osctl_json(&["scrub", "--wait"]);
    assert_eq!(report["repaired"], 1, "{report}");
    let (_, misses_before, ..) = counters(&dev);
    let (_, got) = dev.get_bytes("hot");
    assert!(got == body);
    let (_, misses_after, ..) = counters(&dev);
    assert!(
        misses_after > misses_before,
        "after a repair, the object's stripes are new entries"
    );

    // An overwrite: the new bytes at once, never the cached ones.
    let newer = random_bytes(6, 8 * STRIPE + 1234);
    assert_eq!(dev.put("hot", newer.clone()).status(), 201);
    for _ in 0..3 {
        let (_, got) = dev.get_bytes("hot");
        assert!(got == newer, "an overwrite answered with the old bytes");
    }

    // A delete: 404, not the cached bytes.
    assert_eq!(
        dev.req(Method::DELETE, "/objects/hot")
            .send()
            .unwrap()
            .status(),
        204
    );
    assert_eq!(dev.get("hot").status(), 404);
}

#[test]
fn a_zero_stripe_cache_holds_nothing() {
    let dev = Dev::start(&["--cores", "1", "--stripe-cache", "0"]);
    let body = random_bytes(7, 3 * STRIPE);
    assert_eq!(dev.put("cold", body.clone()).status(), 201);
    for _ in 0..4 {
        let (_, got) = dev.get_bytes("cold");
        assert!(got == body);
    }
    assert_eq!(counters(&dev), (0.0, 0.0, 0.0, 0.0));
    assert_eq!(dev.metric("ostore_stripe_cache_executor_budget_bytes"), 0.0);
}
