//! The embedded backend: one redb table of byte keys to byte values.
//!
//! redb has a single writer, so write transactions never conflict; every commit is durable
//! (`Durability::Immediate`, an fsync) before it returns, unless the caller asks for a lazy
//! commit for bookkeeping that a restart can redo.

use crate::kv::{body_result, BodyError, Kv, KvError, Pairs, Tx};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("ostore");

type Entry<'a> = Result<
    (
        redb::AccessGuard<'a, &'static [u8]>,
        redb::AccessGuard<'a, &'static [u8]>,
    ),
    redb::StorageError,
>;

/// redb's page cache; bounded so the server's memory does not grow with the metadata.
pub const REDB_CACHE_BYTES: usize = 64 << 20;

pub struct RedbKv {
    db: Database,
}

fn storage<E: std::fmt::Display>(e: E) -> KvError {
    KvError::Storage(e.to_string())
}

impl RedbKv {
    /// Opens or creates the database file at `path`.
    pub fn open(path: &Path) -> Result<Self, KvError> {
        let db = redb::Builder::new()
            .set_cache_size(REDB_CACHE_BYTES)
            .create(path)
            .map_err(storage)?;
        Self::with(db)
    }

    /// A database in memory, for the simulator: the same transactions, no file, no fsync.
    pub fn in_memory() -> Result<Self, KvError> {
        let db = redb::Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(storage)?;
        Self::with(db)
    }

    fn with(db: Database) -> Result<Self, KvError> {
        let w = db.begin_write().map_err(storage)?;
        w.open_table(TABLE).map_err(storage)?;
        w.commit().map_err(storage)?;
        Ok(RedbKv { db })
    }
}

struct WriteTx<'a> {
    table: redb::Table<'a, &'static [u8], &'static [u8]>,
}

fn range_of<T: ReadableTable<&'static [u8], &'static [u8]>>(
    t: &T,
    begin: &[u8],
    end: &[u8],
    limit: usize,
    reverse: bool,
) -> Result<Pairs, KvError> {
    let mut out = Vec::new();
    if begin >= end || limit == 0 {
        return Ok(out);
    }
    let it = t.range::<&[u8]>(begin..end).map_err(storage)?;
    let mut push = |r: Entry| {
        let (k, v) = r.map_err(storage)?;
        out.push((k.value().to_vec(), v.value().to_vec()));
        Ok::<_, KvError>(out.len() >= limit)
    };
    if reverse {
        for r in it.rev() {
            if push(r)? {
                break;
            }
        }
    } else {
        for r in it {
            if push(r)? {
                break;
            }
        }
    }
    Ok(out)
}

fn get_of<T: ReadableTable<&'static [u8], &'static [u8]>>(
    t: &T,
    key: &[u8],
) -> Result<Option<Vec<u8>>, KvError> {
    Ok(t.get(key).map_err(storage)?.map(|v| v.value().to_vec()))
}

impl Tx for WriteTx<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        get_of(&self.table, key)
    }
    fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Pairs, KvError> {
        range_of(&self.table, begin, end, limit, reverse)
    }
    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        self.table.insert(key, value).map_err(storage)?;
        Ok(())
    }
    fn clear(&mut self, key: &[u8]) -> Result<(), KvError> {
        self.table.remove(key).map_err(storage)?;
        Ok(())
    }
    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), KvError> {
        if begin < end {
            self.table
                .retain_in::<&[u8], _>(begin..end, |_, _| false)
                .map_err(storage)?;
        }
        Ok(())
    }
}

struct ReadTx {
    table: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
}

impl Tx for ReadTx {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        get_of(&self.table, key)
    }
    fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Pairs, KvError> {
        range_of(&self.table, begin, end, limit, reverse)
    }
    fn set(&mut self, _: &[u8], _: &[u8]) -> Result<(), KvError> {
        Err(KvError::ReadOnly)
    }
    fn clear(&mut self, _: &[u8]) -> Result<(), KvError> {
        Err(KvError::ReadOnly)
    }
    fn clear_range(&mut self, _: &[u8], _: &[u8]) -> Result<(), KvError> {
        Err(KvError::ReadOnly)
    }
}

