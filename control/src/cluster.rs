//! Cluster membership, as metadata transactions: nodes register and renew a lease by heartbeat;
//! the leader (one control process at a time, chosen by [`take_lead`]) marks a node down when its
//! lease runs out, and finds the shards that a lost node or a replaced drive held so that they
//! can be rebuilt elsewhere. Every change of membership bumps the epoch in [`MembershipRec`].

use crate::keys;
use crate::kv::{run, Kv, Tx};
use crate::meta::{MetaError, Result};
use crate::records::{decode, encode, RecordError};
use serde::{Deserialize, Serialize};

/// A node the leader's failure detector has not heard from (the control process restarted
/// since) is marked down this long after its last recorded heartbeat. Nodes it hears from are
/// judged by [`crate::liveness`] instead, in about 2 s.
pub const LEASE_MS: u64 = 6_000;
/// How often nodes send a heartbeat.
pub const HEARTBEAT_MS: u64 = 250;
/// A node's heartbeat is written to the metadata store at most this often (with its drives'
/// free space); the ones between only feed the failure detector.
pub const HEARTBEAT_RECORD_MS: u64 = 1_000;
/// How long a leader's lease on the background jobs lasts without renewal.
pub const LEADER_LEASE_MS: u64 = 5_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDrive {
    /// Cluster-wide drive id (the `drive` of a `ShardLoc`).
    pub id: u16,
    /// Identity written into the drive's `drive.id` file.
    pub uuid: [u8; 16],
    pub path: String,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    /// The drive came back empty: the leader queues what it held for repair, then clears this.
    pub refill: bool,
}

/// A member of the cluster. A node is known by its peer address: a node that registers again
/// from the same address is the same member, whatever its drives hold now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRec {
    pub id: u32,
    /// QUIC address other nodes send shards to.
    pub peer: String,
    /// HTTP address clients use.
    pub http: String,
    pub zone: String,
    pub drives: Vec<NodeDrive>,
    pub up: bool,
    /// When `up` last changed.
    pub since_ms: u64,
    pub heartbeat_ms: u64,
    pub registered_ms: u64,
    /// Down past the grace period and its shards queued for repair elsewhere.
    pub evacuated: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipRec {
    /// Bumped by every change of membership or node state.
    pub epoch: u64,
    pub next_node: u32,
    pub next_drive: u16,
    /// Erasure coding of the cluster, fixed when it is created.
    pub data: u8,
    pub parity: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRec {
    pub holder: u64,
    pub expires_ms: u64,
    /// The term: bumped whenever the lease passes to another holder (see [`Fence`]).
    pub epoch: u64,
}

/// A drive as a registering node finds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveReport {
    pub path: String,
    /// The identity in its `drive.id`; `None` for an empty (new or replaced) drive.
    pub uuid: Option<[u8; 16]>,
    /// Identity to give the drive if it is new or replaced (chosen by the caller so that a
    /// retried registration gives the same one).
    pub fresh_uuid: [u8; 16],
    pub capacity_bytes: u64,
    pub free_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub peer: String,
    pub http: String,
    pub zone: String,
    pub drives: Vec<DriveReport>,
}

/// An operator's request to move every shard off a node (`osctl drain`). While it exists the
/// node's drives take no new shards and repair moves the shards they hold elsewhere; `osctl
/// undrain` removes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRec {
    pub started_ms: u64,
    /// When the node was found to hold nothing any more (it can then be removed).
    pub done_ms: Option<u64>,
    /// Shards the node held when the drain began.
    pub shards_at_start: u64,
}

/// What nodes and `osctl` know of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    pub epoch: u64,
    pub data: u8,
    pub parity: u8,
    pub nodes: Vec<NodeRec>,
    /// Nodes being drained (or drained), by node id.
    pub drains: Vec<(u32, DrainRec)>,
    /// Nodes that must be up for a write (0: the minimum, ceil((K+M)/M)); see
    /// `engine::placement::WriteRule`.
    pub write_quorum: u32,
    /// Fingerprints of the revoked certificates (`crate::trust`): refused in every handshake.
    pub revoked: Vec<[u8; 32]>,
    /// The root secret's version (`crate::trust::SecretRec`; 0: none yet): nodes fetch the
    /// secrets again when it changes.
    pub secret_version: u64,
}

