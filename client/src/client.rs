//! The client: how it is built, the transport it holds, and the calls of the API.

use crate::body::Body;
use crate::error::{Error, Result};
use crate::object::{
    GetOptions, ListOptions, ListPage, Object, ObjectInfo, PutOptions, PutResult, Versions,
};
use crate::response::Response;
use crate::{http1, http3};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use std::path::Path;
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

    /// Trust the certificates in this PEM file for HTTPS and HTTP/3 (e.g. the one `ostore dev`
    /// prints), instead of the system's roots.
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
                let roots = match scheme {
                    "http" => None,
                    "https" => Some(match self.roots {
                        Some(r) => r,
                        None => system_roots()?,
                    }),
                    _ => {
                        return Err(Error::Invalid(format!(
                            "HTTP/1.1 endpoints are http:// or https://, not {scheme}://"
                        )))
                    }
                };
                Transport::H1(Box::new(http1::H1::new(&authority, roots)?))
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
    H1(Box<http1::H1>),
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
    pub(crate) bucket: Option<String>,
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
        let head = method == Method::HEAD;
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
            Transport::H1(t) => Ok(Response::from_h1(t.send(req).await?, head)),
            Transport::H3(t) => Ok(Response::from_h3(t.send(req).await?, head)),
        }
    }

    pub(crate) async fn call(
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
        Ok(Object::new(info, resp))
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
}
