//! Access keys besides `root`: their ids, their secrets (derived from the key base the data
//! plane holds and a per-key salt, so no secret is ever stored), and what each may do (its
//! buckets, read-only).

use crate::error::{Code, S3Error};
use crate::route::Op;
use base64::Engine as _;
use hmac::{Hmac, Mac};

/// A new access key id from 15 random bytes: `OS` and 24 characters of base32 (upper case and
/// digits, like AWS's ids).
pub fn new_id(random: [u8; 15]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bits: u128 = 0;
    for b in random {
        bits = (bits << 8) | u128::from(b);
    }
    let mut out = String::from("OS");
    for i in (0..24).rev() {
        out.push(ALPHABET[((bits >> (i * 5)) & 31) as usize] as char);
    }
    out
}

/// The secret of access key `id` with `salt`: 40 characters of base64url of
/// HMAC-SHA256(key base, domain tag, id, salt). The key base is the first root secret in
/// `ostore dev` and a random secret the control plane keeps in a new cluster; it never
/// rotates. Anyone with the key base and the salt can derive it; no one without the base can,
/// even holding the metadata.
pub fn derive_secret(key_base: &str, id: &str, salt: &[u8; 16]) -> String {
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(key_base.as_bytes()).expect("HMAC takes any key");
    mac.update(b"ostore s3 access key v1\0");
    mac.update(id.as_bytes());
    mac.update(&[0]);
    mac.update(salt);
    let b = mac.finalize().into_bytes();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&b[..30])
}

/// What a key other than `root` may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The buckets it may use; empty: every bucket.
    pub buckets: Vec<String>,
    /// Reads and listings only.
    pub read_only: bool,
}

impl Scope {
    /// Whether it may use `bucket`.
    pub fn has_bucket(&self, bucket: &str) -> bool {
        self.buckets.is_empty() || self.buckets.iter().any(|b| b == bucket)
    }

    /// Whether it may carry out `op` (a copy also reads `copy_from`'s bucket). Creating and
    /// deleting buckets takes a key without a bucket list; ListBuckets is allowed (the front
    /// end lists only the key's buckets).
    pub fn allows(&self, op: &Op, copy_from: Option<&str>) -> Result<(), S3Error> {
        let denied = |m: String| Err(S3Error::new(Code::AccessDenied, m));
        let writes = !matches!(
            op,
            Op::ListBuckets
                | Op::HeadBucket { .. }
                | Op::GetBucketLocation { .. }
                | Op::GetBucketVersioning { .. }
                | Op::ListObjectsV2 { .. }
                | Op::ListObjects { .. }
                | Op::ListObjectVersions { .. }
                | Op::ListMultipartUploads { .. }
                | Op::GetObject { .. }
                | Op::HeadObject { .. }
                | Op::ListParts { .. }
        );
        if writes && self.read_only {
            return denied(format!("this key is read-only: {} writes", op.name()));
        }
        if matches!(op, Op::CreateBucket { .. } | Op::DeleteBucket { .. })
            && !self.buckets.is_empty()
        {
            return denied("a key limited to buckets cannot create or delete buckets".into());
        }
        if let Some(b) = op.bucket() {
            if !self.has_bucket(b) {
                return denied(format!("this key may not use the bucket {b:?}"));
            }
        }
        if let Some(b) = copy_from.filter(|b| !self.has_bucket(b)) {
            return denied(format!("this key may not read the bucket {b:?}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_secrets() {
        let id = new_id([0xAB; 15]);
        assert_eq!(id.len(), 26);
        assert!(id.starts_with("OS") && id.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(new_id([1; 15]), new_id([2; 15]));
        let s = derive_secret("root", &id, &[1; 16]);
        assert_eq!(s.len(), 40);
        assert_eq!(s, derive_secret("root", &id, &[1; 16]));
        assert_ne!(s, derive_secret("root", &id, &[2; 16]));
        assert_ne!(s, derive_secret("other root", &id, &[1; 16]));
        assert_ne!(s, derive_secret("root", "OSX", &[1; 16]));
    }

    #[test]
    fn scopes() {
        let get = |b: &str| Op::GetObject {
            bucket: b.into(),
            key: "k".into(),
        };
        let put = |b: &str| Op::PutObject {
            bucket: b.into(),
            key: "k".into(),
        };
        let any = Scope {
            buckets: vec![],
            read_only: false,
        };
        assert!(any.allows(&put("x"), None).is_ok());
        assert!(any
            .allows(&Op::CreateBucket { bucket: "x".into() }, None)
            .is_ok());
        let photos = Scope {
            buckets: vec!["photos".into()],
            read_only: false,
        };
        assert!(photos.allows(&put("photos"), None).is_ok());
        assert!(photos.allows(&Op::ListBuckets, None).is_ok());
        let code = |r: Result<(), S3Error>| r.unwrap_err().code;
        assert_eq!(code(photos.allows(&put("other"), None)), Code::AccessDenied);
        assert_eq!(code(photos.allows(&get("other"), None)), Code::AccessDenied);
        assert_eq!(
            code(photos.allows(
                &Op::DeleteBucket {
                    bucket: "photos".into()
                },
                None
            )),
            Code::AccessDenied
        );
        // A copy into its bucket from one it may not read.
        let copy = Op::CopyObject {
            bucket: "photos".into(),
            key: "k".into(),
        };
        assert!(photos.allows(&copy, Some("photos")).is_ok());
        assert_eq!(
            code(photos.allows(&copy, Some("other"))),
            Code::AccessDenied
        );
        let reader = Scope {
            buckets: vec![],
            read_only: true,
        };
        assert!(reader.allows(&get("x"), None).is_ok());
        assert!(reader
            .allows(&Op::ListObjectsV2 { bucket: "x".into() }, None)
            .is_ok());
        assert_eq!(code(reader.allows(&put("x"), None)), Code::AccessDenied);
        assert_eq!(
            code(reader.allows(
                &Op::DeleteObject {
                    bucket: "x".into(),
                    key: "k".into()
                },
                None
            )),
            Code::AccessDenied
        );
        assert_eq!(
            code(reader.allows(
                &Op::CreateMultipartUpload {
                    bucket: "x".into(),
                    key: "k".into()
                },
                None
            )),
            Code::AccessDenied
        );
    }
}
