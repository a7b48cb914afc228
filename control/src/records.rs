//! Values stored under the keys of [`crate::keys`]. Each value is one format byte
//! ([`RECORD_FORMAT`]) followed by the record in postcard encoding (a specified, stable,
//! varint-based serde format); fields are only ever appended.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Format byte leading every value.
pub const RECORD_FORMAT: u8 = 1;

#[derive(Debug, thiserror::Error)]
#[error("undecodable metadata record: {0}")]
pub struct RecordError(pub String);

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![RECORD_FORMAT];
    out.extend(postcard::to_stdvec(v).expect("records always serialize"));
    out
}

pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, RecordError> {
    match b.split_first() {
        Some((&RECORD_FORMAT, rest)) => {
            postcard::from_bytes(rest).map_err(|e| RecordError(e.to_string()))
        }
        Some((f, _)) => Err(RecordError(format!("unknown record format {f}"))),
        None => Err(RecordError("empty value".into())),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketRec {
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
    Inline(Vec<u8>),
    /// Erasure coded into K+M shard files.
    Sharded {
        data: u8,
        parity: u8,
        shards: Vec<ShardLoc>,
    },
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
}

/// Format byte of content records: 2 since `encoding` was appended; format 1 (without it)
/// still decodes, as `Identity`.
pub const CONTENT_FORMAT: u8 = 2;

/// Content records as format 1 wrote them.
#[derive(Deserialize)]
struct ContentRecV1 {
    size_bytes: u64,
    refs: u64,
    created_ms: u64,
    unreferenced_since_ms: Option<u64>,
    stored: Stored,
    damaged: bool,
}

pub fn encode_content(c: &ContentRec) -> Vec<u8> {
    let mut out = vec![CONTENT_FORMAT];
    out.extend(postcard::to_stdvec(c).expect("records always serialize"));
    out
}

pub fn decode_content(b: &[u8]) -> Result<ContentRec, RecordError> {
    let e = |e: postcard::Error| RecordError(e.to_string());
    match b.split_first() {
        Some((&CONTENT_FORMAT, rest)) => postcard::from_bytes(rest).map_err(e),
        Some((&1, rest)) => {
            let v: ContentRecV1 = postcard::from_bytes(rest).map_err(e)?;
            Ok(ContentRec {
                size_bytes: v.size_bytes,
                refs: v.refs,
                created_ms: v.created_ms,
                unreferenced_since_ms: v.unreferenced_since_ms,
                stored: v.stored,
                damaged: v.damaged,
                encoding: Encoding::Identity,
            })
        }
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
        };
        let b = encode(&v);
        let mut expect = vec![1, 3, 0xAC, 0x02, 5];
        expect.extend_from_slice(&[1; 32]);
        expect.push(0);
        assert_eq!(b, expect);
        assert_eq!(decode::<VersionRec>(&b).unwrap(), v);
        assert!(decode::<VersionRec>(&[9, 1]).is_err());
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
        };
        let v1 = [1, 5, 1, 2, 0, 0, 5, b'h', b'e', b'l', b'l', b'o', 0];
        assert_eq!(decode_content(&v1).unwrap(), c);
        let mut v2 = vec![2];
        v2.extend_from_slice(&v1[1..]);
        v2.push(0);
        assert_eq!(encode_content(&c), v2);
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
