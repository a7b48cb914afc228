//! Resumable uploads: tus 1.0.0 at `/uploads`, with the `creation`, `termination`,
//! `expiration` and `checksum` (blake3, sha1) extensions.
//!
//! Each PATCH streams its bytes through the same pipeline as a PUT (BLAKE3, zstd frames when
//! the object compresses, the striper, Reed-Solomon, direct-I/O shard files), writes the whole
//! stripes it completes, makes them durable, and records its progress in one metadata
//! transaction before answering 204 (`ostore_control::upload`). The bytes of a stripe not yet
//! full travel with that record, so the next PATCH (on any node, after any restart) continues
//! exactly there and nothing is read back. The PATCH that reaches `Upload-Length` commits the
//! version as a PUT does. Without a checksum header, a long PATCH also records its progress
//! every [`CHECKPOINT_BYTES`], and a PATCH whose client goes away keeps what arrived.

use crate::ctx::Node;
use crate::store::{self, BodySource, ShardWriter, StoreError, StripeOut};
use crate::time::http_date;
use crate::web::ReqBody;
use crate::web::{
    bucket_of, drain, empty, err, etag_of, query, ApiError, Front, IncomingSource, Resp, RespBody,
};
use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use ostore_control::keys::{valid_bucket, valid_object_key};
use ostore_control::meta::{NewContent, PutOutcome, INLINE_BYTES_MAX};
use ostore_control::records::{Encoding, Stored, Tree};
use ostore_control::rpc::ask;
use ostore_control::upload::{Progress, UploadRec, UploadState};
use ostore_engine::codec::Codec;
use ostore_engine::compress::{self, FrameEntry, FrameWriter};
use ostore_engine::hash::HashState;
use ostore_engine::lifecycle;
use ostore_engine::stripe::Striper;
use ostore_engine::tree;
use ostore_engine::{EcParams, Geometry};
use ostore_wire::peer::OpenMode;
use sha1::Digest as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const TUS_VERSION: &str = "1.0.0";
pub const EXTENSIONS: &str = "creation,termination,expiration,checksum";
pub const CHECKSUM_ALGORITHMS: &str = "blake3,sha1";
/// Without a checksum to verify first, a PATCH records its progress every this many bytes, so a
/// crash loses at most this much of a long request.
pub const CHECKPOINT_BYTES: u64 = 16 << 20;
/// A PATCH renews its lock this often while it streams.
const RENEW_EVERY: Duration = Duration::from_secs(20);

const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";

/// Answers every tus request (`/uploads` and `/uploads/{id}`); every answer carries
/// `Tus-Resumable`.
pub async fn route(front: &Front, req: Request<ReqBody>, path: &str) -> Resp {
    let node = &front.node;
    let id = path
        .strip_prefix("/uploads")
        .map(|rest| rest.trim_start_matches('/'))
        .unwrap_or("")
        .to_string();
    let mut r = if req.method() == Method::OPTIONS {
        options()
    } else if req
        .headers()
        .get("tus-resumable")
        .is_none_or(|v| v.as_bytes() != TUS_VERSION.as_bytes())
    {
        let mut r = err(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailed",
            format!("Tus-Resumable: {TUS_VERSION} is required"),
        )
        .into_response();
        r.headers_mut()
            .insert("tus-version", HeaderValue::from_static(TUS_VERSION));
        r
    } else {
        let m = req.method().clone();
        let r = async {
            match (m, id.is_empty()) {
                (Method::POST, true) => create(node, req).await,
                (Method::HEAD, false) => head(node, parse_id(&id)?).await,
                (Method::PATCH, false) => patch(front, req, parse_id(&id)?).await,
                (Method::DELETE, false) => terminate(node, parse_id(&id)?).await,
                (m, _) => Err(err(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    format!("{m} is not allowed on {path}"),
                )),
            }
        }
        .await;
        match r {
            Ok(r) => r,
            Err(e) => e.into_response(),
        }
    };
    r.headers_mut()
        .insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    r
}

