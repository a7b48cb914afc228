//! Resumable uploads (tus): their state between requests, every transaction on it.
//!
//! An upload is created with its target key and length, and its shard files are placed at the
//! first bytes. Each PATCH writes whole stripes into the shard files (never over a stripe that
//! an earlier PATCH made durable) and then, in one transaction, records how far it got: the new
//! offset, the stripes written, and the bytes that do not fill a stripe yet (the *tail*), the
//! open BLAKE3 state and the zstd frame entries, kept as blobs next to the record. So a server
//! that dies at any moment resumes exactly from the last acknowledged offset. The final PATCH
//! commits the version as a PUT does and removes the upload in the same transaction; an upload
//! that is terminated or expires becomes a garbage intent, so its files are deleted like those
//! of any interrupted PUT.
//!
//! One request writes an upload at a time: a PATCH takes the upload's lock (a lease renewed
//! while it streams) and every later transaction of that PATCH checks it still holds it.

use crate::keys;
use crate::kv::{run, Kv, Tx, TxKv};
use crate::meta::{self, MetaError, NewContent, PutOutcome, Result, WriteCondition};
use crate::records::{decode, encode, IntentRec, IntentState, ObjectAttrs, ShardLoc};
use serde::{Deserialize, Serialize};

/// How long a PATCH holds an upload without renewing its lock.
pub const LOCK_MS: u64 = 60_000;
/// Most bytes in one blob value (FoundationDB refuses values over 100 kB).
pub const BLOB_PIECE_BYTES: usize = 60_000;

/// The blobs kept with an upload; their bytes are the data plane's business.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Blob {
    /// Stored bytes after the last whole stripe.
    Tail = 0,
    /// The BLAKE3 state of the object bytes so far.
    Hash = 1,
    /// The zstd frame entries written so far (8 bytes each; appended to, never rewritten).
    Frames = 2,
    /// Level 0 of the object's outboard so far: the chaining value of every whole group of
    /// object bytes (32 bytes each; appended to, never rewritten).
    Tree = 3,
}

const BLOBS: [Blob; 4] = [Blob::Tail, Blob::Hash, Blob::Frames, Blob::Tree];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadLock {
    /// The PATCH holding it.
    pub owner: u64,
    /// The node serving that PATCH, and that node process's boot identity: a lock of a
    /// process that restarted is stale at once.
    pub node: String,
    pub boot: u64,
    pub until_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRec {
    pub bucket: String,
    pub key: String,
    pub length: u64,
    /// Object bytes received and durable.
    pub offset: u64,
    pub created_ms: u64,
    pub expires_ms: u64,
    /// `Upload-Metadata` as the client sent it (HEAD returns it).
    pub metadata: String,
    /// BLAKE3 the client announced; checked at the end.
    pub expected: Option<[u8; 32]>,
    pub data: u8,
    pub parity: u8,
    /// Where the shard files go; empty for an upload small enough to be stored inline.
    pub shards: Vec<ShardLoc>,
    /// Whether the object is stored compressed: decided with its first bytes.
    pub compress: Option<bool>,
    /// Whole stripes durable in the shard files.
    pub stored_blocks: u64,
    /// Whether the shard files exist yet.
    pub files_created: bool,
    pub lock: Option<UploadLock>,
}

/// An upload and its blobs, as a PATCH starts from them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadState {
    pub rec: UploadRec,
    #[serde(with = "serde_bytes")]
    pub tail: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub hash: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub frames: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub tree: Vec<u8>,
}

/// How far a PATCH got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub offset: u64,
    pub stored_blocks: u64,
    pub compress: Option<bool>,
    pub files_created: bool,
    #[serde(with = "serde_bytes")]
    pub tail: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub hash: Vec<u8>,
    /// Frame entries closed since the last progress, appended to the frames blob (so an
    /// upload's metadata writes stay linear in its size however many PATCHes it takes).
    #[serde(with = "serde_bytes")]
    pub new_frames: Vec<u8>,
    /// Level-0 entries of the outboard completed since the last progress, appended likewise.
    #[serde(with = "serde_bytes")]
    pub new_tree: Vec<u8>,
    /// The upload expires this long after this progress.
    pub expiry_ms: u64,
}