impl ClusterView {
    /// Whether new shards must stay off `node`.
    pub fn draining(&self, node: u32) -> bool {
        self.drains.iter().any(|(n, _)| *n == node)
    }

    /// Every drive as placement sees it: healthy when its node is up and not `excluded` (for
    /// new shards: draining, or just found unreachable), and the drive is not being refilled.
    pub fn drive_views(
        &self,
        excluded: impl Fn(&NodeRec) -> bool,
    ) -> Vec<ostore_engine::placement::DriveView> {
        let mut out = Vec::new();
        for n in &self.nodes {
            let zone = ostore_engine::placement::zone_id(&n.zone);
            let in_service = n.up && !excluded(n);
            for d in &n.drives {
                out.push(ostore_engine::placement::DriveView {
                    id: d.id,
                    node: n.id,
                    zone,
                    free_bytes: d.free_bytes,
                    healthy: in_service && !d.refill,
                });
            }
        }
        out
    }
}

/// How far a drain is: what still sits on the node's drives.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainProgress {
    pub node: u32,
    pub drain: Option<DrainRec>,
    /// Shards of stored objects on the node's drives.
    pub shards: u64,
    /// Shard files of writes, repairs or deletions in flight (intents) on its drives.
    pub intents: u64,
    /// Resumable uploads with shard files on its drives (they move once committed).
    pub uploads: u64,
}

impl DrainProgress {
    /// Nothing of the cluster's data is left on the node.
    pub fn empty(&self) -> bool {
        self.shards == 0 && self.intents == 0 && self.uploads == 0
    }
}

fn get<T: serde::de::DeserializeOwned + 'static>(tx: &mut dyn Tx, k: &[u8]) -> Result<Option<T>> {
    match tx.get(k)? {
        Some(v) => Ok(Some(decode(&v)?)),
        None => Ok(None),
    }
}

fn put<T: Serialize + 'static>(tx: &mut dyn Tx, k: &[u8], v: &T) -> Result<()> {
    Ok(tx.set(k, &encode(v))?)
}

fn all_nodes(tx: &mut dyn Tx) -> Result<Vec<NodeRec>> {
    let (b, e) = keys::nodes();
    let mut out = Vec::new();
    for (_, v) in tx.get_range(&b, &e, usize::MAX, false)? {
        out.push(decode(&v)?);
    }
    Ok(out)
}

fn membership(tx: &mut dyn Tx) -> Result<MembershipRec> {
    get(tx, &keys::membership())?
        .ok_or_else(|| MetaError::Record(RecordError("the cluster is not initialized".into())))
}

/// Creates the membership record with the cluster's erasure coding, or checks it.
pub fn init_cluster(kv: &dyn Kv, data: u8, parity: u8) -> Result<(u8, u8)> {
    run(kv, true, |tx| {
        if let Some(m) = get::<MembershipRec>(tx, &keys::membership())? {
            return Ok((m.data, m.parity));
        }
        let m = MembershipRec {
            data,
            parity,
            ..Default::default()
        };
        put(tx, &keys::membership(), &m)?;
        Ok((data, parity))
    })
}