fn options() -> Resp {
    let mut r = empty(StatusCode::NO_CONTENT);
    let h = r.headers_mut();
    h.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    h.insert("tus-extension", HeaderValue::from_static(EXTENSIONS));
    h.insert(
        "tus-checksum-algorithm",
        HeaderValue::from_static(CHECKSUM_ALGORITHMS),
    );
    h.insert("tus-max-size", HeaderValue::from(store::OBJECT_BYTES_MAX));
    r
}

fn bad(message: impl Into<String>) -> ApiError {
    err(StatusCode::BAD_REQUEST, "InvalidArgument", message)
}

fn parse_id(s: &str) -> Result<[u8; 16], ApiError> {
    let mut id = [0u8; 16];
    hex::decode_to_slice(s, &mut id)
        .map_err(|_| err(StatusCode::NOT_FOUND, "NoSuchUpload", "no such upload"))?;
    Ok(id)
}

/// A header holding a non-negative integer (`Upload-Length`, `Upload-Offset`, ...).
pub fn header_u64(h: &http::HeaderMap, name: &str) -> Result<Option<u64>, ApiError> {
    match h.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| bad(format!("{name} must be a non-negative integer"))),
    }
}

/// `Upload-Metadata`: comma-separated `key base64(value)` pairs (the value may be absent).
pub fn parse_metadata(raw: &str) -> Result<Vec<(String, Vec<u8>)>, ApiError> {
    let mut out = Vec::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut it = pair.splitn(2, ' ');
        let k = it.next().unwrap_or("").to_string();
        let v = match it.next().map(str::trim) {
            None | Some("") => Vec::new(),
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| bad(format!("Upload-Metadata value of {k:?} is not base64")))?,
        };
        out.push((k, v));
    }
    Ok(out)
}

fn expires_header(r: &mut Resp, expires_ms: u64) {
    r.headers_mut().insert(
        "upload-expires",
        HeaderValue::from_str(&http_date(expires_ms)).expect("date"),
    );
}

async fn create(node: &Arc<Node>, req: Request<ReqBody>) -> Result<Resp, ApiError> {
    if req.headers().contains_key("upload-defer-length") {
        return Err(bad(
            "Upload-Defer-Length is not supported: send Upload-Length",
        ));
    }
    let length = header_u64(req.headers(), "upload-length")?
        .ok_or_else(|| bad("Upload-Length is required"))?;
    if length > store::OBJECT_BYTES_MAX {
        return Err(StoreError::TooLarge.into());
    }
    let raw_meta = req
        .headers()
        .get("upload-metadata")
        .map(|v| {
            v.to_str()
                .map(str::to_string)
                .map_err(|_| bad("Upload-Metadata is not ASCII"))
        })
        .transpose()?
        .unwrap_or_default();
    let meta = parse_metadata(&raw_meta)?;
    let text = |name: &str| -> Result<Option<String>, ApiError> {
        meta.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| {
                String::from_utf8(v.clone())
                    .map_err(|_| bad(format!("Upload-Metadata {name} is not UTF-8")))
            })
            .transpose()
    };
    let key =
        text("key")?.ok_or_else(|| bad("Upload-Metadata must carry the object key as `key`"))?;
    if !valid_object_key(&key) {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "InvalidKey",
            "keys are 1..=1024 bytes of UTF-8 without NUL",
        ));
    }
    let bucket = match text("bucket")? {
        Some(b) => b,
        None => bucket_of(&query(&req))?,
    };
    if !valid_bucket(&bucket) {
        return Err(bad("invalid bucket name"));
    }
    // The digest as 64 hex digits (or, base64-encoded by the metadata itself, its 32 bytes).
    let expected = match meta.iter().find(|(k, _)| k == "blake3") {
        None => None,
        Some((_, v)) if v.len() == 32 => Some(<[u8; 32]>::try_from(&v[..]).expect("32 bytes")),
        Some((_, v)) => {
            let mut out = [0u8; 32];
            hex::decode_to_slice(v.trim_ascii(), &mut out)
                .map_err(|_| bad("Upload-Metadata blake3 must be 64 hex digits"))?;
            Some(out)
        }
    };
    let id: [u8; 16] = rand::random();
    let sharded = length > INLINE_BYTES_MAX as u64;
    let shards = if sharded {
        // An upload's space is not held between its requests: each PATCH reserves its files
        // in steps as its bytes arrive.
        store::place_shards(node, length, rand::random()).await?.0
    } else {
        Vec::new()
    };
    let ec = node.ec;
    let rec = UploadRec {
        bucket,
        key,
        length,
        offset: 0,
        created_ms: 0,
        expires_ms: 0,
        metadata: raw_meta,
        expected,
        data: ec.data,
        parity: ec.parity,
        shards,
        compress: None,
        stored_blocks: 0,
        files_created: false,
        lock: None,
    };
    let expiry_ms = node.store.upload_expiry.as_millis() as u64;
    node.meta
        .ask(ask::UploadCreate { id, rec, expiry_ms })
        .await?;
    let mut r = empty(StatusCode::CREATED);
    r.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&format!("/uploads/{}", hex::encode(id))).expect("hex"),
    );
    r.headers_mut()
        .insert("upload-offset", HeaderValue::from(0));
    expires_header(&mut r, store::now_ms() + expiry_ms);
    if length == 0 {
        // Nothing to send: the empty object is committed at once.
        let done = finish_empty(node, id).await?;
        r.headers_mut().insert(
            header::ETAG,
            HeaderValue::from_str(&etag_of(&done.1)).expect("hex"),
        );
        r.headers_mut()
            .insert("x-version", HeaderValue::from(done.0.version));
    }
    Ok(r)
}

