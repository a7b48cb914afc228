//! The load generator: T threads, each running C/T workers. Over HTTP/1.1 a thread is a monoio
//! runtime and each worker has its own connection; over HTTP/3 (`--protocol h3`) a thread is a
//! tokio runtime on `ostore-client`, each worker with its own QUIC connection too (the protocols
//! then compare at the same connection count), or with `--multiplex` all of a thread's workers
//! on one connection, as HTTP/3 clients usually are.

use anyhow::{bail, Context as _};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone)]
pub struct LoadArgs {
    /// Server endpoint.
    #[arg(long, env = "OSTORE_ENDPOINT", default_value = "http://127.0.0.1:9080")]
    endpoint: String,
    /// Protocol: http (HTTP/1.1) or h3 (HTTP/3), either way a connection per worker; or s3
    /// (S3 over HTTP/1.1, every request SigV4-signed, with the root key by default; bodies
    /// `UNSIGNED-PAYLOAD`) against the S3 endpoint.
    #[arg(long, default_value = "http", value_parser = ["http", "h3", "s3"])]
    protocol: String,
    /// For s3: the bucket the objects go in (made if missing).
    #[arg(long, default_value = "osbench")]
    bucket: String,
    /// For s3: the access key to sign with (ostore's root key by default; another S3 server's
    /// user for a side-by-side run), its secret being the secret below.
    #[arg(long, env = "OSTORE_ACCESS_KEY", default_value = "root")]
    access_key: String,
    /// For h3: one QUIC connection per thread, carrying all of its workers' requests as
    /// concurrent streams.
    #[arg(long)]
    multiplex: bool,
    /// For h3: trust the certificate(s) in this PEM file (e.g. DIR/tls/cert.pem of
    /// `ostore dev`) instead of the system's roots.
    #[arg(long, env = "OSTORE_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// put, get, mixed:P/G (percent PUT / percent GET), delete or list.
    #[arg(long, default_value = "put")]
    workload: String,
    /// Object size: a size (4KiB, 1MiB) or a uniform range (1KiB..1MiB).
    #[arg(long, default_value = "4KiB")]
    size: String,
    /// Objects to prepare for get, mixed, delete and list.
    #[arg(long, default_value_t = 256)]
    objects: u64,
    /// Requests in flight over all threads.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Threads (each one runtime, pinned to nothing).
    #[arg(long)]
    threads: Option<usize>,
    /// Run this long (e.g. 30s, 500ms).
    #[arg(long)]
    duration: Option<String>,
    /// Or run this many operations.
    #[arg(long)]
    ops: Option<u64>,
    /// Open loop: start this many operations per second over all connections, whatever the
    /// answers take (latency is measured from when each operation was due, so a stall is not
    /// hidden by requests that were never sent: no coordinated omission). Without it, each
    /// connection sends its next request when the last one is answered (closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Live progress on stderr once a second (default: when stderr is a terminal).
    #[arg(long)]
    progress: Option<bool>,
    /// Check every GET body against its BLAKE3 ETag.
    #[arg(long)]
    verify: bool,
    /// Write the results as one JSON document to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Secret (else OSTORE_SECRET, else --secret-file).
    #[arg(long, env = "OSTORE_SECRET", hide_env_values = true)]
    secret: Option<String>,
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// Key prefix for the objects written.
    #[arg(long, default_value = "osbench")]
    prefix: String,
    /// Processes of the server (on this machine) whose CPU time over the measured run, not
    /// counting the preparation of objects, goes into the JSON as `server_cpu_s`, and whose
    /// resident sets at its end as `server_rss_kib` (e.g. `--server-pid 812,813`).
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Object contents: random (incompressible) or text (JSON lines, compresses several-fold).
    #[arg(long, default_value = "random", value_parser = ["random", "text"])]
    content: String,
}

#[derive(Clone, Copy)]
enum Workload {
    Put,
    Get,
    Mixed { put_pct: u32 },
    Delete,
    List,
}

fn parse_workload(s: &str) -> anyhow::Result<Workload> {
    Ok(match s {
        "put" => Workload::Put,
        "get" => Workload::Get,
        "delete" => Workload::Delete,
        "list" => Workload::List,
        m if m.starts_with("mixed:") => {
            let (p, g) = m["mixed:".len()..].split_once('/').context("mixed:P/G")?;
            let (p, g): (u32, u32) = (p.parse()?, g.parse()?);
            if p + g != 100 {
                bail!("mixed:P/G must add up to 100");
            }
            Workload::Mixed { put_pct: p }
        }
        other => bail!("unknown workload {other:?}"),
    })
}

