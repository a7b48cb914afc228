//! Which S3 operation a request is, from its method, path (path-style: `/bucket/key`) and
//! query. Bucket names are checked by the caller (`control::keys::valid_bucket`, the one rule
//! for every API). Sub-resources ostore does not serve (ACLs, policies, tagging, lifecycle, …) are
//! named in a `NotImplemented` error rather than mistaken for another operation.

use crate::error::{Code, S3Error};
use crate::sigv4::query_pairs;

/// Longest object key, in bytes (S3's limit).
pub const KEY_BYTES_MAX: usize = 1024;

/// An S3 operation and what it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    ListBuckets,
    CreateBucket { bucket: String },
    HeadBucket { bucket: String },
    DeleteBucket { bucket: String },
    GetBucketLocation { bucket: String },
    GetBucketVersioning { bucket: String },
    PutBucketVersioning { bucket: String },
    ListObjects { bucket: String },
    ListObjectsV2 { bucket: String },
    ListObjectVersions { bucket: String },
    ListMultipartUploads { bucket: String },
    DeleteObjects { bucket: String },
    PutObject { bucket: String, key: String },
    CopyObject { bucket: String, key: String },
    GetObject { bucket: String, key: String },
    HeadObject { bucket: String, key: String },
    DeleteObject { bucket: String, key: String },
    CreateMultipartUpload { bucket: String, key: String },
    UploadPart { bucket: String, key: String },
    UploadPartCopy { bucket: String, key: String },
    CompleteMultipartUpload { bucket: String, key: String },
    AbortMultipartUpload { bucket: String, key: String },
    ListParts { bucket: String, key: String },
}

impl Op {
    /// The operation's name as AWS's API reference gives it (for metrics and logs).
    pub fn name(&self) -> &'static str {
        match self {
            Op::ListBuckets => "ListBuckets",
            Op::CreateBucket { .. } => "CreateBucket",
            Op::HeadBucket { .. } => "HeadBucket",
            Op::DeleteBucket { .. } => "DeleteBucket",
            Op::GetBucketLocation { .. } => "GetBucketLocation",
            Op::GetBucketVersioning { .. } => "GetBucketVersioning",
            Op::PutBucketVersioning { .. } => "PutBucketVersioning",
            Op::ListObjects { .. } => "ListObjects",
            Op::ListObjectsV2 { .. } => "ListObjectsV2",
            Op::ListObjectVersions { .. } => "ListObjectVersions",
            Op::ListMultipartUploads { .. } => "ListMultipartUploads",
            Op::DeleteObjects { .. } => "DeleteObjects",
            Op::PutObject { .. } => "PutObject",
            Op::CopyObject { .. } => "CopyObject",
            Op::GetObject { .. } => "GetObject",
            Op::HeadObject { .. } => "HeadObject",
            Op::DeleteObject { .. } => "DeleteObject",
            Op::CreateMultipartUpload { .. } => "CreateMultipartUpload",
            Op::UploadPart { .. } => "UploadPart",
            Op::UploadPartCopy { .. } => "UploadPartCopy",
            Op::CompleteMultipartUpload { .. } => "CompleteMultipartUpload",
            Op::AbortMultipartUpload { .. } => "AbortMultipartUpload",
            Op::ListParts { .. } => "ListParts",
        }
    }

    /// The bucket it names, if any.
    pub fn bucket(&self) -> Option<&str> {
        match self {
            Op::ListBuckets => None,
            Op::CreateBucket { bucket }
            | Op::HeadBucket { bucket }
            | Op::DeleteBucket { bucket }
            | Op::GetBucketLocation { bucket }
            | Op::GetBucketVersioning { bucket }
            | Op::PutBucketVersioning { bucket }
            | Op::ListObjects { bucket }
            | Op::ListObjectsV2 { bucket }
            | Op::ListObjectVersions { bucket }
            | Op::ListMultipartUploads { bucket }
            | Op::DeleteObjects { bucket }
            | Op::PutObject { bucket, .. }
            | Op::CopyObject { bucket, .. }
            | Op::GetObject { bucket, .. }
            | Op::HeadObject { bucket, .. }
            | Op::DeleteObject { bucket, .. }
            | Op::CreateMultipartUpload { bucket, .. }
            | Op::UploadPart { bucket, .. }
            | Op::UploadPartCopy { bucket, .. }
            | Op::CompleteMultipartUpload { bucket, .. }
            | Op::AbortMultipartUpload { bucket, .. }
            | Op::ListParts { bucket, .. } => Some(bucket),
        }
    }

    /// Whether it only reads (a read-only key may make it).
    pub fn reads_only(&self) -> bool {
        matches!(
            self,
            Op::ListBuckets
                | Op::HeadBucket { .. }
                | Op::GetBucketLocation { .. }
                | Op::GetBucketVersioning { .. }
                | Op::ListObjects { .. }
                | Op::ListObjectsV2 { .. }
                | Op::ListObjectVersions { .. }
                | Op::ListMultipartUploads { .. }
                | Op::GetObject { .. }
                | Op::HeadObject { .. }
                | Op::ListParts { .. }
        )
    }
}

