//! HTTP/1.1: hyper's pooled client over tokio TCP (keep-alive connections, `TCP_NODELAY`).

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
    client: Client<HttpConnector, ReqBody>,
    base: String,
}

impl H1 {
    pub(crate) fn new(authority: &http::uri::Authority) -> Self {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(conn);
        H1 {
            client,
            base: format!("http://{authority}"),
        }
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
