//! The S3 API, path-style, on `--s3`: a front end like `http`, over the same store, in S3's
//! terms. `ostore-s3` checks signatures, routes and reads the XML; this module carries the
//! operations out and answers in S3's XML.
//!
//! Served: SigV4 and SigV2 (header and presigned) with the root key (access key `root`, the
//! root secret) or a key `osctl keys` made, ListBuckets, CreateBucket, HeadBucket,
//! DeleteBucket (when empty), GetBucketLocation, Get/PutBucketVersioning (Enabled, or
//! Suspended with null versions), ListObjectsV2, ListObjects, ListObjectVersions, PutObject
//! (plain and `aws-chunked` bodies, the signed SHA-256, `Content-MD5` and `x-amz-checksum-*`
//! verified; the MD5 kept as the ETag, with the kept headers and user metadata), GetObject,
//! HeadObject, CopyObject (no byte copied), DeleteObject, DeleteObjects, and multipart uploads
//! (`multipart`). The sub-resources `ostore_s3::route` lists as unserved (ACLs, policies,
//! CORS, lifecycle, tagging, ...) answer `501 NotImplemented`, naming themselves.

mod multipart;

use crate::web::{Front, RespBody};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use ostore_control::meta::MetaError;
use ostore_control::records::{ObjectAttrs, VersionRec};
use ostore_control::rpc::ask;
use ostore_s3::route::Op;
use ostore_s3::sigv4::{RequestHead, Verified};
use ostore_s3::{xml, Code, S3Error};
use std::sync::Arc;
use std::time::Instant;

/// The region ostore answers for (any region a client signs for is accepted).
const REGION: &str = "us-east-1";
/// Largest XML request body read (bucket configurations; DeleteObjects' 1,000 keys fit).
const XML_BODY_BYTES_MAX: usize = 2 << 20;

type Resp = Response<RespBody>;

/// Serves S3 on this executor's share of the listener until the node stops.
pub async fn serve(front: Arc<Front>, listener: glommio::net::TcpListener) {
    let tls = front.https.clone();
    ostore_server::conn::serve(
        front,
        listener,
        tls,
        |front: Arc<Front>, req: Request<Incoming>| async move { handle(&front, req).await },
        || {
            error_response(
                &S3Error::new(
                    Code::InternalError,
                    "the server failed while handling this request (it is logged)",
                ),
                "",
                "",
                false,
            )
        },
    )
    .await
}

async fn handle(front: &Front, req: Request<Incoming>) -> Resp {
    // Every S3 request is a client's: it counts as serving, as the native API's data requests
    // do (the scrub slows down for them).
    let _serving = crate::foreground::begin();
    let started = Instant::now();
    let request_id = format!("{:016X}", rand::random::<u64>());
    let resource = req.uri().path().to_string();
    let head_only = req.method() == http::Method::HEAD;
    let (name, resp) = match route(front, req).await {
        Ok((name, r)) => (name, r),
        Err((name, e)) => {
            if e.code == Code::InternalError {
                tracing::error!("S3 {name}: {}", e.message);
            }
            (name, error_response(&e, &resource, &request_id, head_only))
        }
    };
    let mut resp = resp;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-amz-request-id", v);
    }
    front
        .node
        .metrics
        .observe(name, resp.status().as_u16(), started.elapsed());
    resp
}

type Routed = Result<(&'static str, Resp), (&'static str, S3Error)>;

/// Checks a request's signature: with the root key's secret, or with the secret derived for
/// another key (looked up in the metadata on each request, so a revoked key fails at once),
/// which then limits what the request may do.
async fn authenticate(
    front: &Front,
    head: &RequestHead<'_>,
    host_bucket: Option<&str>,
    now_s: i64,
) -> Result<(Verified, Option<ostore_s3::keys::Scope>), S3Error> {
    let asked: std::cell::RefCell<Option<String>> = Default::default();
    let first = ostore_s3::auth::verify(head, host_bucket, now_s, &|ak| {
        if ak != "root" {
            *asked.borrow_mut() = Some(ak.to_string());
        }
        front.creds.s3_secret(ak)
    });
    let id = match (first, asked.take()) {
        (Ok(v), _) => return Ok((v, None)),
        (Err(e), Some(id)) if e.code == Code::InvalidAccessKeyId => id,
        (Err(e), None) if e.code == Code::SignatureDoesNotMatch => {
            // The root key signed with a secret a rotation replaced, within its grace.
            for previous in front.creds.previous_s3_secrets() {
                let v = ostore_s3::auth::verify(head, host_bucket, now_s, &|ak| {
                    (ak == "root").then(|| previous.clone())
                });
                if let Ok(v) = v {
                    return Ok((v, None));
                }
            }
            return Err(e);
        }
        (Err(e), _) => return Err(e),
    };
    let rec = front
        .node
        .meta
        .ask(ask::KeyGet { id: id.clone() })
        .await
        .map_err(meta_error)?
        .ok_or_else(|| {
            S3Error::new(
                Code::InvalidAccessKeyId,
                "the access key id does not exist (or was revoked)",
            )
        })?;
    let secret = front.creds.derived_s3_secret(&id, &rec.salt);
    let v = ostore_s3::auth::verify(head, host_bucket, now_s, &|ak| {
        (ak == id).then(|| secret.clone())
    })?;
    Ok((
        v,
        Some(ostore_s3::keys::Scope {
            buckets: rec.buckets,
            read_only: rec.read_only,
        }),
    ))
}

