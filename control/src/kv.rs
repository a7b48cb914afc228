//! The transactional key-value interface, shaped like FoundationDB's: ordered byte keys, range
//! reads, serializable transactions retried on conflict, and commits whose outcome may be
//! unknown (in which case the transaction is retried and must be idempotent).

use thiserror::Error;

/// Errors of the key-value layer.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KvError {
    /// Another transaction changed what this one read; retry it.
    #[error("transaction conflict; retry")]
    Conflict,
    /// The commit may or may not have happened; retry (the transaction must be idempotent).
    #[error("commit result unknown; retry")]
    CommitUnknownResult,
    /// The transaction exceeded a size or time limit of the store; split it.
    #[error("transaction too large: {0}")]
    TooLarge(String),
    /// A write inside a read-only transaction (a programming error).
    #[error("write in a read-only transaction")]
    ReadOnly,
    /// The body returned an application error; the attempt was rolled back.
    #[error("transaction aborted by its body")]
    Aborted,
    /// The store failed; check the disk or the cluster, the message says which.
    #[error("metadata store: {0}")]
    Storage(String),
}

impl KvError {
    pub fn retryable(&self) -> bool {
        matches!(self, KvError::Conflict | KvError::CommitUnknownResult)
    }
}

/// Key-value pairs from a range read.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// One transaction. Reads see the transaction's own writes.
pub trait Tx {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;
    /// Pairs with `begin <= key < end`, at most `limit`, in key order (descending if `reverse`).
    fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Pairs, KvError>;
    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), KvError>;
    fn clear(&mut self, key: &[u8]) -> Result<(), KvError>;
    fn clear_range(&mut self, begin: &[u8], end: &[u8]) -> Result<(), KvError>;
    /// Adds `delta` to the little-endian 64-bit counter under `key` (absent counts as 0), as
    /// FoundationDB's atomic `ADD` does: a store that has it applies it without a read conflict,
    /// so counters touched by every write do not serialize the writers. The default reads and
    /// writes the value.
    fn add(&mut self, key: &[u8], delta: i64) -> Result<(), KvError> {
        let cur = self.get(key)?.map_or(0, |v| counter(&v));
        self.set(key, &cur.wrapping_add(delta).to_le_bytes())
    }
}

/// A counter's value as [`Tx::add`] stores it (shorter values are zero-extended, as
/// FoundationDB reads them).
pub fn counter(v: &[u8]) -> i64 {
    let mut b = [0u8; 8];
    let n = v.len().min(8);
    b[..n].copy_from_slice(&v[..n]);
    i64::from_le_bytes(b)
}

/// Why an attempt's body stopped; `Abort` rolls the attempt back without retry.
pub enum BodyError {
    Kv(KvError),
    Abort,
}

impl From<KvError> for BodyError {
    fn from(e: KvError) -> Self {
        BodyError::Kv(e)
    }
}

/// What a body's result means for its attempt: its store error, or [`KvError::Aborted`] for an
/// application error (each store's `attempt` answers this way).
pub fn body_result(r: Result<(), BodyError>) -> Result<(), KvError> {
    match r {
        Ok(()) => Ok(()),
        Err(BodyError::Kv(e)) => Err(e),
        Err(BodyError::Abort) => Err(KvError::Aborted),
    }
}

/// A store: runs one attempt of a transaction body and commits it.
pub trait Kv {
    /// Begins a transaction, runs `body`, and commits if it returned `Ok` (read-only
    /// transactions just end). A body error rolls back.
    fn attempt(
        &self,
        write: bool,
        body: &mut dyn FnMut(&mut dyn Tx) -> Result<(), BodyError>,
    ) -> Result<(), KvError>;

    /// Group commit: runs `f` with a store whose write transactions may all be committed
    /// together when `f` returns, and only then. A transaction body that fails is rolled back
    /// alone. Stores without a cheaper way simply commit each transaction on its own.
    fn write_batch(&self, f: &mut dyn FnMut(&dyn Kv)) -> Result<(), KvError> {
        f(self.as_dyn());
        Ok(())
    }

