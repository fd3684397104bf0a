//! How long an upstream asked us to wait (`retry-after-ms`, `retry-after` in seconds or as an
//! HTTP date), as a bounded `Duration`: one header can never cool a backend down for years or
//! overflow the arithmetic that follows.

use std::time::{Duration, SystemTime};

/// Reads the upstream's wait: `retry-after-ms` (milliseconds, as OpenAI and Azure send it)
/// when it parses, else `retry-after` as whole or fractional seconds or an HTTP date (a date in
/// the past is no wait). The result is at most `max`; anything unreadable is `None`.
pub fn requested_wait(
    retry_after: Option<&[u8]>,
    retry_after_ms: Option<&[u8]>,
    now: SystemTime,
    max: Duration,
) -> Option<Duration> {
    let from_ms = retry_after_ms.and_then(|v| seconds(v, 1000.0));
    let wait = from_ms.or_else(|| {
        let value = retry_after?;
        seconds(value, 1.0).or_else(|| until_date(value, now))
    })?;
    Some(wait.min(max))
}

/// A non-negative decimal number of `per_second` units, saturating at a day.
fn seconds(value: &[u8], per_second: f64) -> Option<Duration> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let number: f64 = text.parse().ok()?;
    let secs = (number / per_second).min(DAY_SECS);
    Duration::try_from_secs_f64(secs).ok()
}

const DAY_SECS: f64 = 86_400.0;

/// The time from `now` until an HTTP date (IMF-fixdate, RFC 850 or asctime).
fn until_date(value: &[u8], now: SystemTime) -> Option<Duration> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(60);

    fn wait(retry_after: Option<&str>, ms: Option<&str>) -> Option<Duration> {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").expect("date");
        requested_wait(
            retry_after.map(str::as_bytes),
            ms.map(str::as_bytes),
            now,
            MAX,
        )
    }

    #[test]
    fn seconds_milliseconds_and_dates_are_read_and_clamped() {
        let secs = Duration::from_secs;
        let rows = [
            (Some("3"), None, Some(secs(3))),
            (Some(" 2.5 "), None, Some(Duration::from_millis(2500))),
            (Some("3"), Some("250"), Some(Duration::from_millis(250))),
            (Some("3"), Some("soon"), Some(secs(3))),
            (Some("99999999999999999999999"), None, Some(MAX)),
            (Some("1e400"), None, None),
            (Some("-5"), None, None),
            (Some("Sun, 06 Nov 1994 08:49:47 GMT"), None, Some(secs(10))),
            (Some("Sunday, 06-Nov-94 08:50:37 GMT"), None, Some(MAX)),
            (Some("Sun Nov  6 08:49:27 1994"), None, Some(Duration::ZERO)),
            (Some("Fri, 31 Dec 9999 23:59:59 GMT"), None, Some(MAX)),
            (Some("tomorrow"), None, None),
            (None, Some("NaN"), None),
            (None, None, None),
        ];
        for (retry_after, ms, expected) in rows {
            assert_eq!(wait(retry_after, ms), expected, "{retry_after:?} {ms:?}");
        }
    }

    mod properties {
        use proptest::prelude::*;

        use crate::test_support::cases;

        use super::*;

        proptest! {
            #![proptest_config(cases(512))]

            #[test]
            fn any_header_bytes_give_a_wait_no_longer_than_the_maximum(
                retry_after in prop::option::of(prop::collection::vec(any::<u8>(), 0..40)),
                retry_after_ms in prop::option::of("[0-9.eE+-]{0,24}"),
                now_secs in any::<u32>(),
            ) {
                let now = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(now_secs));
                let wait = requested_wait(
                    retry_after.as_deref(),
                    retry_after_ms.as_deref().map(str::as_bytes),
                    now,
                    MAX,
                );
                prop_assert!(wait.is_none_or(|w| w <= MAX));
            }
        }
    }
}
