//! What every ostore server process (a data node, `ostore dev`, `ostore control`) shares:
//! serving HTTP/1.1 connections on glommio with the limits one client may hold (`conn`, over
//! the socket adapter in `compat`), tasks whose panic fails one request and never an executor
//! (`guard`), the Prometheus metrics (`metrics`), and the process's signals, limits and ready
//! line (`process`).

pub mod compat;
pub mod conn;
pub mod guard;
pub mod metrics;
pub mod process;
