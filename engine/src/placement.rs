//! Choosing where the shards of an object go.
//!
//! Rule: the K+M shards go to K+M distinct healthy drives, spread over as many nodes as
//! possible, and among equally loaded nodes over as many zones as possible. Among the drives
//! that keep the spread even, the ones with the most free space (in coarse 1 GiB steps) win; a
//! per-object rotation (from the content hash) breaks ties so that data and parity shards
//! spread evenly over equal drives instead of always landing in the same order.
//!
//! New objects follow the write rule ([`place_object`]): with fewer healthy nodes than shards
//! some node gets two or more (never more than M, so losing one node loses nothing), and below
//! the write quorum nothing is written. Objects written short of full spread are spread out by
//! repair once nodes return ([`doubled_up`]).

use thiserror::Error;

/// What placement needs to know about a drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveView {
    pub id: u16,
    /// The node holding the drive (0 for the single node of `ostore dev`).
    pub node: u32,
    /// The node's failure domain.
    pub zone: u32,
    pub free_bytes: u64,
    pub healthy: bool,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlacementError {
    /// Fewer healthy drives with room than shards to place.
    #[error("{need} distinct drives with room needed, {have} available")]
    NotEnoughDrives { need: usize, have: usize },
    /// Fewer nodes up than the write rule needs: a condition that passes (nodes return), not
    /// a lack of space.
    #[error("{up} node(s) up, {need} needed to write (no node may hold more than {per_node} of the {total} shards, and the write quorum is {quorum})")]
    TooFewNodes {
        up: usize,
        need: usize,
        per_node: usize,
        total: usize,
        quorum: usize,
    },
    /// Enough nodes are up, but their drives have room for only `fits` of the shards.
    #[error("the drives up have room for {fits} of the {total} shards of {shard_bytes} bytes (at most {per_domain} per {domain})")]
    NoRoom {
        fits: usize,
        total: usize,
        shard_bytes: u64,
        per_domain: usize,
        domain: &'static str,
    },
}

/// How many shards of one object a failure domain may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Caps {
    per_node: usize,
    per_drive: usize,
}

/// The write rule: where the `total` (K+M) shards of a new object may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteRule {
    pub total: usize,
    /// M: shards of one object that may be lost, hence the most one node (or, on a single
    /// node, one drive) may hold.
    pub parity: usize,
    /// Nodes that must be up for a write to be taken; at least [`WriteRule::min_nodes`]
    /// (smaller values, 0 included, mean that minimum).
    pub quorum: usize,
}

impl WriteRule {
    /// The rule of a cluster with erasure coding `ec` and write quorum `quorum` (0: the
    /// minimum).
    pub fn new(ec: crate::EcParams, quorum: u32) -> WriteRule {
        WriteRule {
            total: ec.total(),
            parity: ec.parity as usize,
            quorum: quorum as usize,
        }
    }

    /// The fewest nodes that can hold `total` shards with at most `parity` on any one:
    /// ceil(total / parity).
    pub fn min_nodes(&self) -> usize {
        self.total.div_ceil(self.parity.max(1))
    }

    /// Nodes that must be up to write.
    pub fn nodes_needed(&self) -> usize {
        self.quorum.max(self.min_nodes())
    }
}

/// Chooses the drives of a new object's shards under `rule`. Shards go to distinct nodes while
/// there are enough (and over zones, then to the drives with the most room, as [`place`]);
/// with fewer nodes up a node holds several, on distinct drives where it has them and stacked
/// on one drive only if it must, but never more than `parity`, so that losing any one node
/// (any one drive, on a single-node store) loses nothing. With fewer nodes up than
/// [`WriteRule::nodes_needed`] the write is refused ([`PlacementError::TooFewNodes`]); with
/// too little room, [`PlacementError::NoRoom`]. A single-node store (every drive on one node)
/// applies the cap to drives instead.
pub fn place_object(
    drives: &[DriveView],
    rule: WriteRule,
    shard_bytes: u64,
    spread: u64,
) -> Result<Vec<u16>, PlacementError> {
    let parity = rule.parity.max(1);
    let mut nodes: Vec<u32> = drives.iter().map(|d| d.node).collect();
    nodes.sort_unstable();
    nodes.dedup();
    let caps = if nodes.len() <= 1 {
        Caps {
            per_node: usize::MAX,
            per_drive: parity,
        }
    } else {
        let mut up: Vec<u32> = drives
            .iter()
            .filter(|d| d.healthy)
            .map(|d| d.node)
            .collect();
        up.sort_unstable();
        up.dedup();
        let need = rule.nodes_needed();
        if up.len() < need {
            return Err(PlacementError::TooFewNodes {
                up: up.len(),
                need,
                per_node: parity,
                total: rule.total,
                quorum: rule.quorum,
            });
        }
        Caps {
            per_node: parity,
            per_drive: parity,
        }
    };
    assign(drives, rule.total, shard_bytes, spread, &[], caps).map_err(|fits| {
        let (per_domain, domain) = if caps.per_node == usize::MAX {
            (caps.per_drive, "drive")
        } else {
            (caps.per_node, "node")
        };
        PlacementError::NoRoom {
            fits,
            total: rule.total,
            shard_bytes,
            per_domain,
            domain,
        }
    })
}

