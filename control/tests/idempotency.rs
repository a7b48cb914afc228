//! FoundationDB's failure semantics, injected: a store adapter that makes commits conflict, and
//! reports `commit_unknown_result` both for commits that happened and for commits that did not.
//! Thousands of randomized metadata requests run through it must leave exactly the state a
//! fault-free store would: no duplicate versions, no reference drift, no lost objects.

use ostore_control::kv::{BodyError, Kv, KvError, Tx};
use ostore_control::meta::{NewContent, PutOutcome, WriteCondition};
use ostore_control::records::{ContentRec, Encoding, ShardLoc, Stored, Tree, VersionRec};
use ostore_control::redb_kv::RedbKv;
use ostore_control::rpc::{self, Request, Token};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cell::RefCell;
use std::collections::BTreeMap;

#[derive(Default, Debug)]
struct Injected {
    conflicts: u64,
    unknown_committed: u64,
    unknown_not_committed: u64,
}

/// Wraps a store and injects failures into write transactions.
struct FaultyKv {
    inner: Box<dyn Kv>,
    rng: RefCell<StdRng>,
    /// Probability of each fault per write attempt.
    p: f64,
    stats: RefCell<Injected>,
}

impl Kv for FaultyKv {
    fn attempt(
        &self,
        write: bool,
        body: &mut dyn FnMut(&mut dyn Tx) -> Result<(), BodyError>,
    ) -> Result<(), KvError> {
        if !write {
            return self.inner.attempt(write, body);
        }
        let roll: f64 = self.rng.borrow_mut().gen();
        if roll < self.p {
            // Another transaction got there first: nothing was applied.
            self.stats.borrow_mut().conflicts += 1;
            return Err(KvError::Conflict);
        }
        if roll < 2.0 * self.p {
            // The commit was lost on the way: the body ran, nothing was applied, and the
            // client cannot tell.
            self.stats.borrow_mut().unknown_not_committed += 1;
            let r = self.inner.attempt(write, &mut |tx| {
                body(tx)?;
                Err(BodyError::Kv(KvError::CommitUnknownResult))
            });
            return match r {
                Err(KvError::CommitUnknownResult) => Err(KvError::CommitUnknownResult),
                other => other,
            };
        }
        let r = self.inner.attempt(write, body);
        if r.is_ok() && roll < 3.0 * self.p {
            // The commit happened, but its answer was lost.
            self.stats.borrow_mut().unknown_committed += 1;
            return Err(KvError::CommitUnknownResult);
        }
        r
    }

    fn as_dyn(&self) -> &dyn Kv {
        self
    }
}

/// One version: its number and its content (`None`: a delete marker).
type Version = (u64, Option<[u8; 32]>);

/// What a fault-free store holds: per key, its versions, oldest first.
#[derive(Default)]
struct Model {
    keys: BTreeMap<String, Vec<Version>>,
    last_version: BTreeMap<String, u64>,
}

impl Model {
    fn refs(&self) -> BTreeMap<[u8; 32], u64> {
        let mut r = BTreeMap::new();
        for vs in self.keys.values() {
            for (_, c) in vs {
                if let Some(h) = c {
                    *r.entry(*h).or_default() += 1;
                }
            }
        }
        r
    }
}

fn content(i: u8, sharded: bool) -> NewContent {
    let body = vec![i; 100 + i as usize];
    let blake3 = *blake3::hash(&body).as_bytes();
    NewContent {
        encoding: Encoding::Identity,
        tree: if sharded { Tree::Outboard } else { Tree::None },
        blake3,
        size_bytes: body.len() as u64,
        stored: if sharded {
            Stored::Sharded {
                data: 4,
                parity: 2,
                shards: (0..6)
                    .map(|s| ShardLoc {
                        index: s,
                        drive: s as u16,
                        file_id: i as u64,
                        file_tag: 1,
                    })
                    .collect(),
            }
        } else {
            Stored::Inline(body)
        },
    }
}

