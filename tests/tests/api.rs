//! The native HTTP API against a real `ostore dev`: round trips at every size boundary that
//! matters, ranges, versions, listing, conditional requests, and the contract's errors.

use ostore_tests::{random_bytes, Dev};
use reqwest::Method;

/// Payload bytes per 64 KiB block and the data bytes of a 4+2 stripe.
const P: usize = 65536 - 16;
const STRIPE: usize = 4 * P;
const INLINE_MAX: usize = 16 * 1024;

#[test]
fn round_trips_at_size_boundaries() {
    let dev = Dev::start(&[]);
    let sizes = [
        0,
        1,
        2,
        INLINE_MAX - 1,
        INLINE_MAX,
        INLINE_MAX + 1,
        P - 1,
        P,
        P + 1,
        STRIPE - 1,
        STRIPE,
        STRIPE + 1,
        4 * STRIPE + 3,
        5 * STRIPE - 7,
        3 * 1024 * 1024 + 12345,
    ];
    for (i, &size) in sizes.iter().enumerate() {
        let body = random_bytes(i as u64, size);
        let key = format!("size/{size}");
        let r = dev.put(&key, body.clone());
        assert_eq!(r.status(), 201, "PUT {size}");
        let etag = r.headers()["etag"].to_str().unwrap().to_string();
        let j: serde_json::Value = r.json().unwrap();
        assert_eq!(j["size"], size);
        assert_eq!(j["blake3"], blake3::hash(&body).to_hex().as_str());
        assert_eq!(etag, format!("\"{}\"", blake3::hash(&body).to_hex()));
        let (st, got) = dev.get_bytes(&key);
        assert_eq!(st, 200);
        assert!(got == body, "GET {size} returned different bytes");
        let h = dev
            .req(Method::HEAD, &format!("/objects/{key}"))
            .send()
            .unwrap();
        assert_eq!(h.status(), 200);
        assert_eq!(h.headers()["content-length"], size.to_string().as_str());
        assert_eq!(h.headers()["accept-ranges"], "bytes");
        assert!(h.headers().contains_key("last-modified"));
    }
}

fn range(dev: &Dev, key: &str, spec: &str) -> (u16, Vec<u8>, Option<String>) {
    let r = dev
        .req(Method::GET, &format!("/objects/{key}"))
        .header("Range", spec)
        .send()
        .unwrap();
    let s = r.status().as_u16();
    let cr = r
        .headers()
        .get("content-range")
        .map(|v| v.to_str().unwrap().to_string());
    (s, r.bytes().unwrap().to_vec(), cr)
}

#[test]
fn ranges_at_block_and_stripe_boundaries() {
    let dev = Dev::start(&[]);
    let size = 2 * STRIPE + 1000;
    let body = random_bytes(42, size);
    assert_eq!(dev.put("r", body.clone()).status(), 201);
    let cases: Vec<(usize, usize)> = vec![
        (0, 1),
        (P - 1, P + 1),
        (P, 2 * P),
        (STRIPE - 1, STRIPE + 1),
        (STRIPE - 5, 2 * STRIPE + 5),
        (size - 1, size),
        (12345, 12346),
        (0, size),
    ];
    for (a, b) in cases {
        let (s, got, cr) = range(&dev, "r", &format!("bytes={a}-{}", b - 1));
        assert_eq!(s, 206, "{a}-{b}");
        assert!(got == body[a..b], "bytes {a}-{b}");
        assert_eq!(cr.unwrap(), format!("bytes {a}-{}/{size}", b - 1));
    }
    let (s, got, _) = range(&dev, "r", "bytes=-100");
    assert_eq!((s, &got[..]), (206, &body[size - 100..]));
    let (s, got, _) = range(&dev, "r", &format!("bytes={}-", size - 3));
    assert_eq!((s, &got[..]), (206, &body[size - 3..]));
    let (s, got, _) = range(&dev, "r", &format!("bytes=10-{}", size * 2));
    assert_eq!((s, &got[..]), (206, &body[10..]));
    let (s, body416, cr) = range(&dev, "r", &format!("bytes={size}-"));
    assert_eq!(s, 416);
    assert_eq!(cr.unwrap(), format!("bytes */{size}"));
    let e: serde_json::Value = serde_json::from_slice(&body416).unwrap();
    assert_eq!(e["error"]["code"], "InvalidRange");
    // A small (inline) object and an empty one.
    dev.put("small", "hello world");
    assert_eq!(range(&dev, "small", "bytes=6-").1, b"world");
    dev.put("empty", "");
    assert_eq!(range(&dev, "empty", "bytes=0-0").0, 416);
    // Syntactically invalid ranges are ignored (RFC 9110): the whole object.
    let (s, got, _) = range(&dev, "small", "bytes=5-2");
    assert_eq!((s, &got[..]), (200, &b"hello world"[..]));
}