fn get_rec(tx: &mut dyn Tx, id: &[u8; 16]) -> Result<Option<UploadRec>> {
    match tx.get(&keys::upload(id))? {
        Some(v) => Ok(Some(decode(&v)?)),
        None => Ok(None),
    }
}

fn put_rec(tx: &mut dyn Tx, id: &[u8; 16], rec: &UploadRec) -> Result<()> {
    Ok(tx.set(&keys::upload(id), &encode(rec))?)
}

fn read_blob(tx: &mut dyn Tx, id: &[u8; 16], b: Blob) -> Result<Vec<u8>> {
    let (lo, hi) = keys::upload_blob_range(id, b as u8);
    let mut out = Vec::new();
    for (_, v) in tx.get_range(&lo, &hi, usize::MAX, false)? {
        out.extend_from_slice(&v);
    }
    Ok(out)
}

fn write_blob(tx: &mut dyn Tx, id: &[u8; 16], b: Blob, bytes: &[u8]) -> Result<()> {
    let (lo, hi) = keys::upload_blob_range(id, b as u8);
    tx.clear_range(&lo, &hi)?;
    for (i, piece) in bytes.chunks(BLOB_PIECE_BYTES).enumerate() {
        tx.set(&keys::upload_blob(id, b as u8, i as u32), piece)?;
    }
    Ok(())
}

/// Appends to a blob: new pieces after its last one.
fn append_blob(tx: &mut dyn Tx, id: &[u8; 16], b: Blob, bytes: &[u8]) -> Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    let (lo, hi) = keys::upload_blob_range(id, b as u8);
    let next = match tx.get_range(&lo, &hi, 1, true)?.first() {
        Some((k, _)) => {
            let piece: [u8; 4] = k[k.len() - 4..].try_into().expect("piece index");
            u32::from_be_bytes(piece) + 1
        }
        None => 0,
    };
    for (i, piece) in bytes.chunks(BLOB_PIECE_BYTES).enumerate() {
        tx.set(&keys::upload_blob(id, b as u8, next + i as u32), piece)?;
    }
    Ok(())
}

fn remove(tx: &mut dyn Tx, id: &[u8; 16]) -> Result<()> {
    tx.clear(&keys::upload(id))?;
    for b in BLOBS {
        let (lo, hi) = keys::upload_blob_range(id, b as u8);
        tx.clear_range(&lo, &hi)?;
    }
    Ok(())
}

/// Creates an upload (the bucket must exist; an id in use is refused as a conflict).
pub fn create(kv: &dyn Kv, id: &[u8; 16], rec: &UploadRec) -> Result<()> {
    run(kv, true, |tx| {
        if tx.get(&keys::bucket(&rec.bucket))?.is_none() {
            return Err(MetaError::NoSuchBucket);
        }
        if get_rec(tx, id)?.is_some() {
            return Err(MetaError::UploadBusy);
        }
        put_rec(tx, id, rec)
    })
}

pub fn get(kv: &dyn Kv, id: &[u8; 16]) -> Result<Option<UploadRec>> {
    run(kv, false, |tx| get_rec(tx, id))
}

fn check_lock(rec: &UploadRec, owner: u64) -> Result<()> {
    match &rec.lock {
        Some(l) if l.owner == owner => Ok(()),
        _ => Err(MetaError::UploadBusy),
    }
}

/// Takes the upload for a PATCH starting at `offset`, returning its state. Refused if the
/// offset is not the upload's (`UploadOffset`), or another live PATCH holds it (`UploadBusy`).
pub fn lock(
    kv: &dyn Kv,
    id: &[u8; 16],
    offset: u64,
    lock: &UploadLock,
    now_ms: u64,
) -> Result<UploadState> {
    run(kv, true, |tx| {
        let mut rec = get_rec(tx, id)?.ok_or(MetaError::NoSuchUpload)?;
        if let Some(l) = &rec.lock {
            let stale = l.until_ms <= now_ms || (l.node == lock.node && l.boot != lock.boot);
            if !stale && l.owner != lock.owner {
                return Err(MetaError::UploadBusy);
            }
        }
        if rec.offset != offset {
            return Err(MetaError::UploadOffset(rec.offset));
        }
        rec.lock = Some(lock.clone());
        put_rec(tx, id, &rec)?;
        Ok(UploadState {
            tail: read_blob(tx, id, Blob::Tail)?,
            hash: read_blob(tx, id, Blob::Hash)?,
            frames: read_blob(tx, id, Blob::Frames)?,
            tree: read_blob(tx, id, Blob::Tree)?,
            rec,
        })
    })
}

