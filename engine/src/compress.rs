//! zstd at rest: the seekable stored form of a compressed object.
//!
//! An object that compresses is stored as a sequence of independent zstd frames, each holding
//! at most [`FRAME_BYTES`] of the object, followed by a seek table in zstd's seekable format
//! (a skippable frame). The stored bytes are therefore one valid zstd stream — they go out as
//! they are to a client that accepts `Content-Encoding: zstd` — and a Range read finds the
//! frames it needs in the seek table and decompresses only those.
//!
//! Seek table (zstd's `contrib/seekable_format`, all integers little-endian, no checksums):
//!
//! ```text
//! offset      size  field
//! 0           4     skippable frame magic 0x184D2A5E
//! 4           4     frame size = 8 × frames + 9 (the bytes that follow)
//! 8 + 8i      4     compressed size of frame i
//! 12 + 8i     4     decompressed size of frame i
//! 8 + 8n      4     number of frames n
//! 12 + 8n     1     descriptor: 0 (no per-frame checksums: every block on disk has a CRC32C)
//! 13 + 8n     4     seekable magic 0x8F92EAB1
//! ```
//!
//! Whether an object is compressed is decided once, cheaply, on a sample of its first bytes
//! ([`worth_compressing`]): data that does not shrink by an eighth (random, already compressed)
//! is stored as is and costs one small trial compression.

use std::ops::Range;

/// Object bytes per frame: the unit a Range read decompresses.
pub const FRAME_BYTES: usize = 256 * 1024;
/// Bytes of an object's start compressed to decide whether the object is compressed.
pub const PROBE_BYTES: usize = 64 * 1024;
/// The zstd level objects are compressed with (fast; most of the ratio of higher levels on
/// text, at several times the speed).
pub const LEVEL: i32 = 1;

const SKIPPABLE_MAGIC: u32 = 0x184D_2A5E;
const SEEKABLE_MAGIC: u32 = 0x8F92_EAB1;
const ENTRY_BYTES: usize = 8;
const FOOTER_BYTES: usize = 9;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CompressError {
    #[error("zstd: {0}")]
    Zstd(String),
    #[error("bad seek table: {0}")]
    SeekTable(&'static str),
    #[error("frame {0} decompressed to {1} bytes, its entry says {2}")]
    FrameSize(usize, usize, usize),
}

/// One frame's entry in the seek table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FrameEntry {
    pub stored_bytes: u32,
    pub object_bytes: u32,
}

impl FrameEntry {
    /// Bytes of one entry in [`FrameEntry::encode_all`]'s form.
    pub const BYTES: usize = 8;

    /// The entries as a seek table lists them (stored size, object size; u32 little-endian
    /// each): fixed-size, so encodings of consecutive runs concatenate.
    pub fn encode_all(frames: &[FrameEntry]) -> Vec<u8> {
        let mut out = Vec::with_capacity(frames.len() * Self::BYTES);
        for f in frames {
            out.extend_from_slice(&f.stored_bytes.to_le_bytes());
            out.extend_from_slice(&f.object_bytes.to_le_bytes());
        }
        out
    }

    pub fn decode_all(b: &[u8]) -> Option<Vec<FrameEntry>> {
        if !b.len().is_multiple_of(Self::BYTES) {
            return None;
        }
        Some(
            b.chunks(Self::BYTES)
                .map(|c| FrameEntry {
                    stored_bytes: u32::from_le_bytes(c[..4].try_into().expect("4")),
                    object_bytes: u32::from_le_bytes(c[4..].try_into().expect("4")),
                })
                .collect(),
        )
    }
}

/// Bytes of the seek table for `frames` frames.
pub fn seek_table_bytes(frames: u32) -> u64 {
    8 + ENTRY_BYTES as u64 * frames as u64 + FOOTER_BYTES as u64
}

/// Does `sample` (an object's first bytes) shrink by at least an eighth at [`LEVEL`]?
pub fn worth_compressing(sample: &[u8]) -> bool {
    if sample.is_empty() {
        return false;
    }
    thread_local! {
        static CCTX: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    CCTX.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = zstd::bulk::Compressor::new(LEVEL).ok();
        }
        match c.as_mut().map(|c| c.compress(sample)) {
            Some(Ok(out)) => out.len() + sample.len() / 8 <= sample.len(),
            _ => false,
        }
    })
}

