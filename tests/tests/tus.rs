//! tus 1.0.0 at `/uploads` against a real `ostore dev`: a stock client (tuspy) resuming after
//! kill -9, the checksum extension (460), offsets, termination, expiry reclaiming space, uploads
//! never visible before their last byte, and a long PATCH cut by a crash keeping its
//! checkpoints.

use ostore_tests::{allocated_on_drives, json_lines, random_bytes, Dev};
use reqwest::blocking::Body;
use reqwest::Method;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIB: usize = 1024 * 1024;

use ostore_tests::base64 as b64;

fn tus(dev: &Dev, m: Method, path: &str) -> reqwest::blocking::RequestBuilder {
    dev.req(m, path).header("tus-resumable", "1.0.0")
}

/// Creates an upload of `len` bytes for `key`; returns its path.
fn create(dev: &Dev, key: &str, len: usize) -> String {
    let r = tus(dev, Method::POST, "/uploads")
        .header("upload-length", len.to_string())
        .header(
            "upload-metadata",
            format!("key {},filename {}", b64(key.as_bytes()), b64(b"x.bin")),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text());
    assert_eq!(r.headers()["tus-resumable"], "1.0.0");
    assert!(r.headers().contains_key("upload-expires"));
    r.headers()["location"].to_str().unwrap().to_string()
}

fn patch(dev: &Dev, at: &str, offset: usize, body: impl Into<Body>) -> reqwest::blocking::Response {
    tus(dev, Method::PATCH, at)
        .header("upload-offset", offset.to_string())
        .header("content-type", "application/offset+octet-stream")
        .body(body)
        .send()
        .unwrap()
}

