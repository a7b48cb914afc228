//! Object I/O on one executor: streaming PUT into erasure-coded direct-I/O shard files,
//! verified (and if need be reconstructed) GET, and shard repair.
//!
//! The byte layout and the striping decisions come from `ostore-engine`; this module only moves
//! buffers between the network, the codec and the drives.

use crate::ctx::Node;
use crate::shardio::{ReadBuf, ShardFile};
use bytes::Bytes;
use futures_util::future::join_all;
use ostore_control::meta::{
    self, MetaError, NewContent, PutOutcome, WriteCondition, INLINE_BYTES_MAX,
};
use ostore_control::records::{ContentRec, Encoding, ObjectAttrs, ShardLoc, Stored, Tree};
use ostore_control::rpc::ask;
use ostore_engine::codec::{Codec, CodecError};
use ostore_engine::compress;
use ostore_engine::latency::{DeadlineRule, LatencyWindow};
use ostore_engine::lifecycle::{self, Event};
use ostore_engine::placement::{self, DriveView};
use ostore_engine::read::{next_action, BlockState, StripeAction};
use ostore_engine::stripe::{copy_out, data_shards_for, Striper};
use ostore_engine::tree;
use ostore_engine::{EcParams, Geometry};
use ostore_wire::peer::OpenMode;
use ostore_wire::shard::{block_offset, open_block, ShardHeader, BLOCK_BYTES, HEADER_BYTES};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::ops::Range;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

pub mod verify;

/// Stripes per write batch: each shard buffer holds this many 64 KiB blocks.
pub const WRITE_BATCH_STRIPES: usize = 4;
/// Stripes per read batch on GET and repair.
pub const READ_BATCH_STRIPES: u64 = 4;
/// Largest object accepted (S3's limit).
pub const OBJECT_BYTES_MAX: u64 = 5 << 40;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("body does not match its X-Blake3 digest")]
    BadDigest,
    #[error("request body failed: {0}")]
    Body(BodyFault),
    #[error("object larger than {OBJECT_BYTES_MAX} bytes")]
    TooLarge,
    #[error("not enough storage: {0}")]
    InsufficientStorage(String),
    #[error("{0}")]
    NotEnoughNodes(String),
    #[error("only {have} of {need} shards readable")]
    InsufficientShards { have: usize, need: usize },
    #[error("drive I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A drive operation on one shard file failed: which operation, drive, shard and offset.
    #[error(transparent)]
    Shard(#[from] ShardIoError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("erasure coding: {0}")]
    Codec(String),
    /// Bytes read back do not match the content's BLAKE3, however they were read.
    #[error("verification: {0}")]
    Verification(String),
}

/// What was being done to a shard file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardOp {
    Open,
    Reserve,
    Write,
    WriteHeader,
    Sync,
    SyncDirectory,
    Read,
}

impl std::fmt::Display for ShardOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ShardOp::Open => "opening",
            ShardOp::Reserve => "reserving space for",
            ShardOp::Write => "writing",
            ShardOp::WriteHeader => "writing the header of",
            ShardOp::Sync => "syncing",
            ShardOp::SyncDirectory => "syncing the directory of",
            ShardOp::Read => "reading",
        })
    }
}

/// A drive operation on one shard file that failed, with where it failed: the error a log line
/// or a 500 names, so that an operator can tell which drive and file to look at.
#[derive(Debug, Error)]
#[error("{op} shard {shard} (file {file_id:016x}) on drive {drive}{}: {source}", at_offset(*.offset))]
pub struct ShardIoError {
    pub op: ShardOp,
    pub drive: u16,
    pub shard: u8,
    pub file_id: u64,
    /// The byte offset in the file, for reads and writes.
    pub offset: Option<u64>,
    #[source]
    pub source: std::io::Error,
}

fn at_offset(offset: Option<u64>) -> String {
    offset.map_or(String::new(), |o| format!(" at byte {o}"))
}

impl ShardIoError {
    pub fn new(op: ShardOp, loc: &ShardLoc, offset: Option<u64>, source: std::io::Error) -> Self {
        ShardIoError {
            op,
            drive: loc.drive,
            shard: loc.index,
            file_id: loc.file_id,
            offset,
            source,
        }
    }
}

impl From<CodecError> for StoreError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::InsufficientShards { have, need } => {
                StoreError::InsufficientShards { have, need }
            }
            other => StoreError::Codec(other.to_string()),
        }
    }
}

pub(crate) type Result<T> = std::result::Result<T, StoreError>;

/// Why a request body could not be read to its end.
#[derive(Debug, Clone, Error)]
pub enum BodyFault {
    /// The connection or stream failed, or the body broke its framing.
    #[error("{0}")]
    Broken(String),
    /// Nothing arrived for this long (the client stalled): the request fails with 408.
    #[error("no byte of the body arrived for {0:?}")]
    Stalled(std::time::Duration),
}

/// Where a request body comes from (the HTTP layer adapts its body type to this).
#[allow(async_fn_in_trait)]
pub trait BodySource {
    /// The next piece of the body; `None` at its end.
    async fn next_chunk(&mut self) -> Option<std::result::Result<Bytes, BodyFault>>;

    /// Completes the version's attributes with what only the whole body tells (a digest taken
    /// as it streamed); called once `next_chunk` returned `None`, before the commit.
    fn complete(&mut self, _attrs: &mut ObjectAttrs) {}
}

pub use ostore_control::service::now_ms;

/// A committed PUT.
#[derive(Debug, Clone)]
pub struct Committed {
    pub outcome: PutOutcome,
    pub size_bytes: u64,
    pub blake3: [u8; 32],
}

/// Writes one set of shard files (all K+M for a PUT, or some for a repair).
pub(crate) struct ShardWriter {
    files: Vec<Rc<ShardFile>>,
    /// Where each file is (for errors).
    locs: Rc<[ShardLoc]>,
    /// Files given up on because their node stopped answering (see [`ShardWriter::may_lose`]).
    lost: Rc<RefCell<Vec<bool>>>,
    /// How many files on other nodes may be given up on when their node stops answering
    /// (0: none; a PUT allows M−1 and rebuilds them elsewhere before it answers).
    may_lose: usize,
    /// The directories holding the new files, made durable with them (with the position of a
    /// file in each, for errors).
    dirs: Vec<(std::path::PathBuf, usize)>,
    /// Two sets of per-shard buffers: one being filled while the other is being written.
    sets: [Vec<Rc<glommio::io::DmaBuffer>>; 2],
    current: usize,
    in_flight: Option<glommio::Task<Result<()>>>,
    /// The files' final size, when known: space is reserved ahead of the writes, in steps.
    file_bytes: Option<u64>,
    /// How far the files are reserved (and sized) so far.
    allocated_bytes: u64,
}

/// How far ahead of the bytes written a shard file is reserved. Reserving the whole file at
/// once would let a client that declares a large body and stops sending hold that much of
/// every drive; reserving ahead in steps keeps the writes overwrites inside the file (what
/// preallocation is for, see kernel-notes.md) while a stalled request holds at most this much
/// per file until its body times out.
pub const PREALLOCATE_AHEAD_BYTES: u64 = 16 << 20;

impl ShardWriter {
    /// Creates the files; with `file_bytes` (their final size), `write` preallocates them in
    /// steps ahead of the bytes written. On error, what was created is closed; the caller
    /// removes the files with the intent that lists them.
    pub(crate) async fn create(
        node: &Node,
        locs: &[ShardLoc],
        buf_bytes: usize,
        file_bytes: Option<u64>,
        mode: OpenMode,
    ) -> Result<Self> {
        let mut files = Vec::with_capacity(locs.len());
        let mut dirs = Vec::with_capacity(locs.len());
        let opened = async {
            for loc in locs {
                // Another node makes the directories of its files durable itself; existing
                // files' entries are durable already.
                if let Some(d) = node
                    .local_drive(loc.drive)
                    .filter(|_| mode != OpenMode::Read)
                {
                    if let Some(dir) = d.shard_path(loc).parent() {
                        dirs.push((dir.to_path_buf(), files.len()));
                    }
                }
                let f = ShardFile::open_loc(node, loc, mode)
                    .await
                    .map_err(|e| (loc, e))?;
                files.push(Rc::new(f));
            }
            Ok::<_, (&ShardLoc, std::io::Error)>(())
        }
        .await;
        if let Err((loc, e)) = opened {
            for f in files {
                if let Ok(f) = Rc::try_unwrap(f) {
                    f.close().await;
                }
            }
            return Err(shard_error(ShardOp::Open, loc, None, e));
        }
        dirs.sort();
        dirs.dedup_by(|a, b| a.0 == b.0);
        let set = locs
            .iter()
            .map(|_| Rc::new(glommio::allocate_dma_buffer(buf_bytes)))
            .collect::<Vec<_>>();
        Ok(ShardWriter {
            locs: locs.into(),
            lost: Rc::new(RefCell::new(vec![false; files.len()])),
            may_lose: 0,
            files,
            dirs,
            sets: [set, Vec::new()],
            current: 0,
            in_flight: None,
            file_bytes,
            allocated_bytes: 0,
        })
    }

    /// How far the files must be reserved before a write that ends at `end`: a step ahead of
    /// it, never past the final size. `None` when nothing more is needed.
    fn reserve_before(&mut self, end: u64) -> Option<u64> {
        let total = self.file_bytes?;
        if end <= self.allocated_bytes {
            return None;
        }
        let want = end.saturating_add(PREALLOCATE_AHEAD_BYTES).min(total);
        (want > self.allocated_bytes).then(|| {
            self.allocated_bytes = want;
            want
        })
    }

    /// The buffers to fill next.
    pub(crate) fn slices(&mut self) -> Vec<&mut [u8]> {
        if self.sets[self.current].is_empty() {
            // The second set is allocated only for objects of more than one batch.
            let bytes = self.sets[0][0].len();
            self.sets[self.current] = self
                .files
                .iter()
                .map(|_| Rc::new(glommio::allocate_dma_buffer(bytes)))
                .collect();
        }
        self.sets[self.current]
            .iter_mut()
            .map(|b| Rc::get_mut(b).expect("buffer not in flight").as_bytes_mut())
            .collect()
    }

    /// Starts writing `bytes` of every current buffer at block `first_block` and switches to
    /// the other set; at most one write batch is in flight, so this first waits for the
    /// previous one (and reports its error).
    pub(crate) async fn write(&mut self, first_block: u64, bytes: usize) -> Result<()> {
        self.flush().await?;
        if bytes == 0 {
            return Ok(());
        }
        let files = self.files.clone();
        let bufs = self.sets[self.current].clone();
        let reserve = self.reserve_before(block_offset(first_block) + bytes as u64);
        let losses = self.losses();
        let at = block_offset(first_block);
        let batch = async move {
            if let Some(r) = reserve {
                losses
                    .each(&files, |_, f| async move {
                        f.pre_allocate(r)
                            .await
                            .map_err(|e| (ShardOp::Reserve, None, e))
                    })
                    .await?;
            }
            losses
                .each(&files, |j, f| {
                    let b = bufs[j].clone();
                    async move {
                        let fail = |e| (ShardOp::Write, Some(at), e);
                        let n = f.write_at(&b, bytes, at).await.map_err(fail)?;
                        if n != bytes {
                            return Err(fail(std::io::Error::other(format!(
                                "short write {n} of {bytes}"
                            ))));
                        }
                        Ok(())
                    }
                })
                .await
        };
        self.in_flight = Some(ostore_server::guard::spawn_subtask(
            "a shard write batch",
            batch,
            subtask_failed,
        ));
        self.current ^= 1;
        Ok(())
    }

    /// Waits for the write in flight, if any.
    async fn flush(&mut self) -> Result<()> {
        match self.in_flight.take() {
            Some(t) => t.await,
            None => Ok(()),
        }
    }

    /// Writes the headers and makes every file durable.
    async fn finish(&mut self, headers: &[ShardHeader]) -> Result<()> {
        self.flush().await?;
        self.losses()
            .each(&self.files, |j, f| {
                let mut buf = glommio::allocate_dma_buffer(HEADER_BYTES);
                headers[j].encode(buf.as_bytes_mut());
                async move {
                    f.write_at(&Rc::new(buf), HEADER_BYTES, 0)
                        .await
                        .map_err(|e| (ShardOp::WriteHeader, Some(0), e))?;
                    f.fdatasync().await.map_err(|e| (ShardOp::Sync, None, e))
                }
            })
            .await?;
        self.sync_dirs().await
    }

    /// Lets up to `n` files on other nodes be given up on when their node stops answering.
    pub(crate) fn tolerate_losses(&mut self, n: usize) {
        self.may_lose = n;
    }

    /// The positions of the files given up on.
    pub(crate) fn lost(&self) -> Vec<usize> {
        let lost = self.lost.borrow();
        (0..lost.len()).filter(|&j| lost[j]).collect()
    }

    fn losses(&self) -> Losses {
        Losses {
            lost: self.lost.clone(),
            may_lose: self.may_lose,
            locs: self.locs.clone(),
        }
    }

    /// The files existed before: their directory entries are durable already.
    pub(crate) fn skip_dir_sync(&mut self) {
        self.dirs.clear();
    }

