//! The store's context, which a node's executors share: the metadata client, the drives,
//! erasure coding, the cluster, metrics and the repair queue and pace, with the small
//! operations on them that every layer uses (intents, queueing repairs and moves, waiting
//! unless stopping). The store, shard I/O and background work take a `Node`; the front ends
//! take a `web::Front`, which adds what only they hold (client credentials, connection
//! limits). Only `node` (the wiring) builds either.

use crate::drives::Drive;
use ostore_control::meta::MetaError;
use ostore_control::records::ShardLoc;
use ostore_control::rpc::ask;
use ostore_controlplane::client::MetaClient;
use ostore_engine::EcParams;
use ostore_server::metrics::Metrics;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Everything the executors share. All fields are `Send + Sync`; per-executor state lives in
/// the executor's tasks.
pub struct Node {
    pub meta: MetaClient,
    pub drives: Vec<Drive>,
    pub ec: EcParams,
    pub store: StoreOptions,
    /// This process's identity: locks of a process that restarted are stale.
    pub boot: u64,
    pub node_id: String,
    pub metrics: Metrics,
    pub stopping: AtomicBool,
    /// Cluster membership and peer credentials; `None` for `ostore dev`.
    pub cluster: Option<crate::cluster::Cluster>,
    pub(crate) repair_tx: flume::Sender<[u8; 32]>,
    pub(crate) repair_rx: flume::Receiver<[u8; 32]>,
    /// How fast this node's repairs read, and may read.
    pub repair_pace: RepairPace,
}

impl Node {
    /// One of this node's drives. Panics for a drive of another node: callers route those to
    /// the node that holds it.
    pub fn drive(&self, id: u16) -> &Drive {
        self.local_drive(id)
            .unwrap_or_else(|| panic!("drive {id} is not on this node"))
    }

    /// The node and the drive (its directory name) holding drive `id`, as `/locate` shows them.
    pub fn describe_drive(&self, id: u16) -> (String, String) {
        let name = |p: &Path| {
            p.file_name()
                .map(|f| f.to_string_lossy().to_string())
                .unwrap_or_default()
        };
        if let Some(d) = self.local_drive(id) {
            return (self.node_id.clone(), name(&d.root));
        }
        if let Some(c) = &self.cluster {
            for n in &c.view().nodes {
                if let Some(d) = n.drives.iter().find(|d| d.id == id) {
                    return (n.id.to_string(), name(Path::new(&d.path)));
                }
            }
        }
        ("unknown".into(), format!("drive-{id}"))
    }

    /// Fetches the cluster view from the control plane now (it is refreshed every heartbeat).
    pub async fn refresh_view(&self) {
        if let Some(c) = &self.cluster {
            match self.meta.ask(ask::Cluster {}).await {
                Ok(v) => c.set_view(v),
                Err(e) => tracing::warn!("reading the cluster view: {e}"),
            }
        }
    }

    /// Wakes the repair worker (it also polls the queue every few seconds).
    pub fn wake_repair(&self) {
        let _ = self.repair_tx.try_send([0; 32]);
    }

    /// Records, before anything is written, the shard files a write of this process is about
    /// to create.
    pub async fn begin_intent(&self, id: u64, shards: &[ShardLoc]) -> Result<(), MetaError> {
        self.meta
            .ask(ask::BeginIntent {
                id,
                shards: shards.to_vec(),
                owner: self.owner(),
            })
            .await
    }

    /// This process as the owner of the intents it writes.
    pub fn owner(&self) -> ostore_control::records::Owner {
        ostore_control::records::Owner {
            node: self.cluster.as_ref().map_or(0, |c| c.me),
            boot: self.boot,
        }
    }

    pub fn local_drive(&self, id: u16) -> Option<&Drive> {
        self.drives.iter().find(|d| d.id == id)
    }

    /// Forgets an intent without waiting for the commit: the intent is bookkeeping whose files
    /// are already referenced or deleted, and a restart that still finds it does the same.
    pub fn end_intent_later(&self, id: u64) {
        let meta = self.meta.clone();
        glommio::spawn_local(async move {
            if let Err(e) = meta.ask(ask::EndIntent { id }).await {
                tracing::warn!("ending intent {id:016x}: {e}");
            }
        })
        .detach();
    }

    /// Queues a content to have shards moved (copied, not rebuilt), durably.
    pub async fn queue_move(&self, blake3: [u8; 32]) {
        self.queue(blake3, true).await
    }

    /// Queues a content for repair, durably, and wakes the repair worker.
    pub async fn queue_repair(&self, blake3: [u8; 32]) {
        self.queue(blake3, false).await;
        let _ = self.repair_tx.try_send(blake3);
    }

    async fn queue(&self, blake3: [u8; 32], moving: bool) {
        let (contents, nonce) = (vec![blake3], rand::random());
        let r = if moving {
            self.meta.ask(ask::QueueMove { contents, nonce }).await
        } else {
            self.meta.ask(ask::QueueRepair { contents, nonce }).await
        };
        if let Err(e) = r {
            let what = if moving { "to move" } else { "for repair" };
            tracing::warn!("queueing {} {what}: {e}", hex::encode(blake3));
        }
    }
}

/// How a data node stores objects and keeps uploads.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// Store objects that compress as seekable zstd.
    pub compress: bool,
    /// How long an unfinished resumable upload lives after its last change.
    pub upload_expiry: Duration,
    /// How long unreferenced content stays before garbage collection deletes it.
    pub gc_grace: Duration,
    /// Bytes of decoded stripes each executor may keep in memory for client GETs (0: none).
    pub stripe_cache_bytes: u64,
}