async fn route(front: &Front, req: Request<Incoming>) -> Routed {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let now_s = crate::time::now_unix_s();
    let head = RequestHead {
        method: parts.method.as_str(),
        path: &path,
        query: &query,
        headers: &parts.headers,
    };
    // Virtual-hosted style: the bucket in the Host header goes in front of the path (SigV4
    // signs the path as sent; SigV2 signs the bucket too).
    let vhost = front.s3_domain.as_deref().and_then(|d| {
        let host = parts.headers.get(header::HOST)?.to_str().ok()?;
        ostore_s3::route::virtual_host_bucket(host, d)
    });
    let (verified, scope) = authenticate(front, &head, vhost, now_s)
        .await
        .map_err(|e| ("auth", e))?;
    let route_path = match vhost {
        Some(b) => format!("/{b}{path}"),
        None => path.clone(),
    };
    let op = ostore_s3::route::route(
        parts.method.as_str(),
        &route_path,
        &query,
        parts.headers.contains_key("x-amz-copy-source"),
    )
    .map_err(|e| ("route", e))?;
    let name = op.name();
    if let Some(b) = op.bucket() {
        if !ostore_control::keys::valid_bucket(b) {
            return Err((
                name,
                S3Error::new(
                    Code::InvalidBucketName,
                    format!("{b:?} is not a valid bucket name (3-63 of a-z 0-9 . -, no .., not an IP address)"),
                ),
            ));
        }
    }
    if let Some(scope) = &scope {
        // Checked before anything is done: a refused request changes nothing.
        let copy_from = parts
            .headers
            .get("x-amz-copy-source")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| ostore_s3::route::copy_source(v).ok())
            .map(|c| c.bucket);
        scope
            .allows(&op, copy_from.as_deref())
            .map_err(|e| (name, e))?;
    }
    let r = match op {
        Op::ListBuckets => list_buckets(front, scope.as_ref()).await,
        Op::CreateBucket { bucket } => {
            let body = small_body(body, &verified, &parts.headers).await?;
            create_bucket(front, &bucket, &body).await
        }
        Op::HeadBucket { bucket } => head_bucket(front, &bucket).await,
        Op::DeleteBucket { bucket } => delete_bucket(front, &bucket).await,
        Op::GetBucketLocation { bucket } => location(front, &bucket).await,
        Op::ListObjectsV2 { bucket } => list_objects(front, &bucket, &query, true).await,
        Op::ListObjects { bucket } => list_objects(front, &bucket, &query, false).await,
        Op::GetObject { bucket, key } => {
            get_object(front, &bucket, &key, &query, &parts.headers, false).await
        }
        Op::HeadObject { bucket, key } => {
            get_object(front, &bucket, &key, &query, &parts.headers, true).await
        }
        Op::DeleteObject { bucket, key } => delete_object(front, &bucket, &key, &query).await,
        Op::PutObject { bucket, key } => {
            put_object(front, &bucket, &key, &parts.headers, body, &verified).await
        }
        Op::CreateMultipartUpload { bucket, key } => {
            multipart::create(front, &bucket, &key, &parts.headers).await
        }
        Op::UploadPart { bucket, key } => {
            multipart::upload_part(
                front,
                &bucket,
                &key,
                &query,
                &parts.headers,
                body,
                &verified,
            )
            .await
        }
        Op::UploadPartCopy { bucket, key } => {
            multipart::upload_part_copy(front, &bucket, &key, &query, &parts.headers).await
        }
        Op::CompleteMultipartUpload { bucket, key } => {
            let body = small_body(body, &verified, &parts.headers).await?;
            multipart::complete(front, &bucket, &key, &query, &parts.headers, &body).await
        }
        Op::AbortMultipartUpload { bucket, key } => {
            multipart::abort(front, &bucket, &key, &query).await
        }
        Op::ListParts { bucket, key } => multipart::list_parts(front, &bucket, &key, &query).await,
        Op::ListMultipartUploads { bucket } => {
            multipart::list_uploads(front, &bucket, &query).await
        }
        Op::ListObjectVersions { bucket } => list_versions(front, &bucket, &query).await,
        Op::GetBucketVersioning { bucket } => get_versioning(front, &bucket).await,
        Op::PutBucketVersioning { bucket } => {
            let body = small_body(body, &verified, &parts.headers).await?;
            put_versioning(front, &bucket, &body).await
        }
        Op::CopyObject { bucket, key } => copy_object(front, &bucket, &key, &parts.headers).await,
        Op::DeleteObjects { bucket } => {
            let body = small_body(body, &verified, &parts.headers).await?;
            delete_objects(front, &bucket, &body).await
        }
    };
    r.map(|r| (name, r)).map_err(|e| (name, e))
}

/// A small request body (an XML document), whole, checked as a PutObject body is (the signed
/// SHA-256, `Content-MD5`, `x-amz-checksum-*`).
async fn small_body(
    body: Incoming,
    v: &Verified,
    headers: &http::HeaderMap,
) -> Result<Bytes, (&'static str, S3Error)> {
    if matches!(v.payload, ostore_s3::sigv4::Payload::Streaming { .. }) {
        return Err((
            "body",
            S3Error::new(
                Code::InvalidRequest,
                "this request's body is a small document: send it whole, not aws-chunked",
            ),
        ));
    }
    let mut check =
        ostore_s3::checksum::BodyCheck::new(&v.payload, headers).map_err(|e| ("body", e))?;
    let limited = http_body_util::Limited::new(body, XML_BODY_BYTES_MAX);
    let b = limited
        .collect()
        .await
        .map_err(|e| {
            (
                "body",
                S3Error::new(
                    Code::InvalidRequest,
                    format!("reading the request body (at most {XML_BODY_BYTES_MAX} bytes): {e}"),
                ),
            )
        })?
        .to_bytes();
    check.update(&b);
    check.finish(&[]).map_err(|e| ("body", e))?;
    Ok(b)
}

fn meta_error(e: MetaError) -> S3Error {
    match e {
        MetaError::NoSuchBucket => S3Error::new(Code::NoSuchBucket, "the bucket does not exist"),
        MetaError::NoSuchKey => S3Error::new(Code::NoSuchKey, "the key does not exist"),
        MetaError::NoSuchVersion => S3Error::new(Code::NoSuchVersion, "the version does not exist"),
        MetaError::NoSuchUpload => S3Error::new(
            Code::NoSuchUpload,
            "the upload does not exist: it was completed, aborted or expired",
        ),
        MetaError::BucketNotEmpty => S3Error::new(
            Code::BucketNotEmpty,
            "the bucket holds versions (delete markers count): delete them first",
        ),
        MetaError::PreconditionFailed => S3Error::new(
            Code::PreconditionFailed,
            "at least one of the preconditions did not hold",
        ),
        MetaError::Refused(m) => S3Error::new(Code::InvalidRequest, m),
        MetaError::Unavailable(m) => S3Error::new(Code::ServiceUnavailable, m),
        other => S3Error::new(Code::InternalError, other.to_string()),
    }
}

