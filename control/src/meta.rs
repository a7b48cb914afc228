//! Every metadata transaction of ostore, written against [`Tx`] only.
//!
//! Limits: each transaction touches a bounded number of keys (one object key's head, one version,
//! one content record and at most K+M drive-shard entries; listings read at most
//! [`LIST_LIMIT_MAX`] + 1 pairs), far under FoundationDB's 10 MB / 5 s per transaction; the
//! largest value is a content record with an inline body of at most [`INLINE_BYTES_MAX`] plus
//! a few hundred bytes, under FoundationDB's 100 kB value limit.

use crate::keys::{self, Stat};
use crate::kv::{run, Kv, KvError, Tx, TxnError};
use crate::records::*;
use ostore_engine::lifecycle::{Event, IntentFate, SweepSeen};
use thiserror::Error;

/// Objects up to this size are stored inline in their content record.
pub const INLINE_BYTES_MAX: usize = 16 * 1024;
/// Most objects one listing call returns.
pub const LIST_LIMIT_MAX: usize = 1000;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MetaError {
    #[error("no such bucket")]
    NoSuchBucket,
    #[error("no such key")]
    NoSuchKey,
    #[error("no such version")]
    NoSuchVersion,
    #[error("no such upload")]
    NoSuchUpload,
    #[error("bucket is not empty")]
    BucketNotEmpty,
    #[error("the write's precondition does not hold")]
    PreconditionFailed,
    /// A resumable upload is at another offset than the request says.
    #[error("the upload is at offset {0}")]
    UploadOffset(u64),
    /// Another request is writing the resumable upload.
    #[error("another request is writing this upload")]
    UploadBusy,
    #[error("no such node")]
    NoSuchNode,
    /// The cluster refuses a change that it could never carry out (the reason says why).
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Record(#[from] RecordError),
    #[error(transparent)]
    Kv(#[from] KvError),
    /// The control plane could not be reached or answered garbage.
    #[error("control plane unavailable: {0}")]
    Unavailable(String),
}

impl TxnError for MetaError {
    fn kv(&self) -> Option<&KvError> {
        match self {
            MetaError::Kv(k) => Some(k),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, MetaError>;

fn get<T: serde::de::DeserializeOwned + 'static>(tx: &mut dyn Tx, k: &[u8]) -> Result<Option<T>> {
    match tx.get(k)? {
        Some(v) => Ok(Some(decode(&v)?)),
        None => Ok(None),
    }
}

fn put<T: serde::Serialize + 'static>(tx: &mut dyn Tx, k: &[u8], v: &T) -> Result<()> {
    Ok(tx.set(k, &encode(v))?)
}

fn get_content(tx: &mut dyn Tx, k: &[u8]) -> Result<Option<ContentRec>> {
    match tx.get(k)? {
        Some(v) => Ok(Some(decode_content(&v)?)),
        None => Ok(None),
    }
}

/// Adds to a cluster-wide counter.
fn stat(tx: &mut dyn Tx, s: Stat, delta: i64) -> Result<()> {
    if delta != 0 {
        tx.add(&keys::stat(s), delta)?;
    }
    Ok(())
}

/// Records that `drive` holds shard `index` of `blake3` (and counts it).
fn index_shard(tx: &mut dyn Tx, drive: u16, blake3: &[u8; 32], index: u8) -> Result<()> {
    tx.set(&keys::drive_shard(drive, blake3, index), &[])?;
    Ok(tx.add(&keys::drive_count(drive), 1)?)
}

/// Undoes [`index_shard`].
fn unindex_shard(tx: &mut dyn Tx, drive: u16, blake3: &[u8; 32], index: u8) -> Result<()> {
    tx.clear(&keys::drive_shard(drive, blake3, index))?;
    Ok(tx.add(&keys::drive_count(drive), -1)?)
}

/// Counts a content record coming (`sign` 1) or going (-1).
fn count_content(tx: &mut dyn Tx, c: &ContentRec, sign: i64) -> Result<()> {
    // An assembled content stores nothing of its own: its parts are counted.
    if matches!(c.stored, Stored::Parts { .. }) {
        return Ok(());
    }
    stat(tx, Stat::Contents, sign)?;
    stat(tx, Stat::ContentBytes, sign * c.size_bytes as i64)?;
    stat(tx, Stat::StoredBytes, sign * c.stored_bytes() as i64)
}

/// The unreferenced-index key of a content record, if it has no reference.
fn unreferenced_key(blake3: &[u8; 32], c: &ContentRec) -> Option<Vec<u8>> {
    match (c.refs, c.unreferenced_since_ms) {
        (0, Some(t)) => Some(keys::unreferenced(t, blake3)),
        _ => None,
    }
}

/// Writes a content record that was `before` (as the caller read it in this transaction,
/// `None` if new) and keeps the unreferenced index (`[0x32]`) in step with it.
fn put_content(
    tx: &mut dyn Tx,
    blake3: &[u8; 32],
    before: Option<&ContentRec>,
    c: &ContentRec,
) -> Result<()> {
    let old = before.and_then(|o| unreferenced_key(blake3, o));
    let new = unreferenced_key(blake3, c);
    if old != new {
        if let Some(o) = old {
            tx.clear(&o)?;
        }
        if let Some(n) = &new {
            tx.set(n, &[])?;
        }
    }
    Ok(tx.set(&keys::content(blake3), &encode_content(c))?)
}

/// The result of committing a version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PutOutcome {
    pub version: u64,
    pub created_ms: u64,
    /// The content was already stored; the new shard files (if any) are not needed.
    pub deduplicated: bool,
    /// An older copy of the content (damaged, or stored without a BLAKE3 tree) was replaced;
    /// its files are listed under [`replaced_intent`] for deletion.
    pub replaced_damaged: bool,
    /// The version is the key's null version (written while the bucket's versioning was
    /// suspended). Not known (false) for a commit whose answer was lost and found again; the
    /// version's number names it either way.
    pub null: bool,
}

impl PutOutcome {
    /// The answer as the commit machine takes it (`lifecycle::Commit`).
    pub fn event(&self) -> Event {
        Event::Committed {
            version: self.version,
            created_ms: self.created_ms,
            deduplicated: self.deduplicated,
            replaced_damaged: self.replaced_damaged,
        }
    }
}

/// The intent under which `commit_put` lists the shard files of a damaged content it replaced
/// (derived from the content, so a retried commit uses the same one).
pub fn replaced_intent(blake3: &[u8; 32]) -> u64 {
    u64::from_le_bytes(blake3[..8].try_into().expect("8 bytes")) ^ 0x7265_706c_6163_6564
}

/// Marks a content damaged (fewer than K good shards: GETs answer 503 and the next upload of
/// it replaces it), or takes the mark off once all its shards verified again.
pub fn set_damaged(kv: &dyn Kv, blake3: &[u8; 32], damaged: bool) -> Result<()> {
    run(kv, true, |tx| {
        let ck = keys::content(blake3);
        if let Some(mut c) = get_content(tx, &ck)? {
            if c.damaged != damaged {
                let before = c.clone();
                c.damaged = damaged;
                put_content(tx, blake3, Some(&before), &c)?;
            }
        }
        Ok(())
    })
}

/// Creates the key-space format marker and the `default` bucket if missing.
pub fn init(kv: &dyn Kv, now_ms: u64) -> Result<()> {
    let format = run(kv, false, |tx| Ok::<_, MetaError>(tx.get(&keys::format())?))?;
    if format.as_deref() == Some(&1u32.to_le_bytes()[..]) {
        recount(kv)?;
    }
    run(kv, true, |tx| {
        match tx.get(&keys::format())? {
            Some(v) if v == keys::FORMAT_VERSION.to_le_bytes() => {}
            Some(v) => {
                return Err(MetaError::Record(RecordError(format!(
                    "unknown key-space format {v:?}"
                ))))
            }
            None => tx.set(&keys::format(), &keys::FORMAT_VERSION.to_le_bytes())?,
        }
        if tx.get(&keys::bucket("default"))?.is_none() {
            put(
                tx,
                &keys::bucket("default"),
                &BucketRec { created_ms: now_ms },
            )?;
        }
        Ok(())
    })
}

/// Reads one subspace a page per transaction, handing each pair to `f`.
fn scan(kv: &dyn Kv, t: u8, mut f: impl FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()> {
    const PAGE: usize = 10_000;
    let (mut b, e) = keys::subspace(t);
    loop {
        let page = run(kv, false, |tx| {
            Ok::<_, MetaError>(tx.get_range(&b, &e, PAGE, false)?)
        })?;
        for (k, v) in &page {
            f(k, v)?;
        }
        match page.last() {
            Some((k, _)) if page.len() == PAGE => {
                b = k.clone();
                b.push(0);
            }
            _ => return Ok(()),
        }
    }
}

/// What the counters should say, counted from the records themselves.
struct Counted {
    stats: [i64; 5],
    drives: std::collections::BTreeMap<u16, i64>,
    /// The unreferenced index's keys.
    unreferenced: Vec<Vec<u8>>,
}

/// Counts what the counters count (heads, versions, contents, drive-shard entries) and lists
/// the unreferenced contents, a page per transaction.
fn count(kv: &dyn Kv) -> Result<Counted> {
    let mut st = [0i64; 5];
    scan(kv, keys::tag::HEAD, |_, v| {
        let h: HeadRec = decode(v)?;
        st[Stat::Objects as usize] += i64::from(h.newest.is_some_and(|n| !n.delete_marker));
        Ok(())
    })?;
    scan(kv, keys::tag::VERSION, |_, _| {
        st[Stat::Versions as usize] += 1;
        Ok(())
    })?;
    let mut unreferenced = Vec::new();
    scan(kv, keys::tag::CONTENT, |k, v| {
        let c = decode_content(v)?;
        if let Ok(h) = <[u8; 32]>::try_from(&k[1..]) {
            unreferenced.extend(unreferenced_key(&h, &c));
        }
        st[Stat::Contents as usize] += 1;
        st[Stat::ContentBytes as usize] += c.size_bytes as i64;
        st[Stat::StoredBytes as usize] += c.stored_bytes() as i64;
        Ok(())
    })?;
    let mut drives: std::collections::BTreeMap<u16, i64> = Default::default();
    scan(kv, keys::tag::DRIVE_SHARD, |k, _| {
        if let Some(d) = k.get(1..3) {
            *drives.entry(u16::from_be_bytes([d[0], d[1]])).or_default() += 1;
        }
        Ok(())
    })?;
    Ok(Counted {
        stats: st,
        drives,
        unreferenced,
    })
}

/// Upgrades a format-1 key space: [`count`]s, then sets the counters, the unreferenced index
/// and format 2 in one transaction. It runs when a process opens the store, before it serves;
/// writes by another process meanwhile would make the counts drift, so upgrade with the
/// cluster stopped.
fn recount(kv: &dyn Kv) -> Result<()> {
    let c = count(kv)?;
    run(kv, true, |tx| {
        for s in Stat::ALL {
            tx.set(&keys::stat(s), &c.stats[s as usize].to_le_bytes())?;
        }
        for (d, n) in &c.drives {
            tx.set(&keys::drive_count(*d), &n.to_le_bytes())?;
        }
        for u in &c.unreferenced {
            tx.set(u, &[])?;
        }
        tx.set(&keys::format(), &keys::FORMAT_VERSION.to_le_bytes())?;
        Ok(())
    })
}

/// Every counter and index compared with a count from the records (read only; exact while no
/// write runs): the cluster-wide counters, the per-drive shard counters and the unreferenced
/// index. Returns the differences, one line each (empty: all agree).
pub fn audit(kv: &dyn Kv) -> Result<Vec<String>> {
    let c = count(kv)?;
    let mut out = Vec::new();
    let st = stats(kv)?;
    let have = [
        st.objects,
        st.versions,
        st.contents,
        st.content_bytes,
        st.stored_bytes,
    ];
    for s in Stat::ALL {
        if have[s as usize] != c.stats[s as usize] {
            out.push(format!(
                "{s:?}: counter {} but {} counted",
                have[s as usize], c.stats[s as usize]
            ));
        }
    }
    let mut counters: std::collections::BTreeMap<u16, i64> = Default::default();
    scan(kv, keys::tag::DRIVE_COUNT, |k, v| {
        if let Some(d) = k.get(1..3) {
            counters.insert(u16::from_be_bytes([d[0], d[1]]), crate::kv::counter(v));
        }
        Ok(())
    })?;
    let drives: std::collections::BTreeSet<u16> =
        counters.keys().chain(c.drives.keys()).copied().collect();
    for d in drives {
        let (n, counted) = (
            counters.get(&d).copied().unwrap_or(0),
            c.drives.get(&d).copied().unwrap_or(0),
        );
        if n != counted {
            out.push(format!(
                "drive {d}: counter {n} but {counted} shards indexed"
            ));
        }
    }
    let mut index = Vec::new();
    scan(kv, keys::tag::UNREFERENCED, |k, _| {
        index.push(k.to_vec());
        Ok(())
    })?;
    let mut want = c.unreferenced;
    want.sort();
    if index != want {
        out.push(format!(
            "unreferenced index: {} entries but {} contents unreferenced",
            index.len(),
            want.len()
        ));
    }
    Ok(out)
}

/// Every bucket's name, in name order.
pub fn buckets(kv: &dyn Kv) -> Result<Vec<String>> {
    Ok(bucket_list(kv)?.into_iter().map(|(n, _)| n).collect())
}

pub fn bucket_exists(kv: &dyn Kv, bucket: &str) -> Result<bool> {
    run(kv, false, |tx| Ok(tx.get(&keys::bucket(bucket))?.is_some()))
}

/// Every bucket with its creation time (ms), in name order.
pub fn bucket_list(kv: &dyn Kv) -> Result<Vec<(String, u64)>> {
    run(kv, false, |tx| {
        let (b, e) = keys::buckets();
        let mut out = Vec::new();
        for (k, v) in tx.get_range(&b, &e, usize::MAX, false)? {
            if let Some(name) = k
                .strip_prefix(&[keys::tag::BUCKET])
                .and_then(|r| r.strip_suffix(&[0]))
            {
                let rec: BucketRec = decode(&v)?;
                out.push((String::from_utf8_lossy(name).into_owned(), rec.created_ms));
            }
        }
        Ok(out)
    })
}

/// Adds an S3 access key; refused if the id or the name is taken.
pub fn key_create(kv: &dyn Kv, id: &str, rec: &AccessKeyRec) -> Result<()> {
    run(kv, true, |tx| {
        if tx.get(&keys::access_key(id))?.is_some() {
            return Err(MetaError::Refused(format!("the access key {id} exists")));
        }
        let (b, e) = keys::access_keys();
        for (_, v) in tx.get_range(&b, &e, usize::MAX, false)? {
            let other: AccessKeyRec = decode(&v)?;
            if other.name == rec.name {
                return Err(MetaError::Refused(format!(
                    "a key is named {:?} already",
                    rec.name
                )));
            }
        }
        put(tx, &keys::access_key(id), rec)
    })
}

pub fn key_get(kv: &dyn Kv, id: &str) -> Result<Option<AccessKeyRec>> {
    run(kv, false, |tx| get(tx, &keys::access_key(id)))
}

/// Every S3 access key besides `root`, by id.
pub fn key_list(kv: &dyn Kv) -> Result<Vec<(String, AccessKeyRec)>> {
    run(kv, false, |tx| {
        let (b, e) = keys::access_keys();
        let mut out = Vec::new();
        for (k, v) in tx.get_range(&b, &e, usize::MAX, false)? {
            let id = String::from_utf8_lossy(&k[1..]).into_owned();
            out.push((id, decode(&v)?));
        }
        Ok(out)
    })
}

/// Removes the access key with this id or name; `false` if there is none.
pub fn key_revoke(kv: &dyn Kv, id_or_name: &str) -> Result<bool> {
    run(kv, true, |tx| {
        let (b, e) = keys::access_keys();
        for (k, v) in tx.get_range(&b, &e, usize::MAX, false)? {
            let rec: AccessKeyRec = decode(&v)?;
            if k[1..] == *id_or_name.as_bytes() || rec.name == id_or_name {
                tx.clear(&k)?;
                return Ok(true);
            }
        }
        Ok(false)
    })
}

/// Deletes a bucket that holds no version of any key (delete markers count, as in S3), with
/// its retention override, versioning setting, and the heads and null-version pointers its
/// keys left. A transaction of a bounded size: one range read of one key, three range clears. The `default` bucket, where the native API writes, stays.
pub fn delete_bucket(kv: &dyn Kv, bucket: &str) -> Result<()> {
    run(kv, true, |tx| {
        require_bucket(tx, bucket)?;
        if bucket == "default" {
            return Err(MetaError::Refused(
                "the default bucket is where the native API writes: it cannot be deleted".into(),
            ));
        }
        let (b, e) = keys::bucket_versions(bucket);
        if !tx.get_range(&b, &e, 1, false)?.is_empty() {
            return Err(MetaError::BucketNotEmpty);
        }
        // Heads of keys whose versions were all deleted keep only their last version number.
        let (b, e) = keys::heads_with_prefix(bucket, "");
        tx.clear_range(&b, &e)?;
        let (b, e) = keys::bucket_null_versions(bucket);
        tx.clear_range(&b, &e)?;
        tx.clear(&keys::bucket(bucket))?;
        tx.clear(&keys::retention(Some(bucket)))?;
        tx.clear(&keys::bucket_versioning(bucket))?;
        Ok(())
    })
}

/// Creates a bucket; returns false if it already existed.
pub fn create_bucket(kv: &dyn Kv, bucket: &str, now_ms: u64) -> Result<bool> {
    run(kv, true, |tx| {
        if tx.get(&keys::bucket(bucket))?.is_some() {
            return Ok(false);
        }
        put(tx, &keys::bucket(bucket), &BucketRec { created_ms: now_ms })?;
        Ok(true)
    })
}

/// Records the shard files an upload (or repair) is about to write.
pub fn begin_intent(
    kv: &dyn Kv,
    id: u64,
    shards: &[ShardLoc],
    owner: Owner,
    now_ms: u64,
) -> Result<()> {
    run(kv, true, |tx| {
        if tx.get(&keys::intent(id))?.is_none() {
            let rec = IntentRec {
                created_ms: now_ms,
                shards: shards.to_vec(),
                state: IntentState::WritingBy(owner),
            };
            put(tx, &keys::intent(id), &rec)?;
        }
        Ok(())
    })
}

/// Marks an intent whose writer gave up, leaving files it could not delete: the sweep deletes
/// them once their nodes answer. An intent already committed is left as it is.
pub fn abandon_intent(kv: &dyn Kv, id: u64) -> Result<()> {
    run(kv, true, |tx| {
        if let Some(mut rec) = get::<IntentRec>(tx, &keys::intent(id))? {
            if matches!(rec.state, IntentState::Writing | IntentState::WritingBy(_)) {
                rec.state = IntentState::Abandoned;
                put(tx, &keys::intent(id), &rec)?;
            }
        }
        Ok(())
    })
}

/// Forgets an intent whose files are now either referenced or deleted.
pub fn end_intent(kv: &dyn Kv, id: u64) -> Result<()> {
    run(kv, true, |tx| Ok(tx.clear(&keys::intent(id))?))
}

/// One intent, if present.
pub fn intent(kv: &dyn Kv, id: u64) -> Result<Option<IntentRec>> {
    run(kv, false, |tx| get(tx, &keys::intent(id)))
}

/// How long after its commit an intent is left to the request that made it (which ends it, or
/// deletes its spare files, itself) while its process lives.
pub const COMMITTED_INTENT_GRACE_MS: u64 = 30_000;

/// An intent still being written this long is taken as abandoned whoever wrote it (a safety
/// net: intents name their owner, and are resolved when it restarts or is evacuated).
pub const WRITING_INTENT_AGE_MAX_MS: u64 = 24 * 3600 * 1000;

/// An intent as the sweep sees it at `now_ms` (`lifecycle::Sweep`); `owner_gone` says that the
/// process that wrote it is known to be gone (it restarted, or its node was evacuated).
pub fn sweep_seen(rec: &IntentRec, now_ms: u64, owner_gone: bool) -> SweepSeen {
    let age = now_ms.saturating_sub(rec.created_ms);
    match rec.state {
        IntentState::Abandoned => SweepSeen::Abandoned,
        IntentState::Committed { adopted, .. } => SweepSeen::Committed {
            adopted,
            settled: owner_gone || age >= COMMITTED_INTENT_GRACE_MS,
        },
        IntentState::WritingBy(_) | IntentState::Writing => SweepSeen::Writing {
            writer_gone: owner_gone || age > WRITING_INTENT_AGE_MAX_MS,
        },
    }
}

/// An intent's state as `engine::lifecycle` sees it once the intent was fenced
/// ([`abandon_intent`]) and read back. A state still writing cannot follow a fence that
/// succeeded: it reads as gone, so nothing is touched.
pub fn intent_fate(state: Option<IntentState>) -> IntentFate {
    match state {
        Some(IntentState::Committed {
            version,
            created_ms,
            adopted,
        }) => IntentFate::Committed {
            version,
            created_ms,
            adopted,
        },
        Some(IntentState::Abandoned) => IntentFate::Abandoned,
        _ => IntentFate::Gone,
    }
}

/// Every intent left over (for cleanup at start-up).
pub fn intents(kv: &dyn Kv) -> Result<Vec<(u64, IntentRec)>> {
    run(kv, false, |tx| {
        let (b, e) = keys::intents();
        let mut out = Vec::new();
        for (k, v) in tx.get_range(&b, &e, usize::MAX, false)? {
            let id = u64::from_be_bytes(
                k[1..9]
                    .try_into()
                    .map_err(|_| RecordError("intent key".into()))?,
            );
            out.push((id, decode(&v)?));
        }
        Ok(out)
    })
}

// The parts of a version, each its own argument at every call site.
#[allow(clippy::too_many_arguments)]
pub(crate) fn append_version(
    tx: &mut dyn Tx,
    bucket: &str,
    key: &str,
    now_ms: u64,
    size_bytes: u64,
    blake3: [u8; 32],
    delete_marker: bool,
    attrs: &ObjectAttrs,
) -> Result<Appended> {
    if attrs.header_bytes() > ATTRS_BYTES_MAX {
        return Err(MetaError::Refused(format!(
            "a version keeps at most {ATTRS_BYTES_MAX} bytes of headers"
        )));
    }
    let hk = keys::head(bucket, key);
    let mut head: HeadRec = get(tx, &hk)?.unwrap_or(HeadRec {
        last_version: 0,
        newest: None,
    });
    let v = VersionRec {
        version: head.last_version + 1,
        created_ms: now_ms,
        size_bytes,
        blake3,
        delete_marker,
        attrs: attrs.clone(),
    };
    put(tx, &keys::version(bucket, key, v.version), &v)?;
    let was_live = head.newest.as_ref().is_some_and(|n| !n.delete_marker);
    stat(tx, Stat::Versions, 1)?;
    stat(
        tx,
        Stat::Objects,
        i64::from(!delete_marker) - i64::from(was_live),
    )?;
    // Versioning suspended: the new version is the key's null version, and the one before it
    // (if any) goes, as `delete_version` would remove it. It is never the new newest, so the
    // head and the live count are already right.
    let null = suspended(tx, bucket)?;
    if null {
        if let Some(old) = null_version(tx, bucket, key)? {
            let ok = keys::version(bucket, key, old);
            if let Some(o) = get::<VersionRec>(tx, &ok)? {
                // The pointer is set to the new version just below.
                remove_version(tx, bucket, key, &ok, &o, None, now_ms)?;
            }
        }
        tx.set(&keys::null_version(bucket, key), &v.version.to_le_bytes())?;
    }
    head.last_version = v.version;
    head.newest = Some(v.clone());
    put(tx, &hk, &head)?;
    Ok(Appended {
        version: v.version,
        null,
    })
}

/// Removes the record `v` of a version of `key` (stored under `vk`): it no longer counts, its
/// content loses the reference, and the null-version pointer (`null`, its value) is cleared if
/// it names `v`. The key's head is the caller's to update.
fn remove_version(
    tx: &mut dyn Tx,
    bucket: &str,
    key: &str,
    vk: &[u8],
    v: &VersionRec,
    null: Option<u64>,
    now_ms: u64,
) -> Result<()> {
    tx.clear(vk)?;
    if null == Some(v.version) {
        tx.clear(&keys::null_version(bucket, key))?;
    }
    stat(tx, Stat::Versions, -1)?;
    if !v.delete_marker {
        drop_ref(tx, &v.blake3, now_ms)?;
    }
    Ok(())
}

/// A version just added: its number, and whether it is the key's null version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Appended {
    pub version: u64,
    pub null: bool,
}

/// The version number that names a key's null version (S3's `versionId=null`) wherever a
/// version is asked for; real versions count up from 1 and never reach it.
pub const NULL_VERSION: u64 = u64::MAX;

/// Whether `bucket`'s versioning is suspended.
fn suspended(tx: &mut dyn Tx, bucket: &str) -> Result<bool> {
    Ok(tx
        .get(&keys::bucket_versioning(bucket))?
        .is_some_and(|v| v.first() == Some(&1)))
}

/// Which version of `key` its null-version pointer names (it may point at a version removed by
/// retention's trimming since).
fn null_version(tx: &mut dyn Tx, bucket: &str, key: &str) -> Result<Option<u64>> {
    tx.get(&keys::null_version(bucket, key))?
        .map(|v| {
            v.as_slice()
                .try_into()
                .map(u64::from_le_bytes)
                .map_err(|_| RecordError("a null-version pointer is a u64".into()).into())
        })
        .transpose()
}

/// The version `version` names: itself, or for [`NULL_VERSION`] the key's null version.
fn named_version(tx: &mut dyn Tx, bucket: &str, key: &str, version: u64) -> Result<u64> {
    if version != NULL_VERSION {
        return Ok(version);
    }
    null_version(tx, bucket, key)?.ok_or(MetaError::NoSuchVersion)
}

/// Suspends (or enables again) `bucket`'s versioning. While suspended, each new version of a
/// key replaces the key's null version; the versions written before are kept either way.
pub fn set_versioning(kv: &dyn Kv, bucket: &str, suspend: bool) -> Result<()> {
    run(kv, true, |tx| {
        require_bucket(tx, bucket)?;
        let k = keys::bucket_versioning(bucket);
        if suspend {
            tx.set(&k, &[1])?;
        } else {
            tx.clear(&k)?;
        }
        Ok(())
    })
}

/// Whether `bucket`'s versioning is suspended.
pub fn versioning_suspended(kv: &dyn Kv, bucket: &str) -> Result<bool> {
    run(kv, false, |tx| {
        require_bucket(tx, bucket)?;
        suspended(tx, bucket)
    })
}

pub(crate) fn add_ref(tx: &mut dyn Tx, blake3: &[u8; 32]) -> Result<bool> {
    let ck = keys::content(blake3);
    let Some(before) = get_content(tx, &ck)? else {
        return Ok(false);
    };
    let mut c = before.clone();
    c.refs += 1;
    c.unreferenced_since_ms = None;
    put_content(tx, blake3, Some(&before), &c)?;
    Ok(true)
}

pub(crate) fn drop_ref(tx: &mut dyn Tx, blake3: &[u8; 32], now_ms: u64) -> Result<()> {
    let ck = keys::content(blake3);
    if let Some(before) = get_content(tx, &ck)? {
        let mut c = before.clone();
        c.refs = c.refs.saturating_sub(1);
        if c.refs == 0 {
            c.unreferenced_since_ms = Some(now_ms);
        }
        put_content(tx, blake3, Some(&before), &c)?;
    }
    Ok(())
}

fn require_bucket(tx: &mut dyn Tx, bucket: &str) -> Result<()> {
    if tx.get(&keys::bucket(bucket))?.is_none() {
        return Err(MetaError::NoSuchBucket);
    }
    Ok(())
}

/// A precondition on a write, checked in the same transaction that commits it (RFC 9110
/// `If-Match` / `If-None-Match` against the ETag of the key's live version).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WriteCondition {
    #[default]
    Always,
    /// `If-None-Match: *`: only if the key has no live version.
    IfAbsent,
    /// `If-Match: *`: only if the key has a live version.
    IfPresent,
    /// `If-Match: "e", ...`: only if the live version's content is one of these.
    IfMatch(Vec<[u8; 32]>),
    /// `If-None-Match: "e", ...`: only if the live version's content is none of these.
    IfNoneMatch(Vec<[u8; 32]>),
    /// Only if the live version's [`VersionRec::tag`] is one of these (S3's `If-Match`, whose
    /// ETags are MD5s).
    IfTagMatch(Vec<[u8; 16]>),
    /// Only if the live version's [`VersionRec::tag`] is none of these.
    IfTagNoneMatch(Vec<[u8; 16]>),
}

impl WriteCondition {
    fn check(&self, tx: &mut dyn Tx, bucket: &str, key: &str) -> Result<()> {
        if *self == WriteCondition::Always {
            return Ok(());
        }
        let head: Option<HeadRec> = get(tx, &keys::head(bucket, key))?;
        let live = head.and_then(|h| h.newest).filter(|v| !v.delete_marker);
        let ok = match (self, live) {
            (WriteCondition::Always, _) => true,
            (WriteCondition::IfAbsent, l) => l.is_none(),
            (WriteCondition::IfPresent, l) => l.is_some(),
            (WriteCondition::IfMatch(list), Some(v)) => list.contains(&v.blake3),
            (WriteCondition::IfNoneMatch(list), Some(v)) => !list.contains(&v.blake3),
            (WriteCondition::IfTagMatch(list), Some(v)) => list.contains(&v.tag()),
            (WriteCondition::IfTagNoneMatch(list), Some(v)) => !list.contains(&v.tag()),
            (WriteCondition::IfMatch(_) | WriteCondition::IfTagMatch(_), None) => false,
            (WriteCondition::IfNoneMatch(_) | WriteCondition::IfTagNoneMatch(_), None) => true,
        };
        if ok {
            Ok(())
        } else {
            Err(MetaError::PreconditionFailed)
        }
    }
}

/// Checks a write condition inside a transaction that commits the write.
pub(crate) fn check_condition_in(
    tx: &mut dyn Tx,
    bucket: &str,
    key: &str,
    cond: &WriteCondition,
) -> Result<()> {
    cond.check(tx, bucket, key)
}

/// Evaluates a write condition now, outside the commit (to refuse before receiving a body).
pub fn check_condition(kv: &dyn Kv, bucket: &str, key: &str, cond: &WriteCondition) -> Result<()> {
    run(kv, false, |tx| {
        require_bucket(tx, bucket)?;
        cond.check(tx, bucket, key)
    })
}

/// The content a new version will refer to.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NewContent {
    pub blake3: [u8; 32],
    pub size_bytes: u64,
    pub stored: Stored,
    pub encoding: Encoding,
    pub tree: Tree,
}

