//! HTTP/1.1: hyper's pooled client over tokio TCP (keep-alive connections, `TCP_NODELAY`), and
//! over TLS (hyper-rustls) for `https://` endpoints.

use crate::body::{Body, BodyKind};
use crate::error::{Error, Result};
use bytes::Bytes;
use futures_util::TryStreamExt as _;
use http::header::{self, HeaderValue};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Empty, Full, StreamBody};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::io;

type ReqBody = UnsyncBoxBody<Bytes, io::Error>;

pub(crate) struct H1 {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, ReqBody>,
    base: String,
}

impl H1 {
    /// `roots` given: `https://` (TLS 1.3 or 1.2, the server checked against them); `None`:
    /// `http://`.
    pub(crate) fn new(
        authority: &http::uri::Authority,
        roots: Option<rustls::RootCertStore>,
    ) -> Result<Self> {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.enforce_http(false);
        let scheme = if roots.is_some() { "https" } else { "http" };
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| Error::Invalid(format!("TLS: {e}")))?
            .with_root_certificates(roots.unwrap_or_else(rustls::RootCertStore::empty))
            .with_no_client_auth();
        let conn = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(conn);
        let client = Client::builder(TokioExecutor::new()).build(conn);
        Ok(H1 {
            client,
            base: format!("{scheme}://{authority}"),
        })
    }

    /// Sends `req`, and returns the answer with its body still to be read (see [`chunk`]).
    pub(crate) async fn send(
        &self,
        req: http::Request<Body>,
    ) -> Result<http::Response<hyper::body::Incoming>> {
        let (mut parts, body) = req.into_parts();
        let uri = format!("{}{}", self.base, parts.uri);
        parts.uri = uri
            .parse()
            .map_err(|e| Error::Invalid(format!("{uri}: {e}")))?;
        let body: ReqBody = match body.0 {
            BodyKind::Empty => Empty::new().map_err(|e| match e {}).boxed_unsync(),
            BodyKind::Full(b) => Full::new(b).map_err(|e| match e {}).boxed_unsync(),
            BodyKind::Stream { len, stream } => {
                if let Some(n) = len {
                    parts
                        .headers
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
                }
                StreamBody::new(stream.map_ok(http_body::Frame::data)).boxed_unsync()
            }
        };
        self.client
            .request(http::Request::from_parts(parts, body))
            .await
            .map_err(|e| Error::Transport(format!("{e:#}: {}", source_chain(&e))))
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut s = e.source();
    while let Some(x) = s {
        out.push(x.to_string());
        s = x.source();
    }
    out.join(": ")
}

pub(crate) async fn chunk(b: &mut hyper::body::Incoming) -> Result<Option<Bytes>> {
    loop {
        match b.frame().await {
            None => return Ok(None),
            Some(Err(e)) => return Err(Error::transport(e)),
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    if !d.is_empty() {
                        return Ok(Some(d));
                    }
                }
            }
        }
    }
}