fn xml_response(status: StatusCode, doc: String) -> Resp {
    let mut r = Response::new(RespBody::Full(Some(Bytes::from(doc))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    r
}

fn empty(status: StatusCode) -> Resp {
    let mut r = Response::new(RespBody::Full(None));
    *r.status_mut() = status;
    r
}

/// S3's error document (none for HEAD, whose answers have no body).
fn error_response(e: &S3Error, resource: &str, request_id: &str, head_only: bool) -> Resp {
    let status = StatusCode::from_u16(e.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = if head_only {
        empty(status)
    } else {
        xml_response(status, xml::error(e, resource, request_id))
    };
    if status == StatusCode::SERVICE_UNAVAILABLE {
        // Unavailable for now (the control plane failing over, too few nodes): say when to
        // come back, as the native API does.
        r.headers_mut().insert(
            header::RETRY_AFTER,
            http::HeaderValue::from_static(crate::web::RETRY_AFTER_S),
        );
    }
    r
}

async fn bucket_list(front: &Front) -> Result<Vec<(String, u64)>, S3Error> {
    front
        .node
        .meta
        .ask(ask::BucketList {})
        .await
        .map_err(meta_error)
}

async fn require_bucket(front: &Front, bucket: &str) -> Result<(), S3Error> {
    let exists = front
        .node
        .meta
        .ask(ask::BucketExists {
            bucket: bucket.to_string(),
        })
        .await
        .map_err(meta_error)?;
    if exists {
        Ok(())
    } else {
        Err(meta_error(MetaError::NoSuchBucket))
    }
}

/// ListBuckets: every bucket, or those a limited key may use.
async fn list_buckets(
    front: &Front,
    scope: Option<&ostore_s3::keys::Scope>,
) -> Result<Resp, S3Error> {
    let mut doc = String::from(xml::DECLARATION);
    doc.push_str("<ListAllMyBucketsResult xmlns=\"");
    doc.push_str(xml::NAMESPACE);
    doc.push_str("\"><Owner>");
    xml::element(&mut doc, "ID", "root");
    xml::element(&mut doc, "DisplayName", "root");
    doc.push_str("</Owner><Buckets>");
    for (name, created_ms) in bucket_list(front).await? {
        if scope.is_some_and(|s| !s.has_bucket(&name)) {
            continue;
        }
        doc.push_str("<Bucket>");
        xml::element(&mut doc, "Name", &name);
        xml::element(
            &mut doc,
            "CreationDate",
            &ostore_s3::time::iso8601_ms(created_ms),
        );
        doc.push_str("</Bucket>");
    }
    doc.push_str("</Buckets></ListAllMyBucketsResult>");
    Ok(xml_response(StatusCode::OK, doc))
}

async fn create_bucket(front: &Front, bucket: &str, body: &[u8]) -> Result<Resp, S3Error> {
    // Any location constraint is accepted: ostore has one region, whatever it is called.
    xml::location_constraint(body)?;
    let created: bool = front
        .node
        .meta
        .ask(ask::CreateBucket {
            bucket: bucket.to_string(),
        })
        .await
        .map_err(meta_error)?;
    if !created {
        return Err(S3Error::new(
            Code::BucketAlreadyOwnedByYou,
            "the bucket exists already, and is yours",
        ));
    }
    let mut r = empty(StatusCode::OK);
    if let Ok(v) = HeaderValue::from_str(&format!("/{bucket}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Ok(r)
}

async fn head_bucket(front: &Front, bucket: &str) -> Result<Resp, S3Error> {
    require_bucket(front, bucket).await?;
    let mut r = empty(StatusCode::OK);
    r.headers_mut()
        .insert("x-amz-bucket-region", HeaderValue::from_static(REGION));
    Ok(r)
}

async fn delete_bucket(front: &Front, bucket: &str) -> Result<Resp, S3Error> {
    front
        .node
        .meta
        .ask(ask::DeleteBucket {
            bucket: bucket.to_string(),
        })
        .await
        .map_err(meta_error)?;
    Ok(empty(StatusCode::NO_CONTENT))
}

async fn location(front: &Front, bucket: &str) -> Result<Resp, S3Error> {
    require_bucket(front, bucket).await?;
    // us-east-1 is answered as an empty constraint, as S3 does.
    let mut doc = String::from(xml::DECLARATION);
    doc.push_str("<LocationConstraint xmlns=\"");
    doc.push_str(xml::NAMESPACE);
    doc.push_str("\"/>");
    Ok(xml_response(StatusCode::OK, doc))
}

/// The ETag S3 clients see of a version: the body's MD5 for an object written whole, S3's
/// `md5-of-part-md5s-N` for one assembled from N parts. The native API and tus do not compute
/// MD5: their objects get a tag made from the BLAKE3 name with S3's multipart suffix (`-1`),
/// which clients (the aws CLI, rclone, boto3's transfers) read as "not an MD5" and never check
/// a download against.
fn etag_of(v: &VersionRec) -> String {
    match v.attrs.md5 {
        Some(m) if v.attrs.parts > 0 => format!("\"{}-{}\"", hex::encode(m), v.attrs.parts),
        Some(m) => format!("\"{}\"", hex::encode(m)),
        None => format!("\"{}-1\"", hex::encode(&v.blake3[..16])),
    }
}

/// Headers kept with an object when a write gives them, and returned when it is read.
const KEPT_HEADERS: &[&str] = &[
    "content-type",
    "content-encoding",
    "content-disposition",
    "content-language",
    "cache-control",
    "expires",
];

/// S3's limit on an object's user metadata (`x-amz-meta-*` names and values).
const USER_METADATA_BYTES_MAX: usize = 2048;

/// The attributes a write's headers give the object (PutObject, CopyObject with REPLACE,
/// CreateMultipartUpload): the kept headers and the user metadata, as sent. The
/// `aws-chunked` coding is the transfer's, not the object's, and is not kept.
fn request_attrs(headers: &http::HeaderMap) -> Result<ObjectAttrs, S3Error> {
    let mut attrs = ObjectAttrs::default();
    let mut user = 0usize;
    for (n, v) in headers {
        let name = n.as_str();
        let is_user = name.starts_with("x-amz-meta-");
        if !is_user && !KEPT_HEADERS.contains(&name) {
            continue;
        }
        let value = v.to_str().map_err(|_| {
            S3Error::new(
                Code::InvalidArgument,
                format!("the value of {name} is not printable ASCII"),
            )
        })?;
        let value = if name == "content-encoding" {
            let rest: Vec<&str> = value
                .split(',')
                .map(str::trim)
                .filter(|c| !c.eq_ignore_ascii_case("aws-chunked") && !c.is_empty())
                .collect();
            if rest.is_empty() {
                continue;
            }
            rest.join(",")
        } else {
            value.to_string()
        };
        if is_user {
            user += name.len() - "x-amz-meta-".len() + value.len();
        }
        attrs.headers.push((name.to_string(), value));
    }
    if user > USER_METADATA_BYTES_MAX {
        return Err(S3Error::new(
            Code::MetadataTooLarge,
            format!("user metadata is {user} bytes; at most {USER_METADATA_BYTES_MAX} are kept"),
        ));
    }
    Ok(attrs)
}

/// Whether a kept header is a checksum (returned only when the client asks for checksums).
fn is_checksum(name: &str) -> bool {
    name.starts_with("x-amz-checksum-")
}

fn owner(doc: &mut String) {
    doc.push_str("<Owner>");
    xml::element(doc, "ID", "root");
    xml::element(doc, "DisplayName", "root");
    doc.push_str("</Owner>");
}

/// What every listing's query says: its parameters, the prefix, the delimiter, max-keys and
/// whether names are URL-encoded.
struct ListArgs {
    args: std::collections::HashMap<String, String>,
    prefix: String,
    delimiter: Option<String>,
    max_keys: usize,
    url: bool,
}

impl ListArgs {
    fn parse(query: &str) -> Result<ListArgs, S3Error> {
        let mut args = std::collections::HashMap::new();
        for (k, v) in ostore_s3::sigv4::query_pairs(query) {
            let (k, v) = (String::from_utf8(k), String::from_utf8(v));
            let (Ok(k), Ok(v)) = (k, v) else {
                return Err(S3Error::new(
                    Code::InvalidArgument,
                    "query parameters must be UTF-8",
                ));
            };
            args.insert(k, v);
        }
        let prefix = args.get("prefix").cloned().unwrap_or_default();
        let delimiter = args.get("delimiter").cloned().filter(|d| !d.is_empty());
        let max_keys: usize = match args.get("max-keys") {
            None => 1000,
            Some(v) => v
                .parse::<u64>()
                .map(|n| n.min(1000) as usize)
                .map_err(|_| S3Error::new(Code::InvalidArgument, "max-keys must be a number"))?,
        };
        let url = match args.get("encoding-type").map(String::as_str) {
            None => false,
            Some("url") => true,
            Some(other) => {
                return Err(S3Error::new(
                    Code::InvalidArgument,
                    format!("encoding-type {other:?}: only url is known"),
                ))
            }
        };
        Ok(ListArgs {
            args,
            prefix,
            delimiter,
            max_keys,
            url,
        })
    }

    /// A name as the listing returns it (URL-encoded with `encoding-type=url`).
    fn enc(&self, s: &str) -> String {
        if self.url {
            let mut out = String::new();
            ostore_s3::sigv4::uri_encode(s.as_bytes(), true, &mut out);
            out
        } else {
            s.to_string()
        }
    }

    /// The elements every listing starts with.
    fn open(&self, doc: &mut String, root: &str, bucket: &str) {
        doc.push_str(xml::DECLARATION);
        doc.push('<');
        doc.push_str(root);
        doc.push_str(" xmlns=\"");
        doc.push_str(xml::NAMESPACE);
        doc.push_str("\">");
        xml::element(doc, "Name", bucket);
        xml::element(doc, "Prefix", &self.enc(&self.prefix));
        if let Some(d) = &self.delimiter {
            xml::element(doc, "Delimiter", &self.enc(d));
        }
        xml::element(doc, "MaxKeys", &self.max_keys.to_string());
        if self.url {
            xml::element(doc, "EncodingType", "url");
        }
    }
}

/// ListObjectsV2 (`v2`) or ListObjects: prefix, delimiter, max-keys, continuation-token or
/// start-after (v2), marker (v1), encoding-type=url, fetch-owner (v2; v1 always has owners).
async fn list_objects(front: &Front, bucket: &str, query: &str, v2: bool) -> Result<Resp, S3Error> {
    use base64::Engine as _;
    let la = ListArgs::parse(query)?;
    let ListArgs {
        args,
        prefix,
        delimiter,
        max_keys,
        ..
    } = &la;
    let (prefix, delimiter, max_keys) = (prefix.clone(), delimiter.clone(), *max_keys);
    let token = args.get("continuation-token").cloned();
    let start_after = if v2 {
        match &token {
            Some(t) => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(t)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| {
                        S3Error::new(
                            Code::InvalidArgument,
                            "the continuation token is not one this server gave",
                        )
                    })?,
            ),
            None => args.get("start-after").cloned(),
        }
    } else {
        args.get("marker").cloned()
    }
    .filter(|s| !s.is_empty());
    let page = if max_keys == 0 {
        ostore_control::meta::DelimitedPage {
            entries: Vec::new(),
            next_start_after: None,
        }
    } else {
        front
            .node
            .meta
            .ask(ask::ListDelimited {
                bucket: bucket.to_string(),
                prefix: prefix.clone(),
                delimiter: delimiter.clone(),
                start_after: start_after.clone(),
                limit: max_keys,
            })
            .await
            .map_err(meta_error)?
    };
    let enc = |s: &str| la.enc(s);
    let fetch_owner = !v2 || args.get("fetch-owner").is_some_and(|v| v == "true");
    let mut doc = String::new();
    la.open(&mut doc, "ListBucketResult", bucket);
    let truncated = page.next_start_after.is_some();
    if v2 {
        xml::element(&mut doc, "KeyCount", &page.entries.len().to_string());
        if let Some(t) = &token {
            xml::element(&mut doc, "ContinuationToken", t);
        }
        if let Some(n) = &page.next_start_after {
            xml::element(
                &mut doc,
                "NextContinuationToken",
                &base64::engine::general_purpose::STANDARD.encode(n),
            );
        }
        if let (None, Some(sa)) = (&token, args.get("start-after")) {
            xml::element(&mut doc, "StartAfter", &enc(sa));
        }
    } else {
        xml::element(
            &mut doc,
            "Marker",
            &enc(args.get("marker").map_or("", String::as_str)),
        );
        if let Some(n) = &page.next_start_after {
            xml::element(&mut doc, "NextMarker", &enc(n));
        }
    }
    xml::element(
        &mut doc,
        "IsTruncated",
        if truncated { "true" } else { "false" },
    );
    let mut prefixes = String::new();
    for e in &page.entries {
        match e {
            ostore_control::meta::Listed::Object(key, v) => {
                doc.push_str("<Contents>");
                xml::element(&mut doc, "Key", &enc(key));
                xml::element(
                    &mut doc,
                    "LastModified",
                    &ostore_s3::time::iso8601_ms(v.created_ms),
                );
                xml::element(&mut doc, "ETag", &etag_of(v));
                xml::element(&mut doc, "Size", &v.size_bytes.to_string());
                if fetch_owner {
                    owner(&mut doc);
                }
                xml::element(&mut doc, "StorageClass", "STANDARD");
                doc.push_str("</Contents>");
            }
            ostore_control::meta::Listed::Prefix(p) => {
                common_prefix(&mut prefixes, &enc(p));
            }
        }
    }
    doc.push_str(&prefixes);
    doc.push_str("</ListBucketResult>");
    Ok(xml_response(StatusCode::OK, doc))
}

/// A native API error (from the store's read path) in S3's terms.
fn api_error(e: crate::web::ApiError) -> S3Error {
    let code = match e.status.as_u16() {
        404 => Code::NoSuchKey,
        412 => Code::PreconditionFailed,
        416 => Code::InvalidRange,
        503 => Code::ServiceUnavailable,
        400 => Code::InvalidRequest,
        _ => Code::InternalError,
    };
    S3Error::new(code, e.message)
}

/// An S3 `versionId`: ostore's versions are numbers.
fn version_id(query: &str) -> Result<Option<u64>, S3Error> {
    for (k, v) in ostore_s3::sigv4::query_pairs(query) {
        if k == b"versionId" {
            return parse_version(&String::from_utf8_lossy(&v)).map(Some);
        }
    }
    Ok(None)
}

/// GetObject and HeadObject: a version (`versionId`), `Range`, the conditional headers, the
/// `response-*` overrides.
async fn get_object(
    front: &Front,
    bucket: &str,
    key: &str,
    query: &str,
    headers: &http::HeaderMap,
    head_only: bool,
) -> Result<Resp, S3Error> {
    use crate::web::{preconditions, Precondition};
    use ostore_engine::range::{resolve, RangeDecision};
    let version = version_id(query)?;
    let mut overrides = Vec::new();
    let mut part_number: Option<u32> = None;
    for (k, v) in ostore_s3::sigv4::query_pairs(query) {
        let name = match k.as_slice() {
            b"response-content-type" => header::CONTENT_TYPE,
            b"response-content-disposition" => header::CONTENT_DISPOSITION,
            b"response-content-encoding" => header::CONTENT_ENCODING,
            b"response-content-language" => header::CONTENT_LANGUAGE,
            b"response-cache-control" => header::CACHE_CONTROL,
            b"response-expires" => header::EXPIRES,
            b"partNumber" => {
                part_number = Some(
                    std::str::from_utf8(&v)
                        .ok()
                        .and_then(|v| v.parse::<u32>().ok())
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| {
                            S3Error::new(Code::InvalidArgument, "partNumber is 1 to 10000")
                        })?,
                );
                continue;
            }
            _ => continue,
        };
        let v = HeaderValue::from_bytes(&v).map_err(|_| {
            S3Error::new(
                Code::InvalidArgument,
                "a response-* override is not a header value",
            )
        })?;
        overrides.push((name, v));
    }
    let resolved: ostore_control::meta::Resolved = front
        .node
        .meta
        .ask(ask::Resolve {
            bucket: bucket.to_string(),
            key: key.to_string(),
            version,
        })
        .await
        .map_err(meta_error)?;
    let v = &resolved.version;
    if resolved.content.damaged {
        return Err(S3Error::new(
            Code::ServiceUnavailable,
            "the object is damaged: fewer than K of its shards are readable",
        ));
    }
    let etag = etag_of(v);
    let mut h = http::HeaderMap::new();
    h.insert(header::ETAG, HeaderValue::from_str(&etag).expect("hex"));
    h.insert("x-amz-version-id", version_header(v.version, resolved.null));
    h.insert(
        header::LAST_MODIFIED,
        HeaderValue::from_str(&crate::time::http_date(v.created_ms)).expect("date"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("binary/octet-stream"),
    );
    let checksums = headers
        .get("x-amz-checksum-mode")
        .is_some_and(|m| m.as_bytes().eq_ignore_ascii_case(b"enabled"));
    for (n, value) in &v.attrs.headers {
        if is_checksum(n) && !checksums {
            continue;
        }
        if let (Ok(n), Ok(value)) = (
            http::HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            h.insert(n, value);
        }
    }
    let ignore_range = match preconditions(headers, &etag, v.created_ms) {
        Precondition::Failed => {
            return Err(S3Error::new(
                Code::PreconditionFailed,
                "at least one of the preconditions did not hold",
            ))
        }
        Precondition::NotModified => {
            let mut r = empty(StatusCode::NOT_MODIFIED);
            *r.headers_mut() = h;
            return Ok(r);
        }
        Precondition::Proceed { ignore_range } => ignore_range,
    };
    let size = v.size_bytes;
    let range_header = (!ignore_range)
        .then(|| headers.get(header::RANGE).and_then(|v| v.to_str().ok()))
        .flatten();
    // `partNumber`: one part of an object assembled from parts (its bytes, as a range); an
    // object written whole is its only part.
    let part_range = match part_number {
        None => None,
        Some(n) if resolved.parts.is_empty() => {
            if n != 1 {
                return Err(S3Error::new(
                    Code::InvalidPartNumber,
                    "the object was not uploaded in parts: its only part is 1",
                ));
            }
            None
        }
        Some(n) => {
            let i = n as usize - 1;
            let Some(p) = resolved.parts.get(i) else {
                return Err(S3Error::new(
                    Code::InvalidPartNumber,
                    format!("the object has {} parts", resolved.parts.len()),
                ));
            };
            let start: u64 = resolved.parts[..i].iter().map(|p| p.size_bytes).sum();
            Some(format!("bytes={start}-{}", start + p.size_bytes - 1))
        }
    };
    if part_number.is_some() && !resolved.parts.is_empty() {
        h.insert(
            "x-amz-mp-parts-count",
            HeaderValue::from(resolved.parts.len()),
        );
        if range_header.is_some() {
            return Err(S3Error::new(
                Code::InvalidRequest,
                "Range and partNumber cannot both be given",
            ));
        }
    }
    let range_header = part_range.as_deref().or(range_header);
    let (status, range) = match resolve(range_header, size) {
        RangeDecision::Full => (StatusCode::OK, 0..size),
        RangeDecision::Partial(r) => {
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {}-{}/{size}", r.start, r.end - 1))
                    .expect("range"),
            );
            // A checksum is of the whole object, not of a range.
            let sums: Vec<http::HeaderName> = h
                .keys()
                .filter(|n| is_checksum(n.as_str()))
                .cloned()
                .collect();
            for n in sums {
                h.remove(n);
            }
            (StatusCode::PARTIAL_CONTENT, r)
        }
        RangeDecision::Unsatisfiable => {
            return Err(S3Error::new(
                Code::InvalidRange,
                format!("the requested range is not satisfiable: the object has {size} bytes"),
            ))
        }
    };
    h.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(range.end - range.start),
    );
    for (n, v) in overrides {
        h.insert(n, v);
    }
    let body = if head_only {
        RespBody::Full(None)
    } else {
        crate::http::object_body(&front.node, &resolved, range, None)
            .await
            .map_err(api_error)?
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = h;
    Ok(r)
}

/// Deletes one key (a delete marker: the key reads as absent, its versions stay) or, with a
/// version, that version. What is already absent deletes fine, as in S3.
async fn delete_one(
    front: &Front,
    bucket: &str,
    key: &str,
    version: Option<u64>,
) -> Result<Option<ostore_control::meta::Appended>, S3Error> {
    let r = match version {
        Some(v) => front
            .node
            .meta
            .ask(ask::DeleteVersion {
                bucket: bucket.to_string(),
                key: key.to_string(),
                version: v,
            })
            .await
            .map(|()| None),
        None => {
            front
                .node
                .meta
                .ask(ask::DeleteKey {
                    bucket: bucket.to_string(),
                    key: key.to_string(),
                })
                .await
        }
    };
    match r {
        Ok(marker) => Ok(marker),
        Err(MetaError::NoSuchKey) | Err(MetaError::NoSuchVersion) => Ok(None),
        Err(e) => Err(meta_error(e)),
    }
}

async fn delete_object(
    front: &Front,
    bucket: &str,
    key: &str,
    query: &str,
) -> Result<Resp, S3Error> {
    let version = version_id(query)?;
    let marker = delete_one(front, bucket, key, version).await?;
    let mut r = empty(StatusCode::NO_CONTENT);
    if let Some(m) = marker {
        r.headers_mut()
            .insert("x-amz-delete-marker", HeaderValue::from_static("true"));
        r.headers_mut()
            .insert("x-amz-version-id", version_header(m.version, m.null));
    } else if let Some(v) = version {
        r.headers_mut()
            .insert("x-amz-version-id", version_header(v, false));
    }
    Ok(r)
}

async fn delete_objects(front: &Front, bucket: &str, body: &[u8]) -> Result<Resp, S3Error> {
    let (objects, quiet) = xml::delete_objects(body)?;
    let mut doc = String::from(xml::DECLARATION);
    doc.push_str("<DeleteResult xmlns=\"");
    doc.push_str(xml::NAMESPACE);
    doc.push_str("\">");
    for o in objects {
        let version = o.version_id.as_deref().map(parse_version).transpose();
        let r = match version {
            Ok(v) => delete_one(front, bucket, &o.key, v).await.map(|m| (v, m)),
            Err(e) => Err(e),
        };
        match r {
            Ok((v, marker)) => {
                if quiet {
                    continue;
                }
                doc.push_str("<Deleted>");
                xml::element(&mut doc, "Key", &o.key);
                if let Some(v) = v {
                    xml::element(&mut doc, "VersionId", &version_label(v, false));
                }
                if let Some(m) = marker {
                    xml::element(&mut doc, "DeleteMarker", "true");
                    xml::element(
                        &mut doc,
                        "DeleteMarkerVersionId",
                        &version_label(m.version, m.null),
                    );
                }
                doc.push_str("</Deleted>");
            }
            Err(e) if e.code == Code::NoSuchBucket => return Err(e),
            Err(e) => {
                doc.push_str("<Error>");
                xml::element(&mut doc, "Key", &o.key);
                if let Some(v) = &o.version_id {
                    xml::element(&mut doc, "VersionId", v);
                }
                xml::element(&mut doc, "Code", e.code.as_str());
                xml::element(&mut doc, "Message", &e.message);
                doc.push_str("</Error>");
            }
        }
    }
    doc.push_str("</DeleteResult>");
    Ok(xml_response(StatusCode::OK, doc))
}

/// A PutObject body as the store reads it: `aws-chunked` decoded when it is, every byte fed to
/// the checks the request asked for; at its end the checks decide, so a body that fails them
/// ends in an error before anything is committed (the S3 error kept for the answer).
struct S3Body<'a> {
    body: Incoming,
    front: &'a Front,
    decoder: Option<ostore_s3::chunked::Decoder>,
    pending: Bytes,
    check: Option<ostore_s3::checksum::BodyCheck>,
    checked: Option<ostore_s3::checksum::Checked>,
    failed: Option<S3Error>,
    /// Bytes the request declared (Content-Length, or x-amz-decoded-content-length) and bytes
    /// handed on so far.
    declared: u64,
    passed: u64,
}

impl S3Body<'_> {
    fn fail(&mut self, e: S3Error) -> Option<Result<Bytes, crate::store::BodyFault>> {
        let m = e.to_string();
        self.failed = Some(e);
        Some(Err(crate::store::BodyFault::Broken(m)))
    }

    fn finish(&mut self) -> Option<Result<Bytes, crate::store::BodyFault>> {
        let check = self.check.take()?;
        if self.passed != self.declared {
            return self.fail(S3Error::new(
                Code::IncompleteBody,
                format!(
                    "the body has {} bytes, not the {} declared",
                    self.passed, self.declared
                ),
            ));
        }
        let trailers = self
            .decoder
            .as_ref()
            .map(|d| d.trailers().to_vec())
            .unwrap_or_default();
        match check.finish(&trailers) {
            Ok(c) => {
                self.checked = Some(c);
                None
            }
            Err(e) => self.fail(e),
        }
    }

    fn pass(&mut self, b: Bytes) -> Option<Result<Bytes, crate::store::BodyFault>> {
        if let Some(c) = &mut self.check {
            c.update(&b);
        }
        self.passed = self.passed.saturating_add(b.len() as u64);
        if self.passed > self.declared {
            return self.fail(S3Error::new(
                Code::IncompleteBody,
                format!(
                    "the body is longer than the {} bytes declared",
                    self.declared
                ),
            ));
        }
        self.front
            .node
            .metrics
            .bytes_in
            .fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Some(Ok(b))
    }
}

