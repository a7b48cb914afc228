//! The etcd backend against a real etcd (Debian's `etcd-server`) on loopback: the same answers
//! as the embedded store for random transactions (read-your-writes, cleared ranges, limits,
//! reverse ranges), and serializable under concurrency (no lost update, no write skew).

use ostore_control::kv::{counter, run, Kv, KvError, TxnError};
use ostore_control::redb_kv::RedbKv;
use ostore_etcd::local::LocalEtcd;
use ostore_etcd::EtcdKv;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

#[derive(Debug)]
struct E(KvError);
impl From<KvError> for E {
    fn from(e: KvError) -> Self {
        E(e)
    }
}
impl TxnError for E {
    fn kv(&self) -> Option<&KvError> {
        Some(&self.0)
    }
}

fn etcd(members: usize) -> (tempfile::TempDir, LocalEtcd, EtcdKv) {
    ostore_etcd::local::require_etcd("etcd");
    let d = tempfile::tempdir().unwrap();
    let etcd = LocalEtcd::start(d.path(), members, &mut ostore_etcd::local::free_port)
        .unwrap_or_else(|e| panic!("starting etcd: {e}"));
    let prefix = format!("t{:08x}/", rand::random::<u32>()).into_bytes();
    let kv = EtcdKv::connect(etcd.endpoints(), prefix).unwrap();
    (d, etcd, kv)
}

fn key(rng: &mut StdRng) -> Vec<u8> {
    // A small key space, so that operations hit each other's keys and ranges.
    vec![b'k', rng.gen_range(0..24u8)]
}

/// Random transactions, each a mix of writes, deletes, range deletes and reads, run on etcd
/// and on redb: every read inside them answers the same, and so does the state after each.
#[test]
fn etcd_transactions_answer_as_redb_does() {
    let (_d, _etcd, e) = etcd(1);
    let dir = tempfile::tempdir().unwrap();
    let r = RedbKv::open(&dir.path().join("m.redb")).unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    for round in 0..150 {
        let seed: u64 = rng.gen();
        let mut logs: Vec<Vec<String>> = Vec::new();
        for kv in [&e as &dyn Kv, &r as &dyn Kv] {
            let mut log = Vec::new();
            run(kv, true, |tx| {
                log.clear();
                let mut rng = StdRng::seed_from_u64(seed);
                for _ in 0..rng.gen_range(1..12) {
                    match rng.gen_range(0..7) {
                        0 | 1 => {
                            let k = key(&mut rng);
                            let v = vec![rng.gen::<u8>(); rng.gen_range(0..4)];
                            tx.set(&k, &v)?;
                        }
                        2 => tx.clear(&key(&mut rng))?,
                        3 => {
                            let (a, b) = (key(&mut rng), key(&mut rng));
                            let (a, b) = (a.clone().min(b.clone()), a.max(b));
                            tx.clear_range(&a, &b)?;
                        }
                        4 => {
                            let k = key(&mut rng);
                            log.push(format!("get {k:?} = {:?}", tx.get(&k)?));
                        }
                        5 => {
                            let k = key(&mut rng);
                            tx.add(&k, rng.gen_range(-3..4))?;
                        }
                        _ => {
                            let (a, b) = (key(&mut rng), key(&mut rng));
                            let (a, b) = (a.clone().min(b.clone()), a.max(b));
                            let limit = rng.gen_range(1..6);
                            let rev = rng.gen_bool(0.3);
                            log.push(format!(
                                "range {a:?}..{b:?} {limit} {rev} = {:?}",
                                tx.get_range(&a, &b, limit, rev)?
                            ));
                        }
                    }
                }
                Ok::<_, E>(())
            })
            .unwrap();
            let all = run(kv, false, |tx| {
                Ok::<_, E>(tx.get_range(b"k", b"l", 1000, false)?)
            })
            .unwrap();
            log.push(format!("state {all:?}"));
            logs.push(log);
        }
        assert_eq!(logs[0], logs[1], "round {round}: etcd and redb disagree");
    }
}