fn parse_size(s: &str) -> anyhow::Result<(u64, u64)> {
    match s.split_once("..") {
        Some((a, b)) => {
            let (a, b) = (
                ostore_engine::units::parse_bytes(a).map_err(anyhow::Error::msg)?,
                ostore_engine::units::parse_bytes(b).map_err(anyhow::Error::msg)?,
            );
            if a > b {
                bail!("size range {s} is empty");
            }
            Ok((a, b))
        }
        None => {
            let n = ostore_engine::units::parse_bytes(s).map_err(anyhow::Error::msg)?;
            Ok((n, n))
        }
    }
}

fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    if let Some(ms) = s.strip_suffix("ms") {
        return Ok(Duration::from_millis(ms.parse()?));
    }
    if let Some(m) = s.strip_suffix('m') {
        return Ok(Duration::from_secs(m.parse::<u64>()? * 60));
    }
    Ok(Duration::from_secs_f64(
        s.strip_suffix('s').unwrap_or(s).parse()?,
    ))
}

/// Per-thread results, merged at the end.
#[derive(Default)]
struct Stats {
    ops: BTreeMap<&'static str, OpStats>,
}

struct OpStats {
    hist: Histogram<u64>,
    errors: u64,
    bytes: u64,
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats {
            hist: Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds"),
            errors: 0,
            bytes: 0,
        }
    }
}

impl Stats {
    fn record(&mut self, op: &'static str, us: u64, bytes: u64, ok: bool) {
        let s = self.ops.entry(op).or_default();
        if ok {
            let _ = s.hist.record(us.max(1));
            s.bytes += bytes;
        } else {
            s.errors += 1;
        }
    }
    fn merge(&mut self, o: Stats) {
        for (k, v) in o.ops {
            let s = self.ops.entry(k).or_default();
            let _ = s.hist.add(&v.hist);
            s.errors += v.errors;
            s.bytes += v.bytes;
        }
    }
}

/// How a thread reaches the server.
#[derive(Clone)]
enum Proto {
    Http1,
    /// S3 over HTTP/1.1: requests signed with `access_key`.
    S3 {
        access_key: String,
        secret: String,
        bucket: String,
    },
    Http3 {
        endpoint: String,
        secret: String,
        ca: Option<PathBuf>,
        multiplex: bool,
    },
}

struct Plan {
    proto: Proto,
    /// For HTTP/3, the thread's clients (a connection each), made in the thread and handed to
    /// its workers in turn.
    h3: Option<(Vec<ostore_client::Client>, std::cell::Cell<usize>)>,
    host: String,
    auth: String,
    workload: Workload,
    size: (u64, u64),
    objects: u64,
    deadline: Option<Instant>,
    ops_left: Arc<AtomicU64>,
    verify: bool,
    prefix: String,
    seq: Arc<AtomicU64>,
    /// Open loop: operations per second; each operation is due at `start + index / rate`,
    /// where `start` is when every connection is up (connecting is not a request's latency).
    rate: Option<OpenLoop>,
    /// Operations handed out so far (their index), and finished, and failed, for progress.
    issued: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

/// The shared clock of an open-loop run.
#[derive(Clone)]
struct OpenLoop {
    rate: f64,
    /// Connections up so far, and how many there will be.
    ready: Arc<std::sync::atomic::AtomicUsize>,
    connections: usize,
    start: Arc<std::sync::OnceLock<Instant>>,
}

impl Plan {
    /// The path of object `key`.
    fn object_path(&self, key: &str) -> String {
        match &self.proto {
            Proto::S3 { bucket, .. } => format!("/{bucket}/{key}"),
            _ => format!("/objects/{key}"),
        }
    }

    /// A listing of the objects under the prefix, 1000 at most.
    fn list_path(&self) -> String {
        match &self.proto {
            Proto::S3 { bucket, .. } => {
                format!(
                    "/{bucket}?list-type=2&max-keys=1000&prefix={}%2F",
                    self.prefix
                )
            }
            _ => format!("/objects?prefix={}/&limit=1000", self.prefix),
        }
    }