impl crate::store::BodySource for S3Body<'_> {
    fn complete(&mut self, attrs: &mut ObjectAttrs) {
        if let Some(c) = &self.checked {
            attrs.md5 = Some(c.md5);
            if let Some((a, value)) = &c.checksum {
                attrs.headers.push((a.header().to_string(), value.clone()));
            }
        }
    }

    async fn next_chunk(&mut self) -> Option<Result<Bytes, crate::store::BodyFault>> {
        use ostore_s3::chunked::Step;
        loop {
            self.check.as_ref()?;
            if let Some(d) = &mut self.decoder {
                match d.next(&mut self.pending) {
                    Ok(Step::Data(b)) => return self.pass(b),
                    Ok(Step::Done) => return self.finish(),
                    Ok(Step::NeedMore) => {}
                    Err(e) => return self.fail(e),
                }
            }
            let idle = self.front.limits.body_idle;
            let Some(frame) = ostore_server::conn::within(idle, self.body.frame()).await else {
                return Some(Err(crate::store::BodyFault::Stalled(idle)));
            };
            match frame {
                None if self.decoder.is_some() => {
                    return self.fail(S3Error::new(
                        Code::IncompleteBody,
                        "the aws-chunked body ended before its last chunk",
                    ))
                }
                None => return self.finish(),
                Some(Err(e)) => {
                    return Some(Err(crate::store::BodyFault::Broken(format!(
                        "reading the request body: {e}"
                    ))))
                }
                Some(Ok(f)) => {
                    let Ok(d) = f.into_data() else { continue };
                    if d.is_empty() {
                        continue;
                    }
                    if self.decoder.is_some() {
                        self.pending = d;
                    } else {
                        return self.pass(d);
                    }
                }
            }
        }
    }
}

