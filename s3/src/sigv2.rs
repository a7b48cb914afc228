//! SigV2: the presigned URLs (`AWSAccessKeyId`, `Expires`, `Signature`) that boto3's and the
//! aws CLI's presigners still make by default, and the `Authorization: AWS KEY:SIGNATURE`
//! header older clients (and s3cmd's `--signature-v2`) sign with. The signature is the base64
//! of HMAC-SHA1 over the verb, `Content-MD5`, `Content-Type`, `Expires` (a URL) or `Date` (a
//! header; empty when `x-amz-date` is sent, which is then signed with the `x-amz-*` headers),
//! the `x-amz-*` headers and the resource (the bucket of a virtual-hosted request, the path as
//! sent, then the sub-resources S3 signs, sorted). SigV2 signs no body: a header-signed
//! request's body is checked only by its `Content-MD5` and checksums, as S3 does.

use crate::error::{Code, S3Error};
use crate::sigv4::{check, query_pairs, within_skew, RequestHead, Verified, PRESIGN_EXPIRES_S_MAX};
use base64::Engine as _;
use hmac::{Hmac, Mac};

/// Query parameters that are part of the signed resource (S3's list), in their sorted order
/// when signed.
const SUBRESOURCES: &[&str] = &[
    "acl",
    "cors",
    "delete",
    "lifecycle",
    "location",
    "logging",
    "notification",
    "partNumber",
    "policy",
    "requestPayment",
    "response-cache-control",
    "response-content-disposition",
    "response-content-encoding",
    "response-content-language",
    "response-content-type",
    "response-expires",
    "restore",
    "tagging",
    "torrent",
    "uploadId",
    "uploads",
    "versionId",
    "versioning",
    "versions",
    "website",
];

/// Whether the query carries SigV2 query authentication.
pub fn is_presigned_v2(query: &str) -> bool {
    let has = |n: &str| query.split('&').any(|p| p.starts_with(n));
    has("AWSAccessKeyId=") && has("Signature=")
}

/// Whether the request is signed with SigV2 in its `Authorization` header.
pub fn is_header_v2(head: &RequestHead<'_>) -> bool {
    head.headers
        .get(http::header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes().starts_with(b"AWS "))
}

