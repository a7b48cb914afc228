//! The native HTTP API (see the contract) served by hyper's HTTP/1.1 server on each executor.

use crate::admin;
use crate::node::Node;
use crate::store::{self, BodySource, ShardReader, StoreError};
use crate::time::{http_date, rfc3339_ms};
use bytes::Bytes;
use futures_lite::StreamExt;
use futures_util::stream::Stream;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use ostore_control::keys::{valid_bucket, valid_object_key};
use ostore_control::meta::{
    ListPage, MetaError, PutOutcome, Resolved, WriteCondition, LIST_LIMIT_MAX,
};
use ostore_control::records::{ContentRec, Encoding, Stored, VersionRec};
use ostore_control::rpc::Request as Rq;
use ostore_engine::range::{resolve, RangeDecision};
use serde_json::json;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

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
    H3(crate::http3::H3Body),
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
            MetaError::Unavailable(m) => {
                tracing::warn!("control plane: {m}");
                err(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", m)
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

/// Serves the native API over HTTP/1.1 on this executor's share of the listener until the
/// node stops (connections bounded as `conn` says).
pub async fn serve(node: Arc<Node>, listener: glommio::net::TcpListener) {
    crate::conn::serve(
        node,
        listener,
        |node: Arc<Node>, req: Request<Incoming>| async move {
            let mut resp = handle(&node, req.map(ReqBody::H1)).await;
            if let Some(v) = crate::http3::alt_svc() {
                resp.headers_mut().insert(header::ALT_SVC, v);
            }
            resp
        },
        || {
            err(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "the server failed while handling this request (it is logged)",
            )
            .into_response()
        },
    )
    .await
}

pub(crate) async fn handle(node: &Arc<Node>, req: Request<ReqBody>) -> Resp {
    // Data requests count as serving (the scrub slows down for them); health checks, metrics
    // scrapes and admin calls do not.
    let path = req.uri().path();
    let _serving = (!(path == "/health" || path == "/metrics" || path.starts_with("/admin")))
        .then(crate::foreground::begin);
    let started = Instant::now();
    let (op, resp) = match route(node, req).await {
        Ok(x) => x,
        Err((op, e)) => (op, e.into_response()),
    };
    node.metrics
        .observe(op, resp.status().as_u16(), started.elapsed());
    resp
}

type Routed = Result<(&'static str, Resp), (&'static str, ApiError)>;

/// The credentials of an `Authorization: Bearer <token>` value. The scheme is
/// case-insensitive and followed by one or more spaces (RFC 9110 §11.1, §11.4).
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    Some(rest.trim_ascii()).filter(|t| !t.is_empty())
}

fn check_auth(node: &Node, req: &Request<ReqBody>) -> Result<(), ApiError> {
    let Some(v) = req.headers().get(header::AUTHORIZATION) else {
        return Err(err(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "credentials required: Authorization: Bearer <secret>",
        ));
    };
    let given = bearer_token(v.as_bytes()).unwrap_or(b"");
    use subtle::ConstantTimeEq;
    if given.is_empty() || !bool::from(given.ct_eq(node.secret.as_bytes())) {
        return Err(err(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "the credentials are not valid",
        ));
    }
    Ok(())
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

pub(crate) fn empty(status: StatusCode) -> Resp {
    let mut r = Response::new(RespBody::Full(None));
    *r.status_mut() = status;
    r
}

async fn route(node: &Arc<Node>, req: Request<ReqBody>) -> Routed {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if path == "/health" && (method == Method::GET || method == Method::HEAD) {
        let mut r = Response::new(RespBody::Full(Some(Bytes::from_static(b"ok"))));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        return Ok(("health", r));
    }
    let op: &'static str = match (&method, path.as_str()) {
        (&Method::GET, "/metrics") => "metrics",
        (&Method::GET, "/objects") => "list",
        (&Method::PUT, p) if p.starts_with("/objects/") => "put",
        (&Method::GET, p) if p.starts_with("/objects/") => "get",
        (&Method::HEAD, p) if p.starts_with("/objects/") => "head",
        (&Method::DELETE, p) if p.starts_with("/objects/") => "delete",
        (&Method::GET, p) if p.starts_with("/versions/") => "versions",
        (&Method::GET, p) if p.starts_with("/locate/") => "locate",
        (_, p) if p == "/uploads" || p.starts_with("/uploads/") => "tus",
        (&Method::GET, "/admin/cluster") => "cluster",
        (&Method::GET, "/admin/status") => "status",
        (&Method::POST, "/admin/repair") => "repair_start",
        (&Method::GET, "/admin/repair") => "repair_status",
        (&Method::POST, "/admin/gc") => "gc",
        (&Method::POST, "/admin/drain") => "drain_start",
        (&Method::GET, "/admin/drain") => "drain_status",
        (&Method::POST, "/admin/undrain") => "undrain",
        (&Method::POST, "/admin/scrub") => "scrub",
        (&Method::GET, "/admin/scrub") => "scrub_status",
        (&Method::POST, "/admin/scrub/schedule") => "scrub_schedule",
        (&Method::GET, "/admin/repair-rate") => "repair_rate_get",
        (&Method::POST, "/admin/repair-rate") => "repair_rate_set",
        (&Method::GET, "/admin/retention") => "retention_get",
        (&Method::POST, "/admin/retention") => "retention_set",
        _ => "other",
    };
    check_auth(node, &req).map_err(|e| (op, e))?;
    let r = match op {
        "tus" => Ok(crate::tus::route(node, req, &path).await),
        "metrics" => Ok(admin::metrics(node).await),
        "list" => list(node, &req).await,
        "put" => put(node, req, &path["/objects/".len()..]).await,
        "get" | "head" => get(node, &req, &path["/objects/".len()..], op == "head").await,
        "delete" => delete(node, &req, &path["/objects/".len()..]).await,
        "versions" => versions(node, &req, &path["/versions/".len()..]).await,
        "locate" => locate(node, &path["/locate/".len()..]).await,
        "cluster" => admin::cluster(node).await,
        "status" => admin::status(node).await,
        "repair_start" => admin::repair_start(node).await,
        "repair_status" => admin::repair_status(node).await,
        "gc" => admin::gc(node, &req).await,
        "drain_start" | "drain_status" => admin::drain(node, &req, op == "drain_start").await,
        "undrain" => admin::undrain(node, &req).await,
        "scrub" => admin::scrub(node, &req).await,
        "scrub_status" => admin::scrub_status(node).await,
        "scrub_schedule" => admin::scrub_schedule(node, &req).await,
        "repair_rate_get" | "repair_rate_set" => {
            admin::repair_rate(node, &req, op == "repair_rate_set").await
        }
        "retention_get" | "retention_set" => {
            admin::retention(node, &req, op == "retention_set").await
        }
        _ => Err(err(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no route for {method} {path}"),
        )),
    };
    r.map(|r| (op, r)).map_err(|e| (op, e))
}

pub(crate) struct IncomingSource<'a> {
    pub(crate) body: ReqBody,
    pub(crate) node: &'a Node,
}

