//! Raw drive limits through glommio's `DmaFile` (O_DIRECT, io_uring), the path ostore's shards
//! take.

use anyhow::Context as _;
use glommio::io::OpenOptions;

fn io(e: glommio::GlommioError<()>) -> anyhow::Error {
    std::io::Error::from(e).into()
}
use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct DiskArgs {
    /// Directory on the drive to measure (a scratch file is created and removed).
    #[arg(long)]
    path: PathBuf,
    /// Bytes to write and read sequentially.
    #[arg(long, default_value = "1GiB", value_parser = ostore_engine::units::parse_bytes)]
    size: u64,
    /// Requests in flight.
    #[arg(long, default_value_t = 16)]
    qd: usize,
    /// Seconds of 4 KiB random reads.
    #[arg(long, default_value_t = 5)]
    random_seconds: u64,
    /// Appending 4 KiB writes each followed by fdatasync, for the latency of a durable commit.
    #[arg(long, default_value_t = 500)]
    syncs: u64,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

const SEQ_BYTES: usize = 1 << 20;
const RAND_BYTES: usize = 4096;

/// Writes (or reads) `blocks` blocks of 1 MiB in order, `qd` at a time.
async fn sequential(
    f: &Rc<glommio::io::DmaFile>,
    blocks: u64,
    qd: usize,
    write: bool,
) -> anyhow::Result<()> {
    let next = Rc::new(Cell::new(0u64));
    let mut tasks = Vec::new();
    for _ in 0..qd {
        let (f, next) = (f.clone(), next.clone());
        tasks.push(glommio::spawn_local(async move {
            loop {
                let i = next.get();
                if i >= blocks {
                    return Ok::<_, anyhow::Error>(());
                }
                next.set(i + 1);
                let pos = i * SEQ_BYTES as u64;
                if write {
                    let mut buf = f.alloc_dma_buffer(SEQ_BYTES);
                    buf.as_bytes_mut().fill((i & 0xFF) as u8);
                    f.write_at(buf, pos).await.map_err(io)?;
                } else {
                    let r = f.read_at_aligned(pos, SEQ_BYTES).await.map_err(io)?;
                    anyhow::ensure!(r.len() == SEQ_BYTES, "short read");
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(())
}

pub fn run(a: DiskArgs) -> anyhow::Result<()> {
    let file = a.path.join(".osbench-disk");
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move { measure(&a, &file).await })
        .map_err(|e| anyhow::anyhow!("starting executor: {e}"))?;
    ex.join().map_err(|e| anyhow::anyhow!("executor: {e}"))?
}

async fn measure(a: &DiskArgs, path: &PathBuf) -> anyhow::Result<()> {
    let blocks = (a.size / SEQ_BYTES as u64).max(1);
    // glommio probes polled-I/O support by reading the first direct-I/O file it opens; give it
    // data to read (see kernel-notes.md).
    std::fs::write(path, [0u8; 4096]).with_context(|| format!("creating {}", path.display()))?;
    let f = Rc::new(
        OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(path)
            .await
            .map_err(io)
            .with_context(|| format!("creating {}", path.display()))?,
    );
    // Sequential write, then one fdatasync (counted); then sequential read.
    let t = Instant::now();
    sequential(&f, blocks, a.qd, true).await?;
    f.fdatasync().await.map_err(io)?;
    let write_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    sequential(&f, blocks, a.qd, false).await?;
    let read_s = t.elapsed().as_secs_f64();
    // Random 4 KiB reads.
    let deadline = Instant::now() + Duration::from_secs(a.random_seconds);
    let done = Rc::new(Cell::new(0u64));
    let pages = blocks * (SEQ_BYTES / RAND_BYTES) as u64;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.qd * 2 {
        let (f, done) = (f.clone(), done.clone());
        tasks.push(glommio::spawn_local(async move {
            while Instant::now() < deadline {
                let p = rand::random::<u64>() % pages;
                f.read_at_aligned(p * RAND_BYTES as u64, RAND_BYTES)
                    .await
                    .map_err(io)?;
                done.set(done.get() + 1);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await?;
    }
    let rand_s = t.elapsed().as_secs_f64();
    let (sync, sync_per_s) = sync_latency(path.with_extension("sync"), a.syncs).await?;
    let bytes = blocks * SEQ_BYTES as u64;
    let mb = |b: u64, s: f64| b as f64 / s / 1e6;
    let write_mb_s = mb(bytes, write_s);
    let read_mb_s = mb(bytes, read_s);
    let iops = done.get() as f64 / rand_s;
    if let Ok(f) = Rc::try_unwrap(f) {
        f.remove().await.map_err(io)?;
        f.close().await.map_err(io)?;
    }
    println!(
        "disk {}: {} MiB, queue depth {}",
        a.path.display(),
        bytes >> 20,
        a.qd
    );
    println!("  sequential write (incl. fdatasync): {write_mb_s:.1} MB/s");
    println!("  sequential read:                    {read_mb_s:.1} MB/s");
    println!(
        "  4 KiB random read:                  {iops:.0} IOPS (queue depth {})",
        a.qd * 2
    );
    let q = |p: f64| sync.value_at_quantile(p) as f64 / 1000.0;
    let sync_max = sync.max() as f64 / 1000.0;
    println!(
        "  4 KiB append + fdatasync:           p50 {:.2} ms, p99 {:.2} ms, max {sync_max:.2} ms ({} syncs, {sync_per_s:.0}/s one after another)",
        q(0.5),
        q(0.99),
        sync.len()
    );
    if let Some(p) = &a.json {
        let j = serde_json::json!({
            "path": a.path.display().to_string(),
            "bytes": bytes,
            "queue_depth": a.qd,
            "write_mb_s": write_mb_s,
            "read_mb_s": read_mb_s,
            "rand_read_4k_iops": iops,
            "sync_4k_ms": {"count": sync.len(), "p50": q(0.5), "p99": q(0.99), "max": sync_max},
            "sync_4k_per_s": sync_per_s,
        });
        std::fs::write(p, serde_json::to_string_pretty(&j)?)?;
    }
    Ok(())
}

/// The latency of a durable small write: `count` times, a 4 KiB write appended to a new file
/// and an fdatasync (which then also makes the new size durable, as a metadata store's commit
/// that grows its file must). Microseconds, and the serial rate (syncs per second, one after
/// another: what a store that waited for each commit's sync before the next would reach).
async fn sync_latency(
    path: PathBuf,
    count: u64,
) -> anyhow::Result<(hdrhistogram::Histogram<u64>, f64)> {
    let mut h = hdrhistogram::Histogram::<u64>::new(3)?;
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(&path)
        .await
        .map_err(io)
        .with_context(|| format!("creating {}", path.display()))?;
    let start = Instant::now();
    for i in 0..count {
        let mut buf = f.alloc_dma_buffer(RAND_BYTES);
        buf.as_bytes_mut().fill(i as u8);
        let t = Instant::now();
        f.write_at(buf, i * RAND_BYTES as u64).await.map_err(io)?;
        f.fdatasync().await.map_err(io)?;
        h.record(t.elapsed().as_micros() as u64)?;
    }
    let per_s = count as f64 / start.elapsed().as_secs_f64().max(1e-9);
    f.remove().await.map_err(io)?;
    f.close().await.map_err(io)?;
    Ok((h, per_s))
}