fn call<T: serde::de::DeserializeOwned>(
    kv: &dyn Kv,
    req: Request,
    now: u64,
    rng: &mut StdRng,
    idempotent: bool,
) -> Result<T, ostore_control::meta::MetaError> {
    let token = Token::new(rng.gen(), now);
    let bytes = if idempotent {
        rpc::execute_idempotent(kv, req, token, now)?
    } else {
        rpc::execute(kv, req, now)?
    };
    rpc::decode_value(&bytes)
}

/// Runs `ops` random requests; returns the number of mismatches against the model.
fn workload(kv: &FaultyKv, seed: u64, ops: usize, idempotent: bool) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    let now = ostore_control::service::now_ms();
    call::<()>(kv, Request::Init, now, &mut rng, idempotent).unwrap();
    let mut model = Model::default();
    let mut mismatches = 0;
    let keys: Vec<String> = (0..12).map(|i| format!("k{i}")).collect();
    for op in 0..ops {
        let key = keys[rng.gen_range(0..keys.len())].clone();
        let bucket = "default".to_string();
        match rng.gen_range(0..10) {
            0..=3 => {
                // A PUT, inline or sharded (with its intent), of one of 8 contents (dedup).
                let sharded = rng.gen_bool(0.5);
                let c = content(rng.gen_range(0..8), sharded);
                let intent = if sharded {
                    let id = rng.gen::<u64>() | 1;
                    let locs = match &c.stored {
                        Stored::Sharded { shards, .. } => shards.clone(),
                        _ => unreachable!(),
                    };
                    call::<()>(
                        kv,
                        Request::BeginIntent {
                            id,
                            shards: locs,
                            owner: ostore_control::records::Owner { node: 0, boot: 1 },
                        },
                        now,
                        &mut rng,
                        idempotent,
                    )
                    .unwrap();
                    Some(id)
                } else {
                    None
                };
                let out: PutOutcome = call(
                    kv,
                    Request::CommitPut {
                        bucket,
                        key: key.clone(),
                        intent,
                        content: c.clone(),
                        cond: WriteCondition::Always,
                        attrs: Default::default(),
                    },
                    now,
                    &mut rng,
                    idempotent,
                )
                .unwrap();
                let v = model.last_version.entry(key.clone()).or_default();
                *v += 1;
                if out.version != *v {
                    mismatches += 1;
                    *v = out.version;
                }
                model
                    .keys
                    .entry(key)
                    .or_default()
                    .push((out.version, Some(c.blake3)));
                if let Some(id) = intent {
                    call::<()>(kv, Request::EndIntent { id }, now, &mut rng, idempotent).unwrap();
                }
            }
            4 => {
                // A PUT of content already stored (dedup without upload).
                let c = content(rng.gen_range(0..8), false);
                let out: Option<PutOutcome> = call(
                    kv,
                    Request::PutExisting {
                        bucket,
                        key: key.clone(),
                        blake3: c.blake3,
                        cond: WriteCondition::Always,
                        attrs: Default::default(),
                    },
                    now,
                    &mut rng,
                    idempotent,
                )
                .unwrap();
                let stored = model.refs().contains_key(&c.blake3);
                match out {
                    Some(out) => {
                        let v = model.last_version.entry(key.clone()).or_default();
                        *v += 1;
                        if out.version != *v {
                            mismatches += 1;
                            *v = out.version;
                        }
                        model
                            .keys
                            .entry(key)
                            .or_default()
                            .push((out.version, Some(c.blake3)));
                    }
                    None => {
                        // Content with no references may still be stored (awaiting GC);
                        // a miss is only wrong if some version refers to it.
                        if stored {
                            mismatches += 1;
                        }
                    }
                }
            }
            5..=6 => {
                let out: Result<Option<u64>, _> = call(
                    kv,
                    Request::DeleteKey {
                        bucket,
                        key: key.clone(),
                    },
                    now,
                    &mut rng,
                    idempotent,
                );
                let live = model
                    .keys
                    .get(&key)
                    .and_then(|v| v.last())
                    .is_some_and(|(_, c)| c.is_some());
                match out {
                    Ok(Some(v)) => {
                        let last = model.last_version.entry(key.clone()).or_default();
                        *last += 1;
                        if v != *last || !live {
                            mismatches += 1;
                            *last = v;
                        }
                        model.keys.entry(key).or_default().push((v, None));
                    }
                    Ok(None) | Err(_) => {
                        if live {
                            mismatches += 1;
                        }
                    }
                }
            }
            _ => {
                // Remove one version for good.
                let Some(vs) = model.keys.get(&key).filter(|v| !v.is_empty()) else {
                    continue;
                };
                let pick = rng.gen_range(0..vs.len());
                let version = vs[pick].0;
                let r: Result<(), _> = call(
                    kv,
                    Request::DeleteVersion {
                        bucket,
                        key: key.clone(),
                        version,
                    },
                    now,
                    &mut rng,
                    idempotent,
                );
                if r.is_err() {
                    mismatches += 1;
                }
                model.keys.get_mut(&key).unwrap().remove(pick);
            }
        }
        if op % 500 == 499 {
            mismatches += compare(kv, &model, now, &mut rng);
        }
    }
    mismatches + compare(kv, &model, now, &mut rng)
}

