//! The sans-IO core of ostore.
//!
//! Architecture invariant: this crate knows nothing about glommio, hyper, quinn, redb or
//! FoundationDB. It is handed bytes and buffers and answers with bytes and decisions, so every
//! rule here can be driven deterministically from tests (and, later, a simulator).

pub mod cache;
pub mod codec;
pub mod compress;
pub mod geometry;
pub mod hash;
pub mod latency;
pub mod lifecycle;
pub mod placement;
pub mod range;
pub mod rate;
pub mod read;
pub mod stripe;
pub mod tree;
pub mod units;

pub use geometry::{EcParams, Geometry};