impl BodySource for IncomingSource<'_> {
    async fn next_chunk(&mut self) -> Option<Result<Bytes, store::BodyFault>> {
        let idle = self.node.limits.body_idle;
        loop {
            let Some(frame) = crate::conn::within(idle, self.body.frame()).await else {
                self.node
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
                            self.node
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

/// `If-Match` / `If-None-Match` on a PUT (RFC 9110 §13.1; If-Match compares strongly).
pub fn write_condition(h: &http::HeaderMap) -> WriteCondition {
    let list = |v: &str| -> Vec<[u8; 32]> {
        v.split(',')
            .filter_map(|t| {
                let t = t.trim().strip_prefix('"')?.strip_suffix('"')?;
                let mut h = [0u8; 32];
                hex::decode_to_slice(t, &mut h).ok()?;
                Some(h)
            })
            .collect()
    };
    let text = |n: header::HeaderName| h.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(v) = text(header::IF_MATCH) {
        return if v == "*" {
            WriteCondition::IfPresent
        } else {
            WriteCondition::IfMatch(list(v))
        };
    }
    if let Some(v) = text(header::IF_NONE_MATCH) {
        let weak_stripped = v.replace("W/", "");
        return if v == "*" {
            WriteCondition::IfAbsent
        } else {
            WriteCondition::IfNoneMatch(list(&weak_stripped))
        };
    }
    WriteCondition::Always
}

fn put_response(key: &str, c: &store::Committed) -> Resp {
    let h = hex::encode(c.blake3);
    let mut r = json_response(
        StatusCode::CREATED,
        json!({"key": key, "version": c.outcome.version, "size": c.size_bytes, "blake3": h}),
    );
    r.headers_mut().insert(
        header::ETAG,
        HeaderValue::from_str(&format!("\"{h}\"")).expect("hex"),
    );
    r.headers_mut()
        .insert("x-version", HeaderValue::from(c.outcome.version));
    r
}

async fn put(node: &Arc<Node>, req: Request<ReqBody>, raw_key: &str) -> Result<Resp, ApiError> {
    let key = decode_key(raw_key)?;
    let q = query(&req);
    let bucket = bucket_of(&q)?;
    let digest = parse_digest(req.headers())?;
    let length = match req.headers().get(header::CONTENT_LENGTH) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| {
                    err(
                        StatusCode::BAD_REQUEST,
                        "InvalidArgument",
                        "bad Content-Length",
                    )
                })?,
        ),
        None => None,
    };
    if length.is_some_and(|l| l > store::OBJECT_BYTES_MAX) {
        return Err(StoreError::TooLarge.into());
    }
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let cond = write_condition(req.headers());
    if cond != WriteCondition::Always {
        // Refuse early when the condition already fails; the commit checks it again atomically.
        if let Err(e) = node
            .meta
            .call::<()>(Rq::CheckCondition {
                bucket: bucket.clone(),
                key: key.clone(),
                cond: cond.clone(),
            })
            .await
        {
            if !expects_continue {
                drain(&mut IncomingSource {
                    body: req.into_body(),
                    node,
                })
                .await;
            }
            return Err(e.into());
        }
    }
    if let (Some(h), true) = (digest, expects_continue) {
        // Dedup without upload: the content is known, so the body is never asked for.
        if let Some(outcome) = node
            .meta
            .call::<Option<PutOutcome>>(Rq::PutExisting {
                bucket: bucket.clone(),
                key: key.clone(),
                blake3: h,
                cond: cond.clone(),
            })
            .await?
        {
            let size = node
                .meta
                .call::<Option<ContentRec>>(Rq::Content { blake3: h })
                .await?
                .map(|c| c.size_bytes)
                .unwrap_or(0);
            return Ok(put_response(
                &key,
                &store::Committed {
                    outcome,
                    size_bytes: size,
                    blake3: h,
                },
            ));
        }
    }
    let mut src = IncomingSource {
        body: req.into_body(),
        node,
    };
    let committed = match store::put(node, &bucket, &key, digest, length, &cond, &mut src).await {
        Ok(c) => c,
        Err(e) => {
            // Most clients read the answer only after sending the whole body: swallow the rest
            // (up to a bound) so that they see the error instead of a broken connection.
            if !matches!(e, StoreError::Body(_)) {
                drain(&mut src).await;
            }
            return Err(e.into());
        }
    };
    Ok(put_response(&key, &committed))
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

async fn get(
    node: &Arc<Node>,
    req: &Request<ReqBody>,
    raw_key: &str,
    head_only: bool,
) -> Result<Resp, ApiError> {
    let key = decode_key(raw_key)?;
    let q = query(req);
    let bucket = bucket_of(&q)?;
    let version = version_of(&q)?;
    let resolved: Resolved = node
        .meta
        .call(Rq::Resolve {
            bucket,
            key: key.clone(),
            version,
        })
        .await?;
    let v = &resolved.version;
    if resolved.content.damaged {
        // Fewer than K of its shards were readable when last checked: nothing of it is served
        // (a first stripe that reads well says nothing of the rest). The next scrub or repair
        // that finds every shard good again takes the mark off (a node that came back).
        return Err(err(
            StatusCode::SERVICE_UNAVAILABLE,
            "InsufficientShards",
            "the object is damaged: fewer than K of its shards are readable",
        ));
    }
    let etag = etag_of(&v.blake3);
    let mut headers = http::HeaderMap::new();
    headers.insert(header::ETAG, HeaderValue::from_str(&etag).expect("hex"));
    headers.insert("x-version", HeaderValue::from(v.version));
    headers.insert(
        header::LAST_MODIFIED,
        HeaderValue::from_str(&http_date(v.created_ms)).expect("date"),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let ignore_range = match preconditions(req.headers(), &etag, v.created_ms) {
        Precondition::Failed => {
            return Err(err(
                StatusCode::PRECONDITION_FAILED,
                "PreconditionFailed",
                "a precondition header did not match",
            ))
        }
        Precondition::NotModified => {
            let mut r = empty(StatusCode::NOT_MODIFIED);
            *r.headers_mut() = headers;
            return Ok(r);
        }
        Precondition::Proceed { ignore_range } => ignore_range,
    };
    let size = v.size_bytes;
    let range_header = if ignore_range {
        None
    } else {
        req.headers()
            .get(header::RANGE)
            .and_then(|h| h.to_str().ok())
    };
    let (status, range) = match resolve(range_header, size) {
        RangeDecision::Full => (StatusCode::OK, 0..size),
        RangeDecision::Partial(r) => {
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {}-{}/{size}", r.start, r.end - 1))
                    .expect("range"),
            );
            (StatusCode::PARTIAL_CONTENT, r)
        }
        RangeDecision::Unsatisfiable => {
            let mut e = err(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "InvalidRange",
                format!("the object has {size} bytes"),
            )
            .into_response();
            e.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}")).expect("range"),
            );
            return Ok(e);
        }
    };
    let len = range.end - range.start;
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    // A compressed representation only of a whole object that is stored compressed: its
    // stored zstd frames go out as they are, or are recoded for a client that speaks only gzip.
    let coding = match resolved.content.encoding {
        Encoding::Zstd { stored_bytes, .. } if status == StatusCode::OK => {
            accepted_coding(req.headers()).map(|c| (c, stored_bytes))
        }
        _ => None,
    };
    match coding {
        Some((c, stored_bytes)) => {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(c.name()));
            // Another representation: its validator is weak (RFC 9110 §8.8.3), so If-Range never
            // resumes it with bytes of the identity one.
            headers.insert(
                header::ETAG,
                HeaderValue::from_str(&format!("W/{etag}")).expect("hex"),
            );
            if c == Coding::Zstd {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(stored_bytes));
            }
        }
        None => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    let body = if head_only {
        RespBody::Full(None)
    } else {
        body_of(
            node,
            &resolved.content,
            v.blake3,
            range,
            coding.map(|c| c.0),
        )
        .await?
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    Ok(r)
}

