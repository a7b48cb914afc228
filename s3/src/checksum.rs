//! A body's integrity as S3 checks it, while the body streams: the SHA-256 the request was
//! signed with (`x-amz-content-sha256`), the MD5 of `Content-MD5`, and the checksum the client
//! chose
//! (`x-amz-checksum-crc32|crc32c|crc64nvme|sha1|sha256`, in a header or, for `aws-chunked`
//! bodies, in a trailer that `x-amz-trailer` announces).

use crate::error::{Code, S3Error};
use crate::sigv4::Payload;
use base64::Engine as _;
use http::HeaderMap;
use sha2::Digest;

/// A checksum algorithm S3 clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Crc32,
    Crc32c,
    Crc64Nvme,
    Sha1,
    Sha256,
}

impl Algorithm {
    /// The header (and trailer) name that carries it.
    pub fn header(self) -> &'static str {
        match self {
            Algorithm::Crc32 => "x-amz-checksum-crc32",
            Algorithm::Crc32c => "x-amz-checksum-crc32c",
            Algorithm::Crc64Nvme => "x-amz-checksum-crc64nvme",
            Algorithm::Sha1 => "x-amz-checksum-sha1",
            Algorithm::Sha256 => "x-amz-checksum-sha256",
        }
    }

    fn of_header(name: &str) -> Option<Result<Algorithm, S3Error>> {
        Some(Ok(match name {
            "x-amz-checksum-crc32" => Algorithm::Crc32,
            "x-amz-checksum-crc32c" => Algorithm::Crc32c,
            "x-amz-checksum-sha1" => Algorithm::Sha1,
            "x-amz-checksum-sha256" => Algorithm::Sha256,
            "x-amz-checksum-crc64nvme" => Algorithm::Crc64Nvme,
            _ => return None,
        }))
    }
}

enum Hasher {
    Crc32(crc32fast::Hasher),
    Crc32c(u32),
    Crc64Nvme(crc64fast_nvme::Digest),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

impl Hasher {
    fn new(a: Algorithm) -> Hasher {
        match a {
            Algorithm::Crc32 => Hasher::Crc32(crc32fast::Hasher::new()),
            Algorithm::Crc32c => Hasher::Crc32c(0),
            Algorithm::Crc64Nvme => Hasher::Crc64Nvme(crc64fast_nvme::Digest::new()),
            Algorithm::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
        }
    }
    fn update(&mut self, d: &[u8]) {
        match self {
            Hasher::Crc32(h) => h.update(d),
            Hasher::Crc32c(c) => *c = crc32c::crc32c_append(*c, d),
            Hasher::Crc64Nvme(h) => h.write(d),
            Hasher::Sha1(h) => h.update(d),
            Hasher::Sha256(h) => h.update(d),
        }
    }
    fn finish(self) -> Vec<u8> {
        match self {
            Hasher::Crc32(h) => h.finalize().to_be_bytes().to_vec(),
            Hasher::Crc32c(c) => c.to_be_bytes().to_vec(),
            Hasher::Crc64Nvme(h) => h.sum64().to_be_bytes().to_vec(),
            Hasher::Sha1(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
        }
    }
}

/// The checks one body must pass, fed as it streams.
pub struct BodyCheck {
    signed: Option<([u8; 32], sha2::Sha256)>,
    /// The body's MD5 (its ETag) and the `Content-MD5` it must match, if one was sent.
    md5: (md5::Md5, Option<[u8; 16]>),
    checksum: Option<(Algorithm, Hasher, Option<String>)>,
}

/// What a body that passed its checks was checked with (to return to the client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The body's MD5: S3's ETag of an object written whole.
    pub md5: [u8; 16],
    pub checksum: Option<(Algorithm, String)>,
}

impl BodyCheck {
    /// The checks a request's head asks for.
    pub fn new(payload: &Payload, headers: &HeaderMap) -> Result<BodyCheck, S3Error> {
        let signed = match payload {
            Payload::Sha256(h) => Some((*h, sha2::Sha256::new())),
            _ => None,
        };
        let md5 = match headers.get("content-md5") {
            None => None,
            Some(v) => {
                let mut want = [0u8; 16];
                let ok = v
                    .to_str()
                    .ok()
                    .and_then(|v| {
                        base64::engine::general_purpose::STANDARD
                            .decode(v.trim())
                            .ok()
                    })
                    .filter(|d| d.len() == 16)
                    .map(|d| want.copy_from_slice(&d));
                if ok.is_none() {
                    return Err(S3Error::new(
                        Code::InvalidDigest,
                        "Content-MD5 must be the base64 of 16 bytes",
                    ));
                }
                Some(want)
            }
        };
        let mut checksum = None;
        for (name, v) in headers {
            if let Some(a) = Algorithm::of_header(name.as_str()) {
                let a = a?;
                if checksum.is_some() {
                    return Err(S3Error::new(
                        Code::InvalidRequest,
                        "more than one x-amz-checksum-* header",
                    ));
                }
                let v = v.to_str().map_err(|_| {
                    S3Error::new(Code::InvalidDigest, "a checksum header is not base64")
                })?;
                checksum = Some((a, Hasher::new(a), Some(v.to_string())));
            }
        }
        if let Some(t) = headers.get("x-amz-trailer").and_then(|v| v.to_str().ok()) {
            let t = t.trim().to_ascii_lowercase();
            match Algorithm::of_header(&t) {
                Some(a) => {
                    let a = a?;
                    if checksum.is_some() {
                        return Err(S3Error::new(
                            Code::InvalidRequest,
                            "a checksum both in a header and in a trailer",
                        ));
                    }
                    checksum = Some((a, Hasher::new(a), None));
                }
                None => {
                    return Err(S3Error::new(
                        Code::InvalidArgument,
                        format!("x-amz-trailer {t:?} is not a checksum ostore knows"),
                    ))
                }
            }
        }
        Ok(BodyCheck {
            signed,
            md5: (md5::Md5::new(), md5),
            checksum,
        })
    }