async fn finish_empty(node: &Arc<Node>, id: [u8; 16]) -> Result<(PutOutcome, [u8; 32]), ApiError> {
    let owner: u64 = rand::random();
    let st: UploadState = node.meta.ask(lock_request(node, id, 0, owner)).await?;
    let h = *blake3::hash(&[]).as_bytes();
    if st.rec.expected.is_some_and(|e| e != h) {
        end_upload(node, id, false).await;
        return Err(StoreError::BadDigest.into());
    }
    let content = NewContent {
        blake3: h,
        size_bytes: 0,
        stored: Stored::Inline(Vec::new()),
        encoding: Encoding::Identity,
        tree: Tree::None,
    };
    let out: PutOutcome = node
        .meta
        .ask(ask::UploadCommit {
            id,
            owner,
            intent: rand::random(),
            content,
        })
        .await?;
    Ok((out, h))
}

fn lock_request(node: &Node, id: [u8; 16], offset: u64, owner: u64) -> ask::UploadLock {
    ask::UploadLock {
        id,
        offset,
        owner,
        node: node.node_id.clone(),
        boot: node.boot,
    }
}

async fn head(node: &Arc<Node>, id: [u8; 16]) -> Result<Resp, ApiError> {
    let rec: UploadRec = node
        .meta
        .ask(ask::UploadGet { id })
        .await?
        .ok_or_else(|| err(StatusCode::NOT_FOUND, "NoSuchUpload", "no such upload"))?;
    let mut r = empty(StatusCode::OK);
    let h = r.headers_mut();
    h.insert("upload-offset", HeaderValue::from(rec.offset));
    h.insert("upload-length", HeaderValue::from(rec.length));
    if !rec.metadata.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&rec.metadata) {
            h.insert("upload-metadata", v);
        }
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    expires_header(&mut r, rec.expires_ms);
    Ok(r)
}

/// Ends an upload (with `expired`, only if it expired) and deletes its files (their intent
/// makes sure, should this fail). Whether it ended.
async fn end_upload(node: &Arc<Node>, id: [u8; 16], expired: bool) -> bool {
    let intent: u64 = rand::random();
    match node
        .meta
        .ask(ask::UploadEnd {
            id,
            intent,
            expired,
        })
        .await
    {
        Ok(Some(files)) => {
            if !files.is_empty() {
                store::discard(node, &files, intent);
            }
            true
        }
        Ok(None) => false,
        Err(e) => {
            tracing::warn!("ending upload {}: {e}", hex::encode(id));
            false
        }
    }
}

