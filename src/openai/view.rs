//! A borrowed view of an upstream JSON object: the few top-level fields the gateway reads,
//! located by span so the model name can be replaced without re-serialising the object.

use bytes::{BufMut, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::usage::Usage;

/// The fields of one response object or chunk; everything else is skipped unparsed.
#[derive(Debug, Deserialize)]
pub struct ObjectView<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    usage: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
    #[serde(borrow, default)]
    choices: Option<&'a RawValue>,
}

impl<'a> ObjectView<'a> {
    pub fn parse(json: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(json)
    }

    /// The `usage` object, when present and not `null`.
    pub fn usage(&self) -> Option<Usage> {
        non_null(self.usage).and_then(|raw| serde_json::from_str(raw.get()).ok())
    }

    /// The `usage` object in the Responses API's names (`input_tokens`, `output_tokens`).
    pub fn responses_usage(&self) -> Option<Usage> {
        non_null(self.usage).and_then(|raw| Usage::from_responses(raw.get()))
    }

    /// The raw `error` value, when present and not `null` (an in-band upstream error).
    pub fn error(&self) -> Option<&'a str> {
        non_null(self.error).map(RawValue::get)
    }

    /// The raw `choices` value, when present and not `null`.
    pub fn choices(&self) -> Option<&'a str> {
        non_null(self.choices).map(RawValue::get)
    }

    /// True when `choices` is present and empty (OpenAI's usage-only chunk).
    pub fn has_no_choices(&self) -> bool {
        self.choices.is_some_and(|raw| {
            raw.get()
                .bytes()
                .all(|b| matches!(b, b'[' | b']') || b.is_ascii_whitespace())
        })
    }

    /// True when no choice carries anything for the client: `choices` absent, empty, or every
    /// choice with an empty (or no) `delta` or `text` and no `finish_reason`. Servers such as LiteLLM
    /// send their usage chunk so (`"choices":[{"index":0,"delta":{}}]`) instead of OpenAI's
    /// `"choices":[]`. Only asked of chunks that carry usage, so the parse is rare.
    pub fn choices_carry_nothing(&self) -> bool {
        let Some(raw) = non_null(self.choices) else {
            return true;
        };
        let Ok(choices) = serde_json::from_str::<Vec<ChoiceView<'_>>>(raw.get()) else {
            return false;
        };
        choices.iter().all(|choice| {
            non_null(choice.finish_reason).is_none()
                && non_null(choice.text).is_none_or(|text| text.get() == "\"\"")
                && non_null(choice.delta).is_none_or(|delta| {
                    delta
                        .get()
                        .bytes()
                        .all(|b| matches!(b, b'{' | b'}') || b.is_ascii_whitespace())
                })
        })
    }

    /// Appends `json` to `out` with the `model` value replaced by `model_json` (a JSON string
    /// literal) and, with `hide_usage`, the `usage` value replaced by `null`. Only those spans
    /// change; every other byte is copied as it came.
    pub fn put_rewritten(
        &self,
        json: &[u8],
        model_json: &[u8],
        hide_usage: bool,
        out: &mut BytesMut,
    ) {
        out.reserve(json.len() + model_json.len());
        let model = self
            .model
            .and_then(|raw| span_in(json, raw.get()))
            .map(|span| (span, model_json));
        let usage = self
            .usage
            .filter(|_| hide_usage)
            .and_then(|raw| span_in(json, raw.get()))
            .map(|span| (span, b"null".as_slice()));
        let mut splices: Vec<_> = model.into_iter().chain(usage).collect();
        splices.sort_by_key(|((start, _), _)| *start);
        let mut at = 0;
        for ((start, end), replacement) in splices {
            out.put_slice(&json[at..start]);
            out.put_slice(replacement);
            at = end;
        }
        out.put_slice(&json[at..]);
    }
}

/// The two fields of a choice that say whether it carries anything.
#[derive(Debug, Deserialize)]
struct ChoiceView<'a> {
    #[serde(borrow, default)]
    delta: Option<&'a RawValue>,
    /// A legacy completion's generated text.
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    #[serde(borrow, default)]
    finish_reason: Option<&'a RawValue>,
}

fn non_null(raw: Option<&RawValue>) -> Option<&RawValue> {
    raw.filter(|r| r.get() != "null")
}

/// The byte range of `part` inside `whole`, when `part` borrows from it.
fn span_in(whole: &[u8], part: &str) -> Option<(usize, usize)> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= whole.len()).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_model(json: &str, model: &str) -> String {
        let view = ObjectView::parse(json.as_bytes()).expect("valid JSON object");
        let mut out = BytesMut::new();
        let model_json = serde_json::to_vec(model).expect("string serialises");
        view.put_rewritten(json.as_bytes(), &model_json, false, &mut out);
        String::from_utf8(out.to_vec()).expect("utf-8")
    }

    #[test]
    fn replaces_only_the_model_value() {
        let rows = [
            (r#"{"model":"up","x":1}"#, r#"{"model":"alias","x":1}"#),
            (
                r#"{ "x" : {"model":"inner"}, "model" : "up" }"#,
                r#"{ "x" : {"model":"inner"}, "model" : "alias" }"#,
            ),
            (
                r#"{"choices":[{"delta":{"content":"\"model\":\"up\""}}],"model":"u\"p"}"#,
                r#"{"choices":[{"delta":{"content":"\"model\":\"up\""}}],"model":"alias"}"#,
            ),
            (r#"{"no_model":true}"#, r#"{"no_model":true}"#),
        ];
        for (input, expected) in rows {
            assert_eq!(with_model(input, "alias"), expected, "input {input}");
        }
    }

    #[test]
    fn reads_usage_error_and_empty_choices() {
        let view = ObjectView::parse(br#"{"choices":[ ],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#)
            .expect("valid");
        assert!(view.has_no_choices());
        assert_eq!(
            view.usage(),
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 4,
                total_tokens: 7
            })
        );
        assert_eq!(view.error(), None);
        let view = ObjectView::parse(br#"{"choices":[{}],"usage":null,"error":{"message":"m"}}"#)
            .expect("valid");
        assert!(!view.has_no_choices());
        assert_eq!(view.usage(), None);
        assert_eq!(view.error(), Some(r#"{"message":"m"}"#));
    }

    #[test]
    fn a_legacy_choice_with_text_carries_something() {
        let carrying = ObjectView::parse(br#"{"choices":[{"index":0,"text":"hi","finish_reason":null}],"usage":{"total_tokens":1}}"#)
            .expect("valid");
        assert!(
            !carrying.choices_carry_nothing(),
            "text rides with the usage"
        );
        let empty = ObjectView::parse(br#"{"choices":[{"index":0,"text":"","finish_reason":null}],"usage":{"total_tokens":1}}"#)
            .expect("valid");
        assert!(empty.choices_carry_nothing());
    }
}
