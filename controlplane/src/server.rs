//! `ostore control`: the control plane of a cluster. It serves the control-plane API
//! (`POST /v1/rpc`, see `ostore_control::rpc`) to nodes over HTTP/1.1 on mutual TLS (node
//! certificates signed by the cluster CA; `POST /v1/join` lets a node with a join token get one),
//! runs every request through the same transactions as `ostore dev`, and — while it holds the
//! leader lease — runs the background jobs: marking nodes down when their lease runs out, and
//! queueing repairs for lost nodes, refilled drives and objects written while nodes were down.
//!
//! Several control processes may serve at once over one FoundationDB cluster: they are
//! stateless over the database, and the leader lease (`cluster::take_lead`, renewed every second,
//! 5 s long) makes sure one of them runs the background jobs at a time.

use crate::client::MetaClient;
use anyhow::Context as _;
use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use ostore_control::cluster::{self, ClusterView};
use ostore_control::kv::Kv;
use ostore_control::rpc::ask;
use ostore_control::rpc::{self, Request as Rq};
use ostore_control::service::{now_ms, Meta};
use ostore_control::trust;
use ostore_engine::placement::{
    drain_settled, drain_step, DrainFacts, DrainStep, NodeLoad, Rebalancer,
};
use ostore_engine::EcParams;
use ostore_transport::tls::{self as ptls, ClusterCa, Revoked};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// Largest request body the control plane reads.
const RPC_BODY_BYTES_MAX: usize = 64 << 20;

pub struct ControlOptions {
    pub listen: SocketAddr,
    /// `redb:PATH`, `etcd:HOST:PORT,…[/PREFIX]` or `fdb:CLUSTER_FILE`.
    pub meta: String,
    pub ec: EcParams,
    /// A node down this long has its shards rebuilt elsewhere.
    pub down_grace: Duration,
    /// Sets the cluster's write quorum (nodes that must be up to write; 0: the minimum);
    /// `None` keeps what is stored.
    pub write_quorum: Option<u32>,
    /// What one client (node) may hold of the control plane.
    pub limits: ostore_server::conn::Limits,
    /// How long the node certificates it signs are valid (renewed after two thirds).
    pub node_cert_lifetime: Duration,
    /// TLS to etcd's members (with `--meta etcd:…`).
    pub etcd_tls: Option<ostore_etcd::EtcdTls>,
}

struct Control {
    meta: Meta,
    /// The cluster CA (with its key, unsealed in memory only).
    ca: ClusterCa,
    /// The key join tokens are derived under (from the operator's cluster key).
    token_key: [u8; 32],
    /// The operator's cluster key: it seals the root secret in the metadata store.
    cluster_key: Vec<u8>,
    /// Which node each certificate was recorded for (`trust::node_of_cert`; a binding never
    /// changes, so what was found once is kept).
    bound: std::sync::Mutex<std::collections::HashMap<[u8; 32], u32>>,
    /// The revoked certificates, refreshed from the metadata store every second.
    revoked: Revoked,
    /// This process's own certificate (renewed while it runs).
    identity: ptls::LiveIdentity,
    node_cert_lifetime: Duration,
    stopping: AtomicBool,
    down_grace: Duration,
    limits: ostore_server::conn::Limits,
    metrics: ostore_server::metrics::Metrics,
    /// Every heartbeat that reaches this process, for the failure detector the leader runs.
    liveness: std::sync::Mutex<ostore_control::liveness::Liveness>,
    /// When each node's heartbeat was last written to the metadata store.
    recorded: std::sync::Mutex<std::collections::HashMap<u32, u64>>,
    /// The leader lease's fence while this process holds it (as its last renewal found).
    leading: std::sync::Mutex<Option<cluster::Fence>>,
}

impl ostore_server::conn::Host for Control {
    fn limits(&self) -> &ostore_server::conn::Limits {
        &self.limits
    }
    fn metrics(&self) -> &ostore_server::metrics::Metrics {
        &self.metrics
    }
    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }
}