#[test]
fn versions_and_delete_markers() {
    let dev = Dev::start(&[]);
    let big = random_bytes(1, 300_000);
    let v1: serde_json::Value = dev.put("k", "one").json().unwrap();
    let v2: serde_json::Value = dev.put("k", big.clone()).json().unwrap();
    assert!(v2["version"].as_u64() > v1["version"].as_u64());
    let r = dev.get("k");
    assert_eq!(r.headers()["x-version"], v2["version"].to_string().as_str());
    assert!(r.bytes().unwrap() == big);
    let old = dev
        .req(
            Method::GET,
            &format!("/objects/k?version={}", v1["version"]),
        )
        .send()
        .unwrap();
    assert_eq!(old.text().unwrap(), "one");
    let d = dev.req(Method::DELETE, "/objects/k").send().unwrap();
    assert_eq!(d.status(), 204);
    let (s, j) = dev.json("/objects/k");
    assert_eq!((s, j["error"]["code"].as_str()), (404, Some("NoSuchKey")));
    let (s, vs) = dev.json("/versions/k");
    assert_eq!(s, 200);
    let list = vs["versions"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["delete_marker"], true);
    assert_eq!(list[1]["version"], v2["version"]);
    assert_eq!(list[2]["version"], v1["version"]);
    assert!(list[0]["version"].as_u64() > list[1]["version"].as_u64());
    // Removing the marker brings the previous version back.
    let marker = list[0]["version"].as_u64().unwrap();
    let r = dev
        .req(Method::DELETE, &format!("/objects/k?version={marker}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(dev.get_bytes("k").1 == big);
    // Removing a version for good; versions are never reused.
    let r = dev
        .req(
            Method::DELETE,
            &format!("/objects/k?version={}", v2["version"]),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(dev.get_bytes("k").1, b"one");
    let v4: serde_json::Value = dev.put("k", "four").json().unwrap();
    assert!(v4["version"].as_u64().unwrap() > marker);
    let r = dev
        .req(
            Method::DELETE,
            &format!("/objects/k?version={}", v2["version"]),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    let (s, j) = dev.json("/versions/never-written");
    assert_eq!((s, j["error"]["code"].as_str()), (404, Some("NoSuchKey")));
    let (s, j) = dev.json("/objects/k?version=999");
    assert_eq!(
        (s, j["error"]["code"].as_str()),
        (404, Some("NoSuchVersion"))
    );
}

#[test]
fn listing_paginates_in_key_order() {
    let dev = Dev::start(&[]);
    let mut keys: Vec<String> = (0..25).map(|i| format!("list/{i:03}")).collect();
    keys.push("list/a b".into());
    keys.push("other/x".into());
    for k in &keys {
        assert_eq!(dev.put(&k.replace(' ', "%20"), k.clone()).status(), 201);
    }
    dev.req(Method::DELETE, "/objects/list/005").send().unwrap();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = "/objects?prefix=list/&limit=7".to_string();
        if let Some(a) = &after {
            path.push_str(&format!("&start_after={}", a.replace(' ', "%20")));
        }
        let (s, j) = dev.json(&path);
        assert_eq!(s, 200);
        let objs = j["objects"].as_array().unwrap();
        assert!(objs.len() <= 7);
        for o in objs {
            seen.push(o["key"].as_str().unwrap().to_string());
            assert!(
                o["version"].as_u64().unwrap() >= 1 && o["blake3"].as_str().unwrap().len() == 64
            );
        }
        match j["next_start_after"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    let mut want: Vec<String> = keys
        .iter()
        .filter(|k| k.starts_with("list/") && *k != "list/005")
        .cloned()
        .collect();
    want.sort();
    assert_eq!(seen, want);
    let (s, _) = dev.json("/objects?limit=0");
    assert_eq!(s, 400);
    let (s, _) = dev.json("/objects?limit=1001");
    assert_eq!(s, 400);
}

#[test]
fn conditional_requests() {
    let dev = Dev::start(&[]);
    let body = random_bytes(9, 100_000);
    let r = dev.put("c", body.clone());
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let get = |h: &str, v: &str| {
        dev.req(Method::GET, "/objects/c")
            .header(h, v)
            .send()
            .unwrap()
    };
    assert_eq!(get("If-None-Match", &etag).status(), 304);
    let r = get("If-None-Match", "\"nope\"");
    assert_eq!(r.status(), 200, "{:?}", r.text());
    assert_eq!(get("If-Match", &etag).status(), 200);
    assert_eq!(get("If-Match", "\"nope\"").status(), 412);
    let lm = get("If-Match", "*").headers()["last-modified"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(get("If-Modified-Since", &lm).status(), 304);
    // If-Range: a matching ETag keeps the range, another one gets the whole object.
    let r = dev
        .req(Method::GET, "/objects/c")
        .header("Range", "bytes=0-9")
        .header("If-Range", &etag)
        .send()
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(&r.bytes().unwrap()[..], &body[..10]);
    let r = dev
        .req(Method::GET, "/objects/c")
        .header("Range", "bytes=0-9")
        .header("If-Range", "\"old\"")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().len(), body.len());
}

#[test]
fn errors_follow_the_contract() {
    let dev = Dev::start(&[]);
    let code = |r: reqwest::blocking::Response| {
        let s = r.status().as_u16();
        let j: serde_json::Value = r.json().unwrap_or_default();
        (s, j["error"]["code"].as_str().unwrap_or("").to_string())
    };
    let c = reqwest::blocking::Client::new();
    // Credentials.
    assert_eq!(
        code(c.get(dev.url("/objects/x")).send().unwrap()),
        (401, "Unauthorized".into())
    );
    assert_eq!(
        code(
            c.get(dev.url("/objects/x"))
                .bearer_auth("wrong")
                .send()
                .unwrap()
        ),
        (403, "Forbidden".into())
    );
    assert_eq!(
        code(c.put(dev.url("/objects/x")).body("b").send().unwrap()).0,
        401
    );
    assert_eq!(code(c.get(dev.url("/versions/x")).send().unwrap()).0, 401);
    assert_eq!(code(c.get(dev.url("/metrics")).send().unwrap()).0, 401);
    assert_eq!(
        c.get(dev.url("/health")).send().unwrap().text().unwrap(),
        "ok"
    );
    // Keys.
    let long = "k".repeat(1025);
    assert_eq!(code(dev.put(&long, "x")), (400, "InvalidKey".into()));
    assert_eq!(dev.put(&"k".repeat(1024), "x").status(), 201);
    assert_eq!(code(dev.put("a%00b", "x")), (400, "InvalidKey".into()));
    assert_eq!(code(dev.put("bad%ff", "x")), (400, "InvalidKey".into()));
    assert_eq!(
        code(dev.req(Method::PUT, "/objects/").body("x").send().unwrap()),
        (400, "InvalidKey".into())
    );
    assert_eq!(dev.put("ok/%E2%9C%93", "x").status(), 201);
    assert_eq!(dev.get_bytes("ok/%E2%9C%93").1, b"x");
    // Digests: small and large bodies; nothing committed.
    for size in [10usize, 500_000] {
        let body = random_bytes(3, size);
        let wrong = blake3::hash(b"something else").to_hex().to_string();
        let r = dev
            .req(Method::PUT, "/objects/digest")
            .header("X-Blake3", &wrong)
            .body(body.clone())
            .send()
            .unwrap();
        assert_eq!(code(r), (400, "BadDigest".into()));
        assert_eq!(dev.get("digest").status(), 404);
        let right = blake3::hash(&body).to_hex().to_string();
        let r = dev
            .req(Method::PUT, "/objects/digest")
            .header("X-Blake3", &right)
            .body(body)
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
        dev.req(Method::DELETE, "/objects/digest").send().unwrap();
    }
    let r = dev
        .req(Method::PUT, "/objects/digest")
        .header("X-Blake3", "xyz")
        .body("b")
        .send()
        .unwrap();
    assert_eq!(code(r), (400, "InvalidArgument".into()));
    // Versions and unknown routes.
    assert_eq!(
        code(
            dev.req(Method::GET, "/objects/x?version=abc")
                .send()
                .unwrap()
        ),
        (400, "InvalidArgument".into())
    );
    assert_eq!(
        code(
            dev.req(Method::GET, "/objects/x?bucket=nosuchbucket")
                .send()
                .unwrap()
        ),
        (404, "NoSuchBucket".into())
    );
    assert_eq!(
        code(dev.req(Method::GET, "/locate/zz").send().unwrap()),
        (400, "InvalidArgument".into())
    );
    assert_eq!(
        dev.req(Method::GET, "/metrics").send().unwrap().status(),
        200
    );
}

#[test]
fn sigterm_exits_cleanly_and_restart_finds_everything() {
    let mut dev = Dev::start(&[]);
    let body = random_bytes(5, 1_000_000);
    assert_eq!(dev.put("keep", body.clone()).status(), 201);
    assert_eq!(dev.stop(), Some(0));
    dev.restart();
    assert!(dev.get_bytes("keep").1 == body);
}

#[test]
fn any_executor_count_serves_the_same_bytes() {
    // Drives belong to executors (drive % cores); requests land on any executor, so shard I/O
    // crosses executors whenever cores > 1.
    for cores in ["1", "3"] {
        let dev = Dev::start(&["--cores", cores]);
        let body = random_bytes(77, 1_500_000);
        assert_eq!(dev.put("x", body.clone()).status(), 201);
        for _ in 0..6 {
            let fresh = reqwest::blocking::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            let r = fresh
                .get(dev.url("/objects/x"))
                .bearer_auth(&dev.secret)
                .send()
                .unwrap();
            assert_eq!(r.status(), 200, "--cores {cores}");
            assert!(r.bytes().unwrap() == body, "--cores {cores}");
        }
    }
}

#[test]
fn a_second_server_on_the_same_port_is_refused() {
    let dev = Dev::start(&[]);
    let other = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(ostore_tests::binary("ostore"))
        .args(["dev", "--http", &dev.http, "--data"])
        .arg(other.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already in use"));
    assert_eq!(dev.put("still", "mine").status(), 201);
}

#[test]
fn conditional_puts() {
    let dev = Dev::start(&[]);
    let put = |key: &str, h: (&str, &str), body: Vec<u8>| {
        dev.req(Method::PUT, &format!("/objects/{key}"))
            .header(h.0, h.1)
            .body(body)
            .send()
            .unwrap()
    };
    let big = random_bytes(3, 400_000);
    // Create-only.
    assert_eq!(put("c", ("If-None-Match", "*"), big.clone()).status(), 201);
    let r = put("c", ("If-None-Match", "*"), random_bytes(4, 400_000));
    assert_eq!(r.status(), 412);
    let j: serde_json::Value = r.json().unwrap();
    assert_eq!(j["error"]["code"], "PreconditionFailed");
    assert!(
        dev.get_bytes("c").1 == big,
        "a refused PUT changed the object"
    );
    assert_eq!(
        dev.json("/versions/c").1["versions"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Compare-and-swap on the ETag.
    let etag = format!("\"{}\"", blake3::hash(&big).to_hex());
    assert_eq!(
        put("c", ("If-Match", "\"0000\""), b"x".to_vec()).status(),
        412
    );
    assert_eq!(
        put("c", ("If-Match", &etag), b"next".to_vec()).status(),
        201
    );
    assert_eq!(
        put("c", ("If-Match", &etag), b"again".to_vec()).status(),
        412,
        "the ETag moved on"
    );
    assert_eq!(dev.get_bytes("c").1, b"next");
    assert_eq!(
        put("absent", ("If-Match", "*"), b"x".to_vec()).status(),
        412
    );
    // No shard files of refused PUTs are left behind.
    assert_eq!(ostore_tests::shard_files(&dev, 6).len(), 6);
}

#[test]
fn restarting_with_fewer_drives_is_refused() {
    let mut dev = Dev::start(&[]);
    assert_eq!(dev.put("big", random_bytes(8, 200_000)).status(), 201);
    assert_eq!(dev.stop(), Some(0));
    let out = std::process::Command::new(ostore_tests::binary("ostore"))
        .args(["dev", "--http", "127.0.0.1:0", "--drives", "4", "--data"])
        .arg(dev.data())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("removing drives is not supported"));
    dev.restart();
    assert_eq!(dev.get("big").status(), 200);
}

/// `curl -C -` continues a download from the bytes already in the file (a plain `Range:
/// bytes=N-`), and the result is the object exactly.
#[test]
fn curl_resumes_a_download_exactly() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        ostore_tests::missing_prerequisite("curl_resumes_a_download_exactly", "curl");
    }
    let dev = Dev::start(&[]);
    let body = random_bytes(77, 3 * 1024 * 1024 + 12_345);
    assert_eq!(dev.put("resume/me", body.clone()).status(), 201);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("partial");
    // The first download was cut off after 1,000,001 bytes.
    std::fs::write(&file, &body[..1_000_001]).unwrap();
    let out = std::process::Command::new("curl")
        .args(["-sS", "--fail", "-C", "-", "-o"])
        .arg(&file)
        .arg("-H")
        .arg(format!("Authorization: Bearer {}", dev.secret))
        .arg(dev.url("/objects/resume/me"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = std::fs::read(&file).unwrap();
    assert_eq!(got.len(), body.len());
    assert!(got == body, "the resumed download differs from the object");
}
