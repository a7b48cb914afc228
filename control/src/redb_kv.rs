//! The embedded backend: one redb table of byte keys to byte values.
//!
//! redb has a single writer, so write transactions never conflict; every commit is durable
//! (`Durability::Immediate`, an fsync) before it returns, unless the caller asks for a lazy
//! commit for bookkeeping that a restart can redo.

use crate::kv::{BodyError, Kv, KvError, Pairs, Tx};
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

pub struct RedbKv {
    db: Database,
}

fn storage<E: std::fmt::Display>(e: E) -> KvError {
    KvError::Storage(e.to_string())
}

impl RedbKv {
    /// Opens or creates the database file at `path`.
    pub fn open(path: &Path) -> Result<Self, KvError> {
        let db = Database::create(path).map_err(storage)?;
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

impl Tx for WriteTx<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self
            .table
            .get(key)
            .map_err(storage)?
            .map(|v| v.value().to_vec()))
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
        Ok(self
            .table
            .get(key)
            .map_err(storage)?
            .map(|v| v.value().to_vec()))
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

fn body_result(r: Result<(), BodyError>) -> Result<(), KvError> {
    match r {
        Ok(()) => Ok(()),
        Err(BodyError::Kv(e)) => Err(e),
        Err(BodyError::Abort) => Err(KvError::Aborted),
    }
}

impl Kv for RedbKv {
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
