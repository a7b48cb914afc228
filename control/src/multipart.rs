//! Multipart uploads (S3's): an upload collects numbered parts, each stored as a content of its
//! own and held by a reference from its part record; completing it makes a version whose
//! content is assembled from the parts named ([`Stored::Parts`]): the parts' references move to
//! the assembled content, so no byte is copied, and the parts not named lose theirs (GC takes
//! them). An upload that is aborted, or expires, loses every part's reference.
//!
//! Records: `[0x54] id` → [`MpuRec`], `[0x55] id part` → [`PartRec`], and two indexes, by
//! bucket and key (`[0x56]`, for listings) and by expiry (`[0x57]`).

use crate::keys;
use crate::kv::{run, Kv, Tx};
use crate::meta::{self, MetaError, NewContent, Prior, PutOutcome, Result, WriteCondition};
use crate::records::{
    decode, encode, encode_content, ContentRec, Encoding, ObjectAttrs, PartRef, RecordError,
    Stored, Tree,
};
use serde::{Deserialize, Serialize};

/// The most parts an upload may have (part numbers are 1 to this).
pub const PARTS_MAX: u16 = 10_000;

/// A multipart upload in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MpuRec {
    pub bucket: String,
    pub key: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    /// What the object will keep (given when the upload was created).
    pub attrs: ObjectAttrs,
}

/// An uploaded part: a content this record holds one reference to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRec {
    pub blake3: [u8; 32],
    pub size_bytes: u64,
    pub created_ms: u64,
    /// The part's MD5 (its ETag) and the checksum its writer sent.
    pub attrs: ObjectAttrs,
}

/// A part named by a completion: its number and the MD5 its ETag gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Named {
    pub number: u16,
    pub md5: [u8; 16],
}

/// A completed upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completed {
    pub outcome: PutOutcome,
    pub blake3: [u8; 32],
    pub size_bytes: u64,
}

/// The name of a content assembled from `parts` (`ostore_engine::hash::assembled_name`): the
/// BLAKE3 of its part list, not of its bytes, which no one hashed whole.
pub fn assembled_name(parts: &[PartRef]) -> [u8; 32] {
    ostore_engine::hash::assembled_name(parts.iter().map(|p| (&p.blake3, p.size_bytes)))
}

fn get_mpu(tx: &mut dyn Tx, id: &[u8; 16]) -> Result<Option<MpuRec>> {
    match tx.get(&keys::mpu(id))? {
        Some(v) => Ok(Some(decode(&v)?)),
        None => Ok(None),
    }
}

/// The upload `id` of `bucket/key`; `NoSuchUpload` if it is not there (or is another key's).
fn require_mpu(tx: &mut dyn Tx, bucket: &str, key: &str, id: &[u8; 16]) -> Result<MpuRec> {
    match get_mpu(tx, id)? {
        Some(m) if m.bucket == bucket && m.key == key => Ok(m),
        _ => Err(MetaError::NoSuchUpload),
    }
}

/// Starts an upload of `bucket/key` under `id` (random, from the caller).
pub fn create(
    kv: &dyn Kv,
    id: &[u8; 16],
    bucket: &str,
    key: &str,
    attrs: &ObjectAttrs,
    expires_ms: u64,
    now_ms: u64,
) -> Result<()> {
    run(kv, true, |tx| {
        if tx.get(&keys::bucket(bucket))?.is_none() {
            return Err(MetaError::NoSuchBucket);
        }
        if attrs.header_bytes() > crate::records::ATTRS_BYTES_MAX {
            return Err(MetaError::Refused("too many header bytes".into()));
        }
        if tx.get(&keys::mpu(id))?.is_some() {
            return Err(MetaError::Refused("the upload id is taken".into()));
        }
        let rec = MpuRec {
            bucket: bucket.to_string(),
            key: key.to_string(),
            created_ms: now_ms,
            expires_ms,
            attrs: attrs.clone(),
        };
        tx.set(&keys::mpu(id), &encode(&rec))?;
        tx.set(&keys::mpu_by_key(bucket, key, id), &[])?;
        tx.set(&keys::mpu_expiry(expires_ms, id), &[])?;
        Ok(())
    })
}

