//! `ProcessingRequest` ⇄ domain: reading a request out of Envoy's messages, and turning an
//! [`Outcome`] into the header mutation or immediate response Envoy applies.

use std::collections::HashMap;
use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::{
    BodySendMode, HeaderSendMode,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpHeaders,
    ImmediateResponse, ProcessingResponse, TrailersResponse, body_mutation, processing_response,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{Struct, Value as ProtoValue, value::Kind};
use serde::Serialize;
use tonic::metadata::MetadataMap;

use crate::request::{OutboundRequest, RawRequest, RequestConfig, RequestError};
use crate::secrets::SecretValue;
use crate::transforms::{JsonRpcReply, Mutations, Outcome, RefusalKind, Rejection};
use crate::vocab::Tag;

/// The key Envoy files `request_attributes` under.
const ATTRIBUTES_KEY: &str = "envoy.filters.http.ext_proc";

/// What the Envoy listener told us about itself in the stream's gRPC initial metadata.
#[derive(Debug, Clone, Default)]
pub struct ListenerContext {
    /// `x-portcullis-tags: a,b`: tags of every request through this listener.
    pub tags: Vec<Tag>,
    /// `x-portcullis-upstream-scheme: https`: the scheme towards the upstream when it
    /// differs from the workload's (base-URL mode originates TLS).
    pub upstream_scheme: Option<String>,
    /// `x-portcullis-connect: intercept`: Envoy decrypts what CONNECTs here carry and sends
    /// each request inside to Portcullis.
    pub intercepts_connect: bool,
    /// `x-portcullis-tunnel: intercepted`: requests here arrive through an intercepted
    /// tunnel; Envoy wrote the tunnel's target and proxy credentials into them.
    pub tunnel: bool,
}

impl ListenerContext {
    pub fn from_metadata(metadata: &MetadataMap) -> ListenerContext {
        let text = |key: &str| metadata.get(key).and_then(|v| v.to_str().ok());
        let tags = text("x-portcullis-tags")
            .map(Tag::parse_listener_list)
            .unwrap_or_default();
        let upstream_scheme = text("x-portcullis-upstream-scheme")
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| s == "http" || s == "https");
        ListenerContext {
            tags,
            upstream_scheme,
            intercepts_connect: text("x-portcullis-connect") == Some("intercept"),
            tunnel: text("x-portcullis-tunnel") == Some("intercepted"),
        }
    }
}

/// A request Portcullis could not understand, with what could be read of it for the audit.
#[derive(Debug)]
pub struct InvalidRequest {
    pub error: RequestError,
    pub request: OutboundRequest,
}

