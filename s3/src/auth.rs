//! A request's signature, whichever kind it carries: SigV4 (in the `Authorization` header or
//! a presigned URL) or SigV2 (the same two ways).

use crate::error::S3Error;
use crate::sigv4::{RequestHead, Verified};

/// Checks `head`'s signature at `now_s`; `secret_of` gives an access key's secret;
/// `host_bucket` is the bucket a virtual-hosted request names in its host (SigV2 signs it as
/// part of the resource; SigV4 signs the path as sent). Anonymous requests are refused.
pub fn verify(
    head: &RequestHead<'_>,
    host_bucket: Option<&str>,
    now_s: i64,
    secret_of: &dyn Fn(&str) -> Option<String>,
) -> Result<Verified, S3Error> {
    if crate::sigv2::is_presigned_v2(head.query) && !crate::sigv4::is_presigned(head.query) {
        return crate::sigv2::verify_presigned(head, host_bucket, now_s, secret_of);
    }
    if crate::sigv2::is_header_v2(head) {
        return crate::sigv2::verify_header(head, host_bucket, now_s, secret_of);
    }
    crate::sigv4::verify(head, now_s, secret_of)
}