    /// The status a successful PUT answers with.
    fn put_ok(&self) -> u16 {
        match self.proto {
            Proto::S3 { .. } => 200,
            _ => 201,
        }
    }
}

/// SigV4 `Authorization` (and the `x-amz-*` headers it signs) for an S3 request, signed now.
fn sign_s3(
    access_key: &str,
    secret: &str,
    host: &str,
    method: &http::Method,
    path: &str,
) -> http::HeaderMap {
    let (p, q) = path.split_once('?').unwrap_or((path, ""));
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::HOST,
        http::HeaderValue::from_str(host).expect("host"),
    );
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let auth = ostore_s3::sigv4::sign(
        method.as_str(),
        p,
        q,
        &mut h,
        ostore_s3::sigv4::UNSIGNED_PAYLOAD,
        &ostore_s3::sigv4::Signer {
            access_key,
            secret,
            region: "us-east-1",
            now_s,
        },
    );
    h.insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_str(&auth).expect("ASCII"),
    );
    h
}

/// Request bodies: a few shared `Bytes` pieces sent without copying.
type ReqBody = StreamBody<
    futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>>,
>;
type Sender = hyper::client::conn::http1::SendRequest<ReqBody>;

async fn connect(host: &str) -> anyhow::Result<Sender> {
    let stream = monoio::net::TcpStream::connect(host)
        .await
        .with_context(|| format!("connecting to {host}"))?;
    stream.set_nodelay(true)?;
    let io = monoio::io::IntoPollIo::into_poll_io(stream)?;
    let (send, conn) =
        hyper::client::conn::http1::handshake(monoio_compat::hyper::MonoioIo::new(io)).await?;
    monoio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

/// JSON lines as an application log writes them (the same fields on every line, values drawn
/// from `noise`), as long as `noise`.
fn text_like(noise: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(noise.len() + 256);
    let mut i = 0usize;
    while out.len() < noise.len() {
        let r = &noise[(i * 4) % noise.len().saturating_sub(4).max(1)..];
        let r = [
            r[0],
            *r.get(1).unwrap_or(&0),
            *r.get(2).unwrap_or(&0),
            *r.get(3).unwrap_or(&0),
        ];
        out.extend_from_slice(
            format!(
                "{{\"seq\":{i},\"level\":\"{}\",\"user\":\"user-{}\",\"status\":{},\"latency_ms\":{}}}\n",
                ["info", "warn", "debug", "error"][(r[0] % 4) as usize],
                u16::from_le_bytes([r[1], r[2]]),
                [200, 201, 404, 500][(r[3] % 4) as usize],
                r[3] as u32 * 7 % 2000,
            )
            .as_bytes(),
        );
        i += 1;
    }
    out.truncate(noise.len());
    out
}

/// Object contents: a shared random buffer whose first 16 bytes are made unique per object, so
/// every PUT carries new content (no dedup) without generating or copying fresh bytes.
fn body_for(base: &Bytes, n: u64, size: usize) -> Vec<Bytes> {
    let tag = blake3::hash(&n.to_le_bytes());
    let head = size.min(16);
    vec![
        Bytes::copy_from_slice(&tag.as_bytes()[..head]),
        base.slice(head..size),
    ]
}

/// One worker's way to the server: its own HTTP/1.1 connection, or its thread's HTTP/3 client.
enum Conn {
    H1(Sender),
    H3(ostore_client::Client),
}

impl Conn {
    async fn open(plan: &Plan) -> anyhow::Result<Conn> {
        match &plan.h3 {
            None => Ok(Conn::H1(connect(&plan.host).await?)),
            Some((clients, next)) => {
                let c = &clients[next.get() % clients.len()];
                next.set(next.get() + 1);
                // Up before the clock starts: connecting is not a request's latency.
                c.health().await.context("HTTP/3")?;
                Ok(Conn::H3(c.clone()))
            }
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Conn::H1(s) => s.is_closed(),
            // The client makes a new connection by itself when its connection is lost.
            Conn::H3(_) => false,
        }
    }
}

async fn request(
    conn: &mut Conn,
    plan: &Plan,
    method: http::Method,
    path: &str,
    body: Vec<Bytes>,
) -> anyhow::Result<(http::StatusCode, http::HeaderMap, Bytes)> {
    let mut parts = Vec::new();
    let (status, headers) =
        request_streamed(conn, plan, method, path, body, |b| parts.push(b)).await?;
    let body = match parts.len() {
        0 => Bytes::new(),
        1 => parts.pop().expect("one part"),
        _ => Bytes::from(parts.concat()),
    };
    Ok((status, headers, body))
}

/// A GET's answer, its body hashed as it arrives (`hash`) or only counted: a large body is
/// never gathered in memory, so the client spends no copies and page faults on it.
async fn get_digest(
    conn: &mut Conn,
    plan: &Plan,
    path: &str,
    hash: bool,
) -> anyhow::Result<(http::StatusCode, http::HeaderMap, u64, Option<blake3::Hash>)> {
    let mut hasher = hash.then(blake3::Hasher::new);
    let mut len = 0u64;
    let (status, headers) =
        request_streamed(conn, plan, http::Method::GET, path, Vec::new(), |b| {
            len += b.len() as u64;
            if let Some(h) = hasher.as_mut() {
                h.update(&b);
            }
        })
        .await?;
    Ok((status, headers, len, hasher.map(|h| h.finalize())))
}

/// Sends a request and hands each piece of the answer's body to `piece` as it arrives.
async fn request_streamed(
    conn: &mut Conn,
    plan: &Plan,
    method: http::Method,
    path: &str,
    body: Vec<Bytes>,
    mut piece: impl FnMut(Bytes),
) -> anyhow::Result<(http::StatusCode, http::HeaderMap)> {
    let send = match conn {
        Conn::H1(s) => s,
        Conn::H3(c) => {
            let len: usize = body.iter().map(|b| b.len()).sum();
            let body = if len == 0 {
                ostore_client::Body::empty()
            } else {
                let pieces: Vec<std::io::Result<Bytes>> =
                    body.into_iter().filter(|b| !b.is_empty()).map(Ok).collect();
                ostore_client::Body::from_stream(
                    Some(len as u64),
                    futures_util::stream::iter(pieces),
                )
            };
            let mut resp = c
                .request(method, path, http::HeaderMap::new(), body)
                .await?;
            let (status, headers) = (resp.status, resp.headers.clone());
            while let Some(b) = resp.chunk().await? {
                piece(b);
            }
            return Ok((status, headers));
        }
    };
    send.ready().await?;
    let len: usize = body.iter().map(|b| b.len()).sum();
    let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = body
        .into_iter()
        .filter(|b| !b.is_empty())
        .map(|b| Ok(Frame::data(b)))
        .collect();
    let mut req = http::Request::builder().method(method.clone()).uri(path);
    match &plan.proto {
        Proto::S3 {
            access_key, secret, ..
        } => {
            for (n, v) in &sign_s3(access_key, secret, &plan.host, &method, path) {
                req = req.header(n, v);
            }
        }
        _ => {
            req = req
                .header(http::header::HOST, &plan.host)
                .header(http::header::AUTHORIZATION, &plan.auth);
        }
    }
    if len > 0 {
        req = req.header(http::header::CONTENT_LENGTH, len);
    }
    let req = req.body(StreamBody::new(futures_util::stream::iter(frames)))?;
    let resp = send.send_request(req).await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let mut body = resp.into_body();
    while let Some(f) = body.frame().await {
        if let Ok(d) = f?.into_data() {
            piece(d);
        }
    }
    Ok((status, headers))
}

fn pick_size(plan: &Plan) -> u64 {
    if plan.size.0 == plan.size.1 {
        plan.size.0
    } else {
        plan.size.0 + rand::random::<u64>() % (plan.size.1 - plan.size.0 + 1)
    }
}

/// The next operation, if the run goes on: with `--rate`, the time it is due (the caller waits
/// for it, and measures latency from it), else now.
fn take_op(plan: &Plan) -> Option<Instant> {
    if let Some(d) = plan.deadline {
        if Instant::now() >= d {
            return None;
        }
    }
    plan.ops_left
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .ok()?;
    let n = plan.issued.fetch_add(1, Ordering::Relaxed);
    Some(match &plan.rate {
        Some(o) => {
            *o.start.get().expect("started once connected")
                + Duration::from_secs_f64(n as f64 / o.rate)
        }
        None => Instant::now(),
    })
}

async fn worker(
    plan: Rc<Plan>,
    base: Bytes,
    stats: Rc<std::cell::RefCell<Stats>>,
) -> anyhow::Result<()> {
    let connected = Conn::open(&plan).await;
    if let Some(o) = &plan.rate {
        // Open loop: the clock starts once every connection is up (or failed: then the run
        // ends with that error).
        o.ready.fetch_add(1, Ordering::SeqCst);
        while o.ready.load(Ordering::SeqCst) < o.connections {
            sleep(&plan, Duration::from_millis(1)).await;
        }
        o.start.get_or_init(Instant::now);
    }
    let mut send = connected?;
    while let Some(due) = take_op(&plan) {
        if plan.deadline.is_some_and(|d| due >= d) {
            break;
        }
        let now = Instant::now();
        if due > now {
            sleep(&plan, due - now).await;
        }
        let op = match plan.workload {
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::Delete => "delete",
            Workload::List => "list",
            Workload::Mixed { put_pct } => {
                if rand::random::<u32>() % 100 < put_pct {
                    "put"
                } else {
                    "get"
                }
            }
        };
        // Closed loop: `due` is now. Open loop: the time the operation was due, so the wait
        // for a free connection counts in its latency.
        let t = due;
        let (ok, bytes) = match op {
            "put" => {
                let n = plan.seq.fetch_add(1, Ordering::Relaxed);
                let size = pick_size(&plan) as usize;
                let key = match plan.workload {
                    Workload::Mixed { .. } => format!("{}/{}", plan.prefix, n % plan.objects),
                    _ => format!("{}/w{n}", plan.prefix),
                };
                let r = request(
                    &mut send,
                    &plan,
                    http::Method::PUT,
                    &plan.object_path(&key),
                    body_for(&base, n, size),
                )
                .await;
                (
                    matches!(&r, Ok((s, _, _)) if s.as_u16() == plan.put_ok()),
                    size as u64,
                )
            }
            "get" => {
                let i = rand::random::<u64>() % plan.objects;
                let r = get_digest(
                    &mut send,
                    &plan,
                    &plan.object_path(&format!("{}/{i}", plan.prefix)),
                    plan.verify,
                )
                .await;
                match r {
                    Ok((s, h, len, digest)) if s.as_u16() == 200 => {
                        let good = digest.is_none_or(|d| {
                            let etag = h
                                .get(http::header::ETAG)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("");
                            etag.trim_matches('"') == d.to_hex().as_str()
                        });
                        (good, len)
                    }
                    _ => (false, 0),
                }
            }
            "delete" => {
                let n = plan.seq.fetch_add(1, Ordering::Relaxed);
                let r = request(
                    &mut send,
                    &plan,
                    http::Method::DELETE,
                    &plan.object_path(&format!("{}/{}", plan.prefix, n % plan.objects)),
                    Vec::new(),
                )
                .await;
                (matches!(&r, Ok((s, _, _)) if s.as_u16() == 204), 0)
            }
            _ => {
                let r = request(
                    &mut send,
                    &plan,
                    http::Method::GET,
                    &plan.list_path(),
                    Vec::new(),
                )
                .await;
                (matches!(&r, Ok((s, _, _)) if s.as_u16() == 200), 0)
            }
        };
        stats
            .borrow_mut()
            .record(op, t.elapsed().as_micros() as u64, bytes, ok);
        plan.done.fetch_add(1, Ordering::Relaxed);
        if !ok {
            plan.failed.fetch_add(1, Ordering::Relaxed);
        }
        if !ok && send.is_closed() {
            send = Conn::open(&plan).await?;
        }
    }
    Ok(())
}

/// Sleeps on the thread's runtime.
async fn sleep(plan: &Plan, d: Duration) {
    match plan.h3 {
        None => monoio::time::sleep(d).await,
        Some(_) => tokio::time::sleep(d).await,
    }
}

fn run_threads(
    plan_of: impl Fn() -> Plan + Send + Sync + Clone + 'static,
    threads: usize,
    conc: usize,
    base: Bytes,
) -> anyhow::Result<(Stats, f64)> {
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..threads {
        let per = conc / threads + usize::from(t < conc % threads);
        let plan_of = plan_of.clone();
        let base = base.clone();
        handles.push(std::thread::spawn(move || -> anyhow::Result<Stats> {
            let mut plan = plan_of();
            if let Proto::Http3 {
                endpoint,
                secret,
                ca,
                multiplex,
            } = &plan.proto
            {
                let connections = if *multiplex { 1 } else { per.max(1) };
                let mut clients = Vec::new();
                for _ in 0..connections {
                    let mut b = ostore_client::Client::builder(endpoint.clone())
                        .secret(secret.clone())
                        .protocol(ostore_client::Protocol::Http3);
                    if let Some(ca) = ca {
                        b = b.tls_ca_file(ca)?;
                    }
                    clients.push(b.build()?);
                }
                plan.h3 = Some((clients, std::cell::Cell::new(0)));
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                return rt.block_on(async move {
                    let plan = Rc::new(plan);
                    let stats = Rc::new(std::cell::RefCell::new(Stats::default()));
                    let workers =
                        (0..per).map(|_| worker(plan.clone(), base.clone(), stats.clone()));
                    for r in futures_util::future::join_all(workers).await {
                        r?;
                    }
                    Ok(Rc::try_unwrap(stats)
                        .map_err(|_| anyhow::anyhow!("stats still shared"))?
                        .into_inner())
                });
            }
            let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .enable_timer()
                .build()?;
            rt.block_on(async move {
                let plan = Rc::new(plan);
                let stats = Rc::new(std::cell::RefCell::new(Stats::default()));
                let mut tasks = Vec::new();
                for _ in 0..per {
                    tasks.push(monoio::spawn(worker(
                        plan.clone(),
                        base.clone(),
                        stats.clone(),
                    )));
                }
                for t in tasks {
                    t.await?;
                }
                Ok(Rc::try_unwrap(stats)
                    .map_err(|_| anyhow::anyhow!("stats still shared"))?
                    .into_inner())
            })
        }));
    }
    let mut total = Stats::default();
    for h in handles {
        total.merge(
            h.join()
                .map_err(|_| anyhow::anyhow!("load thread panicked"))??,
        );
    }
    Ok((total, start.elapsed().as_secs_f64()))
}

pub fn run(a: LoadArgs) -> anyhow::Result<()> {
    let workload = parse_workload(&a.workload)?;
    let size = parse_size(&a.size)?;
    let secret = match (&a.secret, &a.secret_file) {
        (Some(s), _) => s.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("reading {}", f.display()))?
            .trim()
            .to_string(),
        (None, None) => bail!("no secret: set OSTORE_SECRET, --secret or --secret-file"),
    };
    let proto = match a.protocol.as_str() {
        "h3" => Proto::Http3 {
            endpoint: a.endpoint.clone(),
            secret: secret.clone(),
            ca: a.tls_ca.clone(),
            multiplex: a.multiplex,
        },
        "s3" => {
            if a.verify {
                bail!("--verify checks BLAKE3 ETags, which the S3 API does not answer with");
            }
            Proto::S3 {
                access_key: a.access_key.clone(),
                secret: secret.clone(),
                bucket: a.bucket.clone(),
            }
        }
        _ => Proto::Http1,
    };
    let host = a
        .endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let threads = a
        .threads
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .max(1);
    let conc = a.concurrency.max(1);
    let threads = threads.min(conc);
    let base = {
        let mut v = vec![0u8; size.1 as usize];
        blake3::Hasher::new()
            .update(b"osbench")
            .finalize_xof()
            .fill(&mut v);
        if a.content == "text" {
            v = text_like(&v);
        }
        Bytes::from(v)
    };
    let seq = Arc::new(AtomicU64::new(0));
    let auth = format!("Bearer {secret}");
    if let Proto::S3 {
        access_key,
        secret,
        bucket,
    } = &proto
    {
        create_bucket(&host, access_key, secret, bucket)?;
    }
    // Prepare objects for reads and deletes: keys PREFIX/0 .. PREFIX/{objects-1}.
    if !matches!(workload, Workload::Put) {
        let (h, au, pfx, sq) = (
            host.clone(),
            auth.clone(),
            a.prefix.clone(),
            Arc::new(AtomicU64::new(0)),
        );
        let objects = a.objects;
        let pr = proto.clone();
        let prep = move || Plan {
            proto: pr.clone(),
            h3: None,
            host: h.clone(),
            auth: au.clone(),
            workload: Workload::Mixed { put_pct: 100 },
            size,
            objects,
            deadline: None,
            ops_left: Arc::new(AtomicU64::new(0)),
            verify: false,
            prefix: pfx.clone(),
            seq: sq.clone(),
            rate: None,
            issued: Arc::new(AtomicU64::new(0)),
            done: Arc::new(AtomicU64::new(0)),
            failed: Arc::new(AtomicU64::new(0)),
        };
        let ops_left = Arc::new(AtomicU64::new(objects));
        let ol = ops_left.clone();
        let (st, _) = run_threads(
            move || Plan {
                ops_left: ol.clone(),
                ..prep()
            },
            threads,
            conc,
            base.clone(),
        )?;
        let errors: u64 = st.ops.values().map(|s| s.errors).sum();
        if errors > 0 {
            bail!("{errors} PUTs failed while preparing objects");
        }
    }
    let deadline_d = a.duration.as_deref().map(parse_duration).transpose()?;
    let ops = match (a.ops, deadline_d, workload) {
        (Some(n), _, _) => n,
        (None, Some(_), _) => u64::MAX,
        (None, None, Workload::Delete) => a.objects,
        (None, None, _) => 1000,
    };
    if let Some(r) = a.rate {
        if !(r > 0.0 && r.is_finite()) {
            bail!("--rate must be a positive number of operations per second");
        }
    }
    let ops_left = Arc::new(AtomicU64::new(ops));
    let started = Instant::now();
    let cpu_before = process_cpu_s();
    let server_before = servers_cpu_s(&a.server_pid)?;
    let (h, au, pfx) = (host.clone(), auth.clone(), a.prefix.clone());
    let (objects, verify) = (a.objects, a.verify);
    let ol = ops_left.clone();
    let rate = a.rate.map(|r| OpenLoop {
        rate: r,
        ready: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        connections: conc,
        start: Arc::new(std::sync::OnceLock::new()),
    });
    let (issued, done, failed) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let show = a
        .progress
        .unwrap_or_else(|| std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let progress = show.then(|| {
        let (done, failed, finished) = (done.clone(), failed.clone(), finished.clone());
        std::thread::spawn(move || progress_loop(started, &done, &failed, &finished))
    });
    let (d2, f2) = (done.clone(), failed.clone());
    let plan_of = move || Plan {
        proto: proto.clone(),
        h3: None,
        host: h.clone(),
        auth: au.clone(),
        workload,
        size,
        objects,
        deadline: deadline_d.map(|d| started + d),
        ops_left: ol.clone(),
        verify,
        prefix: pfx.clone(),
        seq: seq.clone(),
        rate: rate.clone(),
        issued: issued.clone(),
        done: d2.clone(),
        failed: f2.clone(),
    };
    let r = run_threads(plan_of, threads, conc, base);
    finished.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.join();
    }
    let (stats, secs) = r?;
    let cpu = process_cpu_s() - cpu_before;
    let server = Server {
        cpu_s: servers_cpu_s(&a.server_pid)? - server_before,
        rss_kib: servers_rss_kib(&a.server_pid)?,
    };
    report(&a, &stats, secs, threads, conc, cpu, server)
}

