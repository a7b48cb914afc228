//! The metadata key space. Every key starts with a one-byte subspace tag; tags are never reused
//! (see KEYS.md). Bucket names and object keys never contain NUL, so a NUL terminator after each
//! string component keeps the byte order of the keys equal to the order of the tuples.

/// Subspace tags. A retired tag stays reserved forever.
pub mod tag {
    /// Singleton: the format version of the key space.
    pub const FORMAT: u8 = 0x01;
    /// `[0x03]` → u32: versions kept per key, cluster default; `[0x03] bucket 0x00` → u32:
    /// that bucket's override (absent: keep every version)
    pub const RETENTION: u8 = 0x03;
    /// `[0x04] stat:u8` → i64 little-endian counter (`Tx::add`): see [`super::Stat`]
    pub const STAT: u8 = 0x04;
    /// `[0x05]` → `ScrubPolicy`: the cluster default; `[0x05] drive:u16be` → one drive's
    pub const SCRUB_POLICY: u8 = 0x05;
    /// `[0x10] bucket 0x00` → `BucketRec`
    pub const BUCKET: u8 = 0x10;
    /// `[0x11] access_key` → `AccessKeyRec`: an S3 access key besides `root`
    pub const ACCESS_KEY: u8 = 0x11;
    /// `[0x12] bucket 0x00` → one byte, 1: the bucket's versioning is suspended (new versions
    /// replace the key's null version); absent: enabled (every version kept)
    pub const BUCKET_VERSIONING: u8 = 0x12;
    /// `[0x20] bucket 0x00 key 0x00` → `HeadRec`
    pub const HEAD: u8 = 0x20;
    /// `[0x21] bucket 0x00 key 0x00 !version:u64be` → `VersionRec` (newest first)
    pub const VERSION: u8 = 0x21;
    /// `[0x22] bucket 0x00 key 0x00` → u64 little-endian: the key's null version (S3's
    /// `null`), the one a write in a suspended bucket made; absent: none
    pub const NULL_VERSION: u8 = 0x22;
    /// `[0x30] blake3:32` → `ContentRec`
    pub const CONTENT: u8 = 0x30;
    /// `[0x31] drive:u16be blake3:32 shard:u8` → empty: which shards a drive holds
    pub const DRIVE_SHARD: u8 = 0x31;
    /// `[0x32] since_ms:u64be blake3:32` → empty: contents with no reference, by when they
    /// lost their last one (what GC looks at, without scanning every content)
    pub const UNREFERENCED: u8 = 0x32;
    /// `[0x33] blake3:32 chunk:u32be` → `Vec<PartRef>`: the parts of a content assembled from
    /// parts ([`crate::records::Stored::Parts`]), [`crate::meta::PARTS_PER_CHUNK`] per
    /// value, in order
    pub const CONTENT_PARTS: u8 = 0x33;
    /// `[0x40] drive:u16be` → `DriveRec`
    pub const DRIVE: u8 = 0x40;
    /// `[0x41] drive:u16be` → i64 little-endian counter: shards the drive holds (its
    /// `[0x31]` entries)
    pub const DRIVE_COUNT: u8 = 0x41;
    /// `[0x42] drive:u16be` → `ScrubCursor`: how far the drive's continuous scrub got
    pub const SCRUB_CURSOR: u8 = 0x42;
    /// `[0x50] upload:u64be` → `IntentRec`: shard files being written
    pub const INTENT: u8 = 0x50;
    /// `[0x52] upload:16` → `UploadRec`: a resumable upload
    pub const UPLOAD: u8 = 0x52;
    /// `[0x53] upload:16 blob:u8 piece:u32be` → bytes: the upload's blobs, in pieces
    pub const UPLOAD_BLOB: u8 = 0x53;
    /// `[0x54] id:16` → `MpuRec`: a multipart upload
    pub const MPU: u8 = 0x54;
    /// `[0x55] id:16 part:u16be` → `PartRec`: an uploaded part
    pub const MPU_PART: u8 = 0x55;
    /// `[0x56] bucket 0x00 key 0x00 id:16` → empty: multipart uploads by bucket and key
    pub const MPU_BY_KEY: u8 = 0x56;
    /// `[0x57] expires_ms:u64be id:16` → empty: multipart uploads by when they expire
    pub const MPU_EXPIRY: u8 = 0x57;
    /// `[0x60] blake3:32` → `RepairRec`: content with shards to rebuild
    pub const REPAIR: u8 = 0x60;
    /// `[0x61] blake3:32` → `RepairRec`: content with good shards to move elsewhere (drain,
    /// rebalance, two shards on one node)
    pub const MOVE: u8 = 0x61;
    /// `[0x70] node:u32be` → `NodeRec`: a member of the cluster
    pub const NODE: u8 = 0x70;
    /// Singleton: `MembershipRec` (epoch and id counters)
    pub const MEMBERSHIP: u8 = 0x71;
    /// Singleton: `LeaseRec` held by the control process running the background jobs
    pub const LEADER: u8 = 0x72;
    /// `[0x73] node:u32be` → `DrainRec`: an operator asked to move every shard off the node
    pub const DRAIN: u8 = 0x73;
    /// Singleton → u32 little-endian: the write quorum, nodes that must be up for a write
    /// (absent or 0: the fewest that can hold K+M shards with at most M on one node)
    pub const WRITE_QUORUM: u8 = 0x74;
    /// Singleton → u64 little-endian: bytes per second each node's repairs may read (absent:
    /// `cluster::DEFAULT_REPAIR_BYTES_PER_S`; `u64::MAX`: no limit)
    pub const REPAIR_RATE: u8 = 0x75;
    /// Singleton → `CaRec`: the cluster CA, its key sealed under the operator's cluster key
    pub const CA: u8 = 0x76;
    /// `[0x77] nonce:16` → u64 little-endian `expires_ms`: a join token already used
    pub const JOIN_TOKEN: u8 = 0x77;
    /// `[0x78] node:u32be fingerprint:32` → u64 little-endian `expires_ms`: a certificate the
    /// node presented (revoked with the node)
    pub const NODE_CERT: u8 = 0x78;
    /// `[0x79] fingerprint:32` → `RevokedRec`: a revoked certificate
    pub const REVOKED: u8 = 0x79;
    /// Singleton → `SecretRec`: the client root secret (and those it replaced, within their
    /// grace), and the base access-key secrets derive from, all sealed under the cluster key
    pub const ROOT_SECRET: u8 = 0x7a;
    /// `[0x80] issued_ms:u64be token:16` → the answer of a write request already committed
    /// (makes retries after `commit_unknown_result` idempotent; expired after an hour)
    pub const DONE: u8 = 0x80;
}

