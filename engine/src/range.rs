//! Byte ranges (RFC 9110 §14) resolved against an object's size.

use std::ops::Range;

/// What a `Range` header means for an object of a given size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeDecision {
    /// Serve the whole object with 200 (no header, or one we ignore: multiple ranges or a
    /// header that does not parse, as RFC 9110 allows).
    Full,
    /// Serve these bytes with 206.
    Partial(Range<u64>),
    /// 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
}

/// Resolves a `Range` header value against `size` bytes.
pub fn resolve(header: Option<&str>, size: u64) -> RangeDecision {
    let Some(h) = header else {
        return RangeDecision::Full;
    };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return RangeDecision::Full;
    };
    if spec.contains(',') {
        return RangeDecision::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeDecision::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let parse = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    if a.is_empty() {
        let Some(n) = parse(b) else {
            return RangeDecision::Full;
        };
        if n == 0 || size == 0 {
            return RangeDecision::Unsatisfiable;
        }
        return RangeDecision::Partial(size.saturating_sub(n)..size);
    }
    let Some(start) = parse(a) else {
        return RangeDecision::Full;
    };
    let end_incl = if b.is_empty() {
        None
    } else {
        match parse(b) {
            Some(e) if e >= start => Some(e),
            _ => return RangeDecision::Full,
        }
    };
    if start >= size {
        return RangeDecision::Unsatisfiable;
    }
    // A last-byte-pos at or past the end means "to the end" (RFC 9110 §14.1.2); it may be as
    // large as u64::MAX, so it is clamped before the exclusive end is formed.
    let end = end_incl.map_or(size, |e| e.min(size - 1) + 1);
    RangeDecision::Partial(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeDecision::*;

    #[test]
    fn forms() {
        assert_eq!(resolve(None, 10), Full);
        assert_eq!(resolve(Some("bytes=1-3"), 10), Partial(1..4));
        assert_eq!(resolve(Some("bytes=1-"), 10), Partial(1..10));
        assert_eq!(resolve(Some("bytes=-3"), 10), Partial(7..10));
        assert_eq!(resolve(Some("bytes=-30"), 10), Partial(0..10));
        assert_eq!(resolve(Some("bytes=5-100"), 10), Partial(5..10));
        assert_eq!(resolve(Some("bytes=9-9"), 10), Partial(9..10));
        assert_eq!(resolve(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(resolve(Some("bytes=10-20"), 10), Unsatisfiable);
        assert_eq!(resolve(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(resolve(Some("bytes=0-0"), 0), Unsatisfiable);
        assert_eq!(resolve(Some("bytes=-5"), 0), Unsatisfiable);
        assert_eq!(resolve(Some("bytes=3-1"), 10), Full);
        assert_eq!(resolve(Some("bytes=a-b"), 10), Full);
        assert_eq!(resolve(Some("bytes=0-1,3-4"), 10), Full);
        assert_eq!(resolve(Some("items=0-1"), 10), Full);
    }

    #[test]
    fn a_last_byte_past_any_size_means_to_the_end() {
        let max = u64::MAX;
        assert_eq!(resolve(Some(&format!("bytes=5-{max}")), 10), Partial(5..10));
        assert_eq!(resolve(Some(&format!("bytes=0-{max}")), 10), Partial(0..10));
        assert_eq!(
            resolve(Some(&format!("bytes={max}-{max}")), 10),
            Unsatisfiable
        );
        assert_eq!(resolve(Some(&format!("bytes=-{max}")), 10), Partial(0..10));
        assert_eq!(
            resolve(Some(&format!("bytes=0-{max}")), max),
            Partial(0..max)
        );
        // Past u64: does not parse, so the header is ignored.
        assert_eq!(resolve(Some("bytes=0-18446744073709551616"), 10), Full);
    }

    /// Whatever the header, a partial range lies inside the object and is not empty.
    #[test]
    fn every_partial_range_is_inside_the_object() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let edge = [0, 1, 2, 9, 10, 11, u64::MAX - 1, u64::MAX];
        for _ in 0..20_000 {
            let mut pick = || match next() % 3 {
                0 => edge[(next() % edge.len() as u64) as usize],
                1 => next() % 32,
                _ => next(),
            };
            let (a, b, size) = (pick(), pick(), pick());
            for h in [
                format!("bytes={a}-{b}"),
                format!("bytes={a}-"),
                format!("bytes=-{b}"),
            ] {
                if let Partial(r) = resolve(Some(&h), size) {
                    assert!(r.start < r.end && r.end <= size, "{h} on {size}: {r:?}");
                }
            }
        }
    }
}