async fn terminate(node: &Arc<Node>, id: [u8; 16]) -> Result<Resp, ApiError> {
    if end_upload(node, id, false).await {
        Ok(empty(StatusCode::NO_CONTENT))
    } else {
        Err(err(StatusCode::NOT_FOUND, "NoSuchUpload", "no such upload"))
    }
}

/// Deletes the uploads that expired; run periodically by every node.
pub async fn expire(node: &Arc<Node>) {
    let ids: Vec<[u8; 16]> = match node.meta.ask(ask::UploadsExpired { limit: 100 }).await {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!("listing expired uploads: {e}");
            return;
        }
    };
    for id in ids {
        if end_upload(node, id, true).await {
            tracing::info!("upload {} expired", hex::encode(id));
        }
    }
}

/// The `Upload-Checksum` of a PATCH being verified.
pub enum Checksum {
    Blake3(Box<blake3::Hasher>, [u8; 32]),
    Sha1(sha1::Sha1, [u8; 20]),
}

impl Checksum {
    /// `Upload-Checksum: <algorithm> <base64 digest>`.
    pub fn parse(h: &http::HeaderMap) -> Result<Option<Checksum>, ApiError> {
        let Some(v) = h.get("upload-checksum") else {
            return Ok(None);
        };
        let v = v
            .to_str()
            .map_err(|_| bad("Upload-Checksum is not ASCII"))?;
        let (alg, b64) = v
            .trim()
            .split_once(' ')
            .ok_or_else(|| bad("Upload-Checksum is `<algorithm> <base64 digest>`"))?;
        let digest = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| bad("the Upload-Checksum digest is not base64"))?;
        let wrong = || bad("the Upload-Checksum digest has the wrong length");
        match alg {
            "blake3" => Ok(Some(Checksum::Blake3(
                Box::new(blake3::Hasher::new()),
                digest.try_into().map_err(|_| wrong())?,
            ))),
            "sha1" => Ok(Some(Checksum::Sha1(
                sha1::Sha1::new(),
                digest.try_into().map_err(|_| wrong())?,
            ))),
            other => Err(bad(format!(
                "checksum algorithm {other:?} is not supported ({CHECKSUM_ALGORITHMS})"
            ))),
        }
    }

    fn update(&mut self, b: &[u8]) {
        match self {
            Checksum::Blake3(h, _) => {
                h.update(b);
            }
            Checksum::Sha1(h, _) => h.update(b),
        }
    }

    fn matches(self) -> bool {
        match self {
            Checksum::Blake3(h, want) => *h.finalize().as_bytes() == want,
            Checksum::Sha1(h, want) => h.finalize()[..] == want[..],
        }
    }
}

