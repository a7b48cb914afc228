//! AWS Signature Version 4 as S3 checks it.
//!
//! A signed request carries its credential scope (access key, date, region, service), the
//! names of the headers it signed, and the signature: HMAC-SHA256, under a key derived from the
//! secret and the scope, of a string that hashes the *canonical request* (method, path, query,
//! signed headers, payload hash). [`verify`] rebuilds that string from what arrived and
//! compares in constant time; [`sign`] makes one (tests, osbench).
//!
//! Rules enforced: the scope's date is the request's date, its service `s3` and terminator
//! `aws4_request`; the request's time is within [`SKEW_S_MAX`] of ours; a presigned URL lives
//! at most [`PRESIGN_EXPIRES_S_MAX`] and not past its `X-Amz-Expires`; `host` is signed; the
//! payload hash is one S3 knows (a SHA-256, `UNSIGNED-PAYLOAD`, or one of the streaming forms,
//! whose chunks [`crate::chunked`] checks).

use crate::error::{Code, S3Error};
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::{Digest, Sha256};

/// How far a request's time may be from ours, either way (S3's 15 minutes).
pub const SKEW_S_MAX: i64 = 15 * 60;
/// The longest a presigned URL may live (S3's seven days).
pub const PRESIGN_EXPIRES_S_MAX: i64 = 7 * 24 * 3600;
/// Authorization header or query values longer than this are refused unread.
pub const AUTH_BYTES_MAX: usize = 8 * 1024;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
pub const STREAMING_SIGNED: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD";
pub const STREAMING_SIGNED_TRAILER: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER";
pub const STREAMING_UNSIGNED_TRAILER: &str = "STREAMING-UNSIGNED-PAYLOAD-TRAILER";
/// SHA-256 of nothing, hex.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// What a verified request says of its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// Not covered by the signature.
    Unsigned,
    /// The body's SHA-256, which the body must match.
    Sha256([u8; 32]),
    /// An `aws-chunked` body: chunks signed in a chain (`signed`), and trailers after them.
    Streaming { signed: bool, trailer: bool },
}

impl Payload {
    /// The payload hash as it stands in the canonical request (`x-amz-content-sha256`).
    pub fn parse(v: &str) -> Result<Payload, S3Error> {
        Ok(match v {
            UNSIGNED_PAYLOAD => Payload::Unsigned,
            STREAMING_SIGNED => Payload::Streaming {
                signed: true,
                trailer: false,
            },
            STREAMING_SIGNED_TRAILER => Payload::Streaming {
                signed: true,
                trailer: true,
            },
            STREAMING_UNSIGNED_TRAILER => Payload::Streaming {
                signed: false,
                trailer: true,
            },
            h => {
                let mut out = [0u8; 32];
                if h.len() != 64 || hex::decode_to_slice(h, &mut out).is_err() {
                    return Err(S3Error::new(
                        Code::InvalidArgument,
                        "x-amz-content-sha256 must be a hex SHA-256, UNSIGNED-PAYLOAD or a STREAMING- form",
                    ));
                }
                Payload::Sha256(out)
            }
        })
    }
}

/// Where a signed `aws-chunked` body's chain of signatures starts: the request's signature,
/// under the request's signing key and scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub key: [u8; 32],
    pub amz_date: String,
    /// `date/region/s3/aws4_request`.
    pub scope: String,
    pub seed: [u8; 32],
}

/// A request whose signature holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub access_key: String,
    pub payload: Payload,
    /// For signed streaming bodies: the chain their chunks continue.
    pub chain: Option<Chain>,
    /// Signed in the URL's query (presigned), not in a header.
    pub presigned: bool,
    /// The region the client signed for.
    pub region: String,
}

/// The parts of a request the signature covers. `path` and `query` are as they arrived (still
/// percent-encoded).
pub struct RequestHead<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a HeaderMap,
}

fn denied(code: Code, m: impl Into<String>) -> S3Error {
    S3Error::new(code, m)
}