/// Renews a PATCH's lock until `until_ms`.
pub fn renew(kv: &dyn Kv, id: &[u8; 16], owner: u64, until_ms: u64) -> Result<()> {
    run(kv, true, |tx| {
        let mut rec = get_rec(tx, id)?.ok_or(MetaError::NoSuchUpload)?;
        check_lock(&rec, owner)?;
        if let Some(l) = rec.lock.as_mut() {
            l.until_ms = until_ms;
        }
        put_rec(tx, id, &rec)
    })
}

/// Records a PATCH's progress (its bytes are durable); with `release`, gives the lock back.
pub fn progress(
    kv: &dyn Kv,
    id: &[u8; 16],
    owner: u64,
    p: &Progress,
    release: bool,
    now_ms: u64,
) -> Result<()> {
    run(kv, true, |tx| {
        let mut rec = get_rec(tx, id)?.ok_or(MetaError::NoSuchUpload)?;
        check_lock(&rec, owner)?;
        if p.offset < rec.offset || p.offset > rec.length || p.stored_blocks < rec.stored_blocks {
            return Err(MetaError::UploadOffset(rec.offset));
        }
        rec.offset = p.offset;
        rec.stored_blocks = p.stored_blocks;
        rec.compress = p.compress;
        rec.files_created = p.files_created;
        rec.expires_ms = now_ms + p.expiry_ms;
        if release {
            rec.lock = None;
        }
        put_rec(tx, id, &rec)?;
        write_blob(tx, id, Blob::Tail, &p.tail)?;
        write_blob(tx, id, Blob::Hash, &p.hash)?;
        append_blob(tx, id, Blob::Frames, &p.new_frames)?;
        append_blob(tx, id, Blob::Tree, &p.new_tree)
    })
}

/// Gives a PATCH's lock back without progress (a checksum mismatch, a broken body).
pub fn unlock(kv: &dyn Kv, id: &[u8; 16], owner: u64) -> Result<()> {
    run(kv, true, |tx| {
        let Some(mut rec) = get_rec(tx, id)? else {
            return Ok(());
        };
        if rec.lock.as_ref().is_some_and(|l| l.owner == owner) {
            rec.lock = None;
            put_rec(tx, id, &rec)?;
        }
        Ok(())
    })
}

/// Commits the finished upload as a new version, exactly as a PUT with intent `intent` (its
/// shard files listed there), and removes the upload, in one transaction. A retry after an
/// unknown result returns the first outcome.
pub fn commit(
    kv: &dyn Kv,
    id: &[u8; 16],
    owner: u64,
    intent: u64,
    content: &NewContent,
    now_ms: u64,
) -> Result<PutOutcome> {
    run(kv, true, |tx| {
        // A retry of a commit that went through is answered by the request's idempotency
        // marker (`rpc::execute_idempotent`), so a missing upload is an error here.
        let rec = get_rec(tx, id)?.ok_or(MetaError::NoSuchUpload)?;
        check_lock(&rec, owner)?;
        remove(tx, id)?;
        let sub = TxKv::new(tx);
        if !rec.shards.is_empty() {
            // Committed in this same transaction: the owner is never looked at.
            let nobody = crate::records::Owner {
                node: 0,
                boot: owner,
            };
            meta::begin_intent(&sub, intent, &rec.shards, nobody, now_ms)?;
        }
        meta::commit_put(
            &sub,
            &rec.bucket,
            &rec.key,
            (!rec.shards.is_empty()).then_some(intent),
            content,
            &WriteCondition::Always,
            &ObjectAttrs::default(),
            now_ms,
        )
    })
}