fn store_error(e: crate::store::StoreError, body: &S3Body<'_>) -> S3Error {
    use crate::store::{BodyFault, StoreError};
    if let Some(f) = &body.failed {
        return f.clone();
    }
    match e {
        StoreError::TooLarge => S3Error::new(Code::EntityTooLarge, e.to_string()),
        StoreError::Body(BodyFault::Stalled(_)) => {
            S3Error::new(Code::RequestTimeout, e.to_string())
        }
        StoreError::Body(BodyFault::Broken(m)) => S3Error::new(Code::IncompleteBody, m),
        StoreError::Meta(m) => meta_error(m),
        StoreError::InsufficientStorage(m) | StoreError::NotEnoughNodes(m) => {
            S3Error::new(Code::ServiceUnavailable, m)
        }
        other => S3Error::new(Code::InternalError, other.to_string()),
    }
}

fn header_u64(h: &http::HeaderMap, name: &str) -> Result<Option<u64>, S3Error> {
    h.get(name)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| {
                    S3Error::new(Code::InvalidArgument, format!("{name} is not a number"))
                })
        })
        .transpose()
}

/// A request body (plain or `aws-chunked`), checked as it streams (the signed SHA-256,
/// `Content-MD5`, `x-amz-checksum-*`, the declared length), stored as the native PUT stores it
/// (erasure coded, deduplicated, compressed where it pays) and committed as `commit` says only
/// once the checks passed. What the checks found comes back with the commit.
#[allow(clippy::too_many_arguments)]
async fn store_body(
    front: &Front,
    bucket: &str,
    key: &str,
    headers: &http::HeaderMap,
    body: Incoming,
    v: &Verified,
    commit: &crate::store::Commit,
    attrs: ObjectAttrs,
) -> Result<(crate::store::Committed, ostore_s3::checksum::Checked), S3Error> {
    require_valid_key(key)?;
    let chunked = matches!(v.payload, ostore_s3::sigv4::Payload::Streaming { .. });
    let length = if chunked {
        header_u64(headers, "x-amz-decoded-content-length")?.ok_or_else(|| {
            S3Error::new(
                Code::MissingContentLength,
                "an aws-chunked body needs x-amz-decoded-content-length",
            )
        })?
    } else {
        header_u64(headers, "content-length")?.ok_or_else(|| {
            S3Error::new(Code::MissingContentLength, "a body needs a Content-Length")
        })?
    };
    if length > 5 << 30 {
        return Err(S3Error::new(
            Code::EntityTooLarge,
            "a single PUT (or part) is at most 5 GiB: upload larger objects in parts",
        ));
    }
    let decoder = match v.payload {
        ostore_s3::sigv4::Payload::Streaming { trailer, .. } => {
            Some(ostore_s3::chunked::Decoder::new(v.chain.clone(), trailer))
        }
        _ => None,
    };
    let mut src = S3Body {
        body,
        front,
        decoder,
        pending: Bytes::new(),
        check: Some(ostore_s3::checksum::BodyCheck::new(&v.payload, headers)?),
        checked: None,
        failed: None,
        declared: length,
        passed: 0,
    };
    let put = crate::store::put(
        &front.node,
        bucket,
        key,
        None,
        Some(length),
        commit,
        attrs,
        &mut src,
    );
    match put.await {
        Ok(c) => match src.checked {
            Some(checked) => Ok((c, checked)),
            None => Err(S3Error::new(
                Code::InternalError,
                "the body was stored without its checks",
            )),
        },
        Err(e) => Err(store_error(e, &src)),
    }
}