/// Cuts object bytes into frames and compresses each; appends the stored bytes to the caller's
/// buffer as frames complete.
pub struct FrameWriter {
    cctx: zstd::bulk::Compressor<'static>,
    pending: Vec<u8>,
    scratch: Vec<u8>,
    frames: Vec<FrameEntry>,
    object_bytes: u64,
    stored_bytes: u64,
}

impl FrameWriter {
    pub fn new() -> Result<Self, CompressError> {
        let cctx =
            zstd::bulk::Compressor::new(LEVEL).map_err(|e| CompressError::Zstd(e.to_string()))?;
        Ok(FrameWriter {
            cctx,
            pending: Vec::with_capacity(FRAME_BYTES),
            scratch: Vec::new(),
            frames: Vec::new(),
            object_bytes: 0,
            stored_bytes: 0,
        })
    }

    /// Takes object bytes; every frame they complete is compressed and appended to `out`.
    pub fn push(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), CompressError> {
        while !input.is_empty() {
            let n = (FRAME_BYTES - self.pending.len()).min(input.len());
            self.pending.extend_from_slice(&input[..n]);
            input = &input[n..];
            if self.pending.len() == FRAME_BYTES {
                self.flush(out)?;
            }
        }
        Ok(())
    }

    /// Closes the frame being filled (possibly short), appending it to `out`.
    pub fn flush(&mut self, out: &mut Vec<u8>) -> Result<(), CompressError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.scratch.clear();
        self.scratch
            .reserve(zstd::zstd_safe::compress_bound(self.pending.len()));
        let n = self
            .cctx
            .compress_to_buffer(&self.pending, &mut self.scratch)
            .map_err(|e| CompressError::Zstd(e.to_string()))?;
        out.extend_from_slice(&self.scratch[..n]);
        self.frames.push(FrameEntry {
            stored_bytes: n as u32,
            object_bytes: self.pending.len() as u32,
        });
        self.object_bytes += self.pending.len() as u64;
        self.stored_bytes += n as u64;
        self.pending.clear();
        Ok(())
    }

    /// Frames closed so far.
    pub fn frames(&self) -> &[FrameEntry] {
        &self.frames
    }

    /// Takes the entries of the frames closed so far (for a writer that persists them in
    /// pieces, such as a resumable upload).
    pub fn take_frames(&mut self) -> Vec<FrameEntry> {
        std::mem::take(&mut self.frames)
    }

    /// Object bytes taken, and stored bytes produced, by closed frames.
    pub fn totals(&self) -> (u64, u64) {
        (self.object_bytes, self.stored_bytes)
    }
}

/// Appends the seek table for `frames` to `out`.
pub fn write_seek_table(frames: &[FrameEntry], out: &mut Vec<u8>) {
    let n = frames.len();
    out.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
    out.extend_from_slice(&((ENTRY_BYTES * n + FOOTER_BYTES) as u32).to_le_bytes());
    for f in frames {
        out.extend_from_slice(&f.stored_bytes.to_le_bytes());
        out.extend_from_slice(&f.object_bytes.to_le_bytes());
    }
    out.extend_from_slice(&(n as u32).to_le_bytes());
    out.push(0);
    out.extend_from_slice(&SEEKABLE_MAGIC.to_le_bytes());
}

/// Where every frame lives, from a parsed seek table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameIndex {
    /// `stored[i]..stored[i+1]` are frame i's stored bytes; `object[i]..object[i+1]` its
    /// object bytes.
    stored: Vec<u64>,
    object: Vec<u64>,
}

/// The frames a range of the object needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramePlan {
    pub frames: Range<usize>,
    /// The stored bytes of those frames.
    pub stored: Range<u64>,
    /// Object offset where the first of them starts.
    pub object_start: u64,
}