/// Reads the request out of a `request_headers` message and the stream's attributes.
pub fn outbound_request(
    headers: HttpHeaders,
    attributes: &HashMap<String, Struct>,
    listener: &ListenerContext,
    config: &RequestConfig,
) -> Result<OutboundRequest, Box<InvalidRequest>> {
    let HttpHeaders {
        headers,
        attributes: deprecated_attributes,
        ..
    } = headers;
    // The message is ours: take its strings instead of copying them.
    let list: Vec<(String, Vec<u8>)> = headers
        .map(|map| map.headers)
        .unwrap_or_default()
        .into_iter()
        .map(|header| {
            let value = if header.raw_value.is_empty() {
                header.value.into_bytes()
            } else {
                header.raw_value
            };
            let mut name = header.key;
            name.make_ascii_lowercase();
            (name, value)
        })
        .collect();
    let (list, connect_authority) = if listener.tunnel {
        tunnel_headers(list)
    } else {
        (list, None)
    };
    let find = |name: &str| {
        list.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    };
    // Attributes moved from HttpHeaders to ProcessingRequest; accept both.
    let attrs = attributes
        .get(ATTRIBUTES_KEY)
        .or_else(|| deprecated_attributes.get(ATTRIBUTES_KEY));
    let attr = |name: &str| -> Option<String> {
        match attrs?.fields.get(name)?.kind.as_ref()? {
            Kind::StringValue(s) if !s.is_empty() => Some(s.clone()),
            _ => None,
        }
    };
    let source = attr("source.address").and_then(|s| s.parse::<SocketAddr>().ok());
    let peer_uri_san = attr("connection.uri_san_peer_certificate");
    let sni = attr("connection.requested_server_name");
    let id = request_id(find("x-request-id"));
    let raw = RawRequest::from_headers(&list);
    match raw.normalize(listener.upstream_scheme.as_deref(), config) {
        Ok(target) => {
            let authority = String::from_utf8_lossy(raw.authority.unwrap_or_default()).into_owned();
            let mut request = OutboundRequest::from_target(
                id,
                target,
                authority,
                list,
                source,
                peer_uri_san,
                sni,
            );
            request.intercepted =
                listener.intercepts_connect && request.method == crate::request::Method::Connect;
            request.upstream_tls = listener.upstream_scheme.as_deref() == Some("https");
            if listener.tunnel
                && let Err(error) = check_tunnel_target(&request, connect_authority.as_deref())
            {
                return Err(Box::new(InvalidRequest { error, request }));
            }
            Ok(request)
        }
        Err(error) => {
            let lossy =
                |v: Option<&[u8]>| String::from_utf8_lossy(v.unwrap_or_default()).into_owned();
            let path = lossy(raw.path);
            let request = OutboundRequest {
                id,
                method: crate::request::Method::from_bytes(raw.method.unwrap_or_default()),
                method_name: lossy(raw.method),
                scheme: lossy(raw.scheme),
                authority: lossy(raw.authority),
                host: lossy(raw.authority),
                port: 0,
                ip: None,
                path: path.split(['?', '#']).next().unwrap_or_default().to_owned(),
                headers: list,
                source,
                peer_uri_san,
                sni,
                intercepted: false,
                upstream_tls: false,
                path_rewritten: false,
            };
            Err(Box::new(InvalidRequest { error, request }))
        }
    }
}

/// Written by Envoy into requests from an intercepted tunnel: the CONNECT's target.
const CONNECT_AUTHORITY: &str = "x-portcullis-connect-authority";

/// Takes the tunnel's target out of the headers, and drops the empty or `-` Proxy-Authorization
/// Envoy writes when the CONNECT carried none (the workload's own was overwritten).
fn tunnel_headers(list: Vec<(String, Vec<u8>)>) -> (Vec<(String, Vec<u8>)>, Option<String>) {
    let mut connect_authority = None;
    let list = list
        .into_iter()
        .filter(|(name, value)| match name.as_str() {
            CONNECT_AUTHORITY => {
                if !value.is_empty() && value != b"-" {
                    connect_authority = Some(String::from_utf8_lossy(value).into_owned());
                }
                false
            }
            "proxy-authorization" => !value.is_empty() && value != b"-",
            _ => true,
        })
        .collect();
    (list, connect_authority)
}

/// A request inside an intercepted tunnel must be for the host the tunnel was opened to,
/// and — over TLS — for the server name its certificate was minted for: otherwise a
/// workload could open a tunnel to an allowed host and send requests elsewhere.
fn check_tunnel_target(
    request: &OutboundRequest,
    connect_authority: Option<&str>,
) -> Result<(), RequestError> {
    let misdirected = |expected: &str, by: &'static str| RequestError::Misdirected {
        host: request.authority.clone(),
        expected: expected.to_owned(),
        by,
    };
    if let Some(sni) = &request.sni {
        let sni_host = sni.trim_end_matches('.').to_ascii_lowercase();
        if sni_host != request.host {
            return Err(misdirected(sni, "TLS server name"));
        }
    }
    if let Some(target) = connect_authority {
        let same = crate::request::parse_authority(target).is_ok_and(|authority| {
            authority.host == request.host && authority.port == Some(request.port)
        });
        if !same {
            return Err(misdirected(target, "CONNECT"));
        }
    }
    Ok(())
}

