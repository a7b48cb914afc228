//! The native HTTP API (see the contract) served by hyper's HTTP/1.1 server on each executor.

use crate::admin;
use crate::ctx::Node;
use crate::store::{self, ShardReader, StoreError};
use crate::time::{http_date, rfc3339_ms};
use crate::web::{
    accepted_coding, bucket_of, decode_key, drain, empty, err, etag_of, json_response,
    parse_digest, preconditions, query, version_of, write_condition, ApiError, Coding, Front,
    IncomingSource, Precondition, ReqBody, Resp, RespBody,
};
use bytes::Bytes;
use futures_lite::StreamExt;
use futures_util::stream::Stream;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use ostore_control::meta::{ListPage, Resolved, WriteCondition, LIST_LIMIT_MAX};
use ostore_control::records::{ContentRec, Encoding, ObjectAttrs, PartRef, Stored};
use ostore_control::rpc::ask;
use ostore_engine::range::{resolve, RangeDecision};
use serde_json::json;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// Serves the native API over HTTP/1.1 on this executor's share of the listener until the
/// node stops (connections bounded as `conn` says).
pub async fn serve(front: Arc<Front>, listener: glommio::net::TcpListener) {
    let tls = front.https.clone();
    ostore_server::conn::serve(
        front,
        listener,
        tls,
        move |front: Arc<Front>, req: Request<Incoming>| async move {
            let mut resp = handle(&front, req.map(ReqBody::H1)).await;
            if let Some(v) = crate::web::alt_svc() {
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

pub(crate) async fn handle(front: &Front, req: Request<ReqBody>) -> Resp {
    // Data requests count as serving (the scrub slows down for them); health checks, metrics
    // scrapes and admin calls do not.
    let path = req.uri().path();
    let _serving = (!(path == "/health" || path == "/metrics" || path.starts_with("/admin")))
        .then(crate::foreground::begin);
    let started = Instant::now();
    let (op, resp) = match route(front, req).await {
        Ok(x) => x,
        Err((op, e)) => (op, e.into_response()),
    };
    front
        .node
        .metrics
        .observe(op, resp.status().as_u16(), started.elapsed());
    resp
}

type Routed = Result<(&'static str, Resp), (&'static str, ApiError)>;

async fn route(front: &Front, req: Request<ReqBody>) -> Routed {
    let node = &front.node;
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
        (&Method::POST, "/admin/revoke") => "revoke",
        (&Method::POST, "/admin/scrub") => "scrub",
        (&Method::GET, "/admin/scrub") => "scrub_status",
        (&Method::POST, "/admin/scrub/schedule") => "scrub_schedule",
        (&Method::GET, "/admin/repair-rate") => "repair_rate_get",
        (&Method::POST, "/admin/repair-rate") => "repair_rate_set",
        (&Method::GET, "/admin/retention") => "retention_get",
        (&Method::POST, "/admin/retention") => "retention_set",
        (&Method::GET, "/admin/keys") => "keys_list",
        (&Method::POST, "/admin/keys") => "keys_create",
        (&Method::DELETE, p) if p.starts_with("/admin/keys/") => "keys_revoke",
        (&Method::POST, "/admin/secret/rotate") => "secret_rotate",
        _ => "other",
    };
    front
        .creds
        .check(&req, path.starts_with("/admin/"))
        .map_err(|e| (op, e))?;
    let r = match op {
        "tus" => Ok(crate::tus::route(front, req, &path).await),
        "metrics" => Ok(admin::metrics(node).await),
        "list" => list(node, &req).await,
        "put" => put(front, req, &path["/objects/".len()..]).await,
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
        "revoke" => admin::revoke(node, &req).await,
        "scrub" => admin::scrub(node, &req).await,
        "scrub_status" => admin::scrub_status(node).await,
        "scrub_schedule" => admin::scrub_schedule(node, &req).await,
        "repair_rate_get" | "repair_rate_set" => {
            admin::repair_rate(node, &req, op == "repair_rate_set").await
        }
        "retention_get" | "retention_set" => {
            admin::retention(node, &req, op == "retention_set").await
        }
        "keys_list" => admin::keys_list(node).await,
        "keys_create" => admin::keys_create(front, &req).await,
        "keys_revoke" => admin::keys_revoke(node, &path["/admin/keys/".len()..]).await,
        "secret_rotate" => admin::secret_rotate(front, &req).await,
        _ => Err(err(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no route for {method} {path}"),
        )),
    };
    r.map(|r| (op, r)).map_err(|e| (op, e))
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

async fn put(front: &Front, req: Request<ReqBody>, raw_key: &str) -> Result<Resp, ApiError> {
    let node = &front.node;
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
    // The one header the native API keeps with the object, and gives back when it is read.
    let attrs = ObjectAttrs {
        headers: req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| vec![("content-type".to_string(), v.to_string())])
            .unwrap_or_default(),
        ..ObjectAttrs::default()
    };
    if cond != WriteCondition::Always {
        // Refuse early when the condition already fails; the commit checks it again atomically.
        if let Err(e) = node
            .meta
            .ask(ask::CheckCondition {
                bucket: bucket.clone(),
                key: key.clone(),
                cond: cond.clone(),
            })
            .await
        {
            if !expects_continue {
                drain(&mut IncomingSource {
                    body: req.into_body(),
                    front,
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
            .ask(ask::PutExisting {
                bucket: bucket.clone(),
                key: key.clone(),
                blake3: h,
                cond: cond.clone(),
                attrs: attrs.clone(),
            })
            .await?
        {
            let size = node
                .meta
                .ask(ask::Content { blake3: h })
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
        front,
    };
    let commit = store::Commit::Version(cond.clone());
    let put = store::put(
        node, &bucket, &key, digest, length, &commit, attrs, &mut src,
    );
    let committed = match put.await {
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
        .ask(ask::Resolve {
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
    // An object assembled from parts is named by its part list, not by the BLAKE3 of its
    // bytes: its ETag says so (`-N`, as S3's multipart ETags), and a client does not check the
    // body against it.
    let etag = match resolved.content.stored {
        Stored::Parts { parts } => format!("\"{}-{parts}\"", hex::encode(v.blake3)),
        _ => etag_of(&v.blake3),
    };
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
    let content_type = v
        .attrs
        .headers
        .iter()
        .find(|(n, _)| n == "content-type")
        .and_then(|(_, t)| HeaderValue::from_str(t).ok());
    headers.insert(
        header::CONTENT_TYPE,
        content_type.unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    let body = if head_only {
        RespBody::Full(None)
    } else {
        object_body(node, &resolved, range, coding.map(|c| c.0)).await?
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

pub(crate) type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, StoreError>>>>;

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
        .ask(ask::Content { blake3: *blake3 })
        .await
        .ok()
        .flatten()?;
    let shards = |c: &ContentRec| match &c.stored {
        Stored::Sharded { shards, .. } => Some(shards.clone()),
        Stored::Inline(_) | Stored::Parts { .. } => None,
    };
    (shards(&now).is_some() && shards(&now) != shards(seen)).then_some(now)
}

/// The bytes `range` of an object (its content record, the parts of a content assembled from
/// parts, and its name), read and verified as they are stored; with `coding`, the whole
/// object's stored zstd stream (or that recoded to gzip).
pub(crate) async fn object_body(
    node: &Arc<Node>,
    resolved: &Resolved,
    range: std::ops::Range<u64>,
    coding: Option<Coding>,
) -> Result<RespBody, ApiError> {
    match resolved.content.stored {
        Stored::Parts { .. } => Ok(parts_body(node, &resolved.parts, range)),
        _ => {
            body_of(
                node,
                &resolved.content,
                resolved.version.blake3,
                range,
                coding,
            )
            .await
        }
    }
}

/// The bytes `range` of an object assembled from `parts`: the overlap with each part, read
/// and verified as a content of its own (its record asked for when the stream reaches it), one
/// part after another.
fn parts_body(node: &Arc<Node>, parts: &[PartRef], range: std::ops::Range<u64>) -> RespBody {
    let len = range.end - range.start;
    let mut pieces = Vec::new();
    let mut at = 0u64;
    for p in parts {
        let (start, end) = (at, at.saturating_add(p.size_bytes));
        at = end;
        let (lo, hi) = (range.start.max(start), range.end.min(end));
        if lo < hi {
            pieces.push((p.blake3, lo - start..hi - start));
        }
    }
    type Pieces = std::vec::IntoIter<([u8; 32], std::ops::Range<u64>)>;
    let s = futures_util::stream::unfold(
        (node.clone(), pieces.into_iter(), None::<ByteStream>),
        |(node, mut rest, mut cur): (Arc<Node>, Pieces, Option<ByteStream>)| async move {
            loop {
                if let Some(s) = cur.as_mut() {
                    if let Some(item) = s.next().await {
                        return Some((item, (node, rest, cur)));
                    }
                }
                let (h, r) = rest.next()?;
                match part_stream(&node, h, r).await {
                    Ok(s) => cur = Some(s),
                    // The error ends the stream: nothing after it is sent.
                    Err(e) => return Some((Err(e), (node, Vec::new().into_iter(), None))),
                }
            }
        },
    );
    RespBody::Stream(Box::pin(s), Some(len))
}

/// One part's bytes `range`, as a stream.
async fn part_stream(
    node: &Arc<Node>,
    blake3: [u8; 32],
    range: std::ops::Range<u64>,
) -> Result<ByteStream, StoreError> {
    let c: ContentRec = node
        .meta
        .ask(ask::Content { blake3 })
        .await?
        .ok_or_else(|| {
            StoreError::Meta(ostore_control::meta::MetaError::Record(
                ostore_control::records::RecordError(format!(
                    "part {} of an assembled object is missing",
                    hex::encode(blake3)
                )),
            ))
        })?;
    if c.damaged {
        return Err(StoreError::InsufficientShards { have: 0, need: 1 });
    }
    match body_of(node, &c, blake3, range, None).await {
        Ok(RespBody::Full(b)) => Ok(Box::pin(futures_util::stream::iter(b.map(Ok)))),
        Ok(RespBody::Stream(s, _)) => Ok(s),
        Err(e) => Err(StoreError::Meta(
            ostore_control::meta::MetaError::Unavailable(e.message),
        )),
    }
}

pub(crate) async fn body_of(
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
    if store::verify::has_tree(content) {
        return verified_body(node, content, blake3, range, coding).await;
    }
    if !zstd_stored || coding == Some(Coding::Zstd) {
        // The stored bytes as they are: the object, or its zstd stream.
        let (range, size) = match coding {
            Some(_) => (0..content.stored_bytes(), content.stored_bytes()),
            None => (range, len),
        };
        let open = |c: ContentRec| {
            let (node, range) = (node.clone(), range.clone());
            async move {
                let mut r = ShardReader::new(node, blake3, &c)
                    .expect("sharded")
                    .for_client();
                r.set_range(range);
                Ok(r)
            }
        };
        let s = read_stream(
            node,
            blake3,
            content,
            open,
            |r: &mut ShardReader| r.bad.iter().any(|b| *b),
            |mut r: ShardReader| async move { (r.next().await, r) },
        )
        .await?;
        return Ok(RespBody::Stream(counted(node, s), Some(size)));
    }
    let open = |c: ContentRec| {
        let (node, range) = (node.clone(), range.clone());
        async move { store::Decoded::open(node, blake3, &c, range).await }
    };
    let s = read_stream(
        node,
        blake3,
        content,
        open,
        |d: &mut store::Decoded| d.degraded(),
        |mut d: store::Decoded| async move { (d.next().await, d) },
    )
    .await?;
    Ok(gzip_if(node, s, coding, len))
}

/// A body stream, gzip-coded when the client asked for that (its length then unknown).
fn gzip_if(node: &Arc<Node>, s: ByteStream, coding: Option<Coding>, len: u64) -> RespBody {
    match coding {
        Some(Coding::Gzip) => RespBody::Stream(counted(node, gzip(s)), None),
        _ => RespBody::Stream(counted(node, s), Some(len)),
    }
}

type Piece = Option<Result<Bytes, store::StoreError>>;

/// Opens a read of `content` with `open`, takes its first piece with `next`, and streams the
/// rest; a read that found a shard bad (`degraded`) is counted. When the shards were not there
/// (at open, which may read a zstd seek table, or at the first piece), they may have moved (a
/// repair or a move swapped new files in and deleted the old ones) between reading the
/// content's record and opening its files: reads again from where the record says they are
/// now.
async fn read_stream<R: 'static, Fut, N, NFut>(
    node: &Arc<Node>,
    blake3: [u8; 32],
    content: &ContentRec,
    open: impl Fn(ContentRec) -> Fut,
    degraded: impl Fn(&mut R) -> bool,
    next: N,
) -> Result<ByteStream, ApiError>
where
    Fut: std::future::Future<Output = Result<R, store::StoreError>>,
    N: Fn(R) -> NFut + 'static + Copy,
    NFut: std::future::Future<Output = (Piece, R)>,
{
    let first = |c: ContentRec| {
        let opened = open(c);
        async move {
            let (first, r) = next(opened.await?).await;
            Ok::<_, store::StoreError>((r, first))
        }
    };
    let missing = |r: &Result<(R, Piece), store::StoreError>| {
        matches!(
            r,
            Err(store::StoreError::InsufficientShards { .. })
                | Ok((_, Some(Err(store::StoreError::InsufficientShards { .. }))))
        )
    };
    let mut opened = first(content.clone()).await;
    if missing(&opened) {
        if let Some(now) = moved_since(node, &blake3, content).await {
            opened = first(now).await;
        }
    }
    let (mut r, first) = opened?;
    let first = match first {
        Some(Err(e)) => return Err(e.into()),
        other => other,
    };
    if degraded(&mut r) {
        node.metrics.degraded_reads.fetch_add(1, Ordering::Relaxed);
    }
    Ok(stream_after(r, first, next))
}

/// The body of a content with a tree: every byte verified before it is sent
/// (`store::verify`); the stored zstd frames as they are for a client that takes them.
async fn verified_body(
    node: &Arc<Node>,
    content: &ContentRec,
    blake3: [u8; 32],
    range: std::ops::Range<u64>,
    coding: Option<Coding>,
) -> Result<RespBody, ApiError> {
    let zstd_stored = matches!(content.encoding, Encoding::Zstd { .. });
    let raw = zstd_stored && coding == Some(Coding::Zstd);
    let len = if raw {
        content.stored_bytes()
    } else {
        range.end - range.start
    };
    let open = |c: ContentRec| {
        let (node, range) = (node.clone(), range.clone());
        async move { store::verify::Verified::open(&node, blake3, &c, range, raw).await }
    };
    let s = read_stream(
        node,
        blake3,
        content,
        open,
        |v: &mut store::verify::Verified| v.degraded(),
        |mut v: store::verify::Verified| async move { (v.next().await, v) },
    )
    .await?;
    Ok(gzip_if(node, s, coding, len))
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
                .ask(ask::DeleteVersion {
                    bucket,
                    key,
                    version: v,
                })
                .await?;
        }
        None => {
            if let Some(v) = node.meta.ask(ask::DeleteKey { bucket, key }).await? {
                r.headers_mut()
                    .insert("x-version", HeaderValue::from(v.version));
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
        .ask(ask::Versions {
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
        .ask(ask::List {
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
        .ask(ask::Content { blake3: h })
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
        // Its bytes are its parts': each is a content of its own, located by its own name.
        Stored::Parts { parts } => {
            json!({"blake3": raw.to_ascii_lowercase(), "size": c.size_bytes, "stored_size": 0, "encoding": "identity", "inline": false, "ec": null, "shards": [], "parts": parts})
        }
    };
    Ok(json_response(StatusCode::OK, body))
}

#[cfg(test)]
mod tests {
    #[test]
    fn bearer_scheme_is_case_insensitive() {
        use ostore_server::conn::bearer_token;
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
