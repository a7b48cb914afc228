//! Sizes as people write them on the command line.

/// Parses sizes like `4KiB`, `1MiB`, `64MiB`, `1GiB`, `512`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "KB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("unknown unit {other:?} in {s:?}")),
    };
    Ok(n * mult)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::parse_bytes("4KiB"), Ok(4096));
        assert_eq!(super::parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(super::parse_bytes("10"), Ok(10));
        assert!(super::parse_bytes("4XB").is_err());
    }
}
