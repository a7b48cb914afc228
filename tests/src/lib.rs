//! Harness for tests that run the real binaries: start `ostore dev` on free loopback ports in a
//! temporary directory, talk to it over HTTP, kill it (politely or with SIGKILL), restart it.

pub mod cluster;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary built next to this test executable (`target/<profile>/NAME`).
pub fn binary(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("OSTORE_BIN_DIR") {
        return Path::new(&dir).join(name);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>/deps/<test>");
    let p = profile_dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace binaries first (`cargo test --workspace` builds them; \
         or set OSTORE_BIN_DIR)",
        p.display()
    );
    p
}

/// Waits for the `ostore ready` line a server prints on stdout (which `child` must pipe).
pub fn ready_line(child: &mut Child, what: &str, within: Duration) -> String {
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        while let Some(Ok(l)) = lines.next() {
            if l.starts_with("ostore ready") {
                let _ = tx.send(l);
            }
        }
    });
    rx.recv_timeout(within)
        .unwrap_or_else(|_| panic!("{what} printed no ready line within {within:?}"))
}

/// A running `ostore dev`.
pub struct Dev {
    child: Option<Child>,
    /// The data directory when not inside `dir`.
    data_at: Option<PathBuf>,
    pub http: String,
    /// The ready line's `quic=` (HTTP/3), if any.
    pub quic: Option<String>,
    /// The ready line's `s3=` (the S3 API).
    pub s3: String,
    pub secret: String,
    dir: tempfile::TempDir,
    args: Vec<String>,
    client: reqwest::blocking::Client,
    /// The soft open-file limit the server starts with, if set.
    nofile_soft: Option<u64>,
}

impl Dev {
    /// Starts `ostore dev` with the default drives and EC plus `extra` arguments.
    pub fn start(extra: &[&str]) -> Dev {
        Self::start_with(None, extra)
    }

    /// Starts `ostore dev` with its data directory at `data`.
    pub fn start_at(data: &Path, extra: &[&str]) -> Dev {
        Self::start_with(Some(data.to_path_buf()), extra)
    }

    /// Starts `ostore dev` under a soft open-file limit of `nofile_soft` (as a shell with a
    /// common default of `ulimit -Sn 1024` would start it).
    pub fn start_limited(extra: &[&str], nofile_soft: u64) -> Dev {
        Self::start_full(None, extra, Some(nofile_soft))
    }

    fn start_with(data_at: Option<PathBuf>, extra: &[&str]) -> Dev {
        Self::start_full(data_at, extra, None)
    }

