//! Where each byte of an object lives: stripes, shards and blocks.
//!
//! An object of `size` bytes is cut into stripes of `K * P` bytes, where `P` is
//! [`BLOCK_PAYLOAD_BYTES_MAX`]. Stripe `s` becomes block `s` of every shard file. Within a full
//! stripe, data shard `i` carries stripe bytes `[i*P, (i+1)*P)`. The final stripe, if shorter,
//! uses a smaller chunk `c = round_up_even(ceil(rem / K))` and data shard `i` carries
//! `[i*c, (i+1)*c)` (zero-padded past the object's end). Parity shards carry the Reed-Solomon
//! recovery chunks of the same length.

use ostore_wire::shard::{block_len_on_disk, BLOCK_PAYLOAD_BYTES_MAX, HEADER_BYTES};
use thiserror::Error;

/// Largest number of data or parity shards.
pub const SHARDS_PER_SIDE_MAX: u8 = 32;

/// Erasure-coding parameters: K data shards, M parity shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EcParams {
    pub data: u8,
    pub parity: u8,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum EcParamsError {
    #[error("erasure coding must be written K+M, e.g. 4+2")]
    Syntax,
    #[error("K and M must each be 1..={SHARDS_PER_SIDE_MAX}")]
    OutOfRange,
}

impl EcParams {
    pub fn new(data: u8, parity: u8) -> Result<Self, EcParamsError> {
        if data == 0 || parity == 0 || data > SHARDS_PER_SIDE_MAX || parity > SHARDS_PER_SIDE_MAX {
            return Err(EcParamsError::OutOfRange);
        }
        Ok(EcParams { data, parity })
    }
    pub fn total(&self) -> usize {
        self.data as usize + self.parity as usize
    }
    pub fn k(&self) -> usize {
        self.data as usize
    }
    pub fn m(&self) -> usize {
        self.parity as usize
    }
}

impl std::str::FromStr for EcParams {
    type Err = EcParamsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (k, m) = s.split_once('+').ok_or(EcParamsError::Syntax)?;
        let k: u8 = k.trim().parse().map_err(|_| EcParamsError::Syntax)?;
        let m: u8 = m.trim().parse().map_err(|_| EcParamsError::Syntax)?;
        EcParams::new(k, m)
    }
}

impl std::fmt::Display for EcParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}+{}", self.data, self.parity)
    }
}

/// The layout of one object of known size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub ec: EcParams,
    pub size_bytes: u64,
}

/// Rounds up to the next even number: Reed-Solomon shards must have an even length.
pub fn round_up_even(n: usize) -> usize {
    n + (n & 1)
}

impl Geometry {
    pub fn new(ec: EcParams, size_bytes: u64) -> Self {
        Geometry { ec, size_bytes }
    }
    /// Object bytes in a full stripe.
    pub fn stripe_data_bytes(&self) -> u64 {
        self.ec.k() as u64 * BLOCK_PAYLOAD_BYTES_MAX as u64
    }
    /// Number of stripes (= blocks per shard file). An empty object has none.
    pub fn stripe_count(&self) -> u64 {
        self.size_bytes.div_ceil(self.stripe_data_bytes())
    }
    /// Object bytes in stripe `s`.
    pub fn stripe_bytes(&self, s: u64) -> usize {
        let start = s * self.stripe_data_bytes();
        (self.size_bytes - start).min(self.stripe_data_bytes()) as usize
    }
    /// Chunk (block payload) length of every shard in stripe `s`.
    pub fn chunk_bytes(&self, s: u64) -> usize {
        chunk_for(self.ec, self.stripe_bytes(s))
    }
    /// Offset of stripe `s` within the object.
    pub fn stripe_offset(&self, s: u64) -> u64 {
        s * self.stripe_data_bytes()
    }
    /// On-disk length of block `s` of any shard.
    pub fn block_len(&self, s: u64) -> usize {
        block_len_on_disk(self.chunk_bytes(s))
    }
    /// Total on-disk length of one shard file.
    pub fn shard_file_bytes(&self) -> u64 {
        let n = self.stripe_count();
        if n == 0 {
            return HEADER_BYTES as u64;
        }
        ostore_wire::shard::block_offset(n - 1) + self.block_len(n - 1) as u64
    }
    /// The stripe holding object byte `offset`.
    pub fn stripe_of(&self, offset: u64) -> u64 {
        offset / self.stripe_data_bytes()
    }
}

/// Chunk length for a stripe carrying `stripe_bytes` object bytes.
pub fn chunk_for(ec: EcParams, stripe_bytes: usize) -> usize {
    round_up_even(stripe_bytes.div_ceil(ec.k())).max(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    const P: u64 = BLOCK_PAYLOAD_BYTES_MAX as u64;

    #[test]
    fn parse_ec() {
        assert_eq!(
            "4+2".parse::<EcParams>().unwrap(),
            EcParams { data: 4, parity: 2 }
        );
        assert!("4-2".parse::<EcParams>().is_err());
        assert!("0+2".parse::<EcParams>().is_err());
        assert!("40+2".parse::<EcParams>().is_err());
        assert!("4+0".parse::<EcParams>().is_err());
    }

    #[test]
    fn stripes_and_chunks() {
        let ec = EcParams::new(4, 2).unwrap();
        assert_eq!(Geometry::new(ec, 0).stripe_count(), 0);
        let g = Geometry::new(ec, 1);
        assert_eq!((g.stripe_count(), g.chunk_bytes(0)), (1, 2));
        let g = Geometry::new(ec, 4 * P);
        assert_eq!((g.stripe_count(), g.chunk_bytes(0)), (1, P as usize));
        let g = Geometry::new(ec, 4 * P + 5);
        assert_eq!(g.stripe_count(), 2);
        assert_eq!(g.stripe_bytes(1), 5);
        assert_eq!(g.chunk_bytes(1), 2);
        assert_eq!(g.shard_file_bytes(), 4096 + 65536 + 4096);
        assert_eq!(g.stripe_of(4 * P), 1);
    }
}