/// What the intent of a commit says before it is made: the commit landed already (its
/// outcome, for a retry after an unknown result), or the intent to mark committed with it.
pub(crate) enum Prior {
    Done(PutOutcome),
    Open(Option<(u64, IntentRec)>),
}

pub(crate) fn intent_prior(tx: &mut dyn Tx, intent: Option<u64>) -> Result<Prior> {
    let Some(id) = intent else {
        return Ok(Prior::Open(None));
    };
    let rec: IntentRec = get(tx, &keys::intent(id))?.ok_or(MetaError::NoSuchUpload)?;
    // Given up (by the writer, or by the sweep for a writer taken as gone): its files are
    // being deleted.
    if rec.state == IntentState::Abandoned {
        return Err(MetaError::NoSuchUpload);
    }
    if let IntentState::Committed {
        version,
        created_ms,
        adopted,
    } = rec.state
    {
        return Ok(Prior::Done(PutOutcome {
            version,
            created_ms,
            deduplicated: !adopted,
            // Unknown after the fact; start-up deletes the listed files in any case.
            replaced_damaged: false,
            null: false,
        }));
    }
    Ok(Prior::Open(Some((id, rec))))
}

/// Marks the intent of a commit committed, in the commit's transaction.
pub(crate) fn finish_intent(
    tx: &mut dyn Tx,
    open: Option<(u64, IntentRec)>,
    version: u64,
    deduplicated: bool,
    now_ms: u64,
) -> Result<()> {
    if let Some((id, mut rec)) = open {
        rec.state = IntentState::Committed {
            version,
            created_ms: now_ms,
            adopted: !deduplicated,
        };
        put(tx, &keys::intent(id), &rec)?;
    }
    Ok(())
}

