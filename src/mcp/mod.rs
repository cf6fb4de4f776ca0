//! MCP over Streamable HTTP, as the gateway sees it: the JSON-RPC 2.0 messages a client
//! POSTs, the JSON-RPC errors that answer a denied one, and `tools/list` answers with the
//! tools a workload may not call taken out. Pure functions over bytes; the policy engine and
//! the ext_proc stream decide when to call them.
//!
//! What a client's POST body may be ([`parse_inbound`]): one JSON-RPC message object, or a
//! non-empty array of them (a batch, which MCP revisions before 2025-06-18 allowed). Each is a
//! request (`method` and `id`), a notification (`method`, no `id`) or a response (`result` or
//! `error`, answering a request the server sent).
//!
//! A body is JSON-RPC when, read as JSON ([`read_body`]), it is an object with a `jsonrpc`
//! member, or an array holding one — however the key is written (`"jsonrp\u0063"` is the
//! same key to every server), after a byte order mark, in UTF-16 or UTF-32 (which Python's
//! `json.loads` reads). Recognition is by parsing, never by searching the raw bytes. The
//! parser is stricter than JSON-RPC where leniency would let a gateway and a server read one
//! body differently:
//! - an object that repeats a key is refused (parsers disagree on which one counts);
//! - an `id` that is a number must be an integer that fits 64 bits (anything else would not
//!   survive being echoed in an error);
//! - `tools/call` must be a request whose `params` is an object with a string `name` and, if
//!   present, an object `arguments` — a `tools/call` the gateway could not read is refused,
//!   never waved through as "not a tool call".
//!
//! How the answers reach the official SDK client (`mcp` 2.x for Python), which decides what a
//! gateway's reply must look like:
//! - an error for one request is read from a `200` (or `4xx`) `application/json` body holding
//!   one JSON-RPC error object whose `id` is the request's — at `200` an error with another
//!   or a null `id` never correlates, and the call hangs until the client's timeout;
//! - a `text/event-stream` body with `data: {error}` works too (the client pins the id itself);
//! - a `4xx` `application/json` body that is not a JSON-RPC error reaches the caller only as
//!   `-32603 "Server returned an error response"`;
//! - a `202` with no body is right for a POST of notifications or responses only.
//!
//! So [`error_reply`] answers with the request's own `id`, of its own JSON type, and
//! [`parse_error_reply`] (whose `id` is null, the request's id being unreadable) is meant to
//! be sent with status 400, as the SDK's own server does.

mod sse;
mod strict;
#[cfg(test)]
mod tests;

use serde_json::{Map, Value, json};

/// JSON-RPC's "Parse error": the body is not JSON.
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC's "Invalid Request": JSON, but not a valid JSON-RPC message or batch.
pub const INVALID_REQUEST: i64 = -32600;

/// A POST body from an MCP client, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    Single(Message),
    Batch(Vec<Message>),
}

/// One JSON-RPC message from the client.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// None for notifications; `Some(Value::Null)` only if sent as null. Otherwise a string
    /// or an integer number, as sent.
    pub id: Option<Value>,
    pub kind: MessageKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MessageKind {
    Request {
        method: String,
        params: Option<Value>,
    },
    Notification {
        method: String,
    },
    /// A client answering a server request (`result` or `error`).
    Response,
}

static NULL: Value = Value::Null;

impl Message {
    /// `tools/call`: the tool name and its `arguments` object (Null when absent).
    pub fn tool_call(&self) -> Option<(&str, &Value)> {
        match &self.kind {
            MessageKind::Request {
                method,
                params: Some(Value::Object(params)),
            } if method == "tools/call" => {
                let name = params.get("name")?.as_str()?;
                Some((name, params.get("arguments").unwrap_or(&NULL)))
            }
            _ => None,
        }
    }

    /// `tools/call`: the tool name and the SHA-256 (hex) of its arguments in canonical
    /// JSON ([`arguments_sha256`]).
    pub fn tool_call_digest(&self) -> Option<(&str, String)> {
        let (name, arguments) = self.tool_call()?;
        Some((name, arguments_sha256(arguments)))
    }

    pub fn method(&self) -> Option<&str> {
        match &self.kind {
            MessageKind::Request { method, .. } | MessageKind::Notification { method } => {
                Some(method)
            }
            MessageKind::Response => None,
        }
    }

    /// A request (the only kind a server answers, and so the only kind an error answers).
    pub fn is_request(&self) -> bool {
        matches!(self.kind, MessageKind::Request { .. })
    }
}

impl Inbound {
    /// The messages in order (one for [`Inbound::Single`]).
    pub fn messages(&self) -> &[Message] {
        match self {
            Inbound::Single(message) => std::slice::from_ref(message),
            Inbound::Batch(messages) => messages,
        }
    }