fn offset_of(dev: &Dev, at: &str) -> Option<usize> {
    let r = tus(dev, Method::HEAD, at).send().unwrap();
    if r.status() == 404 {
        return None;
    }
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    Some(
        r.headers()["upload-offset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap(),
    )
}

#[test]
fn the_protocol_offsets_checksums_and_termination() {
    let dev = Dev::start(&[]);
    // OPTIONS advertises the version, extensions and checksum algorithms.
    let r = dev.req(Method::OPTIONS, "/uploads").send().unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["tus-version"], "1.0.0");
    let ext = r.headers()["tus-extension"].to_str().unwrap();
    for e in ["creation", "termination", "expiration", "checksum"] {
        assert!(ext.contains(e), "{ext}");
    }
    let algs = r.headers()["tus-checksum-algorithm"].to_str().unwrap();
    assert!(algs.contains("blake3") && algs.contains("sha1"));
    // Credentials are required like everywhere else.
    let anon = reqwest::blocking::Client::new()
        .post(dev.url("/uploads"))
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "5")
        .send()
        .unwrap();
    assert_eq!(anon.status(), 401);
    // Without Tus-Resumable: 412 with the supported version.
    let r = dev
        .req(Method::POST, "/uploads")
        .header("upload-length", "5")
        .send()
        .unwrap();
    assert_eq!(r.status(), 412);
    assert_eq!(r.headers()["tus-version"], "1.0.0");
    // The key is mandatory and validated.
    let r = tus(&dev, Method::POST, "/uploads")
        .header("upload-length", "5")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);

    let body = random_bytes(1, 3 * MIB + 333);
    let at = create(&dev, "tus/one", body.len());
    assert_eq!(offset_of(&dev, &at), Some(0));
    // Wrong content type, wrong offset.
    let r = tus(&dev, Method::PATCH, &at)
        .header("upload-offset", "0")
        .header("content-type", "application/octet-stream")
        .body(body[..10].to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = patch(&dev, &at, 5, body[..10].to_vec());
    assert_eq!(r.status(), 409);
    assert_eq!(r.headers()["upload-offset"], "0");

    // A first chunk, verified by BLAKE3.
    let a = 1_000_003;
    let r = tus(&dev, Method::PATCH, &at)
        .header("upload-offset", "0")
        .header("content-type", "application/offset+octet-stream")
        .header(
            "upload-checksum",
            format!("blake3 {}", b64(blake3::hash(&body[..a]).as_bytes())),
        )
        .body(body[..a].to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["upload-offset"], a.to_string().as_str());
    // A chunk whose checksum does not match: 460, and the offset stays.
    let mut corrupted = body[a..2 * MIB].to_vec();
    let good_sum = b64(blake3::hash(&corrupted).as_bytes());
    corrupted[12345] ^= 1;
    let r = tus(&dev, Method::PATCH, &at)
        .header("upload-offset", a.to_string())
        .header("content-type", "application/offset+octet-stream")
        .header("upload-checksum", format!("blake3 {good_sum}"))
        .body(corrupted)
        .send()
        .unwrap();
    assert_eq!(r.status(), 460);
    assert_eq!(offset_of(&dev, &at), Some(a));
    // An unsupported algorithm is a bad request.
    let r = tus(&dev, Method::PATCH, &at)
        .header("upload-offset", a.to_string())
        .header("content-type", "application/offset+octet-stream")
        .header("upload-checksum", "md5 AAAA")
        .body(body[a..a + 10].to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(offset_of(&dev, &at), Some(a));
    // Never visible before its last byte.
    assert_eq!(dev.get("tus/one").status(), 404);
    // The rest, in two pieces (the second with SHA-1, computed by the test's own code below).
    let b = 2 * MIB + 17;
    assert_eq!(patch(&dev, &at, a, body[a..b].to_vec()).status(), 204);
    assert_eq!(dev.get("tus/one").status(), 404);
    let r = tus(&dev, Method::PATCH, &at)
        .header("upload-offset", b.to_string())
        .header("content-type", "application/offset+octet-stream")
        .header(
            "upload-checksum",
            format!("sha1 {}", b64(&sha1(&body[b..]))),
        )
        .body(body[b..].to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 204, "{:?}", r.text());
    let (s, got) = dev.get_bytes("tus/one");
    assert_eq!(s, 200);
    assert!(got == body, "the uploaded object differs");
    let (_, j) = dev.json("/versions/tus/one");
    assert_eq!(
        j["versions"][0]["blake3"],
        blake3::hash(&body).to_hex().as_str()
    );
    // The finished upload is gone.
    assert_eq!(offset_of(&dev, &at), None);
    // More than Upload-Length is refused.
    let at2 = create(&dev, "tus/small", 100);
    assert_eq!(patch(&dev, &at2, 0, vec![7u8; 101]).status(), 400);
    assert_eq!(offset_of(&dev, &at2), Some(0));
    // A small upload in pieces (stored inline) and an announced digest that does not match.
    for (i, piece) in [0..40, 40..70, 70..100].into_iter().enumerate() {
        let r = patch(&dev, &at2, piece.start, body[piece].to_vec());
        assert_eq!(r.status(), 204, "piece {i}");
    }
    assert!(dev.get_bytes("tus/small").1 == body[..100]);
    let r = tus(&dev, Method::POST, "/uploads")
        .header("upload-length", "3")
        .header(
            "upload-metadata",
            format!(
                "key {},blake3 {}",
                b64(b"tus/bad"),
                b64(blake3::hash(b"abc").to_hex().as_bytes())
            ),
        )
        .send()
        .unwrap();
    let at3 = r.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(patch(&dev, &at3, 0, b"abd".to_vec()).status(), 400);
    assert_eq!(dev.get("tus/bad").status(), 404);
    assert_eq!(
        offset_of(&dev, &at3),
        None,
        "an upload that failed its digest is ended"
    );
    // The digest may also be the 32 raw bytes (base64-encoded by the metadata itself).
    let r = tus(&dev, Method::POST, "/uploads")
        .header("upload-length", "3")
        .header(
            "upload-metadata",
            format!(
                "key {},blake3 {}",
                b64(b"tus/good"),
                b64(blake3::hash(b"abc").as_bytes())
            ),
        )
        .send()
        .unwrap();
    let at5 = r.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(patch(&dev, &at5, 0, b"abc".to_vec()).status(), 204);
    assert_eq!(dev.get_bytes("tus/good").1, b"abc");
    // Termination frees the files.
    let before = allocated_on_drives(&dev, 6);
    let at4 = create(&dev, "tus/dropped", 8 * MIB);
    assert_eq!(patch(&dev, &at4, 0, random_bytes(4, 4 * MIB)).status(), 204);
    assert!(allocated_on_drives(&dev, 6) > before + 4 * MIB as u64);
    let r = tus(&dev, Method::DELETE, &at4).send().unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(offset_of(&dev, &at4), None);
    assert!(
        ostore_tests::eventually(Duration::from_secs(10), || allocated_on_drives(&dev, 6)
            <= before),
        "terminated upload's files stay: {} > {before}",
        allocated_on_drives(&dev, 6)
    );
    assert_eq!(dev.get("tus/dropped").status(), 404);
}

/// SHA-1 through the system's `sha1sum` would be a dependency on a tool; this is FIPS 180-4.
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for i in 0..16 {
            w[i] = u32::from_be_bytes(block[4 * i..4 * i + 4].try_into().unwrap());
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, x) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

#[test]
fn sha1_is_right() {
    assert_eq!(
        hex::encode(sha1(b"abc")),
        "a9993e364706816aba3e25717850c26c9cd0d89d"
    );
}

#[test]
fn an_expired_upload_frees_its_space() {
    let dev = Dev::start(&["--upload-expiry", "3s"]);
    let before = allocated_on_drives(&dev, 6);
    let at = create(&dev, "tus/abandoned", 16 * MIB);
    let r = patch(&dev, &at, 0, random_bytes(5, 6 * MIB));
    assert_eq!(r.status(), 204);
    let during = allocated_on_drives(&dev, 6);
    assert!(during > before + 6 * MIB as u64, "{during} vs {before}");
    let t = Instant::now();
    assert!(
        ostore_tests::eventually(Duration::from_secs(30), || offset_of(&dev, &at).is_none()),
        "the upload did not expire"
    );
    assert!(
        ostore_tests::eventually(Duration::from_secs(10), || allocated_on_drives(&dev, 6)
            <= before),
        "expired upload's space not reclaimed: {} > {before}",
        allocated_on_drives(&dev, 6)
    );
    eprintln!(
        "expired and reclaimed {} bytes after {:?}",
        during - before,
        t.elapsed()
    );
    assert_eq!(dev.get("tus/abandoned").status(), 404);
    assert_eq!(patch(&dev, &at, 6 * MIB, vec![1u8; 10]).status(), 404);
}

/// A reader that hands out `pause_at` bytes, then blocks until the server is killed.
struct Stalling {
    data: Vec<u8>,
    at: usize,
    pause_at: usize,
}

impl Read for Stalling {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at >= self.pause_at {
            std::thread::sleep(Duration::from_secs(3600));
        }
        let n = buf
            .len()
            .min(self.pause_at - self.at)
            .min(self.data.len() - self.at);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[test]
fn a_long_patch_cut_by_kill_9_keeps_its_checkpoints_and_resumes() {
    let mut dev = Dev::start(&[]);
    let body = json_lines(9, 40 * MIB);
    let at = create(&dev, "tus/long.jsonl", body.len());
    let url = dev.url(&at);
    let secret = dev.secret.clone();
    let sent = body.clone();
    // One PATCH of everything (what tus-js-client does by default); the body stalls at 21 MiB.
    std::thread::spawn(move || {
        let _ = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(3600))
            .build()
            .unwrap()
            .patch(url)
            .bearer_auth(secret)
            .header("tus-resumable", "1.0.0")
            .header("upload-offset", "0")
            .header("content-type", "application/offset+octet-stream")
            .body(Body::sized(
                Stalling {
                    data: sent,
                    at: 0,
                    pause_at: 21 * MIB,
                },
                (40 * MIB) as u64,
            ))
            .send();
    });
    assert!(
        ostore_tests::eventually(Duration::from_secs(60), || offset_of(&dev, &at)
            .unwrap_or(0)
            >= 16 * MIB),
        "no checkpoint within the long PATCH"
    );
    dev.restart();
    let resumed = offset_of(&dev, &at).expect("the upload survives a crash");
    assert!(
        (16 * MIB..=21 * MIB).contains(&resumed),
        "resumed at {resumed}"
    );
    assert_eq!(dev.get("tus/long.jsonl").status(), 404);
    let r = patch(&dev, &at, resumed, body[resumed..].to_vec());
    assert_eq!(r.status(), 204, "{:?}", r.text());
    let (s, got) = dev.get_bytes("tus/long.jsonl");
    assert_eq!(
        s,
        200,
        "{}",
        String::from_utf8_lossy(&got[..got.len().min(2000)])
    );
    assert!(got == body, "the resumed object differs");
    // It went through the same pipeline as a PUT: stored compressed, ranges decode.
    let (_, j) = dev.json(&format!("/locate/{}", blake3::hash(&body).to_hex()));
    assert_eq!(j["encoding"], "zstd", "{j}");
    let r = dev
        .req(Method::GET, "/objects/tus/long.jsonl")
        .header("range", "bytes=20000000-20999999")
        .send()
        .unwrap();
    assert_eq!(r.status(), 206);
    assert!(r.bytes().unwrap() == body[20_000_000..21_000_000]);
}

#[test]
fn a_stock_tus_client_resumes_after_the_server_was_killed() {
    let Some(py) = ostore_tests::python_with("tusclient") else {
        ostore_tests::missing_prerequisite(
            "a_stock_tus_client_resumes_after_the_server_was_killed",
            "a Python with tuspy (OSTORE_TEST_PYTHON, or target/pyvenv as .ci/run makes it)",
        );
    };
    let mut dev = Dev::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("upload.bin");
    let body = random_bytes(11, 24 * MIB + 4321);
    std::fs::write(&file, &body).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/tus_resume.py");
    let mut child = Command::new(py)
        .arg(script)
        .arg(format!("http://{}", dev.http))
        .arg(&dev.secret)
        .arg(&file)
        .arg("tus/stock.bin")
        .arg((2 * MIB).to_string())
        .arg("4")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f.first(), Some(&"PAUSED"), "{line}");
    let paused_at: usize = f[2].parse().unwrap();
    assert_eq!(paused_at, 8 * MIB);
    // Half done: not an object.
    assert_eq!(dev.get("tus/stock.bin").status(), 404);
    dev.restart();
    assert_eq!(dev.get("tus/stock.bin").status(), 404);
    writeln!(child.stdin.as_mut().unwrap(), "RESUME http://{}", dev.http).unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f.first(), Some(&"DONE"), "{line}");
    assert_eq!(
        f[1],
        paused_at.to_string(),
        "resumed from the acknowledged offset"
    );
    assert!(child.wait().unwrap().success());
    let (s, got) = dev.get_bytes("tus/stock.bin");
    assert_eq!(s, 200);
    assert!(got == body, "the object differs from the file");
}

