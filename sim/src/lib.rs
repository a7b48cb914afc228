//! A deterministic simulator of ostore's protocols: the real metadata code
//! (`ostore_control::rpc::execute_idempotent` over redb, in memory) and the real decisions
//! (`ostore_engine::placement`, the `ostore_engine::lifecycle` machines of a write's commit and
//! of a rebuild), run by many concurrent tasks over simulated nodes and drives, a simulated
//! network to the control plane and a simulated clock, all drawn from one seed. A seed replays
//! bit for bit.
//!
//! Workload: PUTs (new content, deduplicated content, overwrites), GETs (which queue a repair
//! when they read around a bad shard), deletes of keys and of versions, garbage collection, the
//! intent sweep, scrub (check every shard of a content, rebuild what is bad and move what shares
//! a node), and the repair worker reading the repair queue (fed by GETs and by the leader when a
//! node goes down). Faults: every call to the control plane may be lost on the way, delayed (it
//! runs later, out of order), duplicated, or run with its answer lost (a result unknown); a
//! writer's process may die at any step; a node may crash (its unsynced files lost or torn) and
//! return later with whatever its drive held (stale files included), be cut off by a partition
//! and return, or lose its drive (it returns empty); a block may rot in any file; the clock may
//! jump forward, or step back. Faults that hurt shards are drawn only while every stored content (and every
//! write or rebuild about to be committed) keeps K good shards on reachable nodes: the system
//! promises to survive M lost failure domains, not more.
//!
//! Checked after every step: every stored content keeps K good shards on its drives (nothing
//! referenced was deleted, by a write's cleanup, a sweep, a rebuild or GC); every version a PUT
//! acknowledged still names its bytes and reads back. At the end, once the faults stop, nodes
//! return and leftover intents are resolved and garbage collected: every content converges to
//! K+M good shards on distinct nodes, every counter equals a recount (`meta::audit`), and no
//! shard file is left that no content lists (beyond the orphans a slow writer left after its
//! intent was resolved, which the orphan scan removes). See ARCHITECTURE.md for what it does not
//! cover yet.

use ostore_control::meta::{self, NewContent, WriteCondition};
use ostore_control::records::{ContentRec, Encoding, IntentState, Owner, ShardLoc, Stored, Tree};
use ostore_control::redb_kv::RedbKv;
use ostore_control::rpc::{self, ask, Ask, Token};
use ostore_control::upload::{self, Progress, UploadRec};
use ostore_engine::lifecycle::{
    self, Action, Event, RebuildAction, RebuildEvent, SweepAction, SweepEvent,
};
use ostore_engine::placement::{
    self, DrainFacts, DrainStep, DriveView, NodeLoad, Rebalancer, WriteRule,
};
use ostore_engine::EcParams;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// What one run does.
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    /// Scheduler steps (each one metadata call or one drive operation of one task).
    pub steps: usize,
    /// Chance that a call to the control plane is lost on the way (half of those run later
    /// instead, out of order), and again that its answer is lost after it ran.
    pub p_lost: f64,
    /// Chance that a call is sent twice (the second copy runs right after the first).
    pub p_dup: f64,
    /// Keys written, and distinct contents (fewer contents than writes: deduplication).
    pub keys: usize,
    pub contents: usize,
    /// Tasks running at once.
    pub concurrency: usize,
    /// Chance that a PUT's or a rebuild's process dies before each of its steps.
    pub p_crash: f64,
    /// Chance, per step, of a fault on a node or a drive (crash, partition, return, lost
    /// drive, a rotten block).
    pub p_fault: f64,
    /// For testing the checks themselves: at this step, the files of one stored content
    /// vanish (a loss beyond what the system promises to survive).
    pub sabotage_at: Option<usize>,
    /// Bugs this project fixed, put back to show the simulator catches them.
    pub bugs: Bugs,
}

/// Fixed bugs that a run can put back, one flag each.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bugs {
    /// The intent sweep deletes the files its listing of intents named, instead of those the
    /// intent names when read back after the fence (a rebuild's `ReplaceShards` that landed in
    /// between turned them into the content's shards).
    pub sweep_deletes_listed: bool,
    /// A rebuild points the content at its new files without having synced them.
    pub rebuild_skips_sync: bool,
    /// The intent sweep deletes a writer's files after abandoning its intent without reading
    /// back whether the writer's commit landed first.
    pub sweep_skips_read_back: bool,
}

impl Config {
    pub fn new(seed: u64) -> Config {
        Config {
            seed,
            steps: 600,
            p_lost: 0.05,
            p_dup: 0.02,
            keys: 4,
            contents: 8,
            concurrency: 6,
            p_crash: 0.01,
            p_fault: 0.03,
            sabotage_at: None,
            bugs: Bugs::default(),
        }
    }
}

/// How a run ended.
#[derive(Debug)]
pub struct Report {
    pub seed: u64,
    pub steps: usize,
    /// The first broken promise, if any.
    pub violation: Option<String>,
    /// The events of the run, oldest first (the last ones lead to the violation).
    pub history: Vec<String>,
    pub puts_acknowledged: usize,
    pub lost_calls: usize,
    pub gc_collected: usize,
    /// Shards rebuilt or moved (rebuilds whose `ReplaceShards` landed).
    pub rebuilds: usize,
    /// Node and drive faults drawn.
    pub faults: usize,
    /// Resumable uploads committed and acknowledged.
    pub uploads: usize,
    /// Drains recorded done.
    pub drains_done: usize,
}

/// xorshift64*: small, fast, and the same on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

const BUCKET: &str = "sim";
const EC: EcParams = EcParams { data: 4, parity: 2 };
/// Nodes, one drive each (drive id = node id).
const NODES: u16 = 8;
/// Nodes out (crashed or cut off) at once, at most: six stay up, so a write spreads its six
/// shards over distinct nodes.
const MAX_DOWN: usize = 2;
const SHARD_BYTES: u64 = 4096;
/// An upload not written to for this long expires.
const UPLOAD_EXPIRY_MS: u64 = 2_000;

/// A call to the control plane that got no answer (it may or may not have run), or an answer
/// refusing it.
#[derive(Debug)]
enum Failed {
    Unknown,
    Refused,
}

/// A shard file on a simulated drive: which file.
type FileKey = (u16, u64, u32, u8);

fn file_key(l: &ShardLoc) -> FileKey {
    (l.drive, l.file_id, l.file_tag, l.index)
}

/// What a shard file holds.
#[derive(Debug, Clone, Copy)]
struct File {
    /// The content it is a shard of.
    blake3: [u8; 32],
    /// Written but not synced: a crash loses or tears it.
    synced: bool,
    /// A block fails its check (rot, or a torn write).
    corrupt: bool,
}

#[derive(Debug, Clone, Copy)]
struct SimNode {
    up: bool,
    boot: u64,
}

/// The simulated clock at the start of a run (ms); it never goes back before it.
const START_MS: u64 = 1_000_000;

/// One task's progress.
enum Task {
    Put(Put),
    /// The intent sweep (`lifecycle::Sweep`) of one intent: mostly one still being written,
    /// whose writer it takes as gone (it fences the intent, reads it back and follows
    /// `lifecycle::settle`) while the writer (only slow, or dead) may still be at work.
    Sweep(Sweep),
    Get {
        key: usize,
    },
    Delete {
        key: usize,
    },
    /// Removes one version a PUT acknowledged (it is no longer promised from the request on).
    DeleteVersion {
        key: usize,
        version: u64,
    },
    Gc(Gc),
    /// Scrub of one content, or the repair worker's handling of one queued request.
    Repair(Box<Repair>),
    /// A resumable upload: created, then PATCHes (each takes the lock, writes and syncs,
    /// records its progress), the last of which commits; or abandoned at any point.
    Upload(Box<Upload>),
    /// The expiry sweep: ends uploads expired by now and deletes their files.
    Expire(Option<Vec<[u8; 16]>>),
    /// The operator sets how many versions each key keeps (`None`: all).
    SetRetention(Option<u32>),
    /// The retention pass over the bucket's keys, a page per step.
    Trim(Option<String>),
    /// The operator drains a node (`osctl drain`), or stops draining it.
    Drain {
        node: u16,
        stop: bool,
    },
    /// One round of the leader's rebalancing job (`engine::placement::Rebalancer`): the
    /// offers it makes, queued to move one step at a time.
    Rebalance(Option<Vec<(u16, usize)>>),
    /// One round of the leader's drain job (`engine::placement::drain_step`) for one node
    /// being drained (`only` that one, else any).
    DrainRound {
        only: Option<u32>,
        round: Option<DrainRound>,
    },
}

/// Where a round of the drain job is.
struct DrainRound {
    node: u16,
    facts: DrainFacts,
}

struct Upload {
    id: [u8; 16],
    key: usize,
    content: usize,
    locs: Vec<ShardLoc>,
    /// The PATCH holding the lock now.
    owner: u64,
    stage: UploadStage,
    intent: u64,
    machine: lifecycle::Commit,
    todo: VecDeque<Action>,
}

enum UploadStage {
    Create,
    Lock,
    Write,
    Sync,
    /// The last PATCH commits; an earlier one records its progress and lets go.
    Progress,
    Commit,
    Finish,
}

struct Put {
    key: usize,
    content: usize,
    intent: u64,
    owner: Owner,
    locs: Vec<ShardLoc>,
    stage: PutStage,
    machine: lifecycle::Commit,
    todo: VecDeque<Action>,
}

enum PutStage {
    Intent,
    Write,
    Sync,
    Commit,
}

enum Sweep {
    /// Looking for an intent.
    Pick,
    Run(SweepRun),
}

