//! SigV2 query authentication: the presigned URLs (`AWSAccessKeyId`, `Expires`, `Signature`)
//! that boto3's and the aws CLI's presigners still make by default. The signature is the
//! base64 of HMAC-SHA1 over the verb, `Content-MD5`, `Content-Type`, `Expires`, the `x-amz-*`
//! headers and the resource (the path as sent, then the sub-resources S3 signs, sorted).
//! SigV2 in an `Authorization` header is not accepted: clients that sign headers use SigV4.

use crate::error::{Code, S3Error};
use crate::sigv4::{query_pairs, RequestHead, Verified, PRESIGN_EXPIRES_S_MAX};
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

/// What SigV2 signs for `head`, with `expires` (the URL's `Expires`).
pub fn string_to_sign(head: &RequestHead<'_>, expires: &str) -> String {
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
    let mut mac =
        Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(string_to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Checks a SigV2 presigned request at `now_s`: the key, the signature (compared in constant
/// time) and `Expires` (not passed, and at most [`PRESIGN_EXPIRES_S_MAX`] ahead).
pub fn verify_presigned(
    head: &RequestHead<'_>,
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
    let want = signature(&secret, &string_to_sign(head, &expires_s));
    let given = base64::engine::general_purpose::STANDARD
        .decode(given.trim())
        .map_err(|_| bad("Signature is not base64"))?;
    let want = base64::engine::general_purpose::STANDARD
        .decode(want)
        .expect("made here");
    use subtle::ConstantTimeEq;
    if !bool::from(want.as_slice().ct_eq(given.as_slice())) {
        return Err(S3Error::new(
            Code::SignatureDoesNotMatch,
            "the request signature does not match: check the secret and how the request is signed",
        ));
    }
    Ok(Verified {
        access_key,
        payload: crate::sigv4::Payload::Unsigned,
        chain: None,
        presigned: true,
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
        verify_presigned(&head, now_s, &|ak| {
            (ak == "root").then(|| secret.to_string())
        })
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
