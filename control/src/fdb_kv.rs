//! The FoundationDB backend (cargo feature `fdb`): the [`Kv`] interface over a FoundationDB
//! cluster, so that several control processes can serve one cluster's metadata at once.
//!
//! Each [`Kv::attempt`] is one FoundationDB transaction: reads go to the cluster (with
//! read-your-writes), writes are buffered by the client and sent at commit. Errors map onto the
//! interface's: `not_committed` (1020) and other retryable errors become
//! [`KvError::Conflict`]; errors that may have committed (`commit_unknown_result`, 1021)
//! become [`KvError::CommitUnknownResult`], and [`crate::kv::run`] retries the whole
//! transaction, which every transaction of ostore tolerates (see `rpc::execute_idempotent`);
//! `transaction_too_large` (2101) becomes [`KvError::TooLarge`].
//!
//! The client library's futures complete on its network thread; this adapter waits for them on
//! the calling thread. Tested live only where `FDB_CLUSTER_FILE` is set.

use crate::kv::{BodyError, Kv, KvError, Pairs, Tx};
use foundationdb::{FdbError, RangeOption, Transaction};
use futures_lite::future::block_on;
use std::sync::OnceLock;

/// FoundationDB's error code for a transaction over its size limit.
const TRANSACTION_TOO_LARGE: i32 = 2101;

pub struct FdbKv {
    db: foundationdb::Database,
    /// Every key lives under this prefix (empty: the whole key space), so several ostore
    /// clusters, or tests, can share one FoundationDB cluster.
    prefix: Vec<u8>,
}

/// The client's network thread runs for the life of the process.
fn network() {
    static NETWORK: OnceLock<()> = OnceLock::new();
    NETWORK.get_or_init(|| {
        // SAFETY: called exactly once per process (guarded by the OnceLock); the returned guard
        // is leaked so the network is never stopped while transactions may run.
        let guard = unsafe { foundationdb::boot() };
        std::mem::forget(guard);
    });
}

fn map_err(e: FdbError) -> KvError {
    if e.code() == TRANSACTION_TOO_LARGE {
        KvError::TooLarge(e.to_string())
    } else if e.is_maybe_committed() {
        KvError::CommitUnknownResult
    } else if e.is_retryable() {
        KvError::Conflict
    } else {
        KvError::Storage(format!("FoundationDB: {e}"))
    }
}

impl FdbKv {
    /// Connects to the cluster named by `cluster_file`.
    pub fn open(cluster_file: &str) -> Result<Self, KvError> {
        Self::open_under(cluster_file, Vec::new())
    }

    /// Connects to the cluster, keeping every key under `prefix`.
    pub fn open_under(cluster_file: &str, prefix: Vec<u8>) -> Result<Self, KvError> {
        network();
        let db = foundationdb::Database::new(Some(cluster_file))
            .map_err(|e| KvError::Storage(format!("opening FoundationDB {cluster_file}: {e}")))?;
        Ok(FdbKv { db, prefix })
    }
}

struct FdbTx<'a> {
    tr: &'a Transaction,
    write: bool,
    prefix: &'a [u8],
}

impl FdbTx<'_> {
    fn key(&self, k: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.prefix.len() + k.len());
        out.extend_from_slice(self.prefix);
        out.extend_from_slice(k);
        out
    }
}

impl Tx for FdbTx<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        Ok(block_on(self.tr.get(&self.key(key), false))
            .map_err(map_err)?
            .map(|v| v.to_vec()))
    }

    fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Pairs, KvError> {
        let mut out = Vec::new();
        if begin >= end || limit == 0 {
            return Ok(out);
        }
        let mut opt = RangeOption::from((self.key(begin), self.key(end)));
        opt.reverse = reverse;
        opt.limit = Some(limit);
        loop {
            let values = block_on(self.tr.get_range(&opt, 1, false)).map_err(map_err)?;
            for kv in values.iter() {
                out.push((kv.key()[self.prefix.len()..].to_vec(), kv.value().to_vec()));
            }
            if out.len() >= limit || !values.more() {
                out.truncate(limit);
                return Ok(out);
            }
            match opt.next_range(&values) {
                Some(next) => {
                    opt = next;
                    opt.limit = Some(limit - out.len());
                }
                None => return Ok(out),
            }
        }
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        if !self.write {
            return Err(KvError::ReadOnly);
        }
        self.tr.set(&self.key(key), value);
        Ok(())
    }

    fn clear(&mut self, key: &[u8]) -> Result<(), KvError> {
        if !self.write {
            return Err(KvError::ReadOnly);
        }
        self.tr.clear(&self.key(key));
        Ok(())
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), KvError> {
        if !self.write {
            return Err(KvError::ReadOnly);
        }
        self.tr.clear_range(&self.key(begin), &self.key(end));
        Ok(())
    }

    fn add(&mut self, key: &[u8], delta: i64) -> Result<(), KvError> {
        if !self.write {
            return Err(KvError::ReadOnly);
        }
        self.tr.atomic_op(
            &self.key(key),
            &delta.to_le_bytes(),
            foundationdb::options::MutationType::Add,
        );
        Ok(())
    }
}

impl Kv for FdbKv {
    fn attempt(
        &self,
        write: bool,
        body: &mut dyn FnMut(&mut dyn Tx) -> Result<(), BodyError>,
    ) -> Result<(), KvError> {
        let tr = self.db.create_trx().map_err(map_err)?;
        let r = body(&mut FdbTx {
            tr: &tr,
            write,
            prefix: &self.prefix,
        });
        match r {
            Ok(()) if write => match block_on(tr.commit()) {
                Ok(_) => Ok(()),
                Err(e) => {
                    let err: FdbError = *e;
                    // Back off as the client library recommends before the caller retries.
                    let _ = block_on(e.on_error());
                    Err(map_err(err))
                }
            },
            other => crate::kv::body_result(other),
        }
    }

    fn as_dyn(&self) -> &dyn Kv {
        self
    }

    fn read_threads(&self) -> usize {
        16
    }
}
