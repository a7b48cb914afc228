//! HTTP plumbing every front end shares (the native API, tus, admin, HTTP/3): request and
//! response bodies, API errors and how store and metadata errors map onto them, credentials,
//! query strings, keys, conditional headers, content codings, and the Alt-Svc this node
//! advertises for HTTP/3. Nothing here routes a request.

use crate::ctx::Node;
use crate::store::{self, BodySource, StoreError};
use bytes::{Buf, Bytes};
use futures_util::stream::Stream;
use h3::server::RequestStream;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use ostore_control::keys::{valid_bucket, valid_object_key};
use ostore_control::meta::{MetaError, WriteCondition};
use ostore_transport::http3::H3Recv;
use serde_json::json;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::task::{Context, Poll};

/// Most body bytes read and dropped after a PUT failed, so the client can read the error.
const DRAIN_ON_ERROR_BYTES_MAX: u64 = 64 << 20;

/// Response bodies: a whole buffer, or a stream produced on this executor (so not `Send`).
pub enum RespBody {
    Full(Option<Bytes>),
    /// A stream and its exact length, if known in advance (else the body is chunked).
    Stream(
        Pin<Box<dyn Stream<Item = Result<Bytes, StoreError>>>>,
        Option<u64>,
    ),
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = StoreError;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StoreError>>> {
        match self.get_mut() {
            RespBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RespBody::Stream(s, _) => {
                // A body still streaming out keeps the node counted as serving.
                crate::foreground::touch();
                s.as_mut()
                    .poll_next(cx)
                    .map(|o| o.map(|r| r.map(Frame::data)))
            }
        }
    }
    fn is_end_stream(&self) -> bool {
        matches!(self, RespBody::Full(None))
    }
    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            RespBody::Full(None) => SizeHint::with_exact(0),
            RespBody::Stream(_, Some(n)) => SizeHint::with_exact(*n),
            RespBody::Stream(_, None) => SizeHint::default(),
        }
    }
}

pub(crate) type Resp = Response<RespBody>;

/// A request body: HTTP/1.1 (hyper's) or HTTP/3 (the receiving half of the request stream).
/// Every route reads either the same way.
pub enum ReqBody {
    H1(Incoming),
    H3(crate::web::H3Body),
}

/// Why reading a request body failed.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BodyError;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ReqBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ReqBody::H3(b) => b.poll_frame(cx),
        }
    }
}

/// An error answer: status, contract code, message.
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds after which a retry may succeed (`Retry-After`), for conditions that pass.
    pub retry_after_s: Option<u32>,
}

pub(crate) fn err(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        code,
        message: message.into(),
        retry_after_s: None,
    }
}

/// How long a client should wait before retrying a write refused for too few nodes up: about
/// what failure detection and a node's return take.
const NODES_RETRY_AFTER_S: u32 = 5;
/// `Retry-After` of a request the control plane did not answer in time: a failover ends
/// within seconds.
const META_RETRY_AFTER_S: u32 = 1;
/// The same for S3's 503s, as a header value.
pub const RETRY_AFTER_S: &str = "1";

