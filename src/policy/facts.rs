//! What rules are matched against: one borrowed view of a request, with what was read
//! beside it (the buffered body, the JSON-RPC message of a batch, the resolved identity).
//! It sits in the policy engine, not in [`crate::request`], because it joins layers the
//! request model sits below: identity and body inspection.

use std::net::IpAddr;

use crate::identity::Identity;
use crate::inspect::{ActionType, ActionTypeSet, Body, classify_path};
use crate::mcp::{Inbound, Message};
use crate::request::{Method, OutboundRequest};

/// What rules are matched against: borrowed, normalized views of an [`OutboundRequest`],
/// with the body and identity where the caller has them.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub method: Method,
    /// The method as sent (differs from `method.as_str()` only for non-standard ones).
    pub method_name: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// Lower case, without trailing dot or port; an IPv6 literal without brackets.
    pub host: &'a str,
    /// The explicit port, or the scheme's default.
    pub port: u16,
    /// Set when the host is an IP literal.
    pub ip: Option<IpAddr>,
    /// Normalized path without query; empty for CONNECT.
    pub path: &'a str,
    /// Request headers, names lower case.
    pub headers: &'a [(String, Vec<u8>)],
    /// A CONNECT whose payload Envoy decrypts, each request inside decided on its own.
    pub intercepted: bool,
    /// The buffered request body (empty for a request without one); `None` when it was
    /// not buffered because nothing deciding the request needs it.
    pub body: Option<&'a Body<'a>>,
    /// The JSON-RPC message being decided, when an MCP batch is decided entry by entry.
    pub message: Option<&'a Message>,
    /// Who sent it, once resolved (CEL conditions read it).
    pub identity: Option<&'a Identity>,
    /// Set when deciding a hypothetical tool call whose arguments are unknown (is a tool
    /// worth listing?): CEL expressions that read the body are not run but taken to give
    /// this value.
    pub unknown_args: Option<bool>,
}

impl<'a> RequestFacts<'a> {
    /// A plain-HTTP GET of `/` to `host` and `port`, with nothing else: what host-level
    /// questions (which rules, which stages could touch this host) are asked with. Their
    /// answers read only the host and port.
    pub fn host_probe(host: &'a str, port: u16) -> RequestFacts<'a> {
        RequestFacts {
            method: Method::Get,
            method_name: "GET",
            scheme: "http",
            host,
            port,
            ip: None,
            path: "/",
            headers: &[],
            intercepted: false,
            body: None,
            message: None,
            identity: None,
            unknown_args: None,
        }
    }

    pub fn is_connect(&self) -> bool {
        self.method == Method::Connect
    }

    pub fn method_name(&self) -> &'a str {
        self.method_name
    }

    /// The MCP message this request carries, when it is a single one (or the one being
    /// decided in a batch).
    pub fn mcp_message(&self) -> Option<&'a Message> {
        if self.message.is_some() {
            return self.message;
        }
        match self.body?.mcp()? {
            Ok(Inbound::Single(message)) => Some(message),
            _ => None,
        }
    }

    /// The MCP `tools/call` this request makes: the tool's name and arguments.
    pub fn tool_call(&self) -> Option<(&'a str, &'a serde_json::Value)> {
        self.mcp_message()?.tool_call()
    }

    /// What the request is doing ([`crate::inspect`]): the LLM call its path names, else
    /// the MCP message it carries, else `http_request`. This is the type it is recorded as.
    pub fn action_type(&self) -> ActionType {
        classify_path(self.method, self.path)
            .or_else(|| self.mcp_action_type())
            .unwrap_or(ActionType::HttpRequest)
    }

    /// Every action type the request may be taken for: a body can be an MCP `tools/call`
    /// and a chat completion at once (JSON-RPC members beside `model` and `messages`), and
    /// the path and the body each name one. Refusing rules hold on any of them.
    pub fn possible_action_types(&self) -> ActionTypeSet {
        match (
            classify_path(self.method, self.path),
            self.mcp_action_type(),
        ) {
            (Some(llm), Some(mcp)) => ActionTypeSet::of(&[llm, mcp]),
            (Some(one), None) | (None, Some(one)) => ActionTypeSet::of(&[one]),
            (None, None) => ActionTypeSet::of(&[ActionType::HttpRequest]),
        }
    }

    /// The MCP action the request makes, by its JSON-RPC body or, when no body was read,
    /// its Streamable HTTP session headers.
    fn mcp_action_type(&self) -> Option<ActionType> {
        if let Some(message) = self.message {
            return Some(if message.tool_call().is_some() {
                ActionType::ToolCall
            } else {
                ActionType::McpRequest
            });
        }
        Some(match self.body.and_then(Body::mcp) {
            Some(Ok(Inbound::Single(message))) if message.tool_call().is_some() => {
                ActionType::ToolCall
            }
            Some(Ok(Inbound::Batch(messages)))
                if messages.iter().any(|m| m.tool_call().is_some()) =>
            {
                ActionType::ToolCall
            }
            Some(_) => ActionType::McpRequest,
            None if self
                .headers
                .iter()
                .any(|(n, _)| n == "mcp-session-id" || n == "mcp-protocol-version") =>
            {
                ActionType::McpRequest
            }
            None => return None,
        })
    }
}

impl OutboundRequest {
    /// What rules match against. The body and identity are not part of the request: set
    /// [`RequestFacts::body`] where it was buffered and [`RequestFacts::identity`] once
    /// resolved.
    pub fn facts(&self) -> RequestFacts<'_> {
        RequestFacts {
            method: self.method,
            method_name: &self.method_name,
            scheme: &self.scheme,
            host: &self.host,
            port: self.port,
            ip: self.ip,
            path: &self.path,
            headers: &self.headers,
            intercepted: self.intercepted,
            body: None,
            message: None,
            identity: None,
            unknown_args: None,
        }
    }
}