fn open_store(
    spec: &str,
    etcd_tls: Option<&ostore_etcd::EtcdTls>,
) -> anyhow::Result<Arc<dyn Kv + Send + Sync>> {
    if etcd_tls.is_some() && !spec.starts_with("etcd:") {
        anyhow::bail!("--etcd-ca, --etcd-cert and --etcd-key go with --meta etcd:…");
    }
    if let Some(path) = spec.strip_prefix("redb:") {
        let path = std::path::Path::new(path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let kv = ostore_control::redb_kv::RedbKv::open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        return Ok(Arc::new(kv));
    }
    if let Some(_cluster_file) = spec.strip_prefix("fdb:") {
        #[cfg(feature = "fdb")]
        {
            return ostore_control::fdb_kv::FdbKv::open(_cluster_file)
                .map(|kv| Arc::new(kv) as Arc<dyn Kv + Send + Sync>)
                .context("opening FoundationDB");
        }
        #[cfg(not(feature = "fdb"))]
        anyhow::bail!("this ostore was built without FoundationDB support (cargo feature `fdb`)");
    }
    if let Some(members) = spec.strip_prefix("etcd:") {
        if etcd_tls.is_none() {
            let hosts = members.split('/').next().unwrap_or_default();
            let off_loopback = hosts.split(',').any(|h| {
                let host = h.trim().rsplit_once(':').map_or(h, |(host, _)| host);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                host != "localhost"
                    && !host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            });
            if off_loopback {
                tracing::warn!(
                    "etcd is reached over plain gRPC off loopback: the metadata (object keys, \
                     bucket names, membership) crosses the network in the clear (the CA key \
                     and the root secret are sealed); give --etcd-ca, --etcd-cert and \
                     --etcd-key"
                );
            }
        }
        let kv = ostore_etcd::EtcdKv::open(members, etcd_tls)
            .with_context(|| format!("opening etcd {members}"))?;
        return Ok(Arc::new(kv));
    }
    anyhow::bail!(
        "--meta must be redb:PATH, etcd:HOST:PORT[,HOST:PORT…][/PREFIX] or fdb:CLUSTER_FILE, \
         not {spec:?}"
    )
}

/// Runs `ostore control` until SIGINT or SIGTERM.
pub fn run_control(opts: ControlOptions) -> anyhow::Result<()> {
    let cluster_key = cluster_key()?;
    let kv = open_store(&opts.meta, opts.etcd_tls.as_ref())?;
    let meta = Meta::start(kv);
    futures_lite::future::block_on(MetaClient::Local(meta.clone()).ask(ask::Init {}))?;
    let (data, parity) = futures_lite::future::block_on(
        meta.write(move |kv| cluster::init_cluster(kv, opts.ec.data, opts.ec.parity)),
    )?;
    if (data, parity) != (opts.ec.data, opts.ec.parity) {
        tracing::warn!(
            "the cluster was created with erasure coding {data}+{parity}; --ec {}+{} is ignored",
            opts.ec.data,
            opts.ec.parity
        );
    }
    if let Some(q) = opts.write_quorum {
        futures_lite::future::block_on(meta.write(move |kv| cluster::set_write_quorum(kv, q)))?;
    }
    let rule = ostore_engine::placement::WriteRule::new(
        EcParams { data, parity },
        cluster::view(meta.kv())?.write_quorum,
    );
    tracing::info!(
        "writes need {} node(s) up (at most {parity} of the {} shards on one node; write quorum {})",
        rule.nodes_needed(),
        rule.total,
        rule.quorum
    );
    let ca = cluster_ca(&meta, &cluster_key)?;
    let revoked = Revoked::default();
    revoked.set(trust::revoked(meta.kv())?);
    let identity = ptls::LiveIdentity::new(ca.control_identity(std::time::SystemTime::now())?)?;
    let tls = Arc::new(ptls::server_config(
        &identity,
        &revoked,
        true,
        ptls::CONTROL_ALPN,
    )?);
    let control = Arc::new(Control {
        meta,
        ca,
        token_key: ostore_wire::join::token_key(&cluster_key),
        cluster_key,
        bound: Default::default(),
        revoked,
        identity,
        node_cert_lifetime: opts.node_cert_lifetime,
        stopping: AtomicBool::new(false),
        down_grace: opts.down_grace,
        limits: opts.limits,
        metrics: ostore_server::metrics::Metrics::default(),
        liveness: Default::default(),
        recorded: Default::default(),
        leading: std::sync::Mutex::new(None),
    });
    let listener = std::net::TcpListener::bind(opts.listen)
        .with_context(|| format!("binding {}", opts.listen))?;
    let addr = listener.local_addr()?;
    let c2 = control.clone();
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .name("ostore-control")
        .spawn(move || async move {
            use std::os::fd::{FromRawFd, IntoRawFd};
            // SAFETY: the descriptor comes from a listening socket this process just bound and
            // hands over here; nothing else uses it.
            let listener =
                unsafe { glommio::net::TcpListener::from_raw_fd(listener.into_raw_fd()) };
            glommio::spawn_local(leader(c2.clone())).detach();
            glommio::spawn_local(detector(c2.clone())).detach();
            glommio::spawn_local(refresh_revoked(c2.clone())).detach();
            glommio::spawn_local(renew_own_certificate(c2.clone())).detach();
            serve(c2, listener, tls).await;
        })
        .map_err(|e| anyhow::anyhow!("starting the control executor: {e}"))?;
    let signals = ostore_server::process::stop_signals()?;
    ostore_server::process::print_ready(&format!("ostore ready control={addr}"))?;
    // As a node: a signal stops it within the drain time, and an executor that ends while it
    // serves ends the process.
    ostore_server::process::wait_for_signal_then_stop(&control.stopping, vec![handle], signals)
}

/// The operator's cluster key: `OSTORE_CLUSTER_KEY`, at least [`CLUSTER_KEY_MIN`] bytes.
fn cluster_key() -> anyhow::Result<Vec<u8>> {
    let key = std::env::var("OSTORE_CLUSTER_KEY").unwrap_or_default();
    if key.len() < CLUSTER_KEY_MIN {
        anyhow::bail!(
            "the control plane needs the operator's cluster key in OSTORE_CLUSTER_KEY, at least \
             {CLUSTER_KEY_MIN} characters (for example: `head -c 32 /dev/urandom | base64`); it \
             seals the cluster CA's key and makes join tokens (`osctl nodes token`), and no \
             client credential may be used for it"
        );
    }
    Ok(key.into_bytes())
}

/// The shortest cluster key accepted.
pub const CLUSTER_KEY_MIN: usize = 32;

/// What the CA's sealed key is bound to besides the cluster key: its certificate.
const CA_SEAL_CONTEXT: &[u8] = b"ostore cluster CA key";

/// The cluster CA: made (with a random key, sealed under the cluster key) when the cluster is
/// created, found and unsealed on every later start.
fn cluster_ca(meta: &Meta, cluster_key: &[u8]) -> anyhow::Result<ClusterCa> {
    let aad = |cert: &[u8]| [CA_SEAL_CONTEXT, cert].concat();
    let rec = trust::ca(meta.kv(), &|| {
        let ca = ClusterCa::generate(std::time::SystemTime::now())
            .map_err(|e| ostore_control::meta::MetaError::Refused(e.to_string()))?;
        Ok(trust::CaRec {
            cert: ca.cert().to_vec(),
            sealed_key: ptls::seal(cluster_key, &aad(ca.cert()), &ca.key_pkcs8()),
            created_ms: now_ms(),
        })
    })?;
    let key = ptls::unseal(cluster_key, &aad(&rec.cert), &rec.sealed_key).context(
        "the cluster CA's key does not open with this OSTORE_CLUSTER_KEY (every control process \
         of a cluster needs the key it was created with)",
    )?;
    ClusterCa::from_parts(rec.cert, &key)
}

/// Signs this process a fresh certificate when two thirds of the current one's life have
/// passed (checked every minute).
async fn renew_own_certificate(c: Arc<Control>) {
    while !c.stopping.load(Ordering::Relaxed) {
        glommio::timer::sleep(Duration::from_secs(60)).await;
        let due = ptls::renew_at_s(&c.identity.current().cert).unwrap_or(0);
        if now_ms() / 1000 < due {
            continue;
        }
        match c
            .ca
            .control_identity(std::time::SystemTime::now())
            .and_then(|id| c.identity.set(id))
        {
            Ok(()) => tracing::info!("renewed this control process's certificate"),
            Err(e) => tracing::warn!("renewing this control process's certificate: {e:#}"),
        }
    }
}

/// Keeps the revocation set as the metadata store has it, once a second.
async fn refresh_revoked(c: Arc<Control>) {
    while !c.stopping.load(Ordering::Relaxed) {
        glommio::timer::sleep(Duration::from_secs(1)).await;
        match c.meta.read(trust::revoked).await {
            Ok(set) => c.revoked.set(set),
            Err(e) => tracing::warn!("reading the revoked certificates: {e}"),
        }
    }
}

async fn serve(
    c: Arc<Control>,
    listener: glommio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
) {
    ostore_server::conn::serve(
        c,
        listener,
        Some(tls),
        |c: Arc<Control>, req: Request<Incoming>| async move { handle(&c, req).await },
        || {
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the control plane failed while handling this request (it is logged)",
            )
        },
    )
    .await
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r
}

