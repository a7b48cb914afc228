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

mod http1;
mod http3;
mod tus;

pub use tus::Upload;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

/// Which HTTP the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// HTTP/1.1 over TCP, a pool of keep-alive connections.
    #[default]
    Http1,
    /// HTTP/3 over QUIC (TLS 1.3) on UDP at the endpoint's port, one multiplexed connection.
    Http3,
}

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error (its status, and the API's error code and message).
    #[error("{status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The request did not get through, or its answer was cut short.
    #[error("{0}")]
    Transport(String),
    /// A bad argument or setting, caught before anything was sent.
    #[error("{0}")]
    Invalid(String),
    /// The server's answer was not what the API promises.
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

impl Error {
    /// The HTTP status, for an error the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The API's error code (`NoSuchKey`, `BadDigest`, ...), for an error the server answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    pub(crate) fn transport(e: impl std::fmt::Display) -> Self {
        Error::Transport(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// A request body: nothing, bytes in memory, or a stream of chunks.
pub struct Body(pub(crate) BodyKind);

pub(crate) enum BodyKind {
    Empty,
    Full(Bytes),
    Stream {
        len: Option<u64>,
        stream: ByteStream,
    },
}

impl Default for Body {
    fn default() -> Self {
        Body::empty()
    }
}

impl Body {
    pub fn empty() -> Self {
        Body(BodyKind::Empty)
    }

    /// A body read chunk by chunk as it is sent (never gathered in memory). `len` is its
    /// length where known: it is sent as `Content-Length`, and the server refuses a body that
    /// ends short of it.
    pub fn from_stream(
        len: Option<u64>,
        stream: impl Stream<Item = io::Result<Bytes>> + Send + 'static,
    ) -> Self {
        Body(BodyKind::Stream {
            len,
            stream: Box::pin(stream),
        })
    }

    /// The length, where known.
    pub fn len(&self) -> Option<u64> {
        match &self.0 {
            BodyKind::Empty => Some(0),
            BodyKind::Full(b) => Some(b.len() as u64),
            BodyKind::Stream { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// Whether the body can be sent again (it is not a stream).
    pub(crate) fn replayable(&self) -> Option<Body> {
        match &self.0 {
            BodyKind::Empty => Some(Body::empty()),
            BodyKind::Full(b) => Some(Body(BodyKind::Full(b.clone()))),
            BodyKind::Stream { .. } => None,
        }
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Body(BodyKind::Full(b))
    }
}

impl From<Vec<u8>> for Body {
    fn from(b: Vec<u8>) -> Self {
        Body(BodyKind::Full(b.into()))
    }
}

impl From<&'static [u8]> for Body {
    fn from(b: &'static [u8]) -> Self {
        Body(BodyKind::Full(Bytes::from_static(b)))
    }
}

impl From<String> for Body {
    fn from(s: String) -> Self {
        Body(BodyKind::Full(s.into()))
    }
}

/// The receiving side of a response body.
pub(crate) enum RecvBody {
    Empty,
    H1(hyper::body::Incoming),
    H3(Box<http3::RecvBody>),
}

/// An answer from the server, whatever its status.
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: RecvBody,
    /// `Content-Length`, where the answer has one: a body that ends short of it is an error.
    declared: Option<u64>,
    seen: u64,
}

impl Response {
    pub(crate) fn new(status: StatusCode, headers: HeaderMap, body: RecvBody, head: bool) -> Self {
        let bodyless = head
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let declared = if bodyless {
            Some(0)
        } else {
            header_u64(&headers, header::CONTENT_LENGTH.as_str())
        };
        Response {
            status,
            headers,
            body: if bodyless { RecvBody::Empty } else { body },
            declared,
            seen: 0,
        }
    }

    /// The next piece of the body; `None` at its end. A body cut short (the connection lost,
    /// the stream reset, fewer bytes than `Content-Length`) is an error, never a short end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>> {
        let next = match &mut self.body {
            RecvBody::Empty => None,
            RecvBody::H1(b) => http1::chunk(b).await?,
            RecvBody::H3(b) => b.chunk().await?,
        };
        match next {
            Some(b) => {
                self.seen += b.len() as u64;
                if self.declared.is_some_and(|d| self.seen > d) {
                    return Err(Error::Protocol(
                        "the body is longer than its Content-Length".into(),
                    ));
                }
                Ok(Some(b))
            }
            None => match self.declared {
                Some(d) if d != self.seen => Err(Error::Transport(format!(
                    "the body ended after {} of its {d} bytes",
                    self.seen
                ))),
                _ => Ok(None),
            },
        }
    }

    /// The whole body, gathered in memory.
    pub async fn bytes(mut self) -> Result<Bytes> {
        let mut out = BytesMut::with_capacity(self.declared.unwrap_or(0).min(64 << 20) as usize);
        while let Some(b) = self.chunk().await? {
            out.extend_from_slice(&b);
        }
        Ok(out.freeze())
    }

    /// The body as JSON.
    pub async fn json<T: serde::de::DeserializeOwned>(self) -> Result<T> {
        let b = self.bytes().await?;
        serde_json::from_slice(&b).map_err(|e| Error::Protocol(format!("bad JSON: {e}")))
    }

    /// This answer if its status is a success, else the API error it carries.
    pub async fn error_for_status(self) -> Result<Response> {
        if self.status.is_success() {
            return Ok(self);
        }
        let status = self.status.as_u16();
        let reason = self
            .status
            .canonical_reason()
            .unwrap_or("error")
            .to_string();
        let body = self.bytes().await.unwrap_or_default();
        #[derive(Deserialize)]
        struct Wrap {
            error: Inner,
        }
        #[derive(Deserialize)]
        struct Inner {
            code: String,
            message: String,
        }
        Err(match serde_json::from_slice::<Wrap>(&body) {
            Ok(w) => Error::Api {
                status,
                code: w.error.code,
                message: w.error.message,
            },
            Err(_) => Error::Api {
                status,
                code: reason,
                message: String::from_utf8_lossy(&body).into_owned(),
            },
        })
    }
}

fn header_u64(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn header_str(h: &HeaderMap, name: &str) -> Option<String> {
    Some(h.get(name)?.to_str().ok()?.to_string())
}

/// What a PUT (or a finished upload) stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResult {
    pub key: String,
    pub version: u64,
    pub size: u64,
    /// BLAKE3-256 of the content, hex.
    pub blake3: String,
}

/// An object's headers as a GET or HEAD gave them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub version: u64,
    /// BLAKE3-256 of the whole content, hex (the ETag).
    pub blake3: String,
    /// The whole object's size (not the range's).
    pub size: u64,
    /// For a range: the first and last byte sent (inclusive).
    pub range: Option<(u64, u64)>,
    pub last_modified: Option<String>,
    /// `Content-Encoding` where the server compressed the body (`Accept-Encoding` asked).
    pub content_encoding: Option<String>,
}

impl ObjectInfo {
    fn from_headers(status: StatusCode, h: &HeaderMap) -> Result<Self> {
        let missing = |what: &str| Error::Protocol(format!("no {what} in the answer"));
        let version = header_u64(h, "x-version").ok_or_else(|| missing("X-Version"))?;
        let blake3 = header_str(h, "etag")
            .ok_or_else(|| missing("ETag"))?
            .trim_matches('"')
            .to_string();
        let (size, range) = if status == StatusCode::PARTIAL_CONTENT {
            let cr = header_str(h, "content-range").ok_or_else(|| missing("Content-Range"))?;
            let bad = || Error::Protocol(format!("bad Content-Range {cr:?}"));
            let rest = cr.strip_prefix("bytes ").ok_or_else(bad)?;
            let (span, total) = rest.split_once('/').ok_or_else(bad)?;
            let (a, b) = span.split_once('-').ok_or_else(bad)?;
            let p = |s: &str| s.parse::<u64>().map_err(|_| bad());
            (p(total)?, Some((p(a)?, p(b)?)))
        } else {
            (
                header_u64(h, "content-length").ok_or_else(|| missing("Content-Length"))?,
                None,
            )
        };
        Ok(ObjectInfo {
            version,
            blake3,
            size,
            range,
            last_modified: header_str(h, "last-modified"),
            content_encoding: header_str(h, "content-encoding"),
        })
    }
}

/// An object being read: its headers, and its body as it arrives.
pub struct Object {
    pub info: ObjectInfo,
    resp: Response,
}

impl Object {
    /// The next piece of the body; `None` at its end (an error if it was cut short).
    pub async fn chunk(&mut self) -> Result<Option<Bytes>> {
        self.resp.chunk().await
    }

    /// The whole body in memory.
    pub async fn bytes(self) -> Result<Bytes> {
        self.resp.bytes().await
    }

    /// The whole body, checked against the object's BLAKE3 (for a whole, uncompressed body;
    /// a range cannot be checked this way and is returned as is).
    pub async fn bytes_verified(self) -> Result<Bytes> {
        let whole = self.info.range.is_none() && self.info.content_encoding.is_none();
        let want = self.info.blake3.clone();
        let b = self.resp.bytes().await?;
        if whole && blake3::hash(&b).to_hex().as_str() != want {
            return Err(Error::Protocol(format!(
                "the body does not match its BLAKE3 {want}"
            )));
        }
        Ok(b)
    }
}

/// A byte range of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// From this offset to the end.
    From(u64),
    /// From the first to the last offset, both included.
    FromTo(u64, u64),
    /// The last this many bytes.
    Last(u64),
}

impl ByteRange {
    fn header(&self) -> String {
        match self {
            ByteRange::From(a) => format!("bytes={a}-"),
            ByteRange::FromTo(a, b) => format!("bytes={a}-{b}"),
            ByteRange::Last(n) => format!("bytes=-{n}"),
        }
    }
}

/// How to read an object.
#[derive(Debug, Clone, Default)]
pub struct GetOptions {
    pub range: Option<ByteRange>,
    /// A given version, else the newest.
    pub version: Option<u64>,
    /// Only if the ETag (BLAKE3 hex) is still this (else `412 PreconditionFailed`).
    pub if_match: Option<String>,
    /// Accept a zstd-compressed body where the server holds it compressed.
    pub accept_zstd: bool,
}

/// How to store an object.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// BLAKE3-256 (hex) of the body, checked by the server (`400 BadDigest` if it does not
    /// match); with it, the server may answer at once when it holds that content already.
    pub blake3: Option<String>,
}