    /// The ids of the requests for `method`, in order (e.g. the `tools/list` requests whose
    /// answer [`filter_tools_list`] should filter).
    pub fn request_ids(&self, method: &str) -> Vec<Value> {
        self.messages()
            .iter()
            .filter(|m| m.is_request() && m.method() == Some(method))
            .filter_map(|m| m.id.clone())
            .collect()
    }
}

/// Why a body is not an MCP message: the reason says what and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not JSON: the parser's message, with line and column.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// JSON, but not a JSON-RPC 2.0 message or batch of them.
    #[error("not a JSON-RPC 2.0 message: {0}")]
    NotJsonRpc(String),
}

impl ParseError {
    /// The JSON-RPC error code that answers it: -32700 or -32600.
    pub fn code(&self) -> i64 {
        match self {
            ParseError::NotJson(_) => PARSE_ERROR,
            ParseError::NotJsonRpc(_) => INVALID_REQUEST,
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            ParseError::NotJson(reason) | ParseError::NotJsonRpc(reason) => reason,
        }
    }
}

/// Parses a client's POST body as JSON-RPC, whether or not it is JSON-RPC: one JSON-RPC 2.0
/// message or a batch of them.
pub fn parse_inbound(body: &[u8]) -> Result<Inbound, ParseError> {
    let text = strict::decode_text(body);
    if text.iter().all(u8::is_ascii_whitespace) {
        return Err(ParseError::NotJson("the body is empty".into()));
    }
    let value = strict::from_slice(&text).map_err(|e| match e {
        strict::StrictError::Syntax(reason) => ParseError::NotJson(reason),
        strict::StrictError::Refused(reason) => ParseError::NotJsonRpc(reason),
    })?;
    inbound(&value)
}

/// A request body read once as JSON: the document, and its JSON-RPC messages when it is
/// JSON-RPC.
#[derive(Debug, Default)]
pub struct BodyJson {
    /// The JSON document (a repeated key keeps its last value); `None` when the body is
    /// not a JSON object or array.
    pub json: Option<Value>,
    /// `None`: not JSON-RPC. `Some(Err)`: JSON-RPC that is malformed — an object repeating
    /// a key, a message that breaks the rules above, or (for a body that is not JSON at
    /// all) text that names `"jsonrpc"`.
    pub mcp: Option<Result<Inbound, ParseError>>,
}

/// Reads a request body as JSON, once, and recognises JSON-RPC in what was read (see the
/// module documentation).
pub fn read_body(body: &[u8]) -> BodyJson {
    let text = strict::decode_text(body);
    let Some(first) = text.iter().find(|b| !b.is_ascii_whitespace()) else {
        return BodyJson::default();
    };
    if !matches!(first, b'{' | b'[') {
        return BodyJson::default();
    }
    match strict::from_slice(&text) {
        Ok(value) => {
            let mcp = is_jsonrpc(&value).then(|| inbound(&value));
            BodyJson {
                json: Some(value),
                mcp,
            }
        }
        // A repeated key, or a number out of range: read it as other JSON readers do, and
        // refuse it if that makes it JSON-RPC. Only such bodies are read twice.
        Err(strict::StrictError::Refused(reason)) => {
            let json: Option<Value> = serde_json::from_slice(&text).ok();
            let mcp = json
                .as_ref()
                .is_some_and(is_jsonrpc)
                .then_some(Err(ParseError::NotJsonRpc(reason)));
            BodyJson { json, mcp }
        }
        // Not JSON to any server either; refused as malformed JSON-RPC when it says it is.
        Err(strict::StrictError::Syntax(reason)) => BodyJson {
            json: None,
            mcp: memchr::memmem::find(&text, b"\"jsonrpc\"")
                .map(|_| Err(ParseError::NotJson(reason))),
        },
    }
}

/// Whether a JSON document is JSON-RPC: an object with a `jsonrpc` member, or an array
/// holding one.
fn is_jsonrpc(value: &Value) -> bool {
    let has_version = |item: &Value| item.as_object().is_some_and(|o| o.contains_key("jsonrpc"));
    match value {
        Value::Object(_) => has_version(value),
        Value::Array(items) => items.iter().any(has_version),
        _ => false,
    }
}