    /// `self` as a trait object (for the default `write_batch`).
    fn as_dyn(&self) -> &dyn Kv;

    /// Whether this store runs its "transactions" inside an enclosing one ([`TxKv`]): then
    /// [`run`] makes one attempt and leaves retries to the enclosing transaction.
    fn nested(&self) -> bool {
        false
    }

    /// Whether every commit's outcome is known to the caller: it either happened or it did
    /// not, as in redb. A store where a commit may end in `commit_unknown_result`
    /// (FoundationDB) answers false, and its writes then carry an idempotency marker so that
    /// the retry cannot apply them twice.
    fn commit_outcome_known(&self) -> bool {
        false
    }

    /// How many threads should run this store's read transactions: 0 (the default) when a
    /// read is cheap enough to run on the caller's thread (an embedded store's snapshot), more
    /// for a store where each read is a round trip over the network, which no executor should
    /// wait on (see `service::Meta`).
    fn read_threads(&self) -> usize {
        0
    }
}

/// A store whose every transaction is part of one enclosing transaction `tx`: code written
/// against [`Kv`] (each function running its own [`run`]) can then be composed into a larger
/// atomic transaction. A body's application error aborts the enclosing transaction too (there
/// are no savepoints), so nothing partial is ever committed.
pub struct TxKv<'a, 'b> {
    tx: std::cell::RefCell<&'a mut (dyn Tx + 'b)>,
}

impl<'a, 'b> TxKv<'a, 'b> {
    pub fn new(tx: &'a mut (dyn Tx + 'b)) -> Self {
        TxKv {
            tx: std::cell::RefCell::new(tx),
        }
    }
}

impl Kv for TxKv<'_, '_> {
    fn attempt(
        &self,
        _write: bool,
        body: &mut dyn FnMut(&mut dyn Tx) -> Result<(), BodyError>,
    ) -> Result<(), KvError> {
        let mut tx = self.tx.borrow_mut();
        body_result(body(&mut **tx))
    }

    fn as_dyn(&self) -> &dyn Kv {
        self
    }

    fn nested(&self) -> bool {
        true
    }
}

/// An error a transaction body may return: either from the store or from the application.
pub trait TxnError: From<KvError> {
    /// The store error inside, if any, so [`run`] can decide whether to retry.
    fn kv(&self) -> Option<&KvError>;
}

/// How many times [`run`] tries a transaction before giving up.
pub const ATTEMPTS_MAX: usize = 100;

/// Runs `f` as a transaction, retrying on retryable errors like FoundationDB's `run`.
/// `f` may run several times and must be idempotent.
pub fn run<T, E: TxnError>(
    kv: &dyn Kv,
    write: bool,
    mut f: impl FnMut(&mut dyn Tx) -> Result<T, E>,
) -> Result<T, E> {
    let mut last = None;
    let attempts = if kv.nested() { 1 } else { ATTEMPTS_MAX };
    for _ in 0..attempts {
        let mut out: Option<Result<T, E>> = None;
        let r = kv.attempt(write, &mut |tx| match f(tx) {
            Ok(v) => {
                out = Some(Ok(v));
                Ok(())
            }
            Err(e) => {
                let abort = match e.kv() {
                    Some(k) => BodyError::Kv(k.clone()),
                    None => BodyError::Abort,
                };
                out = Some(Err(e));
                Err(abort)
            }
        });
        match r {
            Ok(()) => return out.expect("body ran"),
            Err(e) if e.retryable() && !kv.nested() => {
                last = Some(e);
                continue;
            }
            Err(e) => {
                // An application error aborts without retry; a store error is returned as is.
                return match out {
                    Some(Err(app)) if app.kv().is_none() => Err(app),
                    _ => Err(E::from(e)),
                };
            }
        }
    }
    Err(E::from(last.unwrap_or(KvError::Conflict)))
}

/// The key just past every key that starts with `prefix` (FoundationDB's `strinc`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut p = prefix.to_vec();
    while let Some(last) = p.pop() {
        if last < 0xFF {
            p.push(last + 1);
            return p;
        }
    }
    vec![0xFF; prefix.len() + 1]
}