    /// Makes what was written durable (files, and the directories of files it created).
    pub(crate) async fn sync(&mut self) -> Result<()> {
        self.flush().await?;
        self.losses()
            .each(&self.files, |_, f| async move {
                f.fdatasync().await.map_err(|e| (ShardOp::Sync, None, e))
            })
            .await?;
        self.sync_dirs().await
    }

    /// The new files' directory entries must be durable too before anything refers to them.
    async fn sync_dirs(&mut self) -> Result<()> {
        let dirs = std::mem::take(&mut self.dirs);
        let locs = self.locs.clone();
        let syncs = dirs.iter().map(|(d, i)| {
            let loc = locs[*i];
            let fail = move |e: glommio::GlommioError<()>| {
                shard_error(ShardOp::SyncDirectory, &loc, None, e.into())
            };
            async move {
                let dir = glommio::io::Directory::open(d).await.map_err(fail)?;
                let r = dir.sync().await.map_err(fail);
                let _ = dir.close().await;
                r
            }
        });
        for r in join_all(syncs).await {
            r?;
        }
        Ok(())
    }

    pub(crate) async fn close(mut self) {
        let _ = self.flush().await;
        for f in self.files {
            if let Ok(f) = Rc::try_unwrap(f) {
                f.close().await;
            }
        }
    }
}

/// A failed operation on one shard file: what, at which offset, and the OS error.
type ShardOpError = (ShardOp, Option<u64>, std::io::Error);

/// Which of a writer's files were given up on, and how many may be.
#[derive(Clone)]
struct Losses {
    lost: Rc<RefCell<Vec<bool>>>,
    may_lose: usize,
    locs: Rc<[ShardLoc]>,
}