/// One intent's sweep (`lifecycle::Sweep`) under way.
struct SweepRun {
    id: u64,
    /// The files the intent listed when the sweep looked at it.
    listed: Vec<ShardLoc>,
    /// The files to delete: as listed, then as read back after the fence.
    files: Vec<ShardLoc>,
    machine: lifecycle::Sweep,
    todo: Vec<SweepAction>,
}

struct Gc {
    candidates: Option<Vec<[u8; 32]>>,
    /// Files of a collected content, and the garbage intent listing them.
    removing: Option<(u64, Vec<ShardLoc>)>,
}

/// `check_and_repair` of one content: read its record, find its bad shards (missing, rotten,
/// or on a node that is out) and its shards sharing a node, place replacements, and carry out
/// the `lifecycle::Rebuild` machine.
struct Repair {
    /// Picked by the scrub (`None`: take one from the repair queue, or with `moves` from the
    /// move queue).
    blake3: Option<[u8; 32]>,
    moves: bool,
    /// The queue entry's nonce, cleared when the content is whole.
    nonce: Option<u64>,
    stage: RepairStage,
    intent: u64,
    owner: Owner,
    rec: Option<ContentRec>,
    /// The slots rebuilt or moved: the location each was made from and the new one.
    from: Vec<ShardLoc>,
    new: Vec<ShardLoc>,
    /// The files the intent lists, as `ReplaceShards` answered or as read back.
    listed: Vec<ShardLoc>,
    machine: lifecycle::Rebuild,
    todo: VecDeque<RebuildAction>,
    /// The new files are written, not yet synced.
    syncing: bool,
}

enum RepairStage {
    Pick,
    Load,
    Plan,
    Run,
}

/// A call that was lost on the way but runs later, out of order.
struct Delayed {
    due: usize,
    request: rpc::Request,
    token: Token,
}

pub struct World {
    cfg: Config,
    rng: Rng,
    kv: RedbKv,
    now_ms: u64,
    step: usize,
    nodes: Vec<SimNode>,
    files: BTreeMap<FileKey, File>,
    contents: Vec<Vec<u8>>,
    hashes: Vec<[u8; 32]>,
    /// Versions a PUT acknowledged: (key, version) → content index.
    acknowledged: BTreeMap<(usize, u64), usize>,
    /// Versions retention let go (see `forget_trimmable`).
    unpromised: BTreeSet<(usize, u64)>,
    history: Vec<String>,
    lost_calls: usize,
    gc_collected: usize,
    rebuilds: usize,
    faults: usize,
    uploads: usize,
    drains_done: usize,
    rebalancer: Rebalancer,
    next_id: u64,
    delayed: Vec<Delayed>,
    /// Files written after their intent was resolved (see `write_files`): listed nowhere, the
    /// orphan scan's to remove.
    orphans: BTreeSet<FileKey>,
    /// Shard sets about to be committed (a PUT's written files; a rebuild's content with its
    /// new files in their slots): faults keep them within M too.
    pending: BTreeMap<u64, ([u8; 32], Vec<ShardLoc>)>,
}

impl World {
    pub fn new(cfg: Config) -> World {
        let mut rng = Rng::new(cfg.seed);
        let kv = RedbKv::in_memory().expect("an in-memory store");
        meta::init(&kv, 0).expect("init");
        meta::create_bucket(&kv, BUCKET, 0).expect("a bucket");
        // The cluster's nodes, one drive each: registered so that drains count and find their
        // shards as `ostore control` does. Node n's drive is drive n.
        ostore_control::cluster::init_cluster(&kv, EC.data, EC.parity).expect("a cluster");
        for n in 0..NODES {
            let rec = ostore_control::cluster::register(
                &kv,
                &ostore_control::cluster::Registration {
                    peer: format!("node{n}"),
                    http: format!("node{n}:80"),
                    zone: "default".into(),
                    drives: vec![ostore_control::cluster::DriveReport {
                        path: format!("/d{n}"),
                        uuid: None,
                        fresh_uuid: [n as u8 + 1; 16],
                        capacity_bytes: 1 << 40,
                        free_bytes: 1 << 40,
                    }],
                },
                0,
            )
            .expect("registered");
            assert_eq!(
                (rec.id, rec.drives[0].id),
                (n as u32, n),
                "node and drive ids as the simulator numbers them"
            );
        }
        let contents: Vec<Vec<u8>> = (0..cfg.contents)
            .map(|i| {
                let len = 1 + rng.below(4000);
                (0..len).map(|j| (i * 31 + j * 7) as u8).collect()
            })
            .collect();
        let hashes = contents
            .iter()
            .map(|c| *blake3::hash(c).as_bytes())
            .collect();
        World {
            cfg,
            rng,
            kv,
            now_ms: START_MS,
            step: 0,
            nodes: vec![SimNode { up: true, boot: 1 }; NODES as usize],
            files: BTreeMap::new(),
            contents,
            hashes,
            acknowledged: BTreeMap::new(),
            unpromised: BTreeSet::new(),
            history: Vec::new(),
            lost_calls: 0,
            gc_collected: 0,
            rebuilds: 0,
            faults: 0,
            uploads: 0,
            drains_done: 0,
            rebalancer: Rebalancer::default(),
            next_id: 1,
            delayed: Vec::new(),
            orphans: BTreeSet::new(),
            pending: BTreeMap::new(),
        }
    }

    fn log(&mut self, s: String) {
        self.history.push(format!("{:>8} ms  {s}", self.now_ms));
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id ^ (self.rng.next_u64() << 16)
    }

    fn owner(&mut self) -> Owner {
        let node = self.rng.below(NODES as usize);
        Owner {
            node: node as u32,
            boot: self.nodes[node].boot,
        }
    }

    /// One call to the control plane over the simulated network.
    fn call<A: Ask>(&mut self, req: A, faults: bool) -> Result<A::Answer, Failed> {
        let request: rpc::Request = req.into();
        let name = format!("{request:?}");
        let name: String = name.chars().take_while(|c| c.is_alphanumeric()).collect();
        let token = Token::new(
            self.rng.next_u64().to_le_bytes().repeat(2)[..16]
                .try_into()
                .expect("16"),
            self.now_ms,
        );
        if faults && self.rng.chance(self.cfg.p_lost) {
            self.lost_calls += 1;
            if self.rng.chance(0.5) {
                let due = self.step + 1 + self.rng.below(40);
                self.log(format!("{name}: delayed to step {due}"));
                self.delayed.push(Delayed {
                    due,
                    request,
                    token,
                });
            } else {
                self.log(format!("{name}: lost on the way"));
            }
            return Err(Failed::Unknown);
        }
        let dup = faults && self.rng.chance(self.cfg.p_dup);
        // What retention may trim is settled before anything changes.
        self.forget_trimmable();
        let r = rpc::execute_idempotent(&self.kv, request.clone(), token, self.now_ms)
            .and_then(|b| rpc::decode_value::<A::Answer>(&b));
        if dup {
            // The same request again, with the same token: its answer is the first one's.
            let again = rpc::execute_idempotent(&self.kv, request, token, self.now_ms)
                .and_then(|b| rpc::decode_value::<A::Answer>(&b));
            self.log(format!("{name}: sent twice"));
            let _ = again;
        }
        if faults && self.rng.chance(self.cfg.p_lost) {
            self.lost_calls += 1;
            self.log(format!(
                "{name}: ran ({}), answer lost",
                if r.is_ok() { "ok" } else { "refused" }
            ));
            return Err(Failed::Unknown);
        }
        match r {
            Ok(v) => Ok(v),
            Err(e) => {
                self.log(format!("{name}: refused: {e}"));
                Err(Failed::Refused)
            }
        }
    }

    /// Runs the delayed calls that are due (their senders gave up on them long ago).
    fn deliver_delayed(&mut self) {
        let step = self.step;
        let (due, later): (Vec<Delayed>, Vec<Delayed>) = std::mem::take(&mut self.delayed)
            .into_iter()
            .partition(|d| d.due <= step);
        self.delayed = later;
        for d in due {
            self.forget_trimmable();
            let name = format!("{:?}", d.request);
            let name: String = name.chars().take_while(|c| c.is_alphanumeric()).collect();
            let r = rpc::execute_idempotent(&self.kv, d.request, d.token, self.now_ms);
            self.log(format!(
                "{name}: delayed copy runs ({})",
                if r.is_ok() { "ok" } else { "refused" }
            ));
        }
    }

    /// The drives as placement sees them: those of nodes out, or being drained, take no new
    /// shards.
    fn views(&self) -> Vec<DriveView> {
        let draining = self.draining();
        (0..NODES)
            .map(|n| DriveView {
                id: n,
                node: n as u32,
                zone: 0,
                free_bytes: 1 << 40,
                healthy: self.nodes[n as usize].up && !draining.contains(&(n as u32)),
            })
            .collect()
    }

    /// Nodes being drained, as the cluster records them.
    fn draining(&self) -> Vec<u32> {
        ostore_control::cluster::view(&self.kv)
            .map(|v| v.drains.iter().map(|(n, _)| *n).collect())
            .unwrap_or_default()
    }

    /// Whether the file at `l` holds a good shard of `blake3` (wherever its node is).
    fn good(&self, l: &ShardLoc, blake3: &[u8; 32]) -> bool {
        self.files
            .get(&file_key(l))
            .is_some_and(|f| f.blake3 == *blake3 && !f.corrupt)
    }

    /// Whether it can be read now.
    fn readable_shard(&self, l: &ShardLoc, blake3: &[u8; 32]) -> bool {
        self.nodes[l.drive as usize].up && self.good(l, blake3)
    }