/// The ETag of a body written whole: its MD5.
fn md5_etag(md5: &[u8; 16]) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{}\"", hex::encode(md5))).expect("hex")
}

/// PutObject: the body stored as a new version, with the attributes its headers give;
/// `If-None-Match: *` and `If-Match` make it conditional.
async fn put_object(
    front: &Front,
    bucket: &str,
    key: &str,
    headers: &http::HeaderMap,
    body: Incoming,
    v: &Verified,
) -> Result<Resp, S3Error> {
    let commit = crate::store::Commit::Version(crate::web::s3_write_condition(headers));
    let attrs = request_attrs(headers)?;
    let (committed, checked) =
        store_body(front, bucket, key, headers, body, v, &commit, attrs).await?;
    let mut r = empty(StatusCode::OK);
    r.headers_mut().insert(header::ETAG, md5_etag(&checked.md5));
    r.headers_mut().insert(
        "x-amz-version-id",
        version_header(committed.outcome.version, committed.outcome.null),
    );
    if let Some((a, value)) = checked.checksum {
        if let Ok(v) = HeaderValue::from_str(&value) {
            r.headers_mut().insert(a.header(), v);
        }
    }
    Ok(r)
}

/// One `<CommonPrefixes>` entry of a listing, `prefix` encoded as the listing asked.
fn common_prefix(out: &mut String, prefix: &str) {
    out.push_str("<CommonPrefixes>");
    xml::element(out, "Prefix", prefix);
    out.push_str("</CommonPrefixes>");
}