async fn patch(front: &Front, req: Request<ReqBody>, id: [u8; 16]) -> Result<Resp, ApiError> {
    let node = &front.node;
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.split(';').next().unwrap_or("").trim() != OFFSET_OCTET_STREAM {
        return Err(err(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("a PATCH carries Content-Type: {OFFSET_OCTET_STREAM}"),
        ));
    }
    let offset = header_u64(req.headers(), "upload-offset")?
        .ok_or_else(|| bad("Upload-Offset is required"))?;
    let checksum = Checksum::parse(req.headers())?;
    let declared = header_u64(req.headers(), header::CONTENT_LENGTH.as_str())?;
    let owner: u64 = rand::random();
    let locked = node.meta.ask(lock_request(node, id, offset, owner)).await;
    let mut src = IncomingSource {
        body: req.into_body(),
        front,
    };
    let st = match locked {
        Ok(st) => st,
        Err(e) => {
            let current = match &e {
                ostore_control::meta::MetaError::UploadOffset(o) => Some(*o),
                _ => None,
            };
            drain(&mut src).await;
            let mut r = ApiError::from(e).into_response();
            if let Some(o) = current {
                r.headers_mut()
                    .insert("upload-offset", HeaderValue::from(o));
            }
            return Ok(r);
        }
    };
    // Content-Length may be anything up to 2^64-1: the sum is checked, not wrapped.
    if declared.is_some_and(|n| offset.checked_add(n).is_none_or(|end| end > st.rec.length)) {
        let _ = node.meta.ask(ask::UploadUnlock { id, owner }).await;
        drain(&mut src).await;
        return Err(bad("the PATCH goes past Upload-Length"));
    }
    let mut w = match PatchWriter::open(node, id, owner, st).await {
        Ok(w) => w,
        Err(e) => {
            let _ = node.meta.ask(ask::UploadUnlock { id, owner }).await;
            drain(&mut src).await;
            return Err(e.into());
        }
    };
    let r = w.run(&mut src, checksum).await;
    let r = match r {
        Ok(done) => Ok(done),
        Err(e) => {
            w.abandon().await;
            if !matches!(e, PatchError::Store(StoreError::Body(_))) {
                drain(&mut src).await;
            }
            Err(e)
        }
    };
    w.close().await;
    match r {
        Ok(Done::Progress(at)) => {
            let mut r = empty(StatusCode::NO_CONTENT);
            r.headers_mut()
                .insert("upload-offset", HeaderValue::from(at));
            expires_header(
                &mut r,
                store::now_ms() + node.store.upload_expiry.as_millis() as u64,
            );
            Ok(r)
        }
        Ok(Done::Committed(out, h, length)) => {
            let mut r = empty(StatusCode::NO_CONTENT);
            r.headers_mut()
                .insert("upload-offset", HeaderValue::from(length));
            r.headers_mut().insert(
                header::ETAG,
                HeaderValue::from_str(&etag_of(&h)).expect("hex"),
            );
            r.headers_mut()
                .insert("x-version", HeaderValue::from(out.version));
            Ok(r)
        }
        Err(PatchError::ChecksumMismatch) => {
            let mut r = Response::new(RespBody::Full(Some(Bytes::from_static(
                b"{\"error\":\"ChecksumMismatch\",\"message\":\"the PATCH body does not match Upload-Checksum; the offset stays\"}",
            ))));
            *r.status_mut() = StatusCode::from_u16(460).expect("460");
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r.headers_mut()
                .insert("upload-offset", HeaderValue::from(offset));
            Ok(r)
        }
        Err(PatchError::TooLong) => Err(bad("the PATCH goes past Upload-Length")),
        Err(PatchError::Store(e)) => Err(e.into()),
    }
}

enum Done {
    /// The upload stands at this offset.
    Progress(u64),
    /// The upload is complete: the version, the content's BLAKE3, and its length.
    Committed(PutOutcome, [u8; 32], u64),
}

enum PatchError {
    ChecksumMismatch,
    TooLong,
    Store(StoreError),
}

impl From<StoreError> for PatchError {
    fn from(e: StoreError) -> Self {
        PatchError::Store(e)
    }
}

impl From<ostore_control::meta::MetaError> for PatchError {
    fn from(e: ostore_control::meta::MetaError) -> Self {
        PatchError::Store(e.into())
    }
}

fn codec_err(e: compress::CompressError) -> StoreError {
    StoreError::Codec(e.to_string())
}

/// One PATCH's writing state: where the upload stood when it began and what it has taken since.
struct PatchWriter {
    node: Arc<Node>,
    id: [u8; 16],
    owner: u64,
    rec: UploadRec,
    ec: EcParams,
    /// Object bytes durable and recorded.
    offset: u64,
    /// Object bytes taken by this PATCH beyond `offset`.
    taken: u64,
    /// The BLAKE3 state, which also hands out the outboard's level-0 entries as groups end.
    hash: HashState,
    /// Level-0 entries recorded so far (read back from the upload, then each checkpoint's
    /// appended), for the commit.
    tree: Vec<u8>,
    /// Begun before trees were kept: committed without one.
    no_tree: bool,
    /// For an upload stored inline: every byte so far.
    inline: Vec<u8>,
    /// For a sharded upload: the stripe pipeline (tail already fed).
    out: Option<StripeOut>,
    frames: Vec<FrameEntry>,
    /// How many of `frames` the metadata holds already.
    frames_recorded: usize,
    frame_writer: Option<FrameWriter>,
    staged: Vec<u8>,
    last_renew: Instant,
}

