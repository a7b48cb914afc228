//! Choosing where the shards of an object go.
//!
//! Rule: the K+M shards go to K+M distinct healthy drives. Drives are ranked by free capacity,
//! with a per-object rotation (from the content hash) breaking ties so that data and parity
//! shards spread evenly over equal drives instead of always landing in the same order.

use thiserror::Error;

/// What placement needs to know about a drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveView {
    pub id: u16,
    pub free_bytes: u64,
    pub healthy: bool,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlacementError {
    /// Fewer healthy drives with room than shards to place.
    #[error("{need} distinct drives with room needed, {have} available")]
    NotEnoughDrives { need: usize, have: usize },
}

/// Picks `count` distinct drives with at least `shard_bytes` free. `spread` (e.g. the first
/// bytes of the content hash) rotates the order among drives of similar free space.
pub fn place(
    drives: &[DriveView],
    count: usize,
    shard_bytes: u64,
    spread: u64,
    exclude: &[u16],
) -> Result<Vec<u16>, PlacementError> {
    let mut ok: Vec<&DriveView> = drives
        .iter()
        .filter(|d| d.healthy && d.free_bytes >= shard_bytes && !exclude.contains(&d.id))
        .collect();
    if ok.len() < count {
        return Err(PlacementError::NotEnoughDrives {
            need: count,
            have: ok.len(),
        });
    }
    // Bucket free space coarsely (1 GiB) so small differences do not defeat the rotation.
    let n = ok.len() as u64;
    ok.sort_by_key(|d| {
        let bucket = d.free_bytes >> 30;
        let rot = (d.id as u64 + n - spread % n) % n;
        (std::cmp::Reverse(bucket), rot)
    });
    Ok(ok.iter().take(count).map(|d| d.id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drives(n: u16) -> Vec<DriveView> {
        (0..n)
            .map(|id| DriveView {
                id,
                free_bytes: 100 << 30,
                healthy: true,
            })
            .collect()
    }

    #[test]
    fn distinct_and_rotated() {
        let d = drives(6);
        let a = place(&d, 6, 1, 0, &[]).unwrap();
        let b = place(&d, 6, 1, 1, &[]).unwrap();
        let mut s = a.clone();
        s.sort();
        s.dedup();
        assert_eq!(s.len(), 6);
        assert_ne!(a[0], b[0]);
    }

    #[test]
    fn prefers_free_and_skips_unhealthy_or_full() {
        let mut d = drives(8);
        d[0].healthy = false;
        d[1].free_bytes = 0;
        d[2].free_bytes = 500 << 30;
        let p = place(&d, 6, 10, 3, &[]).unwrap();
        assert_eq!(p[0], 2);
        assert!(!p.contains(&0) && !p.contains(&1));
        assert_eq!(
            place(&d, 7, 10, 0, &[]),
            Err(PlacementError::NotEnoughDrives { need: 7, have: 6 })
        );
        assert!(!place(&d, 5, 10, 0, &[3]).unwrap().contains(&3));
    }
}

/// Where to rebuild the shards in `bad` (positions into `current`, the drive of every shard of
/// one object): back on the same drive when it is healthy and holds no other shard of the
/// object, else on another healthy drive with room, never one already holding a shard of it.
pub fn replacements(
    drives: &[DriveView],
    current: &[u16],
    bad: &[usize],
    shard_bytes: u64,
    spread: u64,
) -> Result<Vec<u16>, PlacementError> {
    let mut taken: Vec<u16> = (0..current.len())
        .filter(|i| !bad.contains(i))
        .map(|i| current[i])
        .collect();
    // First every shard that can go home does; then the others are placed around them.
    let mut out: Vec<Option<u16>> = vec![None; bad.len()];
    for (slot, &i) in bad.iter().enumerate() {
        let old = current[i];
        let home_ok = drives
            .iter()
            .any(|d| d.id == old && d.healthy && d.free_bytes >= shard_bytes);
        if home_ok && !taken.contains(&old) {
            taken.push(old);
            out[slot] = Some(old);
        }
    }
    for (slot, &i) in bad.iter().enumerate() {
        if out[slot].is_none() {
            let d = place(
                drives,
                1,
                shard_bytes,
                spread.wrapping_add(i as u64),
                &taken,
            )?[0];
            taken.push(d);
            out[slot] = Some(d);
        }
    }
    Ok(out.into_iter().map(|d| d.expect("assigned")).collect())
}

#[cfg(test)]
mod replacement_tests {
    use super::*;

    #[test]
    fn same_drive_when_possible_else_a_fresh_one() {
        let mut d: Vec<DriveView> = (0..8)
            .map(|id| DriveView {
                id,
                free_bytes: 1 << 40,
                healthy: true,
            })
            .collect();
        assert_eq!(
            replacements(&d, &[0, 1, 2, 3, 4, 5], &[1, 4], 10, 0).unwrap(),
            vec![1, 4]
        );
        d[1].healthy = false;
        let r = replacements(&d, &[0, 1, 2, 3, 4, 5], &[1, 4], 10, 0).unwrap();
        assert_eq!(r[1], 4);
        assert!(r[0] == 6 || r[0] == 7);
        // Two shards on one drive (degraded placement): the second moves away.
        let r = replacements(&d, &[0, 0, 2, 3, 4, 5], &[1], 10, 0).unwrap();
        assert!(r[0] != 0 && ![2, 3, 4, 5].contains(&r[0]));
        d.truncate(6);
        assert!(replacements(&d, &[0, 1, 2, 3, 4, 5], &[1], 10, 0).is_err());
    }
}