fn encoding_name(e: &Encoding) -> &'static str {
    match e {
        Encoding::Identity => "identity",
        Encoding::Zstd { .. } => "zstd",
    }
}

/// The content codings a GET may answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Zstd,
    Gzip,
}

impl Coding {
    fn name(self) -> &'static str {
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

type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, StoreError>>>>;

/// Counts what a stream sends in the node's metrics.
fn counted(node: &Arc<Node>, s: ByteStream) -> ByteStream {
    let node = node.clone();
    Box::pin(s.map(move |item| {
        if let Ok(b) = &item {
            node.metrics
                .bytes_out
                .fetch_add(b.len() as u64, Ordering::Relaxed);
        }
        item
    }))
}

/// A stream whose first item was read before answering: a missing object answers 503, not a
/// truncated 200.
fn stream_after<S: 'static, F, Fut>(
    state: S,
    first: Option<Result<Bytes, StoreError>>,
    next: F,
) -> ByteStream
where
    F: Fn(S) -> Fut + 'static + Copy,
    Fut: std::future::Future<Output = (Option<Result<Bytes, StoreError>>, S)>,
{
    Box::pin(futures_util::stream::unfold(
        (state, first),
        move |(state, first)| async move {
            let (item, state) = match first {
                Some(x) => (Some(x), state),
                None => next(state).await,
            };
            Some((item?, (state, None)))
        },
    ))
}

