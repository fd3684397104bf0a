//! What a whole `response` object generated, for counting when no usage was reported.

use serde_json::Value;

use crate::openai::tokens::TokenCounter;

/// The output tokens of a whole `response` body: message text and refusals, function call
/// names and arguments, counted with the model's tokenizer.
pub fn output_tokens(body: &[u8], counter: TokenCounter) -> u64 {
    let Ok(response) = serde_json::from_slice::<Value>(body) else {
        return 0;
    };
    let mut count = counter.budgeted();
    for item in response["output"].as_array().into_iter().flatten() {
        let parts = item["content"].as_array().into_iter().flatten();
        let texts = parts
            .flat_map(|part| [&part["text"], &part["refusal"]])
            .chain([&item["name"], &item["arguments"]]);
        for text in texts.filter_map(Value::as_str) {
            count.add(text);
        }
    }
    count.total()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_text_and_function_calls() {
        let counter = TokenCounter::new(crate::config::Tokenizer::O200kBase);
        let body = br#"{"output":[
            {"type":"message","content":[{"type":"output_text","text":"Hello world"}]},
            {"type":"function_call","name":"get_weather","arguments":"{\"city\":\"Paris\"}"}]}"#;
        let expected = counter.count("Hello world")
            + counter.count("get_weather")
            + counter.count(r#"{"city":"Paris"}"#);
        assert_eq!(output_tokens(body, counter), expected);
        assert_eq!(output_tokens(b"not json", counter), 0);
    }
}
