//! Sizes as people write them on command lines (`4KiB`, `64MiB`, `1GiB`, `500MB`, `512`).

/// Parses a size: digits, then an optional unit (binary `KiB`/`K`/`k`, `MiB`/`M`, `GiB`/`G`,
/// `TiB`/`T`; decimal `KB`, `MB`, `GB`, `TB`; `B` or none for bytes). Refuses what would
/// overflow.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "TiB" | "T" => 1 << 40,
        "KB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => return Err(format!("unknown unit {other:?} in {s:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("4KiB"), Ok(4096));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("2TiB"), Ok(2 << 40));
        assert_eq!(parse_bytes("500MB"), Ok(500_000_000));
        assert_eq!(parse_bytes("10"), Ok(10));
        assert!(parse_bytes("4XB").is_err());
        assert!(parse_bytes("MiB").is_err());
        assert!(
            parse_bytes("99999999999TiB").is_err(),
            "overflow is refused"
        );
    }
}
