//! How a data node reaches the control plane: in-process for `ostore dev` (the embedded store),
//! or over HTTP on mutual TLS to `ostore control` for a cluster node (its node certificate;
//! [`join`] gets one with a join token). Both run the same
//! [`ostore_control::rpc::Request`]s through the same `rpc::execute`.
//!
//! The remote client keeps a few idle keep-alive connections per executor (thread-local, since
//! connections belong to one executor's reactor) and never blocks the executor.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use ostore_control::meta::MetaError;
use ostore_control::rpc::{self, ask, Ask, Request};
use ostore_control::service::Meta;
use ostore_server::compat::HyperStream;
use ostore_transport::tls::{Identity, LiveIdentity, Revoked, CONTROL_NAME};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Idle connections kept per executor.
const IDLE_CONNECTIONS_MAX: usize = 16;

#[derive(Clone)]
pub enum MetaClient {
    Local(Meta),
    /// In process, for the leader's jobs: every write is fenced by the leader's term
    /// (`cluster::fenced`), so a deposed leader's decisions never apply.
    Leader(Meta, ostore_control::cluster::Fence),
    Remote(RemoteMeta),
}

impl MetaClient {
    /// Runs `req` and returns its answer, of the type the request names (`rpc::Ask`).
    pub async fn ask<A: Ask>(&self, req: A) -> Result<A::Answer, MetaError> {
        self.call(req.into()).await
    }

    /// Runs `req`; `T` is the return type named on the request's variant.
    async fn call<T: serde::de::DeserializeOwned>(&self, req: Request) -> Result<T, MetaError> {
        let bytes = match self {
            MetaClient::Local(m) | MetaClient::Leader(m, _) => {
                let read = !req.is_write();
                let r = match self {
                    MetaClient::Leader(_, fence) => m.call_fenced(*fence, req).await,
                    _ => m.call(req).await,
                };
                // A local read runs on this executor's thread without yielding: a loop of them
                // (a GC or scrub pass paging through every content) would hold the executor,
                // and every connection it serves, for the whole scan. Yield once the task's
                // time slice is used up, so a scan costs clients one page at a time.
                if read {
                    glommio::yield_if_needed().await;
                }
                r?
            }
            MetaClient::Remote(r) => return r.call(req).await,
        };
        rpc::decode_value(&bytes)
    }
}

impl MetaClient {
    /// Runs a whole repair scan (`Request::RepairScan`, page by page over every content);
    /// returns how many objects were queued.
    pub async fn repair_scan(&self) -> Result<u64, MetaError> {
        let mut after = None;
        let mut total = 0;
        loop {
            let (queued, next): (u64, Option<[u8; 32]>) = self
                .ask(ask::RepairScan {
                    after,
                    nonce: rand::random(),
                })
                .await?;
            total += queued;
            match next {
                Some(n) => after = Some(n),
                None => return Ok(total),
            }
        }
    }

    /// Queues every content with a shard on `drive` for repair, a page at a time; returns how
    /// many shards were queued.
    pub async fn queue_drive_for_repair(&self, drive: u16) -> Result<usize, MetaError> {
        self.queue_drive(drive, false, usize::MAX, None).await
    }

    /// Queues up to `limit` contents with a shard on `drive` to have shards moved (copied, not
    /// rebuilt), starting after `from` in hash order and wrapping around; returns how many
    /// were queued.
    pub async fn queue_drive_for_move(
        &self,
        drive: u16,
        limit: usize,
        from: Option<[u8; 32]>,
    ) -> Result<usize, MetaError> {
        self.queue_drive(drive, true, limit, from).await
    }

