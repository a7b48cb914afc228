//! Reed-Solomon encode and reconstruct over caller-provided chunk buffers.
//!
//! The codec keeps one encoder and one decoder and resets them per stripe, so steady-state
//! encoding allocates nothing new.

use crate::EcParams;
use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};
use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CodecError {
    /// Fewer than K shards of a stripe are good; the stripe cannot be rebuilt.
    #[error("only {have} of the {need} shards needed are readable")]
    InsufficientShards { have: usize, need: usize },
    #[error("reed-solomon: {0}")]
    Rs(#[from] reed_solomon_simd::Error),
}

pub struct Codec {
    ec: EcParams,
    encoder: Option<ReedSolomonEncoder>,
    decoder: Option<ReedSolomonDecoder>,
}

impl Codec {
    pub fn new(ec: EcParams) -> Self {
        Codec {
            ec,
            encoder: None,
            decoder: None,
        }
    }

    pub fn ec(&self) -> EcParams {
        self.ec
    }

    /// Computes the M parity chunks of one stripe. Every slice has the same even length.
    pub fn encode(&mut self, data: &[&[u8]], parity: &mut [&mut [u8]]) -> Result<(), CodecError> {
        let (k, m) = (self.ec.k(), self.ec.m());
        assert_eq!(data.len(), k);
        assert_eq!(parity.len(), m);
        let chunk = data[0].len();
        let enc = match &mut self.encoder {
            Some(e) => {
                e.reset(k, m, chunk)?;
                e
            }
            None => self.encoder.insert(ReedSolomonEncoder::new(k, m, chunk)?),
        };
        for d in data {
            enc.add_original_shard(d)?;
        }
        let out = enc.encode()?;
        for (dst, src) in parity.iter_mut().zip(out.recovery_iter()) {
            dst.copy_from_slice(src);
        }
        Ok(())
    }

    /// Rebuilds the chunks of one stripe whose `present[i]` is false, in place. `shards` holds
    /// all K+M chunk buffers (each exactly the chunk length); present ones are inputs, missing
    /// ones are overwritten with their reconstructed content.
    pub fn reconstruct(
        &mut self,
        shards: &mut [&mut [u8]],
        present: &[bool],
    ) -> Result<(), CodecError> {
        let (k, m) = (self.ec.k(), self.ec.m());
        assert_eq!(shards.len(), k + m);
        assert_eq!(present.len(), k + m);
        let have = present.iter().filter(|p| **p).count();
        if have < k {
            return Err(CodecError::InsufficientShards { have, need: k });
        }
        let chunk = shards[0].len();
        let data_missing = present[..k].iter().any(|p| !p);
        if data_missing {
            let dec = match &mut self.decoder {
                Some(d) => {
                    d.reset(k, m, chunk)?;
                    d
                }
                None => self.decoder.insert(ReedSolomonDecoder::new(k, m, chunk)?),
            };
            for (i, s) in shards.iter().enumerate() {
                if !present[i] {
                    continue;
                }
                if i < k {
                    dec.add_original_shard(i, &**s)?;
                } else {
                    dec.add_recovery_shard(i - k, &**s)?;
                }
            }
            let out = dec.decode()?;
            for (i, restored) in out.restored_original_iter() {
                shards[i].copy_from_slice(restored);
            }
        }
        if present[k..].iter().any(|p| !p) {
            let (data, parity) = shards.split_at_mut(k);
            let data: Vec<&[u8]> = data.iter().map(|d| &**d).collect();
            let mut fresh: Vec<Vec<u8>> = vec![vec![0; chunk]; m];
            let mut outs: Vec<&mut [u8]> = fresh.iter_mut().map(|v| v.as_mut_slice()).collect();
            self.encode(&data, &mut outs)?;
            for (j, p) in parity.iter_mut().enumerate() {
                if !present[k + j] {
                    p.copy_from_slice(&fresh[j]);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn every_pattern_of_up_to_m_losses_rebuilds() {
        let ec = EcParams::new(4, 2).unwrap();
        let mut codec = Codec::new(ec);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for chunk in [2usize, 64, 1000, 65520] {
            let mut shards: Vec<Vec<u8>> = (0..6)
                .map(|_| (0..chunk).map(|_| rng.gen()).collect())
                .collect();
            {
                let (d, p) = shards.split_at_mut(4);
                let d: Vec<&[u8]> = d.iter().map(|v| v.as_slice()).collect();
                let mut p: Vec<&mut [u8]> = p.iter_mut().map(|v| v.as_mut_slice()).collect();
                codec.encode(&d, &mut p).unwrap();
            }
            for a in 0..6 {
                for b in a..6 {
                    let mut work = shards.clone();
                    let mut present = [true; 6];
                    for &x in &[a, b] {
                        present[x] = false;
                        work[x].fill(0xFF);
                    }
                    let mut refs: Vec<&mut [u8]> =
                        work.iter_mut().map(|v| v.as_mut_slice()).collect();
                    codec.reconstruct(&mut refs, &present).unwrap();
                    assert_eq!(work, shards, "chunk {chunk}, lost {a},{b}");
                }
            }
            let mut work = shards.clone();
            let mut refs: Vec<&mut [u8]> = work.iter_mut().map(|v| v.as_mut_slice()).collect();
            let err = codec.reconstruct(&mut refs, &[true, false, true, false, false, true]);
            assert!(matches!(
                err,
                Err(CodecError::InsufficientShards { have: 3, need: 4 })
            ));
        }
    }
}