/// The content's record as it is now, if its shards moved since `seen` was read.
async fn moved_since(node: &Arc<Node>, blake3: &[u8; 32], seen: &ContentRec) -> Option<ContentRec> {
    let now: ContentRec = node
        .meta
        .call::<Option<ContentRec>>(Rq::Content { blake3: *blake3 })
        .await
        .ok()
        .flatten()?;
    let shards = |c: &ContentRec| match &c.stored {
        Stored::Sharded { shards, .. } => Some(shards.clone()),
        Stored::Inline(_) => None,
    };
    (shards(&now).is_some() && shards(&now) != shards(seen)).then_some(now)
}

async fn body_of(
    node: &Arc<Node>,
    content: &ContentRec,
    blake3: [u8; 32],
    range: std::ops::Range<u64>,
    coding: Option<Coding>,
) -> Result<RespBody, ApiError> {
    let len = range.end - range.start;
    if let Stored::Inline(b) = &content.stored {
        let piece = Bytes::copy_from_slice(&b[range.start as usize..range.end as usize]);
        if piece.len() as u64 != len || blake3::hash(b).as_bytes() != &blake3 {
            return Err(err(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "inline content failed its digest",
            ));
        }
        node.metrics.bytes_out.fetch_add(len, Ordering::Relaxed);
        return Ok(RespBody::Full(Some(piece)));
    }
    let zstd_stored = matches!(content.encoding, Encoding::Zstd { .. });
    if len == 0 {
        return Ok(RespBody::Full(None));
    }
    if !zstd_stored || coding == Some(Coding::Zstd) {
        // The stored bytes as they are: the object, or its zstd stream.
        let (range, size) = match coding {
            Some(_) => (0..content.stored_bytes(), content.stored_bytes()),
            None => (range, len),
        };
        let mut reader = ShardReader::new(node.clone(), blake3, content)
            .expect("sharded")
            .for_client();
        reader.set_range(range.clone());
        let mut first = reader.next().await;
        if let Some(Err(store::StoreError::InsufficientShards { .. })) = &first {
            // The shards may have moved (a repair or a move swapped new files in and deleted
            // the old ones) between reading the content's record and opening its files: read
            // again from where the record says they are now.
            if let Some(now) = moved_since(node, &blake3, content).await {
                reader = ShardReader::new(node.clone(), blake3, &now)
                    .expect("sharded")
                    .for_client();
                reader.set_range(range);
                first = reader.next().await;
            }
        }
        let first = match first {
            Some(Err(e)) => return Err(e.into()),
            other => other,
        };
        if reader.bad.iter().any(|b| *b) {
            node.metrics.degraded_reads.fetch_add(1, Ordering::Relaxed);
        }
        let s = stream_after(reader, first, |mut r: ShardReader| async move {
            (r.next().await, r)
        });
        return Ok(RespBody::Stream(counted(node, s), Some(size)));
    }
    let mut decoded = store::Decoded::open(node.clone(), blake3, content, range).await?;
    let first = match decoded.next().await {
        Some(Err(e)) => return Err(e.into()),
        other => other,
    };
    if decoded.degraded() {
        node.metrics.degraded_reads.fetch_add(1, Ordering::Relaxed);
    }
    let s = stream_after(decoded, first, |mut d: store::Decoded| async move {
        (d.next().await, d)
    });
    if coding != Some(Coding::Gzip) {
        return Ok(RespBody::Stream(counted(node, s), Some(len)));
    }
    Ok(RespBody::Stream(counted(node, gzip(s)), None))
}

