//! S3's multipart uploads over `ostore_control::multipart`: each part is stored as an object's
//! body is (checked as it streams, erasure coded, deduplicated) and held by its part record;
//! completing makes a version assembled from the parts named, without copying a byte.

use super::{
    common_prefix, copy_source, empty, is_checksum, md5_etag, meta_error, owner, request_attrs,
    require_valid_key, store_body, xml_response, ListArgs, Resp,
};
use crate::store::{BodyFault, BodySource};
use crate::web::Front;
use bytes::Bytes;
use futures_lite::StreamExt;
use http::header::HeaderValue;
use http::StatusCode;
use hyper::body::Incoming;
use ostore_control::multipart::{Named, Refusal, PARTS_MAX};
use ostore_control::records::ObjectAttrs;
use ostore_control::rpc::ask;
use ostore_s3::sigv4::Verified;
use ostore_s3::{xml, Code, S3Error};

/// S3's smallest part, but for the last.
pub const PART_BYTES_MIN: u64 = 5 << 20;

/// The query's `uploadId`: ostore's are 16 bytes in hex.
fn upload_id(query: &str) -> Result<[u8; 16], S3Error> {
    let v = arg(query, "uploadId").unwrap_or_default();
    let mut id = [0u8; 16];
    hex::decode_to_slice(&v, &mut id)
        .map(|()| id)
        .map_err(|_| S3Error::new(Code::NoSuchUpload, format!("no upload has the id {v:?}")))
}

fn arg(query: &str, name: &str) -> Option<String> {
    ostore_s3::sigv4::query_pairs(query)
        .into_iter()
        .find(|(k, _)| k.as_slice() == name.as_bytes())
        .map(|(_, v)| String::from_utf8_lossy(&v).into_owned())
}

/// A part number from a request: 1 to 10,000.
fn part_number(v: Option<String>) -> Result<u16, S3Error> {
    v.as_deref()
        .and_then(|v| v.parse::<u16>().ok())
        .filter(|n| (1..=PARTS_MAX).contains(n))
        .ok_or_else(|| {
            S3Error::new(
                Code::InvalidArgument,
                format!("part numbers are 1 to {PARTS_MAX}"),
            )
        })
}

/// The upload and part number an UploadPart or UploadPartCopy names; the upload is looked up,
/// so a request for one that is not there is refused before its body is read.
async fn part_target(
    front: &Front,
    bucket: &str,
    key: &str,
    query: &str,
) -> Result<([u8; 16], u16), S3Error> {
    let id = upload_id(query)?;
    let number = part_number(arg(query, "partNumber"))?;
    front
        .node
        .meta
        .ask(ask::MpuGet {
            id,
            bucket: bucket.to_string(),
            key: key.to_string(),
        })
        .await
        .map_err(meta_error)?;
    Ok((id, number))
}

/// CreateMultipartUpload: an upload id; the headers give the attributes the object will keep.
pub async fn create(
    front: &Front,
    bucket: &str,
    key: &str,
    headers: &http::HeaderMap,
) -> Result<Resp, S3Error> {
    require_valid_key(key)?;
    let attrs = request_attrs(headers)?;
    let id: [u8; 16] = rand::random();
    let expires_ms =
        crate::store::now_ms().saturating_add(front.node.store.upload_expiry.as_millis() as u64);
    front
        .node
        .meta
        .ask(ask::MpuCreate {
            id,
            bucket: bucket.to_string(),
            key: key.to_string(),
            attrs,
            expires_ms,
        })
        .await
        .map_err(meta_error)?;
    let mut doc = String::from(xml::DECLARATION);
    doc.push_str("<InitiateMultipartUploadResult xmlns=\"");
    doc.push_str(xml::NAMESPACE);
    doc.push_str("\">");
    xml::element(&mut doc, "Bucket", bucket);
    xml::element(&mut doc, "Key", key);
    xml::element(&mut doc, "UploadId", &hex::encode(id));
    doc.push_str("</InitiateMultipartUploadResult>");
    let mut r = xml_response(StatusCode::OK, doc);
    if let Some(a) = headers.get("x-amz-checksum-algorithm") {
        r.headers_mut()
            .insert("x-amz-checksum-algorithm", a.clone());
    }
    Ok(r)
}