/// Adds a node, or takes a returning one back (same peer address). Drives are matched by path;
/// a drive reported empty or with another identity was replaced: it keeps its id, gets
/// `fresh_uuid`, and is flagged for refill.
pub fn register(kv: &dyn Kv, reg: &Registration, now_ms: u64) -> Result<NodeRec> {
    run(kv, true, |tx| {
        let mut m = membership(tx)?;
        let existing = all_nodes(tx)?.into_iter().find(|n| n.peer == reg.peer);
        let mut node = match existing {
            Some(n) => n,
            None => {
                let id = m.next_node;
                m.next_node += 1;
                NodeRec {
                    id,
                    peer: reg.peer.clone(),
                    http: reg.http.clone(),
                    zone: reg.zone.clone(),
                    drives: Vec::new(),
                    up: false,
                    since_ms: now_ms,
                    heartbeat_ms: now_ms,
                    registered_ms: now_ms,
                    evacuated: false,
                }
            }
        };
        let mut drives = Vec::with_capacity(reg.drives.len());
        for d in &reg.drives {
            let known = node.drives.iter().find(|k| k.path == d.path).cloned();
            let rec = match known {
                Some(mut k) => {
                    if d.uuid != Some(k.uuid) {
                        k.uuid = d.fresh_uuid;
                        k.refill = true;
                    }
                    k.capacity_bytes = d.capacity_bytes;
                    k.free_bytes = d.free_bytes;
                    k
                }
                None => {
                    let id = m.next_drive;
                    m.next_drive = m.next_drive.checked_add(1).ok_or_else(|| {
                        MetaError::Record(RecordError("drive ids exhausted".into()))
                    })?;
                    NodeDrive {
                        id,
                        uuid: d.uuid.unwrap_or(d.fresh_uuid),
                        path: d.path.clone(),
                        capacity_bytes: d.capacity_bytes,
                        free_bytes: d.free_bytes,
                        refill: false,
                    }
                }
            };
            drives.push(rec);
        }
        // Drives no longer reported stay listed (their shards are still recorded on them) but
        // are lost: flag them for refill so that their shards are rebuilt elsewhere.
        for old in &node.drives {
            if !drives.iter().any(|d| d.id == old.id) {
                let mut gone = old.clone();
                gone.refill = true;
                gone.free_bytes = 0;
                gone.capacity_bytes = 0;
                drives.push(gone);
            }
        }
        node.drives = drives;
        node.http = reg.http.clone();
        node.zone = reg.zone.clone();
        node.heartbeat_ms = now_ms;
        if !node.up {
            node.up = true;
            node.since_ms = now_ms;
            node.evacuated = false;
        }
        m.epoch += 1;
        put(tx, &keys::membership(), &m)?;
        put(tx, &keys::node(node.id), &node)?;
        Ok(node)
    })
}

/// Renews a node's lease and records its drives' free space. `false`: the node is unknown
/// (the control plane lost it) and must register again.
/// The answer to a heartbeat: whether the node is a member (else it registers again), and the
/// membership epoch, so that a node learns of every change (a node marked down or up, a drain)
/// within a heartbeat and fetches the view then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beat {
    pub known: bool,
    pub epoch: u64,
}

/// A heartbeat that need not be recorded: the node is known and up. `None` when it must be
/// recorded ([`heartbeat`]): an unknown node, or one marked down.
pub fn heartbeat_unrecorded(kv: &dyn Kv, node: u32) -> Result<Option<Beat>> {
    run(kv, false, |tx| {
        let up = get::<NodeRec>(tx, &keys::node(node))?.is_some_and(|n| n.up);
        if !up {
            return Ok(None);
        }
        Ok(Some(Beat {
            known: true,
            epoch: membership(tx)?.epoch,
        }))
    })
}

/// Records a heartbeat: the node's lease and its drives' free space; a node marked down is up
/// again.
pub fn heartbeat(kv: &dyn Kv, node: u32, free: &[(u16, u64)], now_ms: u64) -> Result<Beat> {
    run(kv, true, |tx| {
        let Some(mut n) = get::<NodeRec>(tx, &keys::node(node))? else {
            return Ok(Beat {
                known: false,
                epoch: 0,
            });
        };
        n.heartbeat_ms = now_ms;
        for (id, bytes) in free {
            if let Some(d) = n.drives.iter_mut().find(|d| d.id == *id) {
                d.free_bytes = *bytes;
            }
        }
        let mut m = membership(tx)?;
        if !n.up {
            n.up = true;
            n.since_ms = now_ms;
            n.evacuated = false;
            m.epoch += 1;
            put(tx, &keys::membership(), &m)?;
        }
        put(tx, &keys::node(node), &n)?;
        Ok(Beat {
            known: true,
            epoch: m.epoch,
        })
    })
}

/// Marks `nodes` down (those that are up), as the failure detector judged them; returns the
/// ones it changed.
pub fn mark_down(kv: &dyn Kv, nodes: &[u32], now_ms: u64) -> Result<Vec<u32>> {
    run(kv, true, |tx| {
        let mut down = Vec::new();
        for &id in nodes {
            if let Some(mut n) = get::<NodeRec>(tx, &keys::node(id))? {
                if n.up {
                    n.up = false;
                    n.since_ms = now_ms;
                    put(tx, &keys::node(id), &n)?;
                    down.push(id);
                }
            }
        }
        if !down.is_empty() {
            bump_epoch(tx)?;
        }
        Ok(down)
    })
}