/// Sub-resources S3 has and ostore does not serve yet.
const UNSERVED: &[&str] = &[
    "acl",
    "policy",
    "policyStatus",
    "cors",
    "lifecycle",
    "tagging",
    "website",
    "logging",
    "notification",
    "replication",
    "encryption",
    "object-lock",
    "legal-hold",
    "retention",
    "requestPayment",
    "accelerate",
    "analytics",
    "inventory",
    "metrics",
    "ownershipControls",
    "publicAccessBlock",
    "intelligent-tiering",
    "restore",
    "select",
    "torrent",
    "attributes",
];

/// The operation `method path?query` asks for; `copy_source` says whether the request carries
/// `x-amz-copy-source`.
pub fn route(method: &str, path: &str, query: &str, copy_source: bool) -> Result<Op, S3Error> {
    let pairs = query_pairs(query);
    let has = |n: &str| pairs.iter().any(|(k, _)| k.as_slice() == n.as_bytes());
    if let Some((k, _)) = pairs
        .iter()
        .find(|(k, _)| UNSERVED.iter().any(|u| u.as_bytes() == k.as_slice()))
    {
        return Err(S3Error::new(
            Code::NotImplemented,
            format!(
                "the {} sub-resource is not served by ostore",
                String::from_utf8_lossy(k)
            ),
        ));
    }
    let raw = path.strip_prefix('/').unwrap_or(path);
    let (b, k) = match raw.split_once('/') {
        Some((b, k)) => (b, Some(k)),
        None => (raw, None),
    };
    let decode = |s: &str| -> Result<String, S3Error> {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| S3Error::new(Code::InvalidArgument, "the path is not UTF-8"))
    };
    let bucket = decode(b)?;
    if bucket.contains('/') {
        return Err(S3Error::new(
            Code::InvalidBucketName,
            "a bucket name is one path segment (it was sent with an encoded /)",
        ));
    }
    let key = match k {
        Some(k) if !k.is_empty() => Some(decode(k)?),
        _ => None,
    };
    let unsupported = || {
        S3Error::new(
            Code::MethodNotAllowed,
            format!("{method} is not allowed on this resource"),
        )
    };
    if bucket.is_empty() {
        return match method {
            "GET" => Ok(Op::ListBuckets),
            _ => Err(unsupported()),
        };
    }
    let Some(key) = key else {
        return Ok(match method {
            "PUT" if has("versioning") => Op::PutBucketVersioning { bucket },
            "PUT" => Op::CreateBucket { bucket },
            "HEAD" => Op::HeadBucket { bucket },
            "DELETE" => Op::DeleteBucket { bucket },
            "GET" if has("location") => Op::GetBucketLocation { bucket },
            "GET" if has("versioning") => Op::GetBucketVersioning { bucket },
            "GET" if has("versions") => Op::ListObjectVersions { bucket },
            "GET" if has("uploads") => Op::ListMultipartUploads { bucket },
            "GET"
                if pairs
                    .iter()
                    .any(|(k, v)| k.as_slice() == b"list-type" && v.as_slice() == b"2") =>
            {
                Op::ListObjectsV2 { bucket }
            }
            "GET" => Op::ListObjects { bucket },
            "POST" if has("delete") => Op::DeleteObjects { bucket },
            _ => return Err(unsupported()),
        });
    };
    if key.len() > KEY_BYTES_MAX {
        return Err(S3Error::new(
            Code::InvalidArgument,
            format!("a key is at most {KEY_BYTES_MAX} bytes"),
        ));
    }
    let part = has("partNumber") && has("uploadId");
    Ok(match method {
        "PUT" if part && copy_source => Op::UploadPartCopy { bucket, key },
        "PUT" if part => Op::UploadPart { bucket, key },
        "PUT" if copy_source => Op::CopyObject { bucket, key },
        "PUT" => Op::PutObject { bucket, key },
        "GET" if has("uploadId") => Op::ListParts { bucket, key },
        "GET" => Op::GetObject { bucket, key },
        "HEAD" => Op::HeadObject { bucket, key },
        "DELETE" if has("uploadId") => Op::AbortMultipartUpload { bucket, key },
        "DELETE" => Op::DeleteObject { bucket, key },
        "POST" if has("uploads") => Op::CreateMultipartUpload { bucket, key },
        "POST" if has("uploadId") => Op::CompleteMultipartUpload { bucket, key },
        _ => return Err(unsupported()),
    })
}

