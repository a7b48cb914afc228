//! A deterministic simulator of ostore's write, read and garbage-collection protocols: the real
//! metadata code (`ostore_control::rpc::execute_idempotent` over redb, in memory) and the real
//! decisions (`ostore_engine::placement`, `ostore_engine::lifecycle::Commit`), run by many
//! concurrent tasks over simulated drives, a simulated network to the control plane and a
//! simulated clock, all drawn from one seed. A seed replays bit for bit.
//!
//! What it covers today: PUTs (new content and deduplicated content, overwrites), GETs, deletes
//! and garbage collection, interleaved one metadata call at a time; faults on every call to the
//! control plane (the request lost, or executed with its answer lost: a commit whose result is
//! unknown); the clock moving on. What it checks, after every step: the shard files of every
//! content the metadata store knows are all on the drives (nothing referenced was deleted, by a
//! write's cleanup or by GC); every version a PUT acknowledged reads back with its bytes; and at
//! the end, once the faults stop and leftover intents are swept and garbage collected, that no
//! shard file is left that no content lists and that every counter equals a recount
//! (`meta::audit`). See ARCHITECTURE.md for what it does not cover yet.

use ostore_control::meta::{self, NewContent, WriteCondition};
use ostore_control::records::{Encoding, IntentState, Owner, ShardLoc, Stored};
use ostore_control::redb_kv::RedbKv;
use ostore_control::rpc::{self, ask, Ask, Token};
use ostore_engine::lifecycle::{self, Action, Event};
use ostore_engine::placement::{self, DriveView, WriteRule};
use ostore_engine::EcParams;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// What one run does.
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    /// Scheduler steps (each one metadata call or one drive operation of one task).
    pub steps: usize,
    /// Chance that a call to the control plane is lost on the way, and again that its answer
    /// is lost after it ran.
    pub p_lost: f64,
    /// Keys written, and distinct contents (fewer contents than writes: deduplication).
    pub keys: usize,
    pub contents: usize,
    /// Tasks running at once.
    pub concurrency: usize,
    /// Chance that a PUT's writer dies before each of its steps.
    pub p_crash: f64,
    /// For testing the checks themselves: at this step, the files of one stored content
    /// vanish (a loss beyond what the system promises to survive).
    pub sabotage_at: Option<usize>,
}