/// Envoy's `x-request-id` when it looks like one; a fresh UUID otherwise, so a workload
/// cannot inject arbitrary text into audit records through it.
fn request_id(header: Option<&[u8]>) -> String {
    match header {
        Some(id)
            if !id.is_empty()
                && id.len() <= 128
                && id.iter().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')
                }) =>
        {
            String::from_utf8_lossy(id).into_owned()
        }
        _ => uuid::Uuid::new_v4().to_string(),
    }
}

fn header(name: &str, value: &[u8]) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_owned(),
            value: String::new(),
            raw_value: value.to_vec(),
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

fn header_mutation(mutations: &Mutations) -> Option<HeaderMutation> {
    if mutations.set.is_empty()
        && mutations.remove.is_empty()
        && mutations.path.is_none()
        && mutations.body.is_none()
    {
        return None;
    }
    let mut set_headers: Vec<HeaderValueOption> = mutations
        .set
        .iter()
        .map(|(name, value)| header(name, value.expose().as_bytes()))
        .collect();
    if let Some(path) = &mutations.path {
        set_headers.push(header(":path", path.expose().as_bytes()));
    }
    // Envoy refuses a mutated body whose length no longer matches `content-length`.
    if let Some(body) = &mutations.body {
        set_headers.push(header(
            "content-length",
            body.expose().len().to_string().as_bytes(),
        ));
    }
    Some(HeaderMutation {
        set_headers,
        remove_headers: mutations.remove.clone(),
    })
}

fn common(mutations: &Mutations) -> CommonResponse {
    CommonResponse {
        header_mutation: header_mutation(mutations),
        body_mutation: mutations.body.as_ref().map(|body| BodyMutation {
            mutation: Some(body_mutation::Mutation::Body(body.expose().to_vec())),
        }),
        ..Default::default()
    }
}

/// Lets the request continue with the outcome's header mutations.
pub fn continue_request(mutations: &Mutations) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(processing_response::Response::RequestHeaders(
            HeadersResponse {
                response: Some(common(mutations)),
            },
        )),
        ..Default::default()
    }
}

/// Lets a buffered request continue, with header and body mutations.
pub fn continue_body(mutations: &Mutations) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(processing_response::Response::RequestBody(BodyResponse {
            response: Some(common(mutations)),
        })),
        ..Default::default()
    }
}

/// Holds the decision until the whole body is here: continue the headers unchanged and
/// ask Envoy to buffer the body and send it. The request trailers are asked for too: with
/// them Envoy sends the buffered body with `end_of_stream: false`, and their arrival
/// confirms that the body decided on was the whole body (see `extproc::stream`). With
/// `watch_response`, the response headers and the buffered response body come too, so that
/// a `tools/list` answer can be filtered; nothing else of the stream is needed.
pub fn buffer_body(watch_response: bool) -> ProcessingResponse {
    let (response_header_mode, response_body_mode) = if watch_response {
        (HeaderSendMode::Send, BodySendMode::Buffered)
    } else {
        (HeaderSendMode::Skip, BodySendMode::None)
    };
    ProcessingResponse {
        response: Some(processing_response::Response::RequestHeaders(
            HeadersResponse {
                response: Some(CommonResponse::default()),
            },
        )),
        mode_override: Some(ProcessingMode {
            request_header_mode: HeaderSendMode::Send as i32,
            request_body_mode: BodySendMode::Buffered as i32,
            response_header_mode: response_header_mode as i32,
            response_body_mode: response_body_mode as i32,
            request_trailer_mode: HeaderSendMode::Send as i32,
            response_trailer_mode: HeaderSendMode::Skip as i32,
        }),
        ..Default::default()
    }
}

