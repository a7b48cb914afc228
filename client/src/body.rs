//! Request bodies: nothing, bytes in memory, or a stream of chunks.

use bytes::Bytes;
use futures_util::Stream;
use std::io;
use std::pin::Pin;

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