impl Losses {
    /// Runs `op` on every file not given up on, all at once. A file on another node whose
    /// node stops answering (past the deadline of [`crate::peer::op_deadline`], or its
    /// connection broke) is given up on while no more than `may_lose` are; any other error,
    /// or one loss too many, is the result. `op`'s error names what it was doing and where in
    /// the file.
    async fn each<'f, F, Fut>(&self, files: &'f [Rc<ShardFile>], op: F) -> Result<()>
    where
        F: Fn(usize, &'f ShardFile) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<(), ShardOpError>> + 'f,
    {
        let live: Vec<usize> = {
            let lost = self.lost.borrow();
            (0..files.len()).filter(|&j| !lost[j]).collect()
        };
        let runs = live.iter().map(|&j| {
            let fut = op(j, &files[j]);
            async move { (j, fut.await) }
        });
        let mut first_error = None;
        for (j, r) in join_all(runs).await {
            let Err((what, offset, e)) = r else { continue };
            let mut lost = self.lost.borrow_mut();
            let remote = matches!(*files[j], ShardFile::Peer(_));
            if remote
                && crate::peer::peer_unresponsive(&e)
                && lost.iter().filter(|l| **l).count() < self.may_lose
            {
                let e = ShardIoError::new(what, &self.locs[j], offset, e);
                tracing::warn!("giving up on a shard file (rebuilt elsewhere): {e}");
                lost[j] = true;
            } else if first_error.is_none() {
                first_error = Some(shard_error(what, &self.locs[j], offset, e));
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// What a request sees of a sub-task that panicked (logged and counted by the guard).
fn subtask_failed<T>() -> Result<T> {
    Err(StoreError::Io(std::io::Error::other(
        "an internal task of this request failed (it is logged)",
    )))
}

/// Maps a drive error on one shard file: a full disk is the client-visible 507; any other names
/// the operation, the drive, the shard and the offset.
fn shard_error(op: ShardOp, loc: &ShardLoc, offset: Option<u64>, e: std::io::Error) -> StoreError {
    let code = crate::oserror::os_code(&e);
    let e = ShardIoError::new(op, loc, offset, e);
    if code == Some(libc::ENOSPC) || code == Some(libc::EDQUOT) {
        StoreError::InsufficientStorage(e.to_string())
    } else {
        StoreError::Shard(e)
    }
}

/// Removes shard files, on this node's drives or (in a cluster) on the nodes holding them; a
/// file already gone counts as removed. Returns whether every file is gone: only then may the
/// intent that lists them be ended (else start-up or a later sweep retries).
pub async fn remove_files(node: &Node, locs: &[ShardLoc]) -> bool {
    let mut all = true;
    for loc in locs {
        if let Err(e) = ShardFile::remove(node, loc).await {
            tracing::warn!("removing shard {} on drive {}: {e}", loc.index, loc.drive);
            all = false;
        }
    }
    all
}

/// In the background: removes the files an intent lists and, once they are all gone, the intent.
pub(crate) fn discard(node: &Arc<Node>, locs: &[ShardLoc], intent: u64) {
    let (node, locs) = (node.clone(), locs.to_vec());
    glommio::spawn_local(async move {
        if remove_files(&node, &locs).await {
            node.end_intent_later(intent);
        } else if let Err(e) = node.meta.ask(ask::AbandonIntent { id: intent }).await {
            // Still the owner's: resolved when this process restarts.
            tracing::warn!("abandoning intent {intent:016x}: {e}");
        }
    })
    .detach();
}

/// Deletes the files of a damaged copy this content's upload replaced, if any.
pub(crate) async fn remove_replaced(node: &Arc<Node>, blake3: &[u8; 32]) {
    let id = meta::replaced_intent(blake3);
    if let Ok(Some(rec)) = node.meta.ask(ask::Intent { id }).await {
        discard(node, &rec.shards, id);
    }
}

/// Every drive as placement sees it: this node's with the free space last read (every second,
/// off the executors, less what was placed since); in a cluster, the other nodes' as their last
/// heartbeat reported them, those of nodes this node just failed to reach as unhealthy.
fn drive_views(node: &Node) -> Vec<DriveView> {
    let view = node.cluster.as_ref().map(|c| c.view());
    // A draining node takes no new shards, its own included.
    let me_draining = node
        .cluster
        .as_ref()
        .zip(view.as_ref())
        .is_some_and(|(c, v)| v.draining(c.me));
    let local = node.drives.iter().map(|d| DriveView {
        id: d.id,
        node: node.cluster.as_ref().map_or(0, |c| c.me),
        zone: 0,
        free_bytes: d.placeable_bytes(),
        healthy: d.healthy.load(Ordering::Relaxed) && !me_draining,
    });
    let (Some(view), Some(cluster)) = (view, node.cluster.as_ref()) else {
        return local.collect();
    };
    let mut out: Vec<DriveView> = local.collect();
    let others = view.drive_views(|n| view.draining(n.id) || cluster.suspected(n.id));
    for d in others {
        match out.iter_mut().find(|x| x.id == d.id) {
            Some(mine) => mine.zone = d.zone,
            None => out.push(d),
        }
    }
    out
}

/// The bytes a new content of `len` object bytes puts in its shard files, stored as they are:
/// the bytes, then their outboard (`ostore_engine::tree`).
pub(crate) fn payload_for(len: u64) -> u64 {
    len + tree::Shape::new(len).outboard_bytes()
}

/// Chooses the drives of a new object's K+M shard files (sized for `size_bytes` object bytes)
/// and names the files `file_id`.
pub async fn place_shards(
    node: &Node,
    size_bytes: u64,
    file_id: u64,
) -> Result<(Vec<ShardLoc>, crate::drives::Reservation)> {
    let ec = node.ec;
    let per_shard = Geometry::new(ec, payload_for(size_bytes)).shard_file_bytes();
    let spread: u64 = rand::random();
    let rule = |node: &Node| {
        placement::WriteRule::new(
            ec,
            node.cluster.as_ref().map_or(0, |c| c.view().write_quorum),
        )
    };
    let mut placed = placement::place_object(&drive_views(node), rule(node), per_shard, spread);
    if placed.is_err() && node.cluster.is_some() {
        // The view may be a heartbeat old (a node just joined or returned): refresh and retry.
        node.refresh_view().await;
        placed = placement::place_object(&drive_views(node), rule(node), per_shard, spread);
    }
    // The write rule (`placement::place_object`): distinct nodes while there are enough, else
    // up to M shards on one node; too few nodes up is a passing condition (503), no room a
    // lasting one (507). An object written short of full spread is spread out by repair once
    // nodes return.
    let drives = placed.map_err(|e| match e {
        placement::PlacementError::TooFewNodes { .. } => StoreError::NotEnoughNodes(e.to_string()),
        _ => StoreError::InsufficientStorage(e.to_string()),
    })?;
    // What is placed counts as used on this node's drives until the write ends (a drive
    // holding two shards counts both).
    let mut reservation = crate::drives::Reservation::default();
    for d in &drives {
        if let Some(local) = node.local_drive(*d) {
            reservation.add(local, per_shard);
        }
    }
    let locs = ShardLoc::for_new_object(&drives, file_id, rand::random);
    Ok((locs, reservation))
}

/// Whether this node stores an object compressed, decided on its first
/// [`compress::PROBE_BYTES`]: reads from `body` into `already` (what was read before) until that
/// many are in hand or the body ends.
pub(crate) async fn probe_compressible(
    node: &Node,
    already: &mut Vec<Bytes>,
    body: &mut impl BodySource,
) -> Result<bool> {
    if !node.store.compress {
        return Ok(false);
    }
    let mut have: usize = already.iter().map(|b| b.len()).sum();
    while have < compress::PROBE_BYTES {
        match body.next_chunk().await {
            Some(c) => {
                let c = c.map_err(StoreError::Body)?;
                have += c.len();
                already.push(c);
            }
            None => break,
        }
    }
    let mut sample = Vec::with_capacity(compress::PROBE_BYTES);
    for b in already.iter() {
        let n = (compress::PROBE_BYTES - sample.len()).min(b.len());
        sample.extend_from_slice(&b[..n]);
    }
    Ok(compress::worth_compressing(&sample))
}

/// What a body's content is committed as.
#[derive(Debug, Clone)]
pub enum Commit {
    /// A new version of the key, if the condition holds.
    Version(WriteCondition),
    /// Part `number` of the multipart upload `upload` of the key.
    Part { upload: [u8; 16], number: u16 },
}

/// The control-plane request that commits a body's content.
#[derive(Clone)]
enum CommitRequest {
    Version(ask::CommitPut),
    Part(ask::CommitPart),
}

impl CommitRequest {
    #[allow(clippy::too_many_arguments)]
    fn new(
        commit: &Commit,
        bucket: &str,
        key: &str,
        intent: Option<u64>,
        content: NewContent,
        attrs: ObjectAttrs,
    ) -> CommitRequest {
        match commit {
            Commit::Version(cond) => CommitRequest::Version(ask::CommitPut {
                bucket: bucket.to_string(),
                key: key.to_string(),
                intent,
                content,
                cond: cond.clone(),
                attrs,
            }),
            Commit::Part { upload, number } => CommitRequest::Part(ask::CommitPart {
                id: *upload,
                bucket: bucket.to_string(),
                key: key.to_string(),
                number: *number,
                intent,
                content,
                attrs,
            }),
        }
    }

    async fn send(&self, node: &Node) -> std::result::Result<PutOutcome, MetaError> {
        match self {
            CommitRequest::Version(r) => node.meta.ask(r.clone()).await,
            CommitRequest::Part(r) => node.meta.ask(r.clone()).await,
        }
    }
}

/// Streams a body into a new version of `bucket/key` (or a part of one of its multipart
/// uploads).
#[allow(clippy::too_many_arguments)]
pub async fn put(
    node: &Arc<Node>,
    bucket: &str,
    key: &str,
    expected: Option<[u8; 32]>,
    length_hint: Option<u64>,
    commit: &Commit,
    mut attrs: ObjectAttrs,
    body: &mut impl BodySource,
) -> Result<Committed> {
    if length_hint.is_some_and(|l| l > OBJECT_BYTES_MAX) {
        return Err(StoreError::TooLarge);
    }
    let mut head = Vec::new();
    let mut overflow = None;
    while let Some(chunk) = body.next_chunk().await {
        let chunk = chunk.map_err(StoreError::Body)?;
        if head.len() + chunk.len() <= INLINE_BYTES_MAX {
            head.extend_from_slice(&chunk);
        } else {
            overflow = Some(chunk);
            break;
        }
    }
    let Some(overflow) = overflow else {
        let h: [u8; 32] = *blake3::hash(&head).as_bytes();
        if expected.is_some_and(|e| e != h) {
            return Err(StoreError::BadDigest);
        }
        body.complete(&mut attrs);
        let content = NewContent {
            encoding: Encoding::Identity,
            tree: Tree::None,
            blake3: h,
            size_bytes: head.len() as u64,
            stored: Stored::Inline(head),
        };
        let outcome = CommitRequest::new(commit, bucket, key, None, content.clone(), attrs)
            .send(node)
            .await?;
        return Ok(Committed {
            outcome,
            size_bytes: content.size_bytes,
            blake3: h,
        });
    };

    // Whether to compress is decided on the object's first bytes.
    let mut already = vec![Bytes::from(head), overflow];
    let compress = probe_compressible(node, &mut already, body).await?;
    let ec = node.ec;
    let size_guess = length_hint.unwrap_or(already.iter().map(|b| b.len() as u64).sum());
    let shape = WriteShape::new(ec, compress, length_hint);
    // A shard file that cannot be created on a node that does not answer (dead, hung, not yet
    // marked down) is placed again, off that node; nothing of the body was consumed yet.
    let mut tries = 0;
    let (upload_id, locs, _reservation, writer) = loop {
        let upload_id: u64 = rand::random();
        // Held until the PUT ends: its files are reserved in steps, placement counts the rest.
        let (locs, reservation) = place_shards(node, size_guess, upload_id).await?;
        node.begin_intent(upload_id, &locs).await?;
        match shape.create(node, &locs).await {
            Ok(mut w) => {
                // A node that stops answering mid-write costs the PUT that node's shard, not
                // the PUT: it is rebuilt elsewhere before the PUT answers. At least K+1 shards
                // are written in any case.
                w.tolerate_losses((ec.parity as usize).saturating_sub(1));
                break (upload_id, locs, reservation, w);
            }
            Err(e) => {
                discard(node, &locs, upload_id);
                tries += 1;
                // A node this one could not reach, or that is down by now.
                let unreachable = node
                    .cluster
                    .as_ref()
                    .is_some_and(|c| locs.iter().any(|l| c.away(l.drive)));
                if unreachable && tries < PLACE_TRIES {
                    tracing::info!("placing a PUT's shards again: {e}");
                    continue;
                }
                return Err(e);
            }
        }
    };

    let result = put_sharded(ec, &locs, writer, shape, already, compress, expected, body).await;
    let (size, h, encoding, lost) = match result {
        Ok(v) => v,
        Err(e) => {
            // No content yet, so no damaged copy to remove: only the files.
            let mut m = lifecycle::Commit::new();
            carry_out(
                node,
                &locs,
                upload_id,
                &[0; 32],
                m.on(Event::Written { ok: false }),
            )
            .await;
            return Err(e);
        }
    };
    for &j in &lost {
        crate::peer::unresponsive(node, locs[j].drive);
    }
    body.complete(&mut attrs);
    let content = NewContent {
        encoding,
        tree: Tree::Outboard,
        blake3: h,
        size_bytes: size,
        stored: Stored::Sharded {
            data: ec.data,
            parity: ec.parity,
            shards: locs.clone(),
        },
    };
    let request = CommitRequest::new(commit, bucket, key, Some(upload_id), content, attrs);
    let outcome = commit_write(node, &locs, upload_id, h, request).await?;
    if !outcome.deduplicated {
        if !lost.is_empty() {
            // The shards given up on are rebuilt elsewhere now, so the PUT answers with the
            // object at full redundancy; if that fails, the repair queue finishes it.
            let positions: Vec<usize> = lost.iter().map(|&j| locs[j].index as usize).collect();
            match rebuild_positions(node, h, &positions).await {
                Ok(n) => tracing::info!("rebuilt {n} shard(s) a PUT's target did not take"),
                Err(e) => {
                    tracing::warn!("rebuilding the shards a PUT's target did not take: {e}");
                    node.queue_repair(h).await;
                }
            }
        }
        // Placed around a node only suspected for a moment: moved apart once it answers.
        let (node, locs) = (node.clone(), locs.clone());
        glommio::spawn_local(async move { move_if_held_back(&node, h, &locs).await }).detach();
    }
    Ok(Committed {
        outcome,
        size_bytes: size,
        blake3: h,
    })
}

/// Whether a failed metadata call may still have committed: no answer came (a timeout, a lost
/// connection, the control plane unavailable), as opposed to an answer that refused it.
fn outcome_unknown(e: &MetaError) -> bool {
    matches!(e, MetaError::Unavailable(_) | MetaError::Kv(_))
}

/// Carries out the actions of a write's [`lifecycle::Commit`] that need no answer: removing or
/// keeping the files of intent `intent` (`locs`), and the damaged copy `blake3` replaced.
pub(crate) async fn carry_out(
    node: &Arc<Node>,
    locs: &[ShardLoc],
    intent: u64,
    blake3: &[u8; 32],
    actions: Vec<lifecycle::Action>,
) {
    for a in actions {
        match a {
            lifecycle::Action::Discard => discard(node, locs, intent),
            lifecycle::Action::EndIntent => node.end_intent_later(intent),
            lifecycle::Action::RemoveReplaced => remove_replaced(node, blake3).await,
            lifecycle::Action::Leave => tracing::warn!(
                "intent {intent:016x}: whether its commit landed is unknown; its files stay \
                 until the intent is swept"
            ),
            _ => {}
        }
    }
}

/// Commits a written object (its files listed in intent `intent`) and ends its files as
/// [`lifecycle::Commit`] decides: referenced, or deleted, and, when the commit's answer never
/// came, only once the intent was fenced and read back.
async fn commit_write(
    node: &Arc<Node>,
    locs: &[ShardLoc],
    intent: u64,
    blake3: [u8; 32],
    request: CommitRequest,
) -> Result<PutOutcome> {
    let mut m = lifecycle::Commit::new();
    let mut todo: std::collections::VecDeque<lifecycle::Action> =
        m.on(Event::Written { ok: true }).into();
    let mut failure: Option<MetaError> = None;
    let mut replaced_damaged = false;
    while let Some(action) = todo.pop_front() {
        let event = match action {
            lifecycle::Action::CommitVersion => match request.send(node).await {
                Ok(o) => {
                    replaced_damaged = o.replaced_damaged;
                    o.event()
                }
                Err(e) => {
                    let unknown = outcome_unknown(&e);
                    failure = Some(e);
                    if unknown {
                        Event::Unknown
                    } else {
                        Event::Refused
                    }
                }
            },
            lifecycle::Action::Fence => Event::Fenced {
                ok: node
                    .meta
                    .ask(ask::AbandonIntent { id: intent })
                    .await
                    .is_ok(),
            },
            lifecycle::Action::ReadIntent => Event::Read(
                node.meta
                    .ask(ask::Intent { id: intent })
                    .await
                    .ok()
                    .map(|rec| meta::intent_fate(rec.map(|r| r.state))),
            ),
            lifecycle::Action::Answer(Some((version, created_ms, deduplicated))) => {
                if failure.is_some() {
                    tracing::info!(
                        "intent {intent:016x}: the commit whose answer was lost had landed"
                    );
                }
                return Ok(PutOutcome {
                    version,
                    created_ms,
                    deduplicated,
                    replaced_damaged,
                    // Not known here; the number names the version either way.
                    null: false,
                });
            }
            lifecycle::Action::Answer(None) => {
                return Err(failure
                    .unwrap_or_else(|| MetaError::Unavailable("the commit failed".into()))
                    .into())
            }
            other => {
                carry_out(node, locs, intent, &blake3, vec![other]).await;
                continue;
            }
        };
        todo.extend(m.on(event));
    }
    Err(StoreError::Meta(MetaError::Unavailable(
        "the commit ended without an answer".into(),
    )))
}

/// Queues `blake3` (whose shards are `shards`) to move when a node holds two or more of its
/// shards while an up node that holds none was kept out only because this node suspects it
/// (it could not reach it a moment ago, say just before it came back): so that a suspicion of a
/// few seconds never leaves an object short of spread. Objects placed around nodes that are
/// down are found by the leader's scan when they return instead.
pub(crate) async fn move_if_held_back(node: &Node, blake3: [u8; 32], shards: &[ShardLoc]) {
    let Some(c) = node.cluster.as_ref().filter(|c| c.any_suspected()) else {
        return;
    };
    let holding: Vec<u32> = shards
        .iter()
        .filter_map(|l| c.node_of_drive(l.drive))
        .collect();
    let mut distinct = holding.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let view = c.view();
    let held_back = view
        .nodes
        .iter()
        .any(|n| n.up && !view.draining(n.id) && !distinct.contains(&n.id) && c.suspected(n.id));
    if distinct.len() < holding.len() && held_back {
        node.queue_move(blake3).await;
    }
}

/// After a repair or a move of `blake3`: [`move_if_held_back`] with its shards as they are now.
pub(crate) async fn move_again_if_held_back(node: &Node, blake3: [u8; 32]) {
    if !node.cluster.as_ref().is_some_and(|c| c.any_suspected()) {
        return;
    }
    if let Ok(Some(ContentRec {
        stored: Stored::Sharded { shards, .. },
        ..
    })) = node.meta.ask(ask::Content { blake3 }).await
    {
        move_if_held_back(node, blake3, &shards).await;
    }
}

/// Placements a PUT tries when shard files cannot be created on a node that does not answer.
const PLACE_TRIES: usize = 3;

/// How a PUT's shard files are written: stripes per batch, and the files' final size where it
/// is known in advance.
#[derive(Clone, Copy)]
struct WriteShape {
    ec: EcParams,
    batch: usize,
    file_bytes: Option<u64>,
}

impl WriteShape {
    fn new(ec: EcParams, compress: bool, length_hint: Option<u64>) -> WriteShape {
        // The stored size of an object that is compressed is known only at its end.
        let length_hint = length_hint.filter(|_| !compress).map(payload_for);
        // An object whose length is known and fits in two batches is written as one batch.
        let stripes_hint = length_hint.map(|l| Geometry::new(ec, l).stripe_count() as usize);
        let batch = match stripes_hint {
            Some(n) if n > 0 && n <= 2 * WRITE_BATCH_STRIPES => n,
            _ => WRITE_BATCH_STRIPES,
        };
        WriteShape {
            ec,
            batch,
            file_bytes: length_hint.map(|l| Geometry::new(ec, l).shard_file_bytes()),
        }
    }

    async fn create(&self, node: &Node, locs: &[ShardLoc]) -> Result<ShardWriter> {
        ShardWriter::create(
            node,
            locs,
            Striper::new(self.ec, self.batch).buffer_bytes(),
            self.file_bytes,
            OpenMode::Create,
        )
        .await
    }
}

#[allow(clippy::too_many_arguments)]
async fn put_sharded(
    ec: EcParams,
    locs: &[ShardLoc],
    writer: ShardWriter,
    shape: WriteShape,
    already: Vec<Bytes>,
    compress: bool,
    expected: Option<[u8; 32]>,
    body: &mut impl BodySource,
) -> Result<(u64, [u8; 32], Encoding, Vec<usize>)> {
    let mut out = StripeOut {
        striper: Striper::new(ec, shape.batch),
        codec: Codec::new(ec),
        tags: locs.iter().map(|l| l.file_tag).collect(),
        w: writer,
    };
    let mut frames = if compress {
        Some(compress::FrameWriter::new().map_err(|e| StoreError::Codec(e.to_string()))?)
    } else {
        None
    };
    let mut staged = Vec::new();
    // The object's BLAKE3 and its outboard, in one pass.
    let mut hasher = tree::ContentHasher::new();
    let r = async {
        // What was read before the object's form was decided comes first.
        let mut already = already.into_iter();
        let mut size = 0u64;
        loop {
            let chunk = match already.next() {
                Some(c) => c,
                None => match body.next_chunk().await {
                    Some(c) => c.map_err(StoreError::Body)?,
                    None => break,
                },
            };
            hasher.update(&chunk);
            size += chunk.len() as u64;
            if size > OBJECT_BYTES_MAX {
                return Err(StoreError::TooLarge);
            }
            match frames.as_mut() {
                None => out.feed(&chunk).await?,
                Some(f) => {
                    f.push(&chunk, &mut staged)
                        .map_err(|e| StoreError::Codec(e.to_string()))?;
                    out.feed(&staged).await?;
                    staged.clear();
                }
            }
        }
        let encoding = match frames.as_mut() {
            None => Encoding::Identity,
            Some(f) => {
                f.flush(&mut staged)
                    .map_err(|e| StoreError::Codec(e.to_string()))?;
                compress::write_seek_table(f.frames(), &mut staged);
                out.feed(&staged).await?;
                Encoding::Zstd {
                    stored_bytes: out.striper.total_bytes(),
                    frames: f.frames().len() as u32,
                }
            }
        };
        let (h, outboard) = std::mem::take(&mut hasher).finish();
        if expected.is_some_and(|e| e != h) {
            return Err(StoreError::BadDigest);
        }
        // The outboard follows the stored bytes.
        out.feed(&outboard).await?;
        out.finish(ec, locs, h).await?;
        Ok((size, h, encoding, out.w.lost()))
    }
    .await;
    out.w.close().await;
    r
}

/// The striper, the coder and the writer of one set of shard files: stored bytes in, sealed
/// blocks out to the drives.
pub(crate) struct StripeOut {
    pub(crate) striper: Striper,
    pub(crate) codec: Codec,
    pub(crate) tags: Vec<u32>,
    pub(crate) w: ShardWriter,
}

impl StripeOut {
    /// Takes stored bytes; writes every batch they fill.
    pub(crate) async fn feed(&mut self, data: &[u8]) -> Result<()> {
        let mut off = 0;
        while off < data.len() {
            off += self.striper.feed(&data[off..], &mut self.w.slices());
            if self.striper.batch_full() {
                let sealed =
                    self.striper
                        .seal(&mut self.w.slices(), &mut self.codec, &self.tags, false)?;
                self.w.write(sealed.first_block, sealed.bytes).await?;
            }
        }
        Ok(())
    }

    /// Seals the last stripe, writes the headers, and makes every file durable.
    pub(crate) async fn finish(
        &mut self,
        ec: EcParams,
        locs: &[ShardLoc],
        h: [u8; 32],
    ) -> Result<()> {
        let sealed = self
            .striper
            .seal(&mut self.w.slices(), &mut self.codec, &self.tags, true)?;
        self.w.write(sealed.first_block, sealed.bytes).await?;
        let stored = self.striper.total_bytes();
        let blocks = Geometry::new(ec, stored).stripe_count();
        let headers: Vec<ShardHeader> = locs
            .iter()
            .map(|l| ShardHeader {
                data_shards: ec.data,
                parity_shards: ec.parity,
                shard_index: l.index,
                file_tag: l.file_tag,
                object_size_bytes: stored,
                blake3: h,
                block_count: blocks,
            })
            .collect();
        self.w.finish(&headers).await
    }
}

/// A shard file of a [`ShardReader`], as far as the reader got with it.
#[derive(Clone)]
enum Slot {
    Unopened,
    Open(Rc<ShardFile>),
    /// Could not be opened, or read around from the start (its node is away).
    Failed,
    /// Answered so late that a read went around it: not read again by this reader, and not
    /// reported for repair (it is slow, not lost).
    Late,
}

type Slots = Rc<RefCell<Vec<Slot>>>;

/// Shard `i`'s file: the one `files` holds, or opened now (and kept there, or marked failed).
/// `None` if it cannot be read (failed to open, or given up on as late).
async fn slot_file(node: &Node, files: &Slots, loc: ShardLoc, i: usize) -> Option<Rc<ShardFile>> {
    let slot = files.borrow()[i].clone();
    match slot {
        Slot::Open(f) => Some(f),
        Slot::Failed | Slot::Late => None,
        Slot::Unopened => match ShardFile::open_loc(node, &loc, OpenMode::Read).await {
            Ok(f) => {
                let f = Rc::new(f);
                files.borrow_mut()[i] = Slot::Open(f.clone());
                Some(f)
            }
            Err(e) => {
                tracing::debug!("{}", ShardIoError::new(ShardOp::Open, &loc, None, e));
                files.borrow_mut()[i] = Slot::Failed;
                None
            }
        },
    }
}

thread_local! {
    /// How long this executor's recent shard reads (open and read) took: a client's read
    /// reaches for parity when a shard is later than [`DeadlineRule::HEDGE`] says.
    static SHARD_READS: RefCell<LatencyWindow> = RefCell::new(LatencyWindow::new());
}

/// When a client's shard read counts as late, from this executor's recent reads.
fn hedge_after() -> Duration {
    Duration::from_micros(SHARD_READS.with(|w| w.borrow().deadline_us(DeadlineRule::HEDGE)))
}

/// Reads verified blocks of an erasure-coded content, reconstructing from parity when a block
/// is missing or fails its checksum.
pub struct ShardReader {
    node: Arc<Node>,
    blake3: [u8; 32],
    geo: Geometry,
    locs: Vec<ShardLoc>,
    files: Slots,
    codec: Codec,
    /// Shards found bad (missing, unreadable or corrupt) so far.
    pub bad: Vec<bool>,
    reported: bool,
    /// The part of the object still to be read by [`ShardReader::next`].
    cursor: Range<u64>,
    /// The next piece's reads, already under way.
    prefetch: Option<InFlight>,
    /// A client's read: it goes around nodes this node just failed to reach (while parity
    /// allows), and around shards that answer late (hedged reads); repair and scrub read and
    /// wait for every shard.
    around_suspects: bool,
    /// This executor's stripe cache budget for a client's read (0: not cached, as for repair
    /// and scrub, which must read the drives), and the stored instance keying its entries.
    cache_bytes: u64,
    instance: u128,
    /// The stored bytes (the outboard follows them): what of a stripe the cache holds.
    stored: u64,
    /// Whole stripes read from the drives, held back from the cache until the reader's caller
    /// has verified them against the content's tree ([`ShardReader::verified_to`]); `None`
    /// offers them as they are read (a content without a tree).
    held_offers: Option<VecDeque<HeldOffer>>,
    /// Whether the last piece [`ShardReader::next`] returned came from the stripe cache (and
    /// so was verified when it was admitted).
    last_cached: bool,
    /// The caller checks every byte against the content's tree: a block read whole and in
    /// place is taken without its CRC (its trailer's index, tag and length still checked); the
    /// degraded path, which decides which blocks to rebuild from, checks CRCs as always.
    trust_tree: bool,
}

/// `open_block` or `open_block_unchecked`.
type OpenBlock = for<'b> fn(
    &'b [u8],
    usize,
    u32,
    u32,
) -> std::result::Result<&'b [u8], ostore_wire::shard::FormatError>;

/// A stripe waiting for verification before it is offered to the cache.
struct HeldOffer {
    stripe: u64,
    /// Whether a lookup of it was counted already.
    recorded: bool,
    bytes: Bytes,
}

/// One piece of a range read: stripes `s0..s0+n`, per stripe the bytes wanted (within the
/// stripe) and the data shards holding them, and the union of those shards.
struct PiecePlan {
    s0: u64,
    n: u64,
    spans: Vec<(u64, Range<usize>, Range<usize>)>,
    shards: Range<usize>,
}

/// Copies the wanted bytes of stripe `s` out of the chunks of data shards `shards`.
fn copy_piece(
    geo: &Geometry,
    s: u64,
    shards: Range<usize>,
    chunks: &[&[u8]],
    within: Range<usize>,
    out: &mut Vec<u8>,
) {
    let mut all: Vec<&[u8]> = vec![&[]; shards.end];
    for (chunk, i) in chunks.iter().zip(shards) {
        all[i] = chunk;
    }
    copy_out(geo, s, &all, within, out);
}

/// What became of one shard's read.
enum Fetched {
    Read(ReadBuf),
    Failed,
    /// Given up on as late: a read of another shard went around it.
    Late,
}

/// Reads launched ahead of need.
struct InFlight {
    s0: u64,
    n: u64,
    shards: Range<usize>,
    task: glommio::Task<Vec<(usize, Fetched)>>,
}

/// Blocks of several stripes read from each shard; `None` where unreadable.
struct Batch {
    s0: u64,
    n: u64,
    reads: Vec<Option<ReadBuf>>,
    /// Shards whose read was attempted (a `None` read then means unreadable).
    tried: Vec<bool>,
    /// Shards given up on as late (unread, but not bad).
    late: Vec<bool>,
}

/// What one launched read needs, cloned into its task.
#[derive(Clone)]
struct ShardSource {
    node: Arc<Node>,
    locs: Rc<[ShardLoc]>,
    files: Slots,
    at: u64,
    span: usize,
}

impl ShardSource {
    /// Opens shard `i` (unless it is open already) and reads the span.
    async fn read(&self, i: usize) -> (usize, Fetched) {
        let started = std::time::Instant::now();
        let Some(f) = slot_file(&self.node, &self.files, self.locs[i], i).await else {
            return (i, Fetched::Failed);
        };
        let span = self.span;
        match f.read_at(self.at, span).await {
            Ok(r) if r.len() == span => {
                let us = started.elapsed().as_micros().min(u64::MAX as u128) as u64;
                SHARD_READS.with(|w| w.borrow_mut().observe(us));
                (i, Fetched::Read(r))
            }
            Ok(r) => {
                let short = std::io::Error::other(format!("{} of {span} bytes", r.len()));
                let e = ShardIoError::new(ShardOp::Read, &self.locs[i], Some(self.at), short);
                tracing::warn!("{e}");
                (i, Fetched::Failed)
            }
            Err(e) => {
                let e = ShardIoError::new(ShardOp::Read, &self.locs[i], Some(self.at), e);
                tracing::warn!("{e}");
                (i, Fetched::Failed)
            }
        }
    }

    /// Reads `wanted`; with `hedge`, a read later than `hedge` (or one that fails) sets reads
    /// of `spares` going, and the fetch ends as soon as every wanted shard or any `k` shards
    /// are in. Late reads are then abandoned (their streams dropped) and reported as late.
    /// `short` says a wanted shard is known to be missing already: then any `k` shards are
    /// needed from the start.
    async fn fetch(
        self,
        wanted: Vec<usize>,
        short: bool,
        spares: Vec<usize>,
        k: usize,
        hedge: Option<Duration>,
    ) -> Vec<(usize, Fetched)> {
        use futures_util::stream::{FuturesUnordered, StreamExt};
        let mut pending = FuturesUnordered::new();
        let mut started: Vec<usize> = Vec::new();
        for &i in &wanted {
            pending.push(self.read(i));
            started.push(i);
        }
        let mut spares = spares.into_iter();
        let mut out: Vec<(usize, Fetched)> = Vec::new();
        let (mut good, mut good_wanted) = (0usize, 0usize);
        // Whether every wanted shard can still be served as it is read.
        let mut can_serve = !short;
        // Once a wanted shard is missing, failed or late, any k good shards do.
        let mut degraded = short && hedge.is_some();
        let hedge_at = hedge.map(|d| std::time::Instant::now() + d);
        // Reads outstanding when the hedge's time was up.
        let mut late: Vec<usize> = Vec::new();
        loop {
            if (can_serve && good_wanted == wanted.len()) || (degraded && good >= k) {
                break;
            }
            if degraded {
                // Reads already late are not counted on.
                while good + pending.len().saturating_sub(late.len()) < k {
                    match spares.next() {
                        Some(i) => {
                            pending.push(self.read(i));
                            started.push(i);
                        }
                        None => break,
                    }
                }
            }
            if pending.is_empty() {
                break;
            }
            let late_now = hedge_at.filter(|_| !degraded);
            let next = match late_now {
                None => pending.next().await,
                Some(at) => {
                    futures_lite::future::or(pending.next(), async {
                        glommio::timer::sleep(
                            at.saturating_duration_since(std::time::Instant::now()),
                        )
                        .await;
                        None
                    })
                    .await
                }
            };
            match next {
                Some((i, f)) => {
                    late.retain(|j| *j != i);
                    match &f {
                        Fetched::Read(_) => {
                            good += 1;
                            if wanted.contains(&i) {
                                good_wanted += 1;
                            }
                        }
                        _ => {
                            if wanted.contains(&i) {
                                can_serve = false;
                            }
                            degraded = hedge.is_some();
                        }
                    }
                    out.push((i, f));
                }
                // The hedge's time is up with reads outstanding.
                None => {
                    degraded = true;
                    late = started
                        .iter()
                        .copied()
                        .filter(|i| !out.iter().any(|(j, _)| j == i))
                        .collect();
                }
            }
        }
        // Whatever is still outstanding was gone around.
        for i in started {
            if !out.iter().any(|(j, _)| *j == i) {
                out.push((i, Fetched::Late));
            }
        }
        out
    }
}

impl ShardReader {
    pub fn new(node: Arc<Node>, blake3: [u8; 32], content: &ContentRec) -> Option<Self> {
        let Stored::Sharded {
            data,
            parity,
            shards,
        } = &content.stored
        else {
            return None;
        };
        let ec = EcParams {
            data: *data,
            parity: *parity,
        };
        let mut locs = shards.clone();
        locs.sort_by_key(|l| l.index);
        let instance = crate::stripecache::instance(&blake3, content, &locs);
        Some(ShardReader {
            node,
            blake3,
            geo: Geometry::new(ec, content.payload_bytes()),
            files: Rc::new(RefCell::new(vec![Slot::Unopened; locs.len()])),
            locs,
            codec: Codec::new(ec),
            bad: vec![false; ec.total()],
            reported: false,
            cursor: 0..content.stored_bytes(),
            prefetch: None,
            around_suspects: false,
            cache_bytes: 0,
            instance,
            held_offers: None,
            last_cached: false,
            stored: content.stored_bytes(),
            trust_tree: false,
        })
    }

    /// Reads around shard `i` from now on, as if it had failed (it is reported as bad).
    pub fn exclude(&mut self, i: usize) {
        // A read-ahead may hold its bytes.
        self.prefetch = None;
        if i < self.bad.len() {
            self.bad[i] = true;
            self.files.borrow_mut()[i] = Slot::Failed;
        }
    }

    /// The caller verifies every byte it is given against the content's tree (and reads a
    /// group that fails again, checking CRCs): blocks read in place skip their CRC.
    pub fn trust_tree(&mut self) {
        self.trust_tree = true;
    }

    /// Reports nothing: the caller decides what the bad shards it finds mean (a repair's own
    /// check, a verified read's re-read of one group).
    pub fn silence(&mut self) {
        self.reported = true;
    }

    /// Holds whole stripes read from the drives back from the cache until
    /// [`ShardReader::verified_to`] passes them.
    pub fn hold_offers(&mut self) {
        self.held_offers = Some(VecDeque::new());
    }

    /// The caller verified the stored bytes before `offset`: the stripes held back that end
    /// there or before are offered to the cache.
    pub fn verified_to(&mut self, offset: u64) {
        let geo = self.geo;
        let Some(held) = self.held_offers.as_mut() else {
            return;
        };
        let done = held
            .iter()
            .take_while(|h| geo.stripe_offset(h.stripe) + h.bytes.len() as u64 <= offset)
            .count();
        let done: Vec<HeldOffer> = held.drain(..done).collect();
        if self.cache_bytes > 0 {
            for h in done {
                let key = self.stripe_key(h.stripe);
                crate::stripecache::offer(self.cache_bytes, key, &h.bytes, h.recorded);
            }
        }
    }

    /// Drops the stripes held back for the cache: they came through a shard found bad.
    pub fn forget_held(&mut self) {
        if let Some(q) = self.held_offers.as_mut() {
            q.clear();
        }
    }

    /// Whether the last piece returned came from the cache.
    pub fn last_cached(&self) -> bool {
        self.last_cached
    }

    /// Reads stored bytes `range` aside: the reader's place in its own range, its read-ahead
    /// and the cache are left as they were.
    pub async fn read_aside(&mut self, range: Range<u64>) -> Result<Vec<u8>> {
        let cursor = std::mem::replace(&mut self.cursor, range.clone());
        let prefetch = self.prefetch.take();
        let cache = std::mem::take(&mut self.cache_bytes);
        let held = self.held_offers.take();
        let mut out = Vec::with_capacity((range.end - range.start) as usize);
        let mut r = Ok(());
        while !self.cursor.is_empty() {
            match self.next().await {
                Some(Ok(b)) => out.extend_from_slice(&b),
                Some(Err(e)) => {
                    r = Err(e);
                    break;
                }
                None => break,
            }
        }
        self.cursor = cursor;
        self.prefetch = prefetch;
        self.cache_bytes = cache;
        self.held_offers = held;
        r.map(|()| out)
    }

    /// Makes this a client's read: shards on nodes this node just failed to reach are read
    /// around (from parity) while parity allows, instead of waited on, and so are shards that
    /// answer late.
    /// Whole stripes it reads go through this executor's stripe cache.
    pub fn for_client(mut self) -> Self {
        self.around_suspects = true;
        self.cache_bytes = self.node.store.stripe_cache_bytes;
        self
    }

    fn stripe_key(&self, stripe: u64) -> crate::stripecache::StripeKey {
        crate::stripecache::StripeKey {
            instance: self.instance,
            stripe,
        }
    }

    /// The rest of the range's first stripe, if the stripe is cached: served from memory.
    fn cached_rest(&mut self, range: &Range<u64>) -> Option<Bytes> {
        if self.cache_bytes == 0 {
            return None;
        }
        let geo = self.geo;
        let s = geo.stripe_of(range.start);
        let bytes = crate::stripecache::get(self.cache_bytes, &self.stripe_key(s))?;
        let so = geo.stripe_offset(s);
        if bytes.len() != self.cached_len(s) {
            return None;
        }
        let a = (range.start - so) as usize;
        let b = (range.end.min(so + bytes.len() as u64) - so) as usize;
        self.cursor.start += (b - a) as u64;
        Some(bytes.slice(a..b))
    }

    /// The bytes of stripe `s` the cache holds: its stored bytes, not the outboard's.
    fn cached_len(&self, s: u64) -> usize {
        let so = self.geo.stripe_offset(s);
        (self.geo.stripe_bytes(s) as u64).min(self.stored.saturating_sub(so)) as usize
    }

    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// Whether a client's read goes around shard `i` from the start: its node is away (down,
    /// or just failed to answer) and parity still covers it. Marks it failed if so.
    fn skip_away(&mut self, i: usize) -> bool {
        if !matches!(self.files.borrow()[i], Slot::Unopened) {
            return false;
        }
        let skip = self.around_suspects
            && self.on_node_away(self.locs[i].drive)
            && self.bad.iter().filter(|b| **b).count() < self.geo.ec.parity as usize;
        if skip {
            self.bad[i] = true;
            self.files.borrow_mut()[i] = Slot::Failed;
        }
        skip
    }

    pub(crate) async fn file(&mut self, i: usize) -> Option<Rc<ShardFile>> {
        if self.skip_away(i) {
            return None;
        }
        let f = slot_file(&self.node, &self.files, self.locs[i], i).await;
        if matches!(self.files.borrow()[i], Slot::Failed) {
            self.bad[i] = true;
        }
        f
    }

    /// Whether shard `i` is to be read at all: not read around from the start (its node away),
    /// not failed, not given up on as late.
    fn readable(&mut self, i: usize) -> bool {
        !self.skip_away(i) && matches!(self.files.borrow()[i], Slot::Unopened | Slot::Open(_))
    }

    fn span(&self, s0: u64, n: u64) -> usize {
        ((n - 1) as usize) * BLOCK_BYTES + self.geo.block_len(s0 + n - 1)
    }

    async fn read_shard(&mut self, i: usize, s0: u64, n: u64) -> Option<ReadBuf> {
        self.read_batch(s0, n, i..i + 1, false).await.reads[i].take()
    }

    fn verify<'r>(&self, r: &'r ReadBuf, i: usize, s0: u64, s: u64) -> Option<&'r [u8]> {
        self.open_with(open_block, r, i, s0, s)
    }

    /// The payload of block `s` of shard `i` in a read of blocks from `s0`, if `open` takes it.
    fn open_with<'r>(
        &self,
        open: OpenBlock,
        r: &'r ReadBuf,
        i: usize,
        s0: u64,
        s: u64,
    ) -> Option<&'r [u8]> {
        let at = ((s - s0) as usize) * BLOCK_BYTES;
        let blk = &r[at..at + self.geo.block_len(s)];
        open(
            blk,
            self.geo.chunk_bytes(s),
            s as u32,
            self.locs[i].file_tag,
        )
        .ok()
    }

    /// Starts reading blocks `s0..s0+n` of `shards` (opening their files as needed) in a task
    /// of its own, so the reads proceed while the caller does other work. With `hedge` (a
    /// client's read), a shard that is late or fails is read around: reads of the other shards
    /// start, and any K good ones do.
    async fn launch(&mut self, s0: u64, n: u64, shards: Range<usize>, hedge: bool) -> InFlight {
        let span = self.span(s0, n);
        let mut wanted = Vec::new();
        let mut short = false;
        for i in shards.clone() {
            if self.readable(i) {
                wanted.push(i);
            } else {
                short = true;
            }
        }
        // Spares: the other shards this reader has not given up on, data shards first.
        let spares: Vec<usize> = (0..self.locs.len())
            .filter(|i| hedge && !shards.contains(i))
            .filter(|&i| self.readable(i))
            .collect();
        let src = ShardSource {
            node: self.node.clone(),
            locs: self.locs.clone().into(),
            files: self.files.clone(),
            at: block_offset(s0),
            span,
        };
        let k = self.geo.ec.k();
        let hedge = hedge.then(hedge_after);
        let reads = src.fetch(wanted, short, spares, k, hedge);
        // A read-ahead that panicked reads nothing: the request reads around it or fails.
        let task = ostore_server::guard::spawn_subtask("a shard read-ahead", reads, Vec::new);
        InFlight {
            s0,
            n,
            shards,
            task,
        }
    }

    /// Waits for launched reads and records which shards failed.
    async fn land(&mut self, f: InFlight) -> Batch {
        let total = self.locs.len();
        let mut reads: Vec<Option<ReadBuf>> = (0..total).map(|_| None).collect();
        let mut tried = vec![false; total];
        let mut late = vec![false; total];
        // A wanted shard the fetch skipped was failed or given up on as late before it began.
        for i in f.shards {
            tried[i] = true;
            late[i] = matches!(self.files.borrow()[i], Slot::Late);
        }
        for (i, r) in f.task.await {
            tried[i] = true;
            match r {
                Fetched::Read(r) => reads[i] = Some(r),
                Fetched::Failed => self.bad[i] = true,
                Fetched::Late => {
                    late[i] = true;
                    let mut files = self.files.borrow_mut();
                    if matches!(files[i], Slot::Open(_) | Slot::Unopened) {
                        files[i] = Slot::Late;
                    }
                }
            }
        }
        Batch {
            s0: f.s0,
            n: f.n,
            reads,
            tried,
            late,
        }
    }

    async fn read_batch(&mut self, s0: u64, n: u64, shards: Range<usize>, hedge: bool) -> Batch {
        let f = self.launch(s0, n, shards, hedge).await;
        self.land(f).await
    }

    /// The stripes of the next piece of `range`.
    fn plan(&self, range: &Range<u64>) -> PiecePlan {
        let geo = self.geo;
        let s0 = geo.stripe_of(range.start);
        let last = geo.stripe_of(range.end - 1);
        let n = (last - s0 + 1).min(READ_BATCH_STRIPES);
        let mut lo = usize::MAX;
        let mut hi = 0;
        let mut spans = Vec::new();
        for s in s0..s0 + n {
            let so = geo.stripe_offset(s);
            let a = (range.start.max(so) - so) as usize;
            let b = (range.end.min(so + geo.stripe_bytes(s) as u64) - so) as usize;
            let d = data_shards_for(&geo, s, a..b);
            lo = lo.min(d.start);
            hi = hi.max(d.end);
            spans.push((s, a..b, d));
        }
        PiecePlan {
            s0,
            n,
            spans,
            shards: lo..hi,
        }
    }

    /// The verified payloads of stripe `s` for shards `want`, borrowed from the batch, if every
    /// one of them was read and verifies; `None` sends the caller down the degraded path.
    fn healthy_payloads<'b>(
        &self,
        batch: &'b Batch,
        s: u64,
        want: Range<usize>,
    ) -> Option<Vec<&'b [u8]>> {
        // A client read that checks the tree takes blocks without their CRC.
        let open: OpenBlock = if self.trust_tree {
            ostore_wire::shard::open_block_unchecked
        } else {
            open_block
        };
        want.map(|i| {
            batch.reads[i]
                .as_ref()
                .and_then(|r| self.open_with(open, r, i, batch.s0, s))
        })
        .collect()
    }

    /// Returns the chunks of stripe `s` for shards `want` (data shards for a read, all for a
    /// repair), reconstructing as needed. Marks shards that failed.
    async fn stripe_chunks(
        &mut self,
        batch: &mut Batch,
        s: u64,
        want: Range<usize>,
    ) -> Result<Vec<Vec<u8>>> {
        let total = self.locs.len();
        loop {
            let states: Vec<BlockState> = (0..total)
                .map(|i| match &batch.reads[i] {
                    Some(r) if self.verify(r, i, batch.s0, s).is_some() => BlockState::Good,
                    Some(_) => BlockState::Bad,
                    None if batch.tried[i] => BlockState::Bad,
                    None => BlockState::Unread,
                })
                .collect();
            for (i, st) in states.iter().enumerate() {
                if *st == BlockState::Bad && !batch.late[i] {
                    self.bad[i] = true;
                }
            }
            let payload = |i: usize| -> Vec<u8> {
                let r = batch.reads[i].as_ref().expect("good shard was read");
                self.verify(r, i, batch.s0, s)
                    .expect("good shard verifies")
                    .to_vec()
            };
            match next_action(self.geo.ec, want.clone(), &states) {
                StripeAction::Serve => return Ok(want.map(payload).collect()),
                StripeAction::Read(list) => {
                    for i in list {
                        batch.reads[i] = self.read_shard(i, batch.s0, batch.n).await;
                        batch.tried[i] = true;
                    }
                }
                StripeAction::Reconstruct => {
                    let c = self.geo.chunk_bytes(s);
                    let present: Vec<bool> =
                        states.iter().map(|st| *st == BlockState::Good).collect();
                    let mut chunks: Vec<Vec<u8>> = (0..total)
                        .map(|i| if present[i] { payload(i) } else { vec![0; c] })
                        .collect();
                    let mut refs: Vec<&mut [u8]> =
                        chunks.iter_mut().map(|v| v.as_mut_slice()).collect();
                    self.codec.reconstruct(&mut refs, &present)?;
                    return Ok(chunks.drain(want).collect());
                }
                StripeAction::Insufficient { have, need } => {
                    return Err(StoreError::InsufficientShards { have, need })
                }
            }
        }
    }

    /// Restricts the bytes [`ShardReader::next`] returns to `range`.
    pub fn set_range(&mut self, range: Range<u64>) {
        self.cursor = range;
    }

    /// The next piece (up to [`READ_BATCH_STRIPES`] stripes) of the range; `None` at its end.
    pub async fn next(&mut self) -> Option<Result<Bytes>> {
        let range = self.cursor.clone();
        if range.is_empty() {
            self.prefetch = None;
            self.report().await;
            self.close().await;
            return None;
        }
        if let Some(hit) = self.cached_rest(&range) {
            self.last_cached = true;
            return Some(Ok(hit));
        }
        self.last_cached = false;
        let geo = self.geo;
        let PiecePlan {
            s0,
            n,
            spans,
            shards,
        } = self.plan(&range);
        let mut batch = match self.prefetch.take() {
            Some(p) if p.s0 == s0 && p.n == n && p.shards == shards => self.land(p).await,
            _ => self.read_batch(s0, n, shards, self.around_suspects).await,
        };
        // Read ahead: the next piece's blocks load while this one is sent.
        let next_start = range.start.max(geo.stripe_offset(s0 + n));
        if next_start < range.end {
            let next = next_start..range.end;
            let p = self.plan(&next);
            // A piece that starts with a cached stripe is served from memory, not read ahead.
            let cached = self.cache_bytes > 0
                && crate::stripecache::contains(self.cache_bytes, &self.stripe_key(p.s0));
            if !cached {
                self.prefetch = Some(self.launch(p.s0, p.n, p.shards, self.around_suspects).await);
            }
        }
        let mut out =
            Vec::with_capacity((range.end - range.start).min(n * geo.stripe_data_bytes()) as usize);
        let mut held = Vec::new();
        for (s, within, d) in spans {
            let at = out.len();
            let whole = within.start == 0 && within.end == self.cached_len(s) && within.end > 0;
            if let Some(payloads) = self.healthy_payloads(&batch, s, d.clone()) {
                copy_piece(&geo, s, d, &payloads, within, &mut out);
                if whole {
                    self.offer_to_cache(s, s0, &out, at, &mut held);
                }
                continue;
            }
            let chunks = match self.stripe_chunks(&mut batch, s, d.clone()).await {
                Ok(c) => c,
                Err(e) => {
                    self.prefetch = None;
                    self.report().await;
                    self.cursor = range.end..range.end;
                    return Some(Err(e));
                }
            };
            let chunks: Vec<&[u8]> = chunks.iter().map(|c| c.as_slice()).collect();
            copy_piece(&geo, s, d, &chunks, within, &mut out);
            if whole {
                self.offer_to_cache(s, s0, &out, at, &mut held);
            }
        }
        self.cursor.start += out.len() as u64;
        if self.bad.iter().any(|b| *b) {
            self.report().await;
        }
        let out = Bytes::from(out);
        if let Some(q) = self.held_offers.as_mut() {
            for (stripe, recorded, r) in held {
                q.push_back(HeldOffer {
                    stripe,
                    recorded,
                    bytes: out.slice(r),
                });
            }
        }
        Some(Ok(out))
    }

    /// Offers a whole stripe a client's read checked (every block's CRC) to the stripe cache,
    /// or holds it back (its place in the piece, in `held`) until its caller verified it. The
    /// piece's first stripe was looked up (and so counted) already; the others are counted
    /// now.
    fn offer_to_cache(
        &self,
        s: u64,
        looked_up: u64,
        out: &[u8],
        at: usize,
        held: &mut Vec<(u64, bool, Range<usize>)>,
    ) {
        if self.cache_bytes == 0 {
            return;
        }
        if self.held_offers.is_some() {
            held.push((s, s == looked_up, at..out.len()));
            return;
        }
        let key = self.stripe_key(s);
        crate::stripecache::offer(self.cache_bytes, key, &out[at..], s == looked_up);
    }

    /// Closes the shard files this reader opened.
    pub async fn close(&mut self) {
        // Reads still under way (a read-ahead) hold their files until they end.
        self.prefetch = None;
        let slots = std::mem::take(&mut *self.files.borrow_mut());
        for slot in slots {
            if let Slot::Open(f) = slot {
                if let Ok(f) = Rc::try_unwrap(f) {
                    f.close().await;
                }
            }
        }
    }

    /// Whether `drive` is another node's, and that node is down or unreachable.
    fn on_node_away(&self, drive: u16) -> bool {
        self.node.local_drive(drive).is_none()
            && self.node.cluster.as_ref().is_some_and(|c| c.away(drive))
    }

    /// Whether any shard was found bad; if so, queues the content for repair, unless every
    /// bad shard is on a node that is down or unreachable: that node may come back within
    /// the grace period (`--down-grace`), and the control plane queues its shards for rebuild
    /// when the grace is over. Reads go around it meanwhile.
    pub async fn report(&mut self) {
        if self.reported || !self.bad.iter().any(|b| *b) {
            return;
        }
        self.reported = true;
        let repair_now = (0..self.bad.len())
            .filter(|&i| self.bad[i])
            .any(|i| !self.on_node_away(self.locs[i].drive));
        if repair_now {
            self.node.queue_repair(self.blake3).await;
        }
    }
}

