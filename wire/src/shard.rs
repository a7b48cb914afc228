//! The shard file format (version 1).
//!
//! A shard file holds one shard (data or parity) of one erasure-coded object. It is written and
//! read with direct I/O, so every region below is a multiple of [`ALIGN_BYTES`].
//!
//! ```text
//! offset 0                : header, HEADER_BYTES (4096)
//! offset HEADER_BYTES     : block 0, BLOCK_BYTES (65536)
//! ... block i at HEADER_BYTES + i * BLOCK_BYTES ...
//! last block              : may be shorter: payload + trailer rounded up to ALIGN_BYTES
//! ```
//!
//! ## Header (4096 bytes, little-endian)
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `b"OSSHARD\0"` |
//! | 8 | 2 | format version, `1` |
//! | 10 | 1 | data shard count K |
//! | 11 | 1 | parity shard count M |
//! | 12 | 1 | this shard's index (0..K are data, K..K+M parity) |
//! | 13 | 3 | reserved, zero |
//! | 16 | 4 | block size in bytes (65536) |
//! | 20 | 4 | file tag: random per shard file, repeated in every block trailer |
//! | 24 | 8 | object size in bytes |
//! | 32 | 32 | BLAKE3-256 of the whole object |
//! | 64 | 8 | block count |
//! | 72 | 4020 | reserved, zero |
//! | 4092 | 4 | CRC32C of bytes 0..4092 |
//!
//! ## Block (65536 bytes; the last block of a file may be shorter)
//! | offset | size | field |
//! |---|---|---|
//! | 0 | payload length | payload: this shard's chunk of one stripe |
//! | payload length | .. | zero padding up to the trailer |
//! | len - 16 | 4 | payload length in bytes |
//! | len - 12 | 4 | block index within the file |
//! | len - 8 | 4 | file tag (as in the header) |
//! | len - 4 | 4 | CRC32C of bytes 0..len-4 of the block |
//!
//! The trailer binds a block to its position (index) and its file (tag), so a block written to
//! the wrong place or a stale file fails verification just as a flipped bit does.
//!
//! Why 64 KiB blocks: a block is the unit of checksum and of read amplification. 64 KiB keeps a
//! 4 KiB range read to one 64 KiB I/O per shard (cheap on SSDs), keeps the per-stripe encode
//! well inside L2, and costs 16 bytes of trailer per 64 KiB (0.02 %).

use thiserror::Error;

/// Direct-I/O alignment every region of a shard file respects.
pub const ALIGN_BYTES: usize = 4096;
/// Size of the header at offset 0.
pub const HEADER_BYTES: usize = 4096;
/// Size of a full block on disk.
pub const BLOCK_BYTES: usize = 65536;
/// Size of the trailer at the end of every block.
pub const TRAILER_BYTES: usize = 16;
/// Largest payload one block carries; a multiple of 2 as Reed-Solomon shards must be.
pub const BLOCK_PAYLOAD_BYTES_MAX: usize = BLOCK_BYTES - TRAILER_BYTES;
/// Current format version.
pub const FORMAT_VERSION: u16 = 1;
/// File magic.
pub const MAGIC: [u8; 8] = *b"OSSHARD\0";

const _: () = assert!(HEADER_BYTES.is_multiple_of(ALIGN_BYTES));
const _: () = assert!(BLOCK_BYTES.is_multiple_of(ALIGN_BYTES));
const _: () = assert!(BLOCK_PAYLOAD_BYTES_MAX.is_multiple_of(2));

// Header offsets, each derived from the one before it.
const H_MAGIC: usize = 0;
const H_VERSION: usize = H_MAGIC + 8;
const H_K: usize = H_VERSION + 2;
const H_M: usize = H_K + 1;
const H_INDEX: usize = H_M + 1;
const H_RESERVED0: usize = H_INDEX + 1;
const H_BLOCK_BYTES: usize = H_RESERVED0 + 3;
const H_TAG: usize = H_BLOCK_BYTES + 4;
const H_SIZE: usize = H_TAG + 4;
const H_BLAKE3: usize = H_SIZE + 8;
const H_BLOCKS: usize = H_BLAKE3 + 32;
const H_RESERVED1: usize = H_BLOCKS + 8;
const H_CRC: usize = HEADER_BYTES - 4;
const _: () = assert!(H_RESERVED1 == 72 && H_CRC > H_RESERVED1);

// Trailer offsets relative to the start of the trailer.
const T_LEN: usize = 0;
const T_INDEX: usize = T_LEN + 4;
const T_TAG: usize = T_INDEX + 4;
const T_CRC: usize = T_TAG + 4;
const _: () = assert!(T_CRC + 4 == TRAILER_BYTES);

/// Why a header or block failed verification. Each variant means the bytes on disk cannot be
/// trusted; the reader reconstructs them from other shards.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatError {
    #[error("bad magic: not a shard file")]
    BadMagic,
    #[error("unsupported shard format version {0}")]
    UnsupportedVersion(u16),
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("block index {found} where {expected} was expected")]
    WrongIndex { expected: u32, found: u32 },
    #[error("block belongs to another file (tag {found:#010x}, expected {expected:#010x})")]
    WrongTag { expected: u32, found: u32 },
    #[error("payload length {found} where {expected} was expected")]
    WrongLength { expected: u32, found: u32 },
    #[error("region is {0} bytes, too short")]
    Short(usize),
}

