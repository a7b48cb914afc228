//! A new user and an attacker against the real `ostore dev`: the README's first command as
//! written, headers built to overflow, clients that hold connections, stall bodies or declare
//! sizes they never send, and credentials spelled another way.

use ostore_tests::{
    allocated_on_drives, binary, eventually, files_under, missing_prerequisite, random_bytes,
    ready_line, Dev,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed when the test ends, however it ends.
struct Killed(Option<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn field(line: &str, name: &str) -> String {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
        .to_string()
}

fn curl_available() -> bool {
    Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The README's first command, word for word (`cargo run --release --bin ostore -- dev`), run
/// from a fresh working directory so that the default `--data ./ostore-data` is relative; then
/// a 5 MB object (far above the inline size) stored and read back with curl, as the README
/// shows. Every test before used absolute temporary paths, and the executors could not open
/// a relative one.
#[test]
fn the_readme_first_command_stores_and_serves_from_a_fresh_directory() {
    if !curl_available() {
        missing_prerequisite(
            "the_readme_first_command_stores_and_serves_from_a_fresh_directory",
            "curl",
        );
    }
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let first = readme
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("cargo "))
        .expect("the README starts with a command");
    let command = first.split('#').next().unwrap().trim();
    let (cargo, args) = command
        .split_once(" -- ")
        .expect("the first command is `cargo run ... -- ARGS`");
    assert!(
        cargo.starts_with("cargo run") && cargo.contains("--bin ostore"),
        "{command}"
    );
    let args: Vec<&str> = args.split_whitespace().collect();
    // The command names no port, so it needs the default one.
    let port = "127.0.0.1:9080";
    if std::net::TcpListener::bind(port).is_err() {
        panic!("{port} is in use: the README's first command needs it free");
    }

    let cwd = tempfile::tempdir().unwrap();
    let mut child = Command::new(binary("ostore"))
        .args(&args)
        .current_dir(cwd.path())
        .env_remove("OSTORE_SECRET")
        .env("OSTORE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let line = ready_line(
        &mut child,
        "the README's first command",
        Duration::from_secs(60),
    );
    let mut server = Killed(Some(child));
    assert_eq!(field(&line, "http"), port, "{line}");
    // The ready line says where the data is: the default directory, resolved.
    let data = cwd.path().join("ostore-data");
    assert_eq!(std::path::Path::new(&field(&line, "data")), data, "{line}");
    let secret_file = field(&line, "secret-file");
    assert!(
        std::path::Path::new(&secret_file).starts_with(&data),
        "{line}"
    );
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    let auth = format!("Authorization: Bearer {}", secret.trim());

    let photo = cwd.path().join("photo.jpg");
    let body = random_bytes(5, 5_000_000);
    std::fs::write(&photo, &body).unwrap();
    let url = format!("http://{port}/objects/photos/1.jpg");
    let put = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &auth,
            "-T",
        ])
        .arg(&photo)
        .arg(&url)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&put.stdout), "201", "{put:?}");
    let copy = cwd.path().join("copy.jpg");
    let get = Command::new("curl")
        .args(["-sS", "-f", "-H", &auth, "-o"])
        .arg(&copy)
        .arg(&url)
        .output()
        .unwrap();
    assert!(get.status.success(), "{get:?}");
    assert!(std::fs::read(&copy).unwrap() == body, "the copy differs");

    // Nothing the server wrote is readable by other users: shard files, metadata, probes,
    // the secret, the certificate's key, and the directories holding them.
    use std::os::unix::fs::PermissionsExt;
    let mut checked = 0;
    let mut dirs = vec![data.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let mode = std::fs::symlink_metadata(&p).unwrap().permissions().mode();
            assert_eq!(
                mode & 0o077,
                0,
                "{} is mode {:o}",
                p.display(),
                mode & 0o777
            );
            checked += 1;
            if p.is_dir() {
                dirs.push(p);
            }
        }
    }
    let mode = std::fs::metadata(&data).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o077,
        0,
        "the data directory is mode {:o}",
        mode & 0o777
    );
    assert!(
        checked > 6,
        "only {checked} entries under {}",
        data.display()
    );
    let shards = files_under(&data)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("/shards/"))
        .count();
    assert_eq!(shards, 6, "one shard file per drive");

    // SIGTERM ends it cleanly.
    let mut c = server.0.take().unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = c.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            panic!("no exit within 20 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
}

/// Sends `request` on a new connection and reads one response (headers and a body of
/// `Content-Length`), or what came before the connection closed or `within` ran out.
fn raw(addr: &str, request: &[u8], within: Duration) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(within)).unwrap();
    s.write_all(request).unwrap();
    read_response(&mut s)
}