    async fn queue_drive(
        &self,
        drive: u16,
        moving: bool,
        limit: usize,
        from: Option<[u8; 32]>,
    ) -> Result<usize, MetaError> {
        let start = from.map(|h| (h, 0u8));
        let mut after = start;
        let mut wrapped = false;
        let mut queued = 0;
        while queued < limit {
            let page: Vec<([u8; 32], u8)> = self
                .ask(ask::ShardsOnDrive {
                    drive,
                    after,
                    limit: 1000.min(limit - queued),
                })
                .await?;
            // Past the start again after wrapping: every shard was seen.
            let page: Vec<([u8; 32], u8)> = match (wrapped, start) {
                (true, Some(s)) => page.into_iter().take_while(|p| *p <= s).collect(),
                _ => page,
            };
            let Some(last) = page.last().copied() else {
                if start.is_some() && !wrapped {
                    wrapped = true;
                    after = None;
                    continue;
                }
                return Ok(queued);
            };
            queued += page.len();
            let contents = page.iter().map(|p| p.0).collect();
            let nonce = rand::random();
            if moving {
                self.ask(ask::QueueMove { contents, nonce }).await?;
            } else {
                self.ask(ask::QueueRepair { contents, nonce }).await?;
            }
            after = Some(last);
        }
        Ok(queued)
    }
}

/// The control plane's processes (any of them serves every call), called over mutual TLS with
/// this node's certificate.
///
/// A call goes to the process that answered last; one that refuses the connection, fails, or
/// has not answered within [`ATTEMPT_TIMEOUT`] (paused, partitioned, its store stuck) is left
/// for the next, and the call is sent again **with the same token**, so a write whose answer
/// was lost is not applied twice (`rpc::execute_idempotent`). A call that no process answered
/// within [`CALL_BUDGET`] fails as [`MetaError::Unavailable`]: the client sees a 503 with
/// `Retry-After`.
#[derive(Clone)]
pub struct RemoteMeta {
    addrs: Arc<[SocketAddr]>,
    tls: futures_rustls::TlsConnector,
    /// The process that answered last (an index into `addrs`), shared by every executor.
    current: Arc<AtomicUsize>,
}

/// With several control processes, one that has not answered a call within this long is taken
/// as failed for it and the next one is asked.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1000);
/// A control-plane call that no process answered within this long fails (and the request with
/// it, with a 503).
pub const CALL_BUDGET: Duration = Duration::from_secs(6);

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Why one try of a call failed: the process failed (ask the next), or it refused the call
/// itself (every process would).
enum Tried {
    Failed(MetaError),
    Refused(MetaError),
}

impl From<MetaError> for Tried {
    fn from(e: MetaError) -> Self {
        Tried::Failed(e)
    }
}

thread_local! {
    static IDLE: RefCell<Vec<(SocketAddr, Sender, std::time::Instant)>> = const { RefCell::new(Vec::new()) };
}

/// An idle connection older than this is not reused: the control plane closes connections idle
/// for its `--idle-timeout` (60 s by default), and one closing while a request goes out would
/// fail that request.
const IDLE_REUSE_MAX: std::time::Duration = std::time::Duration::from_secs(20);

fn unavailable(e: impl std::fmt::Display) -> MetaError {
    MetaError::Unavailable(e.to_string())
}

impl RemoteMeta {
    /// The control processes at `addrs` (at least one); calls start at a random one of them,
    /// so the nodes of a cluster spread over them.
    /// Servers are checked against `identity`'s CA (for [`CONTROL_NAME`]) and `revoked`.
    pub fn new(
        addrs: Vec<SocketAddr>,
        identity: &LiveIdentity,
        revoked: &Revoked,
    ) -> anyhow::Result<Self> {
        assert!(!addrs.is_empty(), "at least one control-plane address");
        let start = rand::random::<usize>() % addrs.len();
        let cfg = ostore_transport::tls::client_config(
            identity,
            revoked,
            ostore_transport::tls::CONTROL_ALPN,
        )?;
        Ok(RemoteMeta {
            addrs: addrs.into(),
            tls: futures_rustls::TlsConnector::from(Arc::new(cfg)),
            current: Arc::new(AtomicUsize::new(start)),
        })
    }

