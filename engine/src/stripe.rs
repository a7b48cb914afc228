//! Cutting a byte stream into stripes (PUT) and finding bytes in stripes (GET, repair).
//!
//! [`Striper`] is the PUT state machine: the caller hands it body bytes and a set of per-shard
//! batch buffers; it lays the bytes out as data chunks, and when a batch is full (or the body
//! ends) it computes the parity chunks and seals every block with its trailer. The caller only
//! moves buffers to and from storage.

use crate::codec::{Codec, CodecError};
use crate::geometry::{chunk_for, Geometry};
use crate::EcParams;
use ostore_wire::shard::{block_len_on_disk, seal_block, BLOCK_BYTES, BLOCK_PAYLOAD_BYTES_MAX};
use std::ops::Range;

const P: usize = BLOCK_PAYLOAD_BYTES_MAX;

/// What one sealed batch holds: every shard buffer's bytes `[0, bytes)` go to its file at
/// `block_offset(first_block)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedBatch {
    pub first_block: u64,
    pub stripes: usize,
    pub bytes: usize,
}

/// PUT-side striping state. Buffers are `batch_stripes * BLOCK_BYTES` bytes per shard.
#[derive(Debug)]
pub struct Striper {
    ec: EcParams,
    batch_stripes: usize,
    stripe_in_batch: usize,
    fill_bytes: usize,
    blocks_sealed: u64,
    total_bytes: u64,
}

impl Striper {
    pub fn new(ec: EcParams, batch_stripes: usize) -> Self {
        assert!(batch_stripes > 0);
        Striper {
            ec,
            batch_stripes,
            stripe_in_batch: 0,
            fill_bytes: 0,
            blocks_sealed: 0,
            total_bytes: 0,
        }
    }

    /// Bytes each shard buffer must hold.
    pub fn buffer_bytes(&self) -> usize {
        self.batch_stripes * BLOCK_BYTES
    }

    /// Body bytes taken so far.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Blocks written to each shard so far (sealed batches).
    pub fn blocks_sealed(&self) -> u64 {
        self.blocks_sealed
    }

    pub fn batch_full(&self) -> bool {
        self.stripe_in_batch == self.batch_stripes
    }

    /// Copies as much of `input` as fits in the current batch into the data shard buffers and
    /// returns how many bytes it took. Takes nothing once the batch is full.
    pub fn feed(&mut self, mut input: &[u8], shards: &mut [&mut [u8]]) -> usize {
        let k = self.ec.k();
        let mut taken = 0;
        while !input.is_empty() && !self.batch_full() {
            let shard = self.fill_bytes / P;
            let within = self.fill_bytes % P;
            let n = (P - within).min(input.len());
            let at = self.stripe_in_batch * BLOCK_BYTES + within;
            shards[shard][at..at + n].copy_from_slice(&input[..n]);
            input = &input[n..];
            taken += n;
            self.fill_bytes += n;
            if self.fill_bytes == k * P {
                self.fill_bytes = 0;
                self.stripe_in_batch += 1;
            }
        }
        self.total_bytes += taken as u64;
        taken
    }

