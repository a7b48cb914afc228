//! The S3 protocol without I/O: what a request says and whether it may say it.
//!
//! - [`auth`]: a request's signature, SigV4 or a SigV2 presigned URL;
//! - [`sigv4`]: AWS Signature Version 4 as S3 checks it — the `Authorization` header and
//!   presigned URLs (canonical request, string to sign, signing key), the clock-skew and expiry
//!   rules, constant-time comparison;
//! - [`sigv2`]: SigV2 query authentication, the presigned URLs boto3's and the aws CLI's
//!   presigners make by default;
//! - [`route`]: which operation a request is (path-style, or virtual-hosted under a domain),
//!   and where a copy reads from;
//! - [`xml`]: the XML request bodies and the error document;
//! - [`chunked`]: the `aws-chunked` body decoder (signed chunks chained from the seed
//!   signature, unsigned chunks, trailers with their checksum and signature), a state machine
//!   fed bytes and answering with data;
//! - [`checksum`]: a body's integrity as S3 checks it while it streams — the signed SHA-256,
//!   and `x-amz-checksum-*` (CRC32, CRC32C, CRC64NVME, SHA-1, SHA-256) from a header or a
//!   trailer, and the body's MD5 (S3's ETag);
//! - [`keys`]: access keys besides `root` — ids, secrets derived from a key base, and
//!   what each may do;
//! - [`time`]: the two timestamp forms S3 uses, without a calendar crate;
//! - [`error`]: S3's error codes and the HTTP statuses they go with.
//!
//! It knows nothing of sockets, runtimes or the store: the data plane's S3 front end hands it
//! request heads and body bytes, and carries out what it decides.

pub mod auth;
pub mod checksum;
pub mod chunked;
pub mod error;
pub mod keys;
pub mod route;
pub mod sigv2;
pub mod sigv4;
pub mod time;
pub mod xml;

pub use error::{Code, S3Error};
