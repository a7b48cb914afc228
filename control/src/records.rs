//! Values stored under the keys of [`crate::keys`]. Each value is one format byte
//! ([`RECORD_FORMAT`]) followed by the record in postcard encoding (a specified, stable,
//! varint-based serde format); fields are only ever appended.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Format byte leading every value.
pub const RECORD_FORMAT: u8 = 1;

/// Format byte of version and head records since [`VersionRec::attrs`] was appended; format 1
/// (without it) still decodes, with empty attributes.
pub const VERSION_FORMAT: u8 = 2;

#[derive(Debug, thiserror::Error)]
#[error("undecodable metadata record: {0}")]
pub struct RecordError(pub String);

/// Whether `T` is a version or head record (written in [`VERSION_FORMAT`]).
fn is_versioned<T: 'static>() -> bool {
    use std::any::TypeId;
    let t = TypeId::of::<T>();
    t == TypeId::of::<VersionRec>() || t == TypeId::of::<HeadRec>()
}

pub fn encode<T: Serialize + 'static>(v: &T) -> Vec<u8> {
    let format = if is_versioned::<T>() {
        VERSION_FORMAT
    } else {
        RECORD_FORMAT
    };
    let mut out = vec![format];
    out.extend(postcard::to_stdvec(v).expect("records always serialize"));
    out
}

pub fn decode<T: DeserializeOwned + 'static>(b: &[u8]) -> Result<T, RecordError> {
    let e = |e: postcard::Error| RecordError(e.to_string());
    match b.split_first() {
        Some((&VERSION_FORMAT, rest)) if is_versioned::<T>() => {
            postcard::from_bytes(rest).map_err(e)
        }
        // A version or head record written before attributes existed.
        Some((&RECORD_FORMAT, rest)) if is_versioned::<T>() => {
            let any: Box<dyn std::any::Any> =
                if std::any::TypeId::of::<T>() == std::any::TypeId::of::<VersionRec>() {
                    Box::new(
                        postcard::from_bytes::<VersionRecV1>(rest)
                            .map_err(e)?
                            .upgrade(),
                    )
                } else {
                    let h: HeadRecV1 = postcard::from_bytes(rest).map_err(e)?;
                    Box::new(HeadRec {
                        last_version: h.last_version,
                        newest: h.newest.map(VersionRecV1::upgrade),
                    })
                };
            Ok(*any.downcast::<T>().expect("the type was checked"))
        }
        Some((&RECORD_FORMAT, rest)) if !is_versioned::<T>() => {
            postcard::from_bytes(rest).map_err(e)
        }
        Some((f, _)) => Err(RecordError(format!("unknown record format {f}"))),
        None => Err(RecordError("empty value".into())),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketRec {
    pub created_ms: u64,
}

/// An S3 access key besides `root`. Its secret is not stored: it is derived from the key base
/// and `salt` (by the data plane, which holds the key base), so the metadata alone gives no
/// one a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessKeyRec {
    /// What the operator called it.
    pub name: String,
    pub salt: [u8; 16],
    /// The buckets it may use; empty: every bucket.
    pub buckets: Vec<String>,
    /// Reads and listings only.
    pub read_only: bool,
    pub created_ms: u64,
}

/// One version of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRec {
    pub version: u64,
    pub created_ms: u64,
    pub size_bytes: u64,
    pub blake3: [u8; 32],
    pub delete_marker: bool,
    /// What the writer said of the object besides its bytes (appended in [`VERSION_FORMAT`]).
    pub attrs: ObjectAttrs,
}

impl VersionRec {
    /// Sixteen bytes that change with the object's bytes: its MD5 when the writer gave one,
    /// else the first half of its BLAKE3 (S3's ETag is made of this).
    pub fn tag(&self) -> [u8; 16] {
        self.attrs.md5.unwrap_or_else(|| {
            let mut t = [0u8; 16];
            t.copy_from_slice(&self.blake3[..16]);
            t
        })
    }
}

/// What a writer said of an object besides its bytes, kept with its version and given back
/// when it is read. The store does not interpret it; the front ends do (S3's ETag and
/// metadata).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectAttrs {
    /// MD5 of the object's bytes, or, for an object assembled from `parts` parts, the MD5 of
    /// the concatenated MD5s of its parts (S3's ETag).
    pub md5: Option<[u8; 16]>,
    /// Parts the object was assembled from; 0 when it was written whole.
    pub parts: u32,
    /// Headers given with the write and returned with the object (Content-Type,
    /// Cache-Control, user metadata, a checksum...): lower-case names, in the order given.
    pub headers: Vec<(String, String)>,
}