/// Compares every key's versions and every content's reference count with the model.
fn compare(kv: &FaultyKv, model: &Model, now: u64, rng: &mut StdRng) -> usize {
    let mut bad = 0;
    for (key, want) in &model.keys {
        let got: Option<Vec<VersionRec>> = call(
            kv,
            Request::Versions {
                bucket: "default".into(),
                key: key.clone(),
            },
            now,
            rng,
            true,
        )
        .unwrap();
        let got: Vec<Version> = got
            .unwrap_or_default()
            .iter()
            .rev()
            .map(|v| (v.version, (!v.delete_marker).then_some(v.blake3)))
            .collect();
        if &got != want {
            bad += 1;
        }
    }
    // The counters agree with the versions (and shard counters with the drive index).
    let stats: ostore_control::meta::Stats = call(kv, Request::Stats, now, rng, true).unwrap();
    let live = model
        .keys
        .values()
        .filter(|vs| vs.last().is_some_and(|v| v.1.is_some()))
        .count() as i64;
    let versions = model.keys.values().map(|vs| vs.len()).sum::<usize>() as i64;
    if (stats.objects, stats.versions) != (live, versions) {
        eprintln!(
            "counters: objects {} versions {}, model {live} {versions}",
            stats.objects, stats.versions
        );
        bad += 1;
    }
    let drives: Vec<u16> = (0..8).collect();
    let counts: Vec<i64> = call(
        kv,
        Request::DriveShardCounts {
            drives: drives.clone(),
        },
        now,
        rng,
        true,
    )
    .unwrap();
    for (d, n) in drives.iter().zip(counts) {
        let listed: Vec<([u8; 32], u8)> = call(
            kv,
            Request::ShardsOnDrive {
                drive: *d,
                after: None,
                limit: usize::MAX,
            },
            now,
            rng,
            true,
        )
        .unwrap();
        if listed.len() as i64 != n {
            eprintln!("drive {d}: counter {n}, index {}", listed.len());
            bad += 1;
        }
    }
    // The unreferenced index lists exactly the contents without a reference.
    let all: Vec<([u8; 32], ContentRec)> = call(
        kv,
        Request::Contents {
            after: None,
            limit: usize::MAX,
        },
        now,
        rng,
        true,
    )
    .unwrap();
    let mut zero: Vec<[u8; 32]> = all
        .iter()
        .filter(|(_, c)| c.refs == 0)
        .map(|(h, _)| *h)
        .collect();
    let mut listed: Vec<[u8; 32]> = Vec::new();
    let mut after = None;
    loop {
        let (page, next): ostore_control::meta::GcPage = call(
            kv,
            Request::GcCandidates { after, grace_ms: 0 },
            now + 1,
            rng,
            true,
        )
        .unwrap();
        listed.extend(page);
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    zero.sort();
    listed.sort();
    if zero != listed {
        eprintln!(
            "unreferenced index: {} listed, {} contents without a reference",
            listed.len(),
            zero.len()
        );
        bad += 1;
    }
    for (h, refs) in model.refs() {
        let c: Option<ContentRec> =
            call(kv, Request::Content { blake3: h }, now, rng, true).unwrap();
        match c {
            Some(c) if c.refs == refs => {}
            _ => bad += 1,
        }
    }
    bad
}

fn faulty_over(inner: Box<dyn Kv>, p: f64, seed: u64) -> FaultyKv {
    FaultyKv {
        inner,
        rng: RefCell::new(StdRng::seed_from_u64(seed)),
        p,
        stats: RefCell::new(Injected::default()),
    }
}

fn faulty(p: f64, seed: u64) -> (tempfile::TempDir, FaultyKv) {
    let d = tempfile::tempdir().unwrap();
    let inner = RedbKv::open(&d.path().join("m.redb")).unwrap();
    (d, faulty_over(Box::new(inner), p, seed))
}

#[test]
fn every_request_is_idempotent_under_conflicts_and_unknown_results() {
    for seed in 0..3 {
        let (_d, kv) = faulty(0.1, seed);
        let bad = workload(&kv, seed, 2000, true);
        let s = kv.stats.borrow();
        eprintln!("seed {seed}: injected {s:?}, mismatches {bad}");
        assert!(s.conflicts > 100 && s.unknown_committed > 100 && s.unknown_not_committed > 100);
        assert_eq!(bad, 0, "seed {seed}: the metadata drifted from the model");
    }
}

#[test]
fn without_request_tokens_the_same_faults_cause_drift() {
    // The control experiment: the injector is strong enough to break requests that do not
    // protect themselves (a PUT retried after an unknown result adds a second version).
    let (_d, kv) = faulty(0.1, 7);
    let bad = workload(&kv, 7, 2000, false);
    assert!(bad > 0, "the fault injector did not cause any drift");
}

/// The same workload against a live FoundationDB, under a fresh key prefix. Ignored (and
/// counted so) unless asked for: `FDB_CLUSTER_FILE=... cargo test -p ostore-control --features
/// fdb --test idempotency -- --ignored`; asked for without a cluster file, it fails.
#[cfg(feature = "fdb")]
#[test]
#[ignore = "needs a live FoundationDB: set FDB_CLUSTER_FILE and pass --ignored"]
fn live_foundationdb_runs_the_same_transactions() {
    let cluster_file = std::env::var("FDB_CLUSTER_FILE")
        .expect("FDB_CLUSTER_FILE must name a live FoundationDB cluster for this test");
    let prefix = format!("ostore-test-{:016x}/", rand::random::<u64>()).into_bytes();
    let kv = ostore_control::fdb_kv::FdbKv::open_under(&cluster_file, prefix).unwrap();
    let faulty = faulty_over(Box::new(kv), 0.05, 11);
    assert_eq!(workload(&faulty, 11, 500, true), 0);
}

/// The same workload over etcd: a three-member cluster on loopback (Debian's `etcd-server`)
/// started here, the injected faults on top of whatever etcd adds itself. Every commit is a real
/// etcd `Txn` guarded by what its transaction read; an injected unknown result after a real
/// commit must be caught by the request's marker, and one before it by the retry.
#[test]
fn etcd_runs_the_same_transactions() {
    ostore_etcd::local::require_etcd("etcd_runs_the_same_transactions");
    let d = tempfile::tempdir().unwrap();
    let etcd =
        ostore_etcd::local::LocalEtcd::start(d.path(), 3, &mut ostore_etcd::local::free_port)
            .unwrap_or_else(|e| panic!("starting etcd: {e}"));
    let prefix = format!("ostore-test-{:016x}/", rand::random::<u64>()).into_bytes();
    let kv = ostore_etcd::EtcdKv::connect(etcd.endpoints(), prefix).unwrap();
    let faulty = faulty_over(Box::new(kv), 0.05, 11);
    let started = std::time::Instant::now();
    let bad = workload(&faulty, 11, 2000, true);
    let s = faulty.stats.borrow();
    eprintln!(
        "etcd: injected {s:?}, mismatches {bad}, {:?}",
        started.elapsed()
    );
    assert!(s.conflicts > 10 && s.unknown_committed > 10 && s.unknown_not_committed > 10);
    assert_eq!(bad, 0, "the metadata over etcd drifted from the model");
}