/// Whether a stored copy is to be replaced by the same bytes written again rather than
/// deduplicated against: it is damaged, or stored in shard files without the BLAKE3 tree its
/// reads would verify (written before trees) while the new copy has one.
fn superseded(old: &ContentRec, new_tree: Tree) -> bool {
    old.damaged
        || (old.tree == Tree::None
            && new_tree == Tree::Outboard
            && matches!(old.stored, Stored::Sharded { .. }))
}

/// Takes one reference to `content`: to the stored copy when there is one not
/// [`superseded`] (deduplicated: the new shard files are not adopted), else to a new record
/// of it, which replaces the old copy. Returns (deduplicated, replaced an older copy).
pub(crate) fn store_content(
    tx: &mut dyn Tx,
    content: &NewContent,
    now_ms: u64,
) -> Result<(bool, bool)> {
    let ck = keys::content(&content.blake3);
    let existing = get_content(tx, &ck)?;
    let deduplicated = existing
        .as_ref()
        .is_some_and(|c| !superseded(c, content.tree));
    if deduplicated {
        add_ref(tx, &content.blake3)?;
        return Ok((true, false));
    }
    // New content, or a damaged or tree-less copy that these fresh bytes replace.
    let replaced_damaged = existing.is_some();
    let refs = existing.as_ref().map_or(0, |c| c.refs);
    if let Some(old) = &existing {
        count_content(tx, old, -1)?;
    }
    if let Some(Stored::Sharded { shards, .. }) = existing.as_ref().map(|c| &c.stored) {
        for s in shards {
            unindex_shard(tx, s.drive, &content.blake3, s.index)?;
        }
        // The old files are garbage now: an intent makes sure they are deleted.
        let rec = IntentRec {
            created_ms: now_ms,
            shards: shards.clone(),
            state: IntentState::Committed {
                version: 0,
                created_ms: 0,
                adopted: false,
            },
        };
        put(tx, &keys::intent(replaced_intent(&content.blake3)), &rec)?;
    }
    let rec = ContentRec {
        size_bytes: content.size_bytes,
        refs: refs + 1,
        created_ms: now_ms,
        unreferenced_since_ms: None,
        stored: content.stored.clone(),
        damaged: false,
        encoding: content.encoding,
        tree: content.tree,
    };
    put_content(tx, &content.blake3, existing.as_ref(), &rec)?;
    count_content(tx, &rec, 1)?;
    if let Stored::Sharded { shards, .. } = &content.stored {
        for s in shards {
            index_shard(tx, s.drive, &content.blake3, s.index)?;
        }
    }
    Ok((false, replaced_damaged))
}

/// Commits a new version of `key`. With `intent`, the call is idempotent: a retry after an
/// unknown commit result returns the first outcome. If the content already exists its
/// reference count grows and the new shard files are not adopted.
#[allow(clippy::too_many_arguments)]
pub fn commit_put(
    kv: &dyn Kv,
    bucket: &str,
    key: &str,
    intent: Option<u64>,
    content: &NewContent,
    cond: &WriteCondition,
    attrs: &ObjectAttrs,
    now_ms: u64,
) -> Result<PutOutcome> {
    run(kv, true, |tx| {
        require_bucket(tx, bucket)?;
        let open = match intent_prior(tx, intent)? {
            Prior::Done(o) => return Ok(o),
            Prior::Open(open) => open,
        };
        cond.check(tx, bucket, key)?;
        let (deduplicated, replaced_damaged) = store_content(tx, content, now_ms)?;
        let v = append_version(
            tx,
            bucket,
            key,
            now_ms,
            content.size_bytes,
            content.blake3,
            false,
            attrs,
        )?;
        finish_intent(tx, open, v.version, deduplicated, now_ms)?;
        Ok(PutOutcome {
            version: v.version,
            created_ms: now_ms,
            deduplicated,
            replaced_damaged,
            null: v.null,
        })
    })
}

/// Commits a new version whose content is already stored, without its body. Returns `None` if
/// the content is unknown (the caller then reads the body).
pub fn put_existing(
    kv: &dyn Kv,
    bucket: &str,
    key: &str,
    blake3: &[u8; 32],
    cond: &WriteCondition,
    attrs: &ObjectAttrs,
    now_ms: u64,
) -> Result<Option<PutOutcome>> {
    run(kv, true, |tx| {
        require_bucket(tx, bucket)?;
        let Some(c) = get_content(tx, &keys::content(blake3))? else {
            return Ok(None);
        };
        if superseded(&c, Tree::Outboard) {
            // Ask for the body: it will replace the damaged (or tree-less) copy.
            return Ok(None);
        }
        cond.check(tx, bucket, key)?;
        add_ref(tx, blake3)?;
        let v = append_version(tx, bucket, key, now_ms, c.size_bytes, *blake3, false, attrs)?;
        Ok(Some(PutOutcome {
            version: v.version,
            created_ms: now_ms,
            deduplicated: true,
            replaced_damaged: false,
            null: v.null,
        }))
    })
}

/// Appends a delete marker. Returns it, or `None` when the key has no live version (deleting
/// what is not there changes nothing).
pub fn delete_key(kv: &dyn Kv, bucket: &str, key: &str, now_ms: u64) -> Result<Option<Appended>> {
    run(kv, true, |tx| {
        require_bucket(tx, bucket)?;
        let head: Option<HeadRec> = get(tx, &keys::head(bucket, key))?;
        match head.and_then(|h| h.newest) {
            Some(n) if !n.delete_marker => {
                let v = append_version(
                    tx,
                    bucket,
                    key,
                    now_ms,
                    0,
                    [0; 32],
                    true,
                    &ObjectAttrs::default(),
                )?;
                Ok(Some(v))
            }
            _ => Ok(None),
        }
    })
}