/// One version of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub version: u64,
    pub size: u64,
    pub blake3: String,
    pub created: String,
    pub delete_marker: bool,
}

/// Every version of a key, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Versions {
    pub key: String,
    pub versions: Vec<VersionInfo>,
}

/// An entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    pub key: String,
    pub version: u64,
    pub size: u64,
    pub blake3: String,
    pub created: String,
}

/// One page of a listing; `next_start_after` continues it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListPage {
    pub objects: Vec<Listed>,
    pub next_start_after: Option<String>,
}

/// Which keys to list.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub prefix: Option<String>,
    pub start_after: Option<String>,
    /// At most this many (the server's cap is 1000).
    pub limit: Option<u32>,
}

/// Builds a [`Client`].
pub struct ClientBuilder {
    endpoint: String,
    secret: Option<String>,
    protocol: Protocol,
    roots: Option<rustls::RootCertStore>,
    zero_rtt: bool,
    bucket: Option<String>,
}

impl ClientBuilder {
    /// The root secret (or another key's secret), sent as `Authorization: Bearer`.
    pub fn secret(mut self, secret: impl Into<String>) -> Self {
        self.secret = Some(secret.into());
        self
    }

    pub fn protocol(mut self, p: Protocol) -> Self {
        self.protocol = p;
        self
    }