/// Makes a [`buffer_body`] answer ask for the response too (headers, the body streamed
/// unless it is already buffered, trailers): the decision, at the body, may put a
/// credential on the request whose echo must be scrubbed, and Envoy takes a mode override
/// only while it processes headers. Passed at once when nothing is to be scrubbed
/// ([`continue_response_headers`]).
pub fn may_scrub_response(response: &mut ProcessingResponse) {
    if let Some(mode) = &mut response.mode_override {
        mode.response_header_mode = HeaderSendMode::Send as i32;
        if mode.response_body_mode == BodySendMode::None as i32 {
            mode.response_body_mode = BodySendMode::Streamed as i32;
        }
        mode.response_trailer_mode = HeaderSendMode::Send as i32;
    }
}

/// Asks Envoy, in the answer to the request headers, for the response headers, its body
/// streamed and its trailers: the request carries a credential, and the response is
/// scrubbed of it.
pub fn scrub_response(response: &mut ProcessingResponse) {
    response.mode_override = Some(response_mode(BodySendMode::Streamed));
}

/// The processing mode once the request is decided: the response's headers, its body as
/// `body` says, and its trailers.
fn response_mode(body: BodySendMode) -> ProcessingMode {
    ProcessingMode {
        request_header_mode: HeaderSendMode::Send as i32,
        request_body_mode: BodySendMode::None as i32,
        response_header_mode: HeaderSendMode::Send as i32,
        response_body_mode: body as i32,
        request_trailer_mode: HeaderSendMode::Skip as i32,
        response_trailer_mode: HeaderSendMode::Send as i32,
    }
}

/// Answers response headers that were scrubbed: `set` are the scrubbed values; with
/// `body_follows`, the length is dropped (the body is scrubbed too, and Envoy frames it).
pub fn scrubbed_response_headers(
    set: &[(String, Vec<u8>)],
    body_follows: bool,
) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(processing_response::Response::ResponseHeaders(
            HeadersResponse {
                response: Some(CommonResponse {
                    header_mutation: Some(HeaderMutation {
                        set_headers: set.iter().map(|(n, v)| header(n, v)).collect(),
                        remove_headers: if body_follows {
                            vec!["content-length".to_owned()]
                        } else {
                            Vec::new()
                        },
                    }),
                    ..Default::default()
                }),
            },
        )),
        ..Default::default()
    }
}

/// Answers response headers that a response watcher may change: `set` replaces values,
/// `drop_length` removes `content-length` (the body that follows may change length), and
/// `buffer_body` asks Envoy to hold the response until its whole body has been answered.
pub fn watched_response_headers(
    set: &[(String, Vec<u8>)],
    drop_length: bool,
    buffer_body: bool,
) -> ProcessingResponse {
    let mut response = scrubbed_response_headers(set, drop_length);
    if buffer_body {
        response.mode_override = Some(response_mode(BodySendMode::Buffered));
    }
    response
}

/// A response `response_dlp` refuses: a finding under `deny`, or a body it cannot read.
pub fn response_refusal(
    transform: &'static str,
    reason: &'static str,
    message: String,
) -> Rejection {
    Rejection::new(RefusalKind::ResponseRefused, reason, message, transform)
}

/// Answers response trailers, with `set` the scrubbed values.
pub fn scrubbed_response_trailers(set: &[(String, Vec<u8>)]) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(processing_response::Response::ResponseTrailers(
            envoy_types::pb::envoy::service::ext_proc::v3::TrailersResponse {
                header_mutation: (!set.is_empty()).then(|| HeaderMutation {
                    set_headers: set.iter().map(|(n, v)| header(n, v)).collect(),
                    remove_headers: Vec::new(),
                }),
            },
        )),
        ..Default::default()
    }
}