/// Ends an upload (terminated, expired with `expired_by`, or failed its digest): its record
/// goes and its shard files become the garbage intent `intent`, whose files the caller
/// deletes. Returns those files, or `None` if the upload is unknown, or (with `expired_by`)
/// not expired at that time, or held by a live PATCH.
pub fn end(
    kv: &dyn Kv,
    id: &[u8; 16],
    intent: u64,
    expired_by: Option<u64>,
    now_ms: u64,
) -> Result<Option<Vec<ShardLoc>>> {
    run(kv, true, |tx| {
        let Some(rec) = get_rec(tx, id)? else {
            return Ok(None);
        };
        if let Some(t) = expired_by {
            let locked = rec.lock.as_ref().is_some_and(|l| l.until_ms > t);
            if rec.expires_ms > t || locked {
                return Ok(None);
            }
        }
        remove(tx, id)?;
        // Every file the upload lists, whether or not a progress recorded it as created: a
        // PATCH creates the files before it records anything, and one that died in between
        // left files only this record names (deleting a file that was never made counts as
        // deleted).
        if !rec.shards.is_empty() {
            let garbage = IntentRec {
                created_ms: now_ms,
                shards: rec.shards.clone(),
                state: IntentState::Committed {
                    version: 0,
                    created_ms: 0,
                    adopted: false,
                },
            };
            tx.set(&keys::intent(intent), &encode(&garbage))?;
            return Ok(Some(rec.shards));
        }
        Ok(Some(Vec::new()))
    })
}

/// Every upload in progress, read a page per transaction.
pub fn all(kv: &dyn Kv) -> Result<Vec<UploadRec>> {
    const PAGE: usize = 1000;
    let (mut lo, hi) = keys::uploads();
    let mut out = Vec::new();
    loop {
        let page = run(kv, false, |tx| {
            Ok::<_, MetaError>(tx.get_range(&lo, &hi, PAGE, false)?)
        })?;
        for (_, v) in &page {
            out.push(decode(v)?);
        }
        match page.last() {
            Some((k, _)) if page.len() == PAGE => {
                lo = k.clone();
                lo.push(0);
            }
            _ => return Ok(out),
        }
    }
}