    /// The control process calls go to first now.
    pub fn current(&self) -> SocketAddr {
        self.addrs[self.current.load(Ordering::Relaxed) % self.addrs.len()]
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Sender, MetaError> {
        tls_connect(&self.tls, addr).await
    }

    fn idle(addr: SocketAddr) -> Option<Sender> {
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            while let Some(i) = idle.iter().position(|(a, _, _)| *a == addr) {
                let (_, s, since) = idle.swap_remove(i);
                if !s.is_closed() && since.elapsed() < IDLE_REUSE_MAX {
                    return Some(s);
                }
            }
            None
        })
    }

    /// One try of a call at `addr`.
    async fn attempt(
        &self,
        addr: SocketAddr,
        path: &'static str,
        content_type: &'static str,
        body: Bytes,
    ) -> Result<Bytes, Tried> {
        // An idle connection the control plane has closed fails before sending anything;
        // then a fresh one is used.
        let mut sender = match Self::idle(addr) {
            Some(s) => s,
            None => self.connect(addr).await?,
        };
        if sender.ready().await.is_err() {
            sender = self.connect(addr).await?;
            sender.ready().await.map_err(unavailable)?;
        }
        let (status, bytes) = post(&mut sender, path, content_type, body).await?;
        if !status.is_success() {
            let e = unavailable(format!(
                "control plane at {addr} answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            ));
            // A refusal of this node's credentials or request is the same at every process:
            // no other is asked (a revoked certificate is not an outage).
            if status.is_client_error() && status != http::StatusCode::REQUEST_TIMEOUT {
                return Err(Tried::Refused(e));
            }
            return Err(e.into());
        }
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            if idle.len() < IDLE_CONNECTIONS_MAX {
                idle.push((addr, sender, std::time::Instant::now()));
            }
        });
        Ok(bytes)
    }

    pub async fn call<T: serde::de::DeserializeOwned>(&self, req: Request) -> Result<T, MetaError> {
        // Every try of this call carries the same token: a write whose answer was lost is
        // answered from its marker, not applied again.
        let token = rpc::Token::new(rand::random(), ostore_control::service::now_ms());
        let body = Bytes::from(rpc::encode_request(&token, &req));
        let bytes = self
            .send("/v1/rpc", "application/x-ostore-rpc", body)
            .await?;
        rpc::decode_answer(&bytes)
    }

    /// Has the control plane sign a certificate for the Ed25519 `public_key`, presenting this
    /// node's current one (`POST /v1/renew`); the new certificate's DER.
    pub async fn renew(&self, public_key: &[u8; 32]) -> Result<Vec<u8>, MetaError> {
        let body = serde_json::json!({ "public_key": hex::encode(public_key) }).to_string();
        let bytes = self
            .send("/v1/renew", "application/json", Bytes::from(body))
            .await?;
        #[derive(serde::Deserialize)]
        struct Answer {
            certificate: String,
        }
        let a: Answer = serde_json::from_slice(&bytes)
            .map_err(|e| unavailable(format!("the renewal answer: {e}")))?;
        hex::decode(&a.certificate).map_err(|e| unavailable(format!("the renewal answer: {e}")))
    }

    /// The cluster's client root secret (`seed`: the one this node was started with, stored if
    /// the cluster has none yet).
    pub async fn root_secret(&self, seed: Option<&str>) -> Result<RootSecrets, MetaError> {
        let body = serde_json::json!({ "seed": seed }).to_string();
        let bytes = self
            .send("/v1/secret", "application/json", Bytes::from(body))
            .await?;
        RootSecrets::parse(&bytes)
    }

    /// Replaces the cluster's root secret with a new random one; the current one stays valid
    /// for `grace`. `id` names this rotation: sent again (a lost answer), it rotates nothing
    /// more.
    pub async fn rotate_secret(
        &self,
        id: [u8; 16],
        grace: Duration,
    ) -> Result<RootSecrets, MetaError> {
        let body = serde_json::json!({
            "id": hex::encode(id),
            "grace_ms": u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
        })
        .to_string();
        let bytes = self
            .send("/v1/secret/rotate", "application/json", Bytes::from(body))
            .await?;
        RootSecrets::parse(&bytes)
    }

    /// Sends `body` to `path` at the process that answered last, failing over as [`call`]
    /// says; the answer's body.
    async fn send(
        &self,
        path: &'static str,
        content_type: &'static str,
        body: Bytes,
    ) -> Result<Bytes, MetaError> {
        let started = std::time::Instant::now();
        let n = self.addrs.len();
        // With one process there is no other to try: its answer is waited for as long as the
        // budget allows.
        let per_try = if n > 1 { ATTEMPT_TIMEOUT } else { CALL_BUDGET };
        let mut first = self.current.load(Ordering::Relaxed) % n;
        let mut last_error = None;
        let mut round = 0u32;
        loop {
            for k in 0..n {
                let i = (first + k) % n;
                let addr = self.addrs[i];
                let left = CALL_BUDGET.saturating_sub(started.elapsed());
                if left.is_zero() {
                    return Err(unavailable(format!(
                        "no answer from the control plane ({}) in {CALL_BUDGET:?}: {}",
                        self.list(),
                        last_error.map_or_else(String::new, |e: MetaError| e.to_string())
                    )));
                }
                let wait = per_try.min(left);
                let r = futures_lite::future::or(
                    self.attempt(addr, path, content_type, body.clone()),
                    async {
                        glommio::timer::sleep(wait).await;
                        Err(unavailable(format!("no answer from {addr} in {wait:?}")).into())
                    },
                )
                .await;
                match r {
                    Ok(bytes) => {
                        if self.current.swap(i, Ordering::Relaxed) % n != i {
                            tracing::info!("control plane: now calling {addr}");
                        }
                        return Ok(bytes);
                    }
                    Err(Tried::Refused(e)) => return Err(e),
                    Err(Tried::Failed(e)) => {
                        tracing::debug!("control plane at {addr}: {e}");
                        last_error = Some(e);
                    }
                }
            }
            // Every process failed this round (refused, most likely: restarting). Pause a
            // little before the next round, within the budget.
            round += 1;
            first = self.current.load(Ordering::Relaxed) % n;
            let pause = Duration::from_millis(50u64 << round.min(4));
            let left = CALL_BUDGET.saturating_sub(started.elapsed());
            glommio::timer::sleep(pause.min(left)).await;
        }
    }

    fn list(&self) -> String {
        self.addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The client root secrets of a cluster, as the control plane hands them to nodes.
#[derive(Clone, PartialEq, Eq)]
pub struct RootSecrets {
    /// One more at each rotation.
    pub version: u64,
    pub current: String,
    /// The secrets `current` replaced that are still within their grace, and how much longer
    /// each is valid (from when they were read).
    pub previous: Vec<(String, Duration)>,
    /// What S3 access-key secrets are derived from (never rotated).
    pub key_base: String,
}

impl std::fmt::Debug for RootSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets themselves: this may reach a log.
        f.debug_struct("RootSecrets")
            .field("version", &self.version)
            .field(
                "previous",
                &self.previous.iter().map(|p| p.1).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl RootSecrets {
    fn parse(bytes: &[u8]) -> Result<RootSecrets, MetaError> {
        #[derive(serde::Deserialize)]
        struct Previous {
            secret: String,
            remaining_ms: u64,
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            version: u64,
            current: String,
            previous: Vec<Previous>,
            key_base: String,
        }
        let a: Answer = serde_json::from_slice(bytes)
            .map_err(|e| unavailable(format!("the root-secret answer: {e}")))?;
        Ok(RootSecrets {
            version: a.version,
            current: a.current,
            previous: a
                .previous
                .into_iter()
                .map(|p| (p.secret, Duration::from_millis(p.remaining_ms)))
                .collect(),
            key_base: a.key_base,
        })
    }
}

/// `POST path` on `sender`: the answer's status and body.
async fn post(
    sender: &mut Sender,
    path: &'static str,
    content_type: &'static str,
    body: Bytes,
) -> Result<(http::StatusCode, Bytes), MetaError> {
    let request = http::Request::post(path)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(body))
        .map_err(unavailable)?;
    let resp = sender.send_request(request).await.map_err(unavailable)?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(unavailable)?
        .to_bytes();
    Ok((status, bytes))
}

/// An HTTP/1.1 connection over TLS to the control process at `addr`.
async fn tls_connect(
    tls: &futures_rustls::TlsConnector,
    addr: SocketAddr,
) -> Result<Sender, MetaError> {
    let stream = glommio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| unavailable(format!("connecting to {addr}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from(CONTROL_NAME).expect("a valid name");
    let stream = tls
        .connect(name, stream)
        .await
        .map_err(|e| unavailable(format!("TLS with the control plane at {addr}: {e}")))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(HyperStream(stream))
        .await
        .map_err(unavailable)?;
    glommio::spawn_local(async move {
        let _ = conn.await;
    })
    .detach();
    Ok(sender)
}

/// How long one join call may take.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Joins the cluster with `token`: makes a key, has a control process at one of `addrs` sign
/// it, and checks the answer's seal (`ostore_wire::join`) before trusting the CA it names.
pub async fn join(addrs: &[SocketAddr], token: &str) -> anyhow::Result<Identity> {
    use anyhow::Context as _;
    let token = ostore_wire::join::Token::parse(token)?;
    let now_s = ostore_control::service::now_ms() / 1000;
    if token.expires_s <= now_s {
        anyhow::bail!("the join token expired (make a new one with `osctl nodes token`)");
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
    let public: [u8; 32] = key
        .public_key_raw()
        .try_into()
        .context("an Ed25519 public key is 32 bytes")?;
    let body = serde_json::json!({
        "expires": token.expires_s,
        "nonce": hex::encode(token.nonce),
        "public_key": hex::encode(public),
        "proof": hex::encode(token.proof(&public)),
    });
    let tls = futures_rustls::TlsConnector::from(Arc::new(ostore_transport::tls::join_client()?));
    let mut errors = Vec::new();
    for &addr in addrs {
        let tried = futures_lite::future::or(
            async {
                let mut sender = tls_connect(&tls, addr).await?;
                let body = Bytes::from(body.to_string());
                post(&mut sender, "/v1/join", "application/json", body).await
            },
            async {
                glommio::timer::sleep(JOIN_TIMEOUT).await;
                Err(unavailable(format!("no answer in {JOIN_TIMEOUT:?}")))
            },
        )
        .await;
        let (status, bytes) = match tried {
            Ok(r) => r,
            Err(e) => {
                errors.push(format!("{addr}: {e}"));
                continue;
            }
        };
        if !status.is_success() {
            // A refused token is refused by every process.
            anyhow::bail!(
                "the control plane at {addr} refused to let this node join ({status}): {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            ca: String,
            certificate: String,
            seal: String,
        }
        let a: Answer = serde_json::from_slice(&bytes).context("the join answer")?;
        let ca = hex::decode(&a.ca).context("the join answer's CA")?;
        let cert = hex::decode(&a.certificate).context("the join answer's certificate")?;
        let seal: [u8; 32] = hex::decode(&a.seal)
            .ok()
            .and_then(|s| s.try_into().ok())
            .context("the join answer's seal")?;
        if !token.answer_sealed(&ca, &cert, &seal) {
            anyhow::bail!(
                "the join answer from {addr} is not sealed with this token: it did not come \
                 from this cluster's control plane"
            );
        }
        // The certificate must chain to the CA it came with.
        return Identity {
            ca: ca.into(),
            cert: cert.into(),
            key: ostore_transport::tls::ed25519_pkcs8(&key),
        }
        .verified(ostore_transport::tls::NODE_NAME);
    }
    anyhow::bail!(
        "no control process answered the join call: {}",
        errors.join("; ")
    )
}