/// The upload `id` of `bucket/key`.
pub fn get(kv: &dyn Kv, bucket: &str, key: &str, id: &[u8; 16]) -> Result<MpuRec> {
    run(kv, false, |tx| require_mpu(tx, bucket, key, id))
}

/// Commits part `number` of upload `id` under `intent` (idempotent, as a PUT's commit is):
/// the part record holds a reference to `content`; a part uploaded again under the same
/// number replaces the earlier one, which loses its reference.
#[allow(clippy::too_many_arguments)]
pub fn commit_part(
    kv: &dyn Kv,
    bucket: &str,
    key: &str,
    id: &[u8; 16],
    number: u16,
    intent: Option<u64>,
    content: &NewContent,
    attrs: &ObjectAttrs,
    now_ms: u64,
) -> Result<PutOutcome> {
    if !(1..=PARTS_MAX).contains(&number) {
        return Err(MetaError::Refused(format!(
            "part numbers are 1 to {PARTS_MAX}"
        )));
    }
    run(kv, true, |tx| {
        require_mpu(tx, bucket, key, id)?;
        let open = match meta::intent_prior(tx, intent)? {
            Prior::Done(o) => return Ok(o),
            Prior::Open(open) => open,
        };
        let (deduplicated, replaced_damaged) = meta::store_content(tx, content, now_ms)?;
        let pk = keys::mpu_part(id, number);
        if let Some(old) = tx.get(&pk)? {
            let old: PartRec = decode(&old)?;
            meta::drop_ref(tx, &old.blake3, now_ms)?;
        }
        let rec = PartRec {
            blake3: content.blake3,
            size_bytes: content.size_bytes,
            created_ms: now_ms,
            attrs: attrs.clone(),
        };
        tx.set(&pk, &encode(&rec))?;
        meta::finish_intent(tx, open, u64::from(number), deduplicated, now_ms)?;
        Ok(PutOutcome {
            version: u64::from(number),
            created_ms: now_ms,
            deduplicated,
            replaced_damaged,
            null: false,
        })
    })
}

/// Part records in `[b, e)`, at most `limit`, with their numbers.
fn read_parts(tx: &mut dyn Tx, b: &[u8], e: &[u8], limit: usize) -> Result<Vec<(u16, PartRec)>> {
    let mut out = Vec::new();
    for (k, v) in tx.get_range(b, e, limit, false)? {
        let n = k
            .get(k.len().saturating_sub(2)..)
            .and_then(|n| <[u8; 2]>::try_from(n).ok())
            .map(u16::from_be_bytes)
            .ok_or_else(|| RecordError("part key".into()))?;
        out.push((n, decode(&v)?));
    }
    Ok(out)
}

fn all_parts(tx: &mut dyn Tx, id: &[u8; 16]) -> Result<Vec<(u16, PartRec)>> {
    let (b, e) = keys::mpu_parts(id);
    read_parts(tx, &b, &e, usize::MAX)
}

/// Up to `limit` parts of upload `id` after part `after`, in part order.
pub fn parts(
    kv: &dyn Kv,
    bucket: &str,
    key: &str,
    id: &[u8; 16],
    after: u16,
    limit: usize,
) -> Result<Vec<(u16, PartRec)>> {
    run(kv, false, |tx| {
        require_mpu(tx, bucket, key, id)?;
        if after == u16::MAX {
            return Ok(Vec::new());
        }
        let (_, e) = keys::mpu_parts(id);
        read_parts(tx, &keys::mpu_part(id, after + 1), &e, limit)
    })
}