/// Every header of an Envoy header (or trailer) map: names lower case, values as bytes.
pub fn header_list(
    map: Option<&envoy_types::pb::envoy::config::core::v3::HeaderMap>,
) -> impl Iterator<Item = (String, &[u8])> {
    map.into_iter().flat_map(|map| &map.headers).map(|h| {
        let value = if h.raw_value.is_empty() {
            h.value.as_bytes()
        } else {
            h.raw_value.as_slice()
        };
        (h.key.to_ascii_lowercase(), value)
    })
}

/// The refusal of a response that could not be scrubbed: it is not forwarded.
pub fn response_not_scrubbable(encoding: &str) -> Rejection {
    Rejection {
        status: 502,
        kind: RefusalKind::ResponseWithheld,
        reason: "response_not_scrubbable",
        message: format!(
            "the upstream answered with content-encoding {encoding:?} although Portcullis \
             asked for none: a credential it echoed could not be removed, so the response \
             was withheld"
        ),
        policy: None,
        rule: None,
        transform: "secrets",
        retry_after: None,
        approval: None,
    }
}

/// The first value of a header in an Envoy header message, by lower-case name.
pub fn header_text(headers: &HttpHeaders, name: &str) -> Option<String> {
    let header = headers
        .headers
        .as_ref()?
        .headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(name))?;
    Some(if header.raw_value.is_empty() {
        header.value.clone()
    } else {
        String::from_utf8_lossy(&header.raw_value).into_owned()
    })
}

/// Answers response headers. `filtering`: the body will be rewritten, so its length is
/// dropped (Envoy then frames it itself); otherwise the body is not wanted after all.
pub fn continue_response_headers(filtering: bool) -> ProcessingResponse {
    let common = if filtering {
        CommonResponse {
            header_mutation: Some(HeaderMutation {
                set_headers: Vec::new(),
                remove_headers: vec!["content-length".to_owned()],
            }),
            ..Default::default()
        }
    } else {
        CommonResponse::default()
    };
    ProcessingResponse {
        response: Some(processing_response::Response::ResponseHeaders(
            HeadersResponse {
                response: Some(common),
            },
        )),
        mode_override: (!filtering).then_some(ProcessingMode {
            request_header_mode: HeaderSendMode::Send as i32,
            request_body_mode: BodySendMode::None as i32,
            response_header_mode: HeaderSendMode::Skip as i32,
            response_body_mode: BodySendMode::None as i32,
            request_trailer_mode: HeaderSendMode::Skip as i32,
            response_trailer_mode: HeaderSendMode::Skip as i32,
        }),
        ..Default::default()
    }
}

/// Answers the response body: replaced by `body` when set, else unchanged.
pub fn continue_response_body(body: Option<Vec<u8>>) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(processing_response::Response::ResponseBody(BodyResponse {
            response: Some(CommonResponse {
                body_mutation: body.map(|body| BodyMutation {
                    mutation: Some(body_mutation::Mutation::Body(body)),
                }),
                ..Default::default()
            }),
        })),
        ..Default::default()
    }
}

/// Envoy's `max_message_timeout` in `envoy/*.yaml`: it ignores a longer override.
pub const MAX_MESSAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Asks Envoy to wait for the answer to its last message longer than its
/// `message_timeout`: `wait` plus a second of margin, at most [`MAX_MESSAGE_TIMEOUT`]. Envoy
/// restarts that message's timer with the new value, once per message, and reads nothing
/// else of this response; the real answer follows on the stream.
pub fn extend_timeout(wait: std::time::Duration) -> ProcessingResponse {
    let timeout = (wait + std::time::Duration::from_secs(1)).min(MAX_MESSAGE_TIMEOUT);
    ProcessingResponse {
        override_message_timeout: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(timeout.subsec_nanos()).unwrap_or(0),
        }),
        ..Default::default()
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