/// The membership; empty (epoch 0, no nodes) where there is no cluster (`ostore dev`).
pub fn view(kv: &dyn Kv) -> Result<ClusterView> {
    run(kv, false, |tx| {
        let m: MembershipRec = get(tx, &keys::membership())?.unwrap_or_default();
        Ok(ClusterView {
            epoch: m.epoch,
            data: m.data,
            parity: m.parity,
            nodes: all_nodes(tx)?,
            drains: all_drains(tx)?,
            write_quorum: write_quorum(tx)?,
            revoked: crate::trust::revoked_in(tx)?,
            secret_version: crate::trust::secret_version_in(tx)?,
        })
    })
}

fn write_quorum(tx: &mut dyn Tx) -> Result<u32> {
    match tx.get(&keys::write_quorum())? {
        None => Ok(0),
        Some(v) => {
            Ok(u32::from_le_bytes(v.as_slice().try_into().map_err(
                |_| RecordError("the write quorum is a u32".into()),
            )?))
        }
    }
}

/// Bytes per second each node's repairs read at most, unless the operator set another rate
/// (`osctl repair-rate`): enough to rebuild a node's share quickly, little enough that client
/// requests keep their latency.
pub const DEFAULT_REPAIR_BYTES_PER_S: u64 = 256 << 20;

/// The rate each node's repairs may read at, in bytes per second (`u64::MAX`: no limit).
pub fn repair_rate(kv: &dyn Kv) -> Result<u64> {
    run(kv, false, |tx| match tx.get(&keys::repair_rate())? {
        None => Ok(DEFAULT_REPAIR_BYTES_PER_S),
        Some(v) => {
            Ok(u64::from_le_bytes(v.as_slice().try_into().map_err(
                |_| RecordError("the repair rate is a u64".into()),
            )?))
        }
    })
}

/// Sets the rate each node's repairs may read at (`None`: back to the default; `u64::MAX`: no
/// limit). Nodes take it up within a repair round.
pub fn set_repair_rate(kv: &dyn Kv, bytes_per_s: Option<u64>) -> Result<()> {
    run(kv, true, |tx| {
        match bytes_per_s {
            Some(r) => tx.set(&keys::repair_rate(), &r.max(1).to_le_bytes())?,
            None => tx.clear(&keys::repair_rate())?,
        }
        Ok(())
    })
}

/// Sets the write quorum: nodes that must be up for a write to be taken (0: the minimum).
pub fn set_write_quorum(kv: &dyn Kv, nodes: u32) -> Result<()> {
    run(kv, true, |tx| {
        tx.set(&keys::write_quorum(), &nodes.to_le_bytes())?;
        bump_epoch(tx)
    })
}

fn all_drains(tx: &mut dyn Tx) -> Result<Vec<(u32, DrainRec)>> {
    let (b, e) = keys::drains();
    let mut out = Vec::new();
    for (k, v) in tx.get_range(&b, &e, usize::MAX, false)? {
        let id = k
            .get(1..5)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or_else(|| RecordError("drain key".into()))?;
        out.push((id, decode(&v)?));
    }
    Ok(out)
}

fn bump_epoch(tx: &mut dyn Tx) -> Result<()> {
    let mut m = membership(tx)?;
    m.epoch += 1;
    put(tx, &keys::membership(), &m)
}

/// Starts draining `node` (idempotent: a drain already recorded is returned as it is).
pub fn start_drain(kv: &dyn Kv, node: u32, shards_at_start: u64, now_ms: u64) -> Result<DrainRec> {
    run(kv, true, |tx| {
        if get::<NodeRec>(tx, &keys::node(node))?.is_none() {
            return Err(MetaError::NoSuchNode);
        }
        if let Some(d) = get::<DrainRec>(tx, &keys::drain(node))? {
            return Ok(d);
        }
        // What stays in service must still hold every object as placement puts it; else the
        // drain could never finish. Checked here, in the transaction, so that two drains started
        // at once cannot both pass.
        let m = membership(tx)?;
        let draining: Vec<u32> = all_drains(tx)?.into_iter().map(|(n, _)| n).collect();
        let nodes = all_nodes(tx)?;
        let staying: Vec<&NodeRec> = nodes
            .iter()
            .filter(|n| n.id != node && n.up && !n.evacuated && !draining.contains(&n.id))
            .collect();
        let views: Vec<ostore_engine::placement::DriveView> = staying
            .iter()
            .flat_map(|n| {
                n.drives
                    .iter()
                    .map(|d| ostore_engine::placement::DriveView {
                        id: d.id,
                        node: n.id,
                        zone: 0,
                        free_bytes: d.free_bytes,
                        healthy: !d.refill,
                    })
            })
            .collect();
        let total = m.data as usize + m.parity as usize;
        if !ostore_engine::placement::can_hold(&views, total, m.parity) {
            return Err(MetaError::Refused(format!(
                "draining node {node} would leave {} node(s) with {} drive(s) in service{}: too few to hold the {}+{} shards of an object on distinct drives with no node holding more than {}",
                staying.len(),
                views.len(),
                if draining.is_empty() {
                    String::new()
                } else {
                    format!(" ({} node(s) already draining)", draining.len())
                },
                m.data,
                m.parity,
                m.parity.max(1)
            )));
        }
        let d = DrainRec {
            started_ms: now_ms,
            done_ms: None,
            shards_at_start,
        };
        put(tx, &keys::drain(node), &d)?;
        bump_epoch(tx)?;
        Ok(d)
    })
}

