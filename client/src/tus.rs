//! Resumable uploads over tus 1.0.0 (`/uploads`): create, send chunks, find where an upload
//! stands after a break, and go on from there. The chunk that reaches the length commits the
//! object as a PUT would.

use crate::body::Body;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::object::PutResult;
use crate::response::{header_str, header_u64};
use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use http::Method;

const TUS: &str = "1.0.0";

/// An upload under way: where it lives on the server, its length and how much is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// Its URL path (`/uploads/{id}`); keep it to resume after a break.
    pub location: String,
    pub key: String,
    pub length: u64,
    /// Bytes the server holds.
    pub offset: u64,
}

impl Upload {
    pub fn is_complete(&self) -> bool {
        self.offset == self.length
    }
}

fn tus_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("tus-resumable", HeaderValue::from_static(TUS));
    h
}

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn offset_of(h: &HeaderMap) -> Result<u64> {
    header_u64(h, "upload-offset")
        .ok_or_else(|| Error::Protocol("no Upload-Offset in the answer".into()))
}

impl Client {
    /// Creates an upload of `length` bytes for `key`. With `blake3` (hex), the server checks the
    /// whole object against it before committing.
    pub async fn create_upload(
        &self,
        key: &str,
        length: u64,
        blake3: Option<&str>,
    ) -> Result<Upload> {
        let mut meta = vec![format!("key {}", b64(key.as_bytes()))];
        if let Some(b) = &self.bucket {
            meta.push(format!("bucket {}", b64(b.as_bytes())));
        }
        if let Some(d) = blake3 {
            meta.push(format!("blake3 {}", b64(d.as_bytes())));
        }
        let mut h = tus_headers();
        h.insert("upload-length", HeaderValue::from(length));
        h.insert(
            "upload-metadata",
            HeaderValue::from_str(&meta.join(",")).expect("base64 is ASCII"),
        );
        let r = self
            .call(Method::POST, "/uploads", h, Body::empty())
            .await?;
        let loc = header_str(&r.headers, "location")
            .ok_or_else(|| Error::Protocol("no Location in the answer to POST /uploads".into()))?;
        Ok(Upload {
            location: path_of(&loc),
            key: key.to_string(),
            length,
            offset: 0,
        })
    }

    /// An upload as the server holds it now (after a break, to go on where it stopped).
    pub async fn resume_upload(&self, location: &str, key: &str) -> Result<Upload> {
        let location = path_of(location);
        let r = self
            .request(Method::HEAD, &location, tus_headers(), Body::empty())
            .await?;
        if !r.status.is_success() {
            return Err(Error::Api {
                status: r.status.as_u16(),
                code: if r.status == http::StatusCode::NOT_FOUND {
                    "NoSuchUpload".into()
                } else {
                    r.status.canonical_reason().unwrap_or("error").into()
                },
                message: format!("HEAD {location}"),
            });
        }
        let length = header_u64(&r.headers, "upload-length")
            .ok_or_else(|| Error::Protocol("no Upload-Length in the answer".into()))?;
        Ok(Upload {
            offset: offset_of(&r.headers)?,
            location,
            key: key.to_string(),
            length,
        })
    }

    /// Sends the next `chunk` (at `up.offset`, with its BLAKE3 for the server to check) and
    /// advances the offset. The chunk that completes the upload commits the object and returns
    /// what was stored.
    pub async fn upload_chunk(&self, up: &mut Upload, chunk: Bytes) -> Result<Option<PutResult>> {
        if up.offset + chunk.len() as u64 > up.length {
            return Err(Error::Invalid(format!(
                "{} bytes at offset {} pass the upload's length {}",
                chunk.len(),
                up.offset,
                up.length
            )));
        }
        let mut h = tus_headers();
        h.insert("upload-offset", HeaderValue::from(up.offset));
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/offset+octet-stream"),
        );
        let digest = blake3::hash(&chunk);
        h.insert(
            "upload-checksum",
            HeaderValue::from_str(&format!("blake3 {}", b64(digest.as_bytes()))).expect("ASCII"),
        );
        let r = self
            .call(Method::PATCH, &up.location, h, Body::from(chunk))
            .await?;
        up.offset = offset_of(&r.headers)?;
        if !up.is_complete() {
            return Ok(None);
        }
        let version = header_u64(&r.headers, "x-version")
            .ok_or_else(|| Error::Protocol("no X-Version on the final PATCH".into()))?;
        let blake3 = header_str(&r.headers, "etag")
            .ok_or_else(|| Error::Protocol("no ETag on the final PATCH".into()))?
            .trim_matches('"')
            .to_string();
        Ok(Some(PutResult {
            key: up.key.clone(),
            version,
            size: up.length,
            blake3,
        }))
    }

    /// Uploads `data` as `key` in chunks of `chunk` bytes, resuming where the server stands
    /// after a failed chunk (up to `retries` times in all).
    pub async fn upload(
        &self,
        key: &str,
        data: Bytes,
        chunk: usize,
        retries: u32,
    ) -> Result<PutResult> {
        let digest = blake3::hash(&data).to_hex();
        let mut up = self
            .create_upload(key, data.len() as u64, Some(digest.as_str()))
            .await?;
        let chunk = chunk.max(1);
        let mut left = retries;
        loop {
            let start = up.offset as usize;
            let end = (start + chunk).min(data.len());
            match self.upload_chunk(&mut up, data.slice(start..end)).await {
                Ok(Some(done)) => return Ok(done),
                Ok(None) => {}
                Err(e @ Error::Api { .. }) if e.status() != Some(409) => return Err(e),
                Err(e) => {
                    if left == 0 {
                        return Err(e);
                    }
                    left -= 1;
                    up = self.resume_upload(&up.location, key).await?;
                }
            }
            if data.is_empty() {
                return Err(Error::Protocol("an empty upload did not complete".into()));
            }
        }
    }

    /// Abandons an upload; the server frees what it held.
    pub async fn abort_upload(&self, up: &Upload) -> Result<()> {
        self.call(Method::DELETE, &up.location, tus_headers(), Body::empty())
            .await?;
        Ok(())
    }
}

/// The path of a `Location`, which may be given as a whole URL.
fn path_of(loc: &str) -> String {
    match loc.find("://") {
        Some(i) => match loc[i + 3..].find('/') {
            Some(j) => loc[i + 3 + j..].to_string(),
            None => "/".into(),
        },
        None => loc.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn locations() {
        assert_eq!(super::path_of("/uploads/ab"), "/uploads/ab");
        assert_eq!(super::path_of("http://h:1/uploads/ab"), "/uploads/ab");
    }
}
