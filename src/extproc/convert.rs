//! `ProcessingRequest` ⇄ domain: reading a request out of Envoy's messages, and turning an
//! [`Outcome`] into the header mutation or immediate response Envoy applies.

use std::collections::HashMap;
use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    CommonResponse, HeaderMutation, HeadersResponse, HttpHeaders, ImmediateResponse,
    ProcessingResponse, processing_response,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{Struct, value::Kind};
use serde::Serialize;
use tonic::metadata::MetadataMap;

use crate::policy::rule::Tag;
use crate::request::{OutboundRequest, RawRequest, RequestError};
use crate::transforms::{HeaderMutations, Outcome, Rejection};

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
}

impl ListenerContext {
    pub fn from_metadata(metadata: &MetadataMap) -> ListenerContext {
        let text = |key: &str| metadata.get(key).and_then(|v| v.to_str().ok());
        let tags = text("x-portcullis-tags")
            .map(|list| {
                list.split(',')
                    .filter(|t| !t.trim().is_empty())
                    .filter_map(|t| match Tag::parse(t) {
                        Ok(tag) => Some(tag),
                        Err(e) => {
                            tracing::warn!(tag = t, error = %e, "ignoring invalid listener tag");
                            None
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let upstream_scheme = text("x-portcullis-upstream-scheme")
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| s == "http" || s == "https");
        ListenerContext {
            tags,
            upstream_scheme,
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
    let raw = RawRequest {
        method: find(":method"),
        scheme: find(":scheme"),
        authority: find(":authority").or_else(|| find("host")),
        path: find(":path"),
    };
    match raw.normalize(listener.upstream_scheme.as_deref()) {
        Ok(target) => {
            let authority = String::from_utf8_lossy(raw.authority.unwrap_or_default()).into_owned();
            Ok(OutboundRequest::from_target(
                id,
                target,
                authority,
                list,
                source,
                peer_uri_san,
                sni,
            ))
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
            };
            Err(Box::new(InvalidRequest { error, request }))
        }
    }
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

fn header_mutation(mutations: &HeaderMutations) -> Option<HeaderMutation> {
    if mutations.is_empty() {
        return None;
    }
    Some(HeaderMutation {
        set_headers: mutations
            .set
            .iter()
            .map(|(name, value)| header(name, value))
            .collect(),
        remove_headers: mutations.remove.clone(),
    })
}

/// Lets the request continue with the outcome's header mutations.
pub fn continue_request(mutations: &HeaderMutations) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(processing_response::Response::RequestHeaders(
            HeadersResponse {
                response: Some(CommonResponse {
                    header_mutation: header_mutation(mutations),
                    ..Default::default()
                }),
            },
        )),
        ..Default::default()
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
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
}

/// The workload-facing refusal: status, JSON body, request id header.
pub fn refuse(request_id: &str, rejection: &Rejection) -> ProcessingResponse {
    let body = serde_json::to_vec(&ErrorBody {
        error: ErrorDetail {
            kind: rejection.kind,
            message: &rejection.message,
            reason: rejection.reason,
            policy: rejection.policy.as_deref(),
            transform: rejection.transform,
            request_id,
        },
    })
    .unwrap_or_default();
    let mut set_headers = vec![
        header("content-type", b"application/json"),
        header("x-portcullis-request-id", request_id.as_bytes()),
    ];
    if rejection.status == 407 {
        set_headers.push(header("proxy-authenticate", b"Basic realm=\"portcullis\""));
    }
    ProcessingResponse {
        response: Some(processing_response::Response::ImmediateResponse(
            ImmediateResponse {
                status: Some(HttpStatus {
                    code: i32::from(rejection.status),
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
        ..Default::default()
    }
}

/// The Envoy response for a decided request.
pub fn respond(request: &OutboundRequest, outcome: &Outcome) -> ProcessingResponse {
    match &outcome.rejection {
        Some(rejection) => refuse(&request.id, rejection),
        None => continue_request(&outcome.mutations),
    }
}

/// The rejection for a request that could not be parsed.
pub fn invalid_request_rejection(error: &RequestError) -> Rejection {
    Rejection {
        status: 400,
        kind: "invalid_request",
        reason: "invalid_request",
        message: error.to_string(),
        policy: None,
        rule: None,
        transform: "request",
    }
}

#[cfg(test)]
mod tests;