/// AWS's URI encoding: unreserved characters stay, every other byte becomes `%XX` (upper
/// case); `/` stays only when `keep_slash` (paths).
pub fn uri_encode(bytes: &[u8], keep_slash: bool, out: &mut String) {
    for &b in bytes {
        let keep = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/');
        if keep {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[(b >> 4) as usize]));
            out.push(char::from(b"0123456789ABCDEF"[(b & 15) as usize]));
        }
    }
}

fn decode(s: &str) -> Vec<u8> {
    percent_encoding::percent_decode_str(s).collect()
}

/// The query's pairs, decoded (`+` is a plus, as S3 reads it), in arrival order.
pub fn query_pairs(query: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((n, v)) => (decode(n), decode(v)),
            None => (decode(p), Vec::new()),
        })
        .collect()
}

/// The canonical request: method, canonical URI, canonical query (without the signature of a
/// presigned URL), the signed headers with their trimmed values, their names, the payload hash.
pub fn canonical_request(
    head: &RequestHead<'_>,
    signed_headers: &[&str],
    payload_hash: &str,
) -> Result<String, S3Error> {
    let mut c = String::with_capacity(256);
    c.push_str(head.method);
    c.push('\n');
    let path = if head.path.is_empty() { "/" } else { head.path };
    uri_encode(&decode(path), true, &mut c);
    c.push('\n');
    let mut pairs: Vec<(String, String)> = query_pairs(head.query)
        .into_iter()
        .filter(|(n, _)| n.as_slice() != b"X-Amz-Signature")
        .map(|(n, v)| {
            let (mut en, mut ev) = (String::new(), String::new());
            uri_encode(&n, false, &mut en);
            uri_encode(&v, false, &mut ev);
            (en, ev)
        })
        .collect();
    pairs.sort();
    for (i, (n, v)) in pairs.iter().enumerate() {
        if i > 0 {
            c.push('&');
        }
        c.push_str(n);
        c.push('=');
        c.push_str(v);
    }
    c.push('\n');
    for name in signed_headers {
        c.push_str(name);
        c.push(':');
        let mut first = true;
        let mut any = false;
        for v in head.headers.get_all(*name) {
            any = true;
            if !first {
                c.push(',');
            }
            first = false;
            let v = v.to_str().map_err(|_| {
                denied(
                    Code::SignatureDoesNotMatch,
                    format!("header {name} is not visible ASCII"),
                )
            })?;
            // Trimmed, and runs of spaces inside collapsed to one.
            let mut last_space = false;
            for ch in v.trim().chars() {
                if ch == ' ' || ch == '\t' {
                    if !last_space {
                        c.push(' ');
                    }
                    last_space = true;
                } else {
                    c.push(ch);
                    last_space = false;
                }
            }
        }
        if !any {
            return Err(denied(
                Code::SignatureDoesNotMatch,
                format!("the signed header {name} is not in the request"),
            ));
        }
        c.push('\n');
    }
    c.push('\n');
    c.push_str(&signed_headers.join(";"));
    c.push('\n');
    c.push_str(payload_hash);
    Ok(c)
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// The signing key of a secret for one day, region and service.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    hmac(&k, b"aws4_request")
}

/// The string a request's signature signs.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    )
}

/// HMAC-SHA256 of `data` under a signing key.
pub fn signature(key: &[u8; 32], data: &str) -> [u8; 32] {
    hmac(key, data.as_bytes())
}

/// The parsed credential: `AK/YYYYMMDD/region/s3/aws4_request`.
struct Credential<'a> {
    access_key: &'a str,
    date: &'a str,
    region: &'a str,
}

fn credential(v: &str, code: Code) -> Result<Credential<'_>, S3Error> {
    let parts: Vec<&str> = v.split('/').collect();
    match parts.as_slice() {
        [ak, date, region, "s3", "aws4_request"] if !ak.is_empty() => Ok(Credential {
            access_key: ak,
            date,
            region,
        }),
        _ => Err(denied(
            code,
            format!("the credential {v:?} is not ACCESS_KEY/YYYYMMDD/REGION/s3/aws4_request"),
        )),
    }
}

