//! RFC 3339 timestamps as integer milliseconds.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Parses an RFC 3339 timestamp into milliseconds since the Unix epoch.
///
/// The common `YYYY-MM-DDTHH:MM:SS[.fff…]Z` shape takes a fast path (it is on
/// the decode hot path); every other valid form goes through `time`.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    parse_utc_fast(text.as_bytes()).or_else(|| {
        let parsed = OffsetDateTime::parse(text, &Rfc3339).ok()?;
        i64::try_from(parsed.unix_timestamp_nanos().div_euclid(1_000_000)).ok()
    })
}

/// Formats milliseconds since the epoch as RFC 3339 UTC with milliseconds.
pub fn format_rfc3339_ms(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

fn digits(bytes: &[u8]) -> Option<i64> {
    let mut value = 0i64;
    for &b in bytes {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + i64::from(b - b'0');
    }
    Some(value)
}

fn parse_utc_fast(b: &[u8]) -> Option<i64> {
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' || !matches!(b[b.len() - 1], b'Z' | b'z') {
        return None;
    }
    let (year, month, day) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    let (hour, minute, second) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    let frac = &b[19..b.len() - 1];
    let millis = match frac {
        [] => 0,
        [b'.', rest @ ..] if !rest.is_empty() && rest.len() <= 9 => {
            let mut ms = 0;
            for i in 0..3 {
                let d = rest.get(i).copied().unwrap_or(b'0');
                if !d.is_ascii_digit() {
                    return None;
                }
                ms = ms * 10 + i64::from(d - b'0');
            }
            digits(rest)?;
            ms
        }
        _ => return None,
    };
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    // 60 is a leap second, which RFC 3339 allows; `time` folds it the same way.
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's days_from_civil / civil_from_days.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_contract_example() {
        assert_eq!(
            parse_rfc3339_ms("2026-11-27T10:15:02.123Z"),
            Some(1_795_774_502_123)
        );
    }

    #[test]
    fn accepts_offsets_through_the_slow_path() {
        assert_eq!(
            parse_rfc3339_ms("2026-11-27T11:15:02.123+01:00"),
            parse_rfc3339_ms("2026-11-27T10:15:02.123Z")
        );
    }

    #[test]
    fn rejects_garbage_and_impossible_dates() {
        for bad in ["yesterday", "2026-02-30T00:00:00Z", "2026-11-27 10:15", ""] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn fast_path_agrees_with_time_crate(ms in 0i64..8_000_000_000_000) {
            let text = format_rfc3339_ms(ms);
            prop_assert_eq!(parse_utc_fast(text.as_bytes()), Some(ms));
            let slow = OffsetDateTime::parse(&text, &Rfc3339).unwrap();
            prop_assert_eq!(slow.unix_timestamp_nanos() / 1_000_000, i128::from(ms));
        }
    }
}