impl Config {
    pub fn new(seed: u64) -> Config {
        Config {
            seed,
            steps: 600,
            p_lost: 0.05,
            keys: 4,
            contents: 8,
            concurrency: 6,
            p_crash: 0.01,
            sabotage_at: None,
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
const NODES: u32 = 6;

/// A call to the control plane that got no answer (it may or may not have run), or an answer
/// refusing it.
#[derive(Debug)]
enum Failed {
    Unknown,
    Refused,
}

/// A shard file on a simulated drive: which file, and what it holds.
type FileKey = (u16, u64, u32, u8);

fn file_key(l: &ShardLoc) -> FileKey {
    (l.drive, l.file_id, l.file_tag, l.index)
}

/// One task's progress.
enum Task {
    Put(Put),
    /// The intent sweep of a node that takes a writer as gone: it fences the intent, reads it
    /// back and follows `lifecycle::settle`, while the writer (only slow, or dead) may still be
    /// at work.
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
}

struct Put {
    key: usize,
    content: usize,
    intent: u64,
    locs: Vec<ShardLoc>,
    stage: PutStage,
    machine: lifecycle::Commit,
    todo: VecDeque<Action>,
}

enum PutStage {
    Intent,
    Write,
    Commit,
}

enum Sweep {
    /// Looking for an intent still being written.
    Pick,
    Fence(u64, Vec<ShardLoc>),
    Read(u64, Vec<ShardLoc>),
}

struct Gc {
    candidates: Option<Vec<[u8; 32]>>,
    /// Files of a collected content, and the garbage intent listing them.
    removing: Option<(u64, Vec<ShardLoc>)>,
}

pub struct World {
    cfg: Config,
    rng: Rng,
    kv: RedbKv,
    now_ms: u64,
    files: BTreeMap<FileKey, [u8; 32]>,
    contents: Vec<Vec<u8>>,
    hashes: Vec<[u8; 32]>,
    /// Versions a PUT acknowledged: (key, version) → content index.
    acknowledged: BTreeMap<(usize, u64), usize>,
    /// Keys whose versions may since have been trimmed... none are: retention is not set, and
    /// deletes add markers. Kept for the read check.
    history: Vec<String>,
    lost_calls: usize,
    gc_collected: usize,
    next_id: u64,
    /// Files written after their intent was swept (see `step_put`).
    orphans: BTreeSet<FileKey>,
}

impl World {
    pub fn new(cfg: Config) -> World {
        let mut rng = Rng::new(cfg.seed);
        let kv = RedbKv::in_memory().expect("an in-memory store");
        meta::init(&kv, 0).expect("init");
        meta::create_bucket(&kv, BUCKET, 0).expect("a bucket");
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
            now_ms: 1_000_000,
            files: BTreeMap::new(),
            contents,
            hashes,
            acknowledged: BTreeMap::new(),
            history: Vec::new(),
            lost_calls: 0,
            gc_collected: 0,
            next_id: 1,
            orphans: BTreeSet::new(),
        }
    }

    fn log(&mut self, s: String) {
        self.history.push(format!("{:>8} ms  {s}", self.now_ms));
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id ^ (self.rng.next_u64() << 16)
    }

    /// One call to the control plane over the simulated network.
    fn call<A: Ask>(&mut self, req: A, faults: bool) -> Result<A::Answer, Failed> {
        let request: rpc::Request = req.into();
        let name = format!("{request:?}");
        let name: String = name.chars().take_while(|c| c.is_alphanumeric()).collect();
        if faults && self.rng.chance(self.cfg.p_lost) {
            self.lost_calls += 1;
            self.log(format!("{name}: lost on the way"));
            return Err(Failed::Unknown);
        }
        let token = Token::new(
            self.rng.next_u64().to_le_bytes().repeat(2)[..16]
                .try_into()
                .expect("16"),
            self.now_ms,
        );
        let r = rpc::execute_idempotent(&self.kv, request, token, self.now_ms)
            .and_then(|b| rpc::decode_value::<A::Answer>(&b));
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

    fn views(&self) -> Vec<DriveView> {
        (0..NODES)
            .map(|n| DriveView {
                id: n as u16,
                node: n,
                zone: 0,
                free_bytes: 1 << 40,
                healthy: true,
            })
            .collect()
    }

    fn new_task(&mut self) -> Task {
        match self.rng.below(10) {
            0..=3 => {
                let (key, content) = (
                    self.rng.below(self.cfg.keys),
                    self.rng.below(self.cfg.contents),
                );
                let intent = self.id();
                let drives = placement::place_object(
                    &self.views(),
                    WriteRule::new(EC, 0),
                    4096,
                    self.rng.next_u64(),
                )
                .expect("placement");
                let file_id = self.id();
                let locs = drives
                    .iter()
                    .enumerate()
                    .map(|(i, d)| ShardLoc {
                        index: i as u8,
                        drive: *d,
                        file_id,
                        file_tag: self.rng.next_u64() as u32,
                    })
                    .collect();
                self.log(format!("PUT k{key} c{content} intent {intent:x}: starts"));
                Task::Put(Put {
                    key,
                    content,
                    intent,
                    locs,
                    stage: PutStage::Intent,
                    machine: lifecycle::Commit::new(),
                    todo: VecDeque::new(),
                })
            }
            4..=6 => Task::Get {
                key: self.rng.below(self.cfg.keys),
            },
            7 if self.rng.below(4) == 0 => Task::Delete {
                key: self.rng.below(self.cfg.keys),
            },
            7 | 8 if !self.acknowledged.is_empty() => {
                let i = self.rng.below(self.acknowledged.len());
                let (&(key, version), _) = self.acknowledged.iter().nth(i).expect("in range");
                self.acknowledged.remove(&(key, version));
                Task::DeleteVersion { key, version }
            }
            9 if self.rng.below(3) == 0 => Task::Sweep(Sweep::Pick),
            _ => Task::Gc(Gc {
                candidates: None,
                removing: None,
            }),
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
        }
    }

    fn step_sweep(&mut self, sw: &mut Sweep) -> bool {
        match std::mem::replace(sw, Sweep::Pick) {
            Sweep::Pick => {
                let Ok(intents) = self.call(ask::Intents {}, true) else {
                    return false;
                };
                let writing: Vec<(u64, Vec<ShardLoc>)> = intents
                    .into_iter()
                    .filter(|(_, r)| matches!(r.state, IntentState::WritingBy(_)))
                    .map(|(id, r)| (id, r.shards))
                    .collect();
                if writing.is_empty() {
                    return false;
                }
                let (id, shards) = writing[self.rng.below(writing.len())].clone();
                self.log(format!("SWEEP intent {id:x}: writer taken as gone"));
                *sw = Sweep::Fence(id, shards);
                true
            }
            Sweep::Fence(id, shards) => {
                if self.call(ask::AbandonIntent { id }, true).is_err() {
                    return false;
                }
                *sw = Sweep::Read(id, shards);
                true
            }
            Sweep::Read(id, shards) => {
                let Ok(rec) = self.call(ask::Intent { id }, true) else {
                    return false;
                };
                match lifecycle::settle(meta::intent_fate(rec.map(|r| r.state))) {
                    Some(true) => self.discard(id, &shards, true),
                    Some(false) => {
                        let _ = self.call(ask::EndIntent { id }, true);
                    }
                    None => {}
                }
                false
            }
        }
    }

    fn step_put(&mut self, p: &mut Put) -> bool {
        if self.rng.chance(self.cfg.p_crash) {
            // The writer's process dies: whatever it did stays as it is, its intent included.
            self.log(format!("PUT k{} intent {:x}: writer dies", p.key, p.intent));
            return false;
        }
        match p.stage {
            PutStage::Intent => {
                let r = self.call(
                    ask::BeginIntent {
                        id: p.intent,
                        shards: p.locs.clone(),
                        owner: Owner { node: 1, boot: 1 },
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
                let swept = meta::intent(&self.kv, p.intent).ok().flatten().is_none();
                for l in &p.locs {
                    self.files.insert(file_key(l), h);
                    if swept {
                        self.orphans.insert(file_key(l));
                    }
                }
                p.stage = PutStage::Commit;
                p.todo.extend(p.machine.on(Event::Written { ok: true }));
                true
            }
            PutStage::Commit => {
                let Some(action) = p.todo.pop_front() else {
                    return false;
                };
                let event = match action {
                    Action::CommitVersion => {
                        let h = self.hashes[p.content];
                        let r = self.call(
                            ask::CommitPut {
                                bucket: BUCKET.into(),
                                key: format!("k{}", p.key),
                                intent: Some(p.intent),
                                content: NewContent {
                                    blake3: h,
                                    size_bytes: self.contents[p.content].len() as u64,
                                    stored: Stored::Sharded {
                                        data: EC.data,
                                        parity: EC.parity,
                                        shards: p.locs.clone(),
                                    },
                                    encoding: Encoding::Identity,
                                },
                                cond: WriteCondition::Always,
                            },
                            true,
                        );
                        match r {
                            Ok(o) => Some(Event::Committed {
                                version: o.version,
                                created_ms: o.created_ms,
                                deduplicated: o.deduplicated,
                                replaced_damaged: o.replaced_damaged,
                            }),
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
                        self.acknowledged.insert((p.key, version), p.content);
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

    /// Removes the files, then ends the intent (if every call went through; else it stays for
    /// the sweep).
    fn discard(&mut self, intent: u64, locs: &[ShardLoc], faults: bool) {
        for l in locs {
            self.files.remove(&file_key(l));
        }
        self.log(format!("intent {intent:x}: {} file(s) removed", locs.len()));
        let _ = self.call(ask::EndIntent { id: intent }, faults);
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
        let readable = self.readable(&res.content.stored, &res.version.blake3);
        self.log(format!(
            "GET k{key}: v{} {}",
            res.version.version,
            if readable { "read" } else { "UNREADABLE" }
        ));
    }

    /// Whether K good shards of a stored content are on the drives.
    fn readable(&self, stored: &Stored, blake3: &[u8; 32]) -> bool {
        match stored {
            Stored::Inline(b) => blake3::hash(b).as_bytes() == blake3,
            Stored::Sharded { data, shards, .. } => {
                shards
                    .iter()
                    .filter(|l| self.files.get(&file_key(l)) == Some(blake3))
                    .count()
                    >= *data as usize
            }
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
        self.files.retain(|_, v| *v != h);
        self.log(format!("SABOTAGE: every file of {} deleted", hex(&h)));
    }

    /// The promises, checked on the metadata store as it is now (read directly, no faults).
    fn check(&self) -> Result<(), String> {
        let all = meta::contents(&self.kv, None, usize::MAX).map_err(|e| e.to_string())?;
        for (h, c) in &all {
            if let Stored::Sharded { shards, .. } = &c.stored {
                let missing: Vec<&ShardLoc> = shards
                    .iter()
                    .filter(|l| self.files.get(&file_key(l)) != Some(h))
                    .collect();
                if !missing.is_empty() {
                    return Err(format!(
                        "content {} (refs {}) lists {} shard file(s) that are gone, e.g. drive {} file {:x}",
                        hex(h),
                        c.refs,
                        missing.len(),
                        missing[0].drive,
                        missing[0].file_id
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
                    if !self.readable(&res.content.stored, &res.version.blake3) {
                        return Err(format!("acknowledged k{key} v{version} is unreadable"));
                    }
                }
                // A delete marker over it still leaves the version readable by number; a
                // version gone is a loss.
                Err(e) => return Err(format!("acknowledged k{key} v{version}: {e}")),
            }
        }
        Ok(())
    }

    /// Once the faults stop: leftover intents resolved as their owner's next life would
    /// (fenced, then followed), every content unreferenced collected, and then no file may be
    /// left that no content lists.
    fn settle(&mut self) -> Result<(), String> {
        let intents = meta::intents(&self.kv).map_err(|e| e.to_string())?;
        for (id, rec) in intents {
            let fate = match rec.state {
                IntentState::Writing | IntentState::WritingBy(_) => {
                    let _ = self.call(ask::AbandonIntent { id }, false);
                    meta::intent_fate(
                        self.call(ask::Intent { id }, false)
                            .map_err(|e| format!("{e:?}"))?
                            .map(|r| r.state),
                    )
                }
                other => meta::intent_fate(Some(other)),
            };
            match lifecycle::settle(fate) {
                Some(true) => self.discard(id, &rec.shards, false),
                Some(false) => {
                    let _ = self.call(ask::EndIntent { id }, false);
                }
                None => {}
            }
        }
        let mut g = Gc {
            candidates: None,
            removing: None,
        };
        let p = self.cfg.p_lost;
        self.cfg.p_lost = 0.0;
        while self.step_gc(&mut g) {}
        self.cfg.p_lost = p;
        self.check()?;
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
                Stored::Inline(_) => Vec::new(),
            })
            .collect();
        let leaked: Vec<FileKey> = self
            .files
            .keys()
            .filter(|k| !listed.contains(k))
            .copied()
            .collect();
        let unexplained = leaked.iter().filter(|k| !self.orphans.contains(k)).count();
        if unexplained > 0 {
            return Err(format!(
                "{unexplained} shard file(s) left that no content lists"
            ));
        }
        // The orphan scan's part: files written after their intent was swept.
        for k in &leaked {
            self.files.remove(k);
        }
        if !leaked.is_empty() {
            self.log(format!("orphan scan: {} file(s) removed", leaked.len()));
        }
        Ok(())
    }
}

fn hex(h: &[u8; 32]) -> String {
    h[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs one seed.
pub fn run(cfg: Config) -> Report {
    let mut w = World::new(cfg.clone());
    let mut tasks: Vec<Task> = Vec::new();
    let mut violation = None;
    let mut steps = 0;
    while steps < cfg.steps {
        steps += 1;
        while tasks.len() < cfg.concurrency {
            let t = w.new_task();
            tasks.push(t);
        }
        let i = w.rng.below(tasks.len());
        if !w.step(&mut tasks[i]) {
            tasks.swap_remove(i);
        }
        w.now_ms += w.rng.below(20) as u64;
        if cfg.sabotage_at == Some(steps) {
            w.sabotage();
        }
        if let Err(e) = w.check() {
            violation = Some(e);
            break;
        }
    }
    if violation.is_none() {
        // Tasks still running finish without faults, then the store settles.
        w.cfg.p_lost = 0.0;
        w.cfg.p_crash = 0.0;
        while let Some(mut t) = tasks.pop() {
            while w.step(&mut t) {}
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
        history: w.history,
    }
}