fn signed_names(v: &str, code: Code) -> Result<Vec<&str>, S3Error> {
    let names: Vec<&str> = v.split(';').collect();
    let well_formed = names.iter().all(|n| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    }) && names.windows(2).all(|w| w[0] < w[1]);
    if !well_formed {
        return Err(denied(
            code,
            "SignedHeaders must be lower-case header names, sorted, separated by ';'",
        ));
    }
    if !names.contains(&"host") {
        return Err(denied(code, "the host header must be signed"));
    }
    Ok(names)
}

fn hex32(v: &str, code: Code, what: &str) -> Result<[u8; 32], S3Error> {
    let mut out = [0u8; 32];
    if v.len() != 64 || hex::decode_to_slice(v, &mut out).is_err() {
        return Err(denied(code, format!("{what} must be 64 hex digits")));
    }
    Ok(out)
}

/// Whether `head` is a presigned request (its query carries `X-Amz-Signature` or
/// `X-Amz-Algorithm`).
pub fn is_presigned(query: &str) -> bool {
    query
        .split('&')
        .any(|p| p.starts_with("X-Amz-Signature=") || p.starts_with("X-Amz-Algorithm="))
}

/// Checks a request's signature, header or presigned, at `now_s` (seconds since the epoch).
/// `secret_of` gives an access key's secret. Anonymous requests are refused.
pub fn verify(
    head: &RequestHead<'_>,
    now_s: i64,
    secret_of: &dyn Fn(&str) -> Option<String>,
) -> Result<Verified, S3Error> {
    if is_presigned(head.query) {
        return verify_presigned(head, now_s, secret_of);
    }
    let Some(auth) = head.headers.get(http::header::AUTHORIZATION) else {
        return Err(denied(
            Code::AccessDenied,
            "anonymous requests are refused: sign with SigV4",
        ));
    };
    let malformed = Code::AuthorizationHeaderMalformed;
    if auth.len() > AUTH_BYTES_MAX {
        return Err(denied(malformed, "the Authorization header is too long"));
    }
    let auth = auth
        .to_str()
        .map_err(|_| denied(malformed, "the Authorization header is not ASCII"))?;
    let Some(rest) = auth
        .strip_prefix(ALGORITHM)
        .and_then(|r| r.strip_prefix(' '))
    else {
        return Err(denied(
            malformed,
            "only AWS4-HMAC-SHA256 (SigV4) is supported",
        ));
    };
    let (mut cred, mut names, mut sig) = (None, None, None);
    for part in rest.split(',') {
        match part.trim().split_once('=') {
            Some(("Credential", v)) => cred = Some(v),
            Some(("SignedHeaders", v)) => names = Some(v),
            Some(("Signature", v)) => sig = Some(v),
            _ => return Err(denied(malformed, format!("unexpected {part:?}"))),
        }
    }
    let (Some(cred), Some(names), Some(sig)) = (cred, names, sig) else {
        return Err(denied(
            malformed,
            "Credential, SignedHeaders and Signature are required",
        ));
    };
    let cred = credential(cred, malformed)?;
    let names = signed_names(names, malformed)?;
    let sig = hex32(sig, malformed, "Signature")?;
    let amz_date = header_str(head.headers, "x-amz-date").ok_or_else(|| {
        denied(
            Code::AccessDenied,
            "x-amz-date is required (the Date header is not accepted)",
        )
    })?;
    let t = crate::time::parse_amz_date(amz_date)
        .ok_or_else(|| denied(Code::AccessDenied, "x-amz-date is not YYYYMMDDTHHMMSSZ"))?;
    if !amz_date.starts_with(cred.date) || cred.date.len() != 8 {
        return Err(denied(
            malformed,
            "the credential's date is not the date of x-amz-date",
        ));
    }
    within_skew(t, now_s, amz_date)?;
    let payload_hash = header_str(head.headers, "x-amz-content-sha256").ok_or_else(|| {
        denied(
            Code::InvalidRequest,
            "x-amz-content-sha256 is required (the payload's SHA-256 or UNSIGNED-PAYLOAD)",
        )
    })?;
    let payload = Payload::parse(payload_hash)?;
    let (key, scope) =
        check_signature(head, &cred, &names, payload_hash, amz_date, &sig, secret_of)?;
    let chain = matches!(payload, Payload::Streaming { signed: true, .. }).then(|| Chain {
        key,
        amz_date: amz_date.to_string(),
        scope: scope.clone(),
        seed: sig,
    });
    Ok(Verified {
        access_key: cred.access_key.to_string(),
        payload,
        chain,
        presigned: false,
        region: cred.region.to_string(),
    })
}