/// Many threads add to one counter at once: every add is a guarded read-modify-write, so none
/// is lost however they interleave.
#[test]
fn etcd_concurrent_adds_lose_nothing() {
    let (_d, _etcd, kv) = etcd(3);
    let kv = Arc::new(kv);
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let kv = kv.clone();
            std::thread::spawn(move || {
                for _ in 0..40 {
                    run(&*kv, true, |tx| {
                        tx.add(b"counter", 1)?;
                        Ok::<_, E>(())
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let v = run(&*kv, false, |tx| Ok::<_, E>(tx.get(b"counter")?)).unwrap();
    assert_eq!(v.map(|v| counter(&v)), Some(240));
}

/// Write skew: each transaction reads a range, and claims it (writes a key inside) only if the
/// range is empty. Under snapshot isolation two could both see it empty; here the range guard
/// lets exactly one win each round.
#[test]
fn etcd_range_reads_are_guarded() {
    let (_d, _etcd, kv) = etcd(1);
    let kv = Arc::new(kv);
    for round in 0..20u8 {
        let begin = [b'r', round, 0];
        let end = [b'r', round, 0xff];
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let kv = kv.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    run(&*kv, true, |tx| {
                        if tx.get_range(&begin, &end, 10, false)?.is_empty() {
                            tx.set(&[b'r', round, t + 1], b"mine")?;
                            Ok::<_, E>(true)
                        } else {
                            Ok(false)
                        }
                    })
                    .unwrap()
                })
            })
            .collect();
        let won: usize = threads
            .into_iter()
            .map(|t| t.join().unwrap() as usize)
            .sum();
        let held = run(&*kv, false, |tx| {
            Ok::<_, E>(tx.get_range(&begin, &end, 10, false)?)
        })
        .unwrap();
        assert_eq!((won, held.len()), (1, 1), "round {round}");
    }
}

/// A deletion inside a range another transaction read is a conflict too (etcd's range compare
/// alone would not see a key that is gone).
#[test]
fn etcd_a_deleted_key_in_a_read_range_conflicts() {
    let (_d, _etcd, kv) = etcd(1);
    run(&kv, true, |tx| {
        tx.set(b"d1", b"x")?;
        tx.set(b"d2", b"y")?;
        Ok::<_, E>(())
    })
    .unwrap();
    let mut first = true;
    let mut attempts = 0;
    let seen = run(&kv, true, |tx| {
        attempts += 1;
        let n = tx.get_range(b"d", b"e", 10, false)?.len();
        if first {
            first = false;
            // Another transaction deletes a key this one has read, before this one commits.
            run(&kv, true, |t2| {
                t2.clear(b"d2")?;
                Ok::<_, E>(())
            })
            .unwrap();
        }
        tx.set(b"count", &[n as u8])?;
        Ok::<_, E>(n)
    })
    .unwrap();
    assert_eq!((seen, attempts), (1, 2));
}

/// With TLS on (client port and between members, certificates checked both ways), the
/// backend works through a client certificate; without one, or over plain gRPC, it gets
/// nothing.
#[test]
fn etcd_over_mutual_tls() {
    ostore_etcd::local::require_etcd("etcd_over_mutual_tls");
    let d = tempfile::tempdir().unwrap();
    let etcd = LocalEtcd::start_tls(d.path(), 3, &mut ostore_etcd::local::free_port)
        .unwrap_or_else(|e| panic!("starting etcd with TLS: {e}"));
    let tls = etcd.client_tls().unwrap().clone();
    let kv = EtcdKv::open(&etcd.spec(), Some(&tls)).unwrap();
    run(&kv, true, |tx| {
        tx.set(b"k", b"over tls")?;
        Ok::<_, E>(())
    })
    .unwrap();
    let got = run(&kv, false, |tx| Ok::<_, E>(tx.get(b"k")?)).unwrap();
    assert_eq!(got.as_deref(), Some(&b"over tls"[..]));
    // Plain gRPC to a TLS port: no answer.
    let plain = EtcdKv::open(&etcd.spec(), None).unwrap();
    assert!(run(&plain, false, |tx| Ok::<_, E>(tx.get(b"k")?)).is_err());
    // TLS that trusts the members but presents a certificate of another CA: refused.
    let other = tempfile::tempdir().unwrap();
    let stranger =
        LocalEtcd::start_tls(other.path(), 1, &mut ostore_etcd::local::free_port).unwrap();
    let forged = ostore_etcd::EtcdTls {
        ca: tls.ca.clone(),
        ..stranger.client_tls().unwrap().clone()
    };
    let refused = EtcdKv::open(&etcd.spec(), Some(&forged)).unwrap();
    assert!(run(&refused, false, |tx| Ok::<_, E>(tx.get(b"k")?)).is_err());
}