/// Recodes a stream of object bytes as one gzip member.
fn gzip(s: ByteStream) -> ByteStream {
    use std::io::Write;
    let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    Box::pin(futures_util::stream::unfold(
        (s, Some(enc)),
        |(mut s, enc)| async move {
            let mut enc = enc?;
            loop {
                match s.next().await {
                    Some(Ok(b)) => {
                        if let Err(e) = enc.write_all(&b) {
                            return Some((Err(StoreError::Io(e)), (s, None)));
                        }
                        let out = std::mem::take(enc.get_mut());
                        if !out.is_empty() {
                            return Some((Ok(Bytes::from(out)), (s, Some(enc))));
                        }
                    }
                    Some(Err(e)) => return Some((Err(e), (s, None))),
                    None => {
                        return match enc.finish() {
                            Ok(out) => Some((Ok(Bytes::from(out)), (s, None))),
                            Err(e) => Some((Err(StoreError::Io(e)), (s, None))),
                        }
                    }
                }
            }
        },
    ))
}

async fn delete(node: &Arc<Node>, req: &Request<ReqBody>, raw_key: &str) -> Result<Resp, ApiError> {
    let key = decode_key(raw_key)?;
    let q = query(req);
    let bucket = bucket_of(&q)?;
    let mut r = empty(StatusCode::NO_CONTENT);
    match version_of(&q)? {
        Some(v) => {
            node.meta
                .call::<()>(Rq::DeleteVersion {
                    bucket,
                    key,
                    version: v,
                })
                .await?;
        }
        None => {
            if let Some(v) = node
                .meta
                .call::<Option<u64>>(Rq::DeleteKey { bucket, key })
                .await?
            {
                r.headers_mut().insert("x-version", HeaderValue::from(v));
            }
        }
    }
    Ok(r)
}