/// The decoded shard header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardHeader {
    pub data_shards: u8,
    pub parity_shards: u8,
    pub shard_index: u8,
    pub file_tag: u32,
    pub object_size_bytes: u64,
    pub blake3: [u8; 32],
    pub block_count: u64,
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl ShardHeader {
    /// Writes the header into `out[..HEADER_BYTES]`, zeroing reserved bytes.
    pub fn encode(&self, out: &mut [u8]) {
        let out = &mut out[..HEADER_BYTES];
        out.fill(0);
        out[H_MAGIC..H_MAGIC + 8].copy_from_slice(&MAGIC);
        put_u16(out, H_VERSION, FORMAT_VERSION);
        out[H_K] = self.data_shards;
        out[H_M] = self.parity_shards;
        out[H_INDEX] = self.shard_index;
        put_u32(out, H_BLOCK_BYTES, BLOCK_BYTES as u32);
        put_u32(out, H_TAG, self.file_tag);
        put_u64(out, H_SIZE, self.object_size_bytes);
        out[H_BLAKE3..H_BLAKE3 + 32].copy_from_slice(&self.blake3);
        put_u64(out, H_BLOCKS, self.block_count);
        let crc = crc32c::crc32c(&out[..H_CRC]);
        put_u32(out, H_CRC, crc);
    }

    /// Parses and verifies a header.
    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        if b.len() < HEADER_BYTES {
            return Err(FormatError::Short(b.len()));
        }
        if b[H_MAGIC..H_MAGIC + 8] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let stored = get_u32(b, H_CRC);
        let computed = crc32c::crc32c(&b[..H_CRC]);
        if stored != computed {
            return Err(FormatError::Checksum { stored, computed });
        }
        let version = get_u16(b, H_VERSION);
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        Ok(ShardHeader {
            data_shards: b[H_K],
            parity_shards: b[H_M],
            shard_index: b[H_INDEX],
            file_tag: get_u32(b, H_TAG),
            object_size_bytes: get_u64(b, H_SIZE),
            blake3: b[H_BLAKE3..H_BLAKE3 + 32].try_into().expect("32 bytes"),
            block_count: get_u64(b, H_BLOCKS),
        })
    }
}

/// On-disk length of a block carrying `payload_bytes`: a full block, or for a short final payload
/// the payload plus trailer rounded up to [`ALIGN_BYTES`].
pub fn block_len_on_disk(payload_bytes: usize) -> usize {
    assert!(payload_bytes <= BLOCK_PAYLOAD_BYTES_MAX);
    let raw = payload_bytes + TRAILER_BYTES;
    raw.div_ceil(ALIGN_BYTES) * ALIGN_BYTES
}

/// Byte offset of block `index` within a shard file.
pub fn block_offset(index: u64) -> u64 {
    HEADER_BYTES as u64 + index * BLOCK_BYTES as u64
}

/// Seals a block whose payload is already in `block[..payload_bytes]`: zeroes the padding and
/// writes the trailer at the end of `block`, whose length must be
/// `block_len_on_disk(payload_bytes)`.
pub fn seal_block(block: &mut [u8], payload_bytes: usize, index: u32, file_tag: u32) {
    let len = block.len();
    debug_assert_eq!(len, block_len_on_disk(payload_bytes));
    let t = len - TRAILER_BYTES;
    block[payload_bytes..t].fill(0);
    put_u32(block, t + T_LEN, payload_bytes as u32);
    put_u32(block, t + T_INDEX, index);
    put_u32(block, t + T_TAG, file_tag);
    let crc = crc32c::crc32c(&block[..t + T_CRC]);
    put_u32(block, t + T_CRC, crc);
}

/// The block's bytes on disk for a payload of `expected_payload_bytes`, and where its trailer
/// starts.
fn sized(block: &[u8], expected_payload_bytes: usize) -> Result<(&[u8], usize), FormatError> {
    let want_len = block_len_on_disk(expected_payload_bytes);
    if block.len() < want_len {
        return Err(FormatError::Short(block.len()));
    }
    Ok((&block[..want_len], want_len - TRAILER_BYTES))
}

/// Verifies a block read back from disk and returns its payload.
pub fn open_block(
    block: &[u8],
    expected_payload_bytes: usize,
    index: u32,
    file_tag: u32,
) -> Result<&[u8], FormatError> {
    let (block, t) = sized(block, expected_payload_bytes)?;
    let stored = get_u32(block, t + T_CRC);
    let computed = crc32c::crc32c(&block[..t + T_CRC]);
    if stored != computed {
        return Err(FormatError::Checksum { stored, computed });
    }
    open_block_unchecked(block, expected_payload_bytes, index, file_tag)
}