    /// Seals the batch: lays out a final partial stripe (when `last`), computes parity, writes
    /// block trailers. Returns what to write; the buffers can be reused after the write.
    pub fn seal(
        &mut self,
        shards: &mut [&mut [u8]],
        codec: &mut Codec,
        file_tags: &[u32],
        last: bool,
    ) -> Result<SealedBatch, CodecError> {
        let (k, n) = (self.ec.k(), self.ec.total());
        assert!(
            last || self.batch_full(),
            "sealing a batch that is not full"
        );
        assert_eq!(shards.len(), n);
        let mut stripes = self.stripe_in_batch;
        let mut last_chunk = P;
        if last && self.fill_bytes > 0 {
            let rem = self.fill_bytes;
            let c = chunk_for(self.ec, rem);
            let base = stripes * BLOCK_BYTES;
            let mut tmp = Vec::with_capacity(rem);
            for (i, s) in shards.iter().enumerate().take(k) {
                let from = i * P;
                if from >= rem {
                    break;
                }
                let len = (rem - from).min(P);
                tmp.extend_from_slice(&s[base..base + len]);
            }
            for (i, s) in shards.iter_mut().enumerate().take(k) {
                let from = (i * c).min(rem);
                let to = ((i + 1) * c).min(rem);
                s[base..base + (to - from)].copy_from_slice(&tmp[from..to]);
                s[base + (to - from)..base + c].fill(0);
            }
            last_chunk = c;
            stripes += 1;
            self.fill_bytes = 0;
        }
        for b in 0..stripes {
            let chunk = if b + 1 == stripes { last_chunk } else { P };
            let base = b * BLOCK_BYTES;
            {
                let (data, parity) = shards.split_at_mut(k);
                let data: Vec<&[u8]> = data.iter().map(|d| &d[base..base + chunk]).collect();
                let mut parity: Vec<&mut [u8]> = parity
                    .iter_mut()
                    .map(|p| &mut p[base..base + chunk])
                    .collect();
                codec.encode(&data, &mut parity)?;
            }
            let blen = block_len_on_disk(chunk);
            let index = (self.blocks_sealed + b as u64) as u32;
            for (s, tag) in shards.iter_mut().zip(file_tags) {
                seal_block(&mut s[base..base + blen], chunk, index, *tag);
            }
        }
        let bytes = if stripes == 0 {
            0
        } else {
            (stripes - 1) * BLOCK_BYTES + block_len_on_disk(last_chunk)
        };
        let out = SealedBatch {
            first_block: self.blocks_sealed,
            stripes,
            bytes,
        };
        self.blocks_sealed += stripes as u64;
        self.stripe_in_batch = 0;
        Ok(out)
    }

    /// A striper that continues a stream whose first `blocks` whole stripes are already
    /// written (a resumed upload).
    pub fn resume(ec: EcParams, batch_stripes: usize, blocks: u64) -> Self {
        let mut s = Striper::new(ec, batch_stripes);
        s.blocks_sealed = blocks;
        s.total_bytes = blocks * (ec.k() * P) as u64;
        s
    }

    /// Seals only the whole stripes of the batch and hands back the bytes of the stripe being
    /// filled (the *tail*): they are fed again, first, when the stream continues. The stream
    /// then stands at a stripe boundary: `total_bytes` no longer counts the tail.
    pub fn seal_whole(
        &mut self,
        shards: &mut [&mut [u8]],
        codec: &mut Codec,
        file_tags: &[u32],
    ) -> Result<(SealedBatch, Vec<u8>), CodecError> {
        let rem = self.fill_bytes;
        let base = self.stripe_in_batch * BLOCK_BYTES;
        let mut tail = Vec::with_capacity(rem);
        for (i, s) in shards.iter().enumerate().take(self.ec.k()) {
            let from = i * P;
            if from >= rem {
                break;
            }
            let len = (rem - from).min(P);
            tail.extend_from_slice(&s[base..base + len]);
        }
        self.fill_bytes = 0;
        self.total_bytes -= rem as u64;
        // With nothing being filled, sealing as `last` seals exactly the whole stripes.
        let sealed = self.seal(shards, codec, file_tags, true)?;
        Ok((sealed, tail))
    }
}

/// The data shards of stripe `s` that hold object bytes `[a, b)` (offsets within the stripe).
pub fn data_shards_for(geo: &Geometry, s: u64, within: Range<usize>) -> Range<usize> {
    let c = geo.chunk_bytes(s);
    if within.is_empty() {
        return 0..0;
    }
    (within.start / c)..((within.end - 1) / c + 1)
}

