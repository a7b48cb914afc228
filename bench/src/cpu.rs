//! `osbench cpu`: the CPU cost per byte of what a PUT does to every byte — BLAKE3 (the content's
//! name), Reed-Solomon encoding (the parity), CRC32C sealing of every block (data and parity)
//! — measured on one core with the very functions the store calls, over 64 MiB in stripes of
//! K × 65,520 bytes. The second limit of the benchmark record: a server of C cores cannot PUT
//! faster than C / (seconds per byte), nor GET faster than the CRC checks of the data blocks
//! allow. The S3 API's own per-byte work (the MD5 of the ETag, and a client's checksum) is
//! measured the same way.

use anyhow::Context as _;
use ostore_engine::codec::Codec;
use ostore_engine::EcParams;
use ostore_wire::shard::{block_len_on_disk, seal_block, BLOCK_PAYLOAD_BYTES_MAX};
use std::time::Instant;

#[derive(clap::Args, Clone)]
pub struct CpuArgs {
    /// Data shards.
    #[arg(long, default_value_t = 4)]
    data: u8,
    /// Parity shards.
    #[arg(long, default_value_t = 2)]
    parity: u8,
    /// Bytes per measurement.
    #[arg(long, default_value = "64MiB")]
    size: String,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// Best of three runs of `f` over `bytes` bytes, in MB/s.
fn mb_s(bytes: usize, mut f: impl FnMut()) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            f();
            bytes as f64 / t.elapsed().as_secs_f64() / 1e6
        })
        .fold(0.0, f64::max)
}

pub fn run(a: CpuArgs) -> anyhow::Result<()> {
    let ec = EcParams::new(a.data, a.parity).context("erasure coding")?;
    let size = ostore_engine::units::parse_bytes(&a.size).map_err(anyhow::Error::msg)? as usize;
    let (k, m) = (ec.k(), ec.m());
    let chunk = BLOCK_PAYLOAD_BYTES_MAX;
    let stripe = k * chunk;
    let stripes = size.div_ceil(stripe).max(1);
    let size = stripes * stripe;
    let mut data = vec![0u8; size];
    blake3::Hasher::new()
        .update(b"osbench cpu")
        .finalize_xof()
        .fill(&mut data);

    let blake3 = mb_s(size, || {
        let mut h = blake3::Hasher::new();
        for piece in data.chunks(1 << 20) {
            h.update(piece);
        }
        std::hint::black_box(h.finalize());
    });

    let mut codec = Codec::new(ec);
    let mut parity = vec![vec![0u8; chunk]; m];
    let rs = mb_s(size, || {
        for s in data.chunks(stripe) {
            let shards: Vec<&[u8]> = s.chunks(chunk).collect();
            let mut out: Vec<&mut [u8]> = parity.iter_mut().map(|p| p.as_mut_slice()).collect();
            codec.encode(&shards, &mut out).expect("encode");
        }
        std::hint::black_box(&parity);
    });

    let blen = block_len_on_disk(chunk);
    let mut block = vec![0u8; blen];
    // Sealing one block per chunk of object bytes: CRC32C over the block (trailer included).
    let crc = mb_s(size, || {
        for (i, c) in data.chunks(chunk).enumerate() {
            block[..c.len()].copy_from_slice(c);
            seal_block(&mut block, c.len(), i as u32, 7);
        }
        std::hint::black_box(&block);
    });

    // What the S3 API adds to a PUT's bytes: the MD5 (its ETag) always, and the checksum a
    // client sends (boto3's and the aws CLI's default: CRC32), through the very check the S3
    // front end runs.
    let s3_check = |trailer: Option<&str>| {
        let mut h = http::HeaderMap::new();
        if let Some(t) = trailer {
            h.insert(
                "x-amz-trailer",
                http::HeaderValue::from_str(t).expect("ASCII"),
            );
        }
        mb_s(size, || {
            let mut c =
                ostore_s3::checksum::BodyCheck::new(&ostore_s3::sigv4::Payload::Unsigned, &h)
                    .expect("a check");
            for piece in data.chunks(1 << 20) {
                c.update(piece);
            }
            std::hint::black_box(c.finish(&[]).ok());
        })
    };
    let md5 = s3_check(None);
    let md5_crc32 = s3_check(Some("x-amz-checksum-crc32"));
    let md5_crc64 = s3_check(Some("x-amz-checksum-crc64nvme"));

    // Seconds per object byte on one core: every byte hashed and encoded; (K+M)/K bytes sealed.
    let put_s_per_byte =
        1.0 / (blake3 * 1e6) + 1.0 / (rs * 1e6) + (k + m) as f64 / k as f64 / (crc * 1e6);
    let get_s_per_byte = 1.0 / (crc * 1e6);
    let put_limit = 1.0 / put_s_per_byte / 1e6;
    let get_limit = 1.0 / get_s_per_byte / 1e6;
    println!("osbench cpu: one core, {} MiB, EC {k}+{m}", size >> 20);
    println!("  BLAKE3                      {blake3:>9.0} MB/s");
    println!("  Reed-Solomon encode         {rs:>9.0} MB/s of object bytes");
    println!("  CRC32C block sealing        {crc:>9.0} MB/s (copy included)");
    println!("  PUT, all three, per core    {put_limit:>9.0} MB/s of object bytes");
    println!("  GET (CRC of data blocks)    {get_limit:>9.0} MB/s per core");
    println!("  S3: MD5 (the ETag)          {md5:>9.0} MB/s");
    println!("  S3: MD5 + CRC32             {md5_crc32:>9.0} MB/s");
    println!("  S3: MD5 + CRC64NVME         {md5_crc64:>9.0} MB/s");
    if let Some(p) = &a.json {
        let j = serde_json::json!({
            "data": k, "parity": m, "bytes": size,
            "blake3_mb_s": blake3, "rs_encode_mb_s": rs, "crc32c_seal_mb_s": crc,
            "put_limit_mb_s_per_core": put_limit, "get_limit_mb_s_per_core": get_limit,
            "s3_md5_mb_s": md5, "s3_md5_crc32_mb_s": md5_crc32, "s3_md5_crc64nvme_mb_s": md5_crc64,
        });
        std::fs::write(p, serde_json::to_string_pretty(&j)?)?;
    }
    Ok(())
}