/// Stops draining `node`; `false` if it was not being drained. Shards already moved stay where
/// they are.
pub fn stop_drain(kv: &dyn Kv, node: u32) -> Result<bool> {
    run(kv, true, |tx| {
        if get::<NodeRec>(tx, &keys::node(node))?.is_none() {
            return Err(MetaError::NoSuchNode);
        }
        if tx.get(&keys::drain(node))?.is_none() {
            return Ok(false);
        }
        tx.clear(&keys::drain(node))?;
        bump_epoch(tx)?;
        Ok(true)
    })
}

/// Records that a drained node holds nothing any more (`done`), or again something (`false`).
pub fn set_drain_done(kv: &dyn Kv, node: u32, done: bool, now_ms: u64) -> Result<()> {
    run(kv, true, |tx| {
        if let Some(mut d) = get::<DrainRec>(tx, &keys::drain(node))? {
            if d.done_ms.is_some() != done {
                d.done_ms = done.then_some(now_ms);
                put(tx, &keys::drain(node), &d)?;
                bump_epoch(tx)?;
            }
        }
        Ok(())
    })
}

/// Keys counted per transaction (a FoundationDB transaction must stay under 5 s).
const COUNT_PAGE: usize = 10_000;

/// Shards recorded on `drive`, counted a page per transaction.
pub fn count_drive_shards(kv: &dyn Kv) -> impl Fn(u16) -> Result<u64> + '_ {
    move |drive| {
        let (mut b, e) = keys::drive_shards(drive);
        let mut n = 0u64;
        loop {
            let page = run(kv, false, |tx| {
                Ok::<_, MetaError>(tx.get_range(&b, &e, COUNT_PAGE, false)?)
            })?;
            n += page.len() as u64;
            match page.last() {
                Some((k, _)) if page.len() == COUNT_PAGE => {
                    b = k.clone();
                    b.push(0);
                }
                _ => return Ok(n),
            }
        }
    }
}

/// What of the cluster's data still sits on `node`'s drives: shards from the drive counters,
/// or with `exact` by counting the drive-shard index itself (a page per transaction).
pub fn drain_progress(kv: &dyn Kv, node: u32, exact: bool) -> Result<DrainProgress> {
    let (rec, drain) = run(kv, false, |tx| {
        Ok::<_, MetaError>((
            get::<NodeRec>(tx, &keys::node(node))?,
            get::<DrainRec>(tx, &keys::drain(node))?,
        ))
    })?;
    let rec = rec.ok_or(MetaError::NoSuchNode)?;
    let drives: Vec<u16> = rec.drives.iter().map(|d| d.id).collect();
    let shards = if exact {
        let count = count_drive_shards(kv);
        let mut n = 0;
        for d in &drives {
            n += count(*d)?;
        }
        n
    } else {
        crate::meta::drive_shard_counts(kv, &drives)?
            .iter()
            .map(|c| (*c).max(0) as u64)
            .sum()
    };
    let on_node =
        |locs: &[crate::records::ShardLoc]| locs.iter().any(|l| drives.contains(&l.drive));
    let intents = crate::meta::intents(kv)?
        .iter()
        .filter(|(_, i)| on_node(&i.shards))
        .count() as u64;
    let uploads = crate::upload::all(kv)?
        .iter()
        .filter(|u| on_node(&u.shards))
        .count() as u64;
    Ok(DrainProgress {
        node,
        drain,
        shards,
        intents,
        uploads,
    })
}