/// The refusal for clients that print `error` as a string: the sentence in `error`, the
/// usual object under `portcullis`.
#[derive(Serialize)]
struct TextErrorBody<'a> {
    error: String,
    portcullis: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
    reason: &'a str,
    policy: Option<&'a str>,
    transform: &'a str,
    request_id: &'a str,
    /// The approval the request waits for (`approval_required`).
    #[serde(skip_serializing_if = "Option::is_none")]
    approval: Option<&'a crate::transforms::ApprovalTicket>,
}

/// How a refusal's JSON body is laid out for the client that will display it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ErrorShape {
    /// `{"error": {"type", "message", …, "request_id"}}`: what curl, cargo and the OpenAI and
    /// Anthropic SDKs show well.
    #[default]
    Object,
    /// `{"error": "<sentence>", "portcullis": {…}}`: npm prints `body.error` after the status
    /// line as a string, and an object as `[object Object]`.
    Text,
}

impl ErrorShape {
    /// Chosen by the request's `User-Agent`: only npm's CLI needs [`ErrorShape::Text`].
    pub fn for_user_agent(user_agent: Option<&[u8]>) -> ErrorShape {
        match user_agent {
            Some(agent) if agent.starts_with(b"npm/") => ErrorShape::Text,
            _ => ErrorShape::Object,
        }
    }

    pub fn for_request(request: &OutboundRequest) -> ErrorShape {
        ErrorShape::for_user_agent(request.header("user-agent"))
    }
}

/// The refusal's JSON body in `shape`.
fn refusal_body(request_id: &str, rejection: &Rejection, shape: ErrorShape) -> Vec<u8> {
    let detail = ErrorDetail {
        kind: rejection.kind.as_str(),
        message: &rejection.message,
        reason: rejection.reason,
        policy: rejection.policy.as_deref(),
        transform: rejection.transform,
        request_id,
        approval: rejection.approval.as_deref(),
    };
    let body = match shape {
        ErrorShape::Object => serde_json::to_vec(&ErrorBody { error: detail }),
        ErrorShape::Text => serde_json::to_vec(&TextErrorBody {
            // npm masks anything shaped like a UUID in what it prints (it could be a
            // token): the id goes without its dashes, so it survives.
            error: format!(
                "refused by the Portcullis egress gateway: {} ({}, request id {})",
                rejection.message,
                rejection.kind,
                request_id.replace('-', "")
            ),
            portcullis: detail,
        }),
    };
    body.unwrap_or_default()
}

/// Envoy's dynamic metadata `portcullis: {request_id}`: the id this request is audited
/// under, for Envoy's access log and its own error answers. The `x-request-id` header cannot
/// serve: `header_allowlist` may strip it before Envoy logs, and Envoy reads it late.
pub fn request_id_metadata(request_id: &str) -> Struct {
    let id = ProtoValue {
        kind: Some(Kind::StringValue(request_id.to_owned())),
    };
    let portcullis = Struct {
        fields: HashMap::from([("request_id".to_owned(), id)]),
    };
    Struct {
        fields: HashMap::from([(
            "portcullis".to_owned(),
            ProtoValue {
                kind: Some(Kind::StructValue(portcullis)),
            },
        )]),
    }
}

/// The workload-facing refusal: status, JSON body, request id header.
pub fn refuse(request_id: &str, rejection: &Rejection, shape: ErrorShape) -> ProcessingResponse {
    let body = refusal_body(request_id, rejection, shape);
    let mut set_headers = vec![
        header("content-type", b"application/json"),
        header("x-portcullis-request-id", request_id.as_bytes()),
        // What the OpenAI and Anthropic SDKs read into their errors' `request_id`.
        header("x-request-id", request_id.as_bytes()),
    ];
    if rejection.status == 407 {
        set_headers.push(header("proxy-authenticate", b"Basic realm=\"portcullis\""));
    }
    immediate(request_id, rejection, rejection.status, set_headers, body)
}