impl PatchWriter {
    async fn open(
        node: &Arc<Node>,
        id: [u8; 16],
        owner: u64,
        st: UploadState,
    ) -> Result<Self, StoreError> {
        let bad_state = |what: &str| StoreError::Codec(format!("upload state: {what}"));
        let mut hash: HashState = if st.hash.is_empty() {
            HashState::new()
        } else {
            postcard::from_bytes(&st.hash).map_err(|_| bad_state("hash"))?
        };
        // The groups are those of the object's declared length, known from the start.
        hash.set_group(tree::Shape::new(st.rec.length).group);
        // Whole entries, one per whole group hashed before this PATCH, never more; none at
        // all for an upload begun before trees were kept, which ends without one.
        let groups_before = hash.groups_done();
        let no_tree = st.tree.is_empty() && groups_before > 0;
        if !no_tree && st.tree.len() as u64 != groups_before * 32 {
            return Err(bad_state("tree"));
        }
        let frames = FrameEntry::decode_all(&st.frames).ok_or_else(|| bad_state("frames"))?;
        let ec = EcParams::new(st.rec.data, st.rec.parity).map_err(|_| bad_state("ec"))?;
        let UploadState {
            rec, tail, tree, ..
        } = st;
        let sharded = !rec.shards.is_empty();
        Ok(PatchWriter {
            node: node.clone(),
            id,
            owner,
            offset: rec.offset,
            taken: 0,
            hash,
            tree,
            no_tree,
            // Inline, the tail is the object so far; sharded, it is fed first to the stripes.
            inline: if sharded { Vec::new() } else { tail.clone() },
            staged: if sharded { tail } else { Vec::new() },
            out: None,
            frames_recorded: frames.len(),
            frames,
            frame_writer: None,
            last_renew: Instant::now(),
            ec,
            rec: UploadRec { lock: None, ..rec },
        })
    }

    /// Opens the shard files and feeds the stored tail, once the form of the object is known.
    async fn start_stripes(&mut self, compress: bool) -> Result<(), StoreError> {
        let ec = self.ec;
        let batch = store::WRITE_BATCH_STRIPES;
        let striper = Striper::resume(ec, batch, self.rec.stored_blocks);
        let file_bytes = (!compress && !self.rec.files_created)
            .then(|| Geometry::new(ec, store::payload_for(self.rec.length)).shard_file_bytes());
        let mut w = ShardWriter::create(
            &self.node,
            &self.rec.shards,
            striper.buffer_bytes(),
            file_bytes,
            OpenMode::Write,
        )
        .await?;
        if self.rec.files_created {
            w.skip_dir_sync();
        }
        let mut out = StripeOut {
            striper,
            codec: Codec::new(ec),
            tags: self.rec.shards.iter().map(|l| l.file_tag).collect(),
            w,
        };
        let tail = std::mem::take(&mut self.staged);
        out.feed(&tail).await?;
        self.out = Some(out);
        if compress {
            self.frame_writer = Some(FrameWriter::new().map_err(codec_err)?);
        }
        self.rec.compress = Some(compress);
        Ok(())
    }

    async fn take(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        self.hash.update(chunk);
        self.taken += chunk.len() as u64;
        if self.rec.shards.is_empty() {
            self.inline.extend_from_slice(chunk);
            return Ok(());
        }
        let out = self.out.as_mut().expect("stripes started");
        match self.frame_writer.as_mut() {
            None => out.feed(chunk).await,
            Some(f) => {
                f.push(chunk, &mut self.staged).map_err(codec_err)?;
                out.feed(&self.staged).await?;
                self.staged.clear();
                Ok(())
            }
        }
    }