/// Recomputes the signature under the key's secret and compares it with `given`; returns the
/// signing key and scope (a streaming body's chain continues under them).
fn check_signature(
    head: &RequestHead<'_>,
    cred: &Credential<'_>,
    names: &[&str],
    payload_hash: &str,
    amz_date: &str,
    given: &[u8; 32],
    secret_of: &dyn Fn(&str) -> Option<String>,
) -> Result<([u8; 32], String), S3Error> {
    let secret = secret_of(cred.access_key).ok_or_else(|| {
        denied(
            Code::InvalidAccessKeyId,
            "the access key does not exist (or was revoked)",
        )
    })?;
    let scope = format!("{}/{}/s3/aws4_request", cred.date, cred.region);
    let key = signing_key(&secret, cred.date, cred.region, "s3");
    let canonical = canonical_request(head, names, payload_hash)?;
    check(
        &signature(&key, &string_to_sign(amz_date, &scope, &canonical)),
        given,
    )?;
    Ok((key, scope))
}

/// A request's time `t` (`shown` as the request wrote it) must be within [`SKEW_S_MAX`] of the
/// server's.
pub(crate) fn within_skew(t: i64, now_s: i64, shown: &str) -> Result<(), S3Error> {
    if (t - now_s).abs() > SKEW_S_MAX {
        return Err(denied(
            Code::RequestTimeTooSkewed,
            format!(
                "the request time {shown} is more than {} minutes from the server's {}",
                SKEW_S_MAX / 60,
                crate::time::amz_date(now_s)
            ),
        ));
    }
    Ok(())
}

/// Compares a signature computed here with the one given, in constant time.
pub(crate) fn check(expected: &[u8], given: &[u8]) -> Result<(), S3Error> {
    use subtle::ConstantTimeEq;
    if bool::from(expected.ct_eq(given)) {
        Ok(())
    } else {
        Err(denied(
            Code::SignatureDoesNotMatch,
            "the request signature does not match: check the secret and how the request is signed",
        ))
    }
}

fn header_str<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn verify_presigned(
    head: &RequestHead<'_>,
    now_s: i64,
    secret_of: &dyn Fn(&str) -> Option<String>,
) -> Result<Verified, S3Error> {
    let bad = Code::AuthorizationQueryParametersError;
    if head.query.len() > AUTH_BYTES_MAX * 4 {
        return Err(denied(bad, "the query is too long"));
    }
    let pairs = query_pairs(head.query);
    let get = |name: &str| -> Result<String, S3Error> {
        let mut found = pairs
            .iter()
            .filter(|(n, _)| n.as_slice() == name.as_bytes());
        match (found.next(), found.next()) {
            (Some((_, v)), None) => String::from_utf8(v.clone())
                .map_err(|_| denied(bad, format!("{name} is not UTF-8"))),
            (None, _) => Err(denied(
                bad,
                format!("{name} is required in a presigned URL"),
            )),
            (Some(_), Some(_)) => Err(denied(bad, format!("{name} is given twice"))),
        }
    };
    if get("X-Amz-Algorithm")? != ALGORITHM {
        return Err(denied(bad, "X-Amz-Algorithm must be AWS4-HMAC-SHA256"));
    }
    let cred_s = get("X-Amz-Credential")?;
    let cred = credential(&cred_s, bad)?;
    let names_s = get("X-Amz-SignedHeaders")?;
    let names = signed_names(&names_s, bad)?;
    let sig = hex32(&get("X-Amz-Signature")?, bad, "X-Amz-Signature")?;
    let amz_date = get("X-Amz-Date")?;
    let t = crate::time::parse_amz_date(&amz_date)
        .ok_or_else(|| denied(bad, "X-Amz-Date is not YYYYMMDDTHHMMSSZ"))?;
    if !amz_date.starts_with(cred.date) || cred.date.len() != 8 {
        return Err(denied(
            bad,
            "the credential's date is not the date of X-Amz-Date",
        ));
    }
    let expires: i64 = get("X-Amz-Expires")?
        .parse()
        .ok()
        .filter(|e| (1..=PRESIGN_EXPIRES_S_MAX).contains(e))
        .ok_or_else(|| {
            denied(
                bad,
                format!(
                    "X-Amz-Expires must be a number of seconds from 1 to {PRESIGN_EXPIRES_S_MAX}"
                ),
            )
        })?;
    if t - now_s > SKEW_S_MAX {
        return Err(denied(
            Code::RequestTimeTooSkewed,
            "the presigned URL is dated in the future",
        ));
    }
    if now_s > t + expires {
        return Err(denied(Code::AccessDenied, "Request has expired"));
    }
    let payload_hash = header_str(head.headers, "x-amz-content-sha256").unwrap_or(UNSIGNED_PAYLOAD);
    let payload = Payload::parse(payload_hash)?;
    if matches!(payload, Payload::Streaming { .. }) {
        return Err(denied(bad, "a presigned URL cannot carry a streaming body"));
    }
    check_signature(
        head,
        &cred,
        &names,
        payload_hash,
        &amz_date,
        &sig,
        secret_of,
    )?;
    Ok(Verified {
        access_key: cred.access_key.to_string(),
        payload,
        chain: None,
        presigned: true,
        region: cred.region.to_string(),
    })
}

