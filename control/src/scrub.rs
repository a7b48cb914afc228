//! The continuous scrub's schedule and progress, per drive: the control plane sets how fast
//! each drive is scrubbed and how long it rests between passes ([`ScrubPolicy`], a cluster
//! default and per-drive overrides); the node owning a drive walks the drive's shard index
//! (`[0x31] drive …`) in key order and records how far it got ([`ScrubCursor`]), so a restart
//! goes on where the last one stopped.

use crate::keys;
use crate::kv::{run, Kv};
use crate::meta::{MetaError, Result};
use crate::records::{decode, encode};
use serde::{Deserialize, Serialize};

/// How a drive is scrubbed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubPolicy {
    /// Read rate of the scrub on one drive (on one device: drive directories sharing a device
    /// share it; a sixteenth of it while the node serves requests); 0 turns the scrub off.
    pub bytes_per_s: u64,
    /// Rest between the end of a pass and the start of the next.
    pub pause_ms: u64,
}

/// The schedule of a drive nobody configured: 32 MiB/s (a 10 TB drive every ~3.6 days), an
/// hour between passes. See kernel-notes.md for what it costs.
pub const DEFAULT_POLICY: ScrubPolicy = ScrubPolicy {
    bytes_per_s: 32 << 20,
    pause_ms: 3600 * 1000,
};

/// One finished pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassRec {
    pub started_ms: u64,
    pub ended_ms: u64,
    pub shards: u64,
    pub bytes: u64,
    /// Shards found missing or corrupt (each queued for repair).
    pub corrupt: u64,
}

/// Where a drive's scrub is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubCursor {
    /// Passes completed.
    pub passes: u64,
    /// When the pass in progress started; `None` between passes.
    pub started_ms: Option<u64>,
    /// The last shard checked in this pass (the index key's content hash and shard index).
    pub after: Option<([u8; 32], u8)>,
    /// Checked so far in this pass.
    pub shards: u64,
    pub bytes: u64,
    pub corrupt: u64,
    pub last: Option<PassRec>,
    /// Shards found bad over every pass.
    pub corrupt_total: u64,
}

/// The policy of `drive`: its override, else the cluster default, else [`DEFAULT_POLICY`].
pub fn policy(kv: &dyn Kv, drive: u16) -> Result<ScrubPolicy> {
    run(kv, false, |tx| {
        for k in [keys::scrub_policy(Some(drive)), keys::scrub_policy(None)] {
            if let Some(v) = tx.get(&k)? {
                return Ok(decode(&v)?);
            }
        }
        Ok::<_, MetaError>(DEFAULT_POLICY)
    })
}

/// The cluster default, if set, and every per-drive override.
pub type Policies = (Option<ScrubPolicy>, Vec<(u16, ScrubPolicy)>);

/// The cluster default (`drive: None`) and every per-drive override.
pub fn policies(kv: &dyn Kv) -> Result<Policies> {
    run(kv, false, |tx| {
        let default = match tx.get(&keys::scrub_policy(None))? {
            Some(v) => Some(decode(&v)?),
            None => None,
        };
        let (b, e) = keys::scrub_policies();
        let mut out = Vec::new();
        for (k, v) in tx.get_range(&b, &e, usize::MAX, false)? {
            if let Some(d) = keys::scrub_policy_drive(&k) {
                out.push((d, decode(&v)?));
            }
        }
        Ok::<_, MetaError>((default, out))
    })
}

/// Sets (or with `None` removes) the cluster default or one drive's override.
pub fn set_policy(kv: &dyn Kv, drive: Option<u16>, p: Option<ScrubPolicy>) -> Result<()> {
    run(kv, true, |tx| {
        let k = keys::scrub_policy(drive);
        match &p {
            Some(p) => tx.set(&k, &encode(p))?,
            None => tx.clear(&k)?,
        }
        Ok(())
    })
}

pub fn cursor(kv: &dyn Kv, drive: u16) -> Result<ScrubCursor> {
    run(kv, false, |tx| {
        match tx.get(&keys::scrub_cursor(drive))? {
            Some(v) => Ok(decode(&v)?),
            None => Ok::<_, MetaError>(ScrubCursor::default()),
        }
    })
}

pub fn cursors(kv: &dyn Kv, drives: &[u16]) -> Result<Vec<ScrubCursor>> {
    drives.iter().map(|d| cursor(kv, *d)).collect()
}

pub fn save_cursor(kv: &dyn Kv, drive: u16, c: &ScrubCursor) -> Result<()> {
    run(kv, true, |tx| {
        Ok(tx.set(&keys::scrub_cursor(drive), &encode(c))?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redb_kv::RedbKv;

    #[test]
    fn overrides_default_and_cursor_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let kv = RedbKv::open(&d.path().join("m.redb")).unwrap();
        assert_eq!(policy(&kv, 3).unwrap(), DEFAULT_POLICY);
        let fast = ScrubPolicy {
            bytes_per_s: 1 << 30,
            pause_ms: 0,
        };
        let off = ScrubPolicy {
            bytes_per_s: 0,
            pause_ms: 0,
        };
        set_policy(&kv, None, Some(fast)).unwrap();
        set_policy(&kv, Some(3), Some(off)).unwrap();
        assert_eq!(policy(&kv, 3).unwrap(), off);
        assert_eq!(policy(&kv, 4).unwrap(), fast);
        assert_eq!(policies(&kv).unwrap(), (Some(fast), vec![(3, off)]));
        set_policy(&kv, Some(3), None).unwrap();
        assert_eq!(policy(&kv, 3).unwrap(), fast);
        let c = ScrubCursor {
            passes: 2,
            started_ms: Some(5),
            after: Some(([9; 32], 4)),
            shards: 7,
            ..Default::default()
        };
        save_cursor(&kv, 3, &c).unwrap();
        assert_eq!(cursor(&kv, 3).unwrap(), c);
        assert_eq!(cursor(&kv, 4).unwrap(), ScrubCursor::default());
    }
}
