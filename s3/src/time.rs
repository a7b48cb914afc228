//! Timestamps as S3 writes them: `20130524T000000Z` (SigV4's `X-Amz-Date`), `20130524` (the
//! credential scope's date), and ISO 8601 with milliseconds (`2013-05-24T00:00:00.000Z`, in
//! XML listings). Seconds since the Unix epoch, UTC, proleptic Gregorian calendar.

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn digits(s: &[u8]) -> Option<u32> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u32, |acc, &b| {
        acc.checked_mul(10)?.checked_add((b - b'0') as u32)
    })
}

/// Parses `YYYYMMDDTHHMMSSZ` into seconds since the epoch; `None` unless exactly that form
/// and a real date and time.
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let day = parse_scope_date(&s[..8])?;
    let (h, mi, se) = (digits(&b[9..11])?, digits(&b[11..13])?, digits(&b[13..15])?);
    if h > 23 || mi > 59 || se > 60 {
        return None;
    }
    Some(day * 86_400 + (h * 3600 + mi * 60 + se) as i64)
}

/// Parses `YYYYMMDD` into the seconds since the epoch at its midnight divided by a day (the
/// day number); `None` unless a real date.
pub fn parse_scope_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 8 {
        return None;
    }
    let (y, m, d) = (digits(&b[..4])?, digits(&b[4..6])?, digits(&b[6..8])?);
    if !(1..=12).contains(&m) || d == 0 {
        return None;
    }
    let days = days_from_civil(y as i64, m, d);
    // A day past the month's end would roll over: reject it.
    (civil_from_days(days) == (y as i64, m, d)).then_some(days)
}

/// Parses an HTTP date in its fixed form (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110's
/// IMF-fixdate, what `Date` and SigV2's `x-amz-date` carry) into seconds since the epoch;
/// `None` unless exactly that form and a real date and time. The weekday is not checked.
pub fn parse_http_date(s: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let b = s.as_bytes();
    if b.len() != 29 || &b[3..5] != b", " || b[7] != b' ' || b[11] != b' ' || b[16] != b' ' {
        return None;
    }
    if b[19] != b':' || b[22] != b':' || &b[25..] != b" GMT" {
        return None;
    }
    let m = MONTHS.iter().position(|n| n.as_bytes() == &b[8..11])? as u32 + 1;
    let (d, y) = (digits(&b[5..7])?, digits(&b[12..16])?);
    let (h, mi, se) = (
        digits(&b[17..19])?,
        digits(&b[20..22])?,
        digits(&b[23..25])?,
    );
    if d == 0 || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let days = days_from_civil(y as i64, m, d);
    (civil_from_days(days) == (y as i64, m, d))
        .then_some(days * 86_400 + (h * 3600 + mi * 60 + se) as i64)
}

/// `YYYYMMDDTHHMMSSZ` of seconds since the epoch.
pub fn amz_date(unix_s: i64) -> String {
    let (y, m, d) = civil_from_days(unix_s.div_euclid(86_400));
    let s = unix_s.rem_euclid(86_400);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of milliseconds since the epoch.
pub fn iso8601_ms(unix_ms: u64) -> String {
    let s = (unix_ms / 1000) as i64;
    let (y, m, d) = civil_from_days(s.div_euclid(86_400));
    let r = s.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        r / 3600,
        r / 60 % 60,
        r % 60,
        unix_ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_and_reject_what_is_not_one() {
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert_eq!(parse_amz_date("20130524T000000Z"), Some(1_369_353_600));
        assert_eq!(amz_date(1_369_353_600), "20130524T000000Z");
        assert_eq!(parse_amz_date("20000229T235959Z"), Some(951_868_799));
        for bad in [
            "20130524T000000",
            "2013052T000000Z0",
            "20130230T000000Z",
            "20131324T000000Z",
            "20130524T240000Z",
            "2013-5-24T00000Z",
            "+0130524T000000Z",
            "",
        ] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
        for days in [-1000i64, 0, 1, 59, 365, 11_000, 20_000, 100_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(iso8601_ms(1_369_353_600_123), "2013-05-24T00:00:00.123Z");
    }

    #[test]
    fn http_dates_parse_in_their_fixed_form_only() {
        assert_eq!(
            parse_http_date("Fri, 24 May 2013 00:00:00 GMT"),
            Some(1_369_353_600)
        );
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2000 23:59:59 GMT"),
            Some(951_868_799)
        );
        for bad in [
            "Fri, 24 May 2013 00:00:00 UTC",
            "Friday, 24-May-13 00:00:00 GMT",
            "Fri May 24 00:00:00 2013",
            "Fri, 30 Feb 2013 00:00:00 GMT",
            "Fri, 24 Mai 2013 00:00:00 GMT",
            "Fri, 24 May 2013 24:00:00 GMT",
            "Fri, 00 May 2013 00:00:00 GMT",
            "Fri, 24 May 2013 00:00:00 GMTx",
            "Fri, 24 May 2013 00:00:0é GMT",
            "",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }
}