async fn handle(c: &Control, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() == "/health" {
        // Which role this process has now: operators and tests find the leader by it.
        let role = match *c.leading.lock().expect("leading lock") {
            Some(f) => format!("ok leader term {}", f.epoch),
            None => "ok follower".to_string(),
        };
        return text(StatusCode::OK, &role);
    }
    if req.method() == Method::POST && req.uri().path() == "/v1/join" {
        let body = match read_body(c, req, JOIN_BODY_BYTES_MAX).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        return join(c, &body).await;
    }
    if req.method() != Method::POST
        || !matches!(
            req.uri().path(),
            "/v1/rpc" | "/v1/renew" | "/v1/secret" | "/v1/secret/rotate"
        )
    {
        return text(StatusCode::NOT_FOUND, "no such endpoint");
    }
    // Only nodes call: the handshake verified the certificate against the CA and the
    // revocations then; a connection that outlives a revocation is refused from then on.
    let cert = match req
        .extensions()
        .get::<ostore_server::conn::PeerCertificate>()
    {
        None => {
            return text(
                StatusCode::UNAUTHORIZED,
                "the control-plane API takes a node certificate (mutual TLS) and nothing else",
            )
        }
        Some(c) => c.0.clone(),
    };
    if c.revoked.contains(&cert) {
        return text(StatusCode::FORBIDDEN, "this node's certificate is revoked");
    }
    if req.uri().path() == "/v1/renew" {
        let body = match read_body(c, req, JOIN_BODY_BYTES_MAX).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        return renew(c, &cert, &body).await;
    }
    if req.uri().path().starts_with("/v1/secret") {
        let rotate = req.uri().path() == "/v1/secret/rotate";
        let body = match read_body(c, req, JOIN_BODY_BYTES_MAX).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        return root_secret(c, rotate, &body).await;
    }
    let body = match read_body(c, req, RPC_BODY_BYTES_MAX).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (token, request) = match rpc::decode_request(&body) {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_REQUEST, &e),
    };
    // A node speaks for itself only: its heartbeats name the node its certificate was
    // recorded for, and it registers at that node's address (or, a certificate just issued
    // for a join, as a new node or in place of one). Only those two calls hash the
    // certificate.
    let fp = matches!(request, Rq::Heartbeat { .. } | Rq::Register { .. })
        .then(|| ptls::fingerprint(&cert));
    if let Some(refused) = bound_to_caller(c, fp, &request).await {
        return refused;
    }
    if let Rq::Heartbeat { node, .. } = &request {
        if let Some(answer) = beat_unrecorded(c, *node).await {
            return rpc_response(&answer);
        }
    }
    let record = match &request {
        Rq::Heartbeat { node, .. } => Some(*node),
        _ => None,
    };
    let registers = matches!(request, Rq::Register { .. });
    let answer = c.meta.call_with(token, request).await;
    if let (true, Some(fp), Ok(a)) = (registers, fp, &answer) {
        // The node's certificate is recorded with it, so that revoking the node revokes it.
        if let Ok(rec) = rpc::decode_value::<cluster::NodeRec>(a) {
            let expires_ms = ptls::not_after_s(&cert).map_or(u64::MAX, |s| s.saturating_mul(1000));
            if let Err(e) = c
                .meta
                .write(move |kv| trust::record_node_cert(kv, rec.id, &fp, expires_ms))
                .await
            {
                return rpc_response(&Err(e));
            }
        }
    }
    if let (Some(node), Ok(_)) = (record, &answer) {
        c.recorded
            .lock()
            .expect("recorded lock")
            .insert(node, now_ms());
    }
    rpc_response(&answer)
}