/// Copies object bytes `[a, b)` of stripe `s` (offsets within the stripe) out of its data chunks
/// into `out`. `chunks[i]` must hold data chunk `i` for every `i` in
/// [`data_shards_for`]`(geo, s, a..b)`.
pub fn copy_out(geo: &Geometry, s: u64, chunks: &[&[u8]], within: Range<usize>, out: &mut Vec<u8>) {
    let c = geo.chunk_bytes(s);
    let mut pos = within.start;
    while pos < within.end {
        let i = pos / c;
        let off = pos % c;
        let n = (c - off).min(within.end - pos);
        out.extend_from_slice(&chunks[i][off..off + n]);
        pos += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ostore_wire::shard::open_block;
    use rand::{Rng, SeedableRng};

    /// Stripes `body` in `feed_size` pieces and returns each shard file's blocks.
    fn stripe_all(ec: EcParams, body: &[u8], batch: usize, feed_size: usize) -> Vec<Vec<u8>> {
        let mut st = Striper::new(ec, batch);
        let mut codec = Codec::new(ec);
        let tags: Vec<u32> = (0..ec.total() as u32).map(|i| 100 + i).collect();
        let mut bufs: Vec<Vec<u8>> = vec![vec![0xCC; st.buffer_bytes()]; ec.total()];
        let mut files: Vec<Vec<u8>> = vec![Vec::new(); ec.total()];
        let mut flush = |st: &mut Striper, bufs: &mut Vec<Vec<u8>>, last: bool| {
            let mut refs: Vec<&mut [u8]> = bufs.iter_mut().map(|v| v.as_mut_slice()).collect();
            let sealed = st.seal(&mut refs, &mut codec, &tags, last).unwrap();
            for (f, b) in files.iter_mut().zip(bufs.iter()) {
                assert_eq!(f.len(), sealed.first_block as usize * BLOCK_BYTES);
                f.extend_from_slice(&b[..sealed.bytes]);
            }
        };
        for piece in body.chunks(feed_size.max(1)) {
            let mut rest = piece;
            while !rest.is_empty() {
                let mut refs: Vec<&mut [u8]> = bufs.iter_mut().map(|v| v.as_mut_slice()).collect();
                let n = st.feed(rest, &mut refs);
                rest = &rest[n..];
                if st.batch_full() {
                    flush(&mut st, &mut bufs, false);
                }
            }
        }
        flush(&mut st, &mut bufs, true);
        files
    }

    fn read_back(
        ec: EcParams,
        files: &[Vec<u8>],
        size: u64,
        range: Range<u64>,
        lost: &[usize],
    ) -> Vec<u8> {
        let geo = Geometry::new(ec, size);
        let mut codec = Codec::new(ec);
        let mut out = Vec::new();
        if range.is_empty() {
            return out;
        }
        for s in geo.stripe_of(range.start)..=geo.stripe_of(range.end - 1) {
            let c = geo.chunk_bytes(s);
            let mut chunks: Vec<Vec<u8>> = Vec::new();
            let mut present = Vec::new();
            for (i, f) in files.iter().enumerate() {
                let at = s as usize * BLOCK_BYTES;
                let blk = &f[at..at + geo.block_len(s)];
                let ok = !lost.contains(&i);
                present.push(ok);
                chunks.push(if ok {
                    open_block(blk, c, s as u32, 100 + i as u32)
                        .unwrap()
                        .to_vec()
                } else {
                    vec![0; c]
                });
            }
            let mut refs: Vec<&mut [u8]> = chunks.iter_mut().map(|v| v.as_mut_slice()).collect();
            codec.reconstruct(&mut refs, &present).unwrap();
            let so = geo.stripe_offset(s);
            let a = range.start.max(so) - so;
            let b = range.end.min(so + geo.stripe_bytes(s) as u64) - so;
            let refs: Vec<&[u8]> = chunks.iter().map(|v| v.as_slice()).collect();
            copy_out(&geo, s, &refs, a as usize..b as usize, &mut out);
        }
        out
    }

    #[test]
    fn sizes_straddling_boundaries_roundtrip_with_losses() {
        let ec = EcParams::new(4, 2).unwrap();
        let sd = 4 * P;
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for size in [
            0,
            1,
            2,
            3,
            P - 1,
            P,
            P + 1,
            sd - 1,
            sd,
            sd + 1,
            3 * sd + 12345,
        ] {
            let body: Vec<u8> = (0..size).map(|_| rng.gen()).collect();
            for (batch, feed) in [(1, 7777), (2, 65536), (3, 1)] {
                if feed == 1 && size > 2 * P {
                    continue;
                }
                let files = stripe_all(ec, &body, batch, feed);
                let geo = Geometry::new(ec, size as u64);
                for f in &files {
                    assert_eq!(f.len() as u64 + 4096, geo.shard_file_bytes(), "size {size}");
                }
                for lost in [&[][..], &[0, 3], &[4, 5], &[1, 5]] {
                    let got = read_back(ec, &files, size as u64, 0..size as u64, lost);
                    assert!(got == body, "size {size} batch {batch} lost {lost:?}");
                }
                if size > 10 {
                    let r = (size as u64 / 3)..(size as u64 - 2);
                    let got = read_back(ec, &files, size as u64, r.clone(), &[2]);
                    assert!(got == body[r.start as usize..r.end as usize]);
                }
            }
        }
    }

    #[test]
    fn no_shard_holds_the_object_as_plain_bytes() {
        let ec = EcParams::new(4, 2).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let body: Vec<u8> = (0..(2 * 4 * P + 999)).map(|_| rng.gen()).collect();
        let files = stripe_all(ec, &body, 2, 100_000);
        for f in &files {
            assert!(f.len() < body.len() / 2);
        }
    }

    #[test]
    fn shards_for_a_range() {
        let ec = EcParams::new(4, 2).unwrap();
        let geo = Geometry::new(ec, 10 * 4 * P as u64);
        assert_eq!(data_shards_for(&geo, 0, 0..1), 0..1);
        assert_eq!(data_shards_for(&geo, 0, P - 1..P + 1), 0..2);
        assert_eq!(data_shards_for(&geo, 0, 0..4 * P), 0..4);
        assert_eq!(data_shards_for(&geo, 0, 5..5), 0..0);
    }

    #[test]
    fn a_stream_cut_at_any_point_and_resumed_writes_the_same_blocks() {
        let ec = EcParams::new(4, 2).unwrap();
        let stripe = 4 * P;
        let data: Vec<u8> = (0..3 * stripe + 1234)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let tags = [1u32, 2, 3, 4, 5, 6];
        let batch = 4;
        // Reference: one pass.
        let whole = {
            let mut files = vec![Vec::new(); 6];
            let mut st = Striper::new(ec, batch);
            let mut codec = Codec::new(ec);
            let mut bufs = vec![vec![0u8; batch * BLOCK_BYTES]; 6];
            let mut refs: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
            assert_eq!(st.feed(&data, &mut refs), data.len());
            let sealed = st.seal(&mut refs, &mut codec, &tags, true).unwrap();
            for (f, b) in files.iter_mut().zip(&refs) {
                f.extend_from_slice(&b[..sealed.bytes]);
            }
            files
        };
        for cut in [
            1,
            P,
            stripe - 1,
            stripe,
            stripe + 7,
            2 * stripe + 5,
            3 * stripe,
        ] {
            let mut files = vec![vec![0u8; whole[0].len().max(4 * BLOCK_BYTES)]; 6];
            let mut codec = Codec::new(ec);
            let mut bufs = vec![vec![0u8; batch * BLOCK_BYTES]; 6];
            let mut st = Striper::new(ec, batch);
            let mut refs: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
            assert_eq!(st.feed(&data[..cut], &mut refs), cut);
            let (sealed, tail) = st.seal_whole(&mut refs, &mut codec, &tags).unwrap();
            assert_eq!(tail.len(), cut % stripe);
            assert_eq!(tail[..], data[cut - cut % stripe..cut]);
            let at = sealed.first_block as usize * BLOCK_BYTES;
            for (f, b) in files.iter_mut().zip(&refs) {
                f[at..at + sealed.bytes].copy_from_slice(&b[..sealed.bytes]);
            }
            // Resume: the tail first, then the rest.
            let mut st = Striper::resume(ec, batch, sealed.first_block + sealed.stripes as u64);
            let mut refs: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
            assert_eq!(st.feed(&tail, &mut refs), tail.len());
            assert_eq!(st.feed(&data[cut..], &mut refs), data.len() - cut);
            assert_eq!(st.total_bytes(), data.len() as u64);
            let sealed = st.seal(&mut refs, &mut codec, &tags, true).unwrap();
            let at = sealed.first_block as usize * BLOCK_BYTES;
            for (f, b) in files.iter_mut().zip(&refs) {
                f[at..at + sealed.bytes].copy_from_slice(&b[..sealed.bytes]);
            }
            for (f, w) in files.iter().zip(&whole) {
                assert!(f[..w.len()] == w[..], "cut at {cut}");
            }
        }
    }
}
