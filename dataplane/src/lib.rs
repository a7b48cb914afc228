//! The ostore data plane: a thread-per-core glommio node.
//!
//! Architecture invariant: everything that decides (striping, erasure coding, placement, shard
//! format, metadata transactions) lives in `ostore-engine`, `ostore-wire` and `ostore-control`;
//! this crate owns the runtime, the sockets and the drives, and only moves bytes.

pub mod admin;
pub mod cluster;
pub mod compat;
pub mod conn;
pub mod controlplane;
pub mod ctx;
pub mod drives;
pub mod faults;
pub mod foreground;
pub mod guard;
pub mod http;
pub mod http3;
pub mod metaclient;
pub mod metrics;
pub mod node;
pub mod offload;
pub mod orphans;
pub mod oserror;
pub mod peer;
pub mod peer_server;
pub mod process;
pub mod scrub;
pub mod shardio;
pub mod store;
pub mod time;
pub mod tus;
pub mod web;