/// The bytes of a zstd-stored object: reads the frames a range needs and decompresses them.
pub struct Decoded {
    reader: ShardReader,
    index: compress::FrameIndex,
    dctx: zstd::bulk::Decompressor<'static>,
    /// The next frame to decompress; its stored bytes start `buf`.
    frame: usize,
    buf: Vec<u8>,
    /// Object bytes to drop from the first frame, and still to return.
    skip: usize,
    remaining: u64,
    /// For a client sent the stored frames as they are (`Content-Encoding: zstd`): each frame
    /// decompressed, with the object offset where its bytes end, until its caller sends it.
    raw: Option<VecDeque<(u64, Bytes)>>,
    /// The seek table's bytes, as read.
    table: Bytes,
}

fn codec_error(e: compress::CompressError) -> StoreError {
    StoreError::Codec(e.to_string())
}

impl Decoded {
    /// Reads the seek table of a zstd-stored content and plans object bytes `range` (non-empty).
    pub async fn open(
        node: Arc<Node>,
        blake3: [u8; 32],
        content: &ContentRec,
        range: Range<u64>,
    ) -> Result<Decoded> {
        let reader = ShardReader::new(node, blake3, content)
            .ok_or_else(|| StoreError::Codec("zstd content must be sharded".into()))?
            .for_client();
        Decoded::with_reader(reader, content, range).await
    }

