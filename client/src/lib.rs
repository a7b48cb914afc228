//! A client for ostore's native API, over HTTP/1.1 or HTTP/3.
//!
//! - Objects: streaming [`Client::put`] and [`Client::get`], byte ranges and versions
//!   ([`GetOptions`]), [`Client::head`], [`Client::delete`], [`Client::versions`],
//!   [`Client::list`].
//! - Resumable uploads over tus 1.0.0 ([`Client::create_upload`], [`Client::upload_chunk`],
//!   [`Client::resume_upload`], or all at once with [`Client::upload`]).
//! - Any other call of the API ([`Client::request`]), as `osctl` makes its admin calls.
//!
//! Both protocols carry the same API with the same credentials and errors. HTTP/3 runs on
//! quinn; its connection is shared by every request (256 may run at once) and comes back by
//! itself if lost. With [`ClientBuilder::zero_rtt`], a reconnection resumes the TLS session and
//! sends GET and HEAD requests in the first flight (0-RTT); every other request waits for the
//! handshake, because early data can be replayed by an attacker.
//!
//! The client runs on tokio: call it from within a tokio runtime.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ostore_client::Error> {
//! use ostore_client::{Body, ByteRange, Client, GetOptions, Protocol};
//!
//! let client = Client::builder("http://127.0.0.1:9080")
//!     .secret(std::fs::read_to_string("ostore-data/root.secret").unwrap().trim())
//!     .protocol(Protocol::Http3)
//!     .tls_ca_file("ostore-data/tls/cert.pem")?
//!     .build()?;
//!
//! // PUT from memory (a stream works too: Body::from_stream).
//! let put = client.put("photos/cat.jpg", Body::from(vec![7u8; 1 << 20])).await?;
//! println!("version {} blake3 {}", put.version, put.blake3);
//!
//! // GET, streamed chunk by chunk.
//! let mut obj = client.get("photos/cat.jpg").await?;
//! while let Some(chunk) = obj.chunk().await? {
//!     let _ = chunk.len();
//! }
//!
//! // The first KiB of the first version.
//! let opts = GetOptions { range: Some(ByteRange::FromTo(0, 1023)), version: Some(put.version), ..Default::default() };
//! let head = client.get_with("photos/cat.jpg", &opts).await?.bytes().await?;
//! assert_eq!(head.len(), 1024);
//! # Ok(()) }
//! ```

mod body;
mod client;
mod error;
mod http1;
mod http3;
mod object;
mod response;
mod tus;

pub use body::Body;
pub use client::{Client, ClientBuilder, Protocol};
pub use error::{Error, Result};
pub use object::{
    ByteRange, GetOptions, ListOptions, ListPage, Listed, Object, ObjectInfo, PutOptions,
    PutResult, VersionInfo, Versions,
};
pub use response::Response;
pub use tus::Upload;
