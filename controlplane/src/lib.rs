//! The control-plane API on the wire (`POST /v1/rpc`, the requests of `ostore_control::rpc`):
//! `client`, how a data node reaches it (in process for `ostore dev`, over HTTP to `ostore
//! control` for a cluster node), and `server`, `ostore control` itself with the leader's jobs.
//! Both run every request through the same `rpc::execute`.

pub mod client;
pub mod server;

pub use client::MetaClient;
pub use ostore_etcd::EtcdTls;