/// The key-space format version stored under [`format`]. 2: the counters (`0x04`, `0x41`) and
/// the unreferenced index (`0x32`) exist; a format-1 store is recounted once when it is opened.
pub const FORMAT_VERSION: u32 = 2;

/// Every key of one subspace.
pub fn subspace(t: u8) -> (Vec<u8>, Vec<u8>) {
    (vec![t], vec![t + 1])
}

pub fn upload(id: &[u8; 16]) -> Vec<u8> {
    let mut k = vec![tag::UPLOAD];
    k.extend_from_slice(id);
    k
}

/// All upload records: `[begin, end)`.
pub fn uploads() -> (Vec<u8>, Vec<u8>) {
    (vec![tag::UPLOAD], vec![tag::UPLOAD + 1])
}

/// The id inside an upload key.
pub fn upload_id(k: &[u8]) -> Option<[u8; 16]> {
    k.strip_prefix(&[tag::UPLOAD])?.try_into().ok()
}

pub fn upload_blob(id: &[u8; 16], blob: u8, piece: u32) -> Vec<u8> {
    let mut k = vec![tag::UPLOAD_BLOB];
    k.extend_from_slice(id);
    k.push(blob);
    k.extend_from_slice(&piece.to_be_bytes());
    k
}

/// Every piece of one blob of an upload: `[begin, end)`.
pub fn upload_blob_range(id: &[u8; 16], blob: u8) -> (Vec<u8>, Vec<u8>) {
    let mut b = vec![tag::UPLOAD_BLOB];
    b.extend_from_slice(id);
    b.push(blob);
    let e = crate::kv::prefix_end(&b);
    (b, e)
}

/// One chunk of the part list of a content assembled from parts.
pub fn content_parts(blake3: &[u8; 32], chunk: u32) -> Vec<u8> {
    let mut k = vec![tag::CONTENT_PARTS];
    k.extend_from_slice(blake3);
    k.extend_from_slice(&chunk.to_be_bytes());
    k
}