impl ApiError {
    pub(crate) fn into_response(self) -> Resp {
        let body = json!({"error": {"code": self.code, "message": self.message}}).to_string();
        let mut r = Response::new(RespBody::Full(Some(Bytes::from(body))));
        *r.status_mut() = self.status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(s) = self.retry_after_s {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

impl From<MetaError> for ApiError {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::NoSuchBucket => err(
                StatusCode::NOT_FOUND,
                "NoSuchBucket",
                "the bucket does not exist",
            ),
            MetaError::NoSuchKey => {
                err(StatusCode::NOT_FOUND, "NoSuchKey", "the key does not exist")
            }
            MetaError::NoSuchVersion => err(
                StatusCode::NOT_FOUND,
                "NoSuchVersion",
                "the version does not exist",
            ),
            MetaError::NoSuchUpload => err(
                StatusCode::NOT_FOUND,
                "NoSuchUpload",
                "the upload does not exist",
            ),
            MetaError::BucketNotEmpty => {
                err(StatusCode::CONFLICT, "Conflict", "the bucket is not empty")
            }
            MetaError::PreconditionFailed => err(
                StatusCode::PRECONDITION_FAILED,
                "PreconditionFailed",
                "a precondition header did not match",
            ),
            MetaError::UploadOffset(o) => err(
                StatusCode::CONFLICT,
                "Conflict",
                format!("the upload is at offset {o}"),
            ),
            MetaError::UploadBusy => err(
                StatusCode::CONFLICT,
                "Conflict",
                "another request is writing this upload",
            ),
            MetaError::NoSuchNode => err(
                StatusCode::NOT_FOUND,
                "NoSuchNode",
                "no node of the cluster has this id or address",
            ),
            MetaError::Refused(m) => err(StatusCode::CONFLICT, "Conflict", m),
            MetaError::Unavailable(m) => {
                tracing::warn!("control plane: {m}");
                ApiError {
                    retry_after_s: Some(META_RETRY_AFTER_S),
                    ..err(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", m)
                }
            }
            other => {
                tracing::error!("metadata: {other}");
                err(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    other.to_string(),
                )
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::BadDigest => err(StatusCode::BAD_REQUEST, "BadDigest", e.to_string()),
            StoreError::Body(store::BodyFault::Stalled(_)) => {
                err(StatusCode::REQUEST_TIMEOUT, "RequestTimeout", e.to_string())
            }
            StoreError::Body(m) => err(StatusCode::BAD_REQUEST, "IncompleteBody", m.to_string()),
            StoreError::TooLarge => err(
                StatusCode::PAYLOAD_TOO_LARGE,
                "EntityTooLarge",
                e.to_string(),
            ),
            StoreError::InsufficientStorage(m) => {
                err(StatusCode::INSUFFICIENT_STORAGE, "InsufficientStorage", m)
            }
            StoreError::NotEnoughNodes(m) => ApiError {
                retry_after_s: Some(NODES_RETRY_AFTER_S),
                ..err(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", m)
            },
            StoreError::InsufficientShards { .. } => err(
                StatusCode::SERVICE_UNAVAILABLE,
                "InsufficientShards",
                e.to_string(),
            ),
            StoreError::Meta(m) => m.into(),
            other => {
                tracing::error!("store: {other}");
                err(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    other.to_string(),
                )
            }
        }
    }
}

pub(crate) fn query(req: &Request<ReqBody>) -> HashMap<String, String> {
    req.uri().query().map(parse_query).unwrap_or_default()
}

/// A query string's parameters, percent-decoded (the last of a repeated name wins).
pub fn parse_query(q: &str) -> HashMap<String, String> {
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

/// An object key from its percent-encoded form in the path.
pub fn decode_key(raw: &str) -> Result<String, ApiError> {
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(raw).collect();
    let key = String::from_utf8(bytes)
        .map_err(|_| err(StatusCode::BAD_REQUEST, "InvalidKey", "key is not UTF-8"))?;
    if !valid_object_key(&key) {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "InvalidKey",
            "keys are 1..=1024 bytes of UTF-8 without NUL",
        ));
    }
    Ok(key)
}

pub fn bucket_of(q: &HashMap<String, String>) -> Result<String, ApiError> {
    let b = q.get("bucket").cloned().unwrap_or_else(|| "default".into());
    if !valid_bucket(&b) {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            "invalid bucket name",
        ));
    }
    Ok(b)
}

pub fn version_of(q: &HashMap<String, String>) -> Result<Option<u64>, ApiError> {
    match q.get("version") {
        None => Ok(None),
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|v| *v > 0)
            .map(Some)
            .ok_or_else(|| {
                err(
                    StatusCode::BAD_REQUEST,
                    "InvalidArgument",
                    "version must be a positive integer",
                )
            }),
    }
}