fn read_response(s: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            return (status, head, buf[end + 4..].to_vec());
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return (0, String::from_utf8_lossy(&buf).to_string(), Vec::new()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Every executor still takes its share of new connections and answers.
fn node_is_whole(dev: &Dev) {
    for i in 0..32 {
        let (status, head, _) = raw(
            &dev.http,
            b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Duration::from_secs(10),
        );
        assert_eq!(status, 200, "health check {i} on a new connection: {head}");
    }
}

/// `Range: bytes=5-18446744073709551615` is valid (a last byte past the end means to the end);
/// it once overflowed and killed the executor that parsed it, taking its connections and
/// drives with it and leaving a process SIGTERM could not end.
#[test]
fn a_range_to_the_end_of_u64_reads_to_the_end_and_the_node_serves_on() {
    let mut dev = Dev::start(&[]);
    let small = random_bytes(1, 100);
    let big = random_bytes(2, 300_000);
    assert_eq!(dev.put("r/small", small.clone()).status(), 201);
    assert_eq!(dev.put("r/big", big.clone()).status(), 201);
    for (key, body) in [("r/small", &small), ("r/big", &big)] {
        for from in [0usize, 5] {
            let r = dev
                .req(reqwest::Method::GET, &format!("/objects/{key}"))
                .header("Range", format!("bytes={from}-{}", u64::MAX))
                .send()
                .unwrap();
            assert_eq!(r.status(), 206, "{key} from {from}");
            assert_eq!(
                r.headers()["content-range"],
                format!("bytes {from}-{}/{}", body.len() - 1, body.len()).as_str()
            );
            assert!(r.bytes().unwrap()[..] == body[from..], "{key} from {from}");
        }
        let r = dev
            .req(reqwest::Method::GET, &format!("/objects/{key}"))
            .header("Range", format!("bytes={}-{}", u64::MAX, u64::MAX))
            .send()
            .unwrap();
        assert_eq!(r.status(), 416);
    }
    node_is_whole(&dev);
    let after = random_bytes(3, 1 << 20);
    assert_eq!(dev.put("r/after", after.clone()).status(), 201);
    assert!(dev.get_bytes("r/after").1 == after);
    assert_eq!(dev.metric("ostore_panics_total"), 0.0);
    assert_eq!(dev.stop(), Some(0));
}

/// A tus PATCH whose Content-Length, added to its offset, passes 2^64 once overflowed.
#[test]
fn a_tus_patch_declaring_an_impossible_length_is_refused() {
    let dev = Dev::start(&["--body-idle-timeout", "2s"]);
    let auth = format!("Bearer {}", dev.secret);
    let r = dev
        .req(reqwest::Method::POST, "/uploads")
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", "10")
        .header(
            "Upload-Metadata",
            format!("key {}", ostore_tests::base64(b"t/x")),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let path = location
        .strip_prefix(&format!("http://{}", dev.http))
        .unwrap_or(&location)
        .to_string();
    let patch = |offset: u64, length: &str, body: &[u8]| {
        let mut req = format!(
            "PATCH {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nTus-Resumable: 1.0.0\r\n\
             Upload-Offset: {offset}\r\nContent-Type: application/offset+octet-stream\r\n\
             Content-Length: {length}\r\n\r\n"
        )
        .into_bytes();
        req.extend_from_slice(body);
        raw(&dev.http, &req, Duration::from_secs(20))
    };
    let (status, head, _) = patch(0, "5", b"hello");
    assert_eq!(status, 204, "{head}");
    // hyper itself refuses a Content-Length of 2^64-1 (431); the others reach the server.
    let (status, head, _) = patch(5, &u64::MAX.to_string(), b"abc");
    assert!((400..500).contains(&status), "{head}");
    for length in [u64::MAX - 2, u64::MAX - 4] {
        let (status, head, _) = patch(5, &length.to_string(), b"abc");
        assert_eq!(status, 400, "Content-Length {length}: {head}");
    }
    // The upload is where it was and completes.
    let (status, head, _) = patch(5, "5", b"world");
    assert_eq!(status, 204, "{head}");
    assert_eq!(dev.get_bytes("t/x").1, b"helloworld");
    node_is_whole(&dev);
    assert_eq!(dev.metric("ostore_panics_total"), 0.0);
}

fn raise_own_file_limit(want: u64) -> bool {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on our own process.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        if l.rlim_cur < want && l.rlim_max >= want {
            l.rlim_cur = want;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
    }
    l.rlim_cur >= want
}

/// 2,000 connections that each send half a request line and stop, against a server started
/// with the common soft limit of 1,024 open files: the server raises its limit, so a health
/// check still gets through at once, and it closes each slow connection when its header time
/// is up.
#[test]
fn half_sent_requests_neither_starve_others_nor_stay_open() {
    const HELD: usize = 2000;
    if !raise_own_file_limit(HELD as u64 + 512) {
        missing_prerequisite(
            "half_sent_requests_neither_starve_others_nor_stay_open",
            "a hard open-file limit of at least 2,512 for the test process",
        );
    }
    let dev = Dev::start_limited(&["--header-read-timeout", "3s"], 1024);
    let started = Instant::now();
    let mut held = Vec::with_capacity(HELD);
    for i in 0..HELD {
        let addr = dev.http.parse().unwrap();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        s.write_all(b"GET /heal").unwrap();
        held.push(s);
    }
    let t = Instant::now();
    let (status, head, _) = raw(
        &dev.http,
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(
        status, 200,
        "health while {HELD} connections are held: {head}"
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    // Each slow connection is closed by the server once 3 s passed since its first byte.
    let mut closed = 0;
    for s in &mut held {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut b = [0u8; 64];
        if matches!(s.read(&mut b), Ok(0) | Err(_)) {
            closed += 1;
        }
    }
    assert_eq!(closed, HELD, "connections the server closed");
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "took {:?}",
        started.elapsed()
    );
    assert!(dev.metric("ostore_connections_timed_out_total") >= HELD as f64);
}

/// Past the per-executor cap, a connection gets a clear 503 at once (not a hang), and idle
/// connections are closed so the cap frees itself.
#[test]
fn connections_past_the_cap_are_refused_and_idle_ones_closed() {
    let dev = Dev::start(&[
        "--cores",
        "1",
        "--max-connections",
        "4",
        "--idle-timeout",
        "2s",
    ]);
    let mut idle: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(&dev.http).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let (status, head, body) = raw(
        &dev.http,
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(status, 503, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    assert!(String::from_utf8_lossy(&body).contains("SlowDown"));
    // The idle ones are closed after 2 s, and then the server takes connections again.
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 16];
        assert!(
            matches!(s.read(&mut b), Ok(0) | Err(_)),
            "an idle connection stayed open"
        );
    }
    assert!(eventually(Duration::from_secs(5), || {
        raw(
            &dev.http,
            b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .0 == 200
    }));
    assert!(dev.metric("ostore_connections_refused_total") >= 1.0);
}

/// A PUT that declares 1 GiB and stops after 3 MB holds a bounded amount of drive space (it
/// once reserved the whole 1.5 GiB of shards at once), fails with 408 when its body stops
/// arriving, and gives back everything it wrote.
#[test]
fn a_stalled_put_reserves_little_and_times_out() {
    let dev = Dev::start(&["--body-idle-timeout", "3s"]);
    let before = allocated_on_drives(&dev, 6);
    let mut s = dev.raw_put_head("stalled", 1 << 30, "");
    s.write_all(&random_bytes(9, 3_000_000)).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || allocated_on_drives(&dev, 6)
            > before + (1 << 20)),
        "the PUT wrote nothing"
    );
    std::thread::sleep(Duration::from_millis(500));
    let held = allocated_on_drives(&dev, 6) - before;
    assert!(
        held < 200 << 20,
        "a stalled PUT of 3 MB holds {} MiB of the drives",
        held >> 20
    );
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let (status, head, body) = read_response(&mut s);
    assert_eq!(status, 408, "{head}");
    assert!(String::from_utf8_lossy(&body).contains("RequestTimeout"));
    assert!(
        eventually(Duration::from_secs(15), || allocated_on_drives(&dev, 6)
            <= before + (64 << 10)),
        "the stalled PUT's files stay: {} bytes",
        allocated_on_drives(&dev, 6) - before
    );
    assert_eq!(dev.get("stalled").status(), 404);
    assert!(dev.metric("ostore_request_bodies_timed_out_total") >= 1.0);
}

/// `Authorization: bearer …` is the same scheme as `Bearer` (RFC 9110 §11.1).
#[test]
fn the_bearer_scheme_is_case_insensitive() {
    let dev = Dev::start(&[]);
    let c = reqwest::blocking::Client::new();
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let key = format!("auth/{scheme}");
        let r = c
            .put(dev.url(&format!("/objects/{key}")))
            .header("authorization", format!("{scheme} {}", dev.secret))
            .body("x")
            .send()
            .unwrap();
        assert_eq!(r.status(), 201, "{scheme}");
    }
    let r = c
        .get(dev.url("/objects/auth/bearer"))
        .header("authorization", format!("bearer {}x", dev.secret))
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .get(dev.url("/objects/auth/bearer"))
        .header("authorization", format!("Basic {}", dev.secret))
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
}
