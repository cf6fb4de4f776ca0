//! What an agent's request *is*, beyond where it goes: its action type (a chat completion,
//! an embedding, an MCP tool call, …), the prompt text in a chat body, the JSON-RPC
//! messages of an MCP body, and the DLP findings in it. Policy conditions read these.
//!
//! A buffered body is wrapped once in a [`Body`], which parses lazily: a request whose
//! rules only ask for a substring never has its JSON parsed, and one that no DLP condition
//! reaches is never scanned.

mod classify;
mod prompt;

use std::sync::OnceLock;

use crate::dlp::{Findings, Scanner};
use crate::mcp::{Inbound, ParseError};

pub use classify::{ActionType, ActionTypeSet, classify_path};

/// A buffered request body and what has been read out of it so far.
pub struct Body<'a> {
    bytes: &'a [u8],
    scanner: Option<&'a Scanner>,
    json: OnceLock<Option<serde_json::Value>>,
    prompt: OnceLock<String>,
    mcp: OnceLock<Option<Result<Inbound, ParseError>>>,
    findings: OnceLock<Findings>,
}

impl std::fmt::Debug for Body<'_> {
    // Never the bytes: a body can hold anything, credentials included.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("bytes", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

impl<'a> Body<'a> {
    /// A body whose DLP conditions use `scanner` (none: DLP conditions never hold).
    pub fn new(bytes: &'a [u8], scanner: Option<&'a Scanner>) -> Body<'a> {
        Body {
            bytes,
            scanner,
            json: OnceLock::new(),
            prompt: OnceLock::new(),
            mcp: OnceLock::new(),
            findings: OnceLock::new(),
        }
    }

    /// An empty body (a request without one, or one that was not buffered).
    pub fn empty() -> Body<'static> {
        Body::new(&[], None)
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The body as JSON, when it is a JSON document.
    pub fn json(&self) -> Option<&serde_json::Value> {
        self.json
            .get_or_init(|| {
                let first = self.bytes.iter().find(|b| !b.is_ascii_whitespace())?;
                if !matches!(first, b'{' | b'[') {
                    return None;
                }
                serde_json::from_slice(self.bytes).ok()
            })
            .as_ref()
    }

    /// The prompt content of a chat body (messages, system prompt, tool results), one
    /// piece per line; empty for anything else.
    pub fn prompt(&self) -> &str {
        self.prompt
            .get_or_init(|| self.json().map(prompt::extract).unwrap_or_default())
    }

    /// The body's JSON-RPC messages, when it is (or tries to be) JSON-RPC: `None` for a
    /// body that does not look like JSON-RPC at all.
    pub fn mcp(&self) -> Option<&Result<Inbound, ParseError>> {
        self.mcp
            .get_or_init(|| {
                crate::mcp::looks_like_jsonrpc(self.bytes)
                    .then(|| crate::mcp::parse_inbound(self.bytes))
            })
            .as_ref()
    }

    /// What the DLP detectors find in the body, scanned once.
    pub fn findings(&self) -> &Findings {
        self.findings.get_or_init(|| match self.scanner {
            Some(scanner) => scanner.scan(self.bytes),
            None => Findings::default(),
        })
    }
}
