//! The continuous scrub of one drive, run by the executor that owns the drive: it walks the
//! drive's shard index in key order and, for each shard, reads the file's header and every
//! block with direct I/O, checking the header against the metadata and each block's CRC32C
//! (with its index and the file's tag). A shard found missing or corrupt is queued for repair,
//! which rebuilds it from the object's other shards. Reads are paced at the rate the control
//! plane sets for the drive (`ostore_control::scrub::ScrubPolicy`), shared by the drive
//! directories of one device and cut to [`BUSY_DIVISOR`]th while the node serves requests (a
//! scrub read ahead of a client's fdatasync in the device queue shows in the client's tail
//! latency: measured, small PUTs at 4,000/s went from p99 ~7 ms with the scrub off to 80-270 ms
//! with it on at full rate). The cursor is saved
//! every [`SAVE_EVERY`] so a restart goes on where it stopped. Only the drive's own shard is
//! read — not the object's other shards — so a pass reads each byte on the drive once.

use crate::ctx::{sleep_unless_stopping, Node};
use crate::shardio::ShardFile;
use crate::store::{header_ok, now_ms, StoreError};
use ostore_control::records::Stored;
use ostore_control::rpc::ask;
use ostore_control::scrub::{PassRec, ScrubCursor, ScrubPolicy};
use ostore_engine::{EcParams, Geometry};
use ostore_wire::peer::OpenMode;
use ostore_wire::shard::{block_offset, open_block, BLOCK_BYTES, HEADER_BYTES};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Shards fetched from the index at a time.
const PAGE: usize = 64;
/// How often the cursor is saved: at most this much work is redone after a crash.
pub const SAVE_EVERY: Duration = Duration::from_secs(2);
/// Blocks read per I/O (1 MiB).
const READ_BLOCKS: u64 = 16;
/// How often an idle scrubber (off, resting, or its drive out of service) looks again.
const IDLE_POLL: Duration = Duration::from_secs(2);

/// While the node serves requests, the scrub reads at this fraction of its rate, so that a pass
/// still ends under constant load.
pub const BUSY_DIVISOR: u64 = 16;
/// How long after the last request the node still counts as serving.
const QUIET: Duration = Duration::from_millis(200);

/// Keeps reads under a rate: each read waits until the bytes before it are paid for.
struct Pacer {
    next: Option<Instant>,
    /// Drive directories of this node on the drive's device, which share its rate.
    share: u64,
}

impl Pacer {
    /// Books `bytes` at `per_s` (the drive's rate) divided by the device's share, and by
    /// [`BUSY_DIVISOR`] while the node is serving, and waits for the slot.
    async fn pay(&mut self, bytes: u64, per_s: u64) {
        let mut per_s = per_s / self.share.max(1);
        if crate::foreground::busy(QUIET) {
            per_s /= BUSY_DIVISOR;
        }
        let now = Instant::now();
        let start = self.next.filter(|t| *t > now).unwrap_or(now);
        if start > now {
            glommio::timer::sleep(start - now).await;
        }
        self.next = Some(start + Duration::from_secs_f64(bytes as f64 / per_s.max(1) as f64));
    }
}

/// Scrubs `drive` until the node stops.
pub async fn drive_scrubber(node: Arc<Node>, drive: u16) {
    while !node.stopping.load(Ordering::Relaxed) {
        if let Err(e) = scrub_drive(&node, drive).await {
            tracing::warn!("scrub of drive {drive}: {e}");
            if !sleep_unless_stopping(&node, Duration::from_secs(5)).await {
                return;
            }
        }
    }
}

async fn save(node: &Node, drive: u16, c: &ScrubCursor) -> Result<(), StoreError> {
    node.meta
        .ask(ask::SaveScrubCursor {
            drive,
            cursor: c.clone(),
        })
        .await?;
    Ok(())
}

/// How many of this node's drive directories are on the same device as `drive` (1 where each
/// has its own, as in production; all of them in `ostore dev`).
fn device_share(node: &Node, drive: u16) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let dev = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    let Some(mine) = node.local_drive(drive).and_then(|d| dev(&d.root)) else {
        return 1;
    };
    node.drives
        .iter()
        .filter(|d| dev(&d.root) == Some(mine))
        .count()
        .max(1) as u64
}