async fn versions(node: &Node, req: &Request<ReqBody>, raw_key: &str) -> Result<Resp, ApiError> {
    let key = decode_key(raw_key)?;
    let bucket = bucket_of(&query(req))?;
    let list = node
        .meta
        .call::<Option<Vec<VersionRec>>>(Rq::Versions {
            bucket,
            key: key.clone(),
        })
        .await?
        .ok_or_else(|| err(StatusCode::NOT_FOUND, "NoSuchKey", "the key never existed"))?;
    let versions: Vec<_> = list
        .iter()
        .map(|v| {
            json!({
                "version": v.version,
                "size": v.size_bytes,
                "blake3": if v.delete_marker { serde_json::Value::Null } else { hex::encode(v.blake3).into() },
                "created": rfc3339_ms(v.created_ms),
                "delete_marker": v.delete_marker,
            })
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        json!({"key": key, "versions": versions}),
    ))
}

async fn list(node: &Node, req: &Request<ReqBody>) -> Result<Resp, ApiError> {
    let q = query(req);
    let bucket = bucket_of(&q)?;
    let prefix = q.get("prefix").cloned().unwrap_or_default();
    let start_after = q.get("start_after").cloned();
    let limit = match q.get("limit") {
        None => LIST_LIMIT_MAX,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=LIST_LIMIT_MAX).contains(l))
            .ok_or_else(|| {
                err(
                    StatusCode::BAD_REQUEST,
                    "InvalidArgument",
                    format!("limit must be 1..={LIST_LIMIT_MAX}"),
                )
            })?,
    };
    if prefix.contains('\0') || start_after.as_deref().is_some_and(|s| s.contains('\0')) {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            "prefix and start_after cannot contain NUL",
        ));
    }
    let page: ListPage = node
        .meta
        .call(Rq::List {
            bucket,
            prefix,
            start_after,
            limit,
        })
        .await?;
    let objects: Vec<_> = page
        .objects
        .iter()
        .map(|(k, v)| {
            json!({"key": k, "version": v.version, "size": v.size_bytes, "blake3": hex::encode(v.blake3), "created": rfc3339_ms(v.created_ms)})
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        json!({"objects": objects, "next_start_after": page.next_start_after}),
    ))
}

async fn locate(node: &Node, raw: &str) -> Result<Resp, ApiError> {
    let mut h = [0u8; 32];
    hex::decode_to_slice(raw, &mut h).map_err(|_| {
        err(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            "expected a BLAKE3 digest in 64 hex digits",
        )
    })?;
    let c = node
        .meta
        .call::<Option<ContentRec>>(Rq::Content { blake3: h })
        .await?
        .ok_or_else(|| err(StatusCode::NOT_FOUND, "NoSuchKey", "no such content"))?;
    let body = match &c.stored {
        Stored::Inline(_) => {
            json!({"blake3": raw.to_ascii_lowercase(), "size": c.size_bytes, "stored_size": c.stored_bytes(), "encoding": encoding_name(&c.encoding), "inline": true, "ec": null, "shards": []})
        }
        Stored::Sharded {
            data,
            parity,
            shards,
        } => {
            let mut shards = shards.clone();
            shards.sort_by_key(|s| s.index);
            let list: Vec<_> = shards
                .iter()
                .map(|s| {
                    let (n, d) = node.describe_drive(s.drive);
                    json!({"index": s.index, "node": n, "drive": d})
                })
                .collect();
            json!({"blake3": raw.to_ascii_lowercase(), "size": c.size_bytes, "stored_size": c.stored_bytes(), "encoding": encoding_name(&c.encoding), "inline": false, "ec": {"data": data, "parity": parity}, "shards": list})
        }
    };
    Ok(json_response(StatusCode::OK, body))
}

#[cfg(test)]
mod tests {
    #[test]
    fn bearer_scheme_is_case_insensitive() {
        use super::bearer_token;
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"BEARER   abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"Bearerabc"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bear"), None);
        assert_eq!(bearer_token(b""), None);
    }
}