/// Removes one version for good (or the null version, [`NULL_VERSION`]), dropping its content
/// reference.
pub fn delete_version(
    kv: &dyn Kv,
    bucket: &str,
    key: &str,
    version: u64,
    now_ms: u64,
) -> Result<()> {
    run(kv, true, |tx| {
        require_bucket(tx, bucket)?;
        let null = null_version(tx, bucket, key)?;
        let version = match version {
            NULL_VERSION => null.ok_or(MetaError::NoSuchVersion)?,
            n => n,
        };
        let vk = keys::version(bucket, key, version);
        let v: VersionRec = get(tx, &vk)?.ok_or(MetaError::NoSuchVersion)?;
        remove_version(tx, bucket, key, &vk, &v, null, now_ms)?;
        let hk = keys::head(bucket, key);
        let mut head: HeadRec = get(tx, &hk)?.ok_or(MetaError::NoSuchKey)?;
        let live = |h: &HeadRec| h.newest.as_ref().is_some_and(|n| !n.delete_marker);
        let was_live = live(&head);
        let (b, e) = keys::versions(bucket, key);
        let newest = tx.get_range(&b, &e, 1, false)?;
        head.newest = match newest.first() {
            Some((_, val)) => Some(decode(val)?),
            None => None,
        };
        stat(
            tx,
            Stat::Objects,
            i64::from(live(&head)) - i64::from(was_live),
        )?;
        put(tx, &hk, &head)?;
        Ok(())
    })
}

/// Part references per value of an assembled content's part list.
pub const PARTS_PER_CHUNK: usize = 1_000;

/// Writes the part list of the content assembled from parts `blake3`.
pub(crate) fn put_part_list(tx: &mut dyn Tx, blake3: &[u8; 32], parts: &[PartRef]) -> Result<()> {
    for (i, chunk) in parts.chunks(PARTS_PER_CHUNK).enumerate() {
        put(tx, &keys::content_parts(blake3, i as u32), &chunk.to_vec())?;
    }
    Ok(())
}

/// The part list of the content assembled from parts `blake3`.
pub fn part_list(tx: &mut dyn Tx, blake3: &[u8; 32]) -> Result<Vec<PartRef>> {
    let (b, e) = keys::content_parts_all(blake3);
    let mut out = Vec::new();
    for (_, v) in tx.get_range(&b, &e, usize::MAX, false)? {
        let chunk: Vec<PartRef> = decode(&v)?;
        out.extend(chunk);
    }
    Ok(out)
}

/// A version and the content it refers to.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Resolved {
    pub version: VersionRec,
    /// The version is the key's null version.
    pub null: bool,
    pub content: ContentRec,
    /// The parts of a content assembled from parts, in order (empty otherwise).
    pub parts: Vec<PartRef>,
}

/// Looks up the newest version (or `version`, [`NULL_VERSION`] for the null one) of a key. A
/// delete marker reads as missing.
pub fn resolve(kv: &dyn Kv, bucket: &str, key: &str, version: Option<u64>) -> Result<Resolved> {
    run(kv, false, |tx| {
        require_bucket(tx, bucket)?;
        let v: VersionRec = match version {
            Some(n) => {
                let n = named_version(tx, bucket, key, n)?;
                get(tx, &keys::version(bucket, key, n))?.ok_or(MetaError::NoSuchVersion)?
            }
            None => {
                let head: HeadRec =
                    get(tx, &keys::head(bucket, key))?.ok_or(MetaError::NoSuchKey)?;
                head.newest.ok_or(MetaError::NoSuchKey)?
            }
        };
        if v.delete_marker {
            return Err(if version.is_some() {
                MetaError::NoSuchVersion
            } else {
                MetaError::NoSuchKey
            });
        }
        let content = get_content(tx, &keys::content(&v.blake3))?.ok_or_else(|| {
            RecordError(format!("version {} refers to missing content", v.version))
        })?;
        let parts = match content.stored {
            Stored::Parts { .. } => part_list(tx, &v.blake3)?,
            _ => Vec::new(),
        };
        let null = null_version(tx, bucket, key)? == Some(v.version);
        Ok(Resolved {
            version: v,
            null,
            content,
            parts,
        })
    })
}

/// Every version of a key, newest first; `None` if the key never existed.
pub fn versions(kv: &dyn Kv, bucket: &str, key: &str) -> Result<Option<Vec<VersionRec>>> {
    run(kv, false, |tx| {
        require_bucket(tx, bucket)?;
        if tx.get(&keys::head(bucket, key))?.is_none() {
            return Ok(None);
        }
        let (b, e) = keys::versions(bucket, key);
        let mut out = Vec::new();
        for (_, v) in tx.get_range(&b, &e, usize::MAX, false)? {
            out.push(decode(&v)?);
        }
        Ok(Some(out))
    })
}

/// The prefix `key` rolls up into in a listing under `prefix` with `delimiter` (S3's common
/// prefixes: up to and including the delimiter's first occurrence after the prefix), if any.
pub(crate) fn rolled_up(key: &str, prefix: &str, delimiter: Option<&str>) -> Option<String> {
    let d = delimiter?;
    let i = key.get(prefix.len()..)?.find(d)?;
    Some(key[..prefix.len() + i + d.len()].to_string())
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListPage {
    pub objects: Vec<(String, VersionRec)>,
    /// Pass as `start_after` to continue; `None` at the end.
    pub next_start_after: Option<String>,
}

/// One entry of a delimited listing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Listed {
    /// A key and its newest version (never a delete marker).
    Object(String, VersionRec),
    /// Keys rolled up at the delimiter: the prefix, the delimiter included.
    Prefix(String),
}

/// A page of a delimited listing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DelimitedPage {
    pub entries: Vec<Listed>,
    /// Pass as `start_after` to continue (a key, or a rolled-up prefix); `None` at the end.
    pub next_start_after: Option<String>,
}

/// One entry of a version listing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum VersionListed {
    /// A version (or delete marker) of `key`; `latest` when it is the key's newest, `null`
    /// when it is the key's null version.
    Version {
        key: String,
        version: VersionRec,
        latest: bool,
        null: bool,
    },
    /// Keys rolled up at the delimiter: the prefix, the delimiter included.
    Prefix(String),
}

/// A page of a version listing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VersionPage {
    pub entries: Vec<VersionListed>,
    /// Where the next page starts (a key marker and, inside that key, the version to list
    /// after); `None` at the end.
    pub next: Option<(String, Option<u64>)>,
}

/// Every version of the keys under `prefix`, delete markers included, in key byte order and
/// newest first within a key, with keys that contain `delimiter` after the prefix rolled up
/// (S3's ListObjectVersions). The listing starts after `key_marker`'s versions, or with
/// `version_marker` inside `key_marker` after that version. Entries and prefixes both count
/// towards `limit`.
pub fn list_versions(
    kv: &dyn Kv,
    bucket: &str,
    prefix: &str,
    delimiter: Option<&str>,
    key_marker: Option<&str>,
    version_marker: Option<u64>,
    limit: usize,
) -> Result<VersionPage> {
    let limit = limit.clamp(1, LIST_LIMIT_MAX);
    let delimiter = delimiter.filter(|d| !d.is_empty());
    run(kv, false, |tx| {
        require_bucket(tx, bucket)?;
        let (mut begin, end) = keys::versions_with_prefix(bucket, prefix);
        match (key_marker, version_marker) {
            (Some(km), Some(vm)) => {
                let vm = named_version(tx, bucket, km, vm)?;
                let mut after = keys::version(bucket, km, vm);
                after.push(0);
                begin = begin.max(after);
            }
            (Some(km), None) => begin = begin.max(keys::versions(bucket, km).1),
            _ => {}
        }
        let mut entries: Vec<VersionListed> = Vec::new();
        let mut more = false;
        // The newest and the null version of the key last looked at.
        let mut newest: Option<(String, Option<u64>, Option<u64>)> = None;
        'scan: loop {
            let chunk = tx.get_range(&begin, &end, limit + 1, false)?;
            let n = chunk.len();
            for (k, val) in chunk {
                let (key, _) = keys::key_of_version(bucket, &k)
                    .ok_or_else(|| RecordError("version key".into()))?;
                let rolled = rolled_up(key, prefix, delimiter);
                let entry = match &rolled {
                    // A prefix up to the marker was listed on an earlier page.
                    Some(cp) if key_marker.is_some_and(|km| cp.as_str() <= km) => None,
                    Some(cp) => Some(VersionListed::Prefix(cp.clone())),
                    None => {
                        let v: VersionRec = decode(&val)?;
                        if newest.as_ref().is_none_or(|(k, _, _)| k != key) {
                            let head: Option<HeadRec> = get(tx, &keys::head(bucket, key))?;
                            let n = head.and_then(|h| h.newest).map(|n| n.version);
                            newest = Some((key.to_string(), n, null_version(tx, bucket, key)?));
                        }
                        let (latest, null) = newest.as_ref().map_or((false, false), |(_, n, z)| {
                            (*n == Some(v.version), *z == Some(v.version))
                        });
                        Some(VersionListed::Version {
                            key: key.to_string(),
                            version: v,
                            latest,
                            null,
                        })
                    }
                };
                if let Some(e) = entry {
                    if entries.len() == limit {
                        more = true;
                        break 'scan;
                    }
                    entries.push(e);
                }
                if let Some(cp) = rolled {
                    // Every version under a rolled-up prefix is behind it: seek past them.
                    begin = keys::versions_with_prefix(bucket, &cp).1;
                    continue 'scan;
                }
                begin = k;
                begin.push(0);
            }
            if n < limit + 1 {
                break;
            }
        }
        let next = if more {
            entries.last().map(|e| match e {
                VersionListed::Version { key, version, .. } => (key.clone(), Some(version.version)),
                VersionListed::Prefix(p) => (p.clone(), None),
            })
        } else {
            None
        };
        Ok(VersionPage { entries, next })
    })
}

/// Keys under `prefix` whose newest version is not a delete marker, in key byte order, with
/// the keys that contain `delimiter` after the prefix rolled up into one entry per common
/// prefix (S3's ListObjects). Entries and prefixes both count towards `limit`. A prefix not
/// after `start_after` is skipped whole, so a page may end on a prefix and the next begin
/// after every key under it. Reads at most `limit` + 1 live heads per chunk, and seeks past a
/// rolled-up prefix instead of reading its keys.
pub fn list_delimited(
    kv: &dyn Kv,
    bucket: &str,
    prefix: &str,
    delimiter: Option<&str>,
    start_after: Option<&str>,
    limit: usize,
) -> Result<DelimitedPage> {
    let limit = limit.clamp(1, LIST_LIMIT_MAX);
    let delimiter = delimiter.filter(|d| !d.is_empty());
    run(kv, false, |tx| {
        require_bucket(tx, bucket)?;
        let (mut begin, end) = keys::heads_with_prefix(bucket, prefix);
        if let Some(sa) = start_after {
            let mut after = keys::head(bucket, sa);
            after.push(0);
            begin = begin.max(after);
        }
        let mut entries = Vec::new();
        let mut more = false;
        'scan: loop {
            let chunk = tx.get_range(&begin, &end, limit + 1, false)?;
            let n = chunk.len();
            for (k, v) in chunk {
                let key =
                    keys::key_of_head(bucket, &k).ok_or_else(|| RecordError("head key".into()))?;
                let head: HeadRec = decode(&v)?;
                let Some(newest) = head.newest.filter(|n| !n.delete_marker) else {
                    // Deleted: it lists nothing and rolls up no prefix.
                    begin = k;
                    begin.push(0);
                    continue;
                };
                let rolled = rolled_up(key, prefix, delimiter);
                // Every key under a rolled-up prefix is behind it: the scan seeks past them.
                let skip_to = rolled
                    .as_ref()
                    .map(|cp| keys::heads_with_prefix(bucket, cp).1);
                let entry = match rolled {
                    // A prefix up to `start_after` was listed on an earlier page.
                    Some(cp) if start_after.is_some_and(|sa| cp.as_str() <= sa) => None,
                    Some(cp) => Some(Listed::Prefix(cp)),
                    None => Some(Listed::Object(key.to_string(), newest)),
                };
                if let Some(e) = entry {
                    if entries.len() == limit {
                        more = true;
                        break 'scan;
                    }
                    entries.push(e);
                }
                if let Some(b) = skip_to {
                    begin = b;
                    continue 'scan;
                }
                begin = k;
                begin.push(0);
            }
            if n < limit + 1 {
                break;
            }
        }
        let next_start_after = if more {
            entries.last().map(|e| match e {
                Listed::Object(k, _) => k.clone(),
                Listed::Prefix(p) => p.clone(),
            })
        } else {
            None
        };
        Ok(DelimitedPage {
            entries,
            next_start_after,
        })
    })
}

/// Keys whose newest version is not a delete marker, in key byte order (a listing without a
/// delimiter).
pub fn list(
    kv: &dyn Kv,
    bucket: &str,
    prefix: &str,
    start_after: Option<&str>,
    limit: usize,
) -> Result<ListPage> {
    let page = list_delimited(kv, bucket, prefix, None, start_after, limit)?;
    Ok(ListPage {
        objects: page
            .entries
            .into_iter()
            .filter_map(|e| match e {
                Listed::Object(k, v) => Some((k, v)),
                Listed::Prefix(_) => None,
            })
            .collect(),
        next_start_after: page.next_start_after,
    })
}

pub fn content(kv: &dyn Kv, blake3: &[u8; 32]) -> Result<Option<ContentRec>> {
    run(kv, false, |tx| get_content(tx, &keys::content(blake3)))
}

