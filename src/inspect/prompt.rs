//! The prompt content of a chat or embedding body.
//!
//! The APIs differ in shape but agree on field names: OpenAI's `messages[].content` (a
//! string or parts with `text`), `input` and `instructions`; Anthropic's `system` and
//! content blocks (`text`, `tool_result.content`); Gemini's `contents[].parts[].text` and
//! `systemInstruction`; the legacy `prompt`. So the prompt is every string found under one
//! of those names, at any depth, plus tool-call `arguments` (what the model asked a tool
//! to do). Keys such as `model`, `role` or `temperature` are never prompt content.

use serde_json::Value;

const PROMPT_KEYS: &[&str] = &[
    "content",
    "text",
    "prompt",
    "input",
    "system",
    "instructions",
    "systemInstruction",
    "arguments",
    "parts",
    "messages",
    "contents",
];

/// Beyond this depth a document is not a chat body anyone wrote by hand.
const MAX_DEPTH: usize = 32;

pub(super) fn extract(document: &Value) -> String {
    let mut prompt = String::new();
    collect(document, false, 0, &mut prompt);
    prompt
}

/// Appends the prompt strings in `value`; `inside` is set once a prompt key was passed.
fn collect(value: &Value, inside: bool, depth: usize, out: &mut String) {
    if depth > MAX_DEPTH {
        return;
    }
    match value {
        Value::String(text) if inside => {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(text);
        }
        Value::Array(items) => {
            for item in items {
                collect(item, inside, depth + 1, out);
            }
        }
        Value::Object(fields) => {
            for (key, field) in fields {
                if PROMPT_KEYS.contains(&key.as_str()) {
                    collect(field, true, depth + 1, out);
                } else if !matches!(field, Value::String(_)) {
                    // Structure such as `tool_calls[].function` holds prompt keys further in.
                    collect(field, false, depth + 1, out);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn openai_chat_messages_parts_and_tool_results() {
        let body = json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": [{"type": "text", "text": "Summarise this"}]},
                {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                    "function": {"name": "read", "arguments": "{\"path\":\"/etc/passwd\"}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "root:x:0:0"}
            ],
            "temperature": 0.2
        });
        let prompt = extract(&body);
        assert_eq!(
            lines(&body),
            [
                "Summarise this",
                "You are terse.",
                "root:x:0:0",
                "{\"path\":\"/etc/passwd\"}"
            ]
        );
        assert!(!prompt.contains("gpt-4o"), "the model is not prompt");
        assert!(!prompt.contains("system"), "roles are not prompt");
    }

    /// The prompt's lines, sorted: the order of keys in an object is not the writer's.
    fn lines(body: &Value) -> Vec<String> {
        let mut lines: Vec<String> = extract(body).lines().map(str::to_owned).collect();
        lines.sort();
        lines
    }

    #[test]
    fn anthropic_and_gemini_shapes() {
        let anthropic = json!({
            "model": "claude", "system": "Be careful.",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "hello"},
                {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "42"}]}
            ]}]
        });
        assert_eq!(lines(&anthropic), ["42", "Be careful.", "hello"]);
        let gemini = json!({
            "systemInstruction": {"parts": [{"text": "sys"}]},
            "contents": [{"role": "user", "parts": [{"text": "what is aws_secret_access_key"}]}]
        });
        assert_eq!(lines(&gemini), ["sys", "what is aws_secret_access_key"]);
        assert_eq!(extract(&json!({"input": ["a", "b"], "model": "e"})), "a\nb");
        assert_eq!(extract(&json!({"model": "m", "stream": true})), "");
    }
}