/// The body of `req`, at most `max` bytes, all of it within the body time (a node's requests are
/// small and sent at once); or the answer refusing it.
async fn read_body(
    c: &Control,
    req: Request<Incoming>,
    max: usize,
) -> Result<Bytes, Response<Full<Bytes>>> {
    let idle = c.limits.body_idle;
    let body =
        ostore_server::conn::within(idle, Limited::new(req.into_body(), max).collect()).await;
    match body {
        Some(Ok(b)) => Ok(b.to_bytes()),
        Some(Err(e)) => Err(text(
            StatusCode::BAD_REQUEST,
            &format!("reading the body: {e}"),
        )),
        None => Err(text(
            StatusCode::REQUEST_TIMEOUT,
            &format!("the request body took longer than {idle:?}"),
        )),
    }
}

/// Largest join request read.
const JOIN_BODY_BYTES_MAX: usize = 4096;

/// A join request (`POST /v1/join`, JSON): the token's public parts, the node's Ed25519 public
/// key and the proof that it holds the token (`ostore_wire::join`).
#[derive(serde::Deserialize)]
struct JoinRequest {
    expires: u64,
    nonce: String,
    public_key: String,
    proof: String,
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let v = hex::decode(s).ok()?;
    v.try_into().ok()
}

/// Signs a joining node's key if its token is valid, unexpired and unused.
async fn join(c: &Control, body: &[u8]) -> Response<Full<Bytes>> {
    let Ok(r) = serde_json::from_slice::<JoinRequest>(body) else {
        return text(
            StatusCode::BAD_REQUEST,
            "a join request is JSON: expires, nonce, public_key, proof",
        );
    };
    let (Some(nonce), Some(public_key), Some(proof)) = (
        unhex::<16>(&r.nonce),
        unhex::<32>(&r.public_key),
        unhex::<32>(&r.proof),
    ) else {
        return text(
            StatusCode::BAD_REQUEST,
            "nonce, public_key or proof is malformed",
        );
    };
    let secret = ostore_wire::join::secret(&c.token_key, r.expires, &nonce);
    let want = ostore_wire::join::request_proof(&secret, &public_key);
    if !bool::from(want.ct_eq(&proof)) {
        tracing::warn!("a join request with a token this cluster did not make was refused");
        return text(
            StatusCode::FORBIDDEN,
            "the join token is not valid for this cluster",
        );
    }
    let expires_ms = r.expires.saturating_mul(1000);
    let used = c
        .meta
        .write(move |kv| trust::use_join_token(kv, &nonce, expires_ms, now_ms()))
        .await;
    if let Err(e) = used {
        return match e {
            ostore_control::meta::MetaError::Refused(m) => text(StatusCode::FORBIDDEN, &m),
            e => text(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        };
    }
    let cert = match issue(c, &public_key) {
        Ok(cert) => cert,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    tracing::info!(
        "a node joined: certificate {}",
        hex::encode(&ptls::fingerprint(&cert)[..8])
    );
    let seal = ostore_wire::join::answer_seal(&secret, c.ca.cert(), &cert);
    json(&serde_json::json!({
        "ca": hex::encode(c.ca.cert()),
        "certificate": hex::encode(&cert),
        "seal": hex::encode(seal),
    }))
}

/// A node certificate for `public_key`.
fn issue(
    c: &Control,
    public_key: &[u8; 32],
) -> anyhow::Result<rustls::pki_types::CertificateDer<'static>> {
    c.ca.issue_node(
        public_key,
        std::time::SystemTime::now(),
        c.node_cert_lifetime,
    )
}

fn json(v: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// A renewal (`POST /v1/renew`, JSON `{"public_key"}`, by a node presenting its current,
/// unrevoked certificate): a certificate for the new key, recorded for the same node so that
/// revoking the node revokes it too. Answer: `{"certificate"}` (DER, hex).
async fn renew(c: &Control, cert: &[u8], body: &[u8]) -> Response<Full<Bytes>> {
    #[derive(serde::Deserialize)]
    struct RenewRequest {
        public_key: String,
    }
    let Some(public_key) = serde_json::from_slice::<RenewRequest>(body)
        .ok()
        .and_then(|r| unhex::<32>(&r.public_key))
    else {
        return text(
            StatusCode::BAD_REQUEST,
            "a renewal is JSON: public_key (32 bytes, hex)",
        );
    };
    let new = match issue(c, &public_key) {
        Ok(cert) => cert,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let (old_fp, new_fp) = (ptls::fingerprint(cert), ptls::fingerprint(&new));
    let expires_ms = ptls::not_after_s(&new).map_or(u64::MAX, |s| s.saturating_mul(1000));
    let recorded = c
        .meta
        .write(move |kv| match trust::node_of_cert(kv, &old_fp)? {
            Some(node) => {
                trust::record_node_cert(kv, node, &new_fp, expires_ms).map(|_| Some(node))
            }
            None => Ok(None),
        })
        .await;
    match recorded {
        Ok(node) => tracing::info!(
            "renewed the certificate of node {}: {}",
            node.map_or("(not registered yet)".to_string(), |n| n.to_string()),
            hex::encode(&new_fp[..8])
        ),
        Err(e) => return text(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
    json(&serde_json::json!({ "certificate": hex::encode(&new) }))
}

/// The node the certificate `fp` was recorded for, if any.
async fn bound_node(
    c: &Control,
    fp: [u8; 32],
) -> Result<Option<u32>, ostore_control::meta::MetaError> {
    if let Some(n) = c.bound.lock().expect("bound lock").get(&fp) {
        return Ok(Some(*n));
    }
    let n = c.meta.read(move |kv| trust::node_of_cert(kv, &fp)).await?;
    if let Some(n) = n {
        c.bound.lock().expect("bound lock").insert(fp, n);
    }
    Ok(n)
}

/// The refusal of a heartbeat or a registration that the certificate fingerprinted `fp` may
/// not make: a heartbeat for another node than the certificate's, or a registration at another
/// node's peer address (or, for a certificate already bound to a node, at a new one). `None`:
/// it may (and any other call, which comes without a fingerprint).
async fn bound_to_caller(
    c: &Control,
    fp: Option<[u8; 32]>,
    request: &Rq,
) -> Option<Response<Full<Bytes>>> {
    let fp = fp?;
    let refuse = |m: String| Some(text(StatusCode::FORBIDDEN, &m));
    match request {
        Rq::Heartbeat { node, .. } => match bound_node(c, fp).await {
            Ok(Some(n)) if n == *node => None,
            Ok(Some(n)) => {
                tracing::warn!("node {n}'s certificate sent a heartbeat for node {node}: refused");
                refuse(format!(
                    "this certificate is node {n}'s: it cannot send node {node}'s heartbeats"
                ))
            }
            // Not bound (its record lost): "not known", so the node registers again, which
            // binds it (or refuses it, by the rules below).
            Ok(None) => Some(rpc_response(&Ok(rpc::encode_value(&cluster::Beat {
                known: false,
                epoch: 0,
            })))),
            Err(e) => Some(rpc_response(&Err(e))),
        },
        Rq::Register { reg } => {
            let peer = reg.peer.clone();
            let at = c
                .meta
                .read(move |kv| {
                    let Some(n) = cluster::view(kv)?
                        .nodes
                        .into_iter()
                        .find(|n| n.peer == peer)
                    else {
                        return Ok(None);
                    };
                    let certs = trust::certs_of(kv, n.id)?.len();
                    Ok(Some((n.id, n.up, certs)))
                })
                .await;
            match (bound_node(c, fp).await, at) {
                (Err(e), _) | (_, Err(e)) => Some(rpc_response(&Err(e))),
                (Ok(Some(b)), Ok(at)) if at.map(|a| a.0) != Some(b) => {
                    tracing::warn!(
                        "node {b}'s certificate tried to register at {}: refused",
                        reg.peer
                    );
                    refuse(format!(
                        "this certificate is node {b}'s, which is not at peer address {}: a \
                         node keeps its peer address (to move one, revoke it with `osctl nodes \
                         revoke` and join it again with a new token)",
                        reg.peer
                    ))
                }
                // A certificate bound to no node takes an existing node's address only from a
                // node that is down (a machine replaced after losing its disks) or that has no
                // certificate recorded: never from a live node that has its own.
                (Ok(None), Ok(Some((n, true, certs)))) if certs > 0 => {
                    tracing::warn!(
                        "a new certificate tried to register as node {n}, which is up: refused"
                    );
                    refuse(format!(
                        "node {n} is registered at peer address {} and up: a newly joined node \
                         cannot take its place (stop it first, or revoke it)",
                        reg.peer
                    ))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// What the root secret of `version` is sealed with besides the cluster key: its role and its
/// version, so no sealed value can stand in for another.
fn secret_seal_context(version: u64) -> Vec<u8> {
    format!("ostore root secret v{version}").into_bytes()
}
/// What the access-key base is sealed with besides the cluster key.
const KEY_BASE_SEAL_CONTEXT: &[u8] = b"ostore access key base";
/// The longest a replaced root secret may stay valid.
const SECRET_GRACE_MAX_MS: u64 = 7 * 24 * 3600 * 1000;

/// The client root secret, for nodes (they check clients with it): `POST /v1/secret`, JSON
/// `{"seed"?}` (the first node brings the secret it was started with; a cluster that has one
/// keeps it), or `POST /v1/secret/rotate`, JSON `{"id", "grace_ms"}` (a new random secret; the
/// current one stays valid for `grace_ms`). Answer: `{"version", "current", "previous": [{"secret",
/// "remaining_ms"}], "key_base"}` (the replaced secrets still within their grace, and for how
/// much longer).
async fn root_secret(c: &Control, rotate: bool, body: &[u8]) -> Response<Full<Bytes>> {
    #[derive(serde::Deserialize)]
    struct Ask {
        seed: Option<String>,
        id: Option<String>,
        grace_ms: Option<u64>,
    }
    let Ok(ask) = serde_json::from_slice::<Ask>(body) else {
        return text(
            StatusCode::BAD_REQUEST,
            "a root-secret request is JSON: seed, or id and grace_ms",
        );
    };
    let key = c.cluster_key.clone();
    let now = now_ms();
    let rec = if rotate {
        let (Some(id), Some(grace_ms)) = (ask.id.as_deref().and_then(unhex::<16>), ask.grace_ms)
        else {
            return text(
                StatusCode::BAD_REQUEST,
                "a rotation names its id (16 bytes, hex) and grace_ms",
            );
        };
        if grace_ms > SECRET_GRACE_MAX_MS {
            return text(
                StatusCode::BAD_REQUEST,
                "the grace of a replaced root secret is at most 7 days",
            );
        }
        let fresh = hex::encode(rand::random::<[u8; 32]>());
        let r = c
            .meta
            .write(move |kv| {
                let seal = |v: u64| ptls::seal(&key, &secret_seal_context(v), fresh.as_bytes());
                trust::rotate_secret(kv, id, &seal, now.saturating_add(grace_ms), now)
            })
            .await;
        if let Ok(r) = &r {
            tracing::info!("the root secret was rotated: version {}", r.version);
        }
        r
    } else {
        match ask.seed.filter(|s| !s.is_empty()) {
            None => c.meta.read(|kv| trust::secret(kv)).await.and_then(|r| {
                r.ok_or_else(|| {
                    ostore_control::meta::MetaError::Refused(
                        "the cluster has no root secret yet".into(),
                    )
                })
            }),
            Some(seed) => {
                c.meta
                    .write(move |kv| {
                        trust::seed_secret(kv, &|| {
                            // Access keys made before the cluster held the secret were
                            // derived from it and stay valid; otherwise their base is random.
                            let base = if ostore_control::meta::key_list(kv)?.is_empty() {
                                hex::encode(rand::random::<[u8; 32]>())
                            } else {
                                seed.clone()
                            };
                            Ok(trust::SecretRec {
                                version: 1,
                                current: ptls::seal(&key, &secret_seal_context(1), seed.as_bytes()),
                                previous: Vec::new(),
                                key_base: ptls::seal(&key, KEY_BASE_SEAL_CONTEXT, base.as_bytes()),
                                rotated_ms: now,
                                rotation: [0; 16],
                            })
                        })
                    })
                    .await
            }
        }
    };
    let rec = match rec {
        Ok(r) => r,
        Err(ostore_control::meta::MetaError::Refused(m)) => return text(StatusCode::CONFLICT, &m),
        Err(e) => return text(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let open = |ctx: &[u8], sealed: &[u8]| {
        ptls::unseal(&c.cluster_key, ctx, sealed)
            .and_then(|p| String::from_utf8(p).map_err(anyhow::Error::from))
    };
    let previous: anyhow::Result<Vec<serde_json::Value>> = rec
        .previous
        .iter()
        .filter(|p| p.until_ms > now)
        .map(|p| {
            open(&secret_seal_context(p.version), &p.sealed)
                .map(|s| serde_json::json!({ "secret": s, "remaining_ms": p.until_ms - now }))
        })
        .collect();
    match (
        open(&secret_seal_context(rec.version), &rec.current),
        previous,
        open(KEY_BASE_SEAL_CONTEXT, &rec.key_base),
    ) {
        (Ok(current), Ok(previous), Ok(key_base)) => json(&serde_json::json!({
            "version": rec.version,
            "current": current,
            "previous": previous,
            "key_base": key_base,
        })),
        _ => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the stored root secret does not open with this OSTORE_CLUSTER_KEY",
        ),
    }
}

/// Feeds a heartbeat to the failure detector; answers it without writing the metadata store
/// when the node is up and its heartbeat was written within [`cluster::HEARTBEAT_RECORD_MS`].
async fn beat_unrecorded(
    c: &Control,
    node: u32,
) -> Option<Result<Vec<u8>, ostore_control::meta::MetaError>> {
    let now = now_ms();
    c.liveness
        .lock()
        .expect("liveness lock")
        .heartbeat(node, now);
    let last = c
        .recorded
        .lock()
        .expect("recorded lock")
        .get(&node)
        .copied();
    if last.is_none_or(|t| now.saturating_sub(t) >= cluster::HEARTBEAT_RECORD_MS) {
        return None;
    }
    match c
        .meta
        .read(move |kv| cluster::heartbeat_unrecorded(kv, node))
        .await
    {
        Ok(Some(beat)) => Some(Ok(rpc::beat_answer(beat))),
        Ok(None) => None,
        Err(e) => Some(Err(e)),
    }
}

fn rpc_response(
    answer: &Result<Vec<u8>, ostore_control::meta::MetaError>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(rpc::encode_answer(answer))));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ostore-rpc"),
    );
    r
}

/// Failure detection, while this process leads: every heartbeat period, nodes the detector
/// judges down (`ostore_control::liveness`, about 2 s of silence) are marked down, which every
/// node learns with its next heartbeat's answer (the epoch moved). Runs apart from the other
/// background jobs so that none of them delays it.
async fn detector(c: Arc<Control>) {
    let period = Duration::from_millis(cluster::HEARTBEAT_MS);
    let mut last = std::time::Instant::now();
    loop {
        glommio::timer::sleep(period).await;
        if c.stopping.load(Ordering::Relaxed) {
            return;
        }
        // This process stalled (descheduled, its executor busy): the nodes' silence in that
        // time is its own, not theirs.
        let late = last.elapsed().saturating_sub(period);
        last = std::time::Instant::now();
        if late > period * 2 {
            c.liveness
                .lock()
                .expect("liveness lock")
                .paused(late.as_millis() as u64);
        }
        let Some(fence) = *c.leading.lock().expect("leading lock") else {
            continue;
        };
        let view = match c.meta.read(cluster::view).await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!("failure detection: reading the membership: {e}");
                continue;
            }
        };
        let now = now_ms();
        let judged: Vec<(u32, f64)> = {
            let mut l = c.liveness.lock().expect("liveness lock");
            // With several control processes, a node's heartbeats go to the one it calls; any
            // of them records one a second in the store, which the leader hears from here.
            for n in &view.nodes {
                l.heartbeat(n.id, n.heartbeat_ms);
            }
            view.nodes
                .iter()
                .filter(|n| n.up && l.down(n.id, now))
                .map(|n| (n.id, l.phi(n.id, now).unwrap_or(f64::INFINITY)))
                .collect()
        };
        if judged.is_empty() {
            continue;
        }
        let ids: Vec<u32> = judged.iter().map(|j| j.0).collect();
        match c
            .meta
            .write_fenced(fence, move |kv| cluster::mark_down(kv, &ids, now))
            .await
        {
            Ok(down) if !down.is_empty() => {
                for (id, phi) in judged.iter().filter(|j| down.contains(&j.0)) {
                    tracing::warn!("node {id} down: no heartbeat (phi {phi:.1})");
                }
            }
            Ok(_) => {}
            Err(e) => leader_error("marking nodes down", &e),
        }
    }
}

/// The background jobs, run while this process holds the leader lease.
async fn leader(c: Arc<Control>) {
    let holder: u64 = rand::random();
    let mut last_up: Option<usize> = None;
    let mut tick: u64 = 0;
    let mut rebalancer = Rebalancer::default();
    loop {
        tick += 1;
        glommio::timer::sleep(Duration::from_millis(1000)).await;
        if c.stopping.load(Ordering::Relaxed) {
            return;
        }
        let lead = c
            .meta
            .write(move |kv| cluster::take_lead(kv, holder, now_ms()))
            .await;
        let fence = match lead {
            Ok(Some(fence)) => fence,
            other => {
                if let Err(e) = other {
                    tracing::warn!("renewing the leader lease: {e}");
                }
                // Another process leads, or this one cannot tell: its jobs wait.
                if c.leading.lock().expect("leading lock").take().is_some() {
                    tracing::warn!("no longer leading the cluster");
                }
                last_up = None;
                continue;
            }
        };
        let was = c.leading.lock().expect("leading lock").replace(fence);
        if was != Some(fence) {
            tracing::info!("leading the cluster (term {})", fence.epoch);
        }
        let client = MetaClient::Leader(c.meta.clone(), fence);
        match c
            .meta
            .write_fenced(fence, |kv| cluster::expire_leases(kv, now_ms()))
            .await
        {
            Ok(down) if !down.is_empty() => tracing::warn!("nodes down (lease expired): {down:?}"),
            Ok(_) => {}
            Err(e) => leader_error("expiring leases", &e),
        }
        if let Err(e) = client.ask(ask::ExpireDone {}).await {
            leader_error("expiring request markers", &e);
        }
        if tick.is_multiple_of(TRUST_EXPIRY_TICKS) {
            if let Err(e) = client.ask(ask::ExpireTrust {}).await {
                leader_error("expiring used join tokens and revocations", &e);
            }
        }
        if let Err(e) = rebuild_lost_drives(&c, &client, fence).await {
            leader_error("scheduling rebuilds", &e);
        }
        if tick.is_multiple_of(DRAIN_CHECK_TICKS) {
            if let Err(e) = advance_drains(&client).await {
                leader_error("draining", &e);
            }
            if let Err(e) = rebalance(&client, &mut rebalancer).await {
                leader_error("rebalancing", &e);
            }
        }
        // Nodes came up: objects written while they were down may sit two to a node.
        let view: Result<ClusterView, _> = client.ask(ask::Cluster {}).await;
        if let Ok(v) = view {
            let up = v.nodes.iter().filter(|n| n.up).count();
            if last_up.is_some_and(|l| up > l) {
                match client.repair_scan().await {
                    Ok(n) if n > 0 => {
                        tracing::info!("nodes returned: {n} object(s) queued to spread out")
                    }
                    Ok(_) => {}
                    Err(e) => leader_error("repair scan", &e),
                }
            }
            last_up = Some(up);
        }
    }
}

/// Logs a leader job's failure: as an error, unless this process was deposed meanwhile and the
/// job's transaction was fenced, which is the fence doing its work.
fn leader_error(what: &str, e: &dyn std::fmt::Display) {
    let m = e.to_string();
    if m.contains(cluster::FENCED) {
        tracing::info!("{what}: {m}");
    } else {
        tracing::error!("{what}: {m}");
    }
}

/// Drains are checked every this many leader ticks (seconds).
const DRAIN_CHECK_TICKS: u64 = 3;
/// Used join tokens and revocations are looked at every this many ticks: nothing waits on them
/// going (an expired token or certificate is refused by its own date).
const TRUST_EXPIRY_TICKS: u64 = 60;

/// Whether any content waits in the move queue.
async fn moves_queued(client: &MetaClient) -> anyhow::Result<bool> {
    let queue: Vec<([u8; 32], u64)> = client
        .ask(ask::WorkQueue {
            moves: true,
            from: [0; 32],
            limit: 1,
        })
        .await?;
    Ok(!queue.is_empty())
}

/// Rebalancing, when the move queue is empty: `placement::Rebalancer` decides from the shards
/// each node in service holds which nodes offer how many contents per drive, and this queues
/// them for moving, each drive from a random point of its index (so that drives holding shards
/// of the same objects offer different ones). The nodes then move one shard per content to the
/// least loaded node that holds none of it (`placement::moves`).
async fn rebalance(client: &MetaClient, rebalancer: &mut Rebalancer) -> anyhow::Result<()> {
    if moves_queued(client).await? {
        return Ok(());
    }
    let view: ClusterView = client.ask(ask::Cluster {}).await?;
    let eligible: Vec<&cluster::NodeRec> = view
        .nodes
        .iter()
        .filter(|n| n.up && !view.draining(n.id) && n.drives.iter().any(|d| !d.refill))
        .collect();
    if eligible.len() < 2 {
        return Ok(());
    }
    let drives: Vec<u16> = eligible
        .iter()
        .flat_map(|n| n.drives.iter().map(|d| d.id))
        .collect();
    let counts: Vec<i64> = client
        .ask(ask::DriveShardCounts {
            drives: drives.clone(),
        })
        .await?;
    let loads: Vec<NodeLoad> = eligible
        .iter()
        .map(|n| {
            let sum: i64 = n
                .drives
                .iter()
                .filter_map(|d| drives.iter().position(|x| *x == d.id).map(|i| counts[i]))
                .sum();
            NodeLoad {
                node: n.id,
                shards: sum.max(0) as u64,
                drives: n.drives.len(),
            }
        })
        .collect();
    let mut queued = 0;
    for (id, per_drive) in rebalancer.round(view.epoch, &loads) {
        let Some(node) = eligible.iter().find(|n| n.id == id) else {
            continue;
        };
        for d in &node.drives {
            queued += client
                .queue_drive_for_move(d.id, per_drive, Some(rand::random()))
                .await?;
        }
    }
    if queued > 0 {
        tracing::info!(
            "rebalancing: {queued} content(s) queued to move toward {:.0} shards per node",
            Rebalancer::mean(&loads)
        );
    }
    Ok(())
}

/// Contents queued per drive and round of a drain (the next round comes once the move queue
/// has run dry).
const DRAIN_BATCH: usize = 10_000;

/// Moves drains along. The drive counters say cheaply whether a draining node still holds
/// shards; only when they say none is the index counted exactly, with the intents and uploads
/// that list the node's drives, and the node recorded as drained (and no longer drained should
/// anything land on it again). While it holds shards, a batch of them is queued for moving
/// whenever the move queue has run dry, so shards committed since — an upload that finished, a
/// move that failed — are picked up too.
async fn advance_drains(client: &MetaClient) -> anyhow::Result<()> {
    let view: ClusterView = client.ask(ask::Cluster {}).await?;
    for (node, d) in &view.drains {
        let drives: Vec<u16> = view
            .nodes
            .iter()
            .filter(|n| n.id == *node)
            .flat_map(|n| n.drives.iter().map(|d| d.id))
            .collect();
        let counts: Vec<i64> = client
            .ask(ask::DriveShardCounts {
                drives: drives.clone(),
            })
            .await?;
        let left: i64 = counts.iter().map(|c| (*c).max(0)).sum();
        let mut facts = DrainFacts {
            shards_left: left as u64,
            exactly_empty: None,
            settled: drain_settled(d.started_ms, now_ms()),
            done: d.done_ms.is_some(),
            moves_queued: false,
        };
        if left > 0 {
            facts.moves_queued = moves_queued(client).await?;
        }
        let mut step = drain_step(facts);
        if step == DrainStep::CountExactly {
            let p: cluster::DrainProgress = client
                .ask(ask::DrainProgress {
                    node: *node,
                    exact: true,
                })
                .await?;
            facts.exactly_empty = Some(p.empty());
            step = drain_step(facts);
        }
        let undo = match step {
            DrainStep::CountExactly | DrainStep::Wait => continue,
            DrainStep::MarkDone(done) => {
                client.ask(ask::SetDrainDone { node: *node, done }).await?;
                if done {
                    tracing::info!("node {node} is drained: it holds no shards");
                }
                continue;
            }
            DrainStep::Queue { undo_done } => undo_done,
        };
        if undo {
            client
                .ask(ask::SetDrainDone {
                    node: *node,
                    done: false,
                })
                .await?;
        }
        let mut queued = 0;
        for drive in drives {
            queued += client
                .queue_drive_for_move(drive, DRAIN_BATCH, None)
                .await?;
        }
        tracing::info!(
            "draining node {node}: {queued} content(s) queued to move, {left} shard(s) left"
        );
    }
    Ok(())
}

/// Queues every content with a shard on a drive flagged for refill or on a node down past the
/// grace period.
async fn rebuild_lost_drives(
    c: &Control,
    client: &MetaClient,
    fence: cluster::Fence,
) -> anyhow::Result<()> {
    let grace = c.down_grace.as_millis() as u64;
    let drives = c
        .meta
        .read(move |kv| cluster::drives_to_rebuild(kv, now_ms(), grace))
        .await?;
    for (node, drive) in drives {
        let queued = client.queue_drive_for_repair(drive).await?;
        c.meta
            .write_fenced(fence, move |kv| {
                cluster::drive_rebuild_queued(kv, node, drive)
            })
            .await?;
        tracing::info!("drive {drive} of node {node}: {queued} shard(s) queued for rebuild");
    }
    Ok(())
}