    /// Creates files (unsynced) on the drives of `locs`; `false` if a node is out. A file
    /// written after its intent was resolved is an orphan.
    fn write_files(&mut self, intent: u64, locs: &[ShardLoc], blake3: [u8; 32]) -> bool {
        let resolved = meta::intent(&self.kv, intent)
            .ok()
            .flatten()
            .is_none_or(|r| r.state == IntentState::Abandoned);
        self.write_files_as(resolved, locs, blake3)
    }

    /// `write_files`, knowing whether what lists the files was resolved already.
    fn write_files_as(&mut self, resolved: bool, locs: &[ShardLoc], blake3: [u8; 32]) -> bool {
        let mut ok = true;
        for l in locs {
            if !self.nodes[l.drive as usize].up {
                ok = false;
                continue;
            }
            self.files.insert(
                file_key(l),
                File {
                    blake3,
                    synced: false,
                    corrupt: false,
                },
            );
            if resolved {
                self.orphans.insert(file_key(l));
            }
        }
        ok
    }

    /// fdatasync of each file: fails if its node is out or the file is gone (a crash since).
    fn sync_files(&mut self, locs: &[ShardLoc]) -> bool {
        let mut ok = true;
        for l in locs {
            let up = self.nodes[l.drive as usize].up;
            match self.files.get_mut(&file_key(l)) {
                Some(f) if up && !f.corrupt => f.synced = true,
                _ => ok = false,
            }
        }
        ok
    }

    /// Deletes files; a file already gone counts as deleted. `false` if a node is out.
    fn remove_files(&mut self, locs: &[ShardLoc]) -> bool {
        let mut all = true;
        for l in locs {
            if self.nodes[l.drive as usize].up {
                self.files.remove(&file_key(l));
            } else {
                all = false;
            }
        }
        all
    }