/// Marks down every node whose lease ran out at `now_ms`; returns their ids.
pub fn expire_leases(kv: &dyn Kv, now_ms: u64) -> Result<Vec<u32>> {
    run(kv, true, |tx| {
        let mut down = Vec::new();
        for mut n in all_nodes(tx)? {
            if n.up && n.heartbeat_ms + LEASE_MS < now_ms {
                n.up = false;
                n.since_ms = now_ms;
                put(tx, &keys::node(n.id), &n)?;
                down.push(n.id);
            }
        }
        if !down.is_empty() {
            let mut m = membership(tx)?;
            m.epoch += 1;
            put(tx, &keys::membership(), &m)?;
        }
        Ok(down)
    })
}

/// Drives whose shards need rebuilding elsewhere: drives flagged for refill, and every drive of
/// a node down for longer than `grace_ms` that was not evacuated yet.
pub fn drives_to_rebuild(kv: &dyn Kv, now_ms: u64, grace_ms: u64) -> Result<Vec<(u32, u16)>> {
    run(kv, false, |tx| {
        let mut out = Vec::new();
        for n in all_nodes(tx)? {
            let evacuate = !n.up && !n.evacuated && n.since_ms + grace_ms <= now_ms;
            for d in &n.drives {
                if evacuate || d.refill {
                    out.push((n.id, d.id));
                }
            }
        }
        Ok(out)
    })
}

/// Records that the shards of `drive` were queued for repair (clears the refill flag; for a
/// node that is down, marks it evacuated once all its drives are done).
pub fn drive_rebuild_queued(kv: &dyn Kv, node: u32, drive: u16) -> Result<()> {
    run(kv, true, |tx| {
        let Some(mut n) = get::<NodeRec>(tx, &keys::node(node))? else {
            return Ok(());
        };
        if let Some(d) = n.drives.iter_mut().find(|d| d.id == drive) {
            d.refill = false;
        }
        if !n.up && n.drives.iter().all(|d| !d.refill) {
            n.evacuated = true;
        }
        put(tx, &keys::node(node), &n)?;
        Ok(())
    })
}

/// A leader's proof of office: who holds the lease, and the term it took it in. Every
/// transaction a leader's decision makes runs [`fenced`]: inside the transaction, the lease must
/// still be this holder's, in this term. A leader paused or cut off past its lease, whose place
/// another process has taken meanwhile, finds on waking that none of its decisions applies,
/// however late its clock or its messages are: the check is part of the commit, not a reading of
/// the time. (The lease's expiry, by the wall clock, only decides when another process may take
/// over.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub holder: u64,
    pub epoch: u64,
}

/// How a refusal by [`check_fence`] starts.
pub const FENCED: &str = "fenced";

/// Takes or renews the leader lease for `holder`; the fence of its term while `holder` leads.
pub fn take_lead(kv: &dyn Kv, holder: u64, now_ms: u64) -> Result<Option<Fence>> {
    run(kv, true, |tx| {
        // A lease record this version cannot read (written before terms existed) is taken as
        // expired: its holder checked no fences.
        let cur: Option<LeaseRec> = tx.get(&keys::leader())?.and_then(|b| decode(&b).ok());
        let epoch = match &cur {
            Some(l) if l.holder != holder && l.expires_ms > now_ms => return Ok(None),
            Some(l) if l.holder == holder => l.epoch,
            Some(l) => l.epoch + 1,
            None => 1,
        };
        put(
            tx,
            &keys::leader(),
            &LeaseRec {
                holder,
                expires_ms: now_ms + LEADER_LEASE_MS,
                epoch,
            },
        )?;
        Ok(Some(Fence { holder, epoch }))
    })
}

/// Refuses unless `fence` still holds the leader lease (see [`Fence`]). Reading the lease puts
/// it in the transaction's read set, so a takeover committed before this transaction makes it
/// conflict and see the new holder on its retry.
pub fn check_fence(tx: &mut dyn Tx, fence: Fence) -> Result<()> {
    let cur: Option<LeaseRec> = tx.get(&keys::leader())?.and_then(|b| decode(&b).ok());
    match cur {
        Some(l) if l.holder == fence.holder && l.epoch == fence.epoch => Ok(()),
        _ => Err(MetaError::Refused(format!(
            "{FENCED}: this control process no longer leads (its term {} ended)",
            fence.epoch
        ))),
    }
}