/// Removes an upload and its parts' references.
fn remove(tx: &mut dyn Tx, id: &[u8; 16], m: &MpuRec) -> Result<Vec<(u16, PartRec)>> {
    let parts = all_parts(tx, id)?;
    let (b, e) = keys::mpu_parts(id);
    tx.clear_range(&b, &e)?;
    tx.clear(&keys::mpu(id))?;
    tx.clear(&keys::mpu_by_key(&m.bucket, &m.key, id))?;
    tx.clear(&keys::mpu_expiry(m.expires_ms, id))?;
    Ok(parts)
}

/// Aborts an upload: its record and its parts go, and the parts' contents lose their
/// references (GC reclaims them).
pub fn abort(kv: &dyn Kv, bucket: &str, key: &str, id: &[u8; 16], now_ms: u64) -> Result<()> {
    run(kv, true, |tx| {
        let m = require_mpu(tx, bucket, key, id)?;
        for (_, p) in remove(tx, id, &m)? {
            meta::drop_ref(tx, &p.blake3, now_ms)?;
        }
        Ok(())
    })
}

/// Aborts up to `limit` uploads that expired by `now_ms`; returns how many.
pub fn expire(kv: &dyn Kv, now_ms: u64, limit: usize) -> Result<usize> {
    run(kv, true, |tx| {
        let (b, e) = keys::mpu_expiry_until(now_ms);
        let mut n = 0;
        for (k, _) in tx.get_range(&b, &e, limit, false)? {
            let id = keys::parse_mpu_expiry(&k).ok_or_else(|| RecordError("expiry key".into()))?;
            match get_mpu(tx, &id)? {
                Some(m) => {
                    for (_, p) in remove(tx, &id, &m)? {
                        meta::drop_ref(tx, &p.blake3, now_ms)?;
                    }
                }
                None => tx.clear(&k)?,
            }
            n += 1;
        }
        Ok(n)
    })
}

/// Why a completion was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// A part named is not uploaded, or its ETag is not the one given.
    InvalidPart(u16),
    /// The parts are not named in ascending order, each once.
    InvalidPartOrder,
    /// A part other than the last is smaller than the minimum.
    TooSmall(u16),
}

/// Completes upload `id` of `bucket/key` with the parts `named` (ascending, each with the MD5
/// its ETag gave; every one but the last at least `min_part_bytes`): a new version whose
/// content is assembled from them, with the upload's attributes and `md5` (S3's MD5 of the
/// parts' MD5s) and the part count. The parts' references move to the assembled content (no
/// byte is copied; an identical assembly already stored is shared); parts not named lose
/// theirs. `cond` is checked as a PUT's is. Refusals are `Err(Ok(refusal))`.
#[allow(clippy::too_many_arguments)]
pub fn complete(
    kv: &dyn Kv,
    bucket: &str,
    key: &str,
    id: &[u8; 16],
    named: &[Named],
    min_part_bytes: u64,
    md5: [u8; 16],
    cond: &WriteCondition,
    now_ms: u64,
) -> Result<std::result::Result<Completed, Refusal>> {
    run(kv, true, |tx| {
        let m = require_mpu(tx, bucket, key, id)?;
        if named.is_empty() || named.windows(2).any(|w| w[0].number >= w[1].number) {
            return Ok(Err(Refusal::InvalidPartOrder));
        }
        let parts = all_parts(tx, id)?;
        let find = |n: u16| {
            parts
                .binary_search_by_key(&n, |(k, _)| *k)
                .ok()
                .map(|i| &parts[i].1)
        };
        let mut refs = Vec::with_capacity(named.len());
        for (i, n) in named.iter().enumerate() {
            let Some(p) = find(n.number).filter(|p| p.attrs.md5 == Some(n.md5)) else {
                return Ok(Err(Refusal::InvalidPart(n.number)));
            };
            if i + 1 < named.len() && p.size_bytes < min_part_bytes {
                return Ok(Err(Refusal::TooSmall(n.number)));
            }
            refs.push(PartRef {
                blake3: p.blake3,
                size_bytes: p.size_bytes,
            });
        }
        meta::check_condition_in(tx, bucket, key, cond)?;
        let size: u64 = refs.iter().map(|r| r.size_bytes).sum();
        let name = assembled_name(&refs);
        let ck = keys::content(&name);
        // The part records' references: those of the parts named move to the assembled
        // content (when it is new), the others are dropped.
        let new = tx.get(&ck)?.is_none();
        let mut keep: Vec<u16> = Vec::new();
        if new {
            keep = named.iter().map(|n| n.number).collect();
            let rec = ContentRec {
                size_bytes: size,
                refs: 0,
                created_ms: now_ms,
                unreferenced_since_ms: None,
                stored: Stored::Parts {
                    parts: refs.len() as u32,
                },
                damaged: false,
                encoding: Encoding::Identity,
                tree: Tree::None,
            };
            tx.set(&ck, &encode_content(&rec))?;
            meta::put_part_list(tx, &name, &refs)?;
        }
        meta::add_ref(tx, &name)?;
        for (n, p) in remove(tx, id, &m)? {
            if !keep.contains(&n) {
                meta::drop_ref(tx, &p.blake3, now_ms)?;
            }
        }
        let attrs = ObjectAttrs {
            md5: Some(md5),
            parts: named.len() as u32,
            headers: m.attrs.headers.clone(),
        };
        let v = meta::append_version(tx, bucket, key, now_ms, size, name, false, &attrs)?;
        Ok(Ok(Completed {
            outcome: PutOutcome {
                version: v.version,
                created_ms: now_ms,
                deduplicated: !new,
                replaced_damaged: false,
                null: v.null,
            },
            blake3: name,
            size_bytes: size,
        }))
    })
}