    /// Trust the certificates in this PEM file for HTTP/3 (e.g. the one `ostore dev` prints),
    /// instead of the system's roots.
    pub fn tls_ca_file(mut self, path: impl AsRef<Path>) -> Result<Self> {
        use rustls::pki_types::pem::PemObject;
        let path = path.as_ref();
        let mut roots = self
            .roots
            .take()
            .unwrap_or_else(rustls::RootCertStore::empty);
        for c in rustls::pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?
        {
            let c = c.map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
            roots
                .add(c)
                .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        }
        self.roots = Some(roots);
        Ok(self)
    }

    /// Over HTTP/3, resume TLS sessions and send GET and HEAD requests in 0-RTT on a new
    /// connection (the server takes other requests only once the handshake completes).
    pub fn zero_rtt(mut self, on: bool) -> Self {
        self.zero_rtt = on;
        self
    }

    /// The bucket (else the server's `default`).
    pub fn bucket(mut self, b: impl Into<String>) -> Self {
        self.bucket = Some(b.into());
        self
    }

    pub fn build(self) -> Result<Client> {
        let uri: http::Uri = self
            .endpoint
            .parse()
            .map_err(|e| Error::Invalid(format!("endpoint {:?}: {e}", self.endpoint)))?;
        let scheme = uri.scheme_str().unwrap_or("http");
        let authority = uri
            .authority()
            .ok_or_else(|| Error::Invalid(format!("endpoint {:?} has no host", self.endpoint)))?
            .clone();
        let secret = match self.secret {
            Some(s) => Some(
                HeaderValue::from_str(&format!("Bearer {}", s.trim()))
                    .map_err(|_| Error::Invalid("the secret is not a valid header value".into()))?,
            ),
            None => None,
        };
        let transport = match self.protocol {
            Protocol::Http1 => {
                if scheme != "http" {
                    return Err(Error::Invalid(format!(
                        "HTTP/1.1 endpoints are http://, not {scheme}://"
                    )));
                }
                Transport::H1(http1::H1::new(&authority))
            }
            Protocol::Http3 => {
                if scheme != "http" && scheme != "https" {
                    return Err(Error::Invalid(format!("unknown scheme {scheme}://")));
                }
                let roots = match self.roots {
                    Some(r) => r,
                    None => system_roots()?,
                };
                Transport::H3(Box::new(http3::H3::new(&authority, roots, self.zero_rtt)?))
            }
        };
        Ok(Client {
            inner: Arc::new(Inner { secret, transport }),
            bucket: self.bucket,
        })
    }
}

