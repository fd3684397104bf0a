//! The OpenAI rate-limit headers: `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`,
//! with resets formatted as OpenAI does (`20ms`, `1s`, `6m0s`).

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::{Quota, RateState};

const REQUESTS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-requests"),
    HeaderName::from_static("x-ratelimit-remaining-requests"),
    HeaderName::from_static("x-ratelimit-reset-requests"),
];
const TOKENS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-tokens"),
    HeaderName::from_static("x-ratelimit-remaining-tokens"),
    HeaderName::from_static("x-ratelimit-reset-tokens"),
];

/// Adds the headers of every limit the key has.
pub fn put(headers: &mut HeaderMap, state: &RateState) {
    if let Some(quota) = state.requests {
        put_quota(headers, &REQUESTS, quota);
    }
    if let Some(quota) = state.tokens {
        put_quota(headers, &TOKENS, quota);
    }
}

fn put_quota(headers: &mut HeaderMap, names: &[HeaderName; 3], quota: Quota) {
    headers.insert(names[0].clone(), HeaderValue::from(quota.limit));
    headers.insert(names[1].clone(), HeaderValue::from(quota.remaining));
    let reset =
        HeaderValue::try_from(reset_text(quota.reset)).expect("invariant: reset text is ASCII");
    headers.insert(names[2].clone(), reset);
}

/// `20ms`, `1s`, `6m0s`, `1h2m3s`: whole units, seconds rounded up.
pub fn reset_text(reset: Duration) -> String {
    let millis = reset.as_millis();
    if millis < 1000 {
        return format!("{millis}ms");
    }
    let secs = millis.div_ceil(1000);
    let (hours, minutes, seconds) = (secs / 3600, secs % 3600 / 60, secs % 60);
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, _) => format!("{minutes}m{seconds}s"),
        _ => format!("{hours}h{minutes}m{seconds}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resets_are_formatted_as_openai_does() {
        let rows = [
            (0, "0ms"),
            (20, "20ms"),
            (1000, "1s"),
            (1001, "2s"),
            (59_000, "59s"),
            (360_000, "6m0s"),
            (3_723_000, "1h2m3s"),
        ];
        for (millis, text) in rows {
            assert_eq!(reset_text(Duration::from_millis(millis)), text);
        }
    }
}