/// One upload in a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    pub key: String,
    pub id: [u8; 16],
    pub created_ms: u64,
}

/// One entry of an upload listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListedUpload {
    Upload(Listed),
    /// Keys rolled up at the delimiter: the prefix, the delimiter included.
    Prefix(String),
}

/// Up to `limit` uploads of `bucket` under `prefix`, by key then id, after (`key_marker`,
/// `id_marker`), with keys that contain `delimiter` after the prefix rolled up into one entry
/// each (S3's ListMultipartUploads; uploads and prefixes both count towards `limit`); and
/// whether there are more.
pub fn list(
    kv: &dyn Kv,
    bucket: &str,
    prefix: &str,
    delimiter: Option<&str>,
    key_marker: Option<&str>,
    id_marker: Option<[u8; 16]>,
    limit: usize,
) -> Result<(Vec<ListedUpload>, bool)> {
    let limit = limit.clamp(1, meta::LIST_LIMIT_MAX);
    let delimiter = delimiter.filter(|d| !d.is_empty());
    run(kv, false, |tx| {
        if tx.get(&keys::bucket(bucket))?.is_none() {
            return Err(MetaError::NoSuchBucket);
        }
        let (mut b, e) = keys::mpus_with_prefix(bucket, prefix);
        match (key_marker, id_marker) {
            (Some(k), Some(id)) => {
                let mut after = keys::mpu_by_key(bucket, k, &id);
                after.push(0);
                b = b.max(after);
            }
            (Some(k), None) => {
                let mut after = keys::mpu_by_key(bucket, k, &[0xff; 16]);
                after.push(0);
                b = b.max(after);
            }
            _ => {}
        }
        let mut out = Vec::new();
        'scan: loop {
            let rows = tx.get_range(&b, &e, limit + 1, false)?;
            let n = rows.len();
            for (k, _) in rows {
                let (key, id) = keys::parse_mpu_by_key(bucket, &k)
                    .ok_or_else(|| RecordError("upload index key".into()))?;
                let rolled = meta::rolled_up(key, prefix, delimiter);
                let entry = match &rolled {
                    // A prefix up to the marker was listed on an earlier page.
                    Some(cp) if key_marker.is_some_and(|km| cp.as_str() <= km) => None,
                    Some(cp) => Some(ListedUpload::Prefix(cp.clone())),
                    None => Some(ListedUpload::Upload(Listed {
                        key: key.to_string(),
                        id,
                        created_ms: get_mpu(tx, &id)?.map_or(0, |m| m.created_ms),
                    })),
                };
                if let Some(entry) = entry {
                    if out.len() == limit {
                        return Ok((out, true));
                    }
                    out.push(entry);
                }
                if let Some(cp) = rolled {
                    // Every upload under a rolled-up prefix is behind it: seek past them.
                    b = keys::mpus_with_prefix(bucket, &cp).1;
                    continue 'scan;
                }
                b = k;
                b.push(0);
            }
            if n < limit + 1 {
                return Ok((out, false));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{content, resolve, stats, WriteCondition};
    use crate::redb_kv::RedbKv;

    fn kv() -> (tempfile::TempDir, RedbKv) {
        let d = tempfile::tempdir().unwrap();
        let kv = RedbKv::open(&d.path().join("m")).unwrap();
        meta::init(&kv, 1).unwrap();
        (d, kv)
    }

    fn body(n: u8, len: usize) -> NewContent {
        let b = vec![n; len];
        NewContent {
            encoding: Encoding::Identity,
            tree: Tree::None,
            blake3: *blake3::hash(&b).as_bytes(),
            size_bytes: len as u64,
            stored: Stored::Inline(b),
        }
    }

    fn md5_attrs(n: u8) -> ObjectAttrs {
        ObjectAttrs {
            md5: Some([n; 16]),
            ..ObjectAttrs::default()
        }
    }

    fn refs(kv: &RedbKv, c: &NewContent) -> u64 {
        content(kv, &c.blake3).unwrap().map_or(0, |c| c.refs)
    }

    #[test]
    fn an_upload_completes_into_a_version_that_refers_to_its_parts() {
        let (_d, kv) = kv();
        let id = [1u8; 16];
        let attrs = ObjectAttrs {
            headers: vec![("content-type".into(), "text/plain".into())],
            ..ObjectAttrs::default()
        };
        assert!(matches!(
            create(&kv, &id, "nope", "k", &attrs, 100, 1),
            Err(MetaError::NoSuchBucket)
        ));
        create(&kv, &id, "default", "k", &attrs, 100, 1).unwrap();
        let (p1, p2, p3) = (body(1, 10), body(2, 10), body(3, 4));
        for (n, c) in [(1, &p1), (2, &p2), (3, &p3)] {
            commit_part(&kv, "default", "k", &id, n, None, c, &md5_attrs(n as u8), 2).unwrap();
        }
        // A part uploaded again replaces the first, which loses its reference.
        let p2b = body(22, 10);
        commit_part(&kv, "default", "k", &id, 2, None, &p2b, &md5_attrs(22), 3).unwrap();
        assert_eq!(refs(&kv, &p2), 0);
        assert!(matches!(
            commit_part(&kv, "default", "other", &id, 1, None, &p1, &md5_attrs(1), 3),
            Err(MetaError::NoSuchUpload)
        ));
        assert!(commit_part(&kv, "default", "k", &id, 0, None, &p1, &md5_attrs(1), 3).is_err());
        let listed = parts(&kv, "default", "k", &id, 0, 10).unwrap();
        assert_eq!(
            listed.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(parts(&kv, "default", "k", &id, 1, 10).unwrap().len(), 2);
        let named = |list: &[(u16, u8)]| -> Vec<Named> {
            list.iter()
                .map(|&(number, m)| Named {
                    number,
                    md5: [m; 16],
                })
                .collect()
        };
        let done = |list: &[(u16, u8)], min: u64| {
            complete(
                &kv,
                "default",
                "k",
                &id,
                &named(list),
                min,
                [9; 16],
                &WriteCondition::Always,
                4,
            )
            .unwrap()
        };
        // Refusals change nothing.
        assert_eq!(done(&[(2, 22), (1, 1)], 0), Err(Refusal::InvalidPartOrder));
        assert_eq!(done(&[(1, 1), (1, 1)], 0), Err(Refusal::InvalidPartOrder));
        assert_eq!(done(&[], 0), Err(Refusal::InvalidPartOrder));
        assert_eq!(done(&[(1, 1), (2, 2)], 0), Err(Refusal::InvalidPart(2)));
        assert_eq!(done(&[(1, 1), (4, 4)], 0), Err(Refusal::InvalidPart(4)));
        assert_eq!(done(&[(1, 1), (3, 3)], 11), Err(Refusal::TooSmall(1)));
        // The last part may be small; part 2 is left out.
        let c = done(&[(1, 1), (3, 3)], 10).unwrap();
        assert_eq!(c.size_bytes, 14);
        assert_eq!(
            c.blake3,
            assembled_name(&[
                PartRef {
                    blake3: p1.blake3,
                    size_bytes: 10
                },
                PartRef {
                    blake3: p3.blake3,
                    size_bytes: 4
                }
            ])
        );
        assert_eq!((refs(&kv, &p1), refs(&kv, &p2b), refs(&kv, &p3)), (1, 0, 1));
        let r = resolve(&kv, "default", "k", None).unwrap();
        assert_eq!(r.version.attrs.md5, Some([9; 16]));
        assert_eq!(r.version.attrs.parts, 2);
        assert_eq!(r.version.attrs.headers, attrs.headers);
        assert_eq!(r.content.refs, 1);
        assert_eq!(
            r.parts.iter().map(|p| p.blake3).collect::<Vec<_>>(),
            [p1.blake3, p3.blake3]
        );
        // The upload is gone.
        assert!(matches!(
            get(&kv, "default", "k", &id),
            Err(MetaError::NoSuchUpload)
        ));
        // Counters count the parts' bytes once: the assembled content stores nothing itself.
        assert_eq!(stats(&kv).unwrap().content_bytes, 10 + 10 + 4 + 10);
        // Deleting the version lets GC take the assembled content, then its parts.
        crate::meta::delete_version(&kv, "default", "k", r.version.version, 5).unwrap();
        assert!(crate::meta::collect(&kv, &c.blake3, 77, 5, 6)
            .unwrap()
            .is_some());
        assert_eq!((refs(&kv, &p1), refs(&kv, &p3)), (0, 0));
        assert_eq!(part_list_of(&kv, &c.blake3), Vec::new());
    }

    fn part_list_of(kv: &RedbKv, h: &[u8; 32]) -> Vec<PartRef> {
        run(kv, false, |tx| meta::part_list(tx, h)).unwrap()
    }

    #[test]
    fn the_same_assembly_completed_twice_is_shared() {
        let (_d, kv) = kv();
        let p = body(5, 20);
        let mut names = Vec::new();
        for (i, key) in ["a", "b"].into_iter().enumerate() {
            let id = [i as u8 + 1; 16];
            create(&kv, &id, "default", key, &ObjectAttrs::default(), 100, 1).unwrap();
            commit_part(&kv, "default", key, &id, 1, None, &p, &md5_attrs(5), 2).unwrap();
            let named = [Named {
                number: 1,
                md5: [5; 16],
            }];
            let c = complete(
                &kv,
                "default",
                key,
                &id,
                &named,
                0,
                [0; 16],
                &WriteCondition::Always,
                3,
            )
            .unwrap()
            .unwrap();
            assert_eq!(c.outcome.deduplicated, i == 1);
            names.push(c.blake3);
        }
        assert_eq!(names[0], names[1]);
        // One reference from the assembly (held once), two to the assembly.
        assert_eq!(refs(&kv, &p), 1);
        assert_eq!(content(&kv, &names[0]).unwrap().unwrap().refs, 2);
    }

    #[test]
    fn aborted_and_expired_uploads_release_their_parts() {
        let (_d, kv) = kv();
        let (a, b) = ([1u8; 16], [2u8; 16]);
        let p = body(7, 3);
        create(&kv, &a, "default", "k", &ObjectAttrs::default(), 100, 1).unwrap();
        create(&kv, &b, "default", "k2", &ObjectAttrs::default(), 200, 1).unwrap();
        commit_part(&kv, "default", "k", &a, 1, None, &p, &md5_attrs(7), 2).unwrap();
        commit_part(&kv, "default", "k2", &b, 1, None, &p, &md5_attrs(7), 2).unwrap();
        assert_eq!(refs(&kv, &p), 2);
        let (l, more) = list(&kv, "default", "", None, None, None, 10).unwrap();
        assert_eq!(names(&l), ["k@1", "k2@2"]);
        assert!(!more);
        let (l, more) = list(&kv, "default", "", None, None, None, 1).unwrap();
        assert_eq!((l.len(), more), (1, true));
        let (l, _) = list(&kv, "default", "", None, Some("k"), Some(a), 10).unwrap();
        assert_eq!(names(&l), ["k2@2"]);
        assert!(matches!(
            abort(&kv, "default", "k2", &a, 3),
            Err(MetaError::NoSuchUpload)
        ));
        abort(&kv, "default", "k", &a, 3).unwrap();
        assert_eq!(refs(&kv, &p), 1);
        assert_eq!(expire(&kv, 200, 10).unwrap(), 0);
        assert_eq!(expire(&kv, 201, 10).unwrap(), 1);
        assert_eq!(refs(&kv, &p), 0);
        assert!(list(&kv, "default", "", None, None, None, 10)
            .unwrap()
            .0
            .is_empty());
    }

    /// An upload listing as `key@first id byte`, and `prefix*` for a rolled-up prefix.
    fn names(l: &[ListedUpload]) -> Vec<String> {
        l.iter()
            .map(|e| match e {
                ListedUpload::Upload(u) => format!("{}@{}", u.key, u.id[0]),
                ListedUpload::Prefix(p) => format!("{p}*"),
            })
            .collect()
    }

    #[test]
    fn upload_listings_roll_up_at_a_delimiter_and_page_past_prefixes() {
        let (_d, kv) = kv();
        for (i, key) in ["a/1", "a/2", "a/b/3", "b", "c/4", "c/5", "d"]
            .iter()
            .enumerate()
        {
            let id = [i as u8 + 1; 16];
            create(&kv, &id, "default", key, &ObjectAttrs::default(), 100, 1).unwrap();
        }
        let all = |prefix: &str, limit: usize| {
            // Every page, following the markers S3 gives back.
            let (mut km, mut im, mut pages) = (None::<String>, None, Vec::new());
            loop {
                let (l, more) =
                    list(&kv, "default", prefix, Some("/"), km.as_deref(), im, limit).unwrap();
                assert!(l.len() <= limit);
                pages.push(names(&l));
                if !more {
                    return pages;
                }
                match l.last().unwrap() {
                    ListedUpload::Upload(u) => (km, im) = (Some(u.key.clone()), Some(u.id)),
                    ListedUpload::Prefix(p) => (km, im) = (Some(p.clone()), None),
                }
            }
        };
        assert_eq!(all("", 10), [vec!["a/*", "b@4", "c/*", "d@7"]]);
        assert_eq!(
            all("", 1),
            [vec!["a/*"], vec!["b@4"], vec!["c/*"], vec!["d@7"]]
        );
        assert_eq!(all("a/", 10), [vec!["a/1@1", "a/2@2", "a/b/*"]]);
        assert_eq!(all("a/", 2), [vec!["a/1@1", "a/2@2"], vec!["a/b/*"]]);
        // Without a delimiter, every upload.
        let (l, more) = list(&kv, "default", "c/", None, None, None, 10).unwrap();
        assert_eq!(
            (names(&l), more),
            (vec!["c/4@5".into(), "c/5@6".into()], false)
        );
    }
}