async fn scrub_drive(node: &Arc<Node>, drive: u16) -> Result<(), StoreError> {
    let mut cur: ScrubCursor = node
        .meta
        .ask(ask::ScrubCursors {
            drives: vec![drive],
        })
        .await?
        .pop()
        .unwrap_or_default();
    let mut pacer = Pacer {
        next: None,
        share: device_share(node, drive),
    };
    let mut saved = Instant::now();
    loop {
        if node.stopping.load(Ordering::Relaxed) {
            return save(node, drive, &cur).await;
        }
        let policy: ScrubPolicy = node.meta.ask(ask::ScrubPolicy { drive }).await?;
        let healthy = node
            .local_drive(drive)
            .is_some_and(|d| d.healthy.load(Ordering::Relaxed));
        if policy.bytes_per_s == 0 || !healthy {
            sleep_unless_stopping(node, IDLE_POLL).await;
            continue;
        }
        if cur.started_ms.is_none() {
            let rest_until = cur
                .last
                .as_ref()
                .map_or(0, |l| l.ended_ms.saturating_add(policy.pause_ms));
            let now = now_ms();
            if now < rest_until {
                let rest = Duration::from_millis(rest_until - now).min(IDLE_POLL);
                sleep_unless_stopping(node, rest).await;
                continue;
            }
            cur.started_ms = Some(now);
            cur.after = None;
            cur.shards = 0;
            cur.bytes = 0;
            cur.corrupt = 0;
            save(node, drive, &cur).await?;
            saved = Instant::now();
        }
        let page: Vec<([u8; 32], u8)> = node
            .meta
            .ask(ask::ShardsOnDrive {
                drive,
                after: cur.after,
                limit: PAGE,
            })
            .await?;
        for &(h, index) in &page {
            if node.stopping.load(Ordering::Relaxed) {
                break;
            }
            if let Some((bytes, good)) =
                check_shard(node, drive, &h, index, &mut pacer, policy.bytes_per_s).await?
            {
                cur.shards += 1;
                cur.bytes += bytes;
                node.metrics
                    .scrub_shards_checked
                    .fetch_add(1, Ordering::Relaxed);
                node.metrics.scrub_bytes.fetch_add(bytes, Ordering::Relaxed);
                if !good {
                    tracing::warn!(
                        "scrub: shard {index} of {} on drive {drive} is missing or corrupt; queued for repair",
                        hex::encode(h)
                    );
                    cur.corrupt += 1;
                    cur.corrupt_total += 1;
                    node.metrics.scrub_corrupt.fetch_add(1, Ordering::Relaxed);
                    // If this fails the pass stops here and resumes from the saved cursor,
                    // so the shard is checked (and queued) again.
                    node.meta
                        .ask(ask::QueueRepair {
                            contents: vec![h],
                            nonce: rand::random(),
                        })
                        .await?;
                    node.wake_repair();
                }
            }
            cur.after = Some((h, index));
            if saved.elapsed() >= SAVE_EVERY {
                save(node, drive, &cur).await?;
                saved = Instant::now();
            }
        }
        if page.len() < PAGE && !node.stopping.load(Ordering::Relaxed) {
            let started_ms = cur.started_ms.take().unwrap_or_default();
            cur.last = Some(PassRec {
                started_ms,
                ended_ms: now_ms(),
                shards: cur.shards,
                bytes: cur.bytes,
                corrupt: cur.corrupt,
            });
            cur.passes += 1;
            cur.after = None;
            node.metrics.scrub_passes.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                "scrub of drive {drive}: pass {} done: {:?}",
                cur.passes,
                cur.last
            );
            save(node, drive, &cur).await?;
            saved = Instant::now();
        }
    }
}

/// Reads and checks shard `index` of content `h` on `drive`: `None` if the content or the
/// shard is not there any more (collected, or moved by a repair since the index was read),
/// else the bytes read and whether the shard is good.
async fn check_shard(
    node: &Arc<Node>,
    drive: u16,
    h: &[u8; 32],
    index: u8,
    pacer: &mut Pacer,
    per_s: u64,
) -> Result<Option<(u64, bool)>, StoreError> {
    let Some(content) = node.meta.ask(ask::Content { blake3: *h }).await? else {
        return Ok(None);
    };
    let Stored::Sharded {
        data,
        parity,
        shards,
    } = &content.stored
    else {
        return Ok(None);
    };
    let Some(loc) = shards
        .iter()
        .find(|l| l.index == index && l.drive == drive)
        .copied()
    else {
        return Ok(None);
    };
    let geo = Geometry::new(
        EcParams {
            data: *data,
            parity: *parity,
        },
        content.payload_bytes(),
    );
    pacer.pay(HEADER_BYTES as u64, per_s).await;
    let f = match ShardFile::open_loc(node, &loc, OpenMode::Read).await {
        Ok(f) => f,
        Err(_) => return Ok(Some((0, false))),
    };
    let mut read = HEADER_BYTES as u64;
    let mut good = header_ok(&f, h, &loc, geo).await;
    let stripes = geo.stripe_count();
    let mut s0 = 0;
    while good && s0 < stripes {
        let n = (stripes - s0).min(READ_BLOCKS);
        let span = ((n - 1) as usize) * BLOCK_BYTES + geo.block_len(s0 + n - 1);
        pacer.pay(span as u64, per_s).await;
        match f.read_at(block_offset(s0), span).await {
            Ok(r) if r.len() == span => {
                for s in s0..s0 + n {
                    let at = ((s - s0) as usize) * BLOCK_BYTES;
                    let blk = &r[at..at + geo.block_len(s)];
                    if open_block(blk, geo.chunk_bytes(s), s as u32, loc.file_tag).is_err() {
                        good = false;
                        break;
                    }
                }
            }
            _ => good = false,
        }
        read += span as u64;
        s0 += n;
    }
    f.close().await;
    Ok(Some((read, good)))
}
