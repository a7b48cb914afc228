//! Objects and the options and answers of the object calls.

use crate::error::{Error, Result};
use crate::response::{header_str, header_u64, Response};
use bytes::Bytes;
use http::header::HeaderMap;
use http::StatusCode;
use serde::{Deserialize, Serialize};

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
    pub(crate) fn from_headers(status: StatusCode, h: &HeaderMap) -> Result<Self> {
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
    pub(crate) fn new(info: ObjectInfo, resp: Response) -> Self {
        Object { info, resp }
    }

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
        // An object assembled from parts has an ETag of its part list (`<hex>-N`), not of its
        // bytes: nothing to check it against.
        let whole = self.info.range.is_none()
            && self.info.content_encoding.is_none()
            && !self.info.blake3.contains('-');
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
    pub(crate) fn header(&self) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderValue;

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