impl FrameIndex {
    /// Parses a seek table (exactly its bytes) and checks it against the sizes the metadata
    /// records.
    pub fn parse(
        table: &[u8],
        object_bytes: u64,
        stored_bytes: u64,
    ) -> Result<Self, CompressError> {
        let u32_at = |at: usize| u32::from_le_bytes(table[at..at + 4].try_into().expect("4"));
        if table.len() < 8 + FOOTER_BYTES {
            return Err(CompressError::SeekTable("too short"));
        }
        let foot = table.len() - FOOTER_BYTES;
        let n = u32_at(foot) as usize;
        if u32_at(0) != SKIPPABLE_MAGIC
            || u32_at(foot + 5) != SEEKABLE_MAGIC
            || table[foot + 4] != 0
        {
            return Err(CompressError::SeekTable("bad magic or descriptor"));
        }
        if table.len() as u64 != seek_table_bytes(n as u32) || u32_at(4) as usize != table.len() - 8
        {
            return Err(CompressError::SeekTable(
                "length does not match its frame count",
            ));
        }
        let mut stored = Vec::with_capacity(n + 1);
        let mut object = Vec::with_capacity(n + 1);
        let (mut s, mut o) = (0u64, 0u64);
        stored.push(0);
        object.push(0);
        // Every frame was written holding 1..=FRAME_BYTES object bytes: a table read back
        // from a drive that says otherwise is damaged, and would otherwise make a reader
        // allocate whatever an entry claims.
        let stored_max = zstd::zstd_safe::compress_bound(FRAME_BYTES) as u64;
        for i in 0..n {
            let (fs, fo) = (
                u32_at(8 + ENTRY_BYTES * i) as u64,
                u32_at(12 + ENTRY_BYTES * i) as u64,
            );
            if fo == 0 || fo > FRAME_BYTES as u64 || fs == 0 || fs > stored_max {
                return Err(CompressError::SeekTable(
                    "a frame's sizes are out of bounds",
                ));
            }
            s += fs;
            o += fo;
            stored.push(s);
            object.push(o);
        }
        if o != object_bytes || s + table.len() as u64 != stored_bytes {
            return Err(CompressError::SeekTable("sizes do not match the metadata"));
        }
        Ok(FrameIndex { stored, object })
    }

    pub fn frame_count(&self) -> usize {
        self.stored.len() - 1
    }

    /// Object bytes of frame `i`.
    pub fn object_len(&self, i: usize) -> usize {
        (self.object[i + 1] - self.object[i]) as usize
    }

    /// Object offset where frame `i`'s bytes end.
    pub fn object_end(&self, i: usize) -> u64 {
        self.object[i + 1]
    }

    /// Stored offset where the frames wholly before object offset `object_offset` end.
    pub fn stored_before(&self, object_offset: u64) -> u64 {
        let done = self.object.partition_point(|&o| o <= object_offset) - 1;
        self.stored[done]
    }

    /// Stored bytes of frame `i`.
    pub fn stored_len(&self, i: usize) -> usize {
        (self.stored[i + 1] - self.stored[i]) as usize
    }

    /// The frames holding object bytes `range` (non-empty, within the object).
    pub fn plan(&self, range: Range<u64>) -> FramePlan {
        assert!(range.start < range.end && range.end <= *self.object.last().expect("one"));
        // The frame containing byte b is the last i with object[i] <= b.
        let first = self.object.partition_point(|&o| o <= range.start) - 1;
        let last = self.object.partition_point(|&o| o < range.end) - 1;
        FramePlan {
            frames: first..last + 1,
            stored: self.stored[first]..self.stored[last + 1],
            object_start: self.object[first],
        }
    }
}