/// Node and tus-js-client: `OSTORE_TEST_TUS_JS` names the module, else the one CI installs
/// under `target/jsclient`.
fn node_with_tus_js() -> Option<PathBuf> {
    let module = std::env::var_os("OSTORE_TEST_TUS_JS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/jsclient/node_modules/tus-js-client")
        });
    let ok = module.join("package.json").exists()
        && Command::new("node")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    ok.then_some(module)
}

#[test]
fn tus_js_client_rides_out_a_kill_9_mid_upload_with_its_own_retries() {
    let Some(module) = node_with_tus_js() else {
        ostore_tests::missing_prerequisite(
            "tus_js_client_rides_out_a_kill_9_mid_upload_with_its_own_retries",
            "node and tus-js-client (OSTORE_TEST_TUS_JS, or target/jsclient as .ci/run installs it)",
        );
    };
    let mut dev = Dev::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("upload.jsonl");
    let body = json_lines(12, 24 * MIB + 999);
    std::fs::write(&file, &body).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("js/tus_resume.js");
    let mut child = Command::new("node")
        .arg(script)
        .arg(format!("http://{}", dev.http))
        .arg(&dev.secret)
        .arg(&file)
        .arg("tus/js.jsonl")
        .arg((MIB).to_string())
        .env("TUS_JS_CLIENT", &module)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    let next = || {
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .ok()
    };
    // Let a few chunks through, then kill the server while the client keeps sending.
    let mut before = 0usize;
    while before < 6 * MIB {
        let line = next().expect("the client stopped before the kill");
        assert!(line.starts_with("CHUNK"), "{line}");
        before = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    }
    dev.restart_same_address();
    let mut chunks_after = 0;
    let done = loop {
        let line = next().expect("the client neither finished nor failed");
        if line.starts_with("DONE") {
            break line;
        }
        assert!(line.starts_with("CHUNK"), "the client gave up: {line}");
        chunks_after += 1;
    };
    assert!(child.wait().unwrap().success());
    assert!(chunks_after > 0);
    eprintln!("tus-js-client: killed after {before} bytes acknowledged, resumed, {done}");
    let (s, got) = dev.get_bytes("tus/js.jsonl");
    assert_eq!(s, 200);
    assert!(got == body, "the object differs from the file");
    // One upload, resumed, not a second one started over: exactly one version.
    let (_, j) = dev.json("/versions/tus/js.jsonl");
    assert_eq!(j["versions"].as_array().unwrap().len(), 1);
}