/// Points a content at its rebuilt or moved shards `new`, all in one transaction, and turns the
/// repair's intent into the list of files no longer referenced (the old copies; or the new
/// ones, if the content went away meanwhile). Each new shard replaces the one of its index only
/// if that slot still holds `replaced` (the location it was made from, same order as `new`):
/// a slot that another repair or move changed meanwhile keeps its shard, and the new one is
/// garbage. Returns that list: the caller deletes the files, then ends the intent. A crash in
/// between leaves the intent, and start-up deletes them. Idempotent.
pub fn replace_shards(
    kv: &dyn Kv,
    blake3: &[u8; 32],
    new: &[ShardLoc],
    replaced: &[ShardLoc],
    intent: u64,
) -> Result<Vec<ShardLoc>> {
    run(kv, true, |tx| {
        let ik = keys::intent(intent);
        let mut rec: IntentRec = get(tx, &ik)?.ok_or(MetaError::NoSuchUpload)?;
        if matches!(rec.state, IntentState::Committed { .. }) {
            return Ok(rec.shards);
        }
        if rec.state == IntentState::Abandoned {
            return Err(MetaError::NoSuchUpload);
        }
        let ck = keys::content(blake3);
        let mut content = get_content(tx, &ck)?;
        let mut garbage = Vec::new();
        match content.as_mut().map(|c| &mut c.stored) {
            Some(Stored::Sharded { shards, .. }) => {
                for (i, n) in new.iter().enumerate() {
                    let expected = replaced.get(i);
                    match shards.iter_mut().find(|s| s.index == n.index) {
                        Some(slot) if *slot != *n && expected.is_some_and(|e| *slot != *e) => {
                            garbage.push(*n);
                        }
                        Some(slot) if *slot != *n => {
                            let old = *slot;
                            *slot = *n;
                            unindex_shard(tx, old.drive, blake3, old.index)?;
                            index_shard(tx, n.drive, blake3, n.index)?;
                            garbage.push(old);
                        }
                        Some(_) => {}
                        None => garbage.push(*n),
                    }
                }
            }
            _ => garbage.extend_from_slice(new),
        }
        if let Some(c) = &content {
            // Only the locations changed: references, and so the unreferenced index, did not.
            put_content(tx, blake3, Some(c), c)?;
        }
        rec.shards = garbage.clone();
        rec.state = IntentState::Committed {
            version: 0,
            created_ms: 0,
            adopted: false,
        };
        put(tx, &ik, &rec)?;
        Ok(garbage)
    })
}

/// Sets (or with `None` removes) the number of versions kept per key: the cluster default, or
/// one bucket's override.
pub fn set_retention(kv: &dyn Kv, bucket: Option<&str>, keep: Option<u32>) -> Result<()> {
    run(kv, true, |tx| {
        if let Some(b) = bucket {
            require_bucket(tx, b)?;
        }
        let k = keys::retention(bucket);
        match keep {
            Some(n) => tx.set(&k, &n.to_le_bytes())?,
            None => tx.clear(&k)?,
        }
        Ok(())
    })
}

/// The versions kept per key in `bucket`: its override, else the cluster default, else all.
pub fn retention(kv: &dyn Kv, bucket: &str) -> Result<Option<u32>> {
    run(kv, false, |tx| {
        let read = |v: Vec<u8>| -> Result<u32> {
            Ok(u32::from_le_bytes(
                v.as_slice()
                    .try_into()
                    .map_err(|_| RecordError("retention is a u32".into()))?,
            ))
        };
        if let Some(v) = tx.get(&keys::retention(Some(bucket)))? {
            return Ok(Some(read(v)?));
        }
        tx.get(&keys::retention(None))?.map(read).transpose()
    })
}

/// Applies retention to one page of up to `limit` keys of `bucket` after `after`: each key keeps
/// its newest `keep` versions, delete markers counting as versions; the older ones are removed
/// as `delete_version` would (their content loses a reference, GC reclaims it). The newest
/// version is never removed, so what a key reads as does not change. Returns the versions
/// removed and where the next page starts.
pub fn trim_versions(
    kv: &dyn Kv,
    bucket: &str,
    after: Option<&str>,
    limit: usize,
    keep: u32,
    now_ms: u64,
) -> Result<(u64, Option<String>)> {
    let keep = keep.max(1) as usize;
    let keys_page: Vec<String> = run(kv, false, |tx| {
        let (mut b, e) = keys::heads_with_prefix(bucket, "");
        if let Some(a) = after {
            b = keys::head(bucket, a);
            b.push(0);
        }
        let mut out = Vec::new();
        for (k, _) in tx.get_range(&b, &e, limit, false)? {
            if let Some(key) = keys::key_of_head(bucket, &k) {
                out.push(key.to_string());
            }
        }
        Ok::<_, MetaError>(out)
    })?;
    let mut removed = 0;
    for key in &keys_page {
        removed += run(kv, true, |tx| {
            let (b, e) = keys::versions(bucket, key);
            let null = null_version(tx, bucket, key)?;
            let mut n: u64 = 0;
            for (k, v) in tx
                .get_range(&b, &e, usize::MAX, false)?
                .into_iter()
                .skip(keep)
            {
                remove_version(tx, bucket, key, &k, &decode(&v)?, null, now_ms)?;
                n += 1;
            }
            // The newest version always stays: the key's liveness does not change.
            Ok::<_, MetaError>(n)
        })?;
    }
    let next = (keys_page.len() == limit)
        .then(|| keys_page.last().cloned())
        .flatten();
    Ok((removed, next))
}

/// Where a page of garbage-collection candidates ends: (unreferenced since, content).
pub type GcCursor = (u64, [u8; 32]);

/// Garbage-collection candidates of one page, and where the next page starts.
pub type GcPage = (Vec<[u8; 32]>, Option<GcCursor>);

/// Contents (at most `limit`, after `after`) that have had no reference since
/// `unreferenced_by_ms` or earlier, read from the unreferenced index (`[0x32]`), so a pass costs
/// what there is to collect, not the number of contents; and where the next page starts.
pub fn gc_candidates(
    kv: &dyn Kv,
    after: Option<GcCursor>,
    limit: usize,
    unreferenced_by_ms: u64,
) -> Result<GcPage> {
    run(kv, false, |tx| {
        let (mut b, e) = keys::unreferenced_until(unreferenced_by_ms.saturating_add(1));
        if let Some((t, h)) = after {
            b = keys::unreferenced(t, &h);
            b.push(0);
        }
        let page = tx.get_range(&b, &e, limit, false)?;
        let mut picked = Vec::with_capacity(page.len());
        let mut last = None;
        for (k, _) in &page {
            let (t, h) = keys::parse_unreferenced(k)
                .ok_or_else(|| RecordError("unreferenced key".into()))?;
            picked.push(h);
            last = Some((t, h));
        }
        Ok((picked, if page.len() == limit { last } else { None }))
    })
}

/// Garbage-collects content `blake3` if it still has no reference, and has had none since
/// `unreferenced_by_ms` or earlier: its record, drive-shard entries and repair entry go, and its
/// shard files become the garbage intent `intent` (deleted by the caller, or at start-up) — all
/// in one transaction, so a concurrent PUT of the same bytes either referenced it first (and it
/// stays) or finds it gone (and keeps its own files). Returns the removed record, or `None`.
pub fn collect(
    kv: &dyn Kv,
    blake3: &[u8; 32],
    intent: u64,
    unreferenced_by_ms: u64,
    now_ms: u64,
) -> Result<Option<ContentRec>> {
    run(kv, true, |tx| {
        let ck = keys::content(blake3);
        let Some(c) = get_content(tx, &ck)? else {
            return Ok(None);
        };
        if c.refs > 0
            || c.unreferenced_since_ms
                .is_none_or(|t| t > unreferenced_by_ms)
        {
            return Ok(None);
        }
        tx.clear(&ck)?;
        if let Some(u) = unreferenced_key(blake3, &c) {
            tx.clear(&u)?;
        }
        tx.clear(&keys::repair(blake3))?;
        tx.clear(&keys::moving(blake3))?;
        count_content(tx, &c, -1)?;
        if let Stored::Sharded { shards, .. } = &c.stored {
            for s in shards {
                unindex_shard(tx, s.drive, blake3, s.index)?;
            }
            let garbage = IntentRec {
                created_ms: now_ms,
                shards: shards.clone(),
                state: IntentState::Committed {
                    version: 0,
                    created_ms: 0,
                    adopted: false,
                },
            };
            put(tx, &keys::intent(intent), &garbage)?;
        }
        if let Stored::Parts { .. } = &c.stored {
            // Its parts lose the references it held; GC takes them in a later pass.
            for p in part_list(tx, blake3)? {
                drop_ref(tx, &p.blake3, now_ms)?;
            }
            let (b, e) = keys::content_parts_all(blake3);
            tx.clear_range(&b, &e)?;
        }
        Ok(Some(c))
    })
}

/// Up to `limit` content records after `after`, in hash order.
pub fn contents(
    kv: &dyn Kv,
    after: Option<[u8; 32]>,
    limit: usize,
) -> Result<Vec<([u8; 32], ContentRec)>> {
    run(kv, false, |tx| {
        let (mut b, e) = keys::contents();
        if let Some(h) = after {
            b = keys::content(&h);
            b.push(0);
        }
        let mut out = Vec::new();
        for (k, v) in tx.get_range(&b, &e, limit, false)? {
            let h: [u8; 32] = k[1..]
                .try_into()
                .map_err(|_| RecordError("content key".into()))?;
            out.push((h, decode_content(&v)?));
        }
        Ok(out)
    })
}

pub fn drive(kv: &dyn Kv, id: u16) -> Result<Option<DriveRec>> {
    run(kv, false, |tx| get(tx, &keys::drive(id)))
}

pub fn set_drive(kv: &dyn Kv, id: u16, rec: &DriveRec) -> Result<()> {
    run(kv, true, |tx| put(tx, &keys::drive(id), rec))
}

/// The cluster-wide counters (kept by the transactions that change what they count).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Keys whose newest version is not a delete marker.
    pub objects: i64,
    /// Versions, delete markers included.
    pub versions: i64,
    /// Distinct contents (after deduplication).
    pub contents: i64,
    /// Their bytes as clients see them.
    pub content_bytes: i64,
    /// Their bytes as stored, before parity.
    pub stored_bytes: i64,
}

pub fn stats(kv: &dyn Kv) -> Result<Stats> {
    run(kv, false, |tx| {
        let mut v = [0i64; 5];
        for (i, s) in Stat::ALL.iter().enumerate() {
            v[i] = tx
                .get(&keys::stat(*s))?
                .map_or(0, |b| crate::kv::counter(&b));
        }
        Ok(Stats {
            objects: v[Stat::Objects as usize],
            versions: v[Stat::Versions as usize],
            contents: v[Stat::Contents as usize],
            content_bytes: v[Stat::ContentBytes as usize],
            stored_bytes: v[Stat::StoredBytes as usize],
        })
    })
}

/// How many shards each of `drives` holds (their counters).
pub fn drive_shard_counts(kv: &dyn Kv, drives: &[u16]) -> Result<Vec<i64>> {
    run(kv, false, |tx| {
        let mut out = Vec::with_capacity(drives.len());
        for d in drives {
            out.push(
                tx.get(&keys::drive_count(*d))?
                    .map_or(0, |b| crate::kv::counter(&b)),
            );
        }
        Ok(out)
    })
}

/// Up to `limit` (content, shard) pairs held by `drive`, after `after`.
pub fn shards_on_drive(
    kv: &dyn Kv,
    drive: u16,
    after: Option<([u8; 32], u8)>,
    limit: usize,
) -> Result<Vec<([u8; 32], u8)>> {
    run(kv, false, |tx| {
        let (mut b, e) = keys::drive_shards(drive);
        if let Some((h, i)) = after {
            b = keys::drive_shard(drive, &h, i);
            b.push(0);
        }
        let mut out = Vec::new();
        for (k, _) in tx.get_range(&b, &e, limit, false)? {
            out.push(
                keys::parse_drive_shard(&k).ok_or_else(|| RecordError("drive-shard key".into()))?,
            );
        }
        Ok(out)
    })
}

/// The two work queues of contents: shards to rebuild, and good shards to move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WorkQueue {
    /// Shards missing, corrupt or on a lost drive: rebuilt from the others.
    Repair,
    /// Shards to move (a draining node, rebalancing, two on one node): copied as they are.
    Move,
}

impl WorkQueue {
    fn key(self, blake3: &[u8; 32]) -> Vec<u8> {
        match self {
            WorkQueue::Repair => keys::repair(blake3),
            WorkQueue::Move => keys::moving(blake3),
        }
    }

    fn range(self) -> (Vec<u8>, Vec<u8>) {
        match self {
            WorkQueue::Repair => keys::repairs(),
            WorkQueue::Move => keys::movings(),
        }
    }
}