    pub fn update(&mut self, data: &[u8]) {
        if let Some((_, h)) = &mut self.signed {
            h.update(data);
        }
        self.md5.0.update(data);
        if let Some((_, h, _)) = &mut self.checksum {
            h.update(data);
        }
    }

    /// The verdict once the body ended; `trailers` are an `aws-chunked` body's.
    pub fn finish(self, trailers: &[(String, String)]) -> Result<Checked, S3Error> {
        if let Some((want, h)) = self.signed {
            if <[u8; 32]>::from(h.finalize()) != want {
                return Err(S3Error::new(
                    Code::XAmzContentSHA256Mismatch,
                    "the body's SHA-256 is not the x-amz-content-sha256 it was signed with",
                ));
            }
        }
        let md5: [u8; 16] = self.md5.0.finalize().into();
        if self.md5.1.is_some_and(|want| want != md5) {
            return Err(S3Error::new(
                Code::BadDigest,
                "the Content-MD5 you specified did not match what was received",
            ));
        }
        let Some((a, h, given)) = self.checksum else {
            return Ok(Checked {
                md5,
                checksum: None,
            });
        };
        let given = match given {
            Some(g) => g,
            None => trailers
                .iter()
                .find(|(n, _)| n == a.header())
                .map(|(_, v)| v.clone())
                .ok_or_else(|| {
                    S3Error::new(
                        Code::InvalidRequest,
                        format!("the trailer {} announced did not come", a.header()),
                    )
                })?,
        };
        let got = base64::engine::general_purpose::STANDARD.encode(h.finish());
        if got != given.trim() {
            return Err(S3Error::new(
                Code::BadDigest,
                format!(
                    "the {} of the body is {got}, not the {given} sent",
                    a.header().trim_start_matches("x-amz-checksum-")
                ),
            ));
        }
        Ok(Checked {
            md5,
            checksum: Some((a, got)),
        })
    }
}

/// S3's ETag of an object completed from parts, without its `-N`: the MD5 of the parts' MD5s
/// (their ETags' bytes) one after another.
pub fn multipart_md5(parts: &[[u8; 16]]) -> [u8; 16] {
    let mut h = md5::Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn check(headers: &[(&str, &str)], payload: Payload, body: &[u8]) -> Result<Checked, S3Error> {
        let mut h = HeaderMap::new();
        for (n, v) in headers {
            h.insert(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut c = BodyCheck::new(&payload, &h)?;
        for piece in body.chunks(3) {
            c.update(piece);
        }
        c.finish(&[])
    }

    #[test]
    fn checksums_as_boto3_sends_them() {
        // boto3 1.44's default for "hello world": CRC32 DUoRhQ==.
        let ok = check(
            &[("x-amz-checksum-crc32", "DUoRhQ==")],
            Payload::Unsigned,
            b"hello world",
        )
        .unwrap();
        assert_eq!(ok.checksum, Some((Algorithm::Crc32, "DUoRhQ==".into())));
        assert_eq!(
            check(
                &[("x-amz-checksum-crc32", "DUoRhQ==")],
                Payload::Unsigned,
                b"hello worle"
            )
            .unwrap_err()
            .code,
            Code::BadDigest
        );
        // SHA-256 of 70,000 'x' (captured from boto3 with ChecksumAlgorithm=SHA256).
        let body = vec![b'x'; 70_000];
        check(
            &[(
                "x-amz-checksum-sha256",
                "vKCfSnV9VXHH2fM0HUMB88ORwJCCaswaMBPGvLfAFyI=",
            )],
            Payload::Unsigned,
            &body,
        )
        .unwrap();
        // The empty body's CRC32.
        check(
            &[("x-amz-checksum-crc32", "AAAAAA==")],
            Payload::Unsigned,
            b"",
        )
        .unwrap();
        // CRC-64/NVME("123456789") = 0xae8b14860a799888 (its catalogue check value).
        let c = check(
            &[("x-amz-checksum-crc64nvme", "rosUhgp5mIg=")],
            Payload::Unsigned,
            b"123456789",
        )
        .unwrap();
        assert_eq!(
            c.checksum,
            Some((Algorithm::Crc64Nvme, "rosUhgp5mIg=".to_string()))
        );
        assert_eq!(
            check(
                &[("x-amz-checksum-crc64nvme", "rosUhgp5mIg=")],
                Payload::Unsigned,
                b"123456780",
            )
            .unwrap_err()
            .code,
            Code::BadDigest
        );
    }

    #[test]
    fn content_md5() {
        // MD5("hello world") = 5eb63bbbe01eeed093cb22bb8f5acdc3.
        let md5 = [
            0x5e, 0xb6, 0x3b, 0xbb, 0xe0, 0x1e, 0xee, 0xd0, 0x93, 0xcb, 0x22, 0xbb, 0x8f, 0x5a,
            0xcd, 0xc3,
        ];
        let c = check(
            &[("content-md5", "XrY7u+Ae7tCTyyK7j1rNww==")],
            Payload::Unsigned,
            b"hello world",
        )
        .unwrap();
        assert_eq!(c.md5, md5);
        // The MD5 (the ETag) is taken whether or not the client sent one.
        assert_eq!(
            check(&[], Payload::Unsigned, b"hello world").unwrap().md5,
            md5
        );
        assert_eq!(
            check(
                &[("content-md5", "XrY7u+Ae7tCTyyK7j1rNww==")],
                Payload::Unsigned,
                b"hello"
            )
            .unwrap_err()
            .code,
            Code::BadDigest
        );
        assert_eq!(
            check(&[("content-md5", "nope")], Payload::Unsigned, b"")
                .unwrap_err()
                .code,
            Code::InvalidDigest
        );
    }

    #[test]
    fn the_signed_hash_and_a_trailer() {
        let h: [u8; 32] = sha2::Sha256::digest(b"abc").into();
        check(&[], Payload::Sha256(h), b"abc").unwrap();
        assert_eq!(
            check(&[], Payload::Sha256(h), b"abd").unwrap_err().code,
            Code::XAmzContentSHA256Mismatch
        );
        let mut hm = HeaderMap::new();
        hm.insert(
            "x-amz-trailer",
            HeaderValue::from_static("x-amz-checksum-crc32c"),
        );
        let mut c = BodyCheck::new(&Payload::Unsigned, &hm).unwrap();
        c.update(b"hello world");
        let crc = base64::engine::general_purpose::STANDARD
            .encode(crc32c::crc32c(b"hello world").to_be_bytes());
        let got = c
            .finish(&[("x-amz-checksum-crc32c".into(), crc.clone())])
            .unwrap();
        assert_eq!(got.checksum, Some((Algorithm::Crc32c, crc)));
        let c = BodyCheck::new(&Payload::Unsigned, &hm).unwrap();
        assert_eq!(c.finish(&[]).unwrap_err().code, Code::InvalidRequest);
    }

    #[test]
    fn multipart_etags_are_the_md5_of_the_part_md5s() {
        // Two parts "a" and "b": MD5(MD5("a") ‖ MD5("b")).
        let a: [u8; 16] = md5::Md5::digest(b"a").into();
        let b: [u8; 16] = md5::Md5::digest(b"b").into();
        let mut both = a.to_vec();
        both.extend_from_slice(&b);
        let want: [u8; 16] = md5::Md5::digest(&both).into();
        assert_eq!(multipart_md5(&[a, b]), want);
        assert_ne!(multipart_md5(&[b, a]), want);
    }
}