    fn new_task(&mut self) -> Task {
        match self.rng.below(12) {
            0..=3 => {
                let (key, content) = (
                    self.rng.below(self.cfg.keys),
                    self.rng.below(self.cfg.contents),
                );
                let intent = self.id();
                let Some(locs) = self.place() else {
                    return Task::Get { key };
                };
                self.log(format!("PUT k{key} c{content} intent {intent:x}: starts"));
                let owner = self.owner();
                Task::Put(Put {
                    key,
                    content,
                    intent,
                    owner,
                    locs,
                    stage: PutStage::Intent,
                    machine: lifecycle::Commit::new(),
                    todo: VecDeque::new(),
                })
            }
            4..=5 => Task::Get {
                key: self.rng.below(self.cfg.keys),
            },
            6 if self.rng.below(4) == 0 => Task::Delete {
                key: self.rng.below(self.cfg.keys),
            },
            6 | 7 if !self.acknowledged.is_empty() => {
                let i = self.rng.below(self.acknowledged.len());
                let (&(key, version), _) = self.acknowledged.iter().nth(i).expect("in range");
                self.acknowledged.remove(&(key, version));
                Task::DeleteVersion { key, version }
            }
            8 if self.rng.below(3) == 0 => Task::Sweep(Sweep::Pick),
            8 if self.rng.chance(0.5) => {
                let (key, content) = (
                    self.rng.below(self.cfg.keys),
                    self.rng.below(self.cfg.contents),
                );
                let Some(locs) = self.place() else {
                    return Task::Get { key };
                };
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&self.rng.next_u64().to_le_bytes());
                id[8..].copy_from_slice(&self.rng.next_u64().to_le_bytes());
                let intent = self.id();
                let owner = self.rng.next_u64();
                self.log(format!(
                    "UPLOAD {} k{key} c{content} file {:x}: starts",
                    hex16(&id),
                    locs[0].file_id
                ));
                Task::Upload(Box::new(Upload {
                    id,
                    key,
                    content,
                    locs,
                    owner,
                    stage: UploadStage::Create,
                    intent,
                    machine: lifecycle::Commit::committing(),
                    todo: VecDeque::new(),
                }))
            }
            8 => Task::Expire(None),
            9 if self.rng.below(8) == 0 => {
                let keep = [None, Some(1), Some(2), Some(3)][self.rng.below(4)];
                Task::SetRetention(keep)
            }
            9 if self.rng.below(2) == 0 => Task::Trim(None),
            10 if self.rng.below(10) == 0 => {
                let draining = self.draining();
                match draining.first() {
                    Some(&n) => Task::Drain {
                        node: n as u16,
                        stop: self.rng.chance(0.3),
                    },
                    None => Task::Drain {
                        node: self.rng.below(NODES as usize) as u16,
                        stop: false,
                    },
                }
            }
            10 if self.rng.below(4) == 0 => Task::Rebalance(None),
            10 if self.rng.below(3) == 0 => Task::DrainRound {
                only: None,
                round: None,
            },
            10 if self.rng.below(2) == 0 => {
                let mut r = self.repair(None, None);
                r.moves = true;
                Task::Repair(Box::new(r))
            }
            9 | 10 => {
                let scrub = self.rng.chance(0.5);
                let blake3 = scrub.then(|| self.hashes[self.rng.below(self.cfg.contents)]);
                Task::Repair(Box::new(self.repair(blake3, None)))
            }
            _ => Task::Gc(Gc {
                candidates: None,
                removing: None,
            }),
        }
    }

    /// Shard files for a new object, placed by the write rule on the nodes up.
    fn place(&mut self) -> Option<Vec<ShardLoc>> {
        let drives = placement::place_object(
            &self.views(),
            WriteRule::new(EC, 0),
            SHARD_BYTES,
            self.rng.next_u64(),
        )
        .ok()?;
        let file_id = self.id();
        Some(ShardLoc::for_new_object(&drives, file_id, || {
            self.rng.next_u64() as u32
        }))
    }

    fn repair(&mut self, blake3: Option<[u8; 32]>, nonce: Option<u64>) -> Repair {
        let intent = self.id();
        let owner = self.owner();
        Repair {
            blake3,
            moves: false,
            nonce,
            stage: if blake3.is_some() {
                RepairStage::Load
            } else {
                RepairStage::Pick
            },
            intent,
            owner,
            rec: None,
            from: Vec::new(),
            new: Vec::new(),
            listed: Vec::new(),
            machine: lifecycle::Rebuild::new(),
            todo: VecDeque::new(),
            syncing: false,
        }
    }

    /// Advances `task` by one step; `false` once it is over.
    fn step(&mut self, task: &mut Task) -> bool {
        match task {
            Task::Put(p) => self.step_put(p),
            Task::Get { key } => {
                let key = *key;
                self.get(key);
                false
            }
            Task::Delete { key } => {
                let key = *key;
                let r = self.call(
                    ask::DeleteKey {
                        bucket: BUCKET.into(),
                        key: format!("k{key}"),
                    },
                    true,
                );
                self.log(format!(
                    "DELETE k{key}: {}",
                    if r.is_ok() { "ok" } else { "failed" }
                ));
                false
            }
            Task::DeleteVersion { key, version } => {
                let (key, version) = (*key, *version);
                let r = self.call(
                    ask::DeleteVersion {
                        bucket: BUCKET.into(),
                        key: format!("k{key}"),
                        version,
                    },
                    true,
                );
                self.log(format!(
                    "DELETE k{key} v{version}: {}",
                    if r.is_ok() { "ok" } else { "failed" }
                ));
                false
            }
            Task::Gc(g) => self.step_gc(g),
            Task::Sweep(sw) => self.step_sweep(sw),
            Task::Repair(r) => {
                let more = self.step_repair(r);
                if !more {
                    self.pending.remove(&r.intent);
                }
                more
            }
            Task::Upload(u) => {
                if self.rng.chance(self.cfg.p_crash) {
                    self.log(format!("UPLOAD {}: PATCH process dies", hex16(&u.id)));
                    self.pending.remove(&u.intent);
                    return false;
                }
                let more = self.step_upload(u);
                if !more {
                    self.pending.remove(&u.intent);
                }
                more
            }
            Task::Expire(list) => self.step_expire(list),
            Task::SetRetention(keep) => {
                let keep = *keep;
                let r = self.call(
                    ask::SetRetention {
                        bucket: Some(BUCKET.into()),
                        keep,
                    },
                    true,
                );
                self.log(format!(
                    "RETENTION {keep:?}: {}",
                    if r.is_ok() { "set" } else { "failed" }
                ));
                false
            }
            Task::Drain { node, stop } => {
                let (node, stop) = (*node, *stop);
                let ok = if stop {
                    self.call(ask::DrainStop { node: node as u32 }, true)
                        .is_ok()
                } else {
                    self.call(
                        ask::DrainStart {
                            node: node as u32,
                            shards_at_start: 0,
                        },
                        true,
                    )
                    .is_ok()
                };
                self.log(format!(
                    "DRAIN node {node}{}: {}",
                    if stop { " stopped" } else { "" },
                    if ok { "ok" } else { "failed" }
                ));
                false
            }
            Task::Rebalance(offers) => self.step_rebalance(offers),
            Task::DrainRound { only, round } => {
                let only = *only;
                self.step_drain(only, round)
            }
            Task::Trim(after) => {
                let Ok((removed, next)) = self.call(
                    ask::TrimVersions {
                        bucket: BUCKET.into(),
                        after: after.clone(),
                    },
                    true,
                ) else {
                    return false;
                };
                if removed > 0 {
                    self.log(format!("TRIM: {removed} version(s) removed"));
                }
                *after = next;
                after.is_some()
            }
        }
    }

    /// Versions retention no longer promises: a key keeps its newest `keep` versions (delete
    /// markers count), so a version that has had `keep` newer ones may be trimmed. Looked at
    /// after every step for every version stored, acknowledged yet or not (a PUT's answer may
    /// arrive after its version was trimmed); once not promised, never again (a newer version
    /// deleted later does not bring it back).
    fn forget_trimmable(&mut self) {
        let Ok(Some(keep)) = meta::retention(&self.kv, BUCKET) else {
            return;
        };
        for key in 0..self.cfg.keys {
            let versions = meta::versions(&self.kv, BUCKET, &format!("k{key}"))
                .ok()
                .flatten()
                .unwrap_or_default();
            for v in &versions {
                let newer = versions.iter().filter(|n| n.version > v.version).count();
                if newer >= keep.max(1) as usize {
                    self.unpromised.insert((key, v.version));
                    self.acknowledged.remove(&(key, v.version));
                }
            }
        }
    }

    /// A PUT or an upload answered with `version`: promised from now on, unless retention
    /// already let it go.
    fn acknowledge(&mut self, key: usize, version: u64, content: usize) {
        if !self.unpromised.contains(&(key, version)) {
            self.acknowledged.insert((key, version), content);
        }
    }

    /// A content stored as `locs` hold it, as a PUT or an upload commits it.
    fn sharded(&self, content: usize, locs: &[ShardLoc]) -> NewContent {
        NewContent {
            blake3: self.hashes[content],
            size_bytes: self.contents[content].len() as u64,
            stored: Stored::Sharded {
                data: EC.data,
                parity: EC.parity,
                shards: locs.to_vec(),
            },
            encoding: Encoding::Identity,
            tree: Tree::None,
        }
    }

    /// Whether contents wait in the move queue (`None`: no answer).
    fn moves_queued(&mut self) -> Option<bool> {
        self.call(
            ask::WorkQueue {
                moves: true,
                from: [0; 32],
                limit: 1,
            },
            true,
        )
        .ok()
        .map(|q| !q.is_empty())
    }

    /// The leader's rebalancing round, as `ostore control` runs it: nothing while moves wait;
    /// else the shards per node in service, `Rebalancer::round`'s offers, and a batch of each
    /// offering node's contents queued to move (a step per offer).
    fn step_rebalance(&mut self, offers: &mut Option<Vec<(u16, usize)>>) -> bool {
        let Some(list) = offers else {
            if self.moves_queued() != Some(false) {
                return false;
            }
            let Ok(view) = self.call(ask::Cluster {}, true) else {
                return false;
            };
            let eligible: Vec<u16> = (0..NODES)
                .filter(|&n| self.nodes[n as usize].up && !view.draining(n as u32))
                .collect();
            let Ok(counts) = self.call(
                ask::DriveShardCounts {
                    drives: eligible.clone(),
                },
                true,
            ) else {
                return false;
            };
            let loads: Vec<NodeLoad> = eligible
                .iter()
                .zip(&counts)
                .map(|(&n, &c)| NodeLoad {
                    node: n as u32,
                    shards: c.max(0) as u64,
                    drives: 1,
                })
                .collect();
            let round: Vec<(u16, usize)> = self
                .rebalancer
                .round(view.epoch, &loads)
                .into_iter()
                .map(|(n, k)| (n as u16, k))
                .collect();
            if !round.is_empty() {
                self.log(format!("REBALANCE: offers {round:?}"));
            }
            let more = !round.is_empty();
            *offers = Some(round);
            return more;
        };
        let Some((drive, limit)) = list.pop() else {
            return false;
        };
        let mut from = [0u8; 32];
        from[..8].copy_from_slice(&self.rng.next_u64().to_le_bytes());
        if let Ok(page) = self.call(
            ask::ShardsOnDrive {
                drive,
                after: Some((from, 0)),
                limit,
            },
            true,
        ) {
            let contents: Vec<[u8; 32]> = page.iter().map(|(h, _)| *h).collect();
            if !contents.is_empty() {
                let nonce = self.rng.next_u64();
                let _ = self.call(ask::QueueMove { contents, nonce }, true);
            }
        }
        !list.is_empty()
    }

    /// The leader's drain job for the first node being drained, one metadata call per step,
    /// deciding with `placement::drain_step` as `ostore control` does.
    fn step_drain(&mut self, only: Option<u32>, round: &mut Option<DrainRound>) -> bool {
        let Some(r) = round else {
            let Ok(view) = self.call(ask::Cluster {}, true) else {
                return false;
            };
            let drains: Vec<_> = view
                .drains
                .iter()
                .filter(|(n, _)| only.is_none_or(|o| o == *n))
                .cloned()
                .collect();
            if drains.is_empty() {
                return false;
            }
            let (node, d) = drains[self.rng.below(drains.len())].clone();
            let Ok(counts) = self.call(
                ask::DriveShardCounts {
                    drives: vec![node as u16],
                },
                true,
            ) else {
                return false;
            };
            let left = counts.iter().map(|c| (*c).max(0) as u64).sum();
            *round = Some(DrainRound {
                node: node as u16,
                facts: DrainFacts {
                    shards_left: left,
                    exactly_empty: None,
                    settled: placement::drain_settled(d.started_ms, self.now_ms),
                    done: d.done_ms.is_some(),
                    moves_queued: false,
                },
            });
            return true;
        };
        let node = r.node;
        if r.facts.shards_left > 0 && !r.facts.moves_queued {
            // Whether moves wait in the queue (counted once per round).
            let Some(queued) = self.moves_queued() else {
                return false;
            };
            r.facts.moves_queued = queued;
        }
        let step = placement::drain_step(r.facts);
        self.log(format!(
            "DRAIN node {node}: {} shard(s) left: {step:?}",
            r.facts.shards_left
        ));
        match step {
            DrainStep::CountExactly => {
                let Ok(p) = self.call(
                    ask::DrainProgress {
                        node: node as u32,
                        exact: true,
                    },
                    true,
                ) else {
                    return false;
                };
                r.facts.exactly_empty = Some(p.empty());
                true
            }
            DrainStep::Wait => false,
            DrainStep::MarkDone(done) => {
                let ok = self
                    .call(
                        ask::SetDrainDone {
                            node: node as u32,
                            done,
                        },
                        true,
                    )
                    .is_ok();
                self.log(format!(
                    "DRAIN node {node}: {} {}",
                    if done { "done" } else { "not done any more" },
                    if ok { "" } else { "(failed)" }
                ));
                if ok && done {
                    self.drains_done += 1;
                }
                false
            }
            DrainStep::Queue { undo_done } => {
                if undo_done {
                    let _ = self.call(
                        ask::SetDrainDone {
                            node: node as u32,
                            done: false,
                        },
                        true,
                    );
                }
                let Ok(page) = self.call(
                    ask::ShardsOnDrive {
                        drive: node,
                        after: None,
                        limit: 1000,
                    },
                    true,
                ) else {
                    return false;
                };
                let contents: Vec<[u8; 32]> = page.iter().map(|(h, _)| *h).collect();
                let n = contents.len();
                let nonce = self.rng.next_u64();
                let ok = self.call(ask::QueueMove { contents, nonce }, true).is_ok();
                self.log(format!(
                    "DRAIN node {node}: {n} content(s) queued to move{}",
                    if ok { "" } else { " (failed)" }
                ));
                false
            }
        }
    }

    fn step_upload(&mut self, u: &mut Upload) -> bool {
        let h = self.hashes[u.content];
        match u.stage {
            UploadStage::Create => {
                let rec = UploadRec {
                    bucket: BUCKET.into(),
                    key: format!("k{}", u.key),
                    length: self.contents[u.content].len() as u64,
                    offset: 0,
                    created_ms: 0,
                    expires_ms: 0,
                    metadata: String::new(),
                    expected: None,
                    data: EC.data,
                    parity: EC.parity,
                    shards: u.locs.clone(),
                    compress: Some(false),
                    stored_blocks: 0,
                    files_created: false,
                    lock: None,
                };
                let r = self.call(
                    ask::UploadCreate {
                        id: u.id,
                        rec,
                        expiry_ms: UPLOAD_EXPIRY_MS,
                    },
                    true,
                );
                u.stage = UploadStage::Lock;
                r.is_ok()
            }
            UploadStage::Lock => {
                u.owner = self.rng.next_u64();
                let node = self.rng.below(NODES as usize);
                let r = self.call(
                    ask::UploadLock {
                        id: u.id,
                        offset: 0,
                        owner: u.owner,
                        node: node.to_string(),
                        boot: self.nodes[node].boot,
                    },
                    true,
                );
                u.stage = UploadStage::Write;
                r.is_ok()
            }
            UploadStage::Write => {
                // A PATCH creates the shard files the upload lists and writes its stripes.
                let live = upload::get(&self.kv, &u.id).ok().flatten().is_some();
                let locs = u.locs.clone();
                if !self.write_files_as(!live, &locs, h) {
                    self.log(format!("UPLOAD {}: a target is out", hex16(&u.id)));
                    let _ = self.call(
                        ask::UploadUnlock {
                            id: u.id,
                            owner: u.owner,
                        },
                        true,
                    );
                    return false;
                }
                u.stage = UploadStage::Sync;
                true
            }
            UploadStage::Sync => {
                let locs = u.locs.clone();
                if !self.sync_files(&locs) {
                    self.log(format!("UPLOAD {}: sync failed", hex16(&u.id)));
                    return false;
                }
                self.pending.insert(u.intent, (h, locs));
                u.stage = if self.rng.chance(0.3) {
                    UploadStage::Progress
                } else {
                    UploadStage::Commit
                };
                true
            }
            UploadStage::Progress => {
                // This PATCH ends short of the end: the next one resumes (it takes the lock
                // again, and rewrites nothing that is durable).
                let progress = Progress {
                    offset: 0,
                    stored_blocks: 0,
                    compress: Some(false),
                    files_created: true,
                    tail: Vec::new(),
                    hash: Vec::new(),
                    new_frames: Vec::new(),
                    new_tree: Vec::new(),
                    expiry_ms: UPLOAD_EXPIRY_MS,
                };
                let r = self.call(
                    ask::UploadProgress {
                        id: u.id,
                        owner: u.owner,
                        progress,
                        release: true,
                    },
                    true,
                );
                self.pending.remove(&u.intent);
                u.stage = UploadStage::Lock;
                r.is_ok() && self.rng.chance(0.7)
            }
            UploadStage::Commit => {
                let r = self.call(
                    ask::UploadCommit {
                        id: u.id,
                        owner: u.owner,
                        intent: u.intent,
                        content: self.sharded(u.content, &u.locs),
                    },
                    true,
                );
                match r {
                    Ok(o) => {
                        u.todo.extend(u.machine.on(o.event()));
                        u.stage = UploadStage::Finish;
                        true
                    }
                    // Refused: the upload stays (it expires); unknown: as tus does, the intent
                    // the commit may have made is left to the sweep.
                    Err(_) => {
                        self.log(format!("UPLOAD {}: commit failed", hex16(&u.id)));
                        false
                    }
                }
            }
            UploadStage::Finish => {
                let Some(action) = u.todo.pop_front() else {
                    return false;
                };
                match action {
                    Action::Discard => {
                        let locs = u.locs.clone();
                        self.discard(u.intent, &locs, true);
                    }
                    Action::EndIntent => {
                        let _ = self.call(ask::EndIntent { id: u.intent }, true);
                    }
                    Action::Answer(Some((version, _, dedup))) => {
                        self.acknowledge(u.key, version, u.content);
                        self.uploads += 1;
                        self.log(format!(
                            "UPLOAD {} k{} c{}: acknowledged v{version}{}",
                            hex16(&u.id),
                            u.key,
                            u.content,
                            if dedup { " (deduplicated)" } else { "" }
                        ));
                    }
                    _ => {}
                }
                !u.todo.is_empty()
            }
        }
    }

    fn step_expire(&mut self, list: &mut Option<Vec<[u8; 16]>>) -> bool {
        let Some(ids) = list else {
            let Ok(ids) = self.call(ask::UploadsExpired { limit: 16 }, true) else {
                return false;
            };
            let more = !ids.is_empty();
            *list = Some(ids);
            return more;
        };
        let Some(id) = ids.pop() else {
            return false;
        };
        let intent = self.id();
        if let Ok(Some(files)) = self.call(
            ask::UploadEnd {
                id,
                intent,
                expired: true,
            },
            true,
        ) {
            self.log(format!("UPLOAD {}: expired, ended", hex16(&id)));
            if !files.is_empty() {
                self.discard(intent, &files, true);
            }
        }
        !ids.is_empty()
    }

    fn step_sweep(&mut self, sw: &mut Sweep) -> bool {
        match sw {
            Sweep::Pick => {
                let Ok(intents) = self.call(ask::Intents {}, true) else {
                    return false;
                };
                // Mostly the hard case: an intent still being written, whose writer the sweep
                // takes as gone (as a node does when the writer's process restarted or its
                // node was evacuated) while it may still be alive (stopped, not dead).
                let writing: Vec<_> = intents
                    .iter()
                    .filter(|(_, r)| matches!(r.state, IntentState::WritingBy(_)))
                    .cloned()
                    .collect();
                let pool = if !writing.is_empty() && self.rng.below(4) != 0 {
                    writing
                } else {
                    intents
                };
                if pool.is_empty() {
                    return false;
                }
                let (id, rec) = pool[self.rng.below(pool.len())].clone();
                let gone = matches!(rec.state, IntentState::WritingBy(_));
                let seen = meta::sweep_seen(&rec, self.now_ms, gone);
                self.log(format!("SWEEP intent {id:x}: {seen:?}"));
                *sw = Sweep::Run(self.sweep(id, rec.shards, seen));
                true
            }
            Sweep::Run(r) => self.step_sweep_run(r, true),
        }
    }

    fn sweep(&self, id: u64, listed: Vec<ShardLoc>, seen: lifecycle::SweepSeen) -> SweepRun {
        let (machine, todo) = lifecycle::Sweep::start(seen);
        SweepRun {
            id,
            files: listed.clone(),
            listed,
            machine,
            todo,
        }
    }

    /// Carries out the sweep's next action; whether any is left.
    fn step_sweep_run(&mut self, r: &mut SweepRun, faults: bool) -> bool {
        let Some(action) = r.todo.pop() else {
            return false;
        };
        let id = r.id;
        let event = match action {
            SweepAction::Fence => {
                let ok = self.call(ask::AbandonIntent { id }, faults).is_ok();
                if ok && self.cfg.bugs.sweep_skips_read_back {
                    let listed = r.listed.clone();
                    self.discard(id, &listed, faults);
                    return false;
                }
                SweepEvent::Fenced { ok }
            }
            SweepAction::ReadIntent => match self.call(ask::Intent { id }, faults) {
                Ok(rec) => {
                    if !self.cfg.bugs.sweep_deletes_listed {
                        r.files = rec.as_ref().map(|r| r.shards.clone()).unwrap_or_default();
                    }
                    SweepEvent::Read(Some(meta::intent_fate(rec.map(|r| r.state))))
                }
                Err(_) => SweepEvent::Read(None),
            },
            SweepAction::RemoveListed => {
                let files = r.files.clone();
                self.discard(id, &files, faults);
                return !r.todo.is_empty();
            }
            SweepAction::EndIntent => {
                let _ = self.call(ask::EndIntent { id }, faults);
                return !r.todo.is_empty();
            }
            SweepAction::Leave => return !r.todo.is_empty(),
        };
        r.todo.extend(r.machine.on(event));
        !r.todo.is_empty()
    }

    fn step_put(&mut self, p: &mut Put) -> bool {
        if self.rng.chance(self.cfg.p_crash) {
            // The writer's process dies: whatever it did stays as it is, its intent included.
            self.log(format!("PUT k{} intent {:x}: writer dies", p.key, p.intent));
            self.pending.remove(&p.intent);
            return false;
        }
        let more = self.step_put_alive(p);
        if !more {
            self.pending.remove(&p.intent);
        }
        more
    }

    fn step_put_alive(&mut self, p: &mut Put) -> bool {
        match p.stage {
            PutStage::Intent => {
                let r = self.call(
                    ask::BeginIntent {
                        id: p.intent,
                        shards: p.locs.clone(),
                        owner: p.owner,
                    },
                    true,
                );
                match r {
                    Ok(()) => {
                        p.stage = PutStage::Write;
                        true
                    }
                    // Nothing written yet: the intent, if it was recorded, lists files that do
                    // not exist; the sweep ends it.
                    Err(_) => {
                        self.log(format!("PUT intent {:x}: no intent, fails", p.intent));
                        false
                    }
                }
            }
            PutStage::Write => {
                let h = self.hashes[p.content];
                // A slow writer may write after a sweep took it as gone and resolved its
                // intent: such files are listed nowhere, and only the orphan scan (files older
                // than the grace that nothing lists) removes them.
                let locs = p.locs.clone();
                if self.write_files(p.intent, &locs, h) {
                    p.stage = PutStage::Sync;
                } else {
                    self.log(format!("PUT intent {:x}: a target is out", p.intent));
                    p.stage = PutStage::Commit;
                    p.todo.extend(p.machine.on(Event::Written { ok: false }));
                }
                true
            }
            PutStage::Sync => {
                let locs = p.locs.clone();
                let ok = self.sync_files(&locs);
                if ok {
                    self.pending
                        .insert(p.intent, (self.hashes[p.content], locs));
                } else {
                    self.log(format!("PUT intent {:x}: sync failed", p.intent));
                }
                p.stage = PutStage::Commit;
                p.todo.extend(p.machine.on(Event::Written { ok }));
                true
            }
            PutStage::Commit => {
                let Some(action) = p.todo.pop_front() else {
                    return false;
                };
                let event = match action {
                    Action::CommitVersion => {
                        let r = self.call(
                            ask::CommitPut {
                                bucket: BUCKET.into(),
                                key: format!("k{}", p.key),
                                intent: Some(p.intent),
                                content: self.sharded(p.content, &p.locs),
                                cond: WriteCondition::Always,
                                attrs: Default::default(),
                            },
                            true,
                        );
                        match r {
                            Ok(o) => Some(o.event()),
                            Err(Failed::Unknown) => Some(Event::Unknown),
                            Err(Failed::Refused) => Some(Event::Refused),
                        }
                    }
                    Action::Fence => Some(Event::Fenced {
                        ok: self.call(ask::AbandonIntent { id: p.intent }, true).is_ok(),
                    }),
                    Action::ReadIntent => Some(Event::Read(
                        match self.call(ask::Intent { id: p.intent }, true) {
                            Err(_) => None,
                            Ok(rec) => Some(meta::intent_fate(rec.map(|r| r.state))),
                        },
                    )),
                    Action::Discard => {
                        self.discard(p.intent, &p.locs.clone(), true);
                        None
                    }
                    Action::EndIntent => {
                        let _ = self.call(ask::EndIntent { id: p.intent }, true);
                        None
                    }
                    Action::RemoveReplaced | Action::Leave => None,
                    Action::Answer(Some((version, _, dedup))) => {
                        self.acknowledge(p.key, version, p.content);
                        self.log(format!(
                            "PUT k{} c{} intent {:x}: acknowledged v{version}{}",
                            p.key,
                            p.content,
                            p.intent,
                            if dedup { " (deduplicated)" } else { "" }
                        ));
                        None
                    }
                    Action::Answer(None) => {
                        self.log(format!("PUT k{} intent {:x}: failed", p.key, p.intent));
                        None
                    }
                };
                if let Some(e) = event {
                    p.todo.extend(p.machine.on(e));
                }
                !p.todo.is_empty()
            }
        }
    }

    fn step_repair(&mut self, r: &mut Repair) -> bool {
        if matches!(r.stage, RepairStage::Run) && self.rng.chance(self.cfg.p_crash) {
            self.log(format!("REPAIR intent {:x}: process dies", r.intent));
            return false;
        }
        match r.stage {
            RepairStage::Pick => {
                let Ok(queue) = self.call(
                    ask::WorkQueue {
                        moves: r.moves,
                        from: [0; 32],
                        limit: 16,
                    },
                    true,
                ) else {
                    return false;
                };
                if queue.is_empty() {
                    return false;
                }
                let (h, nonce) = queue[self.rng.below(queue.len())];
                r.blake3 = Some(h);
                r.nonce = Some(nonce);
                r.stage = RepairStage::Load;
                true
            }
            RepairStage::Load => {
                let h = r.blake3.expect("picked");
                match self.call(ask::Content { blake3: h }, true) {
                    Ok(Some(rec)) if matches!(rec.stored, Stored::Sharded { .. }) => {
                        r.rec = Some(rec);
                        r.stage = RepairStage::Plan;
                        true
                    }
                    Ok(_) => {
                        self.repair_done(r);
                        false
                    }
                    Err(_) => false,
                }
            }
            RepairStage::Plan => self.plan_repair(r),
            RepairStage::Run => self.run_repair(r),
        }
    }

    /// Clears the queue entry the repair came from (unless it was renewed since it was read).
    fn repair_done(&mut self, r: &Repair) {
        let (Some(h), Some(nonce)) = (r.blake3, r.nonce) else {
            return;
        };
        if r.moves {
            let _ = self.call(ask::MoveDone { blake3: h, nonce }, true);
        } else {
            let _ = self.call(ask::RepairDone { blake3: h, nonce }, true);
        }
    }

    fn plan_repair(&mut self, r: &mut Repair) -> bool {
        let h = r.blake3.expect("picked");
        let rec = r.rec.clone().expect("loaded");
        let Stored::Sharded {
            data,
            parity,
            shards,
        } = &rec.stored
        else {
            return false;
        };
        let views = self.views();
        let bad: Vec<usize> = (0..shards.len())
            .filter(|&i| !self.readable_shard(&shards[i], &h))
            .collect();
        let good = shards.len() - bad.len();
        if good < *data as usize {
            self.log(format!(
                "REPAIR {}: {good} good shard(s), fewer than K; left for later",
                hex(&h)
            ));
            return false;
        }
        let current: Vec<u16> = shards.iter().map(|l| l.drive).collect();
        let leaving = self.draining();
        // The move worker also rebalances: shards per node, from the drive counters.
        let counts: Option<Vec<(u32, u64)>> = if r.moves {
            let drives: Vec<u16> = (0..NODES).collect();
            let Ok(c) = self.call(ask::DriveShardCounts { drives }, true) else {
                return false;
            };
            Some(
                c.iter()
                    .enumerate()
                    .map(|(n, c)| (n as u32, (*c).max(0) as u64))
                    .collect(),
            )
        } else {
            None
        };
        let moves: Vec<(usize, Option<u16>)> =
            placement::moves(&views, &current, &leaving, counts.as_deref(), SHARD_BYTES)
                .into_iter()
                .filter(|(i, _)| !bad.contains(i))
                .collect();
        let spread = self.rng.next_u64();
        let targets = match placement::targets(
            &views,
            &current,
            &bad,
            &moves,
            SHARD_BYTES,
            *parity,
            spread,
        ) {
            Ok(t) => t,
            Err(e) => {
                self.log(format!("REPAIR {}: no room: {e}", hex(&h)));
                return false;
            }
        };
        if targets.is_empty() {
            if rec.damaged {
                let _ = self.call(ask::ClearDamaged { blake3: h }, true);
            }
            self.repair_done(r);
            return false;
        }
        r.from = targets.iter().map(|&(i, _)| shards[i]).collect();
        r.new = targets
            .iter()
            .map(|&(i, drive)| ShardLoc {
                index: shards[i].index,
                drive,
                file_id: r.intent,
                file_tag: self.rng.next_u64() as u32,
            })
            .collect();
        self.log(format!(
            "REPAIR {} intent {:x}: {} bad, rebuilding or moving slots {:?}",
            hex(&h),
            r.intent,
            bad.len(),
            targets
        ));
        r.todo.push_back(r.machine.start());
        r.stage = RepairStage::Run;
        true
    }

    fn run_repair(&mut self, r: &mut Repair) -> bool {
        let h = r.blake3.expect("picked");
        if r.syncing {
            r.syncing = false;
            let new = r.new.clone();
            let ok = self.cfg.bugs.rebuild_skips_sync || self.sync_files(&new);
            if ok {
                // From here until it lands or fails, the content with the new files in their
                // slots is what faults must leave K good shards of.
                let mut after = match &r.rec.as_ref().expect("loaded").stored {
                    Stored::Sharded { shards, .. } => shards.clone(),
                    // The simulator makes no assembled contents.
                    Stored::Inline(_) | Stored::Parts { .. } => Vec::new(),
                };
                for n in &new {
                    if let Some(s) = after.iter_mut().find(|s| s.index == n.index) {
                        *s = *n;
                    }
                }
                self.pending.insert(r.intent, (h, after));
            }
            r.todo.extend(r.machine.on(RebuildEvent::Written { ok }));
            return true;
        }
        let Some(action) = r.todo.pop_front() else {
            return false;
        };
        let event = match action {
            RebuildAction::BeginIntent => Some(RebuildEvent::Begun {
                ok: self
                    .call(
                        ask::BeginIntent {
                            id: r.intent,
                            shards: r.new.clone(),
                            owner: r.owner,
                        },
                        true,
                    )
                    .is_ok(),
            }),
            RebuildAction::Write => {
                // Rebuilt from any K good shards read now (a shard being moved is one of them).
                let shards = match &r.rec.as_ref().expect("loaded").stored {
                    Stored::Sharded { shards, .. } => shards.clone(),
                    // The simulator makes no assembled contents.
                    Stored::Inline(_) | Stored::Parts { .. } => Vec::new(),
                };
                let sources = shards.iter().filter(|l| self.readable_shard(l, &h)).count();
                let new = r.new.clone();
                if sources >= EC.data as usize && self.write_files(r.intent, &new, h) {
                    r.syncing = true;
                    None
                } else {
                    Some(RebuildEvent::Written { ok: false })
                }
            }
            RebuildAction::Replace => Some(
                match self.call(
                    ask::ReplaceShards {
                        blake3: h,
                        shards: r.new.clone(),
                        replaced: r.from.clone(),
                        intent: r.intent,
                    },
                    true,
                ) {
                    Ok(garbage) => {
                        r.listed = garbage;
                        RebuildEvent::Replaced
                    }
                    Err(Failed::Refused) => RebuildEvent::Refused,
                    Err(Failed::Unknown) => RebuildEvent::Unknown,
                },
            ),
            RebuildAction::Fence => Some(RebuildEvent::Fenced {
                ok: self.call(ask::AbandonIntent { id: r.intent }, true).is_ok(),
            }),
            RebuildAction::ReadIntent => Some(RebuildEvent::Read(
                match self.call(ask::Intent { id: r.intent }, true) {
                    Err(_) => None,
                    Ok(rec) => {
                        r.listed = rec.as_ref().map(|x| x.shards.clone()).unwrap_or_default();
                        Some(meta::intent_fate(rec.map(|x| x.state)))
                    }
                },
            )),
            RebuildAction::RemoveListed => {
                let listed = r.listed.clone();
                self.discard(r.intent, &listed, true);
                None
            }
            RebuildAction::DiscardNew => {
                let new = r.new.clone();
                self.discard(r.intent, &new, true);
                None
            }
            RebuildAction::EndIntent => {
                let _ = self.call(ask::EndIntent { id: r.intent }, true);
                None
            }
            RebuildAction::Leave => None,
            RebuildAction::ClearDamaged => {
                if r.rec.as_ref().is_some_and(|c| c.damaged) {
                    let _ = self.call(ask::ClearDamaged { blake3: h }, true);
                }
                None
            }
            RebuildAction::Finish(landed) => {
                self.pending.remove(&r.intent);
                if landed {
                    self.rebuilds += 1;
                    self.log(format!("REPAIR {} intent {:x}: landed", hex(&h), r.intent));
                    self.repair_done(r);
                } else {
                    self.log(format!("REPAIR {} intent {:x}: failed", hex(&h), r.intent));
                }
                None
            }
        };
        if let Some(e) = event {
            r.todo.extend(r.machine.on(e));
        }
        r.syncing || !r.todo.is_empty()
    }

    /// Removes the files, then ends the intent (if every file is gone and the call went
    /// through; else it stays for the sweep).
    fn discard(&mut self, intent: u64, locs: &[ShardLoc], faults: bool) {
        let all = self.remove_files(locs);
        self.log(format!(
            "intent {intent:x}: {} file(s) removed{}",
            locs.len(),
            if all {
                ""
            } else {
                " (some on nodes out: intent kept)"
            }
        ));
        if all {
            let _ = self.call(ask::EndIntent { id: intent }, faults);
        }
    }

    fn get(&mut self, key: usize) {
        let r = self.call(
            ask::Resolve {
                bucket: BUCKET.into(),
                key: format!("k{key}"),
                version: None,
            },
            true,
        );
        let Ok(res) = r else {
            return;
        };
        let h = res.version.blake3;
        let (good, total) = self.readable(&res.content.stored, &h);
        let readable = good >= EC.data as usize;
        self.log(format!(
            "GET k{key}: v{} {}",
            res.version.version,
            if readable { "read" } else { "UNREADABLE" }
        ));
        if readable && good < total {
            // Read around a bad shard: ask for a repair.
            let nonce = self.rng.next_u64();
            let _ = self.call(
                ask::QueueRepair {
                    contents: vec![h],
                    nonce,
                },
                true,
            );
        }
    }

    /// Good shards of a stored content readable now, and its shard count.
    fn readable(&self, stored: &Stored, blake3: &[u8; 32]) -> (usize, usize) {
        match stored {
            Stored::Inline(b) => {
                let ok = usize::from(blake3::hash(b).as_bytes() == blake3);
                (ok * EC.data as usize, EC.data as usize)
            }
            Stored::Sharded { shards, .. } => (
                shards
                    .iter()
                    .filter(|l| self.readable_shard(l, blake3))
                    .count(),
                shards.len(),
            ),
            Stored::Parts { .. } => unreachable!("the simulator makes no assembled contents"),
        }
    }

    fn step_gc(&mut self, g: &mut Gc) -> bool {
        if let Some((intent, locs)) = g.removing.take() {
            self.discard(intent, &locs, true);
            return g.candidates.as_ref().is_some_and(|c| !c.is_empty());
        }
        match &mut g.candidates {
            None => {
                let r = self.call(
                    ask::GcCandidates {
                        after: None,
                        grace_ms: 0,
                    },
                    true,
                );
                match r {
                    Ok((page, _)) => {
                        self.log(format!("GC: {} candidate(s)", page.len()));
                        let more = !page.is_empty();
                        g.candidates = Some(page);
                        more
                    }
                    Err(_) => false,
                }
            }
            Some(list) => {
                let Some(h) = list.pop() else {
                    return false;
                };
                let intent = self.id();
                let r = self.call(
                    ask::GcCollect {
                        blake3: h,
                        intent,
                        grace_ms: 0,
                    },
                    true,
                );
                if let Ok(Some(rec)) = r {
                    self.gc_collected += 1;
                    self.log(format!("GC: collected {}", hex(&h)));
                    if let Stored::Sharded { shards, .. } = rec.stored {
                        g.removing = Some((intent, shards));
                        return true;
                    }
                }
                !list.is_empty()
            }
        }
    }

    /// The shard sets faults must leave K good shards of: every stored content's, and those
    /// about to be committed.
    fn protected(&self) -> Vec<([u8; 32], Vec<ShardLoc>)> {
        let mut out: Vec<([u8; 32], Vec<ShardLoc>)> = meta::contents(&self.kv, None, usize::MAX)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(h, c)| match c.stored {
                Stored::Sharded { shards, .. } => Some((h, shards)),
                Stored::Inline(_) | Stored::Parts { .. } => None,
            })
            .collect();
        out.extend(self.pending.values().cloned());
        out
    }

    /// Whether every protected set keeps K good shards readable if `hurt` files (and the
    /// drives of `out` nodes) are lost too.
    fn survivable(&self, out: Option<u16>, hurt: &dyn Fn(&FileKey) -> bool) -> bool {
        self.protected().iter().all(|(h, shards)| {
            let good = shards
                .iter()
                .filter(|l| {
                    self.readable_shard(l, h) && Some(l.drive) != out && !hurt(&file_key(l))
                })
                .count();
            good >= EC.data as usize
        })
    }

    /// Draws one fault on a node or a drive, if one can be drawn within what the system
    /// promises to survive.
    fn fault(&mut self) {
        let down: Vec<u16> = (0..NODES).filter(|&n| !self.nodes[n as usize].up).collect();
        let up: Vec<u16> = (0..NODES).filter(|&n| self.nodes[n as usize].up).collect();
        match self.rng.below(6) {
            // A node crashes: whatever it had not synced is lost or torn.
            0 | 1 if down.len() < MAX_DOWN => {
                let n = up[self.rng.below(up.len())];
                if !self.survivable(Some(n), &|_| false) {
                    return;
                }
                let crash = self.rng.chance(0.6);
                self.nodes[n as usize].up = false;
                self.faults += 1;
                let mut lost = 0;
                if crash {
                    let keys: Vec<FileKey> = self
                        .files
                        .iter()
                        .filter(|(k, f)| k.0 == n && !f.synced)
                        .map(|(k, _)| *k)
                        .collect();
                    for k in keys {
                        lost += 1;
                        if self.rng.chance(0.5) {
                            self.files.remove(&k);
                        } else if let Some(f) = self.files.get_mut(&k) {
                            f.corrupt = true;
                        }
                    }
                }
                self.log(format!(
                    "FAULT node {n}: {}",
                    if crash {
                        format!("crashes ({lost} unsynced file(s) lost or torn)")
                    } else {
                        "cut off by a partition".into()
                    }
                ));
                self.queue_drive(n);
            }
            // A node returns, with whatever its drive held (files replaced meanwhile
            // included).
            0..=2 if !down.is_empty() => {
                let n = down[self.rng.below(down.len())];
                self.nodes[n as usize].up = true;
                self.nodes[n as usize].boot += 1;
                self.faults += 1;
                self.log(format!("FAULT node {n}: returns"));
            }
            // A drive dies and is replaced by an empty one.
            3 => {
                let n = up[self.rng.below(up.len())];
                if !self.survivable(Some(n), &|_| false) {
                    return;
                }
                self.files.retain(|k, _| k.0 != n);
                self.faults += 1;
                self.log(format!("FAULT drive {n}: lost, replaced empty"));
                self.queue_drive(n);
            }
            // The power fails everywhere at once: every node restarts, and only what was
            // synced survives (no shard is lost that the system promised to keep).
            4 if self.rng.chance(0.2) => {
                let mut lost = 0;
                let keys: Vec<FileKey> = self
                    .files
                    .iter()
                    .filter(|(_, f)| !f.synced)
                    .map(|(k, _)| *k)
                    .collect();
                for k in keys {
                    lost += 1;
                    if self.rng.chance(0.5) {
                        self.files.remove(&k);
                    } else if let Some(f) = self.files.get_mut(&k) {
                        f.corrupt = true;
                    }
                }
                for n in &mut self.nodes {
                    n.boot += 1;
                }
                self.faults += 1;
                self.log(format!(
                    "FAULT power lost everywhere: every node restarts ({lost} unsynced file(s) lost or torn)"
                ));
            }
            // A block rots.
            4 | 5 => {
                if self.files.is_empty() {
                    return;
                }
                let k = *self
                    .files
                    .keys()
                    .nth(self.rng.below(self.files.len()))
                    .expect("in range");
                if !self.survivable(None, &|x| *x == k) {
                    return;
                }
                if let Some(f) = self.files.get_mut(&k) {
                    f.corrupt = true;
                }
                self.faults += 1;
                self.log(format!(
                    "FAULT drive {} file {:x} shard {}: a block rots",
                    k.0, k.1, k.3
                ));
            }
            _ => {}
        }
    }

    /// The leader queues for repair the contents with a shard on drive `n` (its node is out,
    /// or the drive is being refilled).
    fn queue_drive(&mut self, n: u16) {
        let on_it: Vec<[u8; 32]> = self
            .protected()
            .into_iter()
            .filter(|(_, s)| s.iter().any(|l| l.drive == n))
            .map(|(h, _)| h)
            .collect();
        if !on_it.is_empty() {
            let nonce = self.rng.next_u64();
            let _ = self.call(
                ask::QueueRepair {
                    contents: on_it,
                    nonce,
                },
                true,
            );
        }
    }

    /// Deletes every file of the first content the metadata store lists with shards.
    fn sabotage(&mut self) {
        let contents = meta::contents(&self.kv, None, usize::MAX).unwrap_or_default();
        let Some((h, _)) = contents
            .iter()
            .find(|(_, c)| matches!(c.stored, Stored::Sharded { .. }))
        else {
            return;
        };
        let h = *h;
        self.files.retain(|_, v| v.blake3 != h);
        self.log(format!("SABOTAGE: every file of {} deleted", hex(&h)));
    }

    /// The promises, checked on the metadata store as it is now (read directly, no faults).
    fn check(&self) -> Result<(), String> {
        let all = meta::contents(&self.kv, None, usize::MAX).map_err(|e| e.to_string())?;
        // A node whose drain is recorded done holds no shard of any content (the operator may
        // take it away).
        let view = ostore_control::cluster::view(&self.kv).map_err(|e| e.to_string())?;
        for (node, d) in &view.drains {
            if d.done_ms.is_none() {
                continue;
            }
            for (h, c) in &all {
                if let Stored::Sharded { shards, .. } = &c.stored {
                    if let Some(l) = shards.iter().find(|l| l.drive as u32 == *node) {
                        return Err(format!(
                            "node {node} is drained, but content {} keeps shard {} there",
                            hex(h),
                            l.index
                        ));
                    }
                }
            }
        }
        for (h, c) in &all {
            if let Stored::Sharded { shards, .. } = &c.stored {
                let good = shards.iter().filter(|l| self.good(l, h)).count();
                if good < EC.data as usize {
                    let gone: Vec<&ShardLoc> = shards.iter().filter(|l| !self.good(l, h)).collect();
                    return Err(format!(
                        "content {} (refs {}) has {good} good shard(s) of {}: lost; e.g. drive {} file {:x} is gone or bad",
                        hex(h),
                        c.refs,
                        shards.len(),
                        gone[0].drive,
                        gone[0].file_id
                    ));
                }
            }
        }
        for (&(key, version), &content) in &self.acknowledged {
            let r = meta::resolve(&self.kv, BUCKET, &format!("k{key}"), Some(version));
            match r {
                Ok(res) => {
                    if res.version.blake3 != self.hashes[content] {
                        return Err(format!("k{key} v{version} names other bytes"));
                    }
                    let (good, _) = self.readable(&res.content.stored, &res.version.blake3);
                    if good < EC.data as usize {
                        return Err(format!(
                            "acknowledged k{key} v{version} is unreadable ({good} good shard(s) on nodes up)"
                        ));
                    }
                }
                // A delete marker over it still leaves the version readable by number; a
                // version gone is a loss.
                Err(e) => {
                    let now: Vec<String> = meta::versions(&self.kv, BUCKET, &format!("k{key}"))
                        .ok()
                        .flatten()
                        .unwrap_or_default()
                        .iter()
                        .map(|v| {
                            format!(
                                "v{}{}",
                                v.version,
                                if v.delete_marker { "(marker)" } else { "" }
                            )
                        })
                        .collect();
                    return Err(format!(
                        "acknowledged k{key} v{version}: {e} (the key has {})",
                        now.join(" ")
                    ));
                }
            }
        }
        Ok(())
    }

    /// Once the faults stop: nodes return, leftover intents are resolved as their owner's
    /// next life would (fenced, then followed), every content unreferenced is collected,
    /// repairs run until nothing is left to do; then every content has K+M good shards on
    /// distinct nodes, every counter equals a recount, and no file is left that no content
    /// lists.
    fn settle(&mut self) -> Result<(), String> {
        for n in 0..NODES as usize {
            if !self.nodes[n].up {
                self.nodes[n].up = true;
                self.nodes[n].boot += 1;
                self.log(format!("node {n}: returns for the end"));
            }
        }
        // Uploads left behind are ended (as their expiry would, in time).
        let ids = upload::expired(&self.kv, u64::MAX, usize::MAX).map_err(|e| e.to_string())?;
        for id in ids {
            let intent = self.id();
            if let Ok(Some(files)) = self.call(
                ask::UploadEnd {
                    id,
                    intent,
                    expired: false,
                },
                false,
            ) {
                if !files.is_empty() {
                    self.discard(intent, &files, false);
                }
            }
        }
        let intents = meta::intents(&self.kv).map_err(|e| e.to_string())?;
        for (id, rec) in intents {
            // Every writer is gone now: the sweep resolves every intent.
            let seen = meta::sweep_seen(&rec, self.now_ms, true);
            let mut r = self.sweep(id, rec.shards, seen);
            while self.step_sweep_run(&mut r, false) {}
        }
        let mut g = Gc {
            candidates: None,
            removing: None,
        };
        while self.step_gc(&mut g) {}
        // Repairs until every content is whole and spread (a few rounds: a move may wait for
        // a rebuild).
        for _round in 0..4 {
            let all = meta::contents(&self.kv, None, usize::MAX).map_err(|e| e.to_string())?;
            for (h, _) in all {
                let mut r = Task::Repair(Box::new(self.repair(Some(h), None)));
                while self.step(&mut r) {}
            }
        }
        // A drain in progress finishes: its settle time passes, the leader's rounds queue what
        // is left and mark it done, the move worker empties the queue.
        // However far the clock went back since a drain started.
        let latest = ostore_control::cluster::view(&self.kv)
            .map(|v| {
                v.drains
                    .iter()
                    .map(|(_, d)| d.started_ms)
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        self.now_ms = self.now_ms.max(latest) + placement::DRAIN_SETTLE_MS;
        let drains: Vec<u32> = self.draining();
        for _round in 0..4 {
            for &node in &drains {
                let mut d = Task::DrainRound {
                    only: Some(node),
                    round: None,
                };
                while self.step(&mut d) {}
            }
            loop {
                let mut m = self.repair(None, None);
                m.moves = true;
                let mut t = Task::Repair(Box::new(m));
                let mut steps = 0;
                while self.step(&mut t) {
                    steps += 1;
                }
                if steps == 0 {
                    break;
                }
            }
        }
        for &node in &drains {
            let mut d = Task::DrainRound {
                only: Some(node),
                round: None,
            };
            while self.step(&mut d) {}
        }
        self.check()?;
        let view = ostore_control::cluster::view(&self.kv).map_err(|e| e.to_string())?;
        for (node, drain) in &view.drains {
            let on_it =
                meta::drive_shard_counts(&self.kv, &[*node as u16]).map_err(|e| e.to_string())?;
            if drain.done_ms.is_none() || on_it.iter().any(|c| *c != 0) {
                return Err(format!(
                    "the drain of node {node} did not finish: done {:?}, {on_it:?} shard(s) left",
                    drain.done_ms
                ));
            }
        }
        let drained: Vec<u16> = view.drains.iter().map(|(n, _)| *n as u16).collect();
        for (h, c) in meta::contents(&self.kv, None, usize::MAX).map_err(|e| e.to_string())? {
            if let Stored::Sharded { shards, .. } = &c.stored {
                let good = shards.iter().filter(|l| self.good(l, &h)).count();
                let nodes: BTreeSet<u16> = shards.iter().map(|l| l.drive).collect();
                if let Some(l) = shards.iter().find(|l| drained.contains(&l.drive)) {
                    return Err(format!(
                        "content {} keeps shard {} on drained node {}",
                        hex(&h),
                        l.index,
                        l.drive
                    ));
                }
                if good != EC.total() || nodes.len() != shards.len() {
                    return Err(format!(
                        "content {} did not converge: {good} good shard(s) of {}, on {} node(s)",
                        hex(&h),
                        shards.len(),
                        nodes.len()
                    ));
                }
            }
            if c.damaged {
                return Err(format!("content {} is still marked damaged", hex(&h)));
            }
        }
        // Every counter equals a recount from the records.
        let off = meta::audit(&self.kv).map_err(|e| e.to_string())?;
        if !off.is_empty() {
            return Err(format!(
                "counters disagree with a recount: {}",
                off.join("; ")
            ));
        }
        let listed: BTreeSet<FileKey> = meta::contents(&self.kv, None, usize::MAX)
            .map_err(|e| e.to_string())?
            .iter()
            .flat_map(|(_, c)| match &c.stored {
                Stored::Sharded { shards, .. } => shards.iter().map(file_key).collect(),
                Stored::Inline(_) | Stored::Parts { .. } => Vec::new(),
            })
            .collect();
        let intents = meta::intents(&self.kv).map_err(|e| e.to_string())?;
        if !intents.is_empty() {
            return Err(format!("{} intent(s) left unresolved", intents.len()));
        }
        let leaked: Vec<FileKey> = self
            .files
            .keys()
            .filter(|k| !listed.contains(k))
            .copied()
            .collect();
        let unexplained: Vec<&FileKey> = leaked
            .iter()
            .filter(|k| !self.orphans.contains(k))
            .collect();
        if let Some(k) = unexplained.first() {
            return Err(format!(
                "{} shard file(s) left that no content lists, e.g. drive {} file {:x}",
                unexplained.len(),
                k.0,
                k.1
            ));
        }
        // The orphan scan's part: files written after their intent was resolved.
        for k in &leaked {
            self.files.remove(k);
        }
        if !leaked.is_empty() {
            self.log(format!("orphan scan: {} file(s) removed", leaked.len()));
        }
        Ok(())
    }
}

fn hex16(h: &[u8; 16]) -> String {
    h[..6].iter().map(|b| format!("{b:02x}")).collect()
}

fn hex(h: &[u8; 32]) -> String {
    h[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs one seed.
pub fn run(cfg: Config) -> Report {
    let mut w = World::new(cfg.clone());
    let mut tasks: Vec<Task> = Vec::new();
    let mut violation = None;
    while w.step < cfg.steps {
        w.step += 1;
        while tasks.len() < cfg.concurrency {
            let t = w.new_task();
            tasks.push(t);
        }
        let i = w.rng.below(tasks.len());
        if !w.step(&mut tasks[i]) {
            tasks.swap_remove(i);
        }
        w.deliver_delayed();
        if w.rng.chance(cfg.p_fault) {
            w.fault();
        }
        w.now_ms += w.rng.below(20) as u64;
        if w.rng.chance(0.002) {
            let jump = 1_000 + w.rng.below(60_000) as u64;
            w.now_ms += jump;
            w.log(format!("the clock jumps {jump} ms"));
        }
        if w.rng.chance(0.001) {
            // A clock stepped back (an NTP correction): ages and deadlines read short.
            let jump = (1_000 + w.rng.below(30_000) as u64).min(w.now_ms - START_MS);
            w.now_ms -= jump;
            w.log(format!("the clock jumps back {jump} ms"));
        }
        if cfg.sabotage_at == Some(w.step) {
            w.sabotage();
        }
        w.forget_trimmable();
        if let Err(e) = w.check() {
            violation = Some(e);
            break;
        }
    }
    let steps = w.step;
    if violation.is_none() {
        // Tasks still running finish without faults, delayed calls land, then the store
        // settles.
        w.cfg.p_lost = 0.0;
        w.cfg.p_dup = 0.0;
        w.cfg.p_crash = 0.0;
        w.step = usize::MAX;
        w.deliver_delayed();
        while let Some(mut t) = tasks.pop() {
            while w.step(&mut t) {}
            w.forget_trimmable();
            if let Err(e) = w.check() {
                violation = Some(e);
                break;
            }
        }
        if violation.is_none() {
            violation = w.settle().err();
        }
    }
    if let Some(v) = &violation {
        w.log(format!("VIOLATION: {v}"));
    }
    Report {
        seed: cfg.seed,
        steps,
        violation,
        puts_acknowledged: w.acknowledged.len(),
        lost_calls: w.lost_calls,
        gc_collected: w.gc_collected,
        rebuilds: w.rebuilds,
        faults: w.faults,
        uploads: w.uploads,
        drains_done: w.drains_done,
        history: w.history,
    }
}