/// A key a write may name: 1 to 1024 bytes of UTF-8 without NUL.
fn require_valid_key(key: &str) -> Result<(), S3Error> {
    ostore_control::keys::valid_object_key(key)
        .then_some(())
        .ok_or_else(|| {
            S3Error::new(
                Code::InvalidArgument,
                "a key is 1 to 1024 bytes of UTF-8 without NUL",
            )
        })
}

/// A version id from a request: ostore's versions are numbers, and `null` names a key's null
/// version (`meta::NULL_VERSION`).
fn parse_version(v: &str) -> Result<u64, S3Error> {
    if v == "null" {
        return Ok(ostore_control::meta::NULL_VERSION);
    }
    match v.parse() {
        Ok(n) if n != ostore_control::meta::NULL_VERSION => Ok(n),
        _ => Err(S3Error::new(
            Code::InvalidArgument,
            format!("invalid version id {v:?} (ostore's version ids are numbers, or null)"),
        )),
    }
}

/// A version id as S3 shows it: `null` for a key's null version, else its number.
fn version_label(version: u64, null: bool) -> String {
    if null || version == ostore_control::meta::NULL_VERSION {
        "null".to_string()
    } else {
        version.to_string()
    }
}

/// `x-amz-version-id`'s value.
fn version_header(version: u64, null: bool) -> HeaderValue {
    HeaderValue::from_str(&version_label(version, null)).expect("digits or null")
}

/// The conditions `x-amz-copy-source-if-*` put on the source of a copy, as `If-*` headers.
fn copy_source_conditions(headers: &http::HeaderMap) -> http::HeaderMap {
    let mut out = http::HeaderMap::new();
    for (from, to) in [
        ("x-amz-copy-source-if-match", header::IF_MATCH),
        ("x-amz-copy-source-if-none-match", header::IF_NONE_MATCH),
        (
            "x-amz-copy-source-if-modified-since",
            header::IF_MODIFIED_SINCE,
        ),
        (
            "x-amz-copy-source-if-unmodified-since",
            header::IF_UNMODIFIED_SINCE,
        ),
    ] {
        if let Some(v) = headers.get(from) {
            out.insert(to, v.clone());
        }
    }
    out
}

/// The version a copy reads from: `x-amz-copy-source` resolved, its `x-amz-copy-source-if-*`
/// conditions checked (any that fails answers 412, as S3 does for copies).
async fn copy_source(
    front: &Front,
    headers: &http::HeaderMap,
) -> Result<ostore_control::meta::Resolved, S3Error> {
    use crate::web::{preconditions, Precondition};
    let value = headers
        .get("x-amz-copy-source")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| S3Error::new(Code::InvalidArgument, "x-amz-copy-source is not ASCII"))?;
    let src = ostore_s3::route::copy_source(value)?;
    let version = src.version_id.as_deref().map(parse_version).transpose()?;
    let resolved: ostore_control::meta::Resolved = front
        .node
        .meta
        .ask(ask::Resolve {
            bucket: src.bucket,
            key: src.key,
            version,
        })
        .await
        .map_err(meta_error)?;
    if resolved.content.damaged {
        return Err(S3Error::new(
            Code::ServiceUnavailable,
            "the source object is damaged: fewer than K of its shards are readable",
        ));
    }
    let v = &resolved.version;
    match preconditions(&copy_source_conditions(headers), &etag_of(v), v.created_ms) {
        Precondition::Proceed { .. } => Ok(resolved),
        Precondition::NotModified | Precondition::Failed => Err(S3Error::new(
            Code::PreconditionFailed,
            "at least one of the copy source's preconditions did not hold",
        )),
    }
}