/// Queues contents for repair. Every call renews the request (a new `nonce`), so a repair that
/// started before it does not clear it.
pub fn queue_repair(kv: &dyn Kv, contents: &[[u8; 32]], nonce: u64, now_ms: u64) -> Result<()> {
    queue_work(kv, WorkQueue::Repair, contents, nonce, now_ms)
}

/// Queues contents in `q` (see [`queue_repair`]).
pub fn queue_work(
    kv: &dyn Kv,
    q: WorkQueue,
    contents: &[[u8; 32]],
    nonce: u64,
    now_ms: u64,
) -> Result<()> {
    run(kv, true, |tx| {
        for h in contents {
            put(
                tx,
                &q.key(h),
                &RepairRec {
                    queued_ms: now_ms,
                    nonce,
                },
            )?;
        }
        Ok(())
    })
}

/// Up to `limit` contents queued in `q` from content `from` on (in content order), with the
/// nonce of their latest request: a node reads the part of the queue its hash share covers.
pub fn work_queue(
    kv: &dyn Kv,
    q: WorkQueue,
    from: &[u8; 32],
    limit: usize,
) -> Result<Vec<([u8; 32], u64)>> {
    run(kv, false, |tx| {
        let (_, e) = q.range();
        let b = q.key(from);
        let mut out = Vec::new();
        for (k, v) in tx.get_range(&b, &e, limit, false)? {
            let h: [u8; 32] = k[1..33]
                .try_into()
                .map_err(|_| RecordError("work queue key".into()))?;
            let rec: RepairRec = decode(&v)?;
            out.push((h, rec.nonce));
        }
        Ok(out)
    })
}

/// What waits in a work queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Backlog {
    /// Contents queued (counted up to the scan's limit).
    pub contents: u64,
    /// Shard bytes their repairs or moves read: every shard of each sharded content.
    pub bytes: u64,
    /// Whether the queue holds more than was counted.
    pub more: bool,
}

/// The first `limit` entries of `q`, and the shard bytes their work reads (a repair checks
/// every shard of a content; a move reads what it copies, counted the same way here).
pub fn work_backlog(kv: &dyn Kv, q: WorkQueue, limit: usize) -> Result<Backlog> {
    run(kv, false, |tx| {
        let (b, e) = q.range();
        let entries = tx.get_range(&b, &e, limit.saturating_add(1), false)?;
        let more = entries.len() > limit;
        let mut out = Backlog {
            more,
            ..Backlog::default()
        };
        for (k, _) in entries.into_iter().take(limit) {
            let h: [u8; 32] = k[1..33]
                .try_into()
                .map_err(|_| RecordError("work queue key".into()))?;
            out.contents += 1;
            if let Some(c) = get_content(tx, &keys::content(&h))? {
                if let Stored::Sharded { data, parity, .. } = &c.stored {
                    let total = *data as u64 + *parity as u64;
                    let per_shard = c.stored_bytes().div_ceil((*data).max(1) as u64);
                    out.bytes = out.bytes.saturating_add(per_shard.saturating_mul(total));
                }
            }
        }
        Ok(out)
    })
}

/// Clears a repair request, unless it was renewed since `nonce` was read.
pub fn repair_done(kv: &dyn Kv, blake3: &[u8; 32], nonce: u64) -> Result<()> {
    work_done(kv, WorkQueue::Repair, blake3, nonce)
}