/// Runs `f` — any code written against [`Kv`] — as one transaction that first checks `fence`.
pub fn fenced<T>(kv: &dyn Kv, fence: Fence, f: impl Fn(&dyn Kv) -> Result<T>) -> Result<T> {
    run(kv, true, |tx| {
        check_fence(tx, fence)?;
        f(&crate::kv::TxKv::new(tx))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redb_kv::RedbKv;

    fn reg(peer: &str, drives: &[(&str, Option<[u8; 16]>)]) -> Registration {
        Registration {
            peer: peer.into(),
            http: format!("http-{peer}"),
            zone: "z".into(),
            drives: drives
                .iter()
                .map(|(p, u)| DriveReport {
                    path: p.to_string(),
                    uuid: *u,
                    fresh_uuid: [7; 16],
                    capacity_bytes: 100,
                    free_bytes: 50,
                })
                .collect(),
        }
    }

    #[test]
    fn the_repair_rate_is_the_default_until_set_and_again_once_cleared() {
        let d = tempfile::tempdir().unwrap();
        let kv = RedbKv::open(&d.path().join("m.redb")).unwrap();
        assert_eq!(repair_rate(&kv).unwrap(), DEFAULT_REPAIR_BYTES_PER_S);
        set_repair_rate(&kv, Some(1 << 20)).unwrap();
        assert_eq!(repair_rate(&kv).unwrap(), 1 << 20);
        let raw = run(&kv, false, |tx| -> Result<_> {
            Ok(tx.get(&keys::repair_rate())?)
        })
        .unwrap();
        assert_eq!(raw, Some((1u64 << 20).to_le_bytes().to_vec()));
        set_repair_rate(&kv, Some(u64::MAX)).unwrap();
        assert_eq!(repair_rate(&kv).unwrap(), u64::MAX);
        // Zero would stop repairs for good: it is taken as the slowest rate there is.
        set_repair_rate(&kv, Some(0)).unwrap();
        assert_eq!(repair_rate(&kv).unwrap(), 1);
        set_repair_rate(&kv, None).unwrap();
        assert_eq!(repair_rate(&kv).unwrap(), DEFAULT_REPAIR_BYTES_PER_S);
    }

    #[test]
    fn register_heartbeat_expire_return() {
        let d = tempfile::tempdir().unwrap();
        let kv = RedbKv::open(&d.path().join("m.redb")).unwrap();
        assert_eq!(init_cluster(&kv, 4, 2).unwrap(), (4, 2));
        assert_eq!(init_cluster(&kv, 8, 3).unwrap(), (4, 2));
        let a = register(&kv, &reg("a", &[("/a0", None), ("/a1", None)]), 1000).unwrap();
        let b = register(&kv, &reg("b", &[("/b0", None)]), 1000).unwrap();
        assert_eq!((a.id, b.id), (0, 1));
        assert_eq!(
            a.drives.iter().map(|d| d.id).collect::<Vec<_>>(),
            vec![0, 1]
        );
        assert_eq!(b.drives[0].id, 2);
        let e0 = view(&kv).unwrap().epoch;
        let beat = heartbeat(&kv, 0, &[(0, 42)], 5000).unwrap();
        assert!(beat.known && beat.epoch == e0);
        assert_eq!(heartbeat_unrecorded(&kv, 0).unwrap(), Some(beat));
        assert!(!heartbeat(&kv, 9, &[], 5000).unwrap().known);
        assert_eq!(heartbeat_unrecorded(&kv, 9).unwrap(), None);
        // b's lease runs out; a's does not.
        assert_eq!(expire_leases(&kv, 1000 + LEASE_MS + 1).unwrap(), vec![1]);
        let v = view(&kv).unwrap();
        assert!(v.epoch > e0);
        assert!(v.nodes[0].up && !v.nodes[1].up);
        assert_eq!(v.nodes[0].drives[0].free_bytes, 42);
        // A node marked down must record its next heartbeat (which brings it back up).
        assert_eq!(heartbeat_unrecorded(&kv, 1).unwrap(), None);
        // The detector's verdict: only nodes that are up change, and the epoch moves once.
        assert_eq!(mark_down(&kv, &[0, 1], 7000).unwrap(), vec![0]);
        let v2 = view(&kv).unwrap();
        assert!(!v2.nodes[0].up && v2.nodes[0].since_ms == 7000 && v2.epoch == v.epoch + 1);
        assert!(mark_down(&kv, &[0], 8000).unwrap().is_empty());
        let back = heartbeat(&kv, 0, &[], 9000).unwrap();
        assert!(back.known && back.epoch == v2.epoch + 1);
        assert!(view(&kv).unwrap().nodes[0].up);
        // Down past the grace period: b's drive is to be rebuilt, once.
        assert_eq!(
            drives_to_rebuild(&kv, 100_000, 10_000).unwrap(),
            vec![(1, 2)]
        );
        drive_rebuild_queued(&kv, 1, 2).unwrap();
        assert!(drives_to_rebuild(&kv, 100_000, 10_000).unwrap().is_empty());
        // b returns with its drive emptied: same node id, same drive id, flagged for refill.
        let b2 = register(&kv, &reg("b", &[("/b0", None)]), 200_000).unwrap();
        assert_eq!(b2.id, 1);
        assert_eq!(b2.drives[0].id, 2);
        assert!(b2.drives[0].refill && b2.up && !b2.evacuated);
        // a returns with its identity intact: nothing to refill.
        let a2 = register(
            &kv,
            &reg("a", &[("/a0", Some([7; 16])), ("/a1", Some([7; 16]))]),
            1,
        )
        .unwrap();
        assert!(a2.drives.iter().all(|d| !d.refill));
    }

    #[test]
    fn a_drain_that_would_leave_too_little_in_service_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let kv = RedbKv::open(&d.path().join("m.redb")).unwrap();
        init_cluster(&kv, 4, 2).unwrap();
        // Seven nodes of one drive: 4+2 needs six.
        for i in 0..7 {
            let p = format!("n{i}");
            register(&kv, &reg(&p, &[(&format!("/{p}"), None)]), 1000).unwrap();
        }
        start_drain(&kv, 6, 0, 2000).unwrap();
        // Idempotent: the same drain again is the same record.
        assert_eq!(start_drain(&kv, 6, 0, 3000).unwrap().started_ms, 2000);
        let e = start_drain(&kv, 5, 0, 2000).unwrap_err();
        assert!(
            matches!(&e, MetaError::Refused(m) if m.contains("1 node(s) already draining")),
            "{e}"
        );
        assert!(!view(&kv).unwrap().draining(5));
        // Once the first drain is stopped the second may start; a node down counts as out.
        assert!(stop_drain(&kv, 6).unwrap());
        start_drain(&kv, 5, 0, 2000).unwrap();
        stop_drain(&kv, 5).unwrap();
        mark_down(&kv, &[0], 5000).unwrap();
        assert!(matches!(
            start_drain(&kv, 5, 0, 6000),
            Err(MetaError::Refused(_))
        ));
    }

    #[test]
    fn one_leader_at_a_time() {
        let d = tempfile::tempdir().unwrap();
        let kv = RedbKv::open(&d.path().join("m.redb")).unwrap();
        let first = take_lead(&kv, 1, 0).unwrap().unwrap();
        assert_eq!(take_lead(&kv, 2, 1000).unwrap(), None);
        assert_eq!(take_lead(&kv, 1, 1000).unwrap(), Some(first));
        let second = take_lead(&kv, 2, 1000 + LEADER_LEASE_MS + 1)
            .unwrap()
            .unwrap();
        assert_eq!(second.epoch, first.epoch + 1);
        assert_eq!(take_lead(&kv, 1, 1000 + LEADER_LEASE_MS + 2).unwrap(), None);
        // The first leader wakes up: whatever it decides is refused, inside the transaction.
        let r = fenced(&kv, first, |kv| mark_down(kv, &[0], 9000));
        assert!(matches!(r, Err(MetaError::Refused(_))), "{r:?}");
        assert!(fenced(&kv, second, |kv| mark_down(kv, &[0], 9000)).is_ok());
        // Even holding the lease again later, it is in a new term: the old fence stays dead.
        let third = take_lead(&kv, 1, 1000 + 3 * LEADER_LEASE_MS)
            .unwrap()
            .unwrap();
        assert_eq!(third.epoch, second.epoch + 1);
        assert!(fenced(&kv, first, |kv| mark_down(kv, &[0], 9000)).is_err());
        assert!(fenced(&kv, third, |kv| mark_down(kv, &[0], 9000)).is_ok());
    }
}