fn system_roots() -> Result<rustls::RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    for c in found.certs {
        let _ = roots.add(c);
    }
    if roots.is_empty() {
        return Err(Error::Invalid(
            "no system certificates found: give the server's with tls_ca_file".into(),
        ));
    }
    Ok(roots)
}

pub(crate) enum Transport {
    H1(http1::H1),
    H3(Box<http3::H3>),
}

struct Inner {
    secret: Option<HeaderValue>,
    transport: Transport,
}

/// A client of one ostore endpoint; cheap to clone, and clones share connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    bucket: Option<String>,
}

/// Characters a key keeps in a path: unreserved ones and `/`.
const KEY: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

fn q(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl Client {
    /// A client of `endpoint` (`http://HOST:PORT`; HTTP/3 goes to the same port over UDP).
    pub fn builder(endpoint: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            endpoint: endpoint.into(),
            secret: None,
            protocol: Protocol::Http1,
            roots: None,
            zero_rtt: false,
            bucket: None,
        }
    }

    /// The same client (same connections) on another bucket.
    pub fn with_bucket(&self, bucket: impl Into<String>) -> Client {
        Client {
            inner: self.inner.clone(),
            bucket: Some(bucket.into()),
        }
    }

    pub fn protocol(&self) -> Protocol {
        match self.inner.transport {
            Transport::H1(_) => Protocol::Http1,
            Transport::H3(_) => Protocol::Http3,
        }
    }

    /// Closes the connections, telling the server (waiting up to a second for that over
    /// HTTP/3); the next request opens new ones (over HTTP/3 with 0-RTT where enabled and a
    /// session ticket is held). A program about to exit calls this, so the server does not
    /// hold state for a client that is gone.
    pub async fn disconnect(&self) {
        match &self.inner.transport {
            Transport::H1(_) => {}
            Transport::H3(t) => t.disconnect().await,
        }
    }

    /// How many HTTP/3 connections resumed their TLS session with 0-RTT accepted by the server.
    pub fn zero_rtt_accepted(&self) -> u64 {
        match &self.inner.transport {
            Transport::H1(_) => 0,
            Transport::H3(t) => t.zero_rtt_accepted(),
        }
    }

    fn object_path(&self, base: &str, key: &str, query: &[(&str, String)]) -> Result<String> {
        if key.is_empty() || key.len() > 1024 || key.contains('\0') {
            return Err(Error::Invalid(format!(
                "bad key {key:?}: 1..=1024 bytes, no NUL"
            )));
        }
        let mut p = format!("{base}/{}", percent_encoding::utf8_percent_encode(key, KEY));
        self.push_query(&mut p, query);
        Ok(p)
    }

    fn push_query(&self, p: &mut String, query: &[(&str, String)]) {
        let mut sep = if p.contains('?') { '&' } else { '?' };
        let bucket = self.bucket.as_ref().map(|b| ("bucket", b.clone()));
        for (k, v) in bucket
            .iter()
            .map(|(k, v)| (*k, v))
            .chain(query.iter().map(|(k, v)| (*k, v)))
        {
            p.push(sep);
            p.push_str(k);
            p.push('=');
            p.push_str(&q(v));
            sep = '&';
        }
    }

    /// Sends any request of the API (`path_and_query` like `/admin/status`) with the client's
    /// credentials, and returns the answer whatever its status.
    pub async fn request(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Body,
    ) -> Result<Response> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(path_and_query)
            .body(body)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        *req.headers_mut() = headers;
        if let Some(s) = &self.inner.secret {
            req.headers_mut().insert(header::AUTHORIZATION, s.clone());
        }
        match &self.inner.transport {
            Transport::H1(t) => t.send(req).await,
            Transport::H3(t) => t.send(req).await,
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Body,
    ) -> Result<Response> {
        self.request(method, path, headers, body)
            .await?
            .error_for_status()
            .await
    }

    /// Stores `body` under `key` as a new version.
    pub async fn put(&self, key: &str, body: Body) -> Result<PutResult> {
        self.put_with(key, body, &PutOptions::default()).await
    }

    pub async fn put_with(&self, key: &str, body: Body, opts: &PutOptions) -> Result<PutResult> {
        let mut h = HeaderMap::new();
        if let Some(d) = &opts.blake3 {
            h.insert(
                "x-blake3",
                HeaderValue::from_str(d).map_err(|_| Error::Invalid("bad BLAKE3 hex".into()))?,
            );
        }
        let path = self.object_path("/objects", key, &[])?;
        self.call(Method::PUT, &path, h, body).await?.json().await
    }

    /// Reads the newest version of `key`, streamed.
    pub async fn get(&self, key: &str) -> Result<Object> {
        self.get_with(key, &GetOptions::default()).await
    }

    pub async fn get_with(&self, key: &str, opts: &GetOptions) -> Result<Object> {
        let (path, h) = self.read_request(key, opts)?;
        let resp = self.call(Method::GET, &path, h, Body::empty()).await?;
        let info = ObjectInfo::from_headers(resp.status, &resp.headers)?;
        Ok(Object { info, resp })
    }

    /// An object's headers, without its body.
    pub async fn head(&self, key: &str, version: Option<u64>) -> Result<ObjectInfo> {
        let opts = GetOptions {
            version,
            ..Default::default()
        };
        let (path, h) = self.read_request(key, &opts)?;
        let resp = self.request(Method::HEAD, &path, h, Body::empty()).await?;
        if !resp.status.is_success() {
            // A HEAD answer has no body to carry the error code.
            let (status, code) = match resp.status {
                StatusCode::NOT_FOUND => (404, "NoSuchKey"),
                s => (s.as_u16(), s.canonical_reason().unwrap_or("error")),
            };
            return Err(Error::Api {
                status,
                code: code.into(),
                message: format!("HEAD {key}"),
            });
        }
        ObjectInfo::from_headers(resp.status, &resp.headers)
    }

    fn read_request(&self, key: &str, opts: &GetOptions) -> Result<(String, HeaderMap)> {
        let mut query = Vec::new();
        if let Some(v) = opts.version {
            query.push(("version", v.to_string()));
        }
        let path = self.object_path("/objects", key, &query)?;
        let mut h = HeaderMap::new();
        if let Some(r) = opts.range {
            h.insert(
                header::RANGE,
                HeaderValue::from_str(&r.header()).expect("ASCII"),
            );
        }
        if let Some(e) = &opts.if_match {
            h.insert(
                header::IF_MATCH,
                HeaderValue::from_str(&format!("\"{e}\""))
                    .map_err(|_| Error::Invalid("bad ETag".into()))?,
            );
        }
        if opts.accept_zstd {
            h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("zstd"));
        }
        Ok((path, h))
    }

    /// Deletes `key` (a delete marker becomes its newest version).
    pub async fn delete(&self, key: &str) -> Result<()> {
        let path = self.object_path("/objects", key, &[])?;
        self.call(Method::DELETE, &path, HeaderMap::new(), Body::empty())
            .await?;
        Ok(())
    }

    /// Removes one version of `key` for good.
    pub async fn delete_version(&self, key: &str, version: u64) -> Result<()> {
        let path = self.object_path("/objects", key, &[("version", version.to_string())])?;
        self.call(Method::DELETE, &path, HeaderMap::new(), Body::empty())
            .await?;
        Ok(())
    }

    /// Every version of `key`, newest first.
    pub async fn versions(&self, key: &str) -> Result<Versions> {
        let path = self.object_path("/versions", key, &[])?;
        self.call(Method::GET, &path, HeaderMap::new(), Body::empty())
            .await?
            .json()
            .await
    }

    /// One page of the keys whose newest version is not a delete marker, in key order.
    pub async fn list(&self, opts: &ListOptions) -> Result<ListPage> {
        let mut query = Vec::new();
        if let Some(p) = &opts.prefix {
            query.push(("prefix", p.clone()));
        }
        if let Some(s) = &opts.start_after {
            query.push(("start_after", s.clone()));
        }
        if let Some(l) = opts.limit {
            query.push(("limit", l.to_string()));
        }
        let mut path = "/objects".to_string();
        self.push_query(&mut path, &query);
        self.call(Method::GET, &path, HeaderMap::new(), Body::empty())
            .await?
            .json()
            .await
    }

    /// Whether the server answers `GET /health`.
    pub async fn health(&self) -> Result<()> {
        self.call(Method::GET, "/health", HeaderMap::new(), Body::empty())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_escaped_but_keep_their_slashes() {
        let c = Client::builder("http://127.0.0.1:1").build().unwrap();
        assert_eq!(
            c.object_path("/objects", "a b/ü?#%", &[]).unwrap(),
            "/objects/a%20b/%C3%BC%3F%23%25"
        );
        let c = c.with_bucket("photos");
        assert_eq!(
            c.object_path("/objects", "k", &[("version", "3".into())])
                .unwrap(),
            "/objects/k?bucket=photos&version=3"
        );
        assert!(c.object_path("/objects", "", &[]).is_err());
        assert!(c.object_path("/objects", "a\0b", &[]).is_err());
    }

    #[test]
    fn ranges_and_object_headers() {
        assert_eq!(ByteRange::FromTo(0, 9).header(), "bytes=0-9");
        assert_eq!(ByteRange::From(5).header(), "bytes=5-");
        assert_eq!(ByteRange::Last(7).header(), "bytes=-7");
        let mut h = HeaderMap::new();
        h.insert("x-version", HeaderValue::from_static("4"));
        h.insert("etag", HeaderValue::from_static("\"ab\""));
        h.insert("content-range", HeaderValue::from_static("bytes 10-19/100"));
        let i = ObjectInfo::from_headers(StatusCode::PARTIAL_CONTENT, &h).unwrap();
        assert_eq!((i.version, i.size, i.range), (4, 100, Some((10, 19))));
        assert_eq!(i.blake3, "ab");
        h.remove("content-range");
        assert!(ObjectInfo::from_headers(StatusCode::PARTIAL_CONTENT, &h).is_err());
    }
}