/// Picks `count` distinct drives with at least `shard_bytes` free, none in `occupied` (drives
/// already holding shards of the object, whose nodes and zones count as used). `spread` (e.g.
/// the first bytes of the content hash) rotates the order among equal drives.
pub fn place(
    drives: &[DriveView],
    count: usize,
    shard_bytes: u64,
    spread: u64,
    occupied: &[u16],
) -> Result<Vec<u16>, PlacementError> {
    let caps = Caps {
        per_node: usize::MAX,
        per_drive: 1,
    };
    assign(drives, count, shard_bytes, spread, occupied, caps).map_err(|_| {
        PlacementError::NotEnoughDrives {
            need: count,
            have: drives
                .iter()
                .filter(|d| d.healthy && d.free_bytes >= shard_bytes && !occupied.contains(&d.id))
                .count(),
        }
    })
}

/// The greedy core of placement: `count` shards, one at a time, each on the healthy drive with
/// room that keeps the spread most even: fewest shards of the object on its node, then in its
/// zone, then on the drive itself; then the most free space (1 GiB steps); then a rotation by
/// `spread`. `occupied` drives (one shard each) count as used. No node or drive goes past
/// `caps`, and a drive takes another shard only with room for all it holds. Fails with the
/// number placed when no drive can take the next one.
fn assign(
    drives: &[DriveView],
    count: usize,
    shard_bytes: u64,
    spread: u64,
    occupied: &[u16],
    caps: Caps,
) -> Result<Vec<u16>, usize> {
    use std::collections::HashMap;
    let ok: Vec<&DriveView> = drives
        .iter()
        .filter(|d| d.healthy && d.free_bytes >= shard_bytes)
        .collect();
    let mut per_node: HashMap<u32, usize> = HashMap::new();
    let mut per_zone: HashMap<u32, usize> = HashMap::new();
    let mut per_drive: HashMap<u16, usize> = HashMap::new();
    for id in occupied {
        *per_drive.entry(*id).or_default() += 1;
        if let Some(d) = drives.iter().find(|d| d.id == *id) {
            *per_node.entry(d.node).or_default() += 1;
            *per_zone.entry(d.zone).or_default() += 1;
        }
    }
    let n = (ok.len() as u64).max(1);
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let best = ok
            .iter()
            .filter(|d| {
                let on_drive = per_drive.get(&d.id).copied().unwrap_or(0);
                on_drive < caps.per_drive
                    && per_node.get(&d.node).copied().unwrap_or(0) < caps.per_node
                    && (on_drive as u64)
                        .checked_add(1)
                        .and_then(|k| k.checked_mul(shard_bytes))
                        .is_some_and(|need| d.free_bytes >= need)
            })
            .min_by_key(|d| {
                let on_drive = per_drive.get(&d.id).copied().unwrap_or(0);
                let left = d.free_bytes.saturating_sub(on_drive as u64 * shard_bytes);
                let rot = (d.id as u64 + n - spread % n) % n;
                (
                    per_node.get(&d.node).copied().unwrap_or(0),
                    per_zone.get(&d.zone).copied().unwrap_or(0),
                    on_drive,
                    std::cmp::Reverse(left >> 30),
                    rot,
                )
            });
        let Some(d) = best else {
            return Err(out.len());
        };
        *per_node.entry(d.node).or_default() += 1;
        *per_zone.entry(d.zone).or_default() += 1;
        *per_drive.entry(d.id).or_default() += 1;
        out.push(d.id);
    }
    Ok(out)
}

/// The most shards any one node holds among `chosen`, and how many nodes the drives span.
pub fn max_per_node(drives: &[DriveView], chosen: &[u16]) -> (usize, usize) {
    let mut per_node: std::collections::HashMap<u32, usize> = Default::default();
    for id in chosen {
        if let Some(d) = drives.iter().find(|d| d.id == *id) {
            *per_node.entry(d.node).or_default() += 1;
        }
    }
    let nodes: std::collections::HashSet<u32> = drives.iter().map(|d| d.node).collect();
    (per_node.values().copied().max().unwrap_or(0), nodes.len())
}

