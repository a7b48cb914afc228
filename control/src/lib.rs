//! The control plane: versioned object metadata, drives and the repair queue, kept in a
//! transactional ordered key-value store shaped like FoundationDB's.
//!
//! Architecture invariants:
//! - [`meta`] (every metadata transaction) sees only the [`kv::Tx`] trait; it knows nothing of
//!   redb, FoundationDB, glommio or HTTP. The same code runs over every backend.
//! - Every transaction is idempotent under retry (conflicts and `commit_unknown_result`): it
//!   either checks a marker it wrote itself or converges to the same state when run twice.
//! - Keys are built only in [`keys`]; their layout is documented in KEYS.md and pinned by golden
//!   tests.

pub mod cluster;
#[cfg(feature = "fdb")]
pub mod fdb_kv;
pub mod keys;
pub mod kv;
pub mod liveness;
pub mod meta;
pub mod multipart;
pub mod records;
pub mod redb_kv;
pub mod rpc;
pub mod scrub;
pub mod service;
pub mod trust;
pub mod upload;