    /// Streams the body in; records progress or commits.
    async fn run(
        &mut self,
        body: &mut IncomingSource<'_>,
        mut checksum: Option<Checksum>,
    ) -> Result<Done, PatchError> {
        let sharded = !self.rec.shards.is_empty();
        let mut first: Vec<Bytes> = Vec::new();
        if sharded && self.rec.compress.is_none() {
            // The object's form is decided on its first bytes, as for a PUT. Nothing was
            // recorded yet if the body breaks here: the client sends it again.
            let compress = store::probe_compressible(&self.node, &mut first, body).await?;
            self.start_stripes(compress).await?;
        } else if sharded {
            self.start_stripes(self.rec.compress == Some(true)).await?;
        }
        let mut since_checkpoint = 0u64;
        let mut first = first.into_iter();
        loop {
            let chunk = match first.next() {
                Some(c) => c,
                None => match body.next_chunk().await {
                    Some(Ok(c)) => c,
                    Some(Err(e)) => {
                        // The client went away: keep what arrived, unless it had to be verified.
                        if checksum.is_none() && self.taken > 0 {
                            let _ = self.checkpoint(true).await;
                        }
                        return Err(StoreError::Body(e).into());
                    }
                    None => break,
                },
            };
            if (self.offset + self.taken).saturating_add(chunk.len() as u64) > self.rec.length {
                return Err(PatchError::TooLong);
            }
            if let Some(c) = checksum.as_mut() {
                c.update(&chunk);
            }
            self.take(&chunk).await?;
            since_checkpoint += chunk.len() as u64;
            if checksum.is_none()
                && since_checkpoint >= CHECKPOINT_BYTES
                && self.offset + self.taken < self.rec.length
            {
                self.checkpoint(false).await?;
                since_checkpoint = 0;
            } else if self.last_renew.elapsed() >= RENEW_EVERY {
                self.node
                    .meta
                    .ask(ask::UploadRenew {
                        id: self.id,
                        owner: self.owner,
                    })
                    .await?;
                self.last_renew = Instant::now();
            }
        }
        if let Some(c) = checksum.take() {
            if !c.matches() {
                return Err(PatchError::ChecksumMismatch);
            }
        }
        if self.offset + self.taken == self.rec.length {
            return self.commit().await;
        }
        self.checkpoint(true).await?;
        Ok(Done::Progress(self.offset))
    }

    /// Makes everything taken so far durable and records it; with `release`, gives the lock
    /// back. Afterwards the stripe pipeline continues from the new state.
    async fn checkpoint(&mut self, release: bool) -> Result<(), StoreError> {
        let mut tail = Vec::new();
        if let Some(out) = self.out.as_mut() {
            if let Some(f) = self.frame_writer.as_mut() {
                f.flush(&mut self.staged).map_err(codec_err)?;
                out.feed(&self.staged).await?;
                self.staged.clear();
                self.frames.extend(f.take_frames());
            }
            let (sealed, t) =
                out.striper
                    .seal_whole(&mut out.w.slices(), &mut out.codec, &out.tags)?;
            out.w.write(sealed.first_block, sealed.bytes).await?;
            out.w.sync().await?;
            self.rec.stored_blocks = out.striper.blocks_sealed();
            self.rec.files_created = true;
            tail = t;
        } else {
            tail.clone_from(&self.inline);
        }
        let mut new_tree = self.hash.take_groups().concat();
        if self.no_tree {
            new_tree.clear();
        }
        let progress = Progress {
            offset: self.offset + self.taken,
            stored_blocks: self.rec.stored_blocks,
            compress: self.rec.compress,
            files_created: self.rec.files_created,
            tail: tail.clone(),
            hash: postcard::to_stdvec(&self.hash).expect("serializes"),
            new_frames: FrameEntry::encode_all(&self.frames[self.frames_recorded..]),
            new_tree: new_tree.clone(),
            expiry_ms: self.node.store.upload_expiry.as_millis() as u64,
        };
        self.node
            .meta
            .ask(ask::UploadProgress {
                id: self.id,
                owner: self.owner,
                progress,
                release,
            })
            .await?;
        self.frames_recorded = self.frames.len();
        self.tree.extend_from_slice(&new_tree);
        self.offset += self.taken;
        self.taken = 0;
        self.last_renew = Instant::now();
        if let Some(out) = self.out.as_mut() {
            // Continue at the stripe boundary, with the tail first.
            out.striper =
                Striper::resume(self.ec, store::WRITE_BATCH_STRIPES, self.rec.stored_blocks);
            out.feed(&tail).await?;
        }
        Ok(())
    }

