//! Byte formats ostore writes to disk and sends between processes.
//!
//! Every format here is versioned and documented byte by byte; each offset constant is derived
//! from the one before it, and golden-byte tests pin the encoding. This crate performs no I/O and
//! knows nothing of runtimes, sockets or metadata stores.

pub mod join;
pub mod peer;
pub mod shard;
