//! The control-plane API: every metadata operation a data node (or `osctl`, through a node)
//! asks of the control plane, as one serializable [`Request`], and [`execute`], which runs it
//! against the key-value store with the transactions of [`crate::meta`] and
//! [`crate::cluster`].
//!
//! `ostore dev` runs requests in-process through the very same [`execute`]; `ostore control`
//! receives them over HTTP (`POST /v1/rpc`, see ARCHITECTURE.md for the framing). Each request is
//! also a type of its own in [`ask`] that names its answer ([`Ask`]); the answer is the postcard
//! encoding of that type.

use crate::cluster::{self, ClusterView, Registration};
use crate::keys;
use crate::kv::{run, Kv, TxKv};
use crate::meta::{self, MetaError, NewContent, PutOutcome, WriteCondition};
use crate::multipart;
use crate::records::{
    AccessKeyRec, ContentRec, DriveRec, IntentRec, ObjectAttrs, Owner, RecordError, ShardLoc,
    Stored, VersionRec,
};
use crate::scrub;
use crate::upload::{self, Progress, UploadRec};
use serde::{Deserialize, Serialize};

/// Version byte leading every request and answer body.
pub const RPC_VERSION: u8 = 1;

/// How long the answer of a committed write is kept for retries of the same request.
pub const DONE_TTL_MS: u64 = 3600 * 1000;
/// Requests issued further than this from the executing clock are refused: their retry
/// markers would expire too early (or too late).
pub const CLOCK_SKEW_MS_MAX: u64 = 5 * 60 * 1000;

/// Identity of one request; a retry of the request carries the same token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub id: [u8; 16],
    /// When the caller issued it (its clock).
    pub issued_ms: u64,
}

impl Token {
    pub fn new(id: [u8; 16], issued_ms: u64) -> Self {
        Token { id, issued_ms }
    }
}

/// Contents examined by one [`Request::RepairScan`] call.
pub const REPAIR_SCAN_PAGE: usize = 1000;

/// A request as a type of its own, naming its answer: `MetaClient::ask` and the in-process
/// service decode exactly this type, and [`execute`] encodes exactly this type (through
/// [`answer`]), so a request and its answer cannot drift apart unnoticed.
pub trait Ask: Into<Request> {
    type Answer: Serialize + serde::de::DeserializeOwned;
}