/// [`open_block`] without the CRC: the trailer's index, tag and length only. For a reader that
/// checks the payload another way (against the content's BLAKE3 tree) and reads around a
/// block that fails that check with [`open_block`].
pub fn open_block_unchecked(
    block: &[u8],
    expected_payload_bytes: usize,
    index: u32,
    file_tag: u32,
) -> Result<&[u8], FormatError> {
    let (block, t) = sized(block, expected_payload_bytes)?;
    let found_index = get_u32(block, t + T_INDEX);
    if found_index != index {
        return Err(FormatError::WrongIndex {
            expected: index,
            found: found_index,
        });
    }
    let found_tag = get_u32(block, t + T_TAG);
    if found_tag != file_tag {
        return Err(FormatError::WrongTag {
            expected: file_tag,
            found: found_tag,
        });
    }
    let found_len = get_u32(block, t + T_LEN);
    if found_len as usize != expected_payload_bytes {
        return Err(FormatError::WrongLength {
            expected: expected_payload_bytes as u32,
            found: found_len,
        });
    }
    Ok(&block[..expected_payload_bytes])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> ShardHeader {
        ShardHeader {
            data_shards: 4,
            parity_shards: 2,
            shard_index: 5,
            file_tag: 0xA1B2_C3D4,
            object_size_bytes: 0x0102_0304_0506_0708,
            blake3: [0xEE; 32],
            block_count: 3,
        }
    }

    #[test]
    fn header_golden_bytes() {
        let mut b = vec![0xFFu8; HEADER_BYTES];
        header().encode(&mut b);
        let mut expect = Vec::new();
        expect.extend_from_slice(b"OSSHARD\0");
        expect.extend_from_slice(&[1, 0, 4, 2, 5, 0, 0, 0]);
        expect.extend_from_slice(&[0x00, 0x00, 0x01, 0x00]); // 65536
        expect.extend_from_slice(&[0xD4, 0xC3, 0xB2, 0xA1]);
        expect.extend_from_slice(&[8, 7, 6, 5, 4, 3, 2, 1]);
        expect.extend_from_slice(&[0xEE; 32]);
        expect.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[..72], &expect[..]);
        assert!(b[72..4092].iter().all(|&x| x == 0));
        assert_eq!(get_u32(&b, 4092), crc32c::crc32c(&b[..4092]));
        assert_eq!(ShardHeader::decode(&b).unwrap(), header());
    }

    #[test]
    fn header_rejects_corruption() {
        let mut b = vec![0u8; HEADER_BYTES];
        header().encode(&mut b);
        for at in [0usize, 9, 30, 100, 4095] {
            let mut c = b.clone();
            c[at] ^= 0x10;
            assert!(ShardHeader::decode(&c).is_err(), "flip at {at} accepted");
        }
    }

    #[test]
    fn block_lengths() {
        assert_eq!(block_len_on_disk(BLOCK_PAYLOAD_BYTES_MAX), BLOCK_BYTES);
        assert_eq!(block_len_on_disk(0), 4096);
        assert_eq!(block_len_on_disk(4080), 4096);
        assert_eq!(block_len_on_disk(4082), 8192);
        assert_eq!(block_offset(2), 4096 + 2 * 65536);
    }

    #[test]
    fn block_golden_trailer_and_roundtrip() {
        let mut blk = vec![0xAAu8; 4096];
        blk[..3].copy_from_slice(b"abc");
        seal_block(&mut blk, 3, 7, 0x11223344);
        assert!(blk[3..4080].iter().all(|&x| x == 0));
        assert_eq!(
            &blk[4080..4092],
            &[3, 0, 0, 0, 7, 0, 0, 0, 0x44, 0x33, 0x22, 0x11]
        );
        assert_eq!(get_u32(&blk, 4092), crc32c::crc32c(&blk[..4092]));
        assert_eq!(open_block(&blk, 3, 7, 0x11223344).unwrap(), b"abc");
        assert!(matches!(
            open_block(&blk, 3, 8, 0x11223344),
            Err(FormatError::WrongIndex { .. })
        ));
        assert!(matches!(
            open_block(&blk, 3, 7, 1),
            Err(FormatError::WrongTag { .. })
        ));
        assert!(matches!(
            open_block(&blk, 4, 7, 0x11223344),
            Err(FormatError::WrongLength { .. })
        ));
        let mut bad = blk.clone();
        bad[1] ^= 1;
        assert!(matches!(
            open_block(&bad, 3, 7, 0x11223344),
            Err(FormatError::Checksum { .. })
        ));
        // Without the CRC: the changed payload is handed out (the caller checks it another
        // way), and a block of another file or place still is not.
        assert_eq!(
            open_block_unchecked(&bad, 3, 7, 0x11223344).unwrap(),
            b"acc"
        );
        assert!(matches!(
            open_block_unchecked(&bad, 3, 8, 0x11223344),
            Err(FormatError::WrongIndex { .. })
        ));
        assert!(matches!(
            open_block_unchecked(&bad, 3, 7, 1),
            Err(FormatError::WrongTag { .. })
        ));
    }
}
