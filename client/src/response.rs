//! An answer from the server, its body read from whichever transport carried it.

use crate::error::{Error, Result};
use crate::{http1, http3};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::StatusCode;
use serde::Deserialize;

/// The receiving side of a response body.
enum RecvBody {
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
    /// An answer that came over HTTP/1.1; `head` where it answers a HEAD request.
    pub(crate) fn from_h1(r: http::Response<hyper::body::Incoming>, head: bool) -> Self {
        let (p, b) = r.into_parts();
        Response::new(p.status, p.headers, RecvBody::H1(b), head)
    }

    /// An answer that came over HTTP/3; `head` where it answers a HEAD request.
    pub(crate) fn from_h3(r: http::Response<http3::RecvBody>, head: bool) -> Self {
        let (p, b) = r.into_parts();
        Response::new(p.status, p.headers, RecvBody::H3(Box::new(b)), head)
    }

    fn new(status: StatusCode, headers: HeaderMap, body: RecvBody, head: bool) -> Self {
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

pub(crate) fn header_u64(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

pub(crate) fn header_str(h: &HeaderMap, name: &str) -> Option<String> {
    Some(h.get(name)?.to_str().ok()?.to_string())
}