/// The bucket a virtual-hosted-style request names in its `Host` (`BUCKET.DOMAIN[:port]`),
/// if it is one under `domain`; `None` for the domain itself (path-style) or another host.
pub fn virtual_host_bucket<'a>(host: &'a str, domain: &str) -> Option<&'a str> {
    let domain = domain.trim_end_matches('.');
    // A port, but not the colons of an IPv6 literal (which names no bucket).
    let name = match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let name = name.trim_end_matches('.');
    let bucket = name
        .len()
        .checked_sub(domain.len() + 1)
        .filter(|&n| n > 0)
        .and_then(|n| {
            let (b, rest) = name.split_at(n);
            (rest.strip_prefix('.')?.eq_ignore_ascii_case(domain)).then_some(b)
        })?;
    Some(bucket)
}

/// Where CopyObject and UploadPartCopy copy from: `x-amz-copy-source`, `bucket/key` with an
/// optional leading `/` and `?versionId=`, the bucket and key percent-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopySource {
    pub bucket: String,
    pub key: String,
    pub version_id: Option<String>,
}

pub fn copy_source(value: &str) -> Result<CopySource, S3Error> {
    let bad = |m: &str| S3Error::new(Code::InvalidArgument, format!("x-amz-copy-source: {m}"));
    let (path, query) = match value.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (value, None),
    };
    let version_id = match query {
        None => None,
        Some(q) => match q.strip_prefix("versionId=") {
            Some(v) if !v.is_empty() && !v.contains('&') => Some(
                percent_encoding::percent_decode_str(v)
                    .decode_utf8()
                    .map_err(|_| bad("the version id is not UTF-8"))?
                    .into_owned(),
            ),
            _ => return Err(bad("the only query it may carry is versionId")),
        },
    };
    let path = path.strip_prefix('/').unwrap_or(path);
    let (b, k) = path
        .split_once('/')
        .ok_or_else(|| bad("it must be bucket/key"))?;
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| bad("it is not UTF-8"))
    };
    let (bucket, key) = (decode(b)?, decode(k)?);
    if bucket.is_empty() || key.is_empty() {
        return Err(bad("it must name a bucket and a key"));
    }
    Ok(CopySource {
        bucket,
        key,
        version_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(m: &str, p: &str, q: &str) -> Op {
        route(m, p, q, false).unwrap()
    }

    #[test]
    fn each_operation_is_told_apart() {
        let b = || "photos".to_string();
        let k = || "2024/a b+c.jpg".to_string();
        assert_eq!(op("GET", "/", ""), Op::ListBuckets);
        assert_eq!(op("PUT", "/photos", ""), Op::CreateBucket { bucket: b() });
        assert_eq!(op("PUT", "/photos/", ""), Op::CreateBucket { bucket: b() });
        assert_eq!(
            op("PUT", "/photos", "versioning"),
            Op::PutBucketVersioning { bucket: b() }
        );
        assert_eq!(
            op("GET", "/photos", "location="),
            Op::GetBucketLocation { bucket: b() }
        );
        assert_eq!(
            op("GET", "/photos", "versions&prefix=a"),
            Op::ListObjectVersions { bucket: b() }
        );
        assert_eq!(
            op("GET", "/photos", "list-type=2&prefix=a"),
            Op::ListObjectsV2 { bucket: b() }
        );
        assert_eq!(
            op("GET", "/photos", "prefix=a"),
            Op::ListObjects { bucket: b() }
        );
        assert_eq!(
            op("POST", "/photos", "delete"),
            Op::DeleteObjects { bucket: b() }
        );
        let key = "/photos/2024/a%20b%2Bc.jpg";
        assert_eq!(
            op("PUT", key, ""),
            Op::PutObject {
                bucket: b(),
                key: k()
            }
        );
        assert_eq!(
            route("PUT", key, "", true).unwrap(),
            Op::CopyObject {
                bucket: b(),
                key: k()
            }
        );
        assert_eq!(
            op("PUT", key, "partNumber=2&uploadId=x"),
            Op::UploadPart {
                bucket: b(),
                key: k()
            }
        );
        assert_eq!(
            route("PUT", key, "partNumber=2&uploadId=x", true).unwrap(),
            Op::UploadPartCopy {
                bucket: b(),
                key: k()
            }
        );
        assert_eq!(
            op("POST", key, "uploads"),
            Op::CreateMultipartUpload {
                bucket: b(),
                key: k()
            }
        );
        assert_eq!(
            op("POST", key, "uploadId=x"),
            Op::CompleteMultipartUpload {
                bucket: b(),
                key: k()
            }
        );
        assert_eq!(
            op("DELETE", key, "uploadId=x"),
            Op::AbortMultipartUpload {
                bucket: b(),
                key: k()
            }
        );
        assert_eq!(
            op("GET", key, "uploadId=x"),
            Op::ListParts {
                bucket: b(),
                key: k()
            }
        );
        assert_eq!(
            op("GET", key, "versionId=3"),
            Op::GetObject {
                bucket: b(),
                key: k()
            }
        );
        assert_eq!(
            op("HEAD", key, ""),
            Op::HeadObject {
                bucket: b(),
                key: k()
            }
        );
        assert_eq!(
            op("DELETE", key, ""),
            Op::DeleteObject {
                bucket: b(),
                key: k()
            }
        );
        assert!(op("GET", key, "").reads_only() && !op("PUT", key, "").reads_only());
    }

    #[test]
    fn what_is_not_served_says_so() {
        for (m, p, q, code) in [
            ("GET", "/photos", "acl", Code::NotImplemented),
            ("PUT", "/photos/k", "tagging", Code::NotImplemented),
            ("POST", "/", "", Code::MethodNotAllowed),
            ("PATCH", "/photos/k", "", Code::MethodNotAllowed),
            ("GET", "/photos/%FF", "", Code::InvalidArgument),
            ("GET", "/pho%2Ftos/k", "", Code::InvalidBucketName),
        ] {
            assert_eq!(route(m, p, q, false).unwrap_err().code, code, "{m} {p}?{q}");
        }
        let long = format!("/photos/{}", "k".repeat(KEY_BYTES_MAX + 1));
        assert_eq!(
            route("GET", &long, "", false).unwrap_err().code,
            Code::InvalidArgument
        );
    }

    #[test]
    fn copy_sources() {
        let c = copy_source("/b/dir/a%20b%3Fc?versionId=7").unwrap();
        assert_eq!(
            c,
            CopySource {
                bucket: "b".into(),
                key: "dir/a b?c".into(),
                version_id: Some("7".into()),
            }
        );
        assert_eq!(copy_source("b/k").unwrap().key, "k");
        assert_eq!(copy_source("b/k").unwrap().version_id, None);
        for bad in ["", "b", "/b/", "b/k?x=1", "b/k?versionId=", "b/%ff", "/k"] {
            let e = copy_source(bad).unwrap_err();
            assert_eq!(e.code, Code::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn virtual_hosted_buckets() {
        let v = |h| virtual_host_bucket(h, "s3.example.com");
        assert_eq!(v("photos.s3.example.com"), Some("photos"));
        assert_eq!(v("photos.s3.example.com:9000"), Some("photos"));
        assert_eq!(v("my.photos.S3.Example.com."), Some("my.photos"));
        assert_eq!(v("s3.example.com"), None);
        assert_eq!(v("s3.example.com:9000"), None);
        assert_eq!(v(".s3.example.com"), None);
        assert_eq!(v("photos.other.com"), None);
        assert_eq!(v("photoss3.example.com"), None);
        assert_eq!(v("[::1]:9000"), None);
        assert_eq!(v(""), None);
    }
}