/// Every chunk of the part list of `blake3`: `[begin, end)`.
pub fn content_parts_all(blake3: &[u8; 32]) -> (Vec<u8>, Vec<u8>) {
    let mut b = vec![tag::CONTENT_PARTS];
    b.extend_from_slice(blake3);
    let e = crate::kv::prefix_end(&b);
    (b, e)
}

pub fn mpu(id: &[u8; 16]) -> Vec<u8> {
    let mut k = vec![tag::MPU];
    k.extend_from_slice(id);
    k
}

pub fn mpu_part(id: &[u8; 16], part: u16) -> Vec<u8> {
    let mut k = vec![tag::MPU_PART];
    k.extend_from_slice(id);
    k.extend_from_slice(&part.to_be_bytes());
    k
}

/// Every part of one multipart upload, in part order: `[begin, end)`.
pub fn mpu_parts(id: &[u8; 16]) -> (Vec<u8>, Vec<u8>) {
    let mut b = vec![tag::MPU_PART];
    b.extend_from_slice(id);
    let e = crate::kv::prefix_end(&b);
    (b, e)
}

pub fn mpu_by_key(bucket: &str, key: &str, id: &[u8; 16]) -> Vec<u8> {
    let mut k = with_strs(tag::MPU_BY_KEY, &[bucket, key]);
    k.extend_from_slice(id);
    k
}

/// The multipart uploads of `bucket` whose key starts with `prefix`: `[begin, end)`.
pub fn mpus_with_prefix(bucket: &str, prefix: &str) -> (Vec<u8>, Vec<u8>) {
    let mut b = with_strs(tag::MPU_BY_KEY, &[bucket]);
    b.extend_from_slice(prefix.as_bytes());
    let e = crate::kv::prefix_end(&b);
    (b, e)
}

/// The object key and upload id inside an `MPU_BY_KEY` key of `bucket`.
pub fn parse_mpu_by_key<'a>(bucket: &str, k: &'a [u8]) -> Option<(&'a str, [u8; 16])> {
    let rest = k
        .strip_prefix(&[tag::MPU_BY_KEY])?
        .strip_prefix(bucket.as_bytes())?
        .strip_prefix(&[0])?;
    let (key, id) = rest.split_at_checked(rest.len().checked_sub(17)?)?;
    let id = id.strip_prefix(&[0])?;
    Some((std::str::from_utf8(key).ok()?, id.try_into().ok()?))
}

pub fn mpu_expiry(expires_ms: u64, id: &[u8; 16]) -> Vec<u8> {
    let mut k = vec![tag::MPU_EXPIRY];
    k.extend_from_slice(&expires_ms.to_be_bytes());
    k.extend_from_slice(id);
    k
}

/// Multipart uploads that expire up to `until_ms` (exclusive): `[begin, end)`.
pub fn mpu_expiry_until(until_ms: u64) -> (Vec<u8>, Vec<u8>) {
    let mut e = vec![tag::MPU_EXPIRY];
    e.extend_from_slice(&until_ms.to_be_bytes());
    (vec![tag::MPU_EXPIRY], e)
}

/// The upload id inside an `MPU_EXPIRY` key.
pub fn parse_mpu_expiry(k: &[u8]) -> Option<[u8; 16]> {
    k.strip_prefix(&[tag::MPU_EXPIRY])?
        .get(8..)?
        .try_into()
        .ok()
}

pub fn access_key(id: &str) -> Vec<u8> {
    let mut k = vec![tag::ACCESS_KEY];
    k.extend_from_slice(id.as_bytes());
    k
}

/// Every access key: `[begin, end)`.
pub fn access_keys() -> (Vec<u8>, Vec<u8>) {
    subspace(tag::ACCESS_KEY)
}

pub fn format() -> Vec<u8> {
    vec![tag::FORMAT]
}

fn with_strs(t: u8, parts: &[&str]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + parts.iter().map(|p| p.len() + 1).sum::<usize>() + 8);
    k.push(t);
    for p in parts {
        debug_assert!(!p.as_bytes().contains(&0));
        k.extend_from_slice(p.as_bytes());
        k.push(0);
    }
    k
}

/// The retention setting of `bucket`, or the cluster default with `None`.
pub fn retention(bucket: Option<&str>) -> Vec<u8> {
    match bucket {
        None => vec![tag::RETENTION],
        Some(b) => with_strs(tag::RETENTION, &[b]),
    }
}