    /// As [`Decoded::open`], reading through `reader` (a reader of the content's shards).
    pub async fn with_reader(
        mut reader: ShardReader,
        content: &ContentRec,
        range: Range<u64>,
    ) -> Result<Decoded> {
        let Encoding::Zstd { frames, .. } = content.encoding else {
            return Err(StoreError::Codec(
                "the content is not stored as zstd".into(),
            ));
        };
        let stored = content.stored_bytes();
        let table_len = compress::seek_table_bytes(frames);
        if table_len > stored {
            return Err(StoreError::Codec(
                "seek table longer than the content".into(),
            ));
        }
        reader.set_range(stored - table_len..stored);
        let mut table = Vec::with_capacity(table_len as usize);
        while (table.len() as u64) < table_len {
            match reader.next().await {
                Some(Ok(b)) => table.extend_from_slice(&b),
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        let index =
            compress::FrameIndex::parse(&table, content.size_bytes, stored).map_err(codec_error)?;
        let plan = index.plan(range.clone());
        reader.set_range(plan.stored.clone());
        Ok(Decoded {
            reader,
            index,
            dctx: zstd::bulk::Decompressor::new().map_err(|e| StoreError::Codec(e.to_string()))?,
            frame: plan.frames.start,
            buf: Vec::new(),
            skip: (range.start - plan.object_start) as usize,
            remaining: range.end - range.start,
            raw: None,
            table: Bytes::from(table),
        })
    }

    /// Keeps each frame's stored bytes for [`Decoded::take_raw`] as well.
    pub fn keep_raw(&mut self) {
        self.raw = Some(VecDeque::new());
    }

    /// The stored frames whose object bytes all lie before `object_offset`, in order.
    pub fn take_raw(&mut self, object_offset: u64) -> Vec<Bytes> {
        let mut out = Vec::new();
        if let Some(q) = self.raw.as_mut() {
            while q.front().is_some_and(|(end, _)| *end <= object_offset) {
                out.push(q.pop_front().expect("front").1);
            }
        }
        out
    }

    /// The seek table's bytes (they end the stored form).
    pub fn table(&self) -> Bytes {
        self.table.clone()
    }

    pub fn reader_mut(&mut self) -> &mut ShardReader {
        &mut self.reader
    }

    /// The caller verified the object bytes before `object_offset`: the stored bytes of the
    /// frames wholly before it may go to the stripe cache.
    pub fn verified_to(&mut self, object_offset: u64) {
        let stored = self.index.stored_before(object_offset);
        self.reader.verified_to(stored);
    }

    /// Whether any shard was found bad so far.
    pub fn degraded(&self) -> bool {
        self.reader.bad.iter().any(|b| *b)
    }

    /// The next piece of the range's object bytes; `None` at its end.
    pub async fn next(&mut self) -> Option<Result<Bytes>> {
        loop {
            if self.remaining == 0 {
                // Lets the reader close its files and report bad shards.
                let _ = self.reader.next().await;
                return None;
            }
            let mut out = Vec::new();
            let mut used = 0;
            while self.frame < self.index.frame_count()
                && self.buf.len() - used >= self.index.stored_len(self.frame)
            {
                let len = self.index.stored_len(self.frame);
                let frame = &self.buf[used..used + len];
                if let Some(q) = self.raw.as_mut() {
                    q.push_back((
                        self.index.object_end(self.frame),
                        Bytes::copy_from_slice(frame),
                    ));
                }
                if let Err(e) = compress::decompress_frame(
                    &mut self.dctx,
                    &self.index,
                    self.frame,
                    frame,
                    &mut out,
                ) {
                    self.remaining = 0;
                    return Some(Err(codec_error(e)));
                }
                used += len;
                self.frame += 1;
            }
            self.buf.drain(..used);
            if !out.is_empty() {
                let skip = std::mem::take(&mut self.skip).min(out.len());
                let take = ((out.len() - skip) as u64).min(self.remaining) as usize;
                self.remaining -= take as u64;
                out.truncate(skip + take);
                out.drain(..skip);
                return Some(Ok(Bytes::from(out)));
            }
            match self.reader.next().await {
                Some(Ok(b)) => self.buf.extend_from_slice(&b),
                Some(Err(e)) => {
                    self.remaining = 0;
                    return Some(Err(e));
                }
                None => {
                    self.remaining = 0;
                    return Some(Err(StoreError::Codec(
                        "the stored frames ended early".into(),
                    )));
                }
            }
        }
    }
}

/// What one garbage-collection pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Versions removed because their key kept more than its retention.
    pub versions_trimmed: u64,
    /// Contents found unreferenced past the grace period.
    pub candidates: u64,
    /// Contents removed (metadata and files).
    pub collected: u64,
    /// Bytes of shard files deleted.
    pub bytes_freed: u64,
}

/// Removes every content that no version has referred to for the grace period: its metadata in
/// one transaction (which loses to any concurrent reference), then its files. With `share`, only
/// the contents this node's hash share covers (the periodic pass on every node of a cluster).
pub async fn gc_pass(node: &Arc<Node>, share: bool) -> Result<GcReport> {
    let grace_ms = node.store.gc_grace.as_millis() as u64;
    let mine = crate::ctx::repair_share(node);
    let mut report = GcReport::default();
    // Retention first, so that what it drops is reclaimed in the same pass (once its grace is
    // over). In a cluster one node's periodic pass does it: the node whose share holds hash 0.
    if !share || mine.contains(&[0; 32]) {
        let buckets: Vec<String> = node.meta.ask(ask::Buckets {}).await?;
        for bucket in buckets {
            let mut after = None;
            loop {
                let (n, next): (u64, Option<String>) = node
                    .meta
                    .ask(ask::TrimVersions {
                        bucket: bucket.clone(),
                        after,
                    })
                    .await?;
                report.versions_trimmed += n;
                match next {
                    Some(k) => after = Some(k),
                    None => break,
                }
            }
        }
    }
    let mut after = None;
    loop {
        let (picked, next): ostore_control::meta::GcPage =
            node.meta.ask(ask::GcCandidates { after, grace_ms }).await?;
        for h in picked {
            if share && !mine.contains(&h) {
                continue;
            }
            report.candidates += 1;
            let intent: u64 = rand::random();
            let Some(c) = node
                .meta
                .ask(ask::GcCollect {
                    blake3: h,
                    intent,
                    grace_ms,
                })
                .await?
            else {
                continue;
            };
            report.collected += 1;
            node.metrics.gc_collected.fetch_add(1, Ordering::Relaxed);
            if let Stored::Sharded {
                data,
                parity,
                shards,
            } = &c.stored
            {
                let ec = EcParams {
                    data: *data,
                    parity: *parity,
                };
                let bytes =
                    Geometry::new(ec, c.payload_bytes()).shard_file_bytes() * shards.len() as u64;
                // Files that cannot be deleted now stay listed in the intent: the sweeper retries.
                if remove_files(node, shards).await {
                    let _ = node.meta.ask(ask::EndIntent { id: intent }).await;
                    report.bytes_freed += bytes;
                    node.metrics
                        .gc_bytes_freed
                        .fetch_add(bytes, Ordering::Relaxed);
                }
            }
        }
        match next {
            Some(n) => after = Some(n),
            None => return Ok(report),
        }
    }
}

/// Verifies every block of every shard of a content and rewrites the shards that are missing or
/// corrupt, onto the same drive when it is healthy (else another). Returns how many shards were
/// rewritten.
pub async fn repair(node: &Arc<Node>, blake3: [u8; 32]) -> Result<usize> {
    Ok(check_and_repair(node, blake3).await?.rebuilt)
}

/// Whether a shard file's header is intact (its own checksum) and says what the metadata says:
/// the content, the shard's index and tag, the object's stored size and block count, the
/// erasure coding.
pub(crate) async fn header_ok(
    f: &ShardFile,
    blake3: &[u8; 32],
    loc: &ShardLoc,
    geo: Geometry,
) -> bool {
    match f.read_at(0, HEADER_BYTES).await {
        Ok(b) if b.len() == HEADER_BYTES => ShardHeader::decode(&b).is_ok_and(|h| {
            h.blake3 == *blake3
                && h.shard_index == loc.index
                && h.file_tag == loc.file_tag
                && h.object_size_bytes == geo.size_bytes
                && h.block_count == geo.stripe_count()
                && (h.data_shards, h.parity_shards) == (geo.ec.data, geo.ec.parity)
        }),
        _ => false,
    }
}

/// What checking one content's shards found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checked {
    /// Shards read and verified.
    pub shards: u64,
    /// Shards found missing, unreadable or corrupt (a block's CRC32C, or the header).
    pub bad: u64,
    /// Shards rebuilt (bad ones, and in a cluster ones sharing a node).
    pub rebuilt: usize,
}