    fn start_full(data_at: Option<PathBuf>, extra: &[&str], nofile_soft: Option<u64>) -> Dev {
        let dir = tempfile::Builder::new()
            .prefix("ostore-test-")
            .tempdir()
            .expect("tempdir");
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(600))
            .pool_max_idle_per_host(4)
            .build()
            .expect("http client");
        warn_if_disk_is_short(dir.path());
        let mut d = Dev {
            child: None,
            data_at,
            http: String::new(),
            quic: None,
            s3: String::new(),
            secret: String::new(),
            dir,
            args: extra.iter().map(|s| s.to_string()).collect(),
            client,
            nofile_soft,
        };
        d.launch();
        d
    }

    pub fn data(&self) -> PathBuf {
        self.data_at
            .clone()
            .unwrap_or_else(|| self.dir.path().join("data"))
    }

    pub fn drive(&self, i: usize) -> PathBuf {
        self.data().join(format!("drive-{i}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn launch(&mut self) {
        self.launch_at("127.0.0.1:0".to_string());
    }

    fn launch_at(&mut self, http: String) {
        let mut cmd = Command::new(binary("ostore"));
        cmd.arg("dev").arg("--data").arg(self.data()).args([
            "--http",
            &http,
            "--s3",
            "127.0.0.1:0",
        ]);
        cmd.args(&self.args);
        cmd.env_remove("OSTORE_SECRET").env(
            "OSTORE_LOG",
            std::env::var("OSTORE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        );
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        if let Some(soft) = self.nofile_soft {
            use std::os::unix::process::CommandExt;
            // SAFETY: only async-signal-safe calls (getrlimit, setrlimit) between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let mut l = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
                    l.rlim_cur = soft.min(l.rlim_max);
                    libc::setrlimit(libc::RLIMIT_NOFILE, &l);
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("spawn ostore");
        let line = ready_line(&mut child, "ostore dev", Duration::from_secs(60));
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(&format!("{name}=")))
                .map(str::to_string)
        };
        self.http = field("http").expect("http= in ready line");
        self.quic = field("quic");
        self.s3 = field("s3").expect("s3= in ready line");
        let sf = field("secret-file").expect("secret-file= in ready line");
        self.secret = std::fs::read_to_string(sf)
            .expect("secret file")
            .trim()
            .to_string();
        self.child = Some(child);
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = c.try_wait().expect("wait") {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("ostore did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.launch();
    }

    /// kill -9, then start again on the same HTTP address (clients keep their URLs). The port
    /// can be refused for a moment while the killed process's sockets close: retried.
    pub fn restart_same_address(&mut self) {
        self.kill9();
        let http = self.http.clone();
        // Wait (quietly) until the port can be bound again; the launch still retries.
        let _ = eventually(Duration::from_secs(5), || {
            std::net::TcpListener::bind(http.as_str()).is_ok()
        });
        for attempt in 0.. {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.launch_at(http.clone())
            }));
            match r {
                Ok(()) => return,
                Err(e) if attempt >= 20 => std::panic::resume_unwind(e),
                Err(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        }
    }

    /// Sends a PUT's head by hand (with `extra` header lines) and returns the socket, to stream
    /// a body or not; reads time out after 10 s.
    pub fn raw_put_head(&self, key: &str, len: u64, extra: &str) -> std::net::TcpStream {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(&self.http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "PUT /objects/{key} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Length: {len}\r\n{extra}\r\n",
            self.http, self.secret
        )
        .unwrap();
        s
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(&self.secret)
    }

    pub fn put(
        &self,
        key: &str,
        body: impl Into<reqwest::blocking::Body>,
    ) -> reqwest::blocking::Response {
        self.req(reqwest::Method::PUT, &format!("/objects/{key}"))
            .body(body)
            .send()
            .expect("PUT")
    }

    pub fn get(&self, key: &str) -> reqwest::blocking::Response {
        self.req(reqwest::Method::GET, &format!("/objects/{key}"))
            .send()
            .expect("GET")
    }

    pub fn get_bytes(&self, key: &str) -> (u16, Vec<u8>) {
        let r = self.get(key);
        let s = r.status().as_u16();
        (s, r.bytes().expect("body").to_vec())
    }

    /// The value of a counter or gauge in `/metrics` (panics if it is missing).
    pub fn metric(&self, name: &str) -> f64 {
        let text = self
            .req(reqwest::Method::GET, "/metrics")
            .send()
            .expect("GET /metrics")
            .text()
            .expect("metrics");
        metric_in(&text, name)
    }

    /// `osctl --json ARGS` against this server; panics unless it succeeds.
    pub fn osctl_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.osctl(args);
        assert!(out.status.success(), "osctl {args:?}: {out:?}");
        serde_json::from_slice(&out.stdout).expect("osctl JSON")
    }

    /// `osctl --json ARGS` against this server, whatever its outcome.
    pub fn osctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(binary("osctl"))
            .args(["--endpoint", &format!("http://{}", self.http), "--json"])
            .args(args)
            .env("OSTORE_SECRET", &self.secret)
            .output()
            .expect("run osctl")
    }

    pub fn json(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self.req(reqwest::Method::GET, path).send().expect("GET");
        let s = r.status().as_u16();
        (s, r.json().unwrap_or(serde_json::Value::Null))
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Deterministic pseudo-random bytes (BLAKE3 in XOF mode).
/// The value of counter or gauge `name` in a `/metrics` text (panics if it is missing).
pub fn metric_in(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
}

pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

/// A reader of `len` pseudo-random bytes that never holds more than one buffer.
pub struct RandomReader {
    xof: blake3::OutputReader,
    left: u64,
}

impl RandomReader {
    pub fn new(seed: u64, len: u64) -> Self {
        RandomReader {
            xof: blake3::Hasher::new()
                .update(&seed.to_le_bytes())
                .finalize_xof(),
            left: len,
        }
    }
}

impl Read for RandomReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        self.xof.fill(&mut buf[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Flips one bit of the byte at `at` in `path`, as bit rot on a drive would (no CRC rewritten).
pub fn flip(path: &Path, at: u64) {
    use std::io::{Seek, SeekFrom, Write};
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

/// Shard files (under `shards/`) of every drive.
pub fn shard_files(dev: &Dev, drives: usize) -> Vec<PathBuf> {
    (0..drives)
        .flat_map(|i| files_under(&dev.drive(i).join("shards")))
        .collect()
}

/// Bytes on disk of the given files.
pub fn bytes_of(files: &[PathBuf]) -> u64 {
    files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

/// Bytes the filesystem has allocated to every file under the drives of `dev` (what the data
/// costs on the drives, preallocation included).
pub fn allocated_on_drives(dev: &Dev, drives: usize) -> u64 {
    use std::os::unix::fs::MetadataExt;
    (0..drives)
        .flat_map(|i| files_under(&dev.drive(i)))
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

/// `len` bytes of JSON lines like an application log: the same fields on every line, values
/// that vary.
pub fn json_lines(seed: u64, len: usize) -> Vec<u8> {
    let noise = random_bytes(seed, len / 8 + 64);
    let mut out = Vec::with_capacity(len + 256);
    let mut i = 0usize;
    let levels = ["info", "warn", "debug", "error"];
    while out.len() < len {
        let r = &noise[(i * 8) % (noise.len() - 8)..][..8];
        let user = u32::from_le_bytes([r[0], r[1], r[2], 0]) % 50_000;
        let ms = u16::from_le_bytes([r[3], r[4]]) % 2000;
        out.extend_from_slice(
            format!(
                "{{\"seq\":{i},\"ts\":\"2026-11-26T04:{:02}:{:02}.{:03}Z\",\"level\":\"{}\",\"user\":\"user-{user}\",\"path\":\"/api/v1/items/{}\",\"status\":{},\"latency_ms\":{ms},\"ok\":{}}}\n",
                (i / 60_000) % 60,
                (i / 1000) % 60,
                i % 1000,
                levels[(r[5] % 4) as usize],
                r[6] as u32 * 7 + r[7] as u32,
                [200, 201, 204, 404, 500][(r[5] % 5) as usize],
                !r[6].is_multiple_of(3),
            )
            .as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

/// Waits until `f` holds, up to `timeout`.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// Resident set size of a process, in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Samples `pid`'s resident memory every 50 ms into `peak` (the highest seen) until `stop`.
pub fn sample_rss(
    pid: u32,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> std::thread::JoinHandle<()> {
    use std::sync::atomic::Ordering;
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            peak.fetch_max(rss_bytes(pid), Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}

/// Standard base64 (tus metadata and checksums), without an encoder crate.
pub fn base64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A Python that can import `module`: `OSTORE_TEST_PYTHON`, else the venv `.ci/run` makes at
/// `target/pyvenv` (with tuspy and aioquic). `None` if neither has it.
pub fn python_with(module: &str) -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("OSTORE_TEST_PYTHON").map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/pyvenv/bin/python")),
    ];
    candidates.into_iter().flatten().find(|p| {
        Command::new(p)
            .args(["-c", &format!("import {module}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// A test's prerequisite (a client, a tool, root) is missing. The test fails, never passes
/// quietly: under `CI=true` because CI must install it (`.ci/run`), elsewhere saying what to
/// install and how to leave the test out visibly (`--skip`, which `cargo test` counts as
/// filtered out).
pub fn missing_prerequisite(test: &str, what: &str) -> ! {
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    if ci {
        panic!("{test}: prerequisite missing under CI: {what}; .ci/run must install it");
    }
    panic!(
        "{test}: prerequisite missing: {what}. Install it (README, Tests), or leave this test \
         out visibly: cargo test --workspace -- --skip {test}"
    );
}

/// A node keeps up to 1 GiB of each drive's filesystem in reserve and answers 507 to writes
/// that would eat into it: on a test machine whose disk is nearly full, tests that write
/// objects over the inline size fail with 507. Says so up front (printed with the failing
/// test's output), so such a failure names its cause.
fn warn_if_disk_is_short(dir: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return;
    };
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return;
    }
    let free = st.f_bavail as u64 * st.f_frsize as u64;
    if free < 2 << 30 {
        eprintln!(
            "WARNING: the filesystem of {} has only {} MiB free; a node keeps up to 1 GiB in \
             reserve, so writes of objects over the inline size may be refused with 507",
            dir.display(),
            free >> 20
        );
    }
}