pub(crate) fn json_response(status: StatusCode, v: serde_json::Value) -> Resp {
    let mut r = Response::new(RespBody::Full(Some(Bytes::from(v.to_string()))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The front ends' context: the store's (`ctx::Node`), plus what only the front ends hold: the
/// client credentials and the limits on what one client may hold. Nothing below the front ends
/// can reach a client credential or needs to know about connections.
pub struct Front {
    pub node: std::sync::Arc<Node>,
    pub creds: Credentials,
    /// What one client may hold: connections, and time between bytes.
    pub limits: ostore_server::conn::Limits,
    /// The domain under which S3 is also served virtual-hosted style (`BUCKET.DOMAIN`).
    pub s3_domain: Option<String>,
    /// TLS of the HTTP/1.1 listeners (native API, S3): `None` serves plain HTTP.
    pub https: Option<std::sync::Arc<rustls::ServerConfig>>,
}

impl ostore_server::conn::Host for Front {
    fn limits(&self) -> &ostore_server::conn::Limits {
        &self.limits
    }
    fn metrics(&self) -> &ostore_server::metrics::Metrics {
        &self.node.metrics
    }
    fn is_stopping(&self) -> bool {
        self.node.stopping.load(Ordering::Relaxed)
    }
}

/// The client root secrets a front end accepts, as of one moment.
#[derive(Clone)]
pub struct Secrets {
    /// The cluster's version of them (0 in `ostore dev`): one more at each rotation.
    pub version: u64,
    pub current: String,
    /// Secrets `current` replaced, each accepted until its instant (for the client APIs, not
    /// for the admin routes).
    pub previous: Vec<(String, std::time::Instant)>,
    /// What S3 access-key secrets are derived from: the first root secret in `ostore dev`
    /// (kept in `DIR/access-keys.secret` once it was rotated); the cluster's own base in a
    /// cluster. Never rotated.
    pub key_base: String,
}

impl Secrets {
    /// The replaced secrets still within their grace.
    fn previous_valid(&self) -> impl Iterator<Item = &str> {
        let now = std::time::Instant::now();
        self.previous
            .iter()
            .filter(move |(_, until)| now < *until)
            .map(|(p, _)| p.as_str())
    }
}

/// What the front ends check a client's credentials against. A rotation replaces the secrets
/// in place: requests from then on see the new ones.
pub struct Credentials {
    secrets: std::sync::RwLock<std::sync::Arc<Secrets>>,
    /// Where `ostore dev` keeps its root secret, which a rotation rewrites (`None`: it came
    /// from `OSTORE_SECRET`, or this is a cluster node).
    pub(crate) file: Option<std::path::PathBuf>,
}

impl Credentials {
    pub fn new(secrets: Secrets, file: Option<std::path::PathBuf>) -> Credentials {
        Credentials {
            secrets: std::sync::RwLock::new(std::sync::Arc::new(secrets)),
            file,
        }
    }

    pub fn secrets(&self) -> std::sync::Arc<Secrets> {
        self.secrets.read().expect("secrets lock").clone()
    }

    /// Takes `s` unless what is held is newer (a fetch that finished after a later rotation
    /// was taken).
    pub fn set(&self, s: Secrets) {
        let mut held = self.secrets.write().expect("secrets lock");
        if s.version >= held.version {
            *held = std::sync::Arc::new(s);
        }
    }

    /// The secret of an S3 access key: the root key (`root`) signs with the root secret.
    pub(crate) fn s3_secret(&self, access_key: &str) -> Option<String> {
        (access_key == "root").then(|| self.secrets().current.clone())
    }

    /// The root secrets rotations replaced, while they are still accepted.
    pub(crate) fn previous_s3_secrets(&self) -> Vec<String> {
        self.secrets()
            .previous_valid()
            .map(str::to_string)
            .collect()
    }

    /// The secret of another S3 access key: derived from the key base and its salt.
    pub(crate) fn derived_s3_secret(&self, access_key: &str, salt: &[u8; 16]) -> String {
        ostore_s3::keys::derive_secret(&self.secrets().key_base, access_key, salt)
    }

    /// Whether `req` carries valid credentials: 401 without any, 403 with wrong ones (the
    /// comparison takes the same time wherever they differ). A secret a rotation replaced is
    /// accepted within its grace, except by the `admin` routes: whoever still holds only the
    /// old secret (a leaked one, most likely) can neither rotate again nor make access keys.
    pub(crate) fn check(&self, req: &Request<ReqBody>, admin: bool) -> Result<(), ApiError> {
        let Some(v) = req.headers().get(http::header::AUTHORIZATION) else {
            return Err(err(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "credentials required: Authorization: Bearer <secret>",
            ));
        };
        let given = ostore_server::conn::bearer_token(v.as_bytes()).unwrap_or(b"");
        use subtle::ConstantTimeEq;
        // Compared under the lock: nothing is cloned per request.
        let s = self.secrets.read().expect("secrets lock");
        let mut ok = given.ct_eq(s.current.as_bytes());
        if !admin {
            for p in s.previous_valid() {
                ok |= given.ct_eq(p.as_bytes());
            }
        }
        if given.is_empty() || !bool::from(ok) {
            return Err(err(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "the credentials are not valid",
            ));
        }
        Ok(())
    }
}

/// A cluster's root secrets as the front ends hold them.
pub(crate) fn cluster_secrets(s: ostore_controlplane::client::RootSecrets) -> Secrets {
    let now = std::time::Instant::now();
    Secrets {
        version: s.version,
        current: s.current,
        previous: s
            .previous
            .into_iter()
            .map(|(p, left)| (p, now + left))
            .collect(),
        key_base: s.key_base,
    }
}

/// Follows the cluster's root secret: fetches it again whenever the cluster view (refreshed
/// every heartbeat) shows another version, so a rotation reaches every node within about a
/// second.
pub(crate) async fn follow_root_secret(front: std::sync::Arc<Front>) {
    let (Some(cluster), ostore_controlplane::client::MetaClient::Remote(remote)) =
        (&front.node.cluster, &front.node.meta)
    else {
        return;
    };
    while !front.node.stopping.load(Ordering::Relaxed) {
        let seen = cluster.view().secret_version;
        if seen > front.creds.secrets().version {
            match remote.root_secret(None).await {
                Ok(s) => {
                    tracing::info!("the cluster's root secret is now version {}", s.version);
                    front.creds.set(cluster_secrets(s));
                }
                Err(e) => {
                    tracing::warn!("reading the cluster's root secret: {e}");
                    glommio::timer::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
        glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Where `ostore dev` keeps the access-key base once its root secret was rotated.
pub(crate) const KEY_BASE_FILE: &str = "access-keys.secret";

/// Writes a secret to `path` (mode 0600) so that a crash leaves the old one or the new one.
pub(crate) fn write_secret_file(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    // A name of its own: two writers never share a temporary file.
    tmp.push(format!(".{:016x}.tmp", rand::random::<u64>()));
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    writeln!(f, "{secret}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

pub(crate) fn empty(status: StatusCode) -> Resp {
    let mut r = Response::new(RespBody::Full(None));
    *r.status_mut() = status;
    r
}

pub(crate) struct IncomingSource<'a> {
    pub(crate) body: ReqBody,
    pub(crate) front: &'a Front,
}

impl BodySource for IncomingSource<'_> {
    async fn next_chunk(&mut self) -> Option<Result<Bytes, store::BodyFault>> {
        let idle = self.front.limits.body_idle;
        loop {
            let Some(frame) = ostore_server::conn::within(idle, self.body.frame()).await else {
                self.front
                    .node
                    .metrics
                    .bodies_timed_out
                    .fetch_add(1, Ordering::Relaxed);
                return Some(Err(store::BodyFault::Stalled(idle)));
            };
            match frame {
                None => return None,
                Some(Err(e)) => {
                    return Some(Err(store::BodyFault::Broken(format!(
                        "reading the request body: {e}"
                    ))))
                }
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        if !d.is_empty() {
                            self.front
                                .node
                                .metrics
                                .bytes_in
                                .fetch_add(d.len() as u64, Ordering::Relaxed);
                            return Some(Ok(d));
                        }
                    }
                }
            }
        }
    }
}

/// `X-Blake3`: the body's BLAKE3 as 64 hex digits.
pub fn parse_digest(h: &http::HeaderMap) -> Result<Option<[u8; 32]>, ApiError> {
    let Some(v) = h.get("x-blake3") else {
        return Ok(None);
    };
    let mut out = [0u8; 32];
    hex::decode_to_slice(v.as_bytes(), &mut out).map_err(|_| {
        err(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            "X-Blake3 must be 64 hex digits",
        )
    })?;
    Ok(Some(out))
}

/// `If-Match` / `If-None-Match` on a PUT (RFC 9110 §13.1; If-Match compares strongly), against
/// the native ETags (the BLAKE3 in hex).
pub fn write_condition(h: &http::HeaderMap) -> WriteCondition {
    condition(
        h,
        |t| {
            let mut h = [0u8; 32];
            hex::decode_to_slice(t, &mut h).ok()?;
            Some(h)
        },
        WriteCondition::IfMatch,
        WriteCondition::IfNoneMatch,
    )
}

/// The same against S3's ETags (`md5`, or `md5-N` for an object made of N parts).
pub fn s3_write_condition(h: &http::HeaderMap) -> WriteCondition {
    condition(
        h,
        |t| {
            let hex_part = t.split_once('-').map_or(t, |(m, _)| m);
            let mut h = [0u8; 16];
            hex::decode_to_slice(hex_part, &mut h).ok()?;
            Some(h)
        },
        WriteCondition::IfTagMatch,
        WriteCondition::IfTagNoneMatch,
    )
}

fn condition<T>(
    h: &http::HeaderMap,
    tag: impl Fn(&str) -> Option<T>,
    if_match: impl Fn(Vec<T>) -> WriteCondition,
    if_none_match: impl Fn(Vec<T>) -> WriteCondition,
) -> WriteCondition {
    let list = |v: &str| -> Vec<T> {
        v.split(',')
            .filter_map(|t| tag(t.trim().strip_prefix('"')?.strip_suffix('"')?))
            .collect()
    };
    let text = |n: header::HeaderName| h.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(v) = text(header::IF_MATCH) {
        return if v == "*" {
            WriteCondition::IfPresent
        } else {
            if_match(list(v))
        };
    }
    if let Some(v) = text(header::IF_NONE_MATCH) {
        let weak_stripped = v.replace("W/", "");
        return if v == "*" {
            WriteCondition::IfAbsent
        } else {
            if_none_match(list(&weak_stripped))
        };
    }
    WriteCondition::Always
}

/// Reads and drops what is left of a request body, up to [`DRAIN_ON_ERROR_BYTES_MAX`]: most
/// clients read the answer only after sending the whole body, so they see the error instead of
/// a broken connection.
pub(crate) async fn drain(src: &mut IncomingSource<'_>) {
    let mut drained = 0u64;
    while drained < DRAIN_ON_ERROR_BYTES_MAX {
        match src.next_chunk().await {
            Some(Ok(b)) => drained += b.len() as u64,
            _ => break,
        }
    }
}

pub(crate) fn etag_of(blake3: &[u8; 32]) -> String {
    format!("\"{}\"", hex::encode(blake3))
}

/// Does an `If-Match`/`If-None-Match` list match `etag`? (`weak` allows W/ prefixes.)
fn etag_list_matches(list: &str, etag: &str, weak: bool) -> bool {
    list.split(',').map(str::trim).any(|t| {
        if t == "*" {
            return true;
        }
        if weak {
            t.trim_start_matches("W/") == etag
        } else {
            t == etag
        }
    })
}

/// What the conditional headers of a GET or HEAD decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    Proceed { ignore_range: bool },
    NotModified,
    Failed,
}

/// RFC 9110 §13.2.2: evaluation order of the conditional headers for GET and HEAD.
pub fn preconditions(h: &http::HeaderMap, etag: &str, modified_ms: u64) -> Precondition {
    let text = |n: header::HeaderName| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    let modified_s = modified_ms / 1000;
    let date_s = |s: &str| {
        httpdate::parse_http_date(s)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
    };
    if let Some(im) = text(header::IF_MATCH) {
        if !etag_list_matches(&im, etag, false) {
            return Precondition::Failed;
        }
    } else if let Some(ius) = text(header::IF_UNMODIFIED_SINCE) {
        if date_s(&ius).is_some_and(|d| modified_s > d) {
            return Precondition::Failed;
        }
    }
    if let Some(inm) = text(header::IF_NONE_MATCH) {
        if etag_list_matches(&inm, etag, true) {
            return Precondition::NotModified;
        }
    } else if let Some(ims) = text(header::IF_MODIFIED_SINCE) {
        if date_s(&ims).is_some_and(|d| modified_s <= d) {
            return Precondition::NotModified;
        }
    }
    let ignore_range = match text(header::IF_RANGE) {
        None => false,
        Some(ir) if ir.starts_with('"') => ir != etag,
        Some(ir) => date_s(&ir) != Some(modified_s),
    };
    Precondition::Proceed { ignore_range }
}

/// The content codings a GET may answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Zstd,
    Gzip,
}

impl Coding {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Coding::Zstd => "zstd",
            Coding::Gzip => "gzip",
        }
    }
}

/// The coding `Accept-Encoding` prefers among zstd and gzip (RFC 9110 §12.5.3): the highest
/// q-value above 0, zstd on a tie; `None` for identity.
pub fn accepted_coding(h: &http::HeaderMap) -> Option<Coding> {
    let mut best: Option<(Coding, f32)> = None;
    for v in h.get_all(header::ACCEPT_ENCODING) {
        let Ok(v) = v.to_str() else { continue };
        for item in v.split(',') {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .find_map(|p| {
                    let p = p.trim();
                    p.strip_prefix("q=").or_else(|| p.strip_prefix("Q="))
                })
                .map_or(Some(1.0), |q| q.trim().parse::<f32>().ok());
            let Some(q) = q.filter(|q| *q > 0.0) else {
                continue;
            };
            let c = match name.as_str() {
                "zstd" => Coding::Zstd,
                "gzip" | "x-gzip" => Coding::Gzip,
                _ => continue,
            };
            let better = match best {
                None => true,
                Some((b, bq)) => q > bq || (q == bq && c == Coding::Zstd && b != Coding::Zstd),
            };
            if better {
                best = Some((c, q));
            }
        }
    }
    best.map(|b| b.0)
}

static ALT_SVC: OnceLock<HeaderValue> = OnceLock::new();

/// The `Alt-Svc` value HTTP/1.1 responses carry once HTTP/3 is served (`h3=":PORT"`).
pub fn alt_svc() -> Option<HeaderValue> {
    ALT_SVC.get().cloned()
}

/// Advertises HTTP/3 on `port` in HTTP/1.1 responses.
pub fn advertise(port: u16) {
    let _ = ALT_SVC
        .set(HeaderValue::from_str(&format!("h3=\":{port}\"; ma=86400")).expect("a valid header"));
}

/// The receiving half of an HTTP/3 request stream, as a request body. h3 does not hold the
/// body to its `Content-Length`; this does, so a stream that ends early is an error (as a
/// truncated HTTP/1.1 body is), never a shorter object.
pub struct H3Body {
    pub(crate) stream: RequestStream<H3Recv, Bytes>,
    pub(crate) declared: Option<u64>,
    pub(crate) seen: u64,
}

impl H3Body {
    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.stream.poll_recv_data(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(None)) => match self.declared {
                Some(d) if d != self.seen => Poll::Ready(Some(Err(format!(
                    "the body ended after {} of the {d} bytes its Content-Length declares",
                    self.seen
                )
                .into()))),
                _ => Poll::Ready(None),
            },
            Poll::Ready(Ok(Some(mut b))) => {
                let bytes = b.copy_to_bytes(b.remaining());
                self.seen += bytes.len() as u64;
                if self.declared.is_some_and(|d| self.seen > d) {
                    return Poll::Ready(Some(Err(
                        "the body is longer than its Content-Length".into()
                    )));
                }
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e.to_string().into()))),
        }
    }
}