/// Reads every block of every shard of a content, checks each block's CRC32C and each shard's
/// header (its own checksum, the content's BLAKE3, index, tag, sizes), and rebuilds from the
/// good shards whatever failed. The scrub and the repair worker both run it.
pub async fn check_and_repair(node: &Arc<Node>, blake3: [u8; 32]) -> Result<Checked> {
    let Some((content, mut reader)) = sharded_reader(node, blake3).await? else {
        return Ok(Checked::default());
    };
    let geo = reader.geometry();
    let total = geo.ec.total();
    let stripes = geo.stripe_count();
    let mut checked = Checked {
        shards: total as u64,
        ..Checked::default()
    };
    // Pass 1: find the bad shards: headers (all at once), then every block.
    let files = &reader.files;
    let headers = join_all(reader.locs.iter().enumerate().map(|(i, &loc)| async move {
        match slot_file(node, files, loc, i).await {
            Some(f) => header_ok(&f, &blake3, &loc, geo).await,
            None => false,
        }
    }))
    .await;
    for (i, good) in headers.into_iter().enumerate() {
        if !good {
            reader.bad[i] = true;
        }
    }
    let known: Vec<usize> = (0..total).filter(|&i| reader.bad[i]).collect();
    if !known.is_empty() {
        // Shards already known to be missing or wrong (a node gone, a drive emptied): one
        // pass reads the others, verifying every block as it goes, and writes the rebuilt
        // shards from the same reads. A block found bad on the way in another shard is read
        // around; that shard is rebuilt by a second check right after.
        let views = drive_views(node);
        let moves = shard_moves(node, &reader, &views, &known);
        checked.rebuilt = rebuild_onto(node, &mut reader, &content, &views, &known, &moves).await?;
        let later: Vec<usize> = (0..total)
            .filter(|&i| reader.bad[i] && !known.contains(&i))
            .collect();
        checked.bad = (known.len() + later.len()) as u64;
        if !later.is_empty() {
            let again = Box::pin(check_and_repair(node, blake3)).await?;
            checked.rebuilt += again.rebuilt;
        }
        return Ok(checked);
    }
    // With a tree to say whether the data is right, parity is checked too: re-encoded from
    // the data read, it must be what the parity shards hold (a parity block rewritten with its
    // CRC would otherwise wait, unnoticed, to corrupt a rebuild).
    let check_parity = verify::has_tree(&content);
    let k = geo.ec.k();
    let mut parity_differs = vec![false; total];
    let mut s0 = 0;
    while s0 < stripes {
        let n = (stripes - s0).min(READ_BATCH_STRIPES);
        node.repair_pace
            .take(n * total as u64 * BLOCK_BYTES as u64)
            .await;
        let batch = reader.read_batch(s0, n, 0..total, false).await;
        for s in s0..s0 + n {
            let mut good: Vec<Option<&[u8]>> = vec![None; total];
            for (i, g) in good.iter_mut().enumerate() {
                if let Some(r) = &batch.reads[i] {
                    *g = reader.verify(r, i, s0, s);
                    if g.is_none() {
                        reader.bad[i] = true;
                    }
                }
            }
            if check_parity && good.iter().all(Option::is_some) {
                let data: Vec<&[u8]> = good[..k].iter().map(|p| p.expect("good")).collect();
                let c = geo.chunk_bytes(s);
                let mut parity: Vec<Vec<u8>> = (k..total).map(|_| vec![0u8; c]).collect();
                let mut refs: Vec<&mut [u8]> =
                    parity.iter_mut().map(|v| v.as_mut_slice()).collect();
                reader.codec.encode(&data, &mut refs)?;
                for j in k..total {
                    if parity[j - k][..] != *good[j].expect("good") {
                        parity_differs[j] = true;
                    }
                }
            }
        }
        s0 += n;
    }
    let views = drive_views(node);
    let broken: Vec<usize> = (0..total).filter(|&i| reader.bad[i]).collect();
    if broken.is_empty() {
        // Every block's CRC holds: the bytes against the content's BLAKE3 tree, which catches
        // a block rewritten with its CRC (or a misdirected write of another valid block).
        let suspects = match verify::tree_suspects(node, blake3, &content).await {
            Ok(s) => s,
            // No set of shards that parity can rebuild around gives the object's bytes: fewer
            // than K good shards, as far as repair can tell (the content is marked damaged,
            // and the next upload of its bytes replaces it).
            Err(StoreError::Verification(m)) => {
                tracing::error!("{m}");
                return Err(StoreError::InsufficientShards {
                    have: 0,
                    need: geo.ec.k(),
                });
            }
            Err(e) => return Err(e),
        };
        // The data verified: parity that is not its encoding is what is wrong.
        let suspects = if suspects.is_empty() {
            (0..total).filter(|&j| parity_differs[j]).collect()
        } else {
            suspects
        };
        if !suspects.is_empty() {
            tracing::warn!(
                "content {}: shard(s) {suspects:?} hold blocks whose CRCs hold but whose bytes are wrong (against the BLAKE3 tree, or the parity of the verified data); rebuilding",
                hex::encode(blake3)
            );
            for &i in &suspects {
                reader.exclude(i);
            }
            let moves = shard_moves(node, &reader, &views, &suspects);
            checked.bad = suspects.len() as u64;
            checked.rebuilt =
                rebuild_onto(node, &mut reader, &content, &views, &suspects, &moves).await?;
            return Ok(checked);
        }
    }
    let moves = shard_moves(node, &reader, &views, &broken);
    checked.bad = broken.len() as u64;
    checked.rebuilt = rebuild_onto(node, &mut reader, &content, &views, &broken, &moves).await?;
    Ok(checked)
}