/// Clears an entry of `q`, unless it was renewed since `nonce` was read.
pub fn work_done(kv: &dyn Kv, q: WorkQueue, blake3: &[u8; 32], nonce: u64) -> Result<()> {
    run(kv, true, |tx| {
        if let Some(rec) = get::<RepairRec>(tx, &q.key(blake3))? {
            if rec.nonce == nonce {
                tx.clear(&q.key(blake3))?;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redb_kv::RedbKv;

    fn kv() -> (tempfile::TempDir, RedbKv) {
        let d = tempfile::tempdir().unwrap();
        let kv = RedbKv::open(&d.path().join("m")).unwrap();
        init(&kv, 1).unwrap();
        (d, kv)
    }

    fn inline(b: &[u8]) -> NewContent {
        NewContent {
            encoding: Encoding::Identity,
            tree: Tree::None,
            blake3: *blake3_stub(b),
            size_bytes: b.len() as u64,
            stored: Stored::Inline(b.to_vec()),
        }
    }
    /// `n` shard locations on drives `drive0..`, all in file `file_id`.
    fn locs(n: u8, drive0: u16, file_id: u64) -> Vec<ShardLoc> {
        (0..n)
            .map(|i| ShardLoc {
                index: i,
                drive: drive0 + i as u16,
                file_id,
                file_tag: file_id as u32,
            })
            .collect()
    }

    fn blake3_stub(b: &[u8]) -> &'static [u8; 32] {
        // A distinct stand-in name per body; the real hash is computed by the data plane.
        Box::leak(Box::new([b.first().copied().unwrap_or(0); 32]))
    }

    #[test]
    fn the_sweep_sees_a_writer_gone_only_when_told_or_past_the_age_limit() {
        let rec = |state| IntentRec {
            created_ms: 1_000,
            shards: locs(2, 0, 9),
            state,
        };
        let writing = rec(IntentState::WritingBy(Owner { node: 1, boot: 2 }));
        let gone = |w| SweepSeen::Writing { writer_gone: w };
        assert_eq!(sweep_seen(&writing, 2_000, false), gone(false));
        assert_eq!(sweep_seen(&writing, 2_000, true), gone(true));
        let limit = 1_000 + WRITING_INTENT_AGE_MAX_MS;
        assert_eq!(sweep_seen(&writing, limit, false), gone(false));
        assert_eq!(sweep_seen(&writing, limit + 1, false), gone(true));
        assert_eq!(
            sweep_seen(&rec(IntentState::Writing), limit + 1, false),
            gone(true)
        );
        // A clock behind the intent's is no age at all.
        assert_eq!(sweep_seen(&writing, 0, false), gone(false));
        let committed = rec(IntentState::Committed {
            version: 3,
            created_ms: 1_000,
            adopted: false,
        });
        let settled = |s| SweepSeen::Committed {
            adopted: false,
            settled: s,
        };
        let grace = 1_000 + COMMITTED_INTENT_GRACE_MS;
        assert_eq!(sweep_seen(&committed, grace - 1, false), settled(false));
        assert_eq!(sweep_seen(&committed, grace, false), settled(true));
        assert_eq!(sweep_seen(&committed, 1_000, true), settled(true));
        assert_eq!(
            sweep_seen(&rec(IntentState::Abandoned), 0, false),
            SweepSeen::Abandoned
        );
    }

    #[test]
    fn delimited_listings_roll_up_prefixes_and_page_past_them() {
        let (_d, kv) = kv();
        for k in [
            "a.txt",
            "photos/1.jpg",
            "photos/2.jpg",
            "photos/2024/x.jpg",
            "photos/z",
            "videos/v.mp4",
            "zz",
        ] {
            commit_put(
                &kv,
                "default",
                k,
                None,
                &inline(k.as_bytes()),
                &WriteCondition::Always,
                &ObjectAttrs::default(),
                1,
            )
            .unwrap();
        }
        // A prefix whose only key is deleted is not listed.
        commit_put(
            &kv,
            "default",
            "gone/k",
            None,
            &inline(b"g"),
            &WriteCondition::Always,
            &ObjectAttrs::default(),
            1,
        )
        .unwrap();
        delete_key(&kv, "default", "gone/k", 2).unwrap();
        let names = |p: &DelimitedPage| -> Vec<String> {
            p.entries
                .iter()
                .map(|e| match e {
                    Listed::Object(k, _) => k.clone(),
                    Listed::Prefix(p) => format!("{p}*"),
                })
                .collect()
        };
        let all = list_delimited(&kv, "default", "", Some("/"), None, 1000).unwrap();
        assert_eq!(names(&all), ["a.txt", "photos/*", "videos/*", "zz"]);
        assert_eq!(all.next_start_after, None);
        let under = list_delimited(&kv, "default", "photos/", Some("/"), None, 1000).unwrap();
        assert_eq!(
            names(&under),
            ["photos/1.jpg", "photos/2.jpg", "photos/2024/*", "photos/z"]
        );
        // Pages of two: a page may end on a prefix; the next begins after all of its keys.
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let p = list_delimited(&kv, "default", "", Some("/"), after.as_deref(), 2).unwrap();
            seen.extend(names(&p));
            match p.next_start_after {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, ["a.txt", "photos/*", "videos/*", "zz"]);
        // Without a delimiter: every live key.
        let flat = list_delimited(&kv, "default", "photos/", None, None, 1000).unwrap();
        assert_eq!(flat.entries.len(), 4);
        // A multi-byte delimiter.
        let p = list_delimited(&kv, "default", "", Some("to"), None, 1000).unwrap();
        assert!(names(&p).contains(&"photo*".to_string()), "{:?}", names(&p));
    }

    #[test]
    fn version_listings_show_every_version_and_marker_and_page_inside_a_key() {
        let (_d, kv) = kv();
        let put = |k: &str, b: &[u8], t| {
            commit_put(
                &kv,
                "default",
                k,
                None,
                &inline(b),
                &WriteCondition::Always,
                &ObjectAttrs::default(),
                t,
            )
            .unwrap()
        };
        put("a", b"1", 1);
        put("a", b"2", 2);
        delete_key(&kv, "default", "a", 3).unwrap();
        put("b", b"3", 4);
        put("d/x", b"4", 5);
        put("d/y", b"5", 6);
        put("e", b"6", 7);
        let names = |p: &VersionPage| -> Vec<String> {
            p.entries
                .iter()
                .map(|e| match e {
                    VersionListed::Version {
                        key,
                        version,
                        latest,
                        ..
                    } => format!(
                        "{key}@{}{}{}",
                        version.version,
                        if version.delete_marker { "x" } else { "" },
                        if *latest { "!" } else { "" }
                    ),
                    VersionListed::Prefix(p) => format!("{p}*"),
                })
                .collect()
        };
        let all = list_versions(&kv, "default", "", Some("/"), None, None, 1000).unwrap();
        assert_eq!(names(&all), ["a@3x!", "a@2", "a@1", "b@1!", "d/*", "e@1!"]);
        assert_eq!(all.next, None);
        let flat = list_versions(&kv, "default", "d/", None, None, None, 1000).unwrap();
        assert_eq!(names(&flat), ["d/x@1!", "d/y@1!"]);
        // Pages of two, continuing inside a key and after a prefix.
        let mut seen = Vec::new();
        let mut marker: Option<(String, Option<u64>)> = None;
        loop {
            let (km, vm) = match &marker {
                Some((k, v)) => (Some(k.as_str()), *v),
                None => (None, None),
            };
            let p = list_versions(&kv, "default", "", Some("/"), km, vm, 2).unwrap();
            seen.extend(names(&p));
            match p.next {
                Some(n) => marker = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, ["a@3x!", "a@2", "a@1", "b@1!", "d/*", "e@1!"]);
        // A key marker alone starts after all of that key's versions.
        let p = list_versions(&kv, "default", "", None, Some("a"), None, 1000).unwrap();
        assert_eq!(names(&p)[0], "b@1!");
        assert_eq!(
            list_versions(&kv, "nope", "", None, None, None, 10)
                .unwrap_err()
                .to_string(),
            MetaError::NoSuchBucket.to_string()
        );
    }

    #[test]
    fn a_bucket_is_deleted_only_once_empty() {
        let (_d, kv) = kv();
        assert!(create_bucket(&kv, "photos", 5).unwrap());
        assert!(!create_bucket(&kv, "photos", 6).unwrap());
        let names: Vec<(String, u64)> = bucket_list(&kv).unwrap();
        assert_eq!(names.len(), 2);
        assert_eq!(names[0].0, "default");
        assert_eq!(names[1], ("photos".to_string(), 5));
        commit_put(
            &kv,
            "photos",
            "k",
            None,
            &inline(b"x"),
            &WriteCondition::Always,
            &ObjectAttrs::default(),
            10,
        )
        .unwrap();
        assert!(matches!(
            delete_bucket(&kv, "photos"),
            Err(MetaError::BucketNotEmpty)
        ));
        // A delete marker is a version too.
        delete_key(&kv, "photos", "k", 11).unwrap();
        assert!(matches!(
            delete_bucket(&kv, "photos"),
            Err(MetaError::BucketNotEmpty)
        ));
        for v in versions(&kv, "photos", "k").unwrap().unwrap() {
            delete_version(&kv, "photos", "k", v.version, 12).unwrap();
        }
        delete_bucket(&kv, "photos").unwrap();
        assert!(!bucket_exists(&kv, "photos").unwrap());
        assert!(matches!(
            delete_bucket(&kv, "photos"),
            Err(MetaError::NoSuchBucket)
        ));
        assert!(matches!(
            delete_bucket(&kv, "default"),
            Err(MetaError::Refused(_))
        ));
        // Created again, it is empty.
        assert!(create_bucket(&kv, "photos", 20).unwrap());
        let (b, e) = keys::heads_with_prefix("photos", "");
        assert!(run(&kv, false, |tx| -> Result<_> {
            Ok(tx.get_range(&b, &e, 1, false)?)
        })
        .unwrap()
        .is_empty());
    }

    #[test]
    fn versions_increase_and_delete_markers_hide() {
        let (_d, kv) = kv();
        let a = commit_put(
            &kv,
            "default",
            "k",
            None,
            &inline(b"a"),
            &WriteCondition::Always,
            &ObjectAttrs::default(),
            10,
        )
        .unwrap();
        let b = commit_put(
            &kv,
            "default",
            "k",
            None,
            &inline(b"b"),
            &WriteCondition::Always,
            &ObjectAttrs::default(),
            11,
        )
        .unwrap();
        assert_eq!((a.version, b.version), (1, 2));
        assert_eq!(
            resolve(&kv, "default", "k", None).unwrap().content.stored,
            Stored::Inline(b"b".to_vec())
        );
        assert_eq!(
            delete_key(&kv, "default", "k", 12).unwrap(),
            Some(Appended {
                version: 3,
                null: false
            })
        );
        assert!(matches!(
            resolve(&kv, "default", "k", None),
            Err(MetaError::NoSuchKey)
        ));
        assert_eq!(
            resolve(&kv, "default", "k", Some(1))
                .unwrap()
                .version
                .version,
            1
        );
        let vs = versions(&kv, "default", "k").unwrap().unwrap();
        assert_eq!(
            vs.iter().map(|v| v.version).collect::<Vec<_>>(),
            vec![3, 2, 1]
        );
        delete_version(&kv, "default", "k", 3, 13).unwrap();
        assert_eq!(
            resolve(&kv, "default", "k", None).unwrap().version.version,
            2
        );
        delete_version(&kv, "default", "k", 2, 13).unwrap();
        let c = commit_put(
            &kv,
            "default",
            "k",
            None,
            &inline(b"c"),
            &WriteCondition::Always,
            &ObjectAttrs::default(),
            14,
        )
        .unwrap();
        assert_eq!(c.version, 4, "versions never reused");
        assert!(matches!(
            delete_version(&kv, "default", "k", 2, 15),
            Err(MetaError::NoSuchVersion)
        ));
        assert!(versions(&kv, "default", "never").unwrap().is_none());
    }

    #[test]
    fn suspended_versioning_keeps_one_null_version_per_key() {
        let (_d, kv) = kv();
        create_bucket(&kv, "b", 1).unwrap();
        let put = |body: &[u8], t: u64| {
            commit_put(
                &kv,
                "b",
                "k",
                None,
                &inline(body),
                &WriteCondition::Always,
                &ObjectAttrs::default(),
                t,
            )
            .unwrap()
        };
        let refs = |body: &[u8]| content(&kv, blake3_stub(body)).unwrap().unwrap().refs;
        let listed = || -> Vec<(u64, bool, bool)> {
            list_versions(&kv, "b", "", None, None, None, 100)
                .unwrap()
                .entries
                .into_iter()
                .map(|e| match e {
                    VersionListed::Version {
                        version,
                        latest,
                        null,
                        ..
                    } => (version.version, latest, null),
                    VersionListed::Prefix(p) => panic!("prefix {p}"),
                })
                .collect()
        };
        let a = put(b"a", 10);
        assert!(a.version == 1 && !a.null);
        assert!(!put(b"b", 10).null);
        assert!(!versioning_suspended(&kv, "b").unwrap());
        set_versioning(&kv, "b", true).unwrap();
        assert!(versioning_suspended(&kv, "b").unwrap());
        let x = put(b"x", 11);
        assert!(x.null && x.version == 3);
        assert_eq!(refs(b"x"), 1);
        // The next write replaces the null version: its content loses its reference.
        let y = put(b"y", 12);
        assert!(y.null && y.version == 4);
        assert_eq!(refs(b"x"), 0);
        assert_eq!(
            listed(),
            vec![(4, true, true), (2, false, false), (1, false, false)]
        );
        let r = resolve(&kv, "b", "k", Some(NULL_VERSION)).unwrap();
        assert!(r.null && r.version.version == 4);
        assert!(resolve(&kv, "b", "k", None).unwrap().null);
        assert!(!resolve(&kv, "b", "k", Some(2)).unwrap().null);
        // A delete marker made while suspended is the null version too.
        let m = delete_key(&kv, "b", "k", 13).unwrap().unwrap();
        assert_eq!(
            m,
            Appended {
                version: 5,
                null: true
            }
        );
        assert_eq!(refs(b"y"), 0);
        assert_eq!(
            listed(),
            vec![(5, true, true), (2, false, false), (1, false, false)]
        );
        // Enabled again: new versions are kept, the null one stays until deleted by name.
        set_versioning(&kv, "b", false).unwrap();
        let z = put(b"z", 14);
        assert!(!z.null && z.version == 6);
        assert_eq!(listed()[1], (5, false, true));
        // Listing after the null version by name.
        let after = list_versions(&kv, "b", "", None, Some("k"), Some(NULL_VERSION), 100).unwrap();
        assert_eq!(after.entries.len(), 2);
        delete_version(&kv, "b", "k", NULL_VERSION, 15).unwrap();
        assert!(matches!(
            resolve(&kv, "b", "k", Some(NULL_VERSION)),
            Err(MetaError::NoSuchVersion)
        ));
        assert!(matches!(
            delete_version(&kv, "b", "k", NULL_VERSION, 15),
            Err(MetaError::NoSuchVersion)
        ));
        assert_eq!(audit(&kv).unwrap(), Vec::<String>::new());
        // Retention may trim the null version: its pointer then names nothing.
        set_versioning(&kv, "b", true).unwrap();
        put(b"n", 16);
        set_versioning(&kv, "b", false).unwrap();
        put(b"o", 17);
        trim_versions(&kv, "b", None, 10, 1, 18).unwrap();
        assert!(matches!(
            resolve(&kv, "b", "k", Some(NULL_VERSION)),
            Err(MetaError::NoSuchVersion)
        ));
        // A deleted bucket takes its setting and pointers with it.
        set_versioning(&kv, "b", true).unwrap();
        put(b"p", 19);
        for v in versions(&kv, "b", "k").unwrap().unwrap() {
            delete_version(&kv, "b", "k", v.version, 20).unwrap();
        }
        set_versioning(&kv, "b", true).unwrap();
        delete_bucket(&kv, "b").unwrap();
        create_bucket(&kv, "b", 21).unwrap();
        assert!(!versioning_suspended(&kv, "b").unwrap());
        run(&kv, false, |tx| {
            let (lo, hi) = keys::bucket_null_versions("b");
            assert!(tx.get_range(&lo, &hi, 1, false)?.is_empty());
            Ok::<_, MetaError>(())
        })
        .unwrap();
        assert_eq!(audit(&kv).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn write_conditions_hold_atomically() {
        let (_d, kv) = kv();
        let a = inline(b"a");
        let put = |c: WriteCondition| {
            commit_put(
                &kv,
                "default",
                "k",
                None,
                &inline(b"z"),
                &c,
                &ObjectAttrs::default(),
                1,
            )
        };
        assert!(matches!(
            put(WriteCondition::IfPresent),
            Err(MetaError::PreconditionFailed)
        ));
        commit_put(
            &kv,
            "default",
            "k",
            None,
            &a,
            &WriteCondition::IfAbsent,
            &ObjectAttrs::default(),
            1,
        )
        .unwrap();
        assert!(matches!(
            put(WriteCondition::IfAbsent),
            Err(MetaError::PreconditionFailed)
        ));
        assert!(matches!(
            put(WriteCondition::IfMatch(vec![[7; 32]])),
            Err(MetaError::PreconditionFailed)
        ));
        assert!(matches!(
            put(WriteCondition::IfNoneMatch(vec![a.blake3])),
            Err(MetaError::PreconditionFailed)
        ));
        assert_eq!(
            versions(&kv, "default", "k").unwrap().unwrap().len(),
            1,
            "failed writes left versions"
        );
        put(WriteCondition::IfMatch(vec![a.blake3])).unwrap();
        delete_key(&kv, "default", "k", 2).unwrap();
        commit_put(
            &kv,
            "default",
            "k",
            None,
            &a,
            &WriteCondition::IfAbsent,
            &ObjectAttrs::default(),
            3,
        )
        .unwrap();
    }

    #[test]
    fn a_repair_request_renewed_during_repair_survives_it() {
        let (_d, kv) = kv();
        queue_repair(&kv, &[[1; 32]], 10, 1).unwrap();
        let q = work_queue(&kv, WorkQueue::Repair, &[0; 32], 10).unwrap();
        assert_eq!(q, vec![([1; 32], 10)]);
        queue_repair(&kv, &[[1; 32]], 11, 2).unwrap();
        repair_done(&kv, &[1; 32], 10).unwrap();
        assert_eq!(
            work_queue(&kv, WorkQueue::Repair, &[0; 32], 10).unwrap(),
            vec![([1; 32], 11)]
        );
        repair_done(&kv, &[1; 32], 11).unwrap();
        assert!(work_queue(&kv, WorkQueue::Repair, &[0; 32], 10)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_damaged_content_is_replaced_by_the_next_upload() {
        let (_d, kv) = kv();
        let old = locs(2, 0, 1);
        let c = |shards: Vec<ShardLoc>| NewContent {
            encoding: Encoding::Identity,
            tree: Tree::None,
            blake3: [6; 32],
            size_bytes: 50_000,
            stored: Stored::Sharded {
                data: 1,
                parity: 1,
                shards,
            },
        };
        commit_put(
            &kv,
            "default",
            "a",
            None,
            &c(old.clone()),
            &WriteCondition::Always,
            &ObjectAttrs::default(),
            1,
        )
        .unwrap();
        set_damaged(&kv, &[6; 32], true).unwrap();
        assert!(put_existing(
            &kv,
            "default",
            "b",
            &[6; 32],
            &WriteCondition::Always,
            &ObjectAttrs::default(),
            2
        )
        .unwrap()
        .is_none());
        let new = locs(2, 2, 2);
        let o = commit_put(
            &kv,
            "default",
            "b",
            None,
            &c(new.clone()),
            &WriteCondition::Always,
            &ObjectAttrs::default(),
            3,
        )
        .unwrap();
        assert!(
            !o.deduplicated,
            "fresh bytes must not be thrown away for a damaged copy"
        );
        let rec = content(&kv, &[6; 32]).unwrap().unwrap();
        assert_eq!((rec.refs, rec.damaged), (2, false));
        assert_eq!(
            rec.stored,
            Stored::Sharded {
                data: 1,
                parity: 1,
                shards: new
            }
        );
        assert!(shards_on_drive(&kv, 0, None, 10).unwrap().is_empty());
        let left = intents(&kv).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, replaced_intent(&[6; 32]));
        assert_eq!(
            left[0].1.shards, old,
            "the damaged copy's files are listed for deletion"
        );
    }

    #[test]
    fn a_copy_without_a_tree_is_replaced_by_the_next_upload_with_one() {
        let (_d, kv) = kv();
        let c = |shards: Vec<ShardLoc>, tree: Tree| NewContent {
            encoding: Encoding::Identity,
            tree,
            blake3: [7; 32],
            size_bytes: 50_000,
            stored: Stored::Sharded {
                data: 1,
                parity: 1,
                shards,
            },
        };
        let put = |key: &str, content: &NewContent, now: u64| {
            commit_put(
                &kv,
                "default",
                key,
                None,
                content,
                &WriteCondition::Always,
                &ObjectAttrs::default(),
                now,
            )
            .unwrap()
        };
        let old = locs(2, 0, 1);
        put("a", &c(old.clone(), Tree::None), 1);
        // A PUT that names the bytes without sending them is asked for them.
        assert!(put_existing(
            &kv,
            "default",
            "b",
            &[7; 32],
            &WriteCondition::Always,
            &ObjectAttrs::default(),
            2
        )
        .unwrap()
        .is_none());
        let new = locs(2, 2, 2);
        let o = put("b", &c(new.clone(), Tree::Outboard), 3);
        assert!(!o.deduplicated && o.replaced_damaged);
        let rec = content(&kv, &[7; 32]).unwrap().unwrap();
        assert_eq!((rec.refs, rec.tree), (2, Tree::Outboard));
        let left = intents(&kv).unwrap();
        assert_eq!(left[0].1.shards, old, "the old copy's files go");
        // Written again, with a tree or without, the copy with the tree stays.
        assert!(put("c", &c(locs(2, 4, 3), Tree::Outboard), 4).deduplicated);
        assert!(put("d", &c(locs(2, 6, 4), Tree::None), 5).deduplicated);
    }

    #[test]
    fn dedup_counts_references() {
        let (_d, kv) = kv();
        let x = inline(b"x");
        assert!(
            !commit_put(
                &kv,
                "default",
                "a",
                None,
                &x,
                &WriteCondition::Always,
                &ObjectAttrs::default(),
                1
            )
            .unwrap()
            .deduplicated
        );
        assert!(
            commit_put(
                &kv,
                "default",
                "b",
                None,
                &x,
                &WriteCondition::Always,
                &ObjectAttrs::default(),
                1
            )
            .unwrap()
            .deduplicated
        );
        assert!(put_existing(
            &kv,
            "default",
            "c",
            &x.blake3,
            &WriteCondition::Always,
            &ObjectAttrs::default(),
            1
        )
        .unwrap()
        .is_some());
        assert!(put_existing(
            &kv,
            "default",
            "d",
            &[9; 32],
            &WriteCondition::Always,
            &ObjectAttrs::default(),
            1
        )
        .unwrap()
        .is_none());
        assert_eq!(content(&kv, &x.blake3).unwrap().unwrap().refs, 3);
        delete_version(&kv, "default", "a", 1, 5).unwrap();
        delete_version(&kv, "default", "b", 1, 5).unwrap();
        delete_version(&kv, "default", "c", 1, 6).unwrap();
        let c = content(&kv, &x.blake3).unwrap().unwrap();
        assert_eq!((c.refs, c.unreferenced_since_ms), (0, Some(6)));
    }

    const OWNER: Owner = Owner { node: 0, boot: 9 };

    const ONE_SHARD: ShardLoc = ShardLoc {
        index: 0,
        drive: 0,
        file_id: 1,
        file_tag: 2,
    };

    /// A 1+1 content whose one listed shard is [`ONE_SHARD`].
    fn one_shard_content(blake3: [u8; 32]) -> NewContent {
        NewContent {
            encoding: Encoding::Identity,
            tree: Tree::None,
            blake3,
            size_bytes: 100_000,
            stored: Stored::Sharded {
                data: 1,
                parity: 1,
                shards: vec![ONE_SHARD],
            },
        }
    }

    #[test]
    fn the_backlog_counts_queued_contents_and_the_shard_bytes_they_read() {
        let (_d, kv) = kv();
        let c = one_shard_content([3; 32]);
        commit_put(
            &kv,
            "default",
            "k",
            None,
            &c,
            &WriteCondition::Always,
            &ObjectAttrs::default(),
            1,
        )
        .unwrap();
        let i = inline(b"tiny");
        commit_put(
            &kv,
            "default",
            "i",
            None,
            &i,
            &WriteCondition::Always,
            &ObjectAttrs::default(),
            1,
        )
        .unwrap();
        assert_eq!(
            work_backlog(&kv, WorkQueue::Repair, 10).unwrap(),
            Backlog::default()
        );
        // A sharded content (1+1, 100 000 bytes: two shards of 100 000), an inline one, and
        // one no longer known.
        queue_repair(&kv, &[[3; 32], i.blake3, [9; 32]], 1, 1).unwrap();
        let b = work_backlog(&kv, WorkQueue::Repair, 10).unwrap();
        assert_eq!(
            b,
            Backlog {
                contents: 3,
                bytes: 200_000,
                more: false
            }
        );
        let b = work_backlog(&kv, WorkQueue::Repair, 2).unwrap();
        assert_eq!((b.contents, b.more), (2, true));
        assert_eq!(
            work_backlog(&kv, WorkQueue::Move, 10).unwrap(),
            Backlog::default()
        );
    }

    #[test]
    fn an_abandoned_intent_cannot_be_committed() {
        let (_d, kv) = kv();
        let loc = ONE_SHARD;
        begin_intent(&kv, 5, &[loc], OWNER, 1).unwrap();
        assert_eq!(
            intent(&kv, 5).unwrap().unwrap().state,
            IntentState::WritingBy(OWNER)
        );
        abandon_intent(&kv, 5).unwrap();
        assert_eq!(
            intent(&kv, 5).unwrap().unwrap().state,
            IntentState::Abandoned
        );
        let c = one_shard_content([4; 32]);
        assert!(matches!(
            commit_put(
                &kv,
                "default",
                "k",
                Some(5),
                &c,
                &WriteCondition::Always,
                &ObjectAttrs::default(),
                2
            ),
            Err(MetaError::NoSuchUpload)
        ));
        assert!(content(&kv, &[4; 32]).unwrap().is_none());
        // A committed intent stays committed.
        begin_intent(&kv, 6, &[loc], OWNER, 1).unwrap();
        commit_put(
            &kv,
            "default",
            "k",
            Some(6),
            &c,
            &WriteCondition::Always,
            &ObjectAttrs::default(),
            3,
        )
        .unwrap();
        abandon_intent(&kv, 6).unwrap();
        assert!(matches!(
            intent(&kv, 6).unwrap().unwrap().state,
            IntentState::Committed { adopted: true, .. }
        ));
    }

    #[test]
    fn commit_with_intent_is_idempotent() {
        let (_d, kv) = kv();
        let loc = ONE_SHARD;
        begin_intent(&kv, 7, &[loc], OWNER, 1).unwrap();
        let c = one_shard_content([3; 32]);
        let a = commit_put(
            &kv,
            "default",
            "k",
            Some(7),
            &c,
            &WriteCondition::Always,
            &ObjectAttrs::default(),
            2,
        )
        .unwrap();
        let b = commit_put(
            &kv,
            "default",
            "k",
            Some(7),
            &c,
            &WriteCondition::Always,
            &ObjectAttrs::default(),
            3,
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(versions(&kv, "default", "k").unwrap().unwrap().len(), 1);
        assert_eq!(content(&kv, &[3; 32]).unwrap().unwrap().refs, 1);
        assert_eq!(
            shards_on_drive(&kv, 0, None, 10).unwrap(),
            vec![([3; 32], 0)]
        );
        assert!(matches!(
            commit_put(
                &kv,
                "default",
                "k",
                Some(8),
                &c,
                &WriteCondition::Always,
                &ObjectAttrs::default(),
                3
            ),
            Err(MetaError::NoSuchUpload)
        ));
    }

    #[test]
    fn a_format_1_store_is_recounted_when_opened() {
        let (_d, kv) = kv();
        init(&kv, 1).unwrap();
        let c = NewContent {
            encoding: Encoding::Identity,
            tree: Tree::None,
            blake3: [6; 32],
            size_bytes: 100_000,
            stored: Stored::Sharded {
                data: 2,
                parity: 1,
                shards: locs(3, 0, 1),
            },
        };
        commit_put(
            &kv,
            "default",
            "a",
            None,
            &c,
            &WriteCondition::Always,
            &ObjectAttrs::default(),
            2,
        )
        .unwrap();
        commit_put(
            &kv,
            "default",
            "b",
            None,
            &c,
            &WriteCondition::Always,
            &ObjectAttrs::default(),
            2,
        )
        .unwrap();
        delete_key(&kv, "default", "b", 3).unwrap();
        // A content whose only version is removed: unreferenced since 5.
        let lone = NewContent {
            blake3: [7; 32],
            stored: Stored::Inline(vec![1; 10]),
            size_bytes: 10,
            encoding: Encoding::Identity,
            tree: Tree::None,
        };
        commit_put(
            &kv,
            "default",
            "c",
            None,
            &lone,
            &WriteCondition::Always,
            &ObjectAttrs::default(),
            4,
        )
        .unwrap();
        delete_version(&kv, "default", "c", 1, 5).unwrap();
        assert_eq!(
            gc_candidates(&kv, None, 10, 5).unwrap(),
            (vec![[7; 32]], None)
        );
        assert_eq!(gc_candidates(&kv, None, 10, 4).unwrap(), (vec![], None));
        let want = stats(&kv).unwrap();
        let counts = drive_shard_counts(&kv, &[0, 1, 2]).unwrap();
        assert_eq!((want.objects, want.versions, want.contents), (1, 3, 2));
        // Counters kept by the transactions agree with a count from the records.
        assert_eq!(audit(&kv).unwrap(), Vec::<String>::new());
        // As a format-1 store would be: no counters, no unreferenced index.
        run(&kv, true, |tx| {
            tx.clear_range(&[keys::tag::UNREFERENCED], &[keys::tag::UNREFERENCED + 1])?;
            tx.clear_range(&[keys::tag::STAT], &[keys::tag::STAT + 1])?;
            tx.clear_range(&[keys::tag::DRIVE_COUNT], &[keys::tag::DRIVE_COUNT + 1])?;
            tx.set(&keys::format(), &1u32.to_le_bytes())?;
            Ok::<_, MetaError>(())
        })
        .unwrap();
        assert_eq!(stats(&kv).unwrap(), Stats::default());
        assert_eq!(gc_candidates(&kv, None, 10, 5).unwrap(), (vec![], None));
        // The audit sees every counter that is off, and the missing index entry.
        let off = audit(&kv).unwrap();
        assert!(
            off.iter()
                .any(|l| l.starts_with("Versions: counter 0 but 3")),
            "{off:?}"
        );
        assert!(off.iter().any(|l| l.starts_with("drive 0:")), "{off:?}");
        assert!(
            off.iter().any(|l| l.starts_with("unreferenced index")),
            "{off:?}"
        );
        init(&kv, 4).unwrap();
        assert_eq!(audit(&kv).unwrap(), Vec::<String>::new());
        assert_eq!(
            gc_candidates(&kv, None, 10, 5).unwrap(),
            (vec![[7; 32]], None)
        );
        assert_eq!(stats(&kv).unwrap(), want);
        assert_eq!(drive_shard_counts(&kv, &[0, 1, 2]).unwrap(), counts);
    }

    #[test]
    fn replacing_shards_is_atomic_and_idempotent() {
        let (_d, kv) = kv();
        let old = locs(3, 0, 1);
        begin_intent(&kv, 1, &old, OWNER, 1).unwrap();
        let c = NewContent {
            encoding: Encoding::Identity,
            tree: Tree::None,
            blake3: [5; 32],
            size_bytes: 100_000,
            stored: Stored::Sharded {
                data: 2,
                parity: 1,
                shards: old.clone(),
            },
        };
        commit_put(
            &kv,
            "default",
            "k",
            Some(1),
            &c,
            &WriteCondition::Always,
            &ObjectAttrs::default(),
            2,
        )
        .unwrap();
        end_intent(&kv, 1).unwrap();
        let new = [ShardLoc {
            index: 1,
            drive: 7,
            file_id: 2,
            file_tag: 9,
        }];
        begin_intent(&kv, 2, &new, OWNER, 3).unwrap();
        let g1 = replace_shards(&kv, &[5; 32], &new, &[old[1]], 2).unwrap();
        let g2 = replace_shards(&kv, &[5; 32], &new, &[old[1]], 2).unwrap();
        assert_eq!(g1, vec![old[1]]);
        assert_eq!(g1, g2, "a retry returns the same files to delete");
        // A second repair of the same shard, made from the location the first one replaced,
        // loses: its file is garbage and the slot keeps the first repair's shard.
        let late = [ShardLoc {
            index: 1,
            drive: 8,
            file_id: 3,
            file_tag: 4,
        }];
        begin_intent(&kv, 3, &late, OWNER, 4).unwrap();
        assert_eq!(
            replace_shards(&kv, &[5; 32], &late, &[old[1]], 3).unwrap(),
            late.to_vec()
        );
        end_intent(&kv, 3).unwrap();
        let Stored::Sharded { shards, .. } = content(&kv, &[5; 32]).unwrap().unwrap().stored else {
            panic!()
        };
        assert_eq!(shards[1], new[0]);
        assert_eq!(shards_on_drive(&kv, 1, None, 10).unwrap(), vec![]);
        assert_eq!(
            shards_on_drive(&kv, 7, None, 10).unwrap(),
            vec![([5; 32], 1)]
        );
        // Until the caller ends it, the intent names the old file, so start-up would delete it.
        let left = intents(&kv).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].1.shards, vec![old[1]]);
    }

    #[test]
    fn listing_pages_skip_deleted() {
        let (_d, kv) = kv();
        for k in ["a", "b", "c", "d", "e", "x/1"] {
            commit_put(
                &kv,
                "default",
                k,
                None,
                &inline(k.as_bytes()),
                &WriteCondition::Always,
                &ObjectAttrs::default(),
                1,
            )
            .unwrap();
        }
        delete_key(&kv, "default", "c", 2).unwrap();
        let p = list(&kv, "default", "", None, 2).unwrap();
        assert_eq!(
            p.objects.iter().map(|o| o.0.as_str()).collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        let p = list(&kv, "default", "", p.next_start_after.as_deref(), 2).unwrap();
        assert_eq!(
            p.objects.iter().map(|o| o.0.as_str()).collect::<Vec<_>>(),
            vec!["d", "e"]
        );
        let p = list(&kv, "default", "", p.next_start_after.as_deref(), 2).unwrap();
        assert_eq!(
            p.objects.iter().map(|o| o.0.as_str()).collect::<Vec<_>>(),
            vec!["x/1"]
        );
        assert_eq!(p.next_start_after, None);
        let p = list(&kv, "default", "x/", None, 10).unwrap();
        assert_eq!(p.objects.len(), 1);
        assert!(matches!(
            list(&kv, "nobucket", "", None, 10),
            Err(MetaError::NoSuchBucket)
        ));
    }
}