pub fn bucket(name: &str) -> Vec<u8> {
    with_strs(tag::BUCKET, &[name])
}

pub fn buckets() -> (Vec<u8>, Vec<u8>) {
    (vec![tag::BUCKET], vec![tag::BUCKET + 1])
}

/// Whether `bucket`'s versioning is suspended.
pub fn bucket_versioning(name: &str) -> Vec<u8> {
    with_strs(tag::BUCKET_VERSIONING, &[name])
}

/// Which version of `key` is its null version.
pub fn null_version(bucket: &str, key: &str) -> Vec<u8> {
    with_strs(tag::NULL_VERSION, &[bucket, key])
}

/// Every null-version pointer of `bucket`: `[begin, end)`.
pub fn bucket_null_versions(bucket: &str) -> (Vec<u8>, Vec<u8>) {
    let b = with_strs(tag::NULL_VERSION, &[bucket]);
    let e = crate::kv::prefix_end(&b);
    (b, e)
}

pub fn head(bucket: &str, key: &str) -> Vec<u8> {
    with_strs(tag::HEAD, &[bucket, key])
}

/// All head keys of `bucket` whose object key starts with `prefix`: `[begin, end)`.
pub fn heads_with_prefix(bucket: &str, prefix: &str) -> (Vec<u8>, Vec<u8>) {
    let mut b = with_strs(tag::HEAD, &[bucket]);
    b.extend_from_slice(prefix.as_bytes());
    let e = crate::kv::prefix_end(&b);
    (b, e)
}

/// The object key inside a head key of `bucket`.
pub fn key_of_head<'a>(bucket: &str, head_key: &'a [u8]) -> Option<&'a str> {
    let rest = head_key
        .strip_prefix(&[tag::HEAD])?
        .strip_prefix(bucket.as_bytes())?
        .strip_prefix(&[0])?;
    let rest = rest.strip_suffix(&[0])?;
    std::str::from_utf8(rest).ok()
}

pub fn version(bucket: &str, key: &str, version: u64) -> Vec<u8> {
    let mut k = with_strs(tag::VERSION, &[bucket, key]);
    k.extend_from_slice(&(!version).to_be_bytes());
    k
}

/// Every version of every key of `bucket`: `[begin, end)`.
pub fn bucket_versions(bucket: &str) -> (Vec<u8>, Vec<u8>) {
    let b = with_strs(tag::VERSION, &[bucket]);
    let e = crate::kv::prefix_end(&b);
    (b, e)
}

/// Every version of the keys of `bucket` that start with `prefix`: `[begin, end)`.
pub fn versions_with_prefix(bucket: &str, prefix: &str) -> (Vec<u8>, Vec<u8>) {
    let mut b = with_strs(tag::VERSION, &[bucket]);
    b.extend_from_slice(prefix.as_bytes());
    let e = crate::kv::prefix_end(&b);
    (b, e)
}

/// The object key and version inside a version key of `bucket`.
pub fn key_of_version<'a>(bucket: &str, version_key: &'a [u8]) -> Option<(&'a str, u64)> {
    let rest = version_key
        .strip_prefix(&[tag::VERSION])?
        .strip_prefix(bucket.as_bytes())?
        .strip_prefix(&[0])?;
    let (key, v) = rest.split_at_checked(rest.len().checked_sub(9)?)?;
    let v = v.strip_prefix(&[0])?;
    Some((
        std::str::from_utf8(key).ok()?,
        !u64::from_be_bytes(v.try_into().ok()?),
    ))
}

/// All versions of one key, newest first in key order.
pub fn versions(bucket: &str, key: &str) -> (Vec<u8>, Vec<u8>) {
    let b = with_strs(tag::VERSION, &[bucket, key]);
    let e = crate::kv::prefix_end(&b);
    (b, e)
}

pub fn content(blake3: &[u8; 32]) -> Vec<u8> {
    let mut k = vec![tag::CONTENT];
    k.extend_from_slice(blake3);
    k
}

pub fn contents() -> (Vec<u8>, Vec<u8>) {
    (vec![tag::CONTENT], vec![tag::CONTENT + 1])
}

pub fn drive_shard(drive: u16, blake3: &[u8; 32], shard: u8) -> Vec<u8> {
    let mut k = vec![tag::DRIVE_SHARD];
    k.extend_from_slice(&drive.to_be_bytes());
    k.extend_from_slice(blake3);
    k.push(shard);
    k
}