/// An MCP refusal: the JSON-RPC document the workload's MCP client reads as an error.
fn jsonrpc_reply(
    request_id: &str,
    rejection: &Rejection,
    reply: &JsonRpcReply,
) -> ProcessingResponse {
    let set_headers = vec![
        header("content-type", b"application/json"),
        header("x-portcullis-request-id", request_id.as_bytes()),
    ];
    immediate(
        request_id,
        rejection,
        reply.status,
        set_headers,
        reply.body.clone(),
    )
}

/// Envoy's answer to the workload in Portcullis's place, for `rejection`: Envoy records
/// `portcullis_<reason>` as its response code details, and the request id as metadata.
fn immediate(
    request_id: &str,
    rejection: &Rejection,
    status: u16,
    mut set_headers: Vec<HeaderValueOption>,
    body: Vec<u8>,
) -> ProcessingResponse {
    if let Some(seconds) = rejection.retry_after {
        set_headers.push(header("retry-after", seconds.to_string().as_bytes()));
    }
    ProcessingResponse {
        response: Some(processing_response::Response::ImmediateResponse(
            ImmediateResponse {
                status: Some(HttpStatus {
                    code: i32::from(status),
                }),
                headers: Some(HeaderMutation {
                    set_headers,
                    remove_headers: Vec::new(),
                }),
                body,
                grpc_status: None,
                details: format!("portcullis_{}", rejection.reason),
            },
        )),
        dynamic_metadata: Some(request_id_metadata(request_id)),
        ..Default::default()
    }
}

/// The Envoy response for a decided request, answering the request headers or, when the
/// body was buffered, the request body.
pub fn respond(request: &OutboundRequest, outcome: &Outcome, at_body: bool) -> ProcessingResponse {
    match (&outcome.rejection, at_body) {
        (Some(rejection), _) => match &outcome.jsonrpc_reply {
            Some(reply) => jsonrpc_reply(&request.id, rejection, reply),
            None => refuse(&request.id, rejection, ErrorShape::for_request(request)),
        },
        (None, at_body) => {
            // The upstream gets the decoded path that was decided, unless a transform
            // rewrote it again (from that same decoded path).
            let rewritten;
            let mut mutations = &outcome.mutations;
            if request.path_rewritten
                && mutations.path.is_none()
                && let Some(path) = request.header(":path")
            {
                let mut with_path = outcome.mutations.clone();
                with_path.path = Some(SecretValue::new(String::from_utf8_lossy(path)));
                rewritten = with_path;
                mutations = &rewritten;
            }
            let mut response = if at_body {
                continue_body(mutations)
            } else {
                continue_request(mutations)
            };
            response.dynamic_metadata = Some(request_id_metadata(&request.id));
            response
        }
    }
}

/// The rejection for a request with trailers but no body whose decision writes headers:
/// Envoy takes header changes with the body or the headers, never with the trailers.
pub fn trailers_without_body() -> Rejection {
    Rejection {
        status: 400,
        kind: RefusalKind::InvalidRequest,
        reason: "trailers_without_body",
        message: "a request with trailers and an empty body cannot carry the headers this \
                  gateway adds; send it without trailers"
            .to_owned(),
        policy: None,
        rule: None,
        transform: "request",
        retry_after: None,
        approval: None,
    }
}

/// Continues the request trailers unchanged.
pub fn continue_trailers() -> ProcessingResponse {
    ProcessingResponse {
        response: Some(processing_response::Response::RequestTrailers(
            TrailersResponse::default(),
        )),
        ..Default::default()
    }
}

/// The rejection for a request that could not be parsed.
pub fn invalid_request_rejection(error: &RequestError) -> Rejection {
    let (status, reason) = match error {
        RequestError::Misdirected { .. } => (421, "misdirected_request"),
        _ => (400, "invalid_request"),
    };
    Rejection {
        status,
        kind: RefusalKind::InvalidRequest,
        reason,
        message: error.to_string(),
        policy: None,
        rule: None,
        transform: "request",
        retry_after: None,
        approval: None,
    }
}

#[cfg(test)]
mod tests;