/// In a cluster, shards on a draining node and shards sharing a node move too, where that can
/// be done safely; the `broken` ones are rebuilt in any case.
fn shard_moves(
    node: &Node,
    reader: &ShardReader,
    views: &[DriveView],
    broken: &[usize],
) -> Vec<(usize, Option<u16>)> {
    if node.cluster.is_none() {
        return Vec::new();
    }
    let current: Vec<u16> = reader.locs.iter().map(|l| l.drive).collect();
    let leaving = draining_nodes(node);
    placement::moves(
        views,
        &current,
        &leaving,
        None,
        reader.geometry().shard_file_bytes(),
    )
    .into_iter()
    .filter(|(i, _)| !broken.contains(i))
    .collect()
}

/// Rebuilds the shards at positions `broken` (and makes the `moves`) onto the drives
/// `placement::targets` picks from `views`, and points the content at the new files. Returns how
/// many shards were written.
async fn rebuild_onto(
    node: &Arc<Node>,
    reader: &mut ShardReader,
    content: &ContentRec,
    views: &[DriveView],
    broken: &[usize],
    moves: &[(usize, Option<u16>)],
) -> Result<usize> {
    let geo = reader.geometry();
    let blake3 = reader.blake3;
    let current: Vec<u16> = reader.locs.iter().map(|l| l.drive).collect();
    let targets = placement::targets(
        views,
        &current,
        broken,
        moves,
        geo.shard_file_bytes(),
        geo.ec.parity,
        rand::random(),
    )
    .map_err(|e| StoreError::InsufficientStorage(e.to_string()));
    let targets = match targets {
        Ok(t) => t,
        Err(e) => {
            reader.close().await;
            return Err(e);
        }
    };
    if targets.is_empty() {
        reader.close().await;
        clear_damaged(node, content.damaged, blake3).await?;
        return Ok(0);
    }
    let bad: Vec<usize> = targets.iter().map(|t| t.0).collect();
    let (upload_id, new_locs) = name_new_shards(reader, &targets);
    let from: Vec<ShardLoc> = bad.iter().map(|&i| reader.locs[i]).collect();
    let write = async {
        let r = rebuild(node, reader, &bad, &new_locs).await;
        reader.close().await;
        r.map(|()| true)
    };
    let landed = carry_out_rebuild(
        node,
        blake3,
        content.damaged,
        upload_id,
        &new_locs,
        from,
        write,
    )
    .await;
    // Closed by `write` when it ran; not if the intent failed first.
    reader.close().await;
    Ok(if landed? { bad.len() } else { 0 })
}

/// A content's record and a reader of its shards; `None` if it is unknown or not sharded.
async fn sharded_reader(
    node: &Arc<Node>,
    blake3: [u8; 32],
) -> Result<Option<(ContentRec, ShardReader)>> {
    let Some(content) = node.meta.ask(ask::Content { blake3 }).await? else {
        return Ok(None);
    };
    Ok(ShardReader::new(node.clone(), blake3, &content).map(|r| (content, r)))
}

/// Rebuilds the shards of `blake3` with indexes `positions`, known to be missing (a PUT's
/// target stopped answering before they were written), from the others, onto other drives;
/// the others are not checked first (they were just written).
async fn rebuild_positions(
    node: &Arc<Node>,
    blake3: [u8; 32],
    positions: &[usize],
) -> Result<usize> {
    let Some((content, mut reader)) = sharded_reader(node, blake3).await? else {
        return Ok(0);
    };
    for &i in positions {
        reader.bad[i] = true;
        reader.files.borrow_mut()[i] = Slot::Failed;
    }
    let views = drive_views(node);
    rebuild_onto(node, &mut reader, &content, &views, positions, &[]).await
}

/// A content marked damaged whose shards all verified (or were rebuilt) is whole again: the
/// shards that were missing came back (a node or a drive returned).
async fn clear_damaged(node: &Node, damaged: bool, blake3: [u8; 32]) -> Result<()> {
    if damaged {
        tracing::info!("content {} is whole again", hex::encode(blake3));
        node.meta.ask(ask::ClearDamaged { blake3 }).await?;
    }
    Ok(())
}

/// Names new shard files for `targets` (position, drive) and the intent that will list them;
/// returns the intent's id and the files.
fn name_new_shards(reader: &ShardReader, targets: &[(usize, u16)]) -> (u64, Vec<ShardLoc>) {
    let upload_id: u64 = rand::random();
    let new_locs: Vec<ShardLoc> = targets
        .iter()
        .map(|&(i, drive)| ShardLoc {
            index: reader.locs[i].index,
            drive,
            file_id: upload_id,
            file_tag: rand::random(),
        })
        .collect();
    (upload_id, new_locs)
}

/// Carries out a rebuild's or a move's [`lifecycle::Rebuild`]: records the intent listing
/// `new_locs` before anything is written, runs `write` (writes and syncs them; `Ok(false)`: a
/// source failed its check), points the content at them where their slots still hold `from`
/// (`ReplaceShards`, one transaction), and deletes whatever that left unreferenced (the old
/// files, or the new ones if their slots changed meanwhile). An answer lost on the way is
/// fenced and read back, never guessed. Returns whether the content points at the new files;
/// the error of a step that failed, if it did not.
async fn carry_out_rebuild(
    node: &Arc<Node>,
    blake3: [u8; 32],
    damaged: bool,
    upload_id: u64,
    new_locs: &[ShardLoc],
    from: Vec<ShardLoc>,
    write: impl std::future::Future<Output = Result<bool>>,
) -> Result<bool> {
    use lifecycle::{RebuildAction as A, RebuildEvent as E};
    let mut machine = lifecycle::Rebuild::new();
    let mut todo = std::collections::VecDeque::from([machine.start()]);
    let mut write = std::pin::pin!(write);
    let mut listed: Vec<ShardLoc> = Vec::new();
    let mut failure: Option<StoreError> = None;
    let mut landed = false;
    while let Some(action) = todo.pop_front() {
        let event = match action {
            A::BeginIntent => Some(E::Begun {
                ok: match node.begin_intent(upload_id, new_locs).await {
                    Ok(()) => true,
                    Err(e) => {
                        failure = Some(e.into());
                        false
                    }
                },
            }),
            A::Write => Some(E::Written {
                ok: match write.as_mut().await {
                    Ok(ok) => ok,
                    Err(e) => {
                        failure = Some(e);
                        false
                    }
                },
            }),
            A::Replace => Some(
                match node
                    .meta
                    .ask(ask::ReplaceShards {
                        blake3,
                        shards: new_locs.to_vec(),
                        replaced: from.clone(),
                        intent: upload_id,
                    })
                    .await
                {
                    Ok(garbage) => {
                        listed = garbage;
                        E::Replaced
                    }
                    Err(e) if outcome_unknown(&e) => {
                        failure = Some(e.into());
                        E::Unknown
                    }
                    Err(e) => {
                        failure = Some(e.into());
                        E::Refused
                    }
                },
            ),
            A::Fence => Some(E::Fenced {
                ok: node
                    .meta
                    .ask(ask::AbandonIntent { id: upload_id })
                    .await
                    .is_ok(),
            }),
            A::ReadIntent => Some(E::Read(
                match node.meta.ask(ask::Intent { id: upload_id }).await {
                    Ok(rec) => {
                        listed = rec.as_ref().map(|r| r.shards.clone()).unwrap_or_default();
                        Some(meta::intent_fate(rec.map(|r| r.state)))
                    }
                    Err(_) => None,
                },
            )),
            A::RemoveListed => {
                discard(node, &listed, upload_id);
                None
            }
            A::DiscardNew => {
                discard(node, new_locs, upload_id);
                None
            }
            A::EndIntent => {
                node.end_intent_later(upload_id);
                None
            }
            A::Leave => None,
            A::ClearDamaged => {
                clear_damaged(node, damaged, blake3).await?;
                None
            }
            A::Finish(ok) => {
                landed = ok;
                None
            }
        };
        if let Some(e) = event {
            todo.extend(machine.on(e));
        }
    }
    match failure {
        Some(e) if !landed => Err(e),
        _ => Ok(landed),
    }
}

