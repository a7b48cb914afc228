//! Timestamps as clients see them.

/// Formats milliseconds since the Unix epoch as RFC 3339 UTC, e.g. `2026-11-26T00:24:19.123Z`
/// (S3's timestamp form too).
pub fn rfc3339_ms(ms: u64) -> String {
    ostore_s3::time::iso8601_ms(ms)
}

/// Seconds since the Unix epoch, now (SigV4's clock).
pub fn now_unix_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Formats milliseconds since the Unix epoch as an HTTP date (seconds precision).
pub fn http_date(ms: u64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats() {
        assert_eq!(super::rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::rfc3339_ms(1_795_652_659_123),
            "2026-11-26T00:24:19.123Z"
        );
        assert_eq!(
            super::http_date(784_111_777_000),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
    }
}
