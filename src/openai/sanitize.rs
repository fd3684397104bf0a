//! The one place upstream-provided error text is made safe to show a client: only the message
//! is kept, URLs and key-like words are masked, control characters dropped, length bounded.

use super::error_body::{UpstreamErrorBody, UpstreamErrorDetail};
use crate::error::GatewayError;

const MAX_MESSAGE_CHARS: usize = 512;

/// The client-safe message of an upstream error body (a whole body or an in-band `error` value).
pub fn upstream_message(raw: &[u8]) -> Option<String> {
    let message = error_detail(raw)?.message().map(str::to_owned)?;
    let clean = sanitize(&message);
    (!clean.is_empty()).then_some(clean)
}

/// The error for an `error` object inside a 200 answer (`raw` is its JSON value).
pub fn in_band_error(raw: &[u8]) -> GatewayError {
    GatewayError::UpstreamInBand {
        message: upstream_message(raw).unwrap_or_else(|| "unspecified error".into()),
        request_fault: error_detail(raw).is_some_and(|d| d.blames_the_request()),
    }
}

/// An upstream error: a whole body (`{"error": ...}`) or just the `error` value.
fn error_detail(raw: &[u8]) -> Option<UpstreamErrorDetail> {
    match serde_json::from_slice::<UpstreamErrorBody>(raw) {
        Ok(body) => Some(body.error),
        Err(_) => serde_json::from_slice::<UpstreamErrorDetail>(raw).ok(),
    }
}

/// Masks URLs and secret-looking words, turns every run of whitespace or control characters
/// into one space, bounds the length. Words are split on any whitespace or control character
/// and masked before anything is joined, so a key after a newline or a tab is still masked and
/// no two words are glued together. The word after an authorization scheme (`Bearer`,
/// `Basic`) is the credential itself, so it is masked whatever it looks like.
pub fn sanitize(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MAX_MESSAGE_CHARS));
    let words = message
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|word| !word.is_empty());
    let mut credential_follows = false;
    for word in words {
        if !out.is_empty() {
            out.push(' ');
        }
        if credential_follows || looks_secret_or_url(word) {
            out.push_str("[redacted]");
        } else {
            out.push_str(word);
        }
        credential_follows = names_a_scheme(word);
        if out.len() > MAX_MESSAGE_CHARS * 4 {
            break;
        }
    }
    match out.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => {
            out.truncate(cut);
            out.push('…');
            out
        }
        None => out,
    }
}

/// `Bearer`, `Basic` (any case, punctuation around them ignored).
fn names_a_scheme(word: &str) -> bool {
    let word = word.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    word.eq_ignore_ascii_case("bearer") || word.eq_ignore_ascii_case("basic")
}

fn looks_secret_or_url(word: &str) -> bool {
    if word.contains("://") {
        return true;
    }
    let word = word.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    word.starts_with("sk-") || word.starts_with("Bearer") || (word.len() >= 40 && word.is_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_message_and_masks_what_must_not_leak() {
        let rows = [
            (
                r#"{"error":{"message":"context too long","type":"x"}}"#,
                Some("context too long"),
            ),
            (r#"{"error":"plain text error"}"#, Some("plain text error")),
            (
                r#"{"message":"bare detail object"}"#,
                Some("bare detail object"),
            ),
            (
                r#"{"error":{"message":"see http://10.0.0.3:8000/v1 now"}}"#,
                Some("see [redacted] now"),
            ),
            (
                r#"{"error":{"message":"bad key sk-abc123"}}"#,
                Some("bad key [redacted]"),
            ),
            (
                r#"{"error":{"message":"line\u0000break"}}"#,
                Some("line break"),
            ),
            (
                r#"{"error":{"message":"bad key:\nsk-abc123 and\tBearer\r\nxyz"}}"#,
                Some("bad key: [redacted] and [redacted] [redacted]"),
            ),
            (
                r#"{"error":{"message":"upstream\thttp://10.0.0.3/v1\u001bfailed"}}"#,
                Some("upstream [redacted] failed"),
            ),
            (
                r#"{"error":{"message":"  spaced   out\n\n"}}"#,
                Some("spaced out"),
            ),
            ("not json", None),
        ];
        for (raw, expected) in rows {
            assert_eq!(
                upstream_message(raw.as_bytes()).as_deref(),
                expected,
                "{raw}"
            );
        }
        assert_eq!(
            sanitize(&"a ".repeat(600)).chars().count(),
            MAX_MESSAGE_CHARS + 1,
            "bounded length"
        );
    }

    mod properties {
        use proptest::prelude::*;

        use crate::test_support::cases;

        use super::*;

        proptest! {
            #![proptest_config(cases(512))]

            #[test]
            fn any_text_comes_out_bounded_single_spaced_and_masked(
                words in prop::collection::vec(
                    prop_oneof![
                        "\\PC{0,12}",
                        Just("sk-live-abcdef".to_owned()),
                        Just("http://10.0.0.1/x".to_owned()),
                    ],
                    0..40,
                ),
                separators in prop::collection::vec(prop::sample::select(vec![" ", "\n", "\t", "\r\n", "\u{0}", "  "]), 40),
            ) {
                let text: String = words
                    .iter()
                    .zip(&separators)
                    .map(|(w, s)| format!("{w}{s}"))
                    .collect();
                let clean = sanitize(&text);
                prop_assert!(clean.chars().count() <= MAX_MESSAGE_CHARS + 1);
                prop_assert!(!clean.contains("sk-live"), "{}", clean);
                prop_assert!(!clean.contains("://"), "{}", clean);
                prop_assert!(!clean.contains("  ") && !clean.chars().any(|c| c.is_control() || (c.is_whitespace() && c != ' ')));
            }
        }
    }
}
