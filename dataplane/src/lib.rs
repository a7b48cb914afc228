//! The ostore data plane: a thread-per-core glommio node.
//!
//! Only the modules the `ostore` binary and the fuzz targets use are public; the rest is the
//! crate's own (see ARCHITECTURE.md for the layers).
//!
//! Architecture invariant: everything that decides (striping, erasure coding, placement, shard
//! format, metadata transactions) lives in `ostore-engine`, `ostore-wire` and `ostore-control`;
//! this crate owns the runtime, the sockets and the drives, and only moves bytes.

mod admin;
mod cluster;
pub mod ctx;
mod drives;
mod faults;
mod foreground;
mod http;
pub mod http3;
pub mod identity;
pub mod node;
mod offload;
mod orphans;
mod oserror;
mod peer;
mod peer_server;
mod s3;
mod scrub;
mod shardio;
mod store;
mod stripecache;
mod time;
pub mod tus;
pub mod web;