/// All write transactions of one group commit, inside one redb write transaction. Each body
/// writes into an overlay (reads see the overlay first), applied to the shared transaction only
/// if the body succeeds; a failed body leaves no trace.
struct BatchKv {
    txn: redb::WriteTransaction,
    /// Set when applying a body's writes failed halfway.
    poisoned: std::cell::Cell<bool>,
}

/// Buffered writes of one body: `None` is a deletion.
struct OverlayTx<'a, 'b> {
    base: &'a mut WriteTx<'b>,
    writes: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Tx for OverlayTx<'_, '_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(key),
        }
    }
    fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Pairs, KvError> {
        if begin >= end || limit == 0 {
            return Ok(Vec::new());
        }
        let over: Vec<(&Vec<u8>, &Option<Vec<u8>>)> = self
            .writes
            .range::<[u8], _>((
                std::ops::Bound::Included(begin),
                std::ops::Bound::Excluded(end),
            ))
            .collect();
        // Each overlay key hides at most one stored pair, so this many stored pairs suffice.
        let stored = self
            .base
            .get_range(begin, end, limit.saturating_add(over.len()), reverse)?;
        let mut merged: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = stored
            .into_iter()
            .filter(|(k, _)| !self.writes.contains_key(k))
            .collect();
        for (k, v) in over {
            if let Some(v) = v {
                merged.insert(k.clone(), v.clone());
            }
        }
        let out: Pairs = if reverse {
            merged.into_iter().rev().take(limit).collect()
        } else {
            merged.into_iter().take(limit).collect()
        };
        Ok(out)
    }
    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        self.writes.insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }
    fn clear(&mut self, key: &[u8]) -> Result<(), KvError> {
        self.writes.insert(key.to_vec(), None);
        Ok(())
    }
    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), KvError> {
        for (k, _) in self.get_range(begin, end, usize::MAX, false)? {
            self.writes.insert(k, None);
        }
        Ok(())
    }
}

impl Kv for BatchKv {
    fn attempt(
        &self,
        _write: bool,
        body: &mut dyn FnMut(&mut dyn Tx) -> Result<(), BodyError>,
    ) -> Result<(), KvError> {
        let table = self.txn.open_table(TABLE).map_err(storage)?;
        let mut base = WriteTx { table };
        let mut over = OverlayTx {
            base: &mut base,
            writes: Default::default(),
        };
        body_result(body(&mut over))?;
        let writes = std::mem::take(&mut over.writes);
        for (k, v) in writes {
            let r = match v {
                Some(v) => base.set(&k, &v),
                None => base.clear(&k),
            };
            if let Err(e) = r {
                // Part of this body is in the shared transaction: the whole group must not commit.
                self.poisoned.set(true);
                return Err(e);
            }
        }
        Ok(())
    }

    fn as_dyn(&self) -> &dyn Kv {
        self
    }
}

impl Kv for RedbKv {
    fn commit_outcome_known(&self) -> bool {
        true
    }

    fn write_batch(&self, f: &mut dyn FnMut(&dyn Kv)) -> Result<(), KvError> {
        let w = self.db.begin_write().map_err(storage)?;
        let batch = BatchKv {
            txn: w,
            poisoned: std::cell::Cell::new(false),
        };
        f(&batch);
        if batch.poisoned.get() {
            batch.txn.abort().map_err(storage)?;
            return Err(KvError::Storage(
                "a write of the group failed halfway; nothing was committed".into(),
            ));
        }
        batch.txn.commit().map_err(storage)
    }

    fn as_dyn(&self) -> &dyn Kv {
        self
    }