    /// The last bytes are in: seal, make durable, and commit the version.
    async fn commit(&mut self) -> Result<Done, PatchError> {
        let h = self.hash.finalize();
        if self.rec.expected.is_some_and(|e| e != h) {
            end_upload(&self.node, self.id, false).await;
            return Err(StoreError::BadDigest.into());
        }
        let length = self.rec.length;
        let outboard = match self.out {
            Some(_) if !self.no_tree => self.outboard(length)?,
            _ => Vec::new(),
        };
        let (stored, encoding, tree) = match self.out.as_mut() {
            None => (
                Stored::Inline(std::mem::take(&mut self.inline)),
                Encoding::Identity,
                Tree::None,
            ),
            Some(out) => {
                let encoding = match self.frame_writer.as_mut() {
                    None => Encoding::Identity,
                    Some(f) => {
                        f.flush(&mut self.staged).map_err(codec_err)?;
                        self.frames.extend(f.take_frames());
                        compress::write_seek_table(&self.frames, &mut self.staged);
                        out.feed(&self.staged).await?;
                        self.staged.clear();
                        Encoding::Zstd {
                            stored_bytes: out.striper.total_bytes(),
                            frames: self.frames.len() as u32,
                        }
                    }
                };
                // The outboard follows the stored bytes.
                out.feed(&outboard).await?;
                out.finish(self.ec, &self.rec.shards, h).await?;
                (
                    Stored::Sharded {
                        data: self.ec.data,
                        parity: self.ec.parity,
                        shards: self.rec.shards.clone(),
                    },
                    encoding,
                    if self.no_tree {
                        Tree::None
                    } else {
                        Tree::Outboard
                    },
                )
            }
        };
        let intent: u64 = rand::random();
        let content = NewContent {
            blake3: h,
            size_bytes: length,
            stored,
            encoding,
            tree,
        };
        let out: PutOutcome = self
            .node
            .meta
            .ask(ask::UploadCommit {
                id: self.id,
                owner: self.owner,
                intent,
                content,
            })
            .await?;
        // The files end as a PUT's do once committed (`lifecycle::Commit`); the commit made
        // the intent that lists them.
        let mut m = lifecycle::Commit::committing();
        let mut actions = m.on(out.event());
        if self.rec.shards.is_empty() {
            actions.retain(|a| *a == lifecycle::Action::RemoveReplaced);
        }
        store::carry_out(&self.node, &self.rec.shards, intent, &h, actions).await;
        self.offset = length;
        self.taken = 0;
        Ok(Done::Committed(out, h, length))
    }

    /// The object's outboard, from the level-0 entries recorded by every PATCH, this one's
    /// and the last group's.
    fn outboard(&mut self, length: u64) -> Result<Vec<u8>, StoreError> {
        let shape = tree::Shape::new(length);
        if shape.levels.is_empty() {
            return Ok(Vec::new());
        }
        let mut level0: Vec<tree::Cv> = self
            .tree
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32 bytes"))
            .collect();
        level0.extend(self.hash.take_groups());
        level0.extend(self.hash.open_group());
        if level0.len() as u64 != shape.levels[0] {
            return Err(StoreError::Codec(format!(
                "upload state: {} outboard entries for {} groups",
                level0.len(),
                shape.levels[0]
            )));
        }
        Ok(shape.outboard_from(&level0))
    }

    /// Gives the lock back after a failure (what was recorded stays).
    async fn abandon(&mut self) {
        let _ = self
            .node
            .meta
            .ask(ask::UploadUnlock {
                id: self.id,
                owner: self.owner,
            })
            .await;
    }

    async fn close(self) {
        if let Some(out) = self.out {
            out.w.close().await;
        }
    }
}