/// CopyObject: a new version of `bucket/key` that refers to the source's content (no byte is
/// read or written, whatever the size), with the source's attributes (`COPY`, the default) or
/// the request's (`REPLACE`; the content's MD5 and checksum stay, being the same bytes'). The
/// source's `x-amz-copy-source-if-*` and the destination's `If-Match`/`If-None-Match` hold.
async fn copy_object(
    front: &Front,
    bucket: &str,
    key: &str,
    headers: &http::HeaderMap,
) -> Result<Resp, S3Error> {
    require_valid_key(key)?;
    let replace = match headers
        .get("x-amz-metadata-directive")
        .map(|v| v.as_bytes())
    {
        None | Some(b"COPY") => false,
        Some(b"REPLACE") => true,
        Some(_) => {
            return Err(S3Error::new(
                Code::InvalidArgument,
                "x-amz-metadata-directive is COPY or REPLACE",
            ))
        }
    };
    let value = headers
        .get("x-amz-copy-source")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let named = ostore_s3::route::copy_source(value)?;
    if !replace && named.bucket == bucket && named.key == key && named.version_id.is_none() {
        return Err(S3Error::new(
            Code::InvalidRequest,
            "This copy request is illegal because it is trying to copy an object to itself \
             without changing the object's metadata",
        ));
    }
    let src = copy_source(front, headers).await?;
    let sv = &src.version;
    let attrs = if replace {
        let mut a = request_attrs(headers)?;
        a.md5 = sv.attrs.md5;
        a.parts = sv.attrs.parts;
        a.headers.extend(
            sv.attrs
                .headers
                .iter()
                .filter(|(n, _)| is_checksum(n))
                .cloned(),
        );
        a
    } else {
        sv.attrs.clone()
    };
    let outcome = front
        .node
        .meta
        .ask(ask::PutExisting {
            bucket: bucket.to_string(),
            key: key.to_string(),
            blake3: sv.blake3,
            cond: crate::web::s3_write_condition(headers),
            attrs: attrs.clone(),
        })
        .await
        .map_err(meta_error)?
        .ok_or_else(|| {
            S3Error::new(
                Code::ServiceUnavailable,
                "the source's content was found damaged meanwhile: copy again later",
            )
        })?;
    let copied = VersionRec {
        version: outcome.version,
        created_ms: outcome.created_ms,
        size_bytes: sv.size_bytes,
        blake3: sv.blake3,
        delete_marker: false,
        attrs,
    };
    let mut doc = String::from(xml::DECLARATION);
    doc.push_str("<CopyObjectResult xmlns=\"");
    doc.push_str(xml::NAMESPACE);
    doc.push_str("\">");
    xml::element(
        &mut doc,
        "LastModified",
        &ostore_s3::time::iso8601_ms(copied.created_ms),
    );
    xml::element(&mut doc, "ETag", &etag_of(&copied));
    doc.push_str("</CopyObjectResult>");
    let mut r = xml_response(StatusCode::OK, doc);
    r.headers_mut().insert(
        "x-amz-version-id",
        version_header(copied.version, outcome.null),
    );
    r.headers_mut().insert(
        "x-amz-copy-source-version-id",
        version_header(sv.version, src.null),
    );
    Ok(r)
}

/// GetBucketVersioning: a bucket keeps every version of every key (until a retention setting
/// trims them), which is S3's `Enabled`, unless its versioning was suspended.
async fn get_versioning(front: &Front, bucket: &str) -> Result<Resp, S3Error> {
    let suspended = front
        .node
        .meta
        .ask(ask::VersioningSuspended {
            bucket: bucket.to_string(),
        })
        .await
        .map_err(meta_error)?;
    let mut doc = String::from(xml::DECLARATION);
    doc.push_str("<VersioningConfiguration xmlns=\"");
    doc.push_str(xml::NAMESPACE);
    doc.push_str("\"><Status>");
    doc.push_str(if suspended { "Suspended" } else { "Enabled" });
    doc.push_str("</Status></VersioningConfiguration>");
    Ok(xml_response(StatusCode::OK, doc))
}

/// PutBucketVersioning: `Enabled` keeps every version (every bucket starts so); `Suspended`
/// makes each new version of a key its `null` version, replacing the previous null one, while
/// the versions written before stay. MFA delete is not offered.
async fn put_versioning(front: &Front, bucket: &str, body: &[u8]) -> Result<Resp, S3Error> {
    let Some(enabled) = xml::versioning(body)? else {
        require_bucket(front, bucket).await?;
        return Ok(empty(StatusCode::OK));
    };
    front
        .node
        .meta
        .ask(ask::SetVersioning {
            bucket: bucket.to_string(),
            suspend: !enabled,
        })
        .await
        .map_err(meta_error)?;
    Ok(empty(StatusCode::OK))
}

/// ListObjectVersions: every version and delete marker under a prefix, rolled up at a
/// delimiter, paged with key-marker and version-id-marker.
async fn list_versions(front: &Front, bucket: &str, query: &str) -> Result<Resp, S3Error> {
    let la = ListArgs::parse(query)?;
    let key_marker = la.args.get("key-marker").cloned().filter(|k| !k.is_empty());
    let version_marker = match la.args.get("version-id-marker").filter(|v| !v.is_empty()) {
        None => None,
        Some(_) if key_marker.is_none() => {
            return Err(S3Error::new(
                Code::InvalidArgument,
                "a version-id-marker needs a key-marker",
            ))
        }
        Some(v) => Some(parse_version(v)?),
    };
    let page = if la.max_keys == 0 {
        ostore_control::meta::VersionPage {
            entries: Vec::new(),
            next: None,
        }
    } else {
        front
            .node
            .meta
            .ask(ask::ListVersions {
                bucket: bucket.to_string(),
                prefix: la.prefix.clone(),
                delimiter: la.delimiter.clone(),
                key_marker: key_marker.clone(),
                version_marker,
                limit: la.max_keys,
            })
            .await
            .map_err(meta_error)?
    };
    let mut doc = String::new();
    la.open(&mut doc, "ListVersionsResult", bucket);
    xml::element(
        &mut doc,
        "KeyMarker",
        &la.enc(key_marker.as_deref().unwrap_or("")),
    );
    xml::element(
        &mut doc,
        "VersionIdMarker",
        &version_marker.map(|v| v.to_string()).unwrap_or_default(),
    );
    if let Some((k, v)) = &page.next {
        xml::element(&mut doc, "NextKeyMarker", &la.enc(k));
        if let Some(v) = v {
            xml::element(&mut doc, "NextVersionIdMarker", &v.to_string());
        }
    }
    xml::element(
        &mut doc,
        "IsTruncated",
        if page.next.is_some() { "true" } else { "false" },
    );
    let mut prefixes = String::new();
    for e in &page.entries {
        use ostore_control::meta::VersionListed;
        match e {
            VersionListed::Version {
                key,
                version,
                latest,
                null,
            } => {
                let tag = if version.delete_marker {
                    "DeleteMarker"
                } else {
                    "Version"
                };
                doc.push('<');
                doc.push_str(tag);
                doc.push('>');
                xml::element(&mut doc, "Key", &la.enc(key));
                xml::element(
                    &mut doc,
                    "VersionId",
                    &version_label(version.version, *null),
                );
                xml::element(&mut doc, "IsLatest", if *latest { "true" } else { "false" });
                xml::element(
                    &mut doc,
                    "LastModified",
                    &ostore_s3::time::iso8601_ms(version.created_ms),
                );
                if !version.delete_marker {
                    xml::element(&mut doc, "ETag", &etag_of(version));
                    xml::element(&mut doc, "Size", &version.size_bytes.to_string());
                    xml::element(&mut doc, "StorageClass", "STANDARD");
                }
                owner(&mut doc);
                doc.push_str("</");
                doc.push_str(tag);
                doc.push('>');
            }
            VersionListed::Prefix(p) => {
                common_prefix(&mut prefixes, &la.enc(p));
            }
        }
    }
    doc.push_str(&prefixes);
    doc.push_str("</ListVersionsResult>");
    Ok(xml_response(StatusCode::OK, doc))
}
