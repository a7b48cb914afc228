//! Requests as a real client signs them: boto3 (its version in `vectors/meta.json`) sending
//! PutObject (with its default CRC32 checksum, and with SHA-256), an empty PutObject,
//! ListObjectsV2 with a delimiter, CreateBucket, and a presigned GetObject URL (SigV4, as
//! boto3 makes it when configured for `s3v4`; its default presigned URL is SigV2, recorded in
//! `meta.json` too), captured raw by `vectors/capture.py` (a socket that records what
//! arrives). Each must verify, route to
//! its operation, and carry a payload hash its body matches; a byte changed anywhere must not
//! verify.

use http::{HeaderMap, HeaderName, HeaderValue};
use ostore_s3::route::{route, Op};
use ostore_s3::sigv4::{verify, Payload, RequestHead};
use sha2::{Digest, Sha256};
use std::path::PathBuf;

const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

struct Raw {
    method: String,
    path: String,
    query: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

fn parse(raw: &[u8]) -> Raw {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    let head = std::str::from_utf8(&raw[..end]).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap().split(' ');
    let (method, target) = (first.next().unwrap(), first.next().unwrap());
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = HeaderMap::new();
    for l in lines {
        let (n, v) = l.split_once(':').unwrap();
        headers.append(
            HeaderName::from_bytes(n.trim().to_ascii_lowercase().as_bytes()).unwrap(),
            HeaderValue::from_str(v.trim()).unwrap(),
        );
    }
    Raw {
        method: method.into(),
        path: path.into(),
        query: query.into(),
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

fn vectors() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "http"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    assert!(out.len() >= 5, "the captured requests are missing");
    out
}

fn secrets(ak: &str) -> Option<String> {
    (ak == "root").then(|| SECRET.to_string())
}

fn time_of(r: &Raw) -> i64 {
    ostore_s3::time::parse_amz_date(r.headers["x-amz-date"].to_str().unwrap()).unwrap()
}

#[test]
fn boto3_requests_verify_and_route() {
    let mut ops = Vec::new();
    for (name, raw) in vectors() {
        let r = parse(&raw);
        let head = RequestHead {
            method: &r.method,
            path: &r.path,
            query: &r.query,
            headers: &r.headers,
        };
        let v = verify(&head, time_of(&r) + 5, &secrets).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(v.access_key, "root");
        match v.payload {
            Payload::Sha256(h) => {
                assert_eq!(h, <[u8; 32]>::from(Sha256::digest(&r.body)), "{name}")
            }
            other => panic!("{name}: boto3 over plain HTTP signs the body, not {other:?}"),
        }
        let op = route(&r.method, &r.path, &r.query, false).unwrap();
        ops.push(op.name());
        if let Op::PutObject { key, .. } = &op {
            if name == "boto3-00.http" {
                assert_eq!(key, "a b/c+d.txt");
            }
        }
    }
    for want in ["PutObject", "ListObjectsV2", "CreateBucket"] {
        assert!(ops.contains(&want), "{ops:?}");
    }
}

#[test]
fn a_changed_byte_does_not_verify() {
    for (name, raw) in vectors() {
        let r = parse(&raw);
        // The path, a signed header's value, and the signature itself.
        let mut bad_path = r.path.clone();
        bad_path.push('x');
        let mut h = r.headers.clone();
        h.insert("x-amz-date", HeaderValue::from_static("20261203T000000Z"));
        let auth = r.headers["authorization"].to_str().unwrap();
        let flipped = format!(
            "{}{}",
            &auth[..auth.len() - 1],
            if auth.ends_with('0') { '1' } else { '0' }
        );
        let mut h2 = r.headers.clone();
        h2.insert("authorization", HeaderValue::from_str(&flipped).unwrap());
        let t = time_of(&r);
        for (what, path, headers) in [
            ("path", bad_path.as_str(), &r.headers),
            ("date", r.path.as_str(), &h),
            ("signature", r.path.as_str(), &h2),
        ] {
            let head = RequestHead {
                method: &r.method,
                path,
                query: &r.query,
                headers,
            };
            assert!(
                verify(&head, t, &secrets).is_err(),
                "{name}: a changed {what} still verifies"
            );
        }
    }
}

#[test]
fn a_boto3_presigned_url_verifies_until_it_expires() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let meta = std::fs::read_to_string(dir.join("meta.json")).unwrap();
    let url = meta
        .split("\"presigned_v4\": \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a presigned URL");
    let rest = url.strip_prefix("http://").unwrap();
    let (host, target) = rest.split_once('/').unwrap();
    let target = format!("/{target}");
    let (path, query) = target.split_once('?').unwrap();
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_str(host).unwrap());
    let date = query
        .split('&')
        .find_map(|p| p.strip_prefix("X-Amz-Date="))
        .unwrap();
    let t = ostore_s3::time::parse_amz_date(date).unwrap();
    let head = RequestHead {
        method: "GET",
        path,
        query,
        headers: &h,
    };
    let v = verify(&head, t + 600, &secrets).expect("verifies within its 600 s");
    assert!(v.presigned);
    assert_eq!(
        verify(&head, t + 601, &secrets).unwrap_err().code,
        ostore_s3::Code::AccessDenied
    );
}