impl ObjectAttrs {
    /// Bytes of its headers, names and values (what [`ATTRS_BYTES_MAX`] limits).
    pub fn header_bytes(&self) -> usize {
        self.headers.iter().map(|(n, v)| n.len() + v.len()).sum()
    }
}

/// The most header bytes one version may keep.
pub const ATTRS_BYTES_MAX: usize = 16 << 10;

/// Version records as format 1 wrote them.
#[derive(Deserialize)]
struct VersionRecV1 {
    version: u64,
    created_ms: u64,
    size_bytes: u64,
    blake3: [u8; 32],
    delete_marker: bool,
}

impl VersionRecV1 {
    fn upgrade(self) -> VersionRec {
        VersionRec {
            version: self.version,
            created_ms: self.created_ms,
            size_bytes: self.size_bytes,
            blake3: self.blake3,
            delete_marker: self.delete_marker,
            attrs: ObjectAttrs::default(),
        }
    }
}

/// Head records as format 1 wrote them.
#[derive(Deserialize)]
struct HeadRecV1 {
    last_version: u64,
    newest: Option<VersionRecV1>,
}

/// Per key: the highest version ever given (so versions stay strictly increasing even after the
/// newest is removed) and a copy of the newest version for listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadRec {
    pub last_version: u64,
    pub newest: Option<VersionRec>,
}

/// Where one shard of a content lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardLoc {
    pub index: u8,
    pub drive: u16,
    /// Names the file on the drive; see the dataplane's drive layout.
    pub file_id: u64,
    /// Random per file, repeated in every block trailer.
    pub file_tag: u32,
}

impl ShardLoc {
    /// The shard files of a new object placed on `drives`: shard i on `drives[i]`, all named
    /// `file_id`, each with its own tag from `tag`.
    pub fn for_new_object(
        drives: &[u16],
        file_id: u64,
        mut tag: impl FnMut() -> u32,
    ) -> Vec<ShardLoc> {
        drives
            .iter()
            .enumerate()
            .map(|(i, &drive)| ShardLoc {
                index: i as u8,
                drive,
                file_id,
                file_tag: tag(),
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stored {
    /// Small objects live in the metadata itself.
    Inline(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Erasure coded into K+M shard files.
    Sharded {
        data: u8,
        parity: u8,
        shards: Vec<ShardLoc>,
    },
    /// Assembled from `parts` parts, each a content of its own that this one holds a reference
    /// to; the list is under [`crate::keys::content_parts`]. Its name is not the BLAKE3 of its
    /// bytes but of its part list ([`crate::multipart::assembled_name`]).
    Parts { parts: u32 },
}

/// One part of a content assembled from parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRef {
    pub blake3: [u8; 32],
    pub size_bytes: u64,
}

/// One stored content, named by its BLAKE3; shared by every version with that content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentRec {
    pub size_bytes: u64,
    /// Versions referring to this content. At 0 the content waits for GC.
    pub refs: u64,
    pub created_ms: u64,
    /// When `refs` last fell to 0; GC removes content only after a grace period from here.
    pub unreferenced_since_ms: Option<u64>,
    pub stored: Stored,
    /// Repair found fewer than K good shards: the next upload of the same bytes replaces the
    /// stored copy instead of deduplicating against it.
    pub damaged: bool,
    /// How the object's bytes are stored (added in content format 2).
    pub encoding: Encoding,
    /// What the shard files hold after the stored bytes to verify any range of the object
    /// against its BLAKE3 (added in content format 3).
    pub tree: Tree,
}

/// What follows a content's stored bytes in its shard files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tree {
    /// Nothing: a content written before trees, or one not stored in shard files (inline,
    /// whose every read hashes it whole, or assembled from parts, each with its own tree).
    #[default]
    None,
    /// The outboard of `ostore_engine::tree` for the object's `size_bytes`, in the store's
    /// shape (`Shape::new`: groups of at least 64 KiB, at most 2^18 of them, fan-out 1024):
    /// `Shape::new(size_bytes).outboard_bytes()` bytes after the stored bytes.
    Outboard,
}

/// The stored form of an object's bytes. `size_bytes` is always the object's (logical) size;
/// the shard files hold the stored bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    /// The object's bytes as they are.
    #[default]
    Identity,
    /// Independent zstd frames followed by a seek table (`ostore_engine::compress`).
    Zstd { stored_bytes: u64, frames: u32 },
}

impl ContentRec {
    /// Bytes in the shard files (or inline).
    pub fn stored_bytes(&self) -> u64 {
        match self.encoding {
            Encoding::Identity => self.size_bytes,
            Encoding::Zstd { stored_bytes, .. } => stored_bytes,
        }
    }