/// The JSON-RPC messages of a JSON document.
fn inbound(value: &Value) -> Result<Inbound, ParseError> {
    match value {
        Value::Object(object) => parse_message(object)
            .map(Inbound::Single)
            .map_err(ParseError::NotJsonRpc),
        Value::Array(items) if items.is_empty() => {
            Err(ParseError::NotJsonRpc("the batch is empty".into()))
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                match item {
                    Value::Object(object) => parse_message(object),
                    other => Err(format!(
                        "a batch holds message objects, got {}",
                        type_name(other)
                    )),
                }
                .map_err(|reason| ParseError::NotJsonRpc(format!("batch entry {i}: {reason}")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Inbound::Batch),
        other => Err(ParseError::NotJsonRpc(format!(
            "the body must be a JSON-RPC message object or a batch array, got {}",
            type_name(other)
        ))),
    }
}

fn parse_message(object: &Map<String, Value>) -> Result<Message, String> {
    match object.get("jsonrpc") {
        Some(Value::String(version)) if version == "2.0" => {}
        Some(other) => {
            return Err(format!("\"jsonrpc\" must be \"2.0\", got {}", short(other)));
        }
        None => return Err("missing \"jsonrpc\": \"2.0\"".into()),
    }
    let id = object.get("id").cloned();
    if let Some(id) = &id {
        match id {
            Value::String(_) | Value::Null => {}
            Value::Number(n) if n.is_i64() || n.is_u64() => {}
            Value::Number(n) => {
                return Err(format!(
                    "\"id\" must be a string or an integer that fits 64 bits, got {n}"
                ));
            }
            other => {
                return Err(format!(
                    "\"id\" must be a string, a number or null, got {}",
                    type_name(other)
                ));
            }
        }
    }
    if let Some(method) = object.get("method") {
        let Value::String(method) = method else {
            return Err(format!(
                "\"method\" must be a string, got {}",
                type_name(method)
            ));
        };
        let method = method.clone();
        if object.contains_key("result") || object.contains_key("error") {
            return Err(format!(
                "a message with \"method\" ({method:?}) cannot carry \"result\" or \"error\""
            ));
        }
        let params = object.get("params").cloned();
        if let Some(params) = &params
            && !matches!(params, Value::Object(_) | Value::Array(_))
        {
            return Err(format!(
                "\"params\" of {method:?} must be an object or an array, got {}",
                type_name(params)
            ));
        }
        if method == "tools/call" {
            if id.is_none() {
                return Err(
                    "\"tools/call\" must be a request (with an \"id\"), not a notification".into(),
                );
            }
            check_tool_call(params.as_ref())?;
        }
        return Ok(match id {
            Some(id) => Message {
                id: Some(id),
                kind: MessageKind::Request { method, params },
            },
            None => Message {
                id: None,
                kind: MessageKind::Notification { method },
            },
        });
    }
    let result = object.contains_key("result");
    let error = object.get("error");
    match (result, error) {
        (true, Some(_)) => Err("a response cannot carry both \"result\" and \"error\"".into()),
        (false, None) => Err("missing \"method\" (or \"result\"/\"error\" for a response)".into()),
        (false, Some(error)) if !error.is_object() => Err(format!(
            "\"error\" must be an object, got {}",
            type_name(error)
        )),
        _ if id.is_none() => Err("a response must carry \"id\"".into()),
        _ => Ok(Message {
            id,
            kind: MessageKind::Response,
        }),
    }
}

fn check_tool_call(params: Option<&Value>) -> Result<(), String> {
    let Some(Value::Object(params)) = params else {
        return Err(match params {
            None => "\"tools/call\" needs \"params\" with the tool's \"name\"".into(),
            Some(other) => format!(
                "\"params\" of \"tools/call\" must be an object, got {}",
                type_name(other)
            ),
        });
    };
    match params.get("name") {
        Some(Value::String(_)) => {}
        Some(other) => {
            return Err(format!(
                "\"params.name\" of \"tools/call\" must be a string, got {}",
                type_name(other)
            ));
        }
        None => return Err("\"tools/call\" is missing \"params.name\"".into()),
    }
    match params.get("arguments") {
        None | Some(Value::Object(_)) => Ok(()),
        Some(other) => Err(format!(
            "\"params.arguments\" of \"tools/call\" must be an object, got {}",
            type_name(other)
        )),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A value for an error message, cut short.
fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= 40 {
        return text;
    }
    let cut: String = text.chars().take(40).collect();
    format!("{cut}…")
}

fn error_object(id: &Value, code: i64, message: &str, data: Option<&Value>) -> Value {
    let mut error = json!({ "code": code, "message": message });
    if let Some(data) = data {
        error["data"] = data.clone();
    }
    json!({ "jsonrpc": "2.0", "id": id, "error": error })
}

/// The JSON body answering a denied message, or a whole batch: one error object per
/// request, with the request's own id, in order (a single request gets an object, a batch an
/// array). Notifications get none, and neither do responses (a client's answer to a server
/// request has the server's id, which the client would take for one of its own). None when
/// nothing gets an error: then the answer is a `202` with an empty body.
pub fn error_reply(
    inbound: &Inbound,
    code: i64,
    message: &str,
    data: Option<Value>,
) -> Option<Vec<u8>> {
    let reply = |m: &Message| {
        m.is_request()
            .then(|| error_object(m.id.as_ref().unwrap_or(&NULL), code, message, data.as_ref()))
    };
    let value = match inbound {
        Inbound::Single(m) => reply(m)?,
        Inbound::Batch(messages) => {
            let errors: Vec<Value> = messages.iter().filter_map(reply).collect();
            if errors.is_empty() {
                return None;
            }
            Value::Array(errors)
        }
    };
    Some(serde_json::to_vec(&value).expect("a JSON value serializes"))
}

/// The JSON-RPC answer to a malformed body: `-32700` (parse error) or `-32600` (invalid
/// request), id null, the reason in `message` and in `data.reason`. Send it with status 400.
pub fn parse_error_reply(error: &ParseError) -> Vec<u8> {
    let message = match error {
        ParseError::NotJson(reason) => format!("Parse error: {reason}"),
        ParseError::NotJsonRpc(reason) => format!("Invalid Request: {reason}"),
    };
    let data = json!({ "reason": error.reason() });
    serde_json::to_vec(&error_object(
        &Value::Null,
        error.code(),
        &message,
        Some(&data),
    ))
    .expect("a JSON value serializes")
}

/// Filters a `tools/list` answer: the body (`application/json`, or `text/event-stream` whose
/// events' data are JSON-RPC messages), the ids of the `tools/list` requests it answers, and
/// whether a tool name is allowed. Returns the body with every disallowed tool taken out of
/// `result.tools` of each response whose id is one of `request_ids` (a tool entry without a
/// string `name` is taken out too), or None when nothing changed. In an event stream only the
/// `data` lines of a rewritten event change; every other byte stays as it was. A body or an
/// event whose payload is not JSON, not a response, or answers another id passes unchanged,
/// and so does a body of any other content type.
pub fn filter_tools_list(
    body: &[u8],
    content_type: &str,
    request_ids: &[Value],
    allowed: &dyn Fn(&str) -> bool,
) -> Option<Vec<u8>> {
    if request_ids.is_empty() {
        return None;
    }
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match media_type.as_str() {
        "application/json" => {
            let mut payload = strict::from_slice(body).ok()?;
            filter_payload(&mut payload, request_ids, allowed)
                .then(|| serde_json::to_vec(&payload).expect("a JSON value serializes"))
        }
        "text/event-stream" => sse::rewrite_data(body, |data| {
            let mut payload = strict::from_slice(data.as_bytes()).ok()?;
            filter_payload(&mut payload, request_ids, allowed)
                .then(|| serde_json::to_string(&payload).expect("a JSON value serializes"))
        }),
        _ => None,
    }
}

/// Filters every matching response in a payload (one response, or a batch of them);
/// whether anything was taken out.
fn filter_payload(
    payload: &mut Value,
    request_ids: &[Value],
    allowed: &dyn Fn(&str) -> bool,
) -> bool {
    match payload {
        Value::Array(items) => {
            // Every response is filtered: no short-circuit after the first change.
            let mut changed = false;
            for item in items {
                changed |= filter_response(item, request_ids, allowed);
            }
            changed
        }
        item => filter_response(item, request_ids, allowed),
    }
}

fn filter_response(
    response: &mut Value,
    request_ids: &[Value],
    allowed: &dyn Fn(&str) -> bool,
) -> bool {
    let Value::Object(response) = response else {
        return false;
    };
    if response.contains_key("method")
        || !response
            .get("id")
            .is_some_and(|id| request_ids.contains(id))
    {
        return false;
    }
    let Some(Value::Array(tools)) = response
        .get_mut("result")
        .and_then(|result| result.get_mut("tools"))
    else {
        return false;
    };
    let before = tools.len();
    tools.retain(|tool| {
        tool.get("name")
            .and_then(Value::as_str)
            .is_some_and(allowed)
    });
    tools.len() != before
}

/// The SHA-256 (hex) of a tool call's `arguments` as canonical JSON: object keys sorted
/// by their UTF-8 bytes, no whitespace, strings in serde_json's escaping. Two bodies that
/// spell the same arguments differently (key order, `\u0061` for `a`, spaces) digest the
/// same; any difference in a value does not.
pub fn arguments_sha256(arguments: &Value) -> String {
    use sha2::{Digest, Sha256};
    let mut text = Vec::new();
    canonical_json(arguments, &mut text);
    Sha256::digest(&text)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn canonical_json(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                // A string always serializes.
                out.extend(serde_json::to_vec(key).unwrap_or_default());
                out.push(b':');
                canonical_json(&map[key.as_str()], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(item, out);
            }
            out.push(b']');
        }
        scalar => out.extend(serde_json::to_vec(scalar).unwrap_or_default()),
    }
}
