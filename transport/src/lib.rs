//! ostore's transport: QUIC driven by a glommio executor, for shards between nodes and for
//! HTTP/3 to clients, and the cluster's TLS.
//!
//! Layering: this crate knows nothing of objects, drives or metadata; it moves bytes on
//! streams. The data plane and osbench use it; it uses only `ostore-wire` (the peer ALPN).

pub mod http3;
pub mod quic;
pub mod tls;
