//! The drives a node owns: directory layout, identity, free space.
//!
//! ```text
//! <drive>/drive.id                      identity: "ostore-drive 1 <uuid hex> <drive index>\n"
//! <drive>/shards/<xx>/<file id:016x>.<shard index>   shard files (format in ostore-wire)
//! ```
//! `<xx>` is the low byte of the file id in hex, so no directory grows past 1/256 of the shards.
//! A drive whose `drive.id` is missing or names another identity than the metadata records was
//! replaced (or emptied): it is formatted afresh and every shard it held is queued for repair.

use ostore_control::records::{DriveRec, ShardLoc};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// Bounds of the space kept free on every drive (see [`Drive::refresh_free`]).
pub const DRIVE_RESERVE_BYTES_MIN: u64 = 1 << 20;
pub const DRIVE_RESERVE_BYTES_MAX: u64 = 1 << 30;

pub struct Drive {
    pub id: u16,
    pub root: PathBuf,
    pub free_bytes: AtomicU64,
    /// Bytes placed on this drive by writes still in flight: their files are reserved in steps
    /// as bytes arrive, so the filesystem does not count them yet, and placement must.
    pub pending_bytes: std::sync::Arc<AtomicU64>,
    pub healthy: AtomicBool,
    uuid: Mutex<[u8; 16]>,
}

/// What [`Drive::check`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum DriveState {
    /// The identity on disk matches the metadata.
    Known,
    /// No identity on disk (new or emptied drive); it was formatted now.
    Formatted { was_known: bool },
}

/// Makes a directory's entries durable (fsync of the directory); blocking.
pub(crate) fn fsync_dir(p: &Path) -> std::io::Result<()> {
    std::fs::File::open(p)?.sync_all()
}

impl Drive {
    pub fn new(id: u16, root: PathBuf) -> Self {
        Drive {
            id,
            root,
            free_bytes: AtomicU64::new(0),
            pending_bytes: Default::default(),
            healthy: AtomicBool::new(true),
            uuid: Mutex::new([0; 16]),
        }
    }

    pub fn shard_path(&self, loc: &ShardLoc) -> PathBuf {
        debug_assert_eq!(loc.drive, self.id);
        self.root
            .join("shards")
            .join(format!("{:02x}", loc.file_id & 0xFF))
            .join(format!("{:016x}.{}", loc.file_id, loc.index))
    }

    fn id_file(&self) -> PathBuf {
        self.root.join("drive.id")
    }

    fn read_identity(&self) -> Option<[u8; 16]> {
        let s = std::fs::read_to_string(self.id_file()).ok()?;
        let mut parts = s.split_whitespace();
        if parts.next()? != "ostore-drive" || parts.next()? != "1" {
            return None;
        }
        let mut u = [0u8; 16];
        hex::decode_to_slice(parts.next()?, &mut u).ok()?;
        Some(u)
    }

    /// The identity in the drive's `drive.id`, if any.
    pub fn identity(&self) -> Option<[u8; 16]> {
        self.read_identity()
    }

    /// Takes the drive into service under `uuid` (a cluster node, after registration):
    /// formats it first unless it already carries that identity.
    pub fn adopt(&self, uuid: [u8; 16]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.root)?;
        if self.read_identity() != Some(uuid) {
            self.format_as(uuid)?;
        }
        *self.uuid.lock().expect("uuid lock") = uuid;
        self.refresh_free();
        Ok(())
    }

    /// Formats the drive: shard directories, then a fresh identity, each made durable.
    fn format(&self) -> std::io::Result<[u8; 16]> {
        let uuid: [u8; 16] = rand::random();
        self.format_as(uuid)?;
        Ok(uuid)
    }

    fn format_as(&self, uuid: [u8; 16]) -> std::io::Result<()> {
        std::fs::create_dir_all(self.root.join("shards"))?;
        for i in 0..256 {
            let d = self.root.join("shards").join(format!("{i:02x}"));
            if !d.exists() {
                std::fs::create_dir(&d)?;
            }
        }
        fsync_dir(&self.root.join("shards"))?;
        let tmp = self.root.join("drive.id.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "ostore-drive 1 {} {}", hex::encode(uuid), self.id)?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.id_file())?;
        fsync_dir(&self.root)?;
        Ok(())
    }

    /// Compares the identity on disk with the metadata's record, formatting the drive if it is
    /// new or was emptied. Returns the record to store (if it changed) and what was found.
    pub fn check(
        &self,
        recorded: Option<&DriveRec>,
    ) -> std::io::Result<(DriveState, Option<DriveRec>)> {
        std::fs::create_dir_all(&self.root)?;
        let on_disk = self.read_identity();
        let result = match (on_disk, recorded) {
            (Some(u), Some(r)) if u == r.uuid => (DriveState::Known, None),
            (Some(u), None) => {
                // Identity without a record: metadata was lost or this is a foreign drive. Keep
                // the identity; the drive holds nothing we know about.
                (
                    DriveState::Known,
                    Some(DriveRec {
                        uuid: u,
                        path: self.root.display().to_string(),
                    }),
                )
            }
            (_, rec) => {
                let u = self.format()?;
                (
                    DriveState::Formatted {
                        was_known: rec.is_some(),
                    },
                    Some(DriveRec {
                        uuid: u,
                        path: self.root.display().to_string(),
                    }),
                )
            }
        };
        let uuid = result
            .1
            .as_ref()
            .map(|r| r.uuid)
            .or(recorded.map(|r| r.uuid))
            .unwrap_or([0; 16]);
        *self.uuid.lock().expect("uuid lock") = uuid;
        self.refresh_free();
        Ok(result)
    }

    /// Whether the identity on disk is still the one this process formatted or found.
    pub fn identity_intact(&self) -> bool {
        let want = *self.uuid.lock().expect("uuid lock");
        self.read_identity() == Some(want)
    }

    /// Free bytes as placement sees them: what the filesystem has, less the reserve and what
    /// writes in flight will still take.
    pub fn placeable_bytes(&self) -> u64 {
        self.free_bytes
            .load(Ordering::Relaxed)
            .saturating_sub(self.pending_bytes.load(Ordering::Relaxed))
    }

    /// Re-reads the space available for shards: the filesystem's free bytes less a reserve
    /// (2 % of its size, at least 1 MiB, at most 1 GiB) kept for metadata and in-flight writes,
    /// so a full drive answers 507 before it fails a write.
    pub fn refresh_free(&self) {
        if let (Some(free), Some(total)) = (free_bytes(&self.root), total_bytes(&self.root)) {
            let reserve = (total / 50).clamp(DRIVE_RESERVE_BYTES_MIN, DRIVE_RESERVE_BYTES_MAX);
            self.free_bytes
                .store(free.saturating_sub(reserve), Ordering::Relaxed);
        }
    }
}

/// Space a write in flight placed on this node's drives: counted in their `pending_bytes`
/// until it is dropped (the write ended, whichever way).
#[derive(Default)]
pub struct Reservation(Vec<(std::sync::Arc<AtomicU64>, u64)>);

impl Reservation {
    pub fn add(&mut self, drive: &Drive, bytes: u64) {
        drive.pending_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.0.push((drive.pending_bytes.clone(), bytes));
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        for (pending, bytes) in &self.0 {
            pending.fetch_sub(*bytes, Ordering::Relaxed);
        }
    }
}

/// Bytes available to unprivileged writers on the filesystem holding `p`.
pub fn free_bytes(p: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (r == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// Total bytes of the filesystem holding `p`.
pub fn total_bytes(p: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as in `free_bytes`.
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (r == 0).then(|| st.f_blocks as u64 * st.f_frsize as u64)
}