/// The part of the content-hash space that node `rank` of `of` takes (repairs, moves, GC,
/// intent sweeps): the hashes whose first 8 bytes, read big-endian, fall in the returned range
/// (inclusive), so that each node's part of a queue kept in hash order is one contiguous run of
/// keys. `None` when `of` is 0 or `rank` is past it.
pub fn hash_share(rank: u64, of: u64) -> Option<(u64, u64)> {
    if of == 0 || rank >= of {
        return None;
    }
    let span = 1u128 << 64;
    let lo = (rank as u128 * span / of as u128) as u64;
    let hi = ((rank as u128 + 1) * span / of as u128 - 1) as u64;
    Some((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_shares_tile_the_hash_space() {
        assert_eq!(hash_share(0, 0), None);
        assert_eq!(hash_share(3, 3), None);
        assert_eq!(hash_share(0, 1), Some((0, u64::MAX)));
        for of in [2u64, 3, 7, 1000] {
            let mut next = 0u64;
            for r in 0..of {
                let (lo, hi) = hash_share(r, of).unwrap();
                assert_eq!(
                    lo,
                    next,
                    "share {r} of {of} starts where {} ended",
                    r.max(1) - 1
                );
                assert!(hi >= lo);
                if r + 1 == of {
                    assert_eq!(hi, u64::MAX);
                } else {
                    next = hi + 1;
                }
            }
        }
    }

    fn drives(n: u16) -> Vec<DriveView> {
        (0..n)
            .map(|id| DriveView {
                id,
                node: 0,
                zone: 0,
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
/// one object): back on the same drive when it is healthy, holds no other shard of the object,
/// and its node holds no other kept shard while some healthy node holds none; else on another
/// healthy drive with room, spread as [`place`] spreads.
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
    let node_of = |id: u16| drives.iter().find(|d| d.id == id).map(|d| d.node);
    // First every shard that can go home does; then the others are placed around them.
    let mut out: Vec<Option<u16>> = vec![None; bad.len()];
    for (slot, &i) in bad.iter().enumerate() {
        let old = current[i];
        let home_ok = drives
            .iter()
            .any(|d| d.id == old && d.healthy && d.free_bytes >= shard_bytes);
        let used_nodes: Vec<Option<u32>> = taken.iter().map(|&t| node_of(t)).collect();
        let home_node_shared = used_nodes.contains(&node_of(old));
        let unused_node_exists = drives.iter().any(|d| {
            d.healthy && d.free_bytes >= shard_bytes && !used_nodes.contains(&Some(d.node))
        });
        if home_ok && !taken.contains(&old) && !(home_node_shared && unused_node_exists) {
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
                node: 0,
                zone: 0,
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

#[cfg(test)]
mod node_tests {
    use super::*;

    /// `nodes` nodes with `per` drives each, zones alternating between `zones`.
    fn cluster(nodes: u32, per: u16, zones: u32) -> Vec<DriveView> {
        let mut v = Vec::new();
        for n in 0..nodes {
            for i in 0..per {
                v.push(DriveView {
                    id: (n as u16) * per + i,
                    node: n,
                    zone: n % zones,
                    free_bytes: 1 << 40,
                    healthy: true,
                });
            }
        }
        v
    }

    fn nodes_of(d: &[DriveView], ids: &[u16]) -> Vec<u32> {
        ids.iter()
            .map(|id| d.iter().find(|x| x.id == *id).unwrap().node)
            .collect()
    }

    #[test]
    fn one_shard_per_node_when_enough_nodes() {
        let d = cluster(8, 2, 1);
        for spread in 0..20 {
            let p = place(&d, 6, 1, spread, &[]).unwrap();
            let mut n = nodes_of(&d, &p);
            n.sort();
            n.dedup();
            assert_eq!(n.len(), 6, "spread {spread}: {p:?}");
            assert_eq!(max_per_node(&d, &p), (1, 8));
        }
    }

    #[test]
    fn zones_spread_before_doubling_up() {
        // 6 nodes in 3 zones, 3 shards: one per zone.
        let d = cluster(6, 1, 3);
        let p = place(&d, 3, 1, 0, &[]).unwrap();
        let mut z: Vec<u32> = p.iter().map(|id| d[*id as usize].zone).collect();
        z.sort();
        assert_eq!(z, vec![0, 1, 2]);
    }

    fn per(d: &[DriveView], ids: &[u16], of: impl Fn(&DriveView) -> u32) -> Vec<usize> {
        let mut m: std::collections::BTreeMap<u32, usize> = Default::default();
        for id in ids {
            *m.entry(of(d.iter().find(|x| x.id == *id).unwrap()))
                .or_default() += 1;
        }
        m.into_values().collect()
    }

    const RULE: WriteRule = WriteRule {
        total: 6,
        parity: 2,
        quorum: 0,
    };

    #[test]
    fn one_drive_per_node_and_nodes_down_stack_up_to_parity() {
        // Six single-drive nodes, 4+2: with one down, five hold six shards (one node two, on
        // its one drive); with three down, three hold two each; with four down, refused.
        for down in 0..=4u32 {
            let mut d = cluster(6, 1, 1);
            for x in d.iter_mut().filter(|x| x.node < down) {
                x.healthy = false;
            }
            let r = place_object(&d, RULE, 1 << 20, down as u64);
            if down <= 3 {
                let p = r.unwrap();
                assert_eq!(p.len(), 6);
                let counts = per(&d, &p, |x| x.node);
                assert_eq!(counts.len(), (6 - down) as usize, "{p:?}");
                assert!(counts.iter().all(|&c| c <= 2), "{counts:?}");
                assert!(p.iter().all(|id| d[*id as usize].healthy));
            } else {
                assert_eq!(
                    r,
                    Err(PlacementError::TooFewNodes {
                        up: 2,
                        need: 3,
                        per_node: 2,
                        total: 6,
                        quorum: 0
                    })
                );
            }
        }
    }

    #[test]
    fn a_node_uses_its_other_drives_before_stacking() {
        let mut d = cluster(3, 3, 1);
        d[0].healthy = false;
        let p = place_object(&d, RULE, 1, 0).unwrap();
        let drives = per(&d, &p, |x| x.id as u32);
        assert_eq!(drives, vec![1; 6], "{p:?}");
        assert_eq!(per(&d, &p, |x| x.node), vec![2, 2, 2]);
    }

    #[test]
    fn the_write_quorum_is_the_floor() {
        let mut d = cluster(6, 1, 1);
        d[5].healthy = false;
        let rule = WriteRule { quorum: 6, ..RULE };
        assert_eq!(rule.nodes_needed(), 6);
        assert!(matches!(
            place_object(&d, rule, 1, 0),
            Err(PlacementError::TooFewNodes { up: 5, need: 6, .. })
        ));
        let rule = WriteRule { quorum: 5, ..RULE };
        assert_eq!(place_object(&d, rule, 1, 0).unwrap().len(), 6);
        // A quorum below the minimum means the minimum.
        assert_eq!(WriteRule { quorum: 1, ..RULE }.nodes_needed(), 3);
        assert_eq!(
            WriteRule {
                total: 7,
                parity: 3,
                quorum: 0
            }
            .min_nodes(),
            3
        );
    }

    #[test]
    fn full_drives_are_no_room_not_too_few_nodes() {
        let mut d = cluster(6, 1, 1);
        for x in d.iter_mut().take(3) {
            x.free_bytes = 0;
        }
        // Three nodes with room for 1.5 shards each: only three fit, one per drive.
        for x in d.iter_mut().skip(3) {
            x.free_bytes = 3 << 19;
        }
        assert_eq!(
            place_object(&d, RULE, 1 << 20, 0),
            Err(PlacementError::NoRoom {
                fits: 3,
                total: 6,
                shard_bytes: 1 << 20,
                per_domain: 2,
                domain: "node"
            })
        );
        // With room for two each, they take two each.
        for x in d.iter_mut().skip(3) {
            x.free_bytes = 2 << 20;
        }
        assert_eq!(
            per(&d, &place_object(&d, RULE, 1 << 20, 0).unwrap(), |x| x.node),
            vec![2, 2, 2]
        );
    }

    #[test]
    fn a_single_node_caps_each_drive() {
        let d = cluster(1, 3, 1);
        let p = place_object(&d, RULE, 1, 0).unwrap();
        assert_eq!(per(&d, &p, |x| x.id as u32), vec![2, 2, 2]);
        let d = cluster(1, 2, 1);
        assert!(matches!(
            place_object(&d, RULE, 1, 0),
            Err(PlacementError::NoRoom {
                fits: 4,
                per_domain: 2,
                domain: "drive",
                ..
            })
        ));
    }

    #[test]
    fn fewer_nodes_than_shards_spreads_evenly() {
        let mut d = cluster(6, 2, 1);
        for x in d.iter_mut().filter(|x| x.node >= 4) {
            x.healthy = false;
        }
        let p = place(&d, 6, 1, 0, &[]).unwrap();
        assert_eq!(max_per_node(&d, &p).0, 2);
        // Repair once the nodes are back: the doubled-up shards move to the empty nodes.
        for x in d.iter_mut() {
            x.healthy = true;
        }
        let nodes = nodes_of(&d, &p);
        let mut bad = Vec::new();
        for i in 0..p.len() {
            if nodes[..i].contains(&nodes[i]) {
                bad.push(i);
            }
        }
        assert_eq!(bad.len(), 2);
        let r = replacements(&d, &p, &bad, 1, 0).unwrap();
        let mut fixed = p.clone();
        for (slot, &i) in bad.iter().enumerate() {
            fixed[i] = r[slot];
        }
        let mut n = nodes_of(&d, &fixed);
        n.sort();
        n.dedup();
        assert_eq!(n.len(), 6, "{fixed:?}");
    }
}

/// Positions (into `current`, the drive of every shard of one object) of shards that share a
/// node with a shard of lower position while some healthy node with room holds none of the
/// object: moving them there makes the object survive the loss of any node again.
pub fn doubled_up(drives: &[DriveView], current: &[u16], shard_bytes: u64) -> Vec<usize> {
    let node_of = |drive: u16| drives.iter().find(|d| d.id == drive).map(|d| d.node);
    let nodes: Vec<Option<u32>> = current.iter().map(|&d| node_of(d)).collect();
    let free_node = drives
        .iter()
        .any(|d| d.healthy && d.free_bytes >= shard_bytes && !nodes.contains(&Some(d.node)));
    if !free_node {
        return Vec::new();
    }
    (0..current.len())
        .filter(|&i| nodes[i].is_some() && nodes[..i].contains(&nodes[i]))
        .collect()
}

/// Which shards of one object to move, and where when it matters: shards on a node being
/// drained (`leaving`) and shards doubled up on a node ([`doubled_up`]) go wherever
/// [`replacements`] puts them (`None`). Only if there are none, and `counts` (shards held per
/// node) is given: one shard moves from the most loaded of the object's nodes, if it holds more
/// than its share, to the least loaded healthy node that holds none of the object and less than
/// its share (`Some(drive)`, its drive with the most room). A node's share is the mean over
/// nodes with a healthy drive, within 5 % (at least one shard) either way, so rebalancing stops
/// once every node is near the mean instead of trading shards back and forth.
pub fn moves(
    drives: &[DriveView],
    current: &[u16],
    leaving: &[u32],
    counts: Option<&[(u32, u64)]>,
    shard_bytes: u64,
) -> Vec<(usize, Option<u16>)> {
    let node_of = |drive: u16| drives.iter().find(|d| d.id == drive).map(|d| d.node);
    let mut out: Vec<(usize, Option<u16>)> = (0..current.len())
        .filter(|&i| node_of(current[i]).is_some_and(|n| leaving.contains(&n)))
        .map(|i| (i, None))
        .collect();
    for i in doubled_up(drives, current, shard_bytes) {
        if !out.iter().any(|(j, _)| *j == i) {
            out.push((i, None));
        }
    }
    out.sort_unstable();
    if !out.is_empty() {
        return out;
    }
    let Some(counts) = counts else {
        return out;
    };
    let count = |n: u32| {
        counts
            .iter()
            .find(|(id, _)| *id == n)
            .map_or(0, |(_, c)| *c)
    };
    let mut eligible: Vec<u32> = drives
        .iter()
        .filter(|d| d.healthy && !leaving.contains(&d.node))
        .map(|d| d.node)
        .collect();
    eligible.sort_unstable();
    eligible.dedup();
    if eligible.len() < 2 {
        return out;
    }
    let total: u64 = eligible.iter().map(|&n| count(n)).sum();
    let mean = total as f64 / eligible.len() as f64;
    let slack = balance_slack(mean);
    let object_nodes: Vec<Option<u32>> = current.iter().map(|&d| node_of(d)).collect();
    // Only from a node in service: a shard on a node that is down is not copied (repair
    // rebuilds it if the node stays away).
    let from = (0..current.len())
        .filter_map(|i| object_nodes[i].map(|n| (i, n)))
        .filter(|&(_, n)| eligible.contains(&n) && count(n) as f64 > mean)
        .max_by_key(|&(i, n)| (count(n), std::cmp::Reverse(i)));
    let Some((i, from_node)) = from else {
        return out;
    };
    // Every move narrows the spread (the giver holds at least two more than the taker), so
    // rebalancing ends.
    let to = eligible
        .iter()
        .filter(|&&n| {
            !object_nodes.contains(&Some(n))
                && (count(n) as f64) < mean - slack
                && count(n) + 2 <= count(from_node)
        })
        .filter_map(|&n| {
            drives
                .iter()
                .filter(|d| d.node == n && d.healthy && d.free_bytes >= shard_bytes)
                .max_by_key(|d| (d.free_bytes, std::cmp::Reverse(d.id)))
                .map(|d| (count(n), d.id))
        })
        .min();
    if let Some((_, drive)) = to {
        out.push((i, Some(drive)));
    }
    out
}

/// How far (in shards) a node may be from the mean before rebalancing moves shards to or from
/// it: 5 % of the mean, at least one shard.
pub fn balance_slack(mean: f64) -> f64 {
    (mean * 0.05).max(1.0)
}

/// The zone id placement uses for a node's zone name (the first four bytes of its BLAKE3).
pub fn zone_id(name: &str) -> u32 {
    let h = blake3::hash(name.as_bytes());
    u32::from_le_bytes([
        h.as_bytes()[0],
        h.as_bytes()[1],
        h.as_bytes()[2],
        h.as_bytes()[3],
    ])
}

/// Where the shards of one object go when it is repaired or moved: the `broken` positions must
/// be rebuilt (an error if they cannot be placed, see [`replacements`]); each of the `moves`
/// ([`moves`]) is made only if it can be placed and leaves no node with more than `parity`
/// shards of the object (nor more than it had), so an unplaceable or unsafe move never holds
/// back a repair. Returns (position, drive) sorted by position. `spread` as in [`place`].
pub fn targets(
    drives: &[DriveView],
    current: &[u16],
    broken: &[usize],
    moves: &[(usize, Option<u16>)],
    shard_bytes: u64,
    parity: u8,
    spread: u64,
) -> Result<Vec<(usize, u16)>, PlacementError> {
    let mut out: Vec<(usize, u16)> = Vec::new();
    let mut after = current.to_vec();
    if !broken.is_empty() {
        let placed = replacements(drives, current, broken, shard_bytes, spread)?;
        for (&i, d) in broken.iter().zip(placed) {
            after[i] = d;
            out.push((i, d));
        }
    }
    let anywhere: Vec<usize> = moves
        .iter()
        .filter(|m| m.1.is_none())
        .map(|m| m.0)
        .collect();
    let mut placed = replacements(
        drives,
        &after,
        &anywhere,
        shard_bytes,
        spread.rotate_left(32),
    )
    .unwrap_or_default()
    .into_iter();
    for &(i, to) in moves {
        let Some(d) = to.or_else(|| placed.next()) else {
            continue;
        };
        let before = max_per_node(drives, &after).0;
        let old = after[i];
        after[i] = d;
        let now = max_per_node(drives, &after).0;
        if now > parity as usize && now > before {
            after[i] = old;
            continue;
        }
        out.push((i, d));
    }
    out.sort_unstable();
    Ok(out)
}

/// Whether the shards of one object (`current`, the drive of each) sit where the placement
/// rules want them: every shard on a known healthy drive, and on as many distinct nodes as
/// there are shards or nodes with a healthy drive, whichever is fewer. A misplaced object is
/// queued for repair, which moves what [`moves`] says.
pub fn misplaced(drives: &[DriveView], current: &[u16]) -> bool {
    let mut nodes = Vec::with_capacity(current.len());
    for id in current {
        match drives.iter().find(|d| d.id == *id) {
            Some(d) if d.healthy => nodes.push(d.node),
            _ => return true,
        }
    }
    nodes.sort_unstable();
    nodes.dedup();
    let mut healthy: Vec<u32> = drives
        .iter()
        .filter(|d| d.healthy)
        .map(|d| d.node)
        .collect();
    healthy.sort_unstable();
    healthy.dedup();
    nodes.len() < current.len() && nodes.len() < healthy.len()
}

/// One node's part in a rebalancing round: its id, the shards it holds, its drives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLoad {
    pub node: u32,
    pub shards: u64,
    pub drives: usize,
}

/// Contents an over-full drive offers per round at least (one metadata read each when the
/// content cannot move).
pub const REBALANCE_OFFER_MIN: usize = 64;
/// Rounds without progress before rebalancing rests.
pub const REBALANCE_IDLE_ROUNDS: u32 = 3;
/// While resting, rebalancing tries again every this many rounds.
pub const REBALANCE_RETRY_ROUNDS: u32 = 10;

/// The leader's rebalancing decision, round by round. Each round is given the membership
/// epoch and the shards held by each node in service (up, not draining, with a drive that is
/// not being refilled), and only runs when the move queue is empty. When some node holds
/// clearly less than the mean ([`balance_slack`]), every node above the mean offers twice its
/// excess (at least [`REBALANCE_OFFER_MIN`] per round), spread over its drives; the nodes then
/// move one shard per offered content toward the least loaded node ([`moves`]). After
/// [`REBALANCE_IDLE_ROUNDS`] rounds in a row that changed nothing (same epoch, same counts) it
/// rests, trying again every [`REBALANCE_RETRY_ROUNDS`] rounds (random offers may simply have
/// missed the contents that can move).
#[derive(Debug, Default, Clone)]
pub struct Rebalancer {
    seen: Option<(u64, Vec<NodeLoad>, u32)>,
}

impl Rebalancer {
    /// This round's offers: (node, contents to offer from each of its drives).
    pub fn round(&mut self, epoch: u64, loads: &[NodeLoad]) -> Vec<(u32, usize)> {
        if loads.len() < 2 {
            return Vec::new();
        }
        let mean = loads.iter().map(|l| l.shards as f64).sum::<f64>() / loads.len() as f64;
        let slack = balance_slack(mean);
        if !loads.iter().any(|l| (l.shards as f64) < mean - slack) {
            self.seen = None;
            return Vec::new();
        }
        let idle = match &self.seen {
            Some((e, l, n)) if *e == epoch && l == loads => n + 1,
            _ => 0,
        };
        self.seen = Some((epoch, loads.to_vec(), idle));
        if idle >= REBALANCE_IDLE_ROUNDS && !idle.is_multiple_of(REBALANCE_RETRY_ROUNDS) {
            return Vec::new();
        }
        loads
            .iter()
            .filter_map(|l| {
                let excess = (l.shards as f64 - mean).ceil();
                (excess >= 1.0).then(|| {
                    let per_drive = (2 * excess as usize)
                        .max(REBALANCE_OFFER_MIN)
                        .div_ceil(l.drives.max(1));
                    (l.node, per_drive)
                })
            })
            .collect()
    }

    /// The mean the last round aimed at, for the log.
    pub fn mean(loads: &[NodeLoad]) -> f64 {
        loads.iter().map(|l| l.shards as f64).sum::<f64>() / loads.len().max(1) as f64
    }
}

/// Whether the healthy drives can hold one object's `total` shards as placement puts them: on
/// distinct drives, no node holding more than `parity` (room aside). A drain that would leave
/// less in service could never finish, and is refused.
pub fn can_hold(drives: &[DriveView], total: usize, parity: u8) -> bool {
    let per_node = parity.max(1) as usize;
    let mut per: Vec<(u32, usize)> = Vec::new();
    for d in drives.iter().filter(|d| d.healthy) {
        match per.iter_mut().find(|(n, _)| *n == d.node) {
            Some((_, c)) => *c += 1,
            None => per.push((d.node, 1)),
        }
    }
    per.iter().map(|&(_, c)| c.min(per_node)).sum::<usize>() >= total
}

/// A drain is recorded as done no sooner than this after it started: nodes place shards from a
/// view up to a heartbeat old, so a write may still land on the node just after the drain began.
pub const DRAIN_SETTLE_MS: u64 = 10_000;

/// Whether a drain started at `started_ms` has settled at `now_ms` (wall clocks: a clock stepped
/// back by S after the drain started lengthens the wait by S, never shortens it).
pub fn drain_settled(started_ms: u64, now_ms: u64) -> bool {
    now_ms >= started_ms.saturating_add(DRAIN_SETTLE_MS)
}

/// What the leader knows of one drain this round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainFacts {
    /// Shards the node's drive counters still count.
    pub shards_left: u64,
    /// When the counters say none: whether an exact count found nothing at all on the node
    /// (no shard in the index, no intent, no upload). `None` when not counted.
    pub exactly_empty: Option<bool>,
    /// Whether the drain started long enough ago that no write placed from an older view can
    /// still land on the node.
    pub settled: bool,
    /// Whether the drain is recorded as done.
    pub done: bool,
    /// Whether contents wait in the move queue.
    pub moves_queued: bool,
}

/// What the leader does for one drain this round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainStep {
    /// Count exactly what is left on the node (the counters say nothing is).
    CountExactly,
    /// Record the drain done (`true`), or not done any more (`false`).
    MarkDone(bool),
    /// Queue another batch of the node's contents for moving (after marking it not done,
    /// if it was).
    Queue { undo_done: bool },
    /// Wait: moves are in flight, or the drain has not settled.
    Wait,
}

/// The drain decision: a node is drained once its counters and then an exact count find
/// nothing on it and the drain has settled; shards that land on it again undo that; while it
/// holds shards, a batch of its contents is queued whenever the move queue has run dry (so
/// shards committed since, or moves that failed, are picked up too).
pub fn drain_step(f: DrainFacts) -> DrainStep {
    if f.shards_left == 0 {
        return match f.exactly_empty {
            None => DrainStep::CountExactly,
            Some(true) if f.settled && !f.done => DrainStep::MarkDone(true),
            Some(false) if f.done => DrainStep::MarkDone(false),
            Some(_) => DrainStep::Wait,
        };
    }
    if f.moves_queued {
        return if f.done {
            DrainStep::MarkDone(false)
        } else {
            DrainStep::Wait
        };
    }
    DrainStep::Queue { undo_done: f.done }
}

#[cfg(test)]
mod decision_tests {
    use super::*;

    #[test]
    fn what_can_hold_an_object_counts_drives_capped_per_node() {
        let view = |node: u32, drives: u16, healthy: bool| -> Vec<DriveView> {
            (0..drives)
                .map(|i| DriveView {
                    id: node as u16 * 10 + i,
                    node,
                    zone: 0,
                    free_bytes: 1 << 30,
                    healthy,
                })
                .collect()
        };
        let nodes = |spec: &[(u32, u16, bool)]| -> Vec<DriveView> {
            spec.iter().flat_map(|&(n, d, h)| view(n, d, h)).collect()
        };
        // 4+2: five nodes of one drive hold five shards, not six.
        let five: Vec<_> = (0..5).map(|n| (n, 1, true)).collect();
        assert!(!can_hold(&nodes(&five), 6, 2));
        let six: Vec<_> = (0..6).map(|n| (n, 1, true)).collect();
        assert!(can_hold(&nodes(&six), 6, 2));
        // Three nodes of three drives: two shards each. Two nodes: four, too few.
        assert!(can_hold(
            &nodes(&[(0, 3, true), (1, 3, true), (2, 3, true)]),
            6,
            2
        ));
        assert!(!can_hold(&nodes(&[(0, 3, true), (1, 3, true)]), 6, 2));
        // Drives out of service count for nothing.
        assert!(!can_hold(
            &nodes(&[(0, 3, true), (1, 3, true), (2, 3, false)]),
            6,
            2
        ));
    }

    fn one_drive_nodes(n: u32) -> Vec<DriveView> {
        (0..n)
            .map(|i| DriveView {
                id: i as u16,
                node: i,
                zone: 0,
                free_bytes: 100 << 30,
                healthy: true,
            })
            .collect()
    }

    #[test]
    fn drains_end_only_when_nothing_is_left_and_undo_when_shards_return() {
        let f = DrainFacts {
            shards_left: 0,
            exactly_empty: None,
            settled: true,
            done: false,
            moves_queued: false,
        };
        assert_eq!(drain_step(f), DrainStep::CountExactly);
        let counted = |empty| DrainFacts {
            exactly_empty: Some(empty),
            ..f
        };
        assert_eq!(drain_step(counted(true)), DrainStep::MarkDone(true));
        // Not settled: a write placed from an older view may still land.
        assert_eq!(
            drain_step(DrainFacts {
                settled: false,
                ..counted(true)
            }),
            DrainStep::Wait
        );
        // Intents or uploads left: not done.
        assert_eq!(drain_step(counted(false)), DrainStep::Wait);
        assert_eq!(
            drain_step(DrainFacts {
                done: true,
                ..counted(false)
            }),
            DrainStep::MarkDone(false)
        );
        // Shards left: queue a batch when the queue is dry, else wait.
        let left = DrainFacts {
            shards_left: 5,
            ..f
        };
        assert_eq!(drain_step(left), DrainStep::Queue { undo_done: false });
        assert_eq!(
            drain_step(DrainFacts {
                moves_queued: true,
                ..left
            }),
            DrainStep::Wait
        );
        assert_eq!(
            drain_step(DrainFacts { done: true, ..left }),
            DrainStep::Queue { undo_done: true }
        );
    }

    #[test]
    fn zone_ids_are_stable() {
        // Pinned: nodes of one cluster must agree, across versions, on which zone is which.
        assert_eq!(zone_id(""), 0xb94913af);
        assert_ne!(zone_id("a"), zone_id("b"));
    }

    #[test]
    fn misplaced_follows_the_write_rule() {
        let mut d = one_drive_nodes(6);
        assert!(!misplaced(&d, &[0, 1, 2, 3, 4, 5]));
        // Two shards on one node while another node holds none.
        assert!(misplaced(&d, &[0, 0, 2, 3, 4, 5]));
        // The same with only five nodes in service: as spread as it can be.
        d[1].healthy = false;
        assert!(!misplaced(&d, &[0, 0, 2, 3, 4, 5]));
        // A shard on a drive out of service, or unknown.
        assert!(misplaced(&d, &[1, 0, 2, 3, 4, 5]));
        assert!(misplaced(&d, &[9, 0, 2, 3, 4, 5]));
    }

    #[test]
    fn targets_rebuild_and_keep_moves_safe() {
        let d = one_drive_nodes(7);
        // Position 2 broken: rebuilt on the node that holds nothing.
        let t = targets(&d, &[0, 1, 2, 3, 4, 5], &[2], &[], 1, 2, 7).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].0, 2);
        // A move onto a node already holding a shard of the object, above parity: refused.
        let t = targets(&d, &[0, 0, 1, 1, 2, 3], &[], &[(0, Some(1))], 1, 2, 7).unwrap();
        assert!(t.is_empty(), "{t:?}");
        // Broken positions that cannot be placed are an error.
        let none: Vec<DriveView> = d
            .iter()
            .map(|x| DriveView {
                healthy: false,
                ..x.clone()
            })
            .collect();
        assert!(targets(&none, &[0, 1, 2, 3, 4, 5], &[2], &[], 1, 2, 7).is_err());
    }

    fn loads(counts: &[u64]) -> Vec<NodeLoad> {
        counts
            .iter()
            .enumerate()
            .map(|(i, &c)| NodeLoad {
                node: i as u32,
                shards: c,
                drives: 2,
            })
            .collect()
    }

    #[test]
    fn rebalancing_offers_from_full_nodes_and_rests_when_stuck() {
        let mut r = Rebalancer::default();
        // Balanced within 5 %: nothing.
        assert!(r.round(1, &loads(&[1000, 1010, 990])).is_empty());
        // A new empty node: the others offer twice their excess, over two drives each.
        let l = loads(&[900, 900, 900, 0]);
        let offers = r.round(1, &l);
        assert_eq!(offers, vec![(0, 225), (1, 225), (2, 225)]);
        // Nothing changed for three rounds: it rests, and tries again every tenth.
        for _ in 0..REBALANCE_IDLE_ROUNDS - 1 {
            assert!(!r.round(1, &l).is_empty());
        }
        let mut tried = 0;
        for _ in 0..20 {
            tried += usize::from(!r.round(1, &l).is_empty());
        }
        assert_eq!(tried, 2);
        // Progress (or a new epoch) wakes it.
        assert!(!r.round(2, &l).is_empty());
        // Small excesses still offer the minimum.
        let mut r = Rebalancer::default();
        assert_eq!(r.round(1, &loads(&[12, 12, 0])), vec![(0, 32), (1, 32)]);
    }
}

#[cfg(test)]
mod move_tests {
    use super::*;

    /// `nodes` nodes with one drive each (drive id = node id).
    fn cluster(nodes: u32) -> Vec<DriveView> {
        (0..nodes)
            .map(|n| DriveView {
                id: n as u16,
                node: n,
                zone: 0,
                free_bytes: 100 << 30,
                healthy: true,
            })
            .collect()
    }

    #[test]
    fn a_draining_node_loses_its_shards() {
        let mut d = cluster(7);
        d[6].healthy = false; // draining nodes take nothing
        let m = moves(&d, &[0, 1, 2, 3, 4, 6], &[6], None, 1);
        assert_eq!(m, vec![(5, None)]);
        let r = replacements(&d, &[0, 1, 2, 3, 4, 6], &[5], 1, 0).unwrap();
        assert_eq!(r, vec![5]);
    }

    #[test]
    fn doubled_up_shards_move_only_where_a_free_node_exists() {
        let d = cluster(3);
        // Two on node 0, the object spans all three nodes already.
        assert!(moves(&d, &[0, 0, 1, 2], &[], None, 1).is_empty());
        let d = cluster(4);
        assert_eq!(moves(&d, &[0, 0, 1, 2], &[], None, 1), vec![(1, None)]);
    }

    #[test]
    fn rebalancing_fills_a_new_node_and_stops_near_the_mean() {
        let d = cluster(7);
        // Six nodes with 12 shards each, a new node 6 with none: the mean is ~10.3.
        let mut counts: Vec<(u32, u64)> = (0..6).map(|n| (n, 12)).chain([(6, 0)]).collect();
        let obj = [0u16, 1, 2, 3, 4, 5];
        let m = moves(&d, &obj, &[], Some(&counts), 1);
        assert_eq!(
            m,
            vec![(0, Some(6))],
            "the first of the equally loaded nodes gives"
        );
        // Once the new node holds about its share, nothing moves.
        counts = (0..6).map(|n| (n, 10)).chain([(6, 12)]).collect();
        assert!(moves(&d, &obj, &[], Some(&counts), 1).is_empty());
        counts = (0..6).map(|n| (n, 11)).chain([(6, 10)]).collect();
        assert!(moves(&d, &obj, &[], Some(&counts), 1).is_empty());
        // Givers only a shard above the mean still give to a node far below it.
        counts = (0..6).map(|n| (n, 13)).chain([(6, 6)]).collect();
        assert_eq!(moves(&d, &obj, &[], Some(&counts), 1), vec![(0, Some(6))]);
        // The target must hold none of the object.
        counts = (0..6).map(|n| (n, 12)).chain([(6, 0)]).collect();
        assert!(moves(&d, &[0, 1, 2, 3, 4, 6], &[], Some(&counts), 1).is_empty());
        // A full or unhealthy node is no target.
        let mut full = cluster(7);
        full[6].free_bytes = 0;
        assert!(moves(&full, &obj, &[], Some(&counts), 1).is_empty());
    }
}
