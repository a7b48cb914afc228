//! zstd at rest against a real `ostore dev`: what compresses is stored as seekable zstd frames
//! and costs less on the drives; Range reads, `Accept-Encoding: zstd` and gzip give the
//! original bytes back; what does not compress is stored as it is.

use ostore_tests::{allocated_on_drives, json_lines, random_bytes, Dev};
use reqwest::Method;
use std::io::Read;

const MIB: usize = 1024 * 1024;

fn locate(dev: &Dev, body: &[u8]) -> serde_json::Value {
    let (s, j) = dev.json(&format!("/locate/{}", blake3::hash(body).to_hex()));
    assert_eq!(s, 200, "{j}");
    j
}

#[test]
fn json_lines_cost_under_60_percent_on_the_drives_and_read_back_every_way() {
    let dev = Dev::start(&[]);
    let body = json_lines(1, 24 * MIB);
    let before = allocated_on_drives(&dev, 6);
    let r = dev.put("logs/app.jsonl", body.clone());
    assert_eq!(r.status(), 201);
    let after = allocated_on_drives(&dev, 6);
    let cost = after - before;
    let j = locate(&dev, &body);
    let stored = j["stored_size"].as_u64().unwrap();
    eprintln!(
        "24 MiB of JSON lines: stored form {stored} bytes ({:.3} of the object), {cost} bytes on the drives with parity ({:.3})",
        stored as f64 / body.len() as f64,
        cost as f64 / body.len() as f64
    );
    assert_eq!(j["size"], body.len());
    assert_eq!(j["encoding"], "zstd");
    assert!(
        (cost as f64) < 0.6 * body.len() as f64,
        "{cost} bytes on the drives for {} bytes",
        body.len()
    );

    // Whole.
    let (s, got) = dev.get_bytes("logs/app.jsonl");
    assert_eq!(s, 200);
    assert!(got == body, "the whole object differs");

    // Ranges: in the middle, across frame boundaries, one byte, the tail.
    for (a, b) in [
        (10_000_000usize, 10_999_999usize),
        (256 * 1024 - 3, 256 * 1024 + 2),
        (12_345_678, 12_345_678),
        (body.len() - 1000, body.len() - 1),
        (0, 0),
    ] {
        let r = dev
            .req(Method::GET, "/objects/logs/app.jsonl")
            .header("range", format!("bytes={a}-{b}"))
            .header("accept-encoding", "zstd, gzip")
            .send()
            .unwrap();
        assert_eq!(r.status(), 206);
        assert!(
            r.headers().get("content-encoding").is_none(),
            "a 206 is never encoded"
        );
        assert_eq!(
            r.headers()["content-range"].to_str().unwrap(),
            format!("bytes {a}-{b}/{}", body.len())
        );
        assert!(r.bytes().unwrap() == body[a..=b], "range {a}-{b}");
    }

    // The stored zstd stream as it is, decodable by any zstd decoder.
    let r = dev
        .req(Method::GET, "/objects/logs/app.jsonl")
        .header("accept-encoding", "gzip;q=0.5, zstd")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-encoding"], "zstd");
    assert_eq!(r.headers()["vary"], "accept-encoding");
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(etag, format!("W/\"{}\"", blake3::hash(&body).to_hex()));
    assert_eq!(
        r.headers()["content-length"].to_str().unwrap(),
        stored.to_string()
    );
    let z = r.bytes().unwrap();
    assert_eq!(z.len() as u64, stored);
    assert!(
        zstd::stream::decode_all(&z[..]).unwrap() == body,
        "zstd decodes to the object"
    );

    // gzip for a client that speaks only gzip.
    let r = dev
        .req(Method::GET, "/objects/logs/app.jsonl")
        .header("accept-encoding", "gzip")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let gz = r.bytes().unwrap();
    assert!(gz.len() < body.len() / 2);
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut plain)
        .unwrap();
    assert!(plain == body, "gzip decodes to the object");

    // HEAD describes the same representations.
    let r = dev
        .req(Method::HEAD, "/objects/logs/app.jsonl")
        .header("accept-encoding", "zstd")
        .send()
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "zstd");
    assert_eq!(
        r.headers()["content-length"].to_str().unwrap(),
        stored.to_string()
    );
    let r = dev
        .req(Method::HEAD, "/objects/logs/app.jsonl")
        .send()
        .unwrap();
    assert!(r.headers().get("content-encoding").is_none());
    assert_eq!(
        r.headers()["content-length"].to_str().unwrap(),
        body.len().to_string()
    );
    // `identity` or q=0 gets the plain object.
    let r = dev
        .req(Method::GET, "/objects/logs/app.jsonl")
        .header("accept-encoding", "zstd;q=0, identity")
        .send()
        .unwrap();
    assert!(r.headers().get("content-encoding").is_none());
    assert!(r.bytes().unwrap() == body);

    // After a restart, the same.
    let mut dev = dev;
    dev.restart();
    let (s, got) = dev.get_bytes("logs/app.jsonl");
    assert_eq!(s, 200);
    assert!(got == body, "after a restart");
}

#[test]
fn what_does_not_compress_is_stored_as_it_is() {
    let dev = Dev::start(&[]);
    let body = random_bytes(3, 3 * MIB + 17);
    assert_eq!(dev.put("random", body.clone()).status(), 201);
    let j = locate(&dev, &body);
    assert_eq!(j["encoding"], "identity");
    assert_eq!(j["stored_size"], body.len());
    let r = dev
        .req(Method::GET, "/objects/random")
        .header("accept-encoding", "zstd, gzip")
        .send()
        .unwrap();
    assert!(r.headers().get("content-encoding").is_none());
    assert_eq!(
        r.headers()["etag"].to_str().unwrap(),
        format!("\"{}\"", blake3::hash(&body).to_hex())
    );
    assert!(r.bytes().unwrap() == body);
}

#[test]
fn compression_off_stores_everything_as_it_is() {
    let dev = Dev::start(&["--compression", "off"]);
    let body = json_lines(2, 2 * MIB);
    assert_eq!(dev.put("logs", body.clone()).status(), 201);
    let j = locate(&dev, &body);
    assert_eq!(j["encoding"], "identity");
    assert_eq!(j["stored_size"], body.len());
    assert!(dev.get_bytes("logs").1 == body);
}