/// What `--server-pid` measured.
struct Server {
    cpu_s: f64,
    rss_kib: u64,
}

/// The CPU time (user + system, every thread) the processes `pids` have used, in seconds.
fn servers_cpu_s(pids: &[u32]) -> anyhow::Result<f64> {
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut ticks = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("--server-pid {pid}"))?;
        // The fields after the command name, which may hold spaces: state is field 3, utime
        // and stime fields 14 and 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| {
            f.get(i - 3)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        ticks += field(14) + field(15);
    }
    Ok(ticks as f64 / hz)
}

/// The summed resident sets of the processes `pids`, in KiB.
fn servers_rss_kib(pids: &[u32]) -> anyhow::Result<u64> {
    let mut kib = 0;
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("--server-pid {pid}"))?;
        kib += status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(kib)
}

/// Makes the S3 bucket the run writes to (one that exists already is fine).
fn create_bucket(host: &str, access_key: &str, secret: &str, bucket: &str) -> anyhow::Result<()> {
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()?;
    rt.block_on(async {
        let mut send = connect(host).await?;
        send.ready().await?;
        let path = format!("/{bucket}");
        let mut req = http::Request::builder()
            .method(http::Method::PUT)
            .uri(&path);
        for (n, v) in &sign_s3(access_key, secret, host, &http::Method::PUT, &path) {
            req = req.header(n, v);
        }
        let req = req.body(StreamBody::new(futures_util::stream::iter(Vec::new())))?;
        let resp = send.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        let owned = String::from_utf8_lossy(&body).contains("BucketAlreadyOwnedByYou");
        if status.as_u16() != 200 && !owned {
            bail!(
                "creating the bucket {bucket}: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(())
    })
}

/// CPU time (user + system) this process has used, in seconds.
fn process_cpu_s() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF covers every thread of the process.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(u.ru_utime) + s(u.ru_stime)
}

/// Prints, once a second, operations done so far, the rate of the last second and errors, on
/// one line of stderr rewritten in place.
fn progress_loop(
    started: Instant,
    done: &AtomicU64,
    failed: &AtomicU64,
    finished: &std::sync::atomic::AtomicBool,
) {
    use std::io::Write as _;
    let mut last = (0u64, Instant::now());
    while !finished.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if last.1.elapsed() < Duration::from_secs(1) {
            continue;
        }
        let n = done.load(Ordering::Relaxed);
        let per_s = (n - last.0) as f64 / last.1.elapsed().as_secs_f64();
        last = (n, Instant::now());
        let mut e = std::io::stderr().lock();
        let _ = write!(
            e,
            "\r{:>6.1}s  {n} ops  {per_s:.0} ops/s  {} errors   ",
            started.elapsed().as_secs_f64(),
            failed.load(Ordering::Relaxed)
        );
        let _ = e.flush();
    }
    eprintln!();
}