/// Declares [`Request`] (one variant per request; its postcard encoding is the wire format)
/// and, in [`ask`], one struct per request with the same fields, convertible into the variant
/// and naming the answer (`-> T`).
macro_rules! requests {
    ($(
        $(#[$m:meta])*
        $name:ident $({ $($(#[$fm:meta])* $f:ident : $t:ty),* $(,)? })? -> $ans:ty
    ),* $(,)?) => {
        #[derive(Debug, Clone, Serialize, Deserialize)]
        pub enum Request {
            $( $(#[$m])* $name $({ $($(#[$fm])* $f: $t),* })? ),*
        }

        /// Every request as a type of its own (see [`Ask`]).
        pub mod ask {
            #[allow(unused_imports)]
            use super::*;
            $(
                $(#[$m])*
                #[derive(Debug, Clone)]
                pub struct $name { $($($(#[$fm])* pub $f: $t),*)? }

                impl From<$name> for Request {
                    #[allow(unused_variables)]
                    fn from(x: $name) -> Request {
                        Request::$name $({ $($f: x.$f),* })?
                    }
                }

                impl Ask for $name {
                    type Answer = $ans;
                }
            )*
        }
    };
}

/// Encodes the answer of request `A`.
fn answer<A: Ask>(v: A::Answer) -> Result<Vec<u8>, MetaError> {
    enc(v)
}

requests! {
    // Reads.
    CheckCondition {
        bucket: String,
        key: String,
        cond: WriteCondition,
    } -> (),
    Content { blake3: [u8; 32] } -> Option<ContentRec>,
    Resolve {
        bucket: String,
        key: String,
        version: Option<u64>,
    } -> meta::Resolved,
    Versions { bucket: String, key: String } -> Option<Vec<VersionRec>>,
    List {
        bucket: String,
        prefix: String,
        start_after: Option<String>,
        limit: usize,
    } -> meta::ListPage,
    Intent { id: u64 } -> Option<IntentRec>,
    Intents -> Vec<(u64, IntentRec)>,
    Drive { id: u16 } -> Option<DriveRec>,
    ShardsOnDrive {
        drive: u16,
        after: Option<([u8; 32], u8)>,
        limit: usize,
    } -> Vec<([u8; 32], u8)>,
    Cluster -> ClusterView,
    UploadGet { id: [u8; 16] } -> Option<upload::UploadRec>,
    /// Every upload in progress.
    Uploads -> Vec<upload::UploadRec>,
    /// Uploads expired by now.
    UploadsExpired { limit: usize } -> Vec<[u8; 16]>,
    /// Versions kept per key in `bucket` (its override, else the default; `None`: all); with
    /// `bucket: None`, the cluster default.
    Retention { bucket: Option<String> } -> Option<u32>,
    /// Every bucket.
    Buckets -> Vec<String>,
    /// Up to `limit` content records after `after`, in hash order.
    Contents {
        after: Option<[u8; 32]>,
        limit: usize,
    } -> Vec<([u8; 32], ContentRec)>,
    /// Contents of one page (of [`REPAIR_SCAN_PAGE`]) unreferenced for `grace_ms` or more.
    GcCandidates {
        after: Option<meta::GcCursor>,
        grace_ms: u64,
    } -> meta::GcPage,
    /// What of the cluster's data is still on a node's drives (shards from the drive counters,
    /// or with `exact` counted from the index).
    DrainProgress { node: u32, exact: bool } -> cluster::DrainProgress,
    /// The cluster-wide counters.
    Stats -> meta::Stats,
    /// Shards held by each drive.
    DriveShardCounts { drives: Vec<u16> } -> Vec<i64>,
    /// How `drive` is scrubbed.
    ScrubPolicy { drive: u16 } -> scrub::ScrubPolicy,
    /// The default scrub policy and the per-drive ones.
    ScrubPolicies -> (Option<scrub::ScrubPolicy>, Vec<(u16, scrub::ScrubPolicy)>),
    /// Where each drive's continuous scrub is.
    ScrubCursors { drives: Vec<u16> } -> Vec<scrub::ScrubCursor>,

    // Writes.
    Init -> (),
    PutExisting {
        bucket: String,
        key: String,
        blake3: [u8; 32],
        cond: WriteCondition,
        attrs: ObjectAttrs,
    } -> Option<PutOutcome>,
    DeleteKey { bucket: String, key: String } -> Option<meta::Appended>,
    DeleteVersion {
        bucket: String,
        key: String,
        version: u64,
    } -> (),
    CommitPut {
        bucket: String,
        key: String,
        intent: Option<u64>,
        content: NewContent,
        cond: WriteCondition,
        attrs: ObjectAttrs,
    } -> PutOutcome,
    BeginIntent {
        id: u64,
        shards: Vec<ShardLoc>,
        owner: Owner,
    } -> (),
    AbandonIntent { id: u64 } -> (),
    EndIntent { id: u64 } -> (),
    ReplaceShards {
        blake3: [u8; 32],
        shards: Vec<ShardLoc>,
        /// The locations the new shards were made from (a slot changed since keeps its shard).
        replaced: Vec<ShardLoc>,
        intent: u64,
    } -> Vec<ShardLoc>,
    SetDrive { id: u16, rec: DriveRec } -> (),
    QueueRepair { contents: Vec<[u8; 32]>, nonce: u64 } -> (),
    RepairDone { blake3: [u8; 32], nonce: u64 } -> (),
    MarkDamaged { blake3: [u8; 32] } -> (),
    Register { reg: Registration } -> cluster::NodeRec,
    /// → `cluster::Beat` (not known: register again)
    Heartbeat { node: u32, free: Vec<(u16, u64)> } -> cluster::Beat,
    /// Queues for repair every content (of one page after `after`) whose shards are not where
    /// the placement rules want them: on a node that is down, on a drive being refilled, or two
    /// on one node while enough nodes are up to spread them. → `(queued: u64, next: Option<[u8; 32]>)`
    RepairScan { after: Option<[u8; 32]>, nonce: u64 } -> (u64, Option<[u8; 32]>),
    /// Forgets the answers of write requests issued over [`DONE_TTL_MS`] ago.
    ExpireDone -> (),
    /// Creates an upload now, expiring `expiry_ms` from now.
    UploadCreate {
        id: [u8; 16],
        rec: UploadRec,
        expiry_ms: u64,
    } -> (),
    /// Takes an upload for a PATCH at `offset` for [`upload::LOCK_MS`].
    UploadLock {
        id: [u8; 16],
        offset: u64,
        owner: u64,
        node: String,
        boot: u64,
    } -> upload::UploadState,
    UploadRenew { id: [u8; 16], owner: u64 } -> (),
    UploadProgress {
        id: [u8; 16],
        owner: u64,
        progress: Progress,
        release: bool,
    } -> (),
    UploadUnlock { id: [u8; 16], owner: u64 } -> (),
    UploadCommit {
        id: [u8; 16],
        owner: u64,
        intent: u64,
        content: NewContent,
    } -> PutOutcome,
    /// Ends an upload (terminated; or, with `expired`, only if it expired by now), turning its
    /// files into the garbage intent `intent`.
    UploadEnd {
        id: [u8; 16],
        intent: u64,
        expired: bool,
    } -> Option<Vec<ShardLoc>>,
    SetRetention {
        bucket: Option<String>,
        keep: Option<u32>,
    } -> (),
    /// Applies `bucket`'s retention to one page of its keys after `after`.
    /// → `(versions removed: u64, next: Option<String>)`
    TrimVersions {
        bucket: String,
        after: Option<String>,
    } -> (u64, Option<String>),
    /// Sets (`None`: removes) the default scrub policy or one drive's.
    SetScrubPolicy {
        drive: Option<u16>,
        policy: Option<crate::scrub::ScrubPolicy>,
    } -> (),
    /// Records how far a drive's scrub got.
    SaveScrubCursor {
        drive: u16,
        cursor: crate::scrub::ScrubCursor,
    } -> (),
    /// Queues contents to have shards moved.
    QueueMove { contents: Vec<[u8; 32]>, nonce: u64 } -> (),
    /// Clears a move request unless renewed since `nonce`.
    MoveDone { blake3: [u8; 32], nonce: u64 } -> (),
    /// Starts draining a node.
    DrainStart { node: u32, shards_at_start: u64 } -> cluster::DrainRec,
    /// Stops draining a node. → `bool` (whether it was being drained)
    DrainStop { node: u32 } -> bool,
    /// Records that a drained node holds nothing any more (`done`), or again something.
    SetDrainDone { node: u32, done: bool } -> (),
    /// Removes a content unreferenced for `grace_ms` or more; its files become the garbage
    /// intent `intent`.
    GcCollect {
        blake3: [u8; 32],
        intent: u64,
        grace_ms: u64,
    } -> Option<ContentRec>,
    /// Takes the damaged mark off a content whose every shard was just verified (or rebuilt):
    /// the shards that were missing came back.
    ClearDamaged { blake3: [u8; 32] } -> (),
    /// The rate each node's repairs may read at. → `u64` (bytes/s; `u64::MAX`: no limit)
    RepairRate -> u64,
    /// Sets it (`None`: the default).
    SetRepairRate { bytes_per_s: Option<u64> } -> (),
    /// What waits in the repair and move queues (the first `limit` of each).
    Backlog { limit: usize } -> (meta::Backlog, meta::Backlog),
    /// Up to `limit` entries of the repair queue (or, with `moves`, the move queue: contents
    /// queued to have shards moved) from content `from` on, with the nonce of their latest
    /// request.
    WorkQueue {
        moves: bool,
        from: [u8; 32],
        limit: usize,
    } -> Vec<([u8; 32], u64)>,
    /// Every bucket, with when it was created (ms), in name order.
    BucketList -> Vec<(String, u64)>,
    /// Creates a bucket; `false` if it existed already.
    CreateBucket { bucket: String } -> bool,
    /// Deletes a bucket that holds no version (delete markers included).
    DeleteBucket { bucket: String } -> (),
    /// Keys under `prefix`, rolled up at `delimiter` (S3's listings).
    ListDelimited {
        bucket: String,
        prefix: String,
        delimiter: Option<String>,
        start_after: Option<String>,
        limit: usize,
    } -> meta::DelimitedPage,
    /// Every version under `prefix`, rolled up at `delimiter` (S3's ListObjectVersions).
    ListVersions {
        bucket: String,
        prefix: String,
        delimiter: Option<String>,
        key_marker: Option<String>,
        version_marker: Option<u64>,
        limit: usize,
    } -> meta::VersionPage,
    /// Starts a multipart upload under `id`.
    MpuCreate {
        id: [u8; 16],
        bucket: String,
        key: String,
        attrs: ObjectAttrs,
        expires_ms: u64,
    } -> (),
    MpuGet {
        id: [u8; 16],
        bucket: String,
        key: String,
    } -> multipart::MpuRec,
    /// Commits a part's content (as `CommitPut` commits a version's).
    CommitPart {
        id: [u8; 16],
        bucket: String,
        key: String,
        number: u16,
        intent: Option<u64>,
        content: NewContent,
        attrs: ObjectAttrs,
    } -> PutOutcome,
    MpuParts {
        id: [u8; 16],
        bucket: String,
        key: String,
        after: u16,
        limit: usize,
    } -> Vec<(u16, multipart::PartRec)>,
    MpuAbort {
        id: [u8; 16],
        bucket: String,
        key: String,
    } -> (),
    MpuComplete {
        id: [u8; 16],
        bucket: String,
        key: String,
        named: Vec<multipart::Named>,
        min_part_bytes: u64,
        md5: [u8; 16],
        cond: WriteCondition,
    } -> Result<multipart::Completed, multipart::Refusal>,
    MpuList {
        bucket: String,
        prefix: String,
        delimiter: Option<String>,
        key_marker: Option<String>,
        id_marker: Option<[u8; 16]>,
        limit: usize,
    } -> (Vec<multipart::ListedUpload>, bool),
    /// Aborts up to `limit` expired multipart uploads; answers how many.
    MpuExpire { limit: usize } -> usize,
    KeyCreate { id: String, rec: AccessKeyRec } -> (),
    KeyGet { id: String } -> Option<AccessKeyRec>,
    KeyList -> Vec<(String, AccessKeyRec)>,
    /// Removes the key with this id or name; `false` if there is none.
    KeyRevoke { id_or_name: String } -> bool,
    /// Whether `bucket`'s versioning is suspended.
    VersioningSuspended { bucket: String } -> bool,
    /// Suspends (or enables again) `bucket`'s versioning.
    SetVersioning { bucket: String, suspend: bool } -> (),
    /// Whether `bucket` exists (one key read, where the bucket list reads them all).
    BucketExists { bucket: String } -> bool,
    /// Revokes every certificate `node` presented (it can no longer reach peers or the control
    /// plane until it joins again with a new token); how many.
    RevokeNode { node: u32 } -> u32,
    /// Forgets used join tokens and revocations past their expiry.
    ExpireTrust -> (),
}

impl Request {
    /// Whether the request writes (and so goes through the group-commit writer).
    pub fn is_write(&self) -> bool {
        !matches!(
            self,
            Request::CheckCondition { .. }
                | Request::Content { .. }
                | Request::Resolve { .. }
                | Request::Versions { .. }
                | Request::List { .. }
                | Request::Intent { .. }
                | Request::Intents
                | Request::Drive { .. }
                | Request::ShardsOnDrive { .. }
                | Request::Cluster
                | Request::UploadGet { .. }
                | Request::Uploads
                | Request::UploadsExpired { .. }
                | Request::GcCandidates { .. }
                | Request::Retention { .. }
                | Request::VersioningSuspended { .. }
                | Request::BucketExists { .. }
                | Request::Buckets
                | Request::Contents { .. }
                | Request::DrainProgress { .. }
                | Request::Stats
                | Request::DriveShardCounts { .. }
                | Request::ScrubPolicy { .. }
                | Request::ScrubPolicies
                | Request::ScrubCursors { .. }
                | Request::RepairRate
                | Request::Backlog { .. }
                | Request::WorkQueue { .. }
                | Request::BucketList
                | Request::ListDelimited { .. }
                | Request::ListVersions { .. }
                | Request::MpuGet { .. }
                | Request::MpuParts { .. }
                | Request::MpuList { .. }
                | Request::KeyGet { .. }
                | Request::KeyList
        )
    }
}

/// A [`MetaError`] as it crosses the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WireError {
    NoSuchBucket,
    NoSuchKey,
    NoSuchVersion,
    NoSuchUpload,
    BucketNotEmpty,
    PreconditionFailed,
    Record(String),
    Kv(String),
    Unavailable(String),
    UploadOffset(u64),
    UploadBusy,
    NoSuchNode,
    Refused(String),
}

impl From<&MetaError> for WireError {
    fn from(e: &MetaError) -> Self {
        match e {
            MetaError::NoSuchBucket => WireError::NoSuchBucket,
            MetaError::NoSuchKey => WireError::NoSuchKey,
            MetaError::NoSuchVersion => WireError::NoSuchVersion,
            MetaError::NoSuchUpload => WireError::NoSuchUpload,
            MetaError::BucketNotEmpty => WireError::BucketNotEmpty,
            MetaError::PreconditionFailed => WireError::PreconditionFailed,
            MetaError::UploadOffset(o) => WireError::UploadOffset(*o),
            MetaError::UploadBusy => WireError::UploadBusy,
            MetaError::NoSuchNode => WireError::NoSuchNode,
            MetaError::Refused(m) => WireError::Refused(m.clone()),
            MetaError::Record(r) => WireError::Record(r.0.clone()),
            MetaError::Kv(k) => WireError::Kv(k.to_string()),
            MetaError::Unavailable(m) => WireError::Unavailable(m.clone()),
        }
    }
}

impl From<WireError> for MetaError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::NoSuchBucket => MetaError::NoSuchBucket,
            WireError::NoSuchKey => MetaError::NoSuchKey,
            WireError::NoSuchVersion => MetaError::NoSuchVersion,
            WireError::NoSuchUpload => MetaError::NoSuchUpload,
            WireError::BucketNotEmpty => MetaError::BucketNotEmpty,
            WireError::PreconditionFailed => MetaError::PreconditionFailed,
            WireError::UploadOffset(o) => MetaError::UploadOffset(o),
            WireError::UploadBusy => MetaError::UploadBusy,
            WireError::NoSuchNode => MetaError::NoSuchNode,
            WireError::Refused(m) => MetaError::Refused(m),
            WireError::Record(m) => MetaError::Record(RecordError(m)),
            WireError::Kv(m) => MetaError::Kv(crate::kv::KvError::Storage(m)),
            WireError::Unavailable(m) => MetaError::Unavailable(m),
        }
    }
}

/// Encodes a request body.
pub fn encode_request(token: &Token, req: &Request) -> Vec<u8> {
    let mut out = vec![RPC_VERSION];
    out.extend(postcard::to_stdvec(&(token, req)).expect("requests always serialize"));
    out
}

pub fn decode_request(b: &[u8]) -> Result<(Token, Request), String> {
    match b.split_first() {
        Some((&RPC_VERSION, rest)) => postcard::from_bytes(rest).map_err(|e| e.to_string()),
        Some((v, _)) => Err(format!("unknown control API version {v}")),
        None => Err("empty request".into()),
    }
}

/// Encodes an answer body: the result of [`execute`].
pub fn encode_answer(r: &Result<Vec<u8>, MetaError>) -> Vec<u8> {
    let wire: Result<&serde_bytes::Bytes, WireError> = match r {
        Ok(v) => Ok(serde_bytes::Bytes::new(v)),
        Err(e) => Err(e.into()),
    };
    let mut out = vec![RPC_VERSION];
    out.extend(postcard::to_stdvec(&wire).expect("answers always serialize"));
    out
}

/// Decodes an answer body into the request's return type.
pub fn decode_answer<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, MetaError> {
    let garbage = |m: String| MetaError::Unavailable(format!("undecodable answer: {m}"));
    let rest = match b.split_first() {
        Some((&RPC_VERSION, rest)) => rest,
        _ => return Err(garbage("unknown version".into())),
    };
    let wire: Result<serde_bytes::ByteBuf, WireError> =
        postcard::from_bytes(rest).map_err(|e| garbage(e.to_string()))?;
    match wire {
        Ok(v) => decode_value(&v),
        Err(e) => Err(e.into()),
    }
}

/// An answer's value as [`decode_value`] reads it.
pub fn encode_value<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("answers always serialize")
}

/// Decodes the value [`execute`] returned.
pub fn decode_value<T: serde::de::DeserializeOwned>(v: &[u8]) -> Result<T, MetaError> {
    postcard::from_bytes(v)
        .map_err(|e| MetaError::Unavailable(format!("undecodable answer value: {e}")))
}

fn enc<T: Serialize>(v: T) -> Result<Vec<u8>, MetaError> {
    Ok(postcard::to_stdvec(&v).expect("answers always serialize"))
}

/// Whether the shards of `content` sit where the placement rules want them, given `view`
/// (`placement::misplaced`; a draining node's shards are moved by the drain, not by repair).
pub fn misplaced(view: &ClusterView, content: &ContentRec) -> bool {
    let Stored::Sharded { shards, .. } = &content.stored else {
        return false;
    };
    let drives: Vec<u16> = shards.iter().map(|s| s.drive).collect();
    ostore_engine::placement::misplaced(&view.drive_views(|_| false), &drives)
}

/// The encoded answer to a heartbeat that was not recorded.
pub fn beat_answer(b: cluster::Beat) -> Vec<u8> {
    postcard::to_stdvec(&b).expect("answers always serialize")
}

/// Runs one request at the control plane's clock `now_ms`; the answer is the postcard
/// encoding of the return type named on the request's variant.
pub fn execute(kv: &dyn Kv, req: Request, now_ms: u64) -> Result<Vec<u8>, MetaError> {
    use Request::*;
    match req {
        CheckCondition { bucket, key, cond } => {
            answer::<ask::CheckCondition>(meta::check_condition(kv, &bucket, &key, &cond)?)
        }
        Content { blake3 } => answer::<ask::Content>(meta::content(kv, &blake3)?),
        Resolve {
            bucket,
            key,
            version,
        } => answer::<ask::Resolve>(meta::resolve(kv, &bucket, &key, version)?),
        Versions { bucket, key } => answer::<ask::Versions>(meta::versions(kv, &bucket, &key)?),
        List {
            bucket,
            prefix,
            start_after,
            limit,
        } => answer::<ask::List>(meta::list(
            kv,
            &bucket,
            &prefix,
            start_after.as_deref(),
            limit,
        )?),
        Intent { id } => answer::<ask::Intent>(meta::intent(kv, id)?),
        Intents => answer::<ask::Intents>(meta::intents(kv)?),
        Drive { id } => answer::<ask::Drive>(meta::drive(kv, id)?),
        ShardsOnDrive {
            drive,
            after,
            limit,
        } => answer::<ask::ShardsOnDrive>(meta::shards_on_drive(kv, drive, after, limit)?),
        QueueMove { contents, nonce } => answer::<ask::QueueMove>(meta::queue_work(
            kv,
            meta::WorkQueue::Move,
            &contents,
            nonce,
            now_ms,
        )?),
        MoveDone { blake3, nonce } => {
            answer::<ask::MoveDone>(meta::work_done(kv, meta::WorkQueue::Move, &blake3, nonce)?)
        }
        Cluster => answer::<ask::Cluster>(cluster::view(kv)?),
        DrainProgress { node, exact } => {
            answer::<ask::DrainProgress>(cluster::drain_progress(kv, node, exact)?)
        }
        Stats => answer::<ask::Stats>(meta::stats(kv)?),
        RepairRate => answer::<ask::RepairRate>(cluster::repair_rate(kv)?),
        SetRepairRate { bytes_per_s } => {
            answer::<ask::SetRepairRate>(cluster::set_repair_rate(kv, bytes_per_s)?)
        }
        WorkQueue { moves, from, limit } => answer::<ask::WorkQueue>(meta::work_queue(
            kv,
            if moves {
                meta::WorkQueue::Move
            } else {
                meta::WorkQueue::Repair
            },
            &from,
            limit,
        )?),
        BucketList => answer::<ask::BucketList>(meta::bucket_list(kv)?),
        ListDelimited {
            bucket,
            prefix,
            delimiter,
            start_after,
            limit,
        } => answer::<ask::ListDelimited>(meta::list_delimited(
            kv,
            &bucket,
            &prefix,
            delimiter.as_deref(),
            start_after.as_deref(),
            limit,
        )?),
        ListVersions {
            bucket,
            prefix,
            delimiter,
            key_marker,
            version_marker,
            limit,
        } => answer::<ask::ListVersions>(meta::list_versions(
            kv,
            &bucket,
            &prefix,
            delimiter.as_deref(),
            key_marker.as_deref(),
            version_marker,
            limit,
        )?),
        MpuCreate {
            id,
            bucket,
            key,
            attrs,
            expires_ms,
        } => answer::<ask::MpuCreate>(multipart::create(
            kv, &id, &bucket, &key, &attrs, expires_ms, now_ms,
        )?),
        MpuGet { id, bucket, key } => {
            answer::<ask::MpuGet>(multipart::get(kv, &bucket, &key, &id)?)
        }
        CommitPart {
            id,
            bucket,
            key,
            number,
            intent,
            content,
            attrs,
        } => answer::<ask::CommitPart>(multipart::commit_part(
            kv, &bucket, &key, &id, number, intent, &content, &attrs, now_ms,
        )?),
        MpuParts {
            id,
            bucket,
            key,
            after,
            limit,
        } => answer::<ask::MpuParts>(multipart::parts(kv, &bucket, &key, &id, after, limit)?),
        MpuAbort { id, bucket, key } => {
            answer::<ask::MpuAbort>(multipart::abort(kv, &bucket, &key, &id, now_ms)?)
        }
        MpuComplete {
            id,
            bucket,
            key,
            named,
            min_part_bytes,
            md5,
            cond,
        } => answer::<ask::MpuComplete>(multipart::complete(
            kv,
            &bucket,
            &key,
            &id,
            &named,
            min_part_bytes,
            md5,
            &cond,
            now_ms,
        )?),
        MpuList {
            bucket,
            prefix,
            delimiter,
            key_marker,
            id_marker,
            limit,
        } => answer::<ask::MpuList>(multipart::list(
            kv,
            &bucket,
            &prefix,
            delimiter.as_deref(),
            key_marker.as_deref(),
            id_marker,
            limit,
        )?),
        MpuExpire { limit } => answer::<ask::MpuExpire>(multipart::expire(kv, now_ms, limit)?),
        KeyCreate { id, rec } => answer::<ask::KeyCreate>(meta::key_create(kv, &id, &rec)?),
        KeyGet { id } => answer::<ask::KeyGet>(meta::key_get(kv, &id)?),
        KeyList => answer::<ask::KeyList>(meta::key_list(kv)?),
        KeyRevoke { id_or_name } => answer::<ask::KeyRevoke>(meta::key_revoke(kv, &id_or_name)?),
        CreateBucket { bucket } => {
            answer::<ask::CreateBucket>(meta::create_bucket(kv, &bucket, now_ms)?)
        }
        DeleteBucket { bucket } => answer::<ask::DeleteBucket>(meta::delete_bucket(kv, &bucket)?),
        Backlog { limit } => answer::<ask::Backlog>((
            meta::work_backlog(kv, meta::WorkQueue::Repair, limit)?,
            meta::work_backlog(kv, meta::WorkQueue::Move, limit)?,
        )),
        DriveShardCounts { drives } => {
            answer::<ask::DriveShardCounts>(meta::drive_shard_counts(kv, &drives)?)
        }
        ScrubPolicy { drive } => answer::<ask::ScrubPolicy>(scrub::policy(kv, drive)?),
        ScrubPolicies => answer::<ask::ScrubPolicies>(scrub::policies(kv)?),
        ScrubCursors { drives } => answer::<ask::ScrubCursors>(scrub::cursors(kv, &drives)?),
        SetScrubPolicy { drive, policy } => {
            answer::<ask::SetScrubPolicy>(scrub::set_policy(kv, drive, policy)?)
        }
        SaveScrubCursor { drive, cursor } => {
            answer::<ask::SaveScrubCursor>(scrub::save_cursor(kv, drive, &cursor)?)
        }
        DrainStart {
            node,
            shards_at_start,
        } => answer::<ask::DrainStart>(cluster::start_drain(kv, node, shards_at_start, now_ms)?),
        DrainStop { node } => answer::<ask::DrainStop>(cluster::stop_drain(kv, node)?),
        SetDrainDone { node, done } => {
            answer::<ask::SetDrainDone>(cluster::set_drain_done(kv, node, done, now_ms)?)
        }
        Init => answer::<ask::Init>(meta::init(kv, now_ms)?),
        PutExisting {
            bucket,
            key,
            blake3,
            cond,
            attrs,
        } => answer::<ask::PutExisting>(meta::put_existing(
            kv, &bucket, &key, &blake3, &cond, &attrs, now_ms,
        )?),
        DeleteKey { bucket, key } => {
            answer::<ask::DeleteKey>(meta::delete_key(kv, &bucket, &key, now_ms)?)
        }
        DeleteVersion {
            bucket,
            key,
            version,
        } => {
            answer::<ask::DeleteVersion>(meta::delete_version(kv, &bucket, &key, version, now_ms)?)
        }
        CommitPut {
            bucket,
            key,
            intent,
            content,
            cond,
            attrs,
        } => answer::<ask::CommitPut>(meta::commit_put(
            kv, &bucket, &key, intent, &content, &cond, &attrs, now_ms,
        )?),
        BeginIntent { id, shards, owner } => {
            answer::<ask::BeginIntent>(meta::begin_intent(kv, id, &shards, owner, now_ms)?)
        }
        AbandonIntent { id } => answer::<ask::AbandonIntent>(meta::abandon_intent(kv, id)?),
        EndIntent { id } => answer::<ask::EndIntent>(meta::end_intent(kv, id)?),
        ReplaceShards {
            blake3,
            shards,
            replaced,
            intent,
        } => answer::<ask::ReplaceShards>(meta::replace_shards(
            kv, &blake3, &shards, &replaced, intent,
        )?),
        SetDrive { id, rec } => answer::<ask::SetDrive>(meta::set_drive(kv, id, &rec)?),
        QueueRepair { contents, nonce } => {
            answer::<ask::QueueRepair>(meta::queue_repair(kv, &contents, nonce, now_ms)?)
        }
        RepairDone { blake3, nonce } => {
            answer::<ask::RepairDone>(meta::repair_done(kv, &blake3, nonce)?)
        }
        MarkDamaged { blake3 } => answer::<ask::MarkDamaged>(meta::set_damaged(kv, &blake3, true)?),
        ClearDamaged { blake3 } => {
            answer::<ask::ClearDamaged>(meta::set_damaged(kv, &blake3, false)?)
        }
        Register { reg } => answer::<ask::Register>(cluster::register(kv, &reg, now_ms)?),
        Heartbeat { node, free } => {
            answer::<ask::Heartbeat>(cluster::heartbeat(kv, node, &free, now_ms)?)
        }
        UploadGet { id } => answer::<ask::UploadGet>(upload::get(kv, &id)?),
        Uploads => answer::<ask::Uploads>(upload::all(kv)?),
        UploadsExpired { limit } => {
            answer::<ask::UploadsExpired>(upload::expired(kv, now_ms, limit)?)
        }
        UploadCreate {
            id,
            mut rec,
            expiry_ms,
        } => {
            rec.created_ms = now_ms;
            rec.expires_ms = now_ms + expiry_ms;
            answer::<ask::UploadCreate>(upload::create(kv, &id, &rec)?)
        }
        UploadLock {
            id,
            offset,
            owner,
            node,
            boot,
        } => {
            let lock = upload::UploadLock {
                owner,
                node,
                boot,
                until_ms: now_ms + upload::LOCK_MS,
            };
            answer::<ask::UploadLock>(upload::lock(kv, &id, offset, &lock, now_ms)?)
        }
        UploadRenew { id, owner } => {
            answer::<ask::UploadRenew>(upload::renew(kv, &id, owner, now_ms + upload::LOCK_MS)?)
        }
        UploadProgress {
            id,
            owner,
            progress,
            release,
        } => answer::<ask::UploadProgress>(upload::progress(
            kv, &id, owner, &progress, release, now_ms,
        )?),
        UploadUnlock { id, owner } => answer::<ask::UploadUnlock>(upload::unlock(kv, &id, owner)?),
        UploadCommit {
            id,
            owner,
            intent,
            content,
        } => answer::<ask::UploadCommit>(upload::commit(kv, &id, owner, intent, &content, now_ms)?),
        UploadEnd {
            id,
            intent,
            expired,
        } => answer::<ask::UploadEnd>(upload::end(
            kv,
            &id,
            intent,
            expired.then_some(now_ms),
            now_ms,
        )?),
        Retention { bucket } => match bucket {
            Some(b) => answer::<ask::Retention>(meta::retention(kv, &b)?),
            None => answer::<ask::Retention>(run(kv, false, |tx| {
                tx.get(&keys::retention(None))?
                    .map(|v| {
                        v.as_slice()
                            .try_into()
                            .map(u32::from_le_bytes)
                            .map_err(|_| MetaError::Record(RecordError("retention".into())))
                    })
                    .transpose()
            })?),
        },
        Buckets => answer::<ask::Buckets>(meta::buckets(kv)?),
        Contents { after, limit } => {
            answer::<ask::Contents>(meta::contents(kv, after, limit.min(10_000))?)
        }
        VersioningSuspended { bucket } => {
            answer::<ask::VersioningSuspended>(meta::versioning_suspended(kv, &bucket)?)
        }
        BucketExists { bucket } => answer::<ask::BucketExists>(meta::bucket_exists(kv, &bucket)?),
        RevokeNode { node } => {
            answer::<ask::RevokeNode>(crate::trust::revoke_node(kv, node, now_ms)?)
        }
        ExpireTrust => {
            crate::trust::expire(kv, now_ms)?;
            answer::<ask::ExpireTrust>(())
        }
        SetVersioning { bucket, suspend } => {
            answer::<ask::SetVersioning>(meta::set_versioning(kv, &bucket, suspend)?)
        }
        SetRetention { bucket, keep } => {
            answer::<ask::SetRetention>(meta::set_retention(kv, bucket.as_deref(), keep)?)
        }
        TrimVersions { bucket, after } => match meta::retention(kv, &bucket)? {
            None => answer::<ask::TrimVersions>((0u64, None::<String>)),
            Some(keep) => answer::<ask::TrimVersions>(meta::trim_versions(
                kv,
                &bucket,
                after.as_deref(),
                REPAIR_SCAN_PAGE,
                keep,
                now_ms,
            )?),
        },
        GcCandidates { after, grace_ms } => answer::<ask::GcCandidates>(meta::gc_candidates(
            kv,
            after,
            REPAIR_SCAN_PAGE,
            now_ms.saturating_sub(grace_ms),
        )?),
        GcCollect {
            blake3,
            intent,
            grace_ms,
        } => answer::<ask::GcCollect>(meta::collect(
            kv,
            &blake3,
            intent,
            now_ms.saturating_sub(grace_ms),
            now_ms,
        )?),
        ExpireDone => {
            let (b, e) = keys::done_before(now_ms.saturating_sub(DONE_TTL_MS));
            answer::<ask::ExpireDone>(run(kv, true, |tx| {
                tx.clear_range(&b, &e)?;
                Ok::<_, MetaError>(())
            })?)
        }
        RepairScan { after, nonce } => {
            let view = cluster::view(kv)?;
            let page = meta::contents(kv, after, REPAIR_SCAN_PAGE)?;
            let next = if page.len() == REPAIR_SCAN_PAGE {
                page.last().map(|(h, _)| *h)
            } else {
                None
            };
            let bad: Vec<[u8; 32]> = page
                .iter()
                .filter(|(_, c)| misplaced(&view, c))
                .map(|(h, _)| *h)
                .collect();
            if !bad.is_empty() {
                meta::queue_repair(kv, &bad, nonce, now_ms)?;
            }
            answer::<ask::RepairScan>((bad.len() as u64, next))
        }
    }
}

/// Runs `req` so that running it again with the same `token` — a retry after a lost answer or
/// after `commit_unknown_result` — returns the first answer instead of writing twice. The
/// request's transactions and a marker holding its answer commit as one transaction.
pub fn execute_idempotent(
    kv: &dyn Kv,
    req: Request,
    token: Token,
    now_ms: u64,
) -> Result<Vec<u8>, MetaError> {
    if !req.is_write() {
        return execute(kv, req, now_ms);
    }
    if token.issued_ms.abs_diff(now_ms) > CLOCK_SKEW_MS_MAX {
        return Err(MetaError::Record(RecordError(format!(
            "request issued at {} ms, executed at {now_ms} ms: clocks differ by more than {} s",
            token.issued_ms,
            CLOCK_SKEW_MS_MAX / 1000
        ))));
    }
    let marker = keys::done(token.issued_ms, &token.id);
    run(kv, true, |tx| {
        if let Some(answer) = tx.get(&marker)? {
            return Ok(answer);
        }
        let answer = execute(&TxKv::new(&mut *tx), req.clone(), now_ms)?;
        tx.set(&marker, &answer)?;
        Ok(answer)
    })
}