    /// Bytes of the outboard after the stored bytes.
    pub fn outboard_bytes(&self) -> u64 {
        match self.tree {
            Tree::None => 0,
            Tree::Outboard => ostore_engine::tree::Shape::new(self.size_bytes).outboard_bytes(),
        }
    }

    /// Bytes the shard files hold: the stored bytes, then the outboard. The shard files'
    /// geometry (stripes, blocks, header's size) is that of this many bytes.
    pub fn payload_bytes(&self) -> u64 {
        self.stored_bytes() + self.outboard_bytes()
    }
}

/// Format byte of content records: 3 since `tree` was appended; format 2 (without it)
/// decodes with `Tree::None`, and format 1 (without `encoding` either) as `Identity` too.
pub const CONTENT_FORMAT: u8 = 3;

pub fn encode_content(c: &ContentRec) -> Vec<u8> {
    let mut out = vec![CONTENT_FORMAT];
    out.extend(postcard::to_stdvec(c).expect("records always serialize"));
    out
}

pub fn decode_content(b: &[u8]) -> Result<ContentRec, RecordError> {
    let e = |e: postcard::Error| RecordError(e.to_string());
    match b.split_first() {
        Some((&CONTENT_FORMAT, rest)) => postcard::from_bytes(rest).map_err(e),
        // Each format appended one field, an enum whose first variant (index 0) is what
        // records without it mean: an older record is a newer one without those last bytes.
        Some((&2, rest)) => postcard::from_bytes(&[rest, &[0]].concat()).map_err(e),
        Some((&1, rest)) => postcard::from_bytes(&[rest, &[0, 0]].concat()).map_err(e),
        Some((f, _)) => Err(RecordError(format!("unknown content record format {f}"))),
        None => Err(RecordError("empty value".into())),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveRec {
    /// Identity written into the drive's `drive.id` file; a drive whose file is missing or
    /// different was replaced and must be refilled.
    pub uuid: [u8; 16],
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IntentState {
    /// Shard files are being written; on restart they are deleted.
    Writing,
    /// The version is committed; `adopted` says whether the files became the content's shards
    /// (if not, identical content existed and the files are to be deleted).
    Committed {
        version: u64,
        created_ms: u64,
        adopted: bool,
    },
    /// Shard files are being written by `owner`: resolved (files deleted) as soon as the owner
    /// is known to have restarted (another boot) or was evacuated, without waiting for age.
    WritingBy(Owner),
    /// The writer gave up (its write failed) but could not delete every file (a node was
    /// unreachable): whoever sweeps deletes them once their nodes answer.
    Abandoned,
}

/// The process that writes an intent's files: a node and its boot (random per start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub node: u32,
    pub boot: u64,
}

/// Shard files being written by one upload or repair, recorded before the first byte hits a
/// drive so that a crash leaves nothing unaccounted for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentRec {
    pub created_ms: u64,
    pub shards: Vec<ShardLoc>,
    pub state: IntentState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairRec {
    pub queued_ms: u64,
    /// Changes with every request: a repair clears the entry only if no new request came in
    /// while it ran.
    pub nonce: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_intent_states() {
        let rec = |state| IntentRec {
            created_ms: 1,
            shards: Vec::new(),
            state,
        };
        let by = rec(IntentState::WritingBy(Owner { node: 2, boot: 3 }));
        assert_eq!(encode(&by), [1, 1, 0, 2, 2, 3]);
        assert_eq!(decode::<IntentRec>(&[1, 1, 0, 2, 2, 3]).unwrap(), by);
        assert_eq!(encode(&rec(IntentState::Abandoned)), [1, 1, 0, 3]);
        // Intents written before owners were recorded still decode.
        assert_eq!(
            decode::<IntentRec>(&[1, 1, 0, 0]).unwrap(),
            rec(IntentState::Writing)
        );
    }

    #[test]
    fn golden_version_record() {
        let v = VersionRec {
            version: 3,
            created_ms: 300,
            size_bytes: 5,
            blake3: [1; 32],
            delete_marker: false,
            attrs: ObjectAttrs::default(),
        };
        let b = encode(&v);
        let mut v1 = vec![1, 3, 0xAC, 0x02, 5];
        v1.extend_from_slice(&[1; 32]);
        v1.push(0);
        // Format 2 appends the attributes: no MD5, no parts, no headers.
        let mut expect = vec![2];
        expect.extend_from_slice(&v1[1..]);
        expect.extend_from_slice(&[0, 0, 0]);
        assert_eq!(b, expect);
        assert_eq!(decode::<VersionRec>(&b).unwrap(), v);
        assert!(decode::<VersionRec>(&[9, 1]).is_err());
        // Records of format 1 still decode, with empty attributes.
        assert_eq!(decode::<VersionRec>(&v1).unwrap(), v);
        let mut h1 = vec![1, 3, 1];
        h1.extend_from_slice(&v1[1..]);
        let h = HeadRec {
            last_version: 3,
            newest: Some(v.clone()),
        };
        assert_eq!(decode::<HeadRec>(&h1).unwrap(), h);
        assert_eq!(decode::<HeadRec>(&encode(&h)).unwrap(), h);
        assert_eq!(decode::<HeadRec>(&[1, 7, 0]).unwrap().last_version, 7);
        // Other records are not taken for format 2.
        assert!(decode::<BucketRec>(&[2, 1]).is_err());
        let a = VersionRec {
            attrs: ObjectAttrs {
                md5: Some([7; 16]),
                parts: 3,
                headers: vec![("content-type".into(), "text/plain".into())],
            },
            ..v
        };
        assert_eq!(decode::<VersionRec>(&encode(&a)).unwrap(), a);
    }

    #[test]
    fn content_records_of_format_1_still_decode() {
        let c = ContentRec {
            size_bytes: 5,
            refs: 1,
            created_ms: 2,
            unreferenced_since_ms: None,
            stored: Stored::Inline(b"hello".to_vec()),
            damaged: false,
            encoding: Encoding::Identity,
            tree: Tree::None,
        };
        let v1 = [1, 5, 1, 2, 0, 0, 5, b'h', b'e', b'l', b'l', b'o', 0];
        assert_eq!(decode_content(&v1).unwrap(), c);
        let mut v2 = vec![2];
        v2.extend_from_slice(&v1[1..]);
        v2.push(0);
        assert_eq!(decode_content(&v2).unwrap(), c);
        let mut v3 = vec![3];
        v3.extend_from_slice(&v2[1..]);
        v3.push(0);
        assert_eq!(encode_content(&c), v3);
        let t = ContentRec {
            tree: Tree::Outboard,
            ..c.clone()
        };
        assert_eq!(decode_content(&encode_content(&t)).unwrap(), t);
        let z = ContentRec {
            encoding: Encoding::Zstd {
                stored_bytes: 300,
                frames: 2,
            },
            ..c
        };
        assert_eq!(decode_content(&encode_content(&z)).unwrap(), z);
        assert_eq!(z.stored_bytes(), 300);
    }
}

#[cfg(test)]
mod bytes_tests {
    /// Byte strings (`serde_bytes`) have exactly the encoding postcard gives a sequence of
    /// `u8`, so records written before they were marked decode as before, and the reverse.
    #[test]
    fn byte_strings_encode_as_sequences_of_u8() {
        for n in [0usize, 1, 127, 128, 300, 4096, 70_000] {
            let v: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
            let as_seq = postcard::to_stdvec(&v).unwrap();
            let as_bytes = postcard::to_stdvec(serde_bytes::Bytes::new(&v)).unwrap();
            assert_eq!(as_seq, as_bytes, "{n} bytes");
            let back: serde_bytes::ByteBuf = postcard::from_bytes(&as_seq).unwrap();
            assert_eq!(back.as_slice(), v.as_slice());
            let old: Vec<u8> = postcard::from_bytes(&as_bytes).unwrap();
            assert_eq!(old, v);
        }
        let c = super::Stored::Inline(vec![9, 8, 7]);
        let b = postcard::to_stdvec(&c).unwrap();
        assert_eq!(b, [0, 3, 9, 8, 7], "variant 0, length, the bytes");
    }
}
