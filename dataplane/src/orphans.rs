//! The orphan scan: a safety net under the intents. Every shard file is written under an
//! intent and deleted through one, so a file that nothing refers to should not exist; one can
//! still appear (a metadata store restored from a backup, a bug). The scan walks this node's
//! drives and deletes a file only when all of these hold: it is older than the grace period,
//! no intent and no resumable upload lists it, its header is intact, and the content its header
//! names does not list it (same drive, file id, index and tag). A file whose header cannot be
//! read is kept: it may be a referenced shard with a damaged header, which scrub repairs.

use crate::ctx::Node;
use crate::shardio::ShardFile;
use crate::store::Result;
use ostore_control::records::{ContentRec, IntentRec, Stored};
use ostore_control::rpc::ask;
use ostore_control::upload::UploadRec;
use ostore_wire::peer::OpenMode;
use ostore_wire::shard::{ShardHeader, HEADER_BYTES};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// What an orphan scan found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OrphanReport {
    /// Shard files looked at.
    pub files: u64,
    /// Files kept because their header could not be read.
    pub unreadable: u64,
    /// Files deleted, and their bytes.
    pub removed: u64,
    pub bytes: u64,
}

/// `<file id:016x>.<index>` → (file id, index).
fn parse_name(name: &str) -> Option<(u64, u8)> {
    let (id, index) = name.split_once('.')?;
    if id.len() != 16 {
        return None;
    }
    Some((u64::from_str_radix(id, 16).ok()?, index.parse().ok()?))
}

/// Directories of a drive (of 256) listed per call on the helper thread.
const ORPHAN_SCAN_DIRS_PER_CALL: usize = 16;

/// Scans this node's drives for orphan shard files older than `grace` and deletes them.
pub async fn orphan_pass(node: &Arc<Node>, grace: Duration) -> Result<OrphanReport> {
    let mut report = OrphanReport::default();
    // Taken before the intents and uploads are read: a file created after that read has a
    // newer mtime (its intent came first, and may be missing from what was read). A second more
    // covers the coarse clock of file timestamps.
    let cutoff = SystemTime::now()
        .checked_sub(grace + Duration::from_secs(1))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    // Files in flight: listed by an intent (writes, repairs, moves, deletions) or an upload.
    let intents: Vec<(u64, IntentRec)> = node.meta.ask(ask::Intents {}).await?;
    let uploads: Vec<UploadRec> = node.meta.ask(ask::Uploads {}).await?;
    let in_flight: HashSet<(u16, u64, u8)> = intents
        .iter()
        .flat_map(|(_, i)| i.shards.iter())
        .chain(uploads.iter().flat_map(|u| u.shards.iter()))
        .map(|l| (l.drive, l.file_id, l.index))
        .collect();
    let in_flight = Arc::new(in_flight);
    for d in &node.drives {
        for first in (0..=255u8).step_by(ORPHAN_SCAN_DIRS_PER_CALL) {
            // A few of the drive's directories per call on the helper thread, which returns
            // only the files old enough and in no intent: the executor neither blocks on the
            // listing nor holds much of it at once.
            let (root, drive, in_flight) = (d.root.clone(), d.id, in_flight.clone());
            let (files, old) = crate::offload::blocking(move || {
                let mut files = 0u64;
                let mut old = Vec::new();
                for sub in first..=first.saturating_add(ORPHAN_SCAN_DIRS_PER_CALL as u8 - 1) {
                    let dir = root.join("shards").join(format!("{sub:02x}"));
                    let entries = match std::fs::read_dir(&dir) {
                        Ok(e) => e,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => {
                            tracing::warn!("orphan scan: {}: {e}", dir.display());
                            continue;
                        }
                    };
                    for e in entries.flatten() {
                        let name = e.file_name();
                        let Some((file_id, index)) = parse_name(&name.to_string_lossy()) else {
                            continue;
                        };
                        files += 1;
                        let Ok(meta) = e.metadata() else { continue };
                        if meta.modified().is_ok_and(|m| m < cutoff)
                            && !in_flight.contains(&(drive, file_id, index))
                        {
                            old.push((e.path(), file_id, index, meta.len()));
                        }
                    }
                }
                (files, old)
            })
            .await;
            report.files += files;
            for (path, file_id, index, len) in old {
                match referenced(node, d.id, &path, file_id, index).await? {
                    Some(true) => {}
                    Some(false) => {
                        tracing::warn!(
                            "orphan scan: deleting {} (nothing refers to it)",
                            path.display()
                        );
                        match crate::offload::remove_file(path.clone()).await {
                            Ok(()) => {
                                report.removed += 1;
                                report.bytes += len;
                            }
                            Err(e) => tracing::warn!("orphan scan: {}: {e}", path.display()),
                        }
                    }
                    None => report.unreadable += 1,
                }
            }
        }
    }
    Ok(report)
}

/// Whether the content named in the file's header lists this very file; `None` if the header
/// cannot be read.
async fn referenced(
    node: &Node,
    drive: u16,
    path: &Path,
    file_id: u64,
    index: u8,
) -> Result<Option<bool>> {
    let Ok(f) = ShardFile::open(drive, path, OpenMode::Read).await else {
        return Ok(None);
    };
    let header = f.read_at(0, HEADER_BYTES).await;
    f.close().await;
    let h = match header {
        Ok(b) if b.len() == HEADER_BYTES => match ShardHeader::decode(&b) {
            Ok(h) => h,
            Err(_) => return Ok(None),
        },
        _ => return Ok(None),
    };
    let content: Option<ContentRec> = node.meta.ask(ask::Content { blake3: h.blake3 }).await?;
    Ok(Some(content.is_some_and(|c| match &c.stored {
        Stored::Sharded { shards, .. } => shards.iter().any(|l| {
            l.drive == drive && l.file_id == file_id && l.index == index && l.file_tag == h.file_tag
        }),
        Stored::Inline(_) | Stored::Parts { .. } => false,
    })))
}