pub fn unreferenced(since_ms: u64, blake3: &[u8; 32]) -> Vec<u8> {
    let mut k = vec![tag::UNREFERENCED];
    k.extend_from_slice(&since_ms.to_be_bytes());
    k.extend_from_slice(blake3);
    k
}

/// Unreferenced contents whose last reference went before `until_ms` (exclusive).
pub fn unreferenced_until(until_ms: u64) -> (Vec<u8>, Vec<u8>) {
    let mut e = vec![tag::UNREFERENCED];
    e.extend_from_slice(&until_ms.to_be_bytes());
    (vec![tag::UNREFERENCED], e)
}

/// Parses an unreferenced-index key into (since_ms, blake3).
pub fn parse_unreferenced(k: &[u8]) -> Option<(u64, [u8; 32])> {
    let r = k.strip_prefix(&[tag::UNREFERENCED])?;
    if r.len() != 40 {
        return None;
    }
    Some((
        u64::from_be_bytes(r[..8].try_into().ok()?),
        r[8..].try_into().ok()?,
    ))
}

/// Every shard held by `drive`.
pub fn drive_shards(drive: u16) -> (Vec<u8>, Vec<u8>) {
    let mut b = vec![tag::DRIVE_SHARD];
    b.extend_from_slice(&drive.to_be_bytes());
    let e = crate::kv::prefix_end(&b);
    (b, e)
}

/// Parses a drive-shard key into (blake3, shard index).
pub fn parse_drive_shard(k: &[u8]) -> Option<([u8; 32], u8)> {
    if k.len() != 1 + 2 + 32 + 1 || k[0] != tag::DRIVE_SHARD {
        return None;
    }
    Some((k[3..35].try_into().ok()?, k[35]))
}

/// Cluster-wide counters, kept in the same transactions as what they count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Stat {
    /// Keys whose newest version is not a delete marker.
    Objects = 0,
    /// Version records, delete markers included.
    Versions = 1,
    /// Content records (distinct contents after deduplication).
    Contents = 2,
    /// Bytes of those contents, as clients see them.
    ContentBytes = 3,
    /// Bytes of those contents as stored (compressed), before parity.
    StoredBytes = 4,
}

impl Stat {
    pub const ALL: [Stat; 5] = [
        Stat::Objects,
        Stat::Versions,
        Stat::Contents,
        Stat::ContentBytes,
        Stat::StoredBytes,
    ];
}

pub fn stat(s: Stat) -> Vec<u8> {
    vec![tag::STAT, s as u8]
}

pub fn scrub_policy(drive: Option<u16>) -> Vec<u8> {
    let mut k = vec![tag::SCRUB_POLICY];
    if let Some(d) = drive {
        k.extend_from_slice(&d.to_be_bytes());
    }
    k
}

/// Every per-drive scrub policy (not the default).
pub fn scrub_policies() -> (Vec<u8>, Vec<u8>) {
    (vec![tag::SCRUB_POLICY, 0], vec![tag::SCRUB_POLICY + 1])
}

/// The drive of a per-drive scrub policy key.
pub fn scrub_policy_drive(k: &[u8]) -> Option<u16> {
    let d: [u8; 2] = k.strip_prefix(&[tag::SCRUB_POLICY])?.try_into().ok()?;
    Some(u16::from_be_bytes(d))
}

pub fn scrub_cursor(drive: u16) -> Vec<u8> {
    let mut k = vec![tag::SCRUB_CURSOR];
    k.extend_from_slice(&drive.to_be_bytes());
    k
}