    fn attempt(
        &self,
        write: bool,
        body: &mut dyn FnMut(&mut dyn Tx) -> Result<(), BodyError>,
    ) -> Result<(), KvError> {
        if write {
            let w = self.db.begin_write().map_err(storage)?;
            let r = {
                let table = w.open_table(TABLE).map_err(storage)?;
                let mut tx = WriteTx { table };
                body(&mut tx)
            };
            match body_result(r) {
                Ok(()) => w.commit().map_err(storage),
                Err(e) => {
                    w.abort().map_err(storage)?;
                    Err(e)
                }
            }
        } else {
            let r = self.db.begin_read().map_err(storage)?;
            let table = r.open_table(TABLE).map_err(storage)?;
            let mut tx = ReadTx { table };
            body_result(body(&mut tx))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_commit_rolls_back_only_the_failed_body() {
        let dir = tempfile::tempdir().unwrap();
        let kv = RedbKv::open(&dir.path().join("m.redb")).unwrap();
        kv.write_batch(&mut |b| {
            b.attempt(true, &mut |tx| tx.set(b"a", b"1").map_err(Into::into))
                .unwrap();
            let r = b.attempt(true, &mut |tx| {
                tx.set(b"b", b"2")?;
                Err(BodyError::Abort)
            });
            assert_eq!(r, Err(KvError::Aborted));
            b.attempt(true, &mut |tx| {
                assert_eq!(
                    tx.get(b"a")?,
                    Some(b"1".to_vec()),
                    "later bodies see earlier writes"
                );
                tx.set(b"c", b"3")?;
                tx.set(b"d", b"4")?;
                tx.clear(b"a")?;
                let r = tx.get_range(b"a", b"z", 10, false)?;
                assert_eq!(
                    r,
                    vec![
                        (b"c".to_vec(), b"3".to_vec()),
                        (b"d".to_vec(), b"4".to_vec())
                    ]
                );
                let r = tx.get_range(b"a", b"z", 1, true)?;
                assert_eq!(r, vec![(b"d".to_vec(), b"4".to_vec())]);
                tx.clear(b"d").map_err(Into::into)
            })
            .unwrap();
        })
        .unwrap();
        kv.attempt(false, &mut |tx| {
            assert_eq!(tx.get(b"a")?, None);
            assert_eq!(tx.get(b"b")?, None, "the failed body left a write behind");
            assert_eq!(tx.get(b"c")?, Some(b"3".to_vec()));
            assert_eq!(tx.get(b"d")?, None);
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn ordered_ranges_and_rollback() {
        let dir = tempfile::tempdir().unwrap();
        let kv = RedbKv::open(&dir.path().join("m.redb")).unwrap();
        kv.attempt(true, &mut |tx| {
            for k in [b"a1".as_slice(), b"a2", b"a3", b"b1"] {
                tx.set(k, b"v")?;
            }
            Ok(())
        })
        .unwrap();
        let r = kv.attempt(true, &mut |tx| {
            tx.set(b"zz", b"v")?;
            Err(BodyError::Abort)
        });
        assert_eq!(r, Err(KvError::Aborted));
        kv.attempt(false, &mut |tx| {
            let r = tx.get_range(b"a", b"b", 10, false)?;
            assert_eq!(
                r.iter().map(|p| p.0.clone()).collect::<Vec<_>>(),
                vec![b"a1".to_vec(), b"a2".to_vec(), b"a3".to_vec()]
            );
            let r = tx.get_range(b"a", b"c", 2, true)?;
            assert_eq!(r[0].0, b"b1");
            assert_eq!(r[1].0, b"a3");
            assert_eq!(tx.get(b"zz")?, None);
            assert_eq!(tx.set(b"x", b"y"), Err(KvError::ReadOnly));
            Ok(())
        })
        .unwrap();
        kv.attempt(true, &mut |tx| {
            tx.clear_range(b"a2", b"b").map_err(Into::into)
        })
        .unwrap();
        kv.attempt(false, &mut |tx| {
            assert_eq!(tx.get_range(b"", b"\xff", 10, false)?.len(), 2);
            Ok(())
        })
        .unwrap();
    }
}
