//! The action type of a request: what an agent is doing with it.
//!
//! LLM APIs are recognised by their path alone, wherever they are hosted (OpenAI and the
//! many OpenAI-compatible servers, Azure OpenAI, Anthropic, Gemini, Ollama, Bedrock), so a
//! rule on `chat_completion` or `embedding` needs no body. MCP traffic is recognised by its
//! JSON-RPC body (`tools/call` is a `tool_call`, anything else a `mcp_request`), or by the
//! Streamable HTTP session headers when no body was read. Everything else is an
//! `http_request`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::request::Method;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActionType {
    ChatCompletion,
    Embedding,
    ToolCall,
    McpRequest,
    HttpRequest,
}

impl ActionType {
    pub const ALL: [ActionType; 5] = [
        ActionType::ChatCompletion,
        ActionType::Embedding,
        ActionType::ToolCall,
        ActionType::McpRequest,
        ActionType::HttpRequest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionType::ChatCompletion => "chat_completion",
            ActionType::Embedding => "embedding",
            ActionType::ToolCall => "tool_call",
            ActionType::McpRequest => "mcp_request",
            ActionType::HttpRequest => "http_request",
        }
    }

    /// Whether telling this type apart takes the body: only the path-recognised LLM
    /// calls do not.
    pub fn needs_body(self) -> bool {
        !matches!(self, ActionType::ChatCompletion | ActionType::Embedding)
    }
}

impl fmt::Display for ActionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of action types, as a bitset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ActionTypeSet(u8);

impl ActionTypeSet {
    pub fn of(types: &[ActionType]) -> ActionTypeSet {
        ActionTypeSet(types.iter().fold(0, |bits, t| bits | 1 << *t as u8))
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn contains(self, action: ActionType) -> bool {
        self.0 & (1 << action as u8) != 0
    }

    pub fn intersects(self, other: ActionTypeSet) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether deciding membership can take the body.
    pub fn needs_body(self) -> bool {
        ActionType::ALL
            .into_iter()
            .any(|t| self.contains(t) && t.needs_body())
    }
}

/// The LLM call a path names, whatever the host: `None` for any other path. Only POSTs
/// are calls.
pub fn classify_path(method: Method, path: &str) -> Option<ActionType> {
    if method != Method::Post {
        return None;
    }
    // Gemini: `/v1beta/models/gemini-2.0-flash:generateContent`.
    if let Some((_, verb)) = path.rsplit_once(':')
        && !verb.contains('/')
    {
        return match verb {
            "generateContent" | "streamGenerateContent" => Some(ActionType::ChatCompletion),
            "embedContent" | "batchEmbedContents" => Some(ActionType::Embedding),
            _ => None,
        };
    }
    let path = path.trim_end_matches('/');
    const CHAT: &[&str] = &[
        // OpenAI and compatible servers (vLLM, LiteLLM, llama.cpp, Azure's deployments/…).
        "/chat/completions",
        "/v1/completions",
        "/v1/responses",
        // Anthropic.
        "/v1/messages",
        "/v1/complete",
        // Ollama.
        "/api/chat",
        "/api/generate",
        // Bedrock.
        "/converse",
        "/converse-stream",
    ];
    const EMBEDDING: &[&str] = &["/embeddings", "/api/embed"];
    if CHAT.iter().any(|suffix| path.ends_with(suffix)) {
        Some(ActionType::ChatCompletion)
    } else if EMBEDDING.iter().any(|suffix| path.ends_with(suffix)) {
        Some(ActionType::Embedding)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llm_paths_classify_whatever_the_host() {
        let cases = [
            ("/v1/chat/completions", Some(ActionType::ChatCompletion)),
            (
                "/openai/deployments/gpt4/chat/completions",
                Some(ActionType::ChatCompletion),
            ),
            ("/v1/messages", Some(ActionType::ChatCompletion)),
            ("/v1/responses", Some(ActionType::ChatCompletion)),
            (
                "/v1beta/models/gemini-2.0-flash:generateContent",
                Some(ActionType::ChatCompletion),
            ),
            (
                "/v1beta/models/text-embedding-004:embedContent",
                Some(ActionType::Embedding),
            ),
            ("/v1/embeddings", Some(ActionType::Embedding)),
            ("/api/embed", Some(ActionType::Embedding)),
            ("/api/chat", Some(ActionType::ChatCompletion)),
            ("/v1/models", None),
            ("/repos/a/b", None),
            ("/v1/messages/batches", None),
            ("/time:12", None),
        ];
        for (path, expected) in cases {
            assert_eq!(classify_path(Method::Post, path), expected, "{path}");
        }
        assert_eq!(classify_path(Method::Get, "/v1/chat/completions"), None);
    }

    #[test]
    fn sets_know_which_types_need_the_body() {
        let llm = ActionTypeSet::of(&[ActionType::ChatCompletion, ActionType::Embedding]);
        assert!(!llm.needs_body());
        assert!(llm.contains(ActionType::Embedding));
        assert!(!llm.contains(ActionType::ToolCall));
        assert!(ActionTypeSet::of(&[ActionType::ToolCall]).needs_body());
        assert!(ActionTypeSet::of(&[]).is_empty());
    }
}