/// The counter of shards on `drive`.
pub fn drive_count(id: u16) -> Vec<u8> {
    let mut k = vec![tag::DRIVE_COUNT];
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub fn drive(id: u16) -> Vec<u8> {
    let mut k = vec![tag::DRIVE];
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub fn drives() -> (Vec<u8>, Vec<u8>) {
    (vec![tag::DRIVE], vec![tag::DRIVE + 1])
}

pub fn intent(id: u64) -> Vec<u8> {
    let mut k = vec![tag::INTENT];
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub fn intents() -> (Vec<u8>, Vec<u8>) {
    (vec![tag::INTENT], vec![tag::INTENT + 1])
}

pub fn moving(blake3: &[u8; 32]) -> Vec<u8> {
    let mut k = vec![tag::MOVE];
    k.extend_from_slice(blake3);
    k
}

pub fn movings() -> (Vec<u8>, Vec<u8>) {
    (vec![tag::MOVE], vec![tag::MOVE + 1])
}

pub fn repair(blake3: &[u8; 32]) -> Vec<u8> {
    let mut k = vec![tag::REPAIR];
    k.extend_from_slice(blake3);
    k
}

pub fn repairs() -> (Vec<u8>, Vec<u8>) {
    (vec![tag::REPAIR], vec![tag::REPAIR + 1])
}

/// Object keys: UTF-8, 1..=1024 bytes, no NUL.
pub fn node(id: u32) -> Vec<u8> {
    let mut k = vec![tag::NODE];
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub fn nodes() -> (Vec<u8>, Vec<u8>) {
    (vec![tag::NODE], vec![tag::NODE + 1])
}

pub fn drain(node: u32) -> Vec<u8> {
    let mut k = vec![tag::DRAIN];
    k.extend_from_slice(&node.to_be_bytes());
    k
}

pub fn drains() -> (Vec<u8>, Vec<u8>) {
    (vec![tag::DRAIN], vec![tag::DRAIN + 1])
}

pub fn membership() -> Vec<u8> {
    vec![tag::MEMBERSHIP]
}

pub fn leader() -> Vec<u8> {
    vec![tag::LEADER]
}

pub fn ca() -> Vec<u8> {
    vec![tag::CA]
}

pub fn root_secret() -> Vec<u8> {
    vec![tag::ROOT_SECRET]
}

pub fn join_token(nonce: &[u8; 16]) -> Vec<u8> {
    let mut k = vec![tag::JOIN_TOKEN];
    k.extend_from_slice(nonce);
    k
}

pub fn node_cert(node: u32, fingerprint: &[u8; 32]) -> Vec<u8> {
    let mut k = vec![tag::NODE_CERT];
    k.extend_from_slice(&node.to_be_bytes());
    k.extend_from_slice(fingerprint);
    k
}

/// The certificates one node presented: `[begin, end)`.
pub fn node_certs(node: u32) -> (Vec<u8>, Vec<u8>) {
    let mut b = vec![tag::NODE_CERT];
    b.extend_from_slice(&node.to_be_bytes());
    let mut e = b.clone();
    e.push(0xff);
    e.extend_from_slice(&[0xff; 32]);
    (b, e)
}

pub fn revoked(fingerprint: &[u8; 32]) -> Vec<u8> {
    let mut k = vec![tag::REVOKED];
    k.extend_from_slice(fingerprint);
    k
}

pub fn write_quorum() -> Vec<u8> {
    vec![tag::WRITE_QUORUM]
}

pub fn repair_rate() -> Vec<u8> {
    vec![tag::REPAIR_RATE]
}

pub fn done(issued_ms: u64, token: &[u8; 16]) -> Vec<u8> {
    let mut k = vec![tag::DONE];
    k.extend_from_slice(&issued_ms.to_be_bytes());
    k.extend_from_slice(token);
    k
}

/// Markers of requests issued before `issued_ms`: `[begin, end)`.
pub fn done_before(issued_ms: u64) -> (Vec<u8>, Vec<u8>) {
    let mut e = vec![tag::DONE];
    e.extend_from_slice(&issued_ms.to_be_bytes());
    (vec![tag::DONE], e)
}

pub fn valid_object_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 1024 && !key.contains('\0')
}

/// Bucket names follow S3's rules: 3..=63 of `a-z 0-9 . -`, starting and ending with a letter
/// or digit, no `..`, not an IPv4 address. The one rule for the native API, tus and S3.
pub fn valid_bucket(name: &str) -> bool {
    let b = name.as_bytes();
    (3..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'.' || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && !name.contains("..")
        && name.parse::<std::net::Ipv4Addr>().is_err()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_keys() {
        assert_eq!(bucket("default"), b"\x10default\x00");
        assert_eq!(head("default", "a/b"), b"\x20default\x00a/b\x00");
        assert_eq!(bucket_versioning("b"), b"\x12b\x00");
        assert_eq!(null_version("b", "a/b"), b"\x22b\x00a/b\x00");
        let (lo, hi) = bucket_null_versions("b");
        assert!(lo.as_slice() <= null_version("b", "k").as_slice() && null_version("b", "k") < hi);
        assert!(null_version("bb", "k") >= hi);
        assert_eq!(
            version("default", "k", 1),
            b"\x21default\x00k\x00\xff\xff\xff\xff\xff\xff\xff\xfe".to_vec()
        );
        assert_eq!(
            key_of_version("default", &version("default", "a/b", 7)),
            Some(("a/b", 7))
        );
        assert_eq!(key_of_version("other", &version("default", "k", 7)), None);
        let id = [7u8; 16];
        assert_eq!(
            parse_mpu_by_key("b", &mpu_by_key("b", "dir/k", &id)),
            Some(("dir/k", id))
        );
        assert_eq!(parse_mpu_expiry(&mpu_expiry(5, &id)), Some(id));
        let (lo, hi) = mpu_expiry_until(6);
        assert!(lo.as_slice() <= mpu_expiry(5, &id).as_slice() && mpu_expiry(5, &id) < hi);
        assert!(mpu_expiry(6, &id) >= hi);
        assert_eq!(key_of_version("default", b"\x21default\x00k"), None);
        let h = [0xABu8; 32];
        let mut c = vec![0x30];
        c.extend_from_slice(&h);
        assert_eq!(content(&h), c);
        let mut ds = vec![0x31, 0x00, 0x05];
        ds.extend_from_slice(&h);
        ds.push(3);
        assert_eq!(drive_shard(5, &h, 3), ds);
        assert_eq!(parse_drive_shard(&ds), Some((h, 3)));
        assert_eq!(drive(258), b"\x40\x01\x02");
        assert_eq!(intent(1), b"\x50\x00\x00\x00\x00\x00\x00\x00\x01");
        assert_eq!(format(), b"\x01");
        assert_eq!(stat(Stat::Versions), b"\x04\x01");
        assert_eq!(scrub_policy(None), b"\x05");
        assert_eq!(scrub_policy(Some(258)), b"\x05\x01\x02");
        assert_eq!(scrub_policy_drive(b"\x05\x01\x02"), Some(258));
        assert_eq!(drive_count(258), b"\x41\x01\x02");
        assert_eq!(scrub_cursor(258), b"\x42\x01\x02");
        assert_eq!(moving(&h)[0], 0x61);
        assert_eq!(drain(7), b"\x73\x00\x00\x00\x07");
        assert_eq!(write_quorum(), b"\x74");
        assert_eq!(repair_rate(), b"\x75");
        let u = unreferenced(258, &h);
        assert_eq!(&u[..9], b"\x32\x00\x00\x00\x00\x00\x00\x01\x02");
        assert_eq!(parse_unreferenced(&u), Some((258, h)));
        let (lo, hi) = unreferenced_until(259);
        assert!(u >= lo && u < hi && unreferenced(259, &h) >= hi);
        // The default scrub policy is outside the per-drive range.
        let (lo, hi) = scrub_policies();
        assert!(
            scrub_policy(None) < lo
                && scrub_policy(Some(0)) >= lo
                && scrub_policy(Some(u16::MAX)) < hi
        );
    }

    #[test]
    fn order_matches_tuples() {
        // Newer versions sort first; "a" sorts before "a/b" and "ab".
        assert!(version("b", "k", 9) < version("b", "k", 3));
        let mut keys = [
            head("b", "ab"),
            head("b", "a/b"),
            head("b", "a"),
            head("b", "b"),
        ];
        keys.sort();
        let names: Vec<_> = keys.iter().map(|k| key_of_head("b", k).unwrap()).collect();
        assert_eq!(names, vec!["a", "a/b", "ab", "b"]);
        let (lo, hi) = heads_with_prefix("b", "a");
        assert!(head("b", "a") >= lo && head("b", "ab") < hi && head("b", "b") >= hi);
    }

    #[test]
    fn validation() {
        assert!(valid_object_key("a"));
        assert!(valid_object_key(&"x".repeat(1024)));
        assert!(!valid_object_key(&"x".repeat(1025)));
        assert!(!valid_object_key(""));
        assert!(!valid_object_key("a\0b"));
        assert!(valid_bucket("default") && valid_bucket("my-bucket.1"));
        assert!(
            !valid_bucket("ab")
                && !valid_bucket("Upper")
                && !valid_bucket("-x-")
                && !valid_bucket("a_b_c")
                && !valid_bucket("a..b")
                && !valid_bucket("192.168.0.1")
        );
    }
}
