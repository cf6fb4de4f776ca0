//! MCP `tools/list` filtering, the snapshot's part: which requests are watched, and which
//! tools a workload may see (those a `tools/call` of which the policies would not deny).
//! The JSON-RPC rewriting itself is [`crate::mcp::filter_tools_list`].

use std::sync::Arc;

use super::{Decided, Snapshot};
use crate::identity::Identity;
use crate::mcp::{Message, MessageKind};
use crate::policy::{Decision, RequestFacts};
use crate::request::{Method, OutboundRequest};

impl Snapshot {
    /// Whether this request may be an MCP `tools/list` whose answer should be filtered: a
    /// POST from a Streamable HTTP client (its MCP headers, or its `Accept` of both JSON and
    /// SSE), while some policy names tools. Its body is then read, and its response watched.
    pub fn watches_tools_list(&self, request: &OutboundRequest) -> bool {
        self.mcp.filter_tools_list
            && request.method == Method::Post
            && self.policies.has_tool_conditions()
            && self.pipeline.has_allowlist()
            && request
                .headers
                .iter()
                .any(|(name, value)| match name.as_str() {
                    "mcp-session-id" | "mcp-protocol-version" => true,
                    "accept" => value.windows(17).any(|w| w == b"text/event-stream"),
                    _ => false,
                })
    }

    /// The ids of the `tools/list` requests in an MCP body.
    pub fn tools_list_ids(body: &[u8]) -> Vec<serde_json::Value> {
        crate::mcp::parse_inbound(body)
            .map(|inbound| inbound.request_ids("tools/list"))
            .unwrap_or_default()
    }

    /// Whether a workload may call the tool `name` on this request's server with some
    /// arguments: a `tools/call` of it is not denied when argument conditions are given the
    /// benefit of the doubt. Tools it may not call are dropped from `tools/list` answers.
    pub fn tool_visible(&self, request: &OutboundRequest, identity: &Identity, name: &str) -> bool {
        let call = Message {
            id: None,
            kind: MessageKind::Request {
                method: "tools/call".to_owned(),
                params: Some(serde_json::json!({"name": name, "arguments": {}})),
            },
        };
        let facts = RequestFacts {
            message: Some(&call),
            identity: Some(identity),
            unknown_args: Some(true),
            ..request.facts()
        };
        self.policies
            .evaluate(&facts, &self.policies.tag_ids(&identity.tags))
            .decision()
            != Decision::Denied
    }
}

/// An allowed MCP request's `tools/list` answer on its way back: which ids to filter, for
/// whom, under which snapshot. The ext_proc stream only holds it and hands it the body.
pub struct ToolsListFilter {
    snapshot: Arc<Snapshot>,
    request: OutboundRequest,
    identity: Identity,
    ids: Vec<serde_json::Value>,
    content_type: String,
}

impl ToolsListFilter {
    /// The filter for a decided request whose body holds `tools/list` requests; `None` for a
    /// refused request or a body with none.
    pub fn start(
        snapshot: &Arc<Snapshot>,
        request: &OutboundRequest,
        decided: &Decided,
        body: &[u8],
    ) -> Option<ToolsListFilter> {
        let (None, Ok(identity)) = (&decided.outcome.rejection, &decided.identity) else {
            return None;
        };
        let ids = Snapshot::tools_list_ids(body);
        (!ids.is_empty()).then(|| ToolsListFilter {
            snapshot: snapshot.clone(),
            request: request.clone(),
            identity: identity.clone(),
            ids,
            content_type: String::new(),
        })
    }

    /// The answer's `content-type` (JSON or SSE), from its headers.
    pub fn set_content_type(&mut self, content_type: String) {
        self.content_type = content_type;
    }

    /// The whole answer without the tools this workload may not call; `None` when it is
    /// left as it is (not a `tools/list` answer, nothing to drop).
    pub fn filter(&self, body: &[u8]) -> Option<Vec<u8>> {
        let visible = |tool: &str| {
            self.snapshot
                .tool_visible(&self.request, &self.identity, tool)
        };
        let rewritten =
            crate::mcp::filter_tools_list(body, &self.content_type, &self.ids, &visible);
        if rewritten.is_some() {
            tracing::debug!(request_id = %self.request.id, "tools/list answer filtered");
        }
        rewritten
    }
}