/// UploadPart: the body stored and checked as a PutObject body is, then held by the part's
/// record (a part uploaded again replaces the earlier one). Its ETag is its MD5.
pub async fn upload_part(
    front: &Front,
    bucket: &str,
    key: &str,
    query: &str,
    headers: &http::HeaderMap,
    body: Incoming,
    v: &Verified,
) -> Result<Resp, S3Error> {
    let (id, number) = part_target(front, bucket, key, query).await?;
    let commit = crate::store::Commit::Part { upload: id, number };
    let attrs = ostore_control::records::ObjectAttrs::default();
    let (_, checked) = store_body(front, bucket, key, headers, body, v, &commit, attrs).await?;
    let mut r = empty(StatusCode::OK);
    r.headers_mut()
        .insert(http::header::ETAG, md5_etag(&checked.md5));
    if let Some((a, value)) = checked.checksum {
        if let Ok(v) = HeaderValue::from_str(&value) {
            r.headers_mut().insert(a.header(), v);
        }
    }
    Ok(r)
}

/// CompleteMultipartUpload: a version assembled from the parts named (ascending, each with its
/// ETag; every one but the last at least 5 MiB). No byte is copied; parts not named are
/// dropped. Its ETag is S3's: the MD5 of the parts' MD5s, `-N`.
pub async fn complete(
    front: &Front,
    bucket: &str,
    key: &str,
    query: &str,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<Resp, S3Error> {
    let id = upload_id(query)?;
    let listed = xml::complete_multipart(body)?;
    let mut named = Vec::with_capacity(listed.len());
    for p in &listed {
        let mut md5 = [0u8; 16];
        if hex::decode_to_slice(&p.etag, &mut md5).is_err() {
            return Err(S3Error::new(
                Code::InvalidPart,
                format!(
                    "part {}: {:?} is not an ETag this server gave",
                    p.number, p.etag
                ),
            ));
        }
        named.push(Named {
            number: p.number as u16,
            md5,
        });
    }
    let md5s: Vec<[u8; 16]> = named.iter().map(|n| n.md5).collect();
    let md5 = ostore_s3::checksum::multipart_md5(&md5s);
    let done = front
        .node
        .meta
        .ask(ask::MpuComplete {
            id,
            bucket: bucket.to_string(),
            key: key.to_string(),
            named: named.clone(),
            min_part_bytes: PART_BYTES_MIN,
            md5,
            cond: crate::web::s3_write_condition(headers),
        })
        .await
        .map_err(meta_error)?;
    let c = match done {
        Ok(c) => c,
        Err(Refusal::InvalidPart(n)) => {
            return Err(S3Error::new(
                Code::InvalidPart,
                format!("part {n} was not uploaded, or its ETag is not the one given"),
            ))
        }
        Err(Refusal::InvalidPartOrder) => {
            return Err(S3Error::new(
                Code::InvalidPartOrder,
                "the parts must be listed in ascending order, each once",
            ))
        }
        Err(Refusal::TooSmall(n)) => {
            return Err(S3Error::new(
                Code::EntityTooSmall,
                format!("part {n} is smaller than 5 MiB and is not the last"),
            ))
        }
    };
    let etag = format!("\"{}-{}\"", hex::encode(md5), named.len());
    let mut doc = String::from(xml::DECLARATION);
    doc.push_str("<CompleteMultipartUploadResult xmlns=\"");
    doc.push_str(xml::NAMESPACE);
    doc.push_str("\">");
    xml::element(&mut doc, "Location", &format!("/{bucket}/{key}"));
    xml::element(&mut doc, "Bucket", bucket);
    xml::element(&mut doc, "Key", key);
    xml::element(&mut doc, "ETag", &etag);
    doc.push_str("</CompleteMultipartUploadResult>");
    let mut r = xml_response(StatusCode::OK, doc);
    r.headers_mut().insert(
        "x-amz-version-id",
        super::version_header(c.outcome.version, c.outcome.null),
    );
    Ok(r)
}

/// AbortMultipartUpload: the upload and its parts go (GC reclaims their bytes).
pub async fn abort(front: &Front, bucket: &str, key: &str, query: &str) -> Result<Resp, S3Error> {
    let id = upload_id(query)?;
    front
        .node
        .meta
        .ask(ask::MpuAbort {
            id,
            bucket: bucket.to_string(),
            key: key.to_string(),
        })
        .await
        .map_err(meta_error)?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// ListParts: the parts uploaded so far, after `part-number-marker`, `max-parts` at a time.
pub async fn list_parts(
    front: &Front,
    bucket: &str,
    key: &str,
    query: &str,
) -> Result<Resp, S3Error> {
    let id = upload_id(query)?;
    let max: usize = match arg(query, "max-parts") {
        None => 1000,
        Some(v) => v
            .parse::<u64>()
            .map(|n| n.min(1000) as usize)
            .map_err(|_| S3Error::new(Code::InvalidArgument, "max-parts must be a number"))?,
    };
    let after: u16 = match arg(query, "part-number-marker") {
        None => 0,
        Some(v) if v.is_empty() => 0,
        Some(v) => v.parse().map_err(|_| {
            S3Error::new(
                Code::InvalidArgument,
                "part-number-marker must be a part number",
            )
        })?,
    };
    let ask_parts = |limit: usize| ask::MpuParts {
        id,
        bucket: bucket.to_string(),
        key: key.to_string(),
        after,
        limit,
    };
    let mut parts = front
        .node
        .meta
        .ask(ask_parts(max.max(1) + 1))
        .await
        .map_err(meta_error)?;
    let truncated = parts.len() > max;
    parts.truncate(max);
    let mut doc = String::from(xml::DECLARATION);
    doc.push_str("<ListPartsResult xmlns=\"");
    doc.push_str(xml::NAMESPACE);
    doc.push_str("\">");
    xml::element(&mut doc, "Bucket", bucket);
    xml::element(&mut doc, "Key", key);
    xml::element(&mut doc, "UploadId", &hex::encode(id));
    xml::element(&mut doc, "PartNumberMarker", &after.to_string());
    if let Some((n, _)) = parts.last().filter(|_| truncated) {
        xml::element(&mut doc, "NextPartNumberMarker", &n.to_string());
    }
    xml::element(&mut doc, "MaxParts", &max.to_string());
    xml::element(
        &mut doc,
        "IsTruncated",
        if truncated { "true" } else { "false" },
    );
    doc.push_str("<Initiator>");
    xml::element(&mut doc, "ID", "root");
    xml::element(&mut doc, "DisplayName", "root");
    doc.push_str("</Initiator>");
    owner(&mut doc);
    xml::element(&mut doc, "StorageClass", "STANDARD");
    for (n, p) in &parts {
        doc.push_str("<Part>");
        xml::element(&mut doc, "PartNumber", &n.to_string());
        xml::element(
            &mut doc,
            "LastModified",
            &ostore_s3::time::iso8601_ms(p.created_ms),
        );
        let tag = p.attrs.md5.map(|m| format!("\"{}\"", hex::encode(m)));
        xml::element(&mut doc, "ETag", tag.as_deref().unwrap_or(""));
        xml::element(&mut doc, "Size", &p.size_bytes.to_string());
        for (name, value) in p.attrs.headers.iter().filter(|(n, _)| is_checksum(n)) {
            // x-amz-checksum-crc32 → ChecksumCRC32, and so on.
            let algo = name
                .trim_start_matches("x-amz-checksum-")
                .to_ascii_uppercase();
            xml::element(&mut doc, &format!("Checksum{algo}"), value);
        }
        doc.push_str("</Part>");
    }
    doc.push_str("</ListPartsResult>");
    Ok(xml_response(StatusCode::OK, doc))
}

/// ListMultipartUploads: uploads in progress under a prefix, by key and then id, after
/// `key-marker` and `upload-id-marker`, with keys rolled up at a delimiter.
pub async fn list_uploads(front: &Front, bucket: &str, query: &str) -> Result<Resp, S3Error> {
    use ostore_control::multipart::ListedUpload;
    let la = ListArgs::parse(query)?;
    let max: usize = match la.args.get("max-uploads") {
        None => 1000,
        Some(v) => v
            .parse::<u64>()
            .map(|n| n.clamp(1, 1000) as usize)
            .map_err(|_| S3Error::new(Code::InvalidArgument, "max-uploads must be a number"))?,
    };
    let key_marker = la.args.get("key-marker").cloned().filter(|k| !k.is_empty());
    let id_marker = match la.args.get("upload-id-marker").filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => {
            let mut id = [0u8; 16];
            hex::decode_to_slice(v, &mut id).map_err(|_| {
                S3Error::new(
                    Code::InvalidArgument,
                    "upload-id-marker is not an upload id",
                )
            })?;
            Some(id)
        }
    };
    let (uploads, truncated) = front
        .node
        .meta
        .ask(ask::MpuList {
            bucket: bucket.to_string(),
            prefix: la.prefix.clone(),
            delimiter: la.delimiter.clone(),
            key_marker: key_marker.clone(),
            id_marker: id_marker.filter(|_| key_marker.is_some()),
            limit: max,
        })
        .await
        .map_err(meta_error)?;
    let mut doc = String::from(xml::DECLARATION);
    doc.push_str("<ListMultipartUploadsResult xmlns=\"");
    doc.push_str(xml::NAMESPACE);
    doc.push_str("\">");
    xml::element(&mut doc, "Bucket", bucket);
    xml::element(
        &mut doc,
        "KeyMarker",
        &la.enc(key_marker.as_deref().unwrap_or("")),
    );
    xml::element(
        &mut doc,
        "UploadIdMarker",
        &id_marker.map(hex::encode).unwrap_or_default(),
    );
    match uploads.last().filter(|_| truncated) {
        Some(ListedUpload::Upload(last)) => {
            xml::element(&mut doc, "NextKeyMarker", &la.enc(&last.key));
            xml::element(&mut doc, "NextUploadIdMarker", &hex::encode(last.id));
        }
        // Past every upload under the prefix: no id marker.
        Some(ListedUpload::Prefix(p)) => {
            xml::element(&mut doc, "NextKeyMarker", &la.enc(p));
            xml::element(&mut doc, "NextUploadIdMarker", "");
        }
        None => {}
    }
    xml::element(&mut doc, "Prefix", &la.enc(&la.prefix));
    if let Some(d) = &la.delimiter {
        xml::element(&mut doc, "Delimiter", &la.enc(d));
    }
    xml::element(&mut doc, "MaxUploads", &max.to_string());
    xml::element(
        &mut doc,
        "IsTruncated",
        if truncated { "true" } else { "false" },
    );
    if la.url {
        xml::element(&mut doc, "EncodingType", "url");
    }
    let mut prefixes = String::new();
    for u in &uploads {
        let u = match u {
            ListedUpload::Upload(u) => u,
            ListedUpload::Prefix(p) => {
                common_prefix(&mut prefixes, &la.enc(p));
                continue;
            }
        };
        doc.push_str("<Upload>");
        xml::element(&mut doc, "Key", &la.enc(&u.key));
        xml::element(&mut doc, "UploadId", &hex::encode(u.id));
        doc.push_str("<Initiator>");
        xml::element(&mut doc, "ID", "root");
        xml::element(&mut doc, "DisplayName", "root");
        doc.push_str("</Initiator>");
        owner(&mut doc);
        xml::element(&mut doc, "StorageClass", "STANDARD");
        xml::element(
            &mut doc,
            "Initiated",
            &ostore_s3::time::iso8601_ms(u.created_ms),
        );
        doc.push_str("</Upload>");
    }
    doc.push_str(&prefixes);
    doc.push_str("</ListMultipartUploadsResult>");
    Ok(xml_response(StatusCode::OK, doc))
}

/// A part's body read from another object (UploadPartCopy), its MD5 taken as it passes.
struct CopiedBody {
    stream: crate::http::ByteStream,
    check: Option<ostore_s3::checksum::BodyCheck>,
    md5: Option<[u8; 16]>,
}

impl BodySource for CopiedBody {
    async fn next_chunk(&mut self) -> Option<Result<Bytes, BodyFault>> {
        match self.stream.next().await {
            Some(Ok(b)) => {
                if let Some(c) = &mut self.check {
                    c.update(&b);
                }
                Some(Ok(b))
            }
            Some(Err(e)) => Some(Err(BodyFault::Broken(format!(
                "reading the copy source: {e}"
            )))),
            None => {
                let c = self.check.take()?.finish(&[]);
                self.md5 = c.ok().map(|c| c.md5);
                None
            }
        }
    }

    fn complete(&mut self, attrs: &mut ObjectAttrs) {
        attrs.md5 = self.md5;
    }
}

/// `x-amz-copy-source-range: bytes=first-last` of an object of `size` bytes.
fn copy_range(headers: &http::HeaderMap, size: u64) -> Result<std::ops::Range<u64>, S3Error> {
    let Some(v) = headers.get("x-amz-copy-source-range") else {
        return Ok(0..size);
    };
    let bad = || {
        S3Error::new(
            Code::InvalidArgument,
            "x-amz-copy-source-range is bytes=first-last",
        )
    };
    let (a, b) = v
        .to_str()
        .ok()
        .and_then(|v| v.trim().strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .ok_or_else(bad)?;
    let (a, b): (u64, u64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
    if a > b || b >= size {
        return Err(S3Error::new(
            Code::InvalidRange,
            format!("the range {a}-{b} is not within the source's {size} bytes"),
        ));
    }
    Ok(a..b + 1)
}

/// UploadPartCopy: a part made of another object's bytes (all of it, or
/// `x-amz-copy-source-range`), read and verified as a GET reads them and stored as a part's
/// body is; the source's `x-amz-copy-source-if-*` hold.
pub async fn upload_part_copy(
    front: &Front,
    bucket: &str,
    key: &str,
    query: &str,
    headers: &http::HeaderMap,
) -> Result<Resp, S3Error> {
    let (id, number) = part_target(front, bucket, key, query).await?;
    let src = copy_source(front, headers).await?;
    let range = copy_range(headers, src.version.size_bytes)?;
    if range.end - range.start > 5 << 30 {
        return Err(S3Error::new(
            Code::EntityTooLarge,
            "a part is at most 5 GiB: copy a range of the source",
        ));
    }
    let len = range.end - range.start;
    let stream: crate::http::ByteStream =
        match crate::http::object_body(&front.node, &src, range, None).await {
            Ok(crate::web::RespBody::Stream(s, _)) => s,
            Ok(crate::web::RespBody::Full(b)) => Box::pin(futures_util::stream::iter(b.map(Ok))),
            Err(e) => return Err(S3Error::new(Code::ServiceUnavailable, e.message)),
        };
    let mut body = CopiedBody {
        stream,
        check: Some(ostore_s3::checksum::BodyCheck::new(
            &ostore_s3::sigv4::Payload::Unsigned,
            &http::HeaderMap::new(),
        )?),
        md5: None,
    };
    let commit = crate::store::Commit::Part { upload: id, number };
    let put = crate::store::put(
        &front.node,
        bucket,
        key,
        None,
        Some(len),
        &commit,
        ObjectAttrs::default(),
        &mut body,
    );
    let committed = put.await.map_err(|e| match e {
        crate::store::StoreError::Meta(m) => meta_error(m),
        e => S3Error::new(Code::InternalError, e.to_string()),
    })?;
    let md5 = body.md5.ok_or_else(|| {
        S3Error::new(
            Code::InternalError,
            "the copied part was stored without its MD5",
        )
    })?;
    let mut doc = String::from(xml::DECLARATION);
    doc.push_str("<CopyPartResult xmlns=\"");
    doc.push_str(xml::NAMESPACE);
    doc.push_str("\">");
    xml::element(
        &mut doc,
        "LastModified",
        &ostore_s3::time::iso8601_ms(committed.outcome.created_ms),
    );
    xml::element(&mut doc, "ETag", &format!("\"{}\"", hex::encode(md5)));
    doc.push_str("</CopyPartResult>");
    let mut r = xml_response(StatusCode::OK, doc);
    r.headers_mut().insert(
        "x-amz-copy-source-version-id",
        HeaderValue::from(src.version.version),
    );
    Ok(r)
}