/// What SigV2 signs for `head`, with `expires` (the URL's `Expires`, or the header-signed
/// request's `Date`); `host_bucket` is the bucket a virtual-hosted request names in its host.
pub fn string_to_sign(head: &RequestHead<'_>, host_bucket: Option<&str>, expires: &str) -> String {
    let header = |n: &str| {
        head.headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let mut s = format!(
        "{}\n{}\n{}\n{expires}\n",
        head.method,
        header("content-md5"),
        header("content-type")
    );
    let mut amz: Vec<(String, String)> = Vec::new();
    for (n, v) in head.headers {
        if n.as_str().starts_with("x-amz-") {
            let v = String::from_utf8_lossy(v.as_bytes()).trim().to_string();
            match amz.iter_mut().find(|(k, _)| k == n.as_str()) {
                Some((_, all)) => {
                    all.push(',');
                    all.push_str(&v);
                }
                None => amz.push((n.as_str().to_string(), v)),
            }
        }
    }
    amz.sort();
    for (n, v) in amz {
        s.push_str(&n);
        s.push(':');
        s.push_str(&v);
        s.push('\n');
    }
    if let Some(b) = host_bucket {
        s.push('/');
        s.push_str(b);
    }
    s.push_str(head.path);
    let mut subs: Vec<(String, Vec<u8>)> = query_pairs(head.query)
        .into_iter()
        .filter_map(|(k, v)| {
            let k = String::from_utf8(k).ok()?;
            SUBRESOURCES.contains(&k.as_str()).then_some((k, v))
        })
        .collect();
    subs.sort_by(|a, b| a.0.cmp(&b.0));
    for (i, (k, v)) in subs.iter().enumerate() {
        s.push(if i == 0 { '?' } else { '&' });
        s.push_str(k);
        if !v.is_empty() || head.query.contains(&format!("{k}=")) {
            s.push('=');
            s.push_str(&String::from_utf8_lossy(v));
        }
    }
    s
}

/// The SigV2 signature of `string_to_sign` with `secret`, in base64.
pub fn signature(secret: &str, string_to_sign: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(mac(secret, string_to_sign))
}

/// The HMAC-SHA1 a SigV2 signature is the base64 of.
fn mac(secret: &str, string_to_sign: &str) -> [u8; 20] {
    let mut mac =
        Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(string_to_sign.as_bytes());
    mac.finalize().into_bytes().into()
}

/// Checks a SigV2 presigned request at `now_s`: the key, the signature (compared in constant
/// time) and `Expires` (not passed, and at most [`PRESIGN_EXPIRES_S_MAX`] ahead).
pub fn verify_presigned(
    head: &RequestHead<'_>,
    host_bucket: Option<&str>,
    now_s: i64,
    secret_of: &dyn Fn(&str) -> Option<String>,
) -> Result<Verified, S3Error> {
    let bad = |m: &str| S3Error::new(Code::AuthorizationQueryParametersError, m);
    let pairs = query_pairs(head.query);
    let get = |name: &str| -> Result<String, S3Error> {
        let mut found = pairs
            .iter()
            .filter(|(n, _)| n.as_slice() == name.as_bytes());
        match (found.next(), found.next()) {
            (Some((_, v)), None) => {
                String::from_utf8(v.clone()).map_err(|_| bad(&format!("{name} is not UTF-8")))
            }
            (None, _) => Err(bad(&format!("{name} is required in a presigned URL"))),
            (Some(_), Some(_)) => Err(bad(&format!("{name} is given twice"))),
        }
    };
    let access_key = get("AWSAccessKeyId")?;
    let given = get("Signature")?;
    let expires_s = get("Expires")?;
    let expires: i64 = expires_s
        .parse()
        .map_err(|_| bad("Expires is seconds since the epoch"))?;
    if now_s > expires {
        return Err(S3Error::new(Code::AccessDenied, "Request has expired"));
    }
    if expires - now_s > PRESIGN_EXPIRES_S_MAX {
        return Err(bad(&format!(
            "Expires may be at most {PRESIGN_EXPIRES_S_MAX} seconds ahead"
        )));
    }
    let secret = secret_of(&access_key).ok_or_else(|| {
        S3Error::new(Code::InvalidAccessKeyId, "the access key id does not exist")
    })?;
    let given = base64::engine::general_purpose::STANDARD
        .decode(given.trim())
        .map_err(|_| bad("Signature is not base64"))?;
    check(
        &mac(&secret, &string_to_sign(head, host_bucket, &expires_s)),
        &given,
    )?;
    Ok(Verified {
        access_key,
        payload: crate::sigv4::Payload::Unsigned,
        chain: None,
        presigned: true,
        region: "us-east-1".to_string(),
    })
}

/// Checks a request signed with SigV2 in its `Authorization` header at `now_s`: the key, the
/// signature (constant time) and the request's time (`x-amz-date`, else `Date`), which must be
/// within [`SKEW_S_MAX`](crate::sigv4::SKEW_S_MAX) of ours.
pub fn verify_header(
    head: &RequestHead<'_>,
    host_bucket: Option<&str>,
    now_s: i64,
    secret_of: &dyn Fn(&str) -> Option<String>,
) -> Result<Verified, S3Error> {
    let bad = |m: &str| S3Error::new(Code::AuthorizationHeaderMalformed, m);
    let auth = head
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| bad("the Authorization header is not ASCII"))?;
    let (access_key, given) = auth
        .strip_prefix("AWS ")
        .and_then(|c| c.rsplit_once(':'))
        .ok_or_else(|| bad("SigV2's Authorization is `AWS KEY:SIGNATURE`"))?;
    let header = |n: &str| head.headers.get(n).and_then(|v| v.to_str().ok());
    // With x-amz-date, Date is not signed (the signed x-amz-* headers carry the time).
    let (when, date_line) = match (header("x-amz-date"), header("date")) {
        (Some(t), _) => (t, ""),
        (None, Some(d)) => (d, d.trim()),
        (None, None) => {
            return Err(S3Error::new(
                Code::AccessDenied,
                "a SigV2 request needs a Date or x-amz-date header",
            ))
        }
    };
    // `+0000` for `GMT` is what some clients send (AWS's own examples do).
    let when = when.trim();
    let gmt = when.strip_suffix(" +0000").map(|d| format!("{d} GMT"));
    let t = crate::time::parse_http_date(gmt.as_deref().unwrap_or(when))
        .or_else(|| crate::time::parse_amz_date(when))
        .ok_or_else(|| {
            S3Error::new(Code::AccessDenied, "the request's date is not an HTTP date")
        })?;
    within_skew(t, now_s, when)?;
    let given = base64::engine::general_purpose::STANDARD
        .decode(given.trim())
        .map_err(|_| bad("the signature is not base64"))?;
    let secret = secret_of(access_key).ok_or_else(|| {
        S3Error::new(Code::InvalidAccessKeyId, "the access key id does not exist")
    })?;
    check(
        &mac(&secret, &string_to_sign(head, host_bucket, date_line)),
        &given,
    )?;
    Ok(Verified {
        access_key: access_key.to_string(),
        payload: crate::sigv4::Payload::Unsigned,
        chain: None,
        presigned: false,
        region: "us-east-1".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    /// URLs boto3 1.44 made with its default presigner (secret `secret-for-vectors`).
    const GET_URL: &str = "/photos/dir/a%20b%2Bc~d.txt?response-content-type=text%2Fplain&versionId=3&AWSAccessKeyId=root&Signature=FXjC498Juk3hJBPpEdm9%2BJBifUg%3D&Expires=1796354874";
    const PUT_URL: &str = "/photos/up.bin?AWSAccessKeyId=root&Signature=J8lNUki3UfqXcdMJYapQB50cM1k%3D&Expires=1796354874";

    fn check(method: &str, url: &str, now_s: i64, secret: &str) -> Result<Verified, S3Error> {
        let (path, query) = url.split_once('?').unwrap();
        let h = HeaderMap::new();
        let head = RequestHead {
            method,
            path,
            query,
            headers: &h,
        };
        verify_presigned(&head, None, now_s, &|ak| {
            (ak == "root").then(|| secret.to_string())
        })
    }

    /// AWS's own SigV2 example: a virtual-hosted GET, `Date` with `+0000`.
    #[test]
    fn aws_header_example_verifies_and_its_parts_are_signed() {
        const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        const DATE: &str = "Tue, 27 Mar 2007 19:36:42 +0000";
        let now = 1_175_024_202;
        let head_with = |h: &HeaderMap, path: &'static str, bucket: Option<&str>, now_s: i64| {
            let head = RequestHead {
                method: "GET",
                path,
                query: "",
                headers: h,
            };
            assert!(is_header_v2(&head));
            verify_header(&head, bucket, now_s, &|ak| {
                (ak == "AKIAIOSFODNN7EXAMPLE").then(|| SECRET.to_string())
            })
        };
        let mut h = HeaderMap::new();
        h.insert("date", DATE.parse().unwrap());
        h.insert(
            "authorization",
            "AWS AKIAIOSFODNN7EXAMPLE:qgk2+6Sv9/oM7G3qLEjTH1a1l1g="
                .parse()
                .unwrap(),
        );
        let ok = head_with(&h, "/photos/puppy.jpg", Some("awsexamplebucket1"), now).unwrap();
        assert!(!ok.presigned && ok.access_key == "AKIAIOSFODNN7EXAMPLE");
        let code = |r: Result<Verified, S3Error>| r.unwrap_err().code;
        // The same request path-style names the bucket in the path: the same resource.
        assert!(head_with(&h, "/awsexamplebucket1/photos/puppy.jpg", None, now).is_ok());
        assert_eq!(
            code(head_with(
                &h,
                "/photos/kitten.jpg",
                Some("awsexamplebucket1"),
                now
            )),
            Code::SignatureDoesNotMatch
        );
        assert_eq!(
            code(head_with(&h, "/photos/puppy.jpg", Some("other"), now)),
            Code::SignatureDoesNotMatch
        );
        assert_eq!(
            code(head_with(
                &h,
                "/photos/puppy.jpg",
                Some("awsexamplebucket1"),
                now + 16 * 60
            )),
            Code::RequestTimeTooSkewed
        );
        let mut other_date = h.clone();
        other_date.insert("date", "Tue, 27 Mar 2007 19:36:43 +0000".parse().unwrap());
        assert_eq!(
            code(head_with(
                &other_date,
                "/photos/puppy.jpg",
                Some("awsexamplebucket1"),
                now
            )),
            Code::SignatureDoesNotMatch
        );
        let mut unknown = h.clone();
        unknown.insert(
            "authorization",
            "AWS nobody:qgk2+6Sv9/oM7G3qLEjTH1a1l1g=".parse().unwrap(),
        );
        assert_eq!(
            code(head_with(
                &unknown,
                "/photos/puppy.jpg",
                Some("awsexamplebucket1"),
                now
            )),
            Code::InvalidAccessKeyId
        );
        let mut undated = h.clone();
        undated.remove("date");
        assert_eq!(
            code(head_with(
                &undated,
                "/photos/puppy.jpg",
                Some("awsexamplebucket1"),
                now
            )),
            Code::AccessDenied
        );
        let mut malformed = h.clone();
        malformed.insert("authorization", "AWS no-colon".parse().unwrap());
        assert_eq!(
            code(head_with(
                &malformed,
                "/photos/puppy.jpg",
                Some("awsexamplebucket1"),
                now
            )),
            Code::AuthorizationHeaderMalformed
        );
    }

    #[test]
    fn boto3_presigned_urls_verify_until_they_expire() {
        let now = 1796354874 - 600;
        assert!(is_presigned_v2(GET_URL.split_once('?').unwrap().1));
        assert_eq!(
            check("GET", GET_URL, now, "secret-for-vectors")
                .unwrap()
                .access_key,
            "root"
        );
        assert!(
            check("PUT", PUT_URL, now, "secret-for-vectors")
                .unwrap()
                .presigned
        );
        let code = |r: Result<Verified, S3Error>| r.unwrap_err().code;
        assert_eq!(
            code(check("GET", GET_URL, now, "another")),
            Code::SignatureDoesNotMatch
        );
        // The verb, the key, a signed sub-resource: each is signed.
        assert_eq!(
            code(check("PUT", GET_URL, now, "secret-for-vectors")),
            Code::SignatureDoesNotMatch
        );
        let other_key = GET_URL.replace("a%20b", "a%20c");
        assert_eq!(
            code(check("GET", &other_key, now, "secret-for-vectors")),
            Code::SignatureDoesNotMatch
        );
        let other_version = GET_URL.replace("versionId=3", "versionId=4");
        assert_eq!(
            code(check("GET", &other_version, now, "secret-for-vectors")),
            Code::SignatureDoesNotMatch
        );
        assert_eq!(
            code(check("GET", GET_URL, 1796354875, "secret-for-vectors")),
            Code::AccessDenied
        );
        let unknown = GET_URL.replace("AWSAccessKeyId=root", "AWSAccessKeyId=nobody");
        assert_eq!(
            code(check("GET", &unknown, now, "secret-for-vectors")),
            Code::InvalidAccessKeyId
        );
        // Further ahead than SigV4 allows.
        assert_eq!(
            code(check(
                "GET",
                GET_URL,
                now - PRESIGN_EXPIRES_S_MAX,
                "secret-for-vectors"
            )),
            Code::AuthorizationQueryParametersError
        );
    }
}