/// Decompresses frame `i` (its stored bytes `frame`) and checks its size.
pub fn decompress_frame(
    dctx: &mut zstd::bulk::Decompressor<'static>,
    index: &FrameIndex,
    i: usize,
    frame: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), CompressError> {
    let want = index.object_len(i);
    let start = out.len();
    // Straight into the caller's buffer: no intermediate copy.
    out.resize(start + want, 0);
    let n = dctx
        .decompress_to_buffer(frame, &mut out[start..])
        .map_err(|e| CompressError::Zstd(e.to_string()));
    match n {
        Ok(n) if n == want => Ok(()),
        Ok(n) => {
            out.truncate(start);
            Err(CompressError::FrameSize(i, n, want))
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn text(n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 100);
        let mut i = 0u64;
        while out.len() < n {
            out.extend_from_slice(
                format!(
                    "{{\"id\":{i},\"name\":\"user{}\",\"ok\":true}}\n",
                    i * 7919 % 1000
                )
                .as_bytes(),
            );
            i += 1;
        }
        out.truncate(n);
        out
    }

    fn stored_form(object: &[u8], pieces: usize) -> (Vec<u8>, Vec<FrameEntry>) {
        let mut w = FrameWriter::new().unwrap();
        let mut out = Vec::new();
        for c in object.chunks(object.len().div_ceil(pieces).max(1)) {
            w.push(c, &mut out).unwrap();
        }
        w.flush(&mut out).unwrap();
        let frames = w.frames().to_vec();
        write_seek_table(&frames, &mut out);
        (out, frames)
    }

    #[test]
    fn decides_cheaply_and_correctly() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let random: Vec<u8> = (0..PROBE_BYTES).map(|_| rng.gen()).collect();
        assert!(!worth_compressing(&random));
        assert!(worth_compressing(&text(PROBE_BYTES)));
        assert!(!worth_compressing(&[]));
    }

    #[test]
    fn the_stored_form_is_one_zstd_stream_and_seekable() {
        let object = text(3 * FRAME_BYTES + 12345);
        let (stored, frames) = stored_form(&object, 7);
        assert_eq!(frames.len(), 4);
        // Any zstd decoder reads the whole stored form back (the seek table is skipped).
        assert_eq!(zstd::stream::decode_all(&stored[..]).unwrap(), object);
        let table_len = seek_table_bytes(frames.len() as u32) as usize;
        let table = &stored[stored.len() - table_len..];
        let index = FrameIndex::parse(table, object.len() as u64, stored.len() as u64).unwrap();
        let mut dctx = zstd::bulk::Decompressor::new().unwrap();
        for range in [
            0..1,
            5..FRAME_BYTES as u64,
            FRAME_BYTES as u64 - 1..FRAME_BYTES as u64 + 1,
            700_000..object.len() as u64,
            0..object.len() as u64,
        ] {
            let plan = index.plan(range.clone());
            let mut out = Vec::new();
            let mut at = plan.stored.start as usize;
            for i in plan.frames.clone() {
                let len = index.stored_len(i);
                decompress_frame(&mut dctx, &index, i, &stored[at..at + len], &mut out).unwrap();
                at += len;
            }
            assert_eq!(at as u64, plan.stored.end);
            let skip = (range.start - plan.object_start) as usize;
            let got = &out[skip..skip + (range.end - range.start) as usize];
            assert_eq!(got, &object[range.start as usize..range.end as usize]);
        }
        // Sizes that do not match the metadata are refused.
        assert!(FrameIndex::parse(table, object.len() as u64 + 1, stored.len() as u64).is_err());
        let mut bad = table.to_vec();
        bad[table_len - 1] ^= 1;
        assert!(FrameIndex::parse(&bad, object.len() as u64, stored.len() as u64).is_err());
    }

    #[test]
    fn short_frames_from_flushes_are_seekable_too() {
        let object = text(FRAME_BYTES + 1000);
        let mut w = FrameWriter::new().unwrap();
        let mut out = Vec::new();
        w.push(&object[..100], &mut out).unwrap();
        w.flush(&mut out).unwrap();
        w.push(&object[100..], &mut out).unwrap();
        w.flush(&mut out).unwrap();
        let frames = w.frames().to_vec();
        assert_eq!(
            frames.iter().map(|f| f.object_bytes).collect::<Vec<_>>(),
            vec![100, FRAME_BYTES as u32, 900]
        );
        write_seek_table(&frames, &mut out);
        assert_eq!(zstd::stream::decode_all(&out[..]).unwrap(), object);
        let t = seek_table_bytes(3) as usize;
        let index = FrameIndex::parse(&out[out.len() - t..], object.len() as u64, out.len() as u64)
            .unwrap();
        let p = index.plan(99..101);
        assert_eq!(p.frames, 0..2);
        assert_eq!(p.object_start, 0);
        let p = index.plan(FRAME_BYTES as u64 + 100..FRAME_BYTES as u64 + 101);
        assert_eq!(p.frames, 2..3);
    }

    #[test]
    fn golden_seek_table() {
        let mut out = Vec::new();
        write_seek_table(
            &[FrameEntry {
                stored_bytes: 0x0102,
                object_bytes: 0x0304,
            }],
            &mut out,
        );
        assert_eq!(
            out,
            [
                0x5E, 0x2A, 0x4D, 0x18, 17, 0, 0, 0, 0x02, 0x01, 0, 0, 0x04, 0x03, 0, 0, 1, 0, 0,
                0, 0, 0xB1, 0xEA, 0x92, 0x8F
            ]
        );
        assert_eq!(seek_table_bytes(1), out.len() as u64);
        let two = [
            FrameEntry {
                stored_bytes: 1,
                object_bytes: 2,
            },
            FrameEntry {
                stored_bytes: 3,
                object_bytes: 4,
            },
        ];
        let mut joined = FrameEntry::encode_all(&two[..1]);
        joined.extend(FrameEntry::encode_all(&two[1..]));
        assert_eq!(FrameEntry::decode_all(&joined).unwrap(), two);
        assert!(FrameEntry::decode_all(&joined[..7]).is_none());
    }
}
