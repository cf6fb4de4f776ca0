//! What an agent's request *is*, beyond where it goes: its action type (a chat completion,
//! an embedding, an MCP tool call, …), the prompt text in a chat body, the JSON-RPC
//! messages of an MCP body, and the DLP findings in it. Policy conditions read these.
//!
//! A buffered body is wrapped once in a [`Body`], which parses lazily: a request whose
//! rules only ask for a substring never has its JSON parsed, and one that no DLP condition
//! reaches is never scanned. It is parsed at most once: the JSON document and the JSON-RPC
//! messages come from the same parse. What is read from it is kept, so that deciding the
//! messages of a batch one by one never reads the whole body again per message.

mod classify;
mod prompt;
pub mod usage;

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use crate::dlp::{Findings, Scanner};
use crate::mcp::{BodyJson, Inbound, ParseError};

pub use classify::{ActionType, ActionTypeSet, classify_path};

/// A buffered request body and what has been read out of it so far.
pub struct Body<'a> {
    bytes: &'a [u8],
    scanner: Option<&'a Scanner>,
    parsed: OnceLock<BodyJson>,
    prompt: OnceLock<String>,
    findings: OnceLock<Findings>,
    /// Results of content matchers run on it, by matcher (see [`Body::remember`]).
    matched: Mutex<HashMap<usize, bool>>,
    /// `request.body` as a CEL value, built once for every expression that reads it.
    cel: OnceLock<cel::Value>,
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
            parsed: OnceLock::new(),
            prompt: OnceLock::new(),
            findings: OnceLock::new(),
            matched: Mutex::new(HashMap::new()),
            cel: OnceLock::new(),
        }
    }

    /// An empty body (a request without one, or one that was not buffered).
    pub fn empty() -> Body<'static> {
        Body::new(&[], None)
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    fn parsed(&self) -> &BodyJson {
        self.parsed
            .get_or_init(|| crate::mcp::read_body(self.bytes))
    }

    /// The body as JSON, when it is a JSON object or array.
    pub fn json(&self) -> Option<&serde_json::Value> {
        self.parsed().json.as_ref()
    }

    /// The prompt content of a chat body (messages, system prompt, tool results), one
    /// piece per line; empty for anything else.
    pub fn prompt(&self) -> &str {
        self.prompt
            .get_or_init(|| self.json().map(prompt::extract).unwrap_or_default())
    }

    /// The body's JSON-RPC messages, when it is (or tries to be) JSON-RPC: `None` for a
    /// body that is not JSON-RPC ([`crate::mcp::read_body`]).
    pub fn mcp(&self) -> Option<&Result<Inbound, ParseError>> {
        self.parsed().mcp.as_ref()
    }

    /// The result of the content matcher `key` (its address: matchers live as long as the
    /// snapshot that decides with this body) on this body, computed by `run` the first time
    /// only.
    pub fn remember(&self, key: usize, run: impl FnOnce() -> bool) -> bool {
        let known = self
            .matched
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&key)
            .copied();
        if let Some(held) = known {
            return held;
        }
        let held = run();
        self.matched
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(key, held);
        held
    }

    /// `request.body` as a CEL value, built by `build` the first time only.
    pub fn cel_value(&self, build: impl FnOnce() -> cel::Value) -> cel::Value {
        self.cel.get_or_init(build).clone()
    }

    /// How many content matchers have run on this body: each at most once, whatever the
    /// number of messages decided with it.
    pub fn matchers_run(&self) -> usize {
        self.matched
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    /// What the DLP detectors find in the body, scanned once.
    pub fn findings(&self) -> &Findings {
        self.findings.get_or_init(|| match self.scanner {
            Some(scanner) => scanner.scan(self.bytes),
            None => Findings::default(),
        })
    }
}