pub(crate) async fn sleep_unless_stopping(node: &Node, d: Duration) -> bool {
    let step = Duration::from_millis(50);
    let mut left = d;
    while !left.is_zero() {
        if node.stopping.load(Ordering::Relaxed) {
            return false;
        }
        let s = left.min(step);
        glommio::timer::sleep(s).await;
        left -= s;
    }
    !node.stopping.load(Ordering::Relaxed)
}

/// Resolves once the node is stopping.
pub async fn wait_stopping(node: &Node) {
    while !node.stopping.load(Ordering::Relaxed) {
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
}

/// A content with fewer than K good shards: counted, logged, and marked damaged so that the
/// next upload of the same bytes replaces it.
pub(crate) async fn unrepairable(node: &Node, h: &[u8; 32], have: usize, need: usize) {
    tracing::error!(
        "content {} is unrepairable: {have} of {need} shards readable",
        hex::encode(h)
    );
    node.metrics.unrepairable.fetch_add(1, Ordering::Relaxed);
    let _ = node.meta.ask(ask::MarkDamaged { blake3: *h }).await;
}

/// Which queued repairs this node takes: in a cluster, the nodes that are up split the queue by
/// content hash, so that each content is rebuilt by one node; `ostore dev` takes all.
pub(crate) fn repair_share(node: &Node) -> Share {
    let (rank, of) = match &node.cluster {
        None => (0, 1),
        Some(c) => {
            let view = c.view();
            let mut up: Vec<u32> = view.nodes.iter().filter(|n| n.up).map(|n| n.id).collect();
            up.sort_unstable();
            match up.iter().position(|&id| id == c.me) {
                Some(r) => (r as u64, up.len() as u64),
                None => (0, 0),
            }
        }
    };
    Share(ostore_engine::placement::hash_share(rank, of))
}

/// This node's part of the content-hash space (`placement::hash_share`): one contiguous run
/// of a queue kept in hash order.
pub(crate) struct Share(Option<(u64, u64)>);

impl Share {
    fn prefix(h: &[u8; 32]) -> u64 {
        u64::from_be_bytes(h[..8].try_into().expect("8 bytes"))
    }

    pub(crate) fn contains(&self, h: &[u8; 32]) -> bool {
        self.0
            .is_some_and(|(lo, hi)| (lo..=hi).contains(&Self::prefix(h)))
    }

    /// The first content hash of the share, where its run of a queue starts.
    fn first(&self) -> Option<[u8; 32]> {
        let (lo, _) = self.0?;
        let mut h = [0u8; 32];
        h[..8].copy_from_slice(&lo.to_be_bytes());
        Some(h)
    }

    /// Up to `limit` entries of this node's run of the repair queue (or the move queue), and
    /// whether the run goes on past them.
    pub(crate) async fn work(
        &self,
        node: &Node,
        moves: bool,
        limit: usize,
    ) -> Result<(Vec<([u8; 32], u64)>, bool), ostore_control::meta::MetaError> {
        let Some(from) = self.first() else {
            return Ok((Vec::new(), false));
        };
        let page: Vec<([u8; 32], u64)> =
            node.meta.ask(ask::WorkQueue { moves, from, limit }).await?;
        let full = page.len() == limit;
        let mine: Vec<([u8; 32], u64)> =
            page.into_iter().filter(|(h, _)| self.contains(h)).collect();
        let more = full && mine.len() == limit;
        Ok((mine, more))
    }
}

/// How fast this node's repairs (and scrubs, which repair what they find) read, and may read:
/// the operator's rate (`osctl repair-rate`, read from the control plane every repair round)
/// shared by all of the node's executors.
pub struct RepairPace {
    /// Bytes per second (`u64::MAX`: no limit).
    pub limit: std::sync::atomic::AtomicU64,
    pacer: std::sync::Mutex<ostore_engine::rate::Pacer>,
    meter: std::sync::Mutex<ostore_engine::rate::RateMeter>,
    /// The clock the pacer and meter count on.
    epoch: std::time::Instant,
}

impl Default for RepairPace {
    fn default() -> Self {
        RepairPace {
            limit: std::sync::atomic::AtomicU64::new(
                ostore_control::cluster::DEFAULT_REPAIR_BYTES_PER_S,
            ),
            pacer: Default::default(),
            meter: Default::default(),
            epoch: std::time::Instant::now(),
        }
    }
}

impl RepairPace {
    /// Bytes per second this node's repairs read over the last few seconds.
    pub fn bytes_per_s(&self) -> u64 {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        self.meter.lock().expect("repair meter").per_second(now_ms)
    }

    /// Waits as needed to keep the node's repair reads under the limit, then counts `bytes`.
    /// A wait is cut short when the operator changes the limit meanwhile (the pace starts
    /// afresh at the new one).
    pub(crate) async fn take(&self, bytes: u64) {
        let now_us = self.epoch.elapsed().as_micros() as u64;
        let limit = self.limit.load(Ordering::Relaxed);
        let wait =
            self.pacer
                .lock()
                .expect("repair pacer")
                .take(now_us, bytes, limit, REPAIR_BURST_US);
        let until = std::time::Instant::now() + Duration::from_micros(wait);
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            if self.limit.load(Ordering::Relaxed) != limit {
                let now_us = self.epoch.elapsed().as_micros() as u64;
                self.pacer.lock().expect("repair pacer").restart(now_us);
                break;
            }
            glommio::timer::sleep(left.min(Duration::from_millis(250))).await;
        }
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        self.meter.lock().expect("repair meter").add(now_ms, bytes);
    }
}

/// Reads a repair may run ahead of its pace.
const REPAIR_BURST_US: u64 = 50_000;