fn report(
    a: &LoadArgs,
    stats: &Stats,
    secs: f64,
    threads: usize,
    conc: usize,
    cpu_s: f64,
    server: Server,
) -> anyhow::Result<()> {
    let total: u64 = stats.ops.values().map(|s| s.hist.len() + s.errors).sum();
    match a.rate {
        Some(r) => println!(
            "osbench {} size={} open loop: rate={r}/s achieved={:.0}/s connections={conc} threads={threads} duration={secs:.2}s (latency from when each operation was due)",
            a.workload,
            a.size,
            total as f64 / secs
        ),
        None => println!(
            "osbench {} size={} concurrency={conc} threads={threads} duration={secs:.2}s",
            a.workload, a.size
        ),
    }
    println!(
        "protocol: {}",
        if a.protocol == "h3" && a.multiplex {
            "HTTP/3 (one QUIC connection per thread)"
        } else if a.protocol == "h3" {
            "HTTP/3 (one QUIC connection per worker)"
        } else {
            "HTTP/1.1 (one TCP connection per worker)"
        }
    );
    println!(
        "{:<7} {:>9} {:>7} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "op", "ops", "errors", "MB/s", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    let mut ops = serde_json::Map::new();
    let mut errors = 0;
    for (op, s) in &stats.ops {
        let n = s.hist.len();
        let q = |p: f64| s.hist.value_at_quantile(p) as f64 / 1000.0;
        let mb_s = s.bytes as f64 / secs / 1e6;
        let ops_s = n as f64 / secs;
        println!(
            "{op:<7} {n:>9} {:>7} {mb_s:>10.1} {ops_s:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            s.errors,
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            s.hist.max() as f64 / 1000.0
        );
        errors += s.errors;
        ops.insert(
            op.to_string(),
            serde_json::json!({
                "count": n, "errors": s.errors, "bytes": s.bytes, "mb_s": mb_s, "ops_s": ops_s,
                "latency_ms": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": s.hist.max() as f64 / 1000.0},
            }),
        );
    }
    if let Some(p) = &a.json {
        let j = serde_json::json!({
            "workload": a.workload, "size": a.size, "protocol": a.protocol, "multiplex": a.multiplex, "concurrency": conc, "threads": threads,
            "duration_s": secs, "verify": a.verify, "ops": ops,
            "mode": if a.rate.is_some() { "open" } else { "closed" },
            "rate_target": a.rate, "rate_achieved": total as f64 / secs,
            "client_cpu_s": cpu_s,
            "server_cpu_s": (!a.server_pid.is_empty()).then_some(server.cpu_s),
            "server_rss_kib": (!a.server_pid.is_empty()).then_some(server.rss_kib),
        });
        std::fs::write(p, serde_json::to_string_pretty(&j)?)?;
    }
    if errors > 0 {
        bail!("{errors} operations failed");
    }
    Ok(())
}
