//! LLM token usage as the providers report it in their answers: a JSON body, or the events
//! of a server-sent-events stream, read piece by piece as the response passes.
//!
//! - OpenAI chat completions: `usage.prompt_tokens` / `completion_tokens` (a stream carries
//!   them in its last chunk when the request asked `stream_options.include_usage`); the
//!   Responses API: `usage.input_tokens` / `output_tokens`, in a stream under
//!   `response.completed`'s `response`.
//! - Anthropic messages: `usage.input_tokens` / `output_tokens`; in a stream,
//!   `message_start`'s `message.usage`, then each `message_delta`'s cumulative `usage`.
//! - Gemini: `usageMetadata.promptTokenCount` / `candidatesTokenCount` (+
//!   `thoughtsTokenCount`), in every chunk of a stream, the last one final.
//!
//! Counts are cumulative in every provider's stream, so the last one read wins. Memory is
//! bounded: a JSON body past [`MAX_JSON`] and an event line past [`MAX_LINE`] are not read.

use serde_json::Value;

/// The longest JSON body read for its usage.
pub const MAX_JSON: usize = 4 << 20;
/// The longest server-sent-events line read.
pub const MAX_LINE: usize = 1 << 20;

/// The tokens one answer used, and the model that says it answered.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Events,
    Json,
}

/// Reads usage out of a response as its body passes, one piece at a time.
#[derive(Debug)]
pub struct UsageReader {
    shape: Shape,
    /// Events: the line being read. Json: the body so far.
    pending: Vec<u8>,
    /// A line or body past its bound: skipped.
    overflowed: bool,
    input: Option<u64>,
    output: Option<u64>,
    model: Option<String>,
}

impl UsageReader {
    /// A reader for a response of this `content-type`.
    pub fn new(content_type: &str) -> UsageReader {
        let media = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        UsageReader {
            shape: if media == "text/event-stream" {
                Shape::Events
            } else {
                Shape::Json
            },
            pending: Vec::new(),
            overflowed: false,
            input: None,
            output: None,
            model: None,
        }
    }

    /// The next piece of the body.
    pub fn feed(&mut self, mut piece: &[u8]) {
        match self.shape {
            Shape::Json => {
                if self.overflowed || self.pending.len() + piece.len() > MAX_JSON {
                    self.overflowed = true;
                    self.pending = Vec::new();
                } else {
                    self.pending.extend_from_slice(piece);
                }
            }
            Shape::Events => {
                while let Some(end) = piece.iter().position(|&b| b == b'\n') {
                    if !self.overflowed {
                        self.pending.extend_from_slice(&piece[..end]);
                        let line = std::mem::take(&mut self.pending);
                        self.event_line(&line);
                    }
                    self.overflowed = false;
                    self.pending.clear();
                    piece = &piece[end + 1..];
                }
                if self.overflowed || self.pending.len() + piece.len() > MAX_LINE {
                    self.overflowed = true;
                    self.pending = Vec::new();
                } else {
                    self.pending.extend_from_slice(piece);
                }
            }
        }
    }

    /// The body is over: the usage it reported, if it reported any.
    pub fn finish(mut self) -> Option<Usage> {
        match self.shape {
            Shape::Json if !self.overflowed => {
                if let Ok(value) = serde_json::from_slice::<Value>(&self.pending) {
                    self.observe(&value);
                }
            }
            Shape::Events if !self.overflowed && !self.pending.is_empty() => {
                let line = std::mem::take(&mut self.pending);
                self.event_line(&line);
            }
            _ => {}
        }
        if self.input.is_none() && self.output.is_none() {
            return None;
        }
        Some(Usage {
            input_tokens: self.input.unwrap_or(0),
            output_tokens: self.output.unwrap_or(0),
            model: self.model,
        })
    }