/// Up to `limit` uploads that expired by `now_ms`.
pub fn expired(kv: &dyn Kv, now_ms: u64, limit: usize) -> Result<Vec<[u8; 16]>> {
    run(kv, false, |tx| {
        let (lo, hi) = keys::uploads();
        let mut out = Vec::new();
        for (k, v) in tx.get_range(&lo, &hi, usize::MAX, false)? {
            let rec: UploadRec = decode(&v)?;
            if rec.expires_ms <= now_ms {
                if let Some(id) = keys::upload_id(&k) {
                    out.push(id);
                }
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{Encoding, Stored, Tree};
    use crate::redb_kv::RedbKv;

    fn rec(shards: Vec<ShardLoc>) -> UploadRec {
        UploadRec {
            bucket: "default".into(),
            key: "k".into(),
            length: 1000,
            offset: 0,
            created_ms: 1,
            expires_ms: 100,
            metadata: String::new(),
            expected: None,
            data: 4,
            parity: 2,
            shards,
            compress: None,
            stored_blocks: 0,
            files_created: false,
            lock: None,
        }
    }

    fn lk(owner: u64, boot: u64, until_ms: u64) -> UploadLock {
        UploadLock {
            owner,
            node: "dev".into(),
            boot,
            until_ms,
        }
    }

    fn progress_to(offset: u64, tail: Vec<u8>) -> Progress {
        Progress {
            offset,
            stored_blocks: 0,
            compress: Some(false),
            files_created: true,
            tail,
            hash: vec![1, 2, 3],
            new_frames: vec![offset as u8; 70_000],
            new_tree: Vec::new(),
            expiry_ms: 200,
        }
    }

    #[test]
    fn one_patch_at_a_time_from_the_right_offset() {
        let d = tempfile::tempdir().unwrap();
        let kv = RedbKv::open(&d.path().join("m")).unwrap();
        meta::init(&kv, 1).unwrap();
        let id = [7u8; 16];
        create(&kv, &id, &rec(Vec::new())).unwrap();
        assert!(matches!(
            create(&kv, &id, &rec(Vec::new())),
            Err(MetaError::UploadBusy)
        ));
        let st = lock(&kv, &id, 0, &lk(1, 9, 50), 10).unwrap();
        assert_eq!(st.rec.offset, 0);
        // A second PATCH while the first holds the lock.
        assert!(matches!(
            lock(&kv, &id, 0, &lk(2, 9, 50), 20),
            Err(MetaError::UploadBusy)
        ));
        // A big tail spans several blob pieces and comes back whole.
        let tail: Vec<u8> = (0..150_000u32).map(|i| i as u8).collect();
        progress(&kv, &id, 1, &progress_to(300, tail.clone()), true, 0).unwrap();
        assert!(matches!(
            lock(&kv, &id, 0, &lk(2, 9, 50), 20),
            Err(MetaError::UploadOffset(300))
        ));
        let st = lock(&kv, &id, 300, &lk(2, 9, 50), 20).unwrap();
        assert_eq!(st.tail, tail);
        assert_eq!(st.hash, vec![1, 2, 3]);
        assert_eq!(st.frames, vec![44u8; 70_000]);
        // Frame entries are appended, in order, across progress records.
        progress(&kv, &id, 2, &progress_to(301, Vec::new()), false, 0).unwrap();
        let st = lock(&kv, &id, 301, &lk(2, 9, 50), 21).unwrap();
        let mut want = vec![44u8; 70_000];
        want.extend(vec![45u8; 70_000]);
        assert!(st.frames == want);
        assert_eq!(st.tail, Vec::<u8>::new());
        // The old owner can no longer write.
        assert!(progress(&kv, &id, 1, &progress_to(400, Vec::new()), true, 0).is_err());
        // An expired lock, or one of a restarted process, is taken over.
        assert!(lock(&kv, &id, 301, &lk(3, 9, 90), 60).is_ok());
        assert!(lock(&kv, &id, 301, &lk(4, 10, 90), 61).is_ok());
        // Expiry skips a live lock, then ends the upload.
        assert_eq!(end(&kv, &id, 5, Some(80), 80).unwrap(), None);
        assert_eq!(expired(&kv, 300, 10).unwrap(), vec![id]);
        assert_eq!(end(&kv, &id, 5, Some(300), 300).unwrap(), Some(Vec::new()));
        assert!(get(&kv, &id).unwrap().is_none());
        assert!(lock(&kv, &id, 301, &lk(5, 10, 400), 301).is_err());
    }

    #[test]
    fn commit_makes_the_version_and_removes_the_upload() {
        let d = tempfile::tempdir().unwrap();
        let kv = RedbKv::open(&d.path().join("m")).unwrap();
        meta::init(&kv, 1).unwrap();
        let id = [8u8; 16];
        create(&kv, &id, &rec(Vec::new())).unwrap();
        lock(&kv, &id, 0, &lk(1, 1, 50), 10).unwrap();
        let content = NewContent {
            blake3: [3; 32],
            size_bytes: 2,
            stored: Stored::Inline(vec![1, 2]),
            encoding: Encoding::Identity,
            tree: Tree::None,
        };
        assert!(
            commit(&kv, &id, 2, 99, &content, 20).is_err(),
            "not the lock owner"
        );
        let out = commit(&kv, &id, 1, 99, &content, 20).unwrap();
        assert_eq!(out.version, 1);
        assert!(get(&kv, &id).unwrap().is_none());
        let r = meta::resolve(&kv, "default", "k", None).unwrap();
        assert_eq!(r.version.size_bytes, 2);
        let (lo, hi) = keys::upload_blob_range(&id, Blob::Hash as u8);
        let left = run(&kv, false, |tx| {
            Ok::<_, MetaError>(tx.get_range(&lo, &hi, 10, false)?.len())
        })
        .unwrap();
        assert_eq!(left, 0, "blobs are removed with the upload");
    }
}