/// What [`sign`] needs beyond the request.
pub struct Signer<'a> {
    pub access_key: &'a str,
    pub secret: &'a str,
    pub region: &'a str,
    pub now_s: i64,
}

/// Signs a request in its headers: sets `x-amz-date` and `x-amz-content-sha256` (to
/// `payload_hash`) and returns the `Authorization` value, having signed `host` and every
/// `x-amz-*` header (and `content-md5`, `range` where present).
pub fn sign(
    method: &str,
    path: &str,
    query: &str,
    headers: &mut HeaderMap,
    payload_hash: &str,
    s: &Signer<'_>,
) -> String {
    let amz_date = crate::time::amz_date(s.now_s);
    headers.insert(
        "x-amz-date",
        http::HeaderValue::from_str(&amz_date).expect("ASCII"),
    );
    headers.insert(
        "x-amz-content-sha256",
        http::HeaderValue::from_str(payload_hash).expect("ASCII"),
    );
    let mut names: Vec<String> = headers
        .keys()
        .map(|k| k.as_str().to_string())
        .filter(|k| k == "host" || k.starts_with("x-amz-") || k == "content-md5" || k == "range")
        .collect();
    names.sort();
    names.dedup();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let head = RequestHead {
        method,
        path,
        query,
        headers,
    };
    let canonical =
        canonical_request(&head, &names, payload_hash).expect("headers set by the caller");
    let date = &amz_date[..8];
    let scope = format!("{date}/{}/s3/aws4_request", s.region);
    let key = signing_key(s.secret, date, s.region, "s3");
    let sig = signature(&key, &string_to_sign(&amz_date, &scope, &canonical));
    format!(
        "{ALGORITHM} Credential={}/{scope}, SignedHeaders={}, Signature={}",
        s.access_key,
        names.join(";"),
        hex::encode(sig)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const AK: &str = "AKIAIOSFODNN7EXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    /// 2013-05-24T00:00:00Z, the date of AWS's published examples.
    const T: i64 = 1_369_353_600;

    fn secrets(ak: &str) -> Option<String> {
        (ak == AK).then(|| SECRET.to_string())
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    /// AWS's "GET Object" example (S3 SigV4 documentation, header authentication).
    #[test]
    fn the_published_get_example_verifies() {
        let h = headers(&[
            ("host", "examplebucket.s3.amazonaws.com"),
            ("range", "bytes=0-9"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", "20130524T000000Z"),
            ("authorization", "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"),
        ]);
        let head = RequestHead {
            method: "GET",
            path: "/test.txt",
            query: "",
            headers: &h,
        };
        let v = verify(&head, T + 60, &secrets).expect("verifies");
        assert_eq!(v.access_key, AK);
        assert_eq!(v.region, "us-east-1");
        assert!(!v.presigned);
        // Any change breaks it.
        let other = RequestHead {
            path: "/test.txT",
            ..head
        };
        assert_eq!(
            verify(&other, T, &secrets).unwrap_err().code,
            Code::SignatureDoesNotMatch
        );
        // Too far from our clock.
        assert_eq!(
            verify(&head, T + SKEW_S_MAX + 1, &secrets)
                .unwrap_err()
                .code,
            Code::RequestTimeTooSkewed
        );
        // An unknown key.
        assert_eq!(
            verify(&head, T, &|_| None).unwrap_err().code,
            Code::InvalidAccessKeyId
        );
    }

    /// AWS's presigned URL example (query-string authentication).
    #[test]
    fn the_published_presigned_example_verifies_until_it_expires() {
        let h = headers(&[("host", "examplebucket.s3.amazonaws.com")]);
        let q = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404";
        let head = RequestHead {
            method: "GET",
            path: "/test.txt",
            query: q,
            headers: &h,
        };
        let v = verify(&head, T + 86_400, &secrets).expect("verifies");
        assert!(v.presigned);
        let e = verify(&head, T + 86_401, &secrets).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (Code::AccessDenied, "Request has expired")
        );
        let tampered = q.replace("86400", "86401");
        let head = RequestHead {
            query: &tampered,
            ..head
        };
        assert_eq!(
            verify(&head, T, &secrets).unwrap_err().code,
            Code::SignatureDoesNotMatch
        );
    }

    #[test]
    fn what_sign_makes_verify_accepts() {
        let mut h = headers(&[
            ("host", "127.0.0.1:9000"),
            ("x-amz-meta-colour", "  blue   green "),
        ]);
        let s = Signer {
            access_key: AK,
            secret: SECRET,
            region: "us-east-1",
            now_s: T,
        };
        let path = "/bucket/a%20key/with+plus%2Band~tilde";
        let query = "versionId=3&list-type=2&prefix=a%2Fb";
        let auth = sign("PUT", path, query, &mut h, UNSIGNED_PAYLOAD, &s);
        h.insert("authorization", HeaderValue::from_str(&auth).unwrap());
        let head = RequestHead {
            method: "PUT",
            path,
            query,
            headers: &h,
        };
        let v = verify(&head, T, &secrets).expect("verifies");
        assert_eq!(v.payload, Payload::Unsigned);
        // A signed header changed after signing: refused.
        h.insert("x-amz-meta-colour", HeaderValue::from_static("red"));
        let head = RequestHead {
            method: "PUT",
            path,
            query,
            headers: &h,
        };
        assert_eq!(
            verify(&head, T, &secrets).unwrap_err().code,
            Code::SignatureDoesNotMatch
        );
    }

    #[test]
    fn malformed_authorization_is_refused_with_its_own_code() {
        for (auth, code) in [
            ("AWS AKIA:abc", Code::AuthorizationHeaderMalformed),
            (
                "AWS4-HMAC-SHA256 Credential=AK/20130524/us-east-1/s3/aws4_request, SignedHeaders=host",
                Code::AuthorizationHeaderMalformed,
            ),
            (
                "AWS4-HMAC-SHA256 Credential=AK/20130524/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=00",
                Code::AuthorizationHeaderMalformed,
            ),
            (
                "AWS4-HMAC-SHA256 Credential=AK/20130524/us-east-1/s3/aws4_request, SignedHeaders=x-amz-date, Signature=0000000000000000000000000000000000000000000000000000000000000000",
                Code::AuthorizationHeaderMalformed,
            ),
        ] {
            let h = headers(&[
                ("host", "h"),
                ("x-amz-date", "20130524T000000Z"),
                ("x-amz-content-sha256", UNSIGNED_PAYLOAD),
                ("authorization", auth),
            ]);
            let head = RequestHead {
                method: "GET",
                path: "/",
                query: "",
                headers: &h,
            };
            assert_eq!(verify(&head, T, &secrets).unwrap_err().code, code, "{auth}");
        }
        let h = headers(&[("host", "h")]);
        let head = RequestHead {
            method: "GET",
            path: "/",
            query: "",
            headers: &h,
        };
        assert_eq!(
            verify(&head, T, &secrets).unwrap_err().code,
            Code::AccessDenied
        );
    }
}