    fn event_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        if data.first() != Some(&b'{') {
            return;
        }
        if let Ok(value) = serde_json::from_slice::<Value>(data) {
            self.observe(&value);
        }
    }

    /// Takes whatever usage and model `value` reports, in any provider's shape.
    fn observe(&mut self, value: &Value) {
        let number = |v: &Value| v.as_u64();
        // OpenAI Responses stream: the final event wraps the response.
        let value = match value.get("response") {
            Some(inner @ Value::Object(_)) if inner.get("usage").is_some() => inner,
            _ => value,
        };
        // Anthropic's message_start wraps the message.
        let message = value.get("message").filter(|m| m.is_object());
        for holder in [Some(value), message].into_iter().flatten() {
            if let Some(model) = holder.get("model").and_then(Value::as_str) {
                self.model = Some(bounded(model));
            }
            if let Some(usage) = holder.get("usage").filter(|u| u.is_object()) {
                if let Some(n) = usage
                    .get("prompt_tokens")
                    .or_else(|| usage.get("input_tokens"))
                    .and_then(number)
                {
                    self.input = Some(n);
                }
                if let Some(n) = usage
                    .get("completion_tokens")
                    .or_else(|| usage.get("output_tokens"))
                    .and_then(number)
                {
                    self.output = Some(n);
                }
            }
        }
        if let Some(meta) = value.get("usageMetadata").filter(|u| u.is_object()) {
            if let Some(n) = meta.get("promptTokenCount").and_then(number) {
                self.input = Some(n);
            }
            let candidates = meta.get("candidatesTokenCount").and_then(number);
            let thoughts = meta.get("thoughtsTokenCount").and_then(number);
            if candidates.is_some() || thoughts.is_some() {
                self.output = Some(
                    candidates
                        .unwrap_or(0)
                        .saturating_add(thoughts.unwrap_or(0)),
                );
            }
            if let Some(model) = value.get("modelVersion").and_then(Value::as_str) {
                self.model = Some(bounded(model));
            }
        }
    }
}

/// A model name as reported (the upstream's text): at most 128 characters.
fn bounded(model: &str) -> String {
    model.chars().take(128).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(content_type: &str, pieces: &[&str]) -> Option<Usage> {
        let mut reader = UsageReader::new(content_type);
        for piece in pieces {
            reader.feed(piece.as_bytes());
        }
        reader.finish()
    }

    fn usage(input: u64, output: u64, model: &str) -> Option<Usage> {
        Some(Usage {
            input_tokens: input,
            output_tokens: output,
            model: Some(model.into()),
        })
    }

    #[test]
    fn json_bodies_of_each_provider() {
        let openai = r#"{"id":"c","model":"gpt-4o","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}"#;
        assert_eq!(read("application/json", &[openai]), usage(12, 30, "gpt-4o"));
        let anthropic = r#"{"type":"message","model":"claude-sonnet-4","content":[],"usage":{"input_tokens":7,"output_tokens":9}}"#;
        assert_eq!(
            read(
                "application/json; charset=utf-8",
                &[&anthropic[..20], &anthropic[20..]]
            ),
            usage(7, 9, "claude-sonnet-4")
        );
        let gemini = r#"{"candidates":[],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":8,"thoughtsTokenCount":2},"modelVersion":"gemini-2.5-pro"}"#;
        assert_eq!(
            read("application/json", &[gemini]),
            usage(5, 10, "gemini-2.5-pro")
        );
        assert_eq!(read("application/json", &[r#"{"ok":true}"#]), None);
        assert_eq!(read("application/json", &["not json"]), None);
    }

    #[test]
    fn streams_of_each_provider_split_anywhere() {
        let openai = "data: {\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n\
                      data: {\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n\
                      data: [DONE]\n\n";
        let anthropic = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n\
                         event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"Hello\"}}\n\n\
                         event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n";
        let gemini = "data: {\"candidates\":[],\"usageMetadata\":{\"promptTokenCount\":4,\"candidatesTokenCount\":1},\"modelVersion\":\"gemini-2.5-flash\"}\r\n\r\n\
                      data: {\"candidates\":[],\"usageMetadata\":{\"promptTokenCount\":4,\"candidatesTokenCount\":6},\"modelVersion\":\"gemini-2.5-flash\"}\r\n\r\n";
        let responses = "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"model\":\"gpt-5\",\"usage\":{\"input_tokens\":9,\"output_tokens\":11}}}\n\n";
        for (stream, expected) in [
            (openai, usage(3, 4, "gpt-4o")),
            (anthropic, usage(25, 15, "claude-x")),
            (gemini, usage(4, 6, "gemini-2.5-flash")),
            (responses, usage(9, 11, "gpt-5")),
        ] {
            for split in [1, 7, 64, stream.len()] {
                let pieces: Vec<String> = stream
                    .as_bytes()
                    .chunks(split)
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .collect();
                let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
                assert_eq!(
                    read("text/event-stream", &pieces),
                    expected,
                    "split {split}"
                );
            }
        }
    }

    #[test]
    fn memory_stays_bounded() {
        let mut reader = UsageReader::new("text/event-stream");
        let huge = vec![b'x'; MAX_LINE + 10];
        reader.feed(b"data: ");
        reader.feed(&huge);
        assert!(reader.pending.len() <= MAX_LINE);
        reader.feed(b"\ndata: {\"usage\":{\"input_tokens\":1,\"output_tokens\":2}}\n");
        assert_eq!(reader.finish().map(|u| u.total()), Some(3));
        let mut reader = UsageReader::new("application/json");
        reader.feed(&vec![b' '; MAX_JSON + 1]);
        assert!(reader.pending.is_empty());
        assert_eq!(reader.finish(), None);
    }
}