/// Nodes being drained, as this node's view has them.
fn draining_nodes(node: &Node) -> Vec<u32> {
    node.cluster.as_ref().map_or(Vec::new(), |c| {
        c.view().drains.iter().map(|(n, _)| *n).collect()
    })
}

/// Shards held per node (from the drive counters), for rebalancing.
async fn node_counts(node: &Node, views: &[DriveView]) -> Result<Vec<(u32, u64)>> {
    let ids: Vec<u16> = views.iter().map(|d| d.id).collect();
    let counts: Vec<i64> = node.meta.ask(ask::DriveShardCounts { drives: ids }).await?;
    let mut out: Vec<(u32, u64)> = Vec::new();
    for (d, c) in views.iter().zip(counts) {
        match out.iter_mut().find(|(n, _)| *n == d.node) {
            Some((_, t)) => *t += c.max(0) as u64,
            None => out.push((d.node, c.max(0) as u64)),
        }
    }
    Ok(out)
}

/// Moves the shards of a content that should be elsewhere — on a draining node, doubled up on
/// a node, or (with `rebalance`) on a node holding more than its share — by copying them: each
/// block is read, its CRC32C checked, and sealed again for the new file, so a move reads one
/// shard instead of rebuilding from K. A source that fails a check sends the content through
/// [`check_and_repair`] instead. Returns how many shards moved.
pub async fn relocate(node: &Arc<Node>, blake3: [u8; 32], rebalance: bool) -> Result<usize> {
    let Some((_, mut reader)) = sharded_reader(node, blake3).await? else {
        return Ok(0);
    };
    let geo = reader.geometry();
    let views = drive_views(node);
    let counts = if rebalance {
        Some(node_counts(node, &views).await?)
    } else {
        None
    };
    let current: Vec<u16> = reader.locs.iter().map(|l| l.drive).collect();
    let leaving = draining_nodes(node);
    let moves = placement::moves(
        &views,
        &current,
        &leaving,
        counts.as_deref(),
        geo.shard_file_bytes(),
    );
    let targets = placement::targets(
        &views,
        &current,
        &[],
        &moves,
        geo.shard_file_bytes(),
        geo.ec.parity,
        rand::random(),
    )
    .map_err(|e| StoreError::InsufficientStorage(e.to_string()))?;
    if targets.is_empty() {
        return Ok(0);
    }
    let (upload_id, new_locs) = name_new_shards(&reader, &targets);
    let from: Vec<usize> = targets.iter().map(|m| m.0).collect();
    let replaced: Vec<ShardLoc> = from.iter().map(|&i| reader.locs[i]).collect();
    let mut source_bad = false;
    let write = async {
        let r = copy_shards(node, &mut reader, &from, &new_locs).await;
        reader.close().await;
        source_bad = matches!(r, Ok(false));
        r
    };
    let landed =
        carry_out_rebuild(node, blake3, false, upload_id, &new_locs, replaced, write).await;
    reader.close().await;
    let landed = landed?;
    if source_bad {
        // A source shard is bad: rebuild it (and move what must move) from the others.
        return Ok(check_and_repair(node, blake3).await?.rebuilt);
    }
    Ok(if landed { new_locs.len() } else { 0 })
}

/// Copies shards `from` (positions) into the new files `new_locs`, checking every block on the
/// way; `false` if a source block or header failed its check (nothing is committed then).
async fn copy_shards(
    node: &Node,
    reader: &mut ShardReader,
    from: &[usize],
    new_locs: &[ShardLoc],
) -> Result<bool> {
    let geo = reader.geometry();
    let stripes = geo.stripe_count();
    for &i in from {
        let loc = reader.locs[i];
        match reader.file(i).await {
            Some(f) if header_ok(&f, &reader.blake3, &loc, geo).await => {}
            _ => return Ok(false),
        }
    }
    let buf_bytes = READ_BATCH_STRIPES as usize * BLOCK_BYTES;
    let mut w = ShardWriter::create(
        node,
        new_locs,
        buf_bytes,
        Some(geo.shard_file_bytes()),
        OpenMode::Create,
    )
    .await?;
    let r = async {
        let mut s0 = 0;
        while s0 < stripes {
            let n = (stripes - s0).min(READ_BATCH_STRIPES);
            node.repair_pace
                .take(n * from.len() as u64 * BLOCK_BYTES as u64)
                .await;
            let mut reads = Vec::with_capacity(from.len());
            for &i in from {
                reads.push(reader.read_shard(i, s0, n).await);
            }
            let mut slices = w.slices();
            for (slot, (&i, r)) in from.iter().zip(&reads).enumerate() {
                let Some(r) = r else { return Ok(false) };
                for s in s0..s0 + n {
                    let Some(payload) = reader.verify(r, i, s0, s) else {
                        return Ok(false);
                    };
                    let c = geo.chunk_bytes(s);
                    let base = ((s - s0) as usize) * BLOCK_BYTES;
                    let blen = geo.block_len(s);
                    let buf = &mut slices[slot];
                    buf[base..base + c].copy_from_slice(&payload[..c]);
                    ostore_wire::shard::seal_block(
                        &mut buf[base..base + blen],
                        c,
                        s as u32,
                        new_locs[slot].file_tag,
                    );
                }
            }
            let bytes = reader.span(s0, n);
            w.write(s0, bytes).await?;
            s0 += n;
        }
        let headers = headers_for(new_locs, geo, &reader.blake3);
        w.finish(&headers).await?;
        Ok(true)
    }
    .await;
    w.close().await;
    r
}

/// What a scrub pass found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScrubReport {
    pub contents: u64,
    pub shards_checked: u64,
    pub corrupt_found: u64,
    pub repaired: u64,
    pub unrepairable: u64,
}

/// Checks every shard of every sharded content (with `share`, of this node's hash share) and
/// repairs what is bad, paced like repairs so that client requests keep their latency.
pub async fn scrub_pass(node: &Arc<Node>, share: bool) -> Result<ScrubReport> {
    let mine = crate::ctx::repair_share(node);
    let mut report = ScrubReport::default();
    let mut after = None;
    loop {
        let page: Vec<([u8; 32], ContentRec)> =
            node.meta.ask(ask::Contents { after, limit: 1000 }).await?;
        let next = (page.len() == 1000)
            .then(|| page.last().map(|(h, _)| *h))
            .flatten();
        for (h, c) in page {
            if !matches!(c.stored, Stored::Sharded { .. }) || (share && !mine.contains(&h)) {
                continue;
            }
            report.contents += 1;
            scrub_one(node, h, &mut report).await?;
        }
        match next {
            Some(n) => after = Some(n),
            None => return Ok(report),
        }
    }
}

/// Checks every shard of every content with a shard on one of `drives` (`osctl scrub --node`)
/// and repairs what is bad.
pub async fn scrub_drives(node: &Arc<Node>, drives: &[u16]) -> Result<ScrubReport> {
    let mut contents = std::collections::BTreeSet::new();
    for &drive in drives {
        let mut after = None;
        loop {
            let page: Vec<([u8; 32], u8)> = node
                .meta
                .ask(ask::ShardsOnDrive {
                    drive,
                    after,
                    limit: 1000,
                })
                .await?;
            contents.extend(page.iter().map(|p| p.0));
            match page.last() {
                Some(l) if page.len() == 1000 => after = Some(*l),
                _ => break,
            }
        }
    }
    let mut report = ScrubReport::default();
    for h in contents {
        report.contents += 1;
        scrub_one(node, h, &mut report).await?;
    }
    Ok(report)
}

/// Checks and repairs one content for a scrub pass, adding to its report.
async fn scrub_one(node: &Arc<Node>, h: [u8; 32], report: &mut ScrubReport) -> Result<()> {
    match check_and_repair(node, h).await {
        Ok(c) => {
            report.shards_checked += c.shards;
            node.metrics
                .scrub_shards_checked
                .fetch_add(c.shards, Ordering::Relaxed);
            report.corrupt_found += c.bad;
            report.repaired += c.rebuilt as u64;
            node.metrics
                .shards_repaired
                .fetch_add(c.rebuilt as u64, Ordering::Relaxed);
            Ok(())
        }
        Err(StoreError::InsufficientShards { have, need }) => {
            report.unrepairable += 1;
            crate::ctx::unrepairable(node, &h, have, need).await;
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The headers of new shard files of one content.
fn headers_for(locs: &[ShardLoc], geo: Geometry, blake3: &[u8; 32]) -> Vec<ShardHeader> {
    locs.iter()
        .map(|l| ShardHeader {
            data_shards: geo.ec.data,
            parity_shards: geo.ec.parity,
            shard_index: l.index,
            file_tag: l.file_tag,
            object_size_bytes: geo.size_bytes,
            blake3: *blake3,
            block_count: geo.stripe_count(),
        })
        .collect()
}

async fn rebuild(
    node: &Node,
    reader: &mut ShardReader,
    bad: &[usize],
    new_locs: &[ShardLoc],
) -> Result<()> {
    let geo = reader.geometry();
    let total = geo.ec.total();
    let stripes = geo.stripe_count();
    let buf_bytes = READ_BATCH_STRIPES as usize * BLOCK_BYTES;
    let mut w = ShardWriter::create(
        node,
        new_locs,
        buf_bytes,
        Some(geo.shard_file_bytes()),
        OpenMode::Create,
    )
    .await?;
    let r = async {
        let mut s0 = 0;
        while s0 < stripes {
            let n = (stripes - s0).min(READ_BATCH_STRIPES);
            node.repair_pace
                .take(n * total as u64 * BLOCK_BYTES as u64)
                .await;
            let mut batch = reader.read_batch(s0, n, 0..total, false).await;
            for s in s0..s0 + n {
                let chunks = reader.stripe_chunks(&mut batch, s, 0..total).await?;
                let c = geo.chunk_bytes(s);
                let base = ((s - s0) as usize) * BLOCK_BYTES;
                let blen = geo.block_len(s);
                for (slot, (buf, &i)) in w.slices().into_iter().zip(bad).enumerate() {
                    buf[base..base + c].copy_from_slice(&chunks[i]);
                    ostore_wire::shard::seal_block(
                        &mut buf[base..base + blen],
                        c,
                        s as u32,
                        new_locs[slot].file_tag,
                    );
                }
            }
            let bytes = reader.span(s0, n);
            w.write(s0, bytes).await?;
            s0 += n;
        }
        let headers = headers_for(new_locs, geo, &reader.blake3);
        w.finish(&headers).await
    }
    .await;
    w.close().await;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc() -> ShardLoc {
        ShardLoc {
            index: 3,
            drive: 7,
            file_id: 0xabc,
            file_tag: 1,
        }
    }

    #[test]
    fn a_shard_error_names_the_operation_the_drive_the_shard_and_the_offset() {
        let e = shard_error(
            ShardOp::Write,
            &loc(),
            Some(65536),
            std::io::Error::from_raw_os_error(libc::EIO),
        );
        let StoreError::Shard(inner) = &e else {
            panic!("{e:?}")
        };
        assert_eq!(
            (inner.drive, inner.shard, inner.offset),
            (7, 3, Some(65536))
        );
        let m = e.to_string();
        assert!(
            m.starts_with("writing shard 3 (file 0000000000000abc) on drive 7 at byte 65536: "),
            "{m}"
        );
        assert_eq!(crate::oserror::os_code(&inner.source), Some(libc::EIO));
        let m = shard_error(
            ShardOp::Sync,
            &loc(),
            None,
            std::io::Error::from_raw_os_error(libc::EIO),
        )
        .to_string();
        assert!(
            m.starts_with("syncing shard 3 (file 0000000000000abc) on drive 7: "),
            "{m}"
        );
    }

    #[test]
    fn a_full_drive_is_insufficient_storage_and_still_says_where() {
        for code in [libc::ENOSPC, libc::EDQUOT] {
            let e = shard_error(
                ShardOp::Reserve,
                &loc(),
                None,
                crate::oserror::OsError::into_io(code, "fallocate".into()),
            );
            let StoreError::InsufficientStorage(m) = &e else {
                panic!("{e:?}")
            };
            assert!(
                m.contains("reserving space for shard 3") && m.contains("drive 7"),
                "{m}"
            );
        }
    }
}
