//! The `grpc` transform: the decision for each request in scope is delegated to an external
//! service implementing `portcullis.processor.v1.Processor` (`proto/`), such as an
//! organisation's own risk engine.
//!
//! - **It can only narrow.** It runs after the allowlist, so it is asked only about requests
//!   the policies let through; it answers `continue` (possibly with headers to set or
//!   remove) or `reject`.
//! - **It never sees a credential, nor sets one.** It must run before `secrets` (a config
//!   error otherwise); `authorization`, `proxy-authorization` and `cookie` are never sent,
//!   and a processor that sets or removes them (or a routing header) has broken the contract.
//! - **It may not answer.** Unreachable, past its timeout, a gRPC error status, or an answer
//!   that breaks the contract: `fail: closed` (the default) refuses the request with 503,
//!   `fail: open` lets it continue; the audit record says which and why.

pub mod config;
#[cfg(test)]
mod tests;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

pub use config::{FailMode, GrpcConfig};

use super::capture::{capture_bytes, capture_text, presented_token};
use super::kind::{
    Applied, CompileContext, Kind, Transform, TransformConfig, required_config, validated,
};
use super::{
    Annotations, CREDENTIAL_HEADERS, Exchange, RefusalKind, Rejection, Step, millis, printable,
    routes_or_frames, sent_header_names,
};
use crate::identity::Identity;
use crate::inspect::Body;
use crate::policy::RequestFacts;
use crate::request::{OutboundRequest, is_header_name};
use crate::secrets::SecretValue;
use crate::telemetry::metrics::Metrics;
use crate::vocab::FieldError;

/// The generated messages, client and server of `proto/portcullis/processor/v1`.
#[allow(clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("portcullis.processor.v1");
}

use proto::decide_response::Decision;
use proto::processor_client::ProcessorClient;

/// A processor's `message` is cut to this many characters.
const MAX_MESSAGE_CHARS: usize = 200;

/// Headers a processor may neither set nor remove: credentials, those that route or
/// frame the request, and the one that identifies it in the audit trail.
fn reserved(name: &str) -> bool {
    CREDENTIAL_HEADERS.contains(&name) || routes_or_frames(name) || name == "x-request-id"
}

/// The compiled transform.
pub struct GrpcProcessor {
    endpoint: Endpoint,
    /// Made on first use: a channel needs the runtime, and `portcullis check` compiles
    /// snapshots without one. Reconnects on its own.
    channel: OnceLock<Channel>,
    /// For logs.
    address: String,
    timeout: Duration,
    fail: FailMode,
    send_body: bool,
    max_body_bytes: usize,
    /// Lower case, deduplicated; never one of [`CREDENTIAL_HEADERS`].
    headers: Vec<String>,
}

/// What the processor did, for the audit record: its answer, or why there was none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrpcAnnotation {
    pub outcome: GrpcOutcome,
    /// The processor's reason for a `reject`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub duration_ms: u64,
    /// Names of the headers the processor set (values are not recorded).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub set_headers: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removed_headers: Vec<String>,
    /// Why there was no valid answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<GrpcFailure>,
    /// The fail mode applied to that failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail_mode: Option<FailMode>,
}

impl GrpcAnnotation {
    /// Counts this step in `portcullis_grpc_decisions_total`.
    pub fn record(&self, metrics: &Metrics) {
        metrics.record_grpc(
            self.outcome.as_str(),
            self.failure.map_or("none", |f| f.as_str()),
            self.fail_mode.map_or("none", |m| m.as_str()),
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GrpcOutcome {
    Continue,
    Reject,
    /// No valid answer: the fail mode applied.
    Failed,
}

/// Why a processor gave no valid answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GrpcFailure {
    Timeout,
    /// Not reachable (connection refused, TLS, DNS).
    Unavailable,
    /// It answered with a gRPC error status.
    Error,
    /// Its answer broke the contract (no decision, a refused header, a bad status).
    InvalidResponse,
}

impl GrpcOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            GrpcOutcome::Continue => "continue",
            GrpcOutcome::Reject => "reject",
            GrpcOutcome::Failed => "failed",
        }
    }
}

impl GrpcFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            GrpcFailure::Timeout => "timeout",
            GrpcFailure::Unavailable => "unavailable",
            GrpcFailure::Error => "error",
            GrpcFailure::InvalidResponse => "invalid_response",
        }
    }

    fn reason(self) -> &'static str {
        match self {
            GrpcFailure::Timeout => "grpc_timeout",
            GrpcFailure::Unavailable => "grpc_unavailable",
            GrpcFailure::Error => "grpc_error",
            GrpcFailure::InvalidResponse => "grpc_invalid_response",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            GrpcFailure::Timeout => "did not answer in time",
            GrpcFailure::Unavailable => "is unreachable",
            GrpcFailure::Error => "answered with an error",
            GrpcFailure::InvalidResponse => "gave an answer that breaks the processor contract",
        }
    }
}

impl GrpcProcessor {
    /// Compiles a validated config; errors are relative to `config`.
    pub fn compile(config: &GrpcConfig) -> Result<GrpcProcessor, Vec<FieldError>> {
        let errors = config.validate();
        if !errors.is_empty() {
            return Err(errors);
        }
        let invalid = |e: tonic::transport::Error| vec![FieldError::new("endpoint", e.to_string())];
        let mut endpoint = Endpoint::from_shared(config.endpoint.clone())
            .map_err(invalid)?
            .connect_timeout(config.timeout.0)
            .timeout(config.timeout.0)
            .tcp_nodelay(true);
        if config.endpoint.starts_with("https:") {
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().with_native_roots())
                .map_err(invalid)?;
        }
        let headers = sent_header_names(&config.headers);
        Ok(GrpcProcessor {
            endpoint,
            channel: OnceLock::new(),
            address: config.endpoint.clone(),
            timeout: config.timeout.0,
            fail: config.fail,
            send_body: config.send_body,
            max_body_bytes: config.max_body_bytes,
            headers,
        })
    }

    /// Whether this request is sent to the processor at all: an intercepted tunnel's
    /// requests are, one by one, not the CONNECT that opens it.
    pub fn decides(&self, request: &OutboundRequest) -> bool {
        !request.intercepted
    }

    pub(super) async fn run(&self, exchange: &mut Exchange<'_>) -> Step {
        if !self.decides(exchange.request) {
            return Step::Continue(Annotations {
                reason: Some("tunnel_decided_per_request"),
                ..Annotations::default()
            });
        }
        if exchange.preview {
            return Step::Continue(Annotations {
                reason: Some("grpc_not_called_in_preview"),
                ..Annotations::default()
            });
        }
        let started = Instant::now();
        let message = self.decide_request(exchange);
        let channel = self
            .channel
            .get_or_init(|| self.endpoint.connect_lazy())
            .clone();
        let mut call = tonic::Request::new(message);
        // Sent as `grpc-timeout`, so the processor knows when to stop trying.
        call.set_timeout(self.timeout);
        let mut client = ProcessorClient::new(channel);
        let failure = match tokio::time::timeout(self.timeout, client.decide(call)).await {
            Ok(Ok(response)) => match self.ruling(response.into_inner(), exchange, started) {
                Ok(step) => return step,
                Err(why) => {
                    tracing::warn!(request_id = %exchange.request.id, processor = %self.address,
                        "decision processor answer refused: {why}");
                    GrpcFailure::InvalidResponse
                }
            },
            Ok(Err(status)) => {
                // tonic's own deadline (the channel's) may fire just before ours.
                let failure = if started.elapsed() >= self.timeout
                    || status.code() == tonic::Code::DeadlineExceeded
                {
                    GrpcFailure::Timeout
                } else if status.code() == tonic::Code::Unavailable {
                    GrpcFailure::Unavailable
                } else {
                    GrpcFailure::Error
                };
                // The status message is the processor's text: logged, not put in the
                // audit record or the workload's error.
                tracing::warn!(request_id = %exchange.request.id, processor = %self.address,
                    code = ?status.code(), "decision processor failed: {}", status.message());
                failure
            }
            Err(_) => {
                tracing::warn!(request_id = %exchange.request.id, processor = %self.address,
                    "decision processor did not answer within {:?}", self.timeout);
                GrpcFailure::Timeout
            }
        };
        self.failed(failure, started)
    }

    /// What the processor is told: the request as the workload sent it, bounded, with the
    /// workload's proxy token (should it quote it) redacted.
    fn decide_request(&self, exchange: &Exchange<'_>) -> proto::DecideRequest {
        let request = exchange.request;
        let token = presented_token(request);
        let headers = request
            .headers
            .iter()
            .filter(|(name, _)| self.headers.iter().any(|h| h == name))
            .map(|(name, value)| {
                let (value, _) = capture_text(value, value.len(), token.as_deref());
                proto::Header {
                    name: name.clone(),
                    value,
                }
            })
            .collect();
        let body_bytes = exchange
            .body
            .filter(|_| self.send_body)
            .map(Body::bytes)
            .unwrap_or_default();
        let (kept, body_truncated) =
            capture_bytes(body_bytes, self.max_body_bytes, token.as_deref());
        let facts = RequestFacts {
            body: exchange.body,
            identity: Some(exchange.identity),
            ..request.facts()
        };
        let identity = exchange.identity;
        let mut tags: Vec<String> = identity
            .tags
            .iter()
            .map(|t| t.as_str().to_owned())
            .collect();
        tags.sort();
        tags.dedup();
        let policy = exchange
            .verdict
            .and_then(|v| v.decided_by.map(|rule| (v, rule)))
            .map(|(verdict, rule)| proto::Policy {
                name: exchange.policies.policy(rule.policy).name.to_string(),
                rule: rule.rule,
                action: verdict.action.as_str().to_owned(),
            });
        let query = request
            .query()
            .map(|q| String::from_utf8_lossy(q).into_owned())
            .unwrap_or_default();
        proto::DecideRequest {
            request_id: request.id.clone(),
            method: request.method_name.clone(),
            scheme: request.scheme.clone(),
            host: request.host.clone(),
            port: u32::from(request.port),
            path: request.path.clone(),
            query,
            headers,
            body: kept,
            body_size: body_bytes.len() as u64,
            body_truncated,
            action_type: facts.action_type().as_str().to_owned(),
            workload: Some(proto::Workload {
                identity_kind: identity.kind.as_str().to_owned(),
                name: identity.name.as_deref().unwrap_or_default().to_owned(),
                spiffe_id: identity.spiffe_id.clone().unwrap_or_default(),
                tags,
            }),
            policy,
        }
    }

    /// The processor's answer, applied; `Err` says how it broke the contract (then nothing
    /// of it is applied).
    fn ruling(
        &self,
        response: proto::DecideResponse,
        exchange: &mut Exchange<'_>,
        started: Instant,
    ) -> Result<Step, String> {
        match response.decision {
            None => Err("neither continue_request nor reject is set".into()),
            Some(Decision::ContinueRequest(answer)) => {
                let mut set = Vec::with_capacity(answer.set_headers.len());
                for header in answer.set_headers {
                    let name = header.name.to_ascii_lowercase();
                    if !is_header_name(&name) {
                        return Err(format!(
                            "set_headers: {:?} is not a header name",
                            header.name
                        ));
                    }
                    if reserved(&name) {
                        return Err(format!("set_headers: {name} may not be set by a processor"));
                    }
                    let value = SecretValue::new(header.value);
                    if value.has_control_chars() {
                        return Err(format!(
                            "set_headers: the value for {name} has control characters"
                        ));
                    }
                    set.push((name, value));
                }
                let mut removed = Vec::with_capacity(answer.remove_headers.len());
                for name in answer.remove_headers {
                    let name = name.to_ascii_lowercase();
                    if !is_header_name(&name) || reserved(&name) {
                        return Err(format!(
                            "remove_headers: {name:?} may not be removed by a processor"
                        ));
                    }
                    removed.push(name);
                }
                let note = GrpcAnnotation {
                    outcome: GrpcOutcome::Continue,
                    reason: None,
                    duration_ms: millis(started.elapsed()),
                    set_headers: set.iter().map(|(n, _)| n.clone()).collect(),
                    removed_headers: removed.clone(),
                    failure: None,
                    fail_mode: None,
                };
                for name in &removed {
                    exchange.mutations.remove(name);
                }
                for (name, value) in set {
                    exchange.mutations.set(&name, value);
                }
                Ok(Step::Continue(Annotations {
                    grpc: Some(Box::new(note)),
                    ..Annotations::default()
                }))
            }
            Some(Decision::Reject(answer)) => {
                let status = match answer.status {
                    0 => 403,
                    code @ 400..=599 => code as u16,
                    other => return Err(format!("reject.status {other} is not 400-599")),
                };
                let reason = answer.reason;
                if !reason.is_empty()
                    && (reason.len() > 64
                        || !reason
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
                {
                    return Err("reject.reason is not [a-z0-9_]{1,64}".into());
                }
                let message = match printable(&answer.message, MAX_MESSAGE_CHARS) {
                    Some(text) => format!("refused by the decision processor: {text}"),
                    None => "refused by the decision processor".to_owned(),
                };
                let note = GrpcAnnotation {
                    outcome: GrpcOutcome::Reject,
                    reason: (!reason.is_empty()).then_some(reason),
                    duration_ms: millis(started.elapsed()),
                    set_headers: Vec::new(),
                    removed_headers: Vec::new(),
                    failure: None,
                    fail_mode: None,
                };
                Ok(Step::Reject(
                    Rejection {
                        status,
                        kind: RefusalKind::PolicyDenied,
                        reason: "grpc_reject",
                        message,
                        policy: None,
                        rule: None,
                        transform: "grpc",
                        retry_after: None,
                        approval: None,
                    },
                    Annotations {
                        reason: Some("grpc_reject"),
                        grpc: Some(Box::new(note)),
                        ..Annotations::default()
                    },
                ))
            }
        }
    }

    /// No valid answer: the fail mode decides.
    fn failed(&self, failure: GrpcFailure, started: Instant) -> Step {
        let note = GrpcAnnotation {
            outcome: GrpcOutcome::Failed,
            reason: None,
            duration_ms: millis(started.elapsed()),
            set_headers: Vec::new(),
            removed_headers: Vec::new(),
            failure: Some(failure),
            fail_mode: Some(self.fail),
        };
        let annotations = Annotations {
            reason: Some(failure.reason()),
            grpc: Some(Box::new(note)),
            ..Annotations::default()
        };
        match self.fail {
            FailMode::Open => Step::Continue(annotations),
            FailMode::Closed => Step::Reject(
                Rejection {
                    status: 503,
                    kind: RefusalKind::ProcessorUnavailable,
                    reason: failure.reason(),
                    message: format!(
                        "the decision processor {}; requests it cannot decide are refused",
                        failure.describe()
                    ),
                    policy: None,
                    rule: None,
                    transform: "grpc",
                    retry_after: None,
                    approval: None,
                },
                annotations,
            ),
        }
    }
}

/// `- {name: grpc, config: …}`.
pub(super) const KIND: Kind = Kind {
    name: "grpc",
    parse: |_, config| {
        let config: GrpcConfig = required_config(
            config,
            "grpc needs a `config` with at least `endpoint` (http://host:port)",
        )?;
        let problems = config.validate();
        Ok(Arc::new(validated(config, problems)?))
    },
};

impl TransformConfig for GrpcConfig {
    fn name(&self) -> &'static str {
        KIND.name
    }

    fn must_precede_secrets(&self) -> Option<&'static str> {
        Some("the processor would be sent the credentials `secrets` injects")
    }

    fn wait_timeout(&self) -> Duration {
        self.timeout.0
    }

    fn compile(&self, ctx: &CompileContext<'_>) -> Result<Box<dyn Transform>, Vec<FieldError>> {
        match GrpcProcessor::compile(self) {
            Ok(processor) => Ok(Box::new(processor)),
            Err(errors) => Err(ctx.under_config(errors)),
        }
    }
}

impl Transform for GrpcProcessor {
    fn name(&self) -> &'static str {
        KIND.name
    }

    fn apply<'a>(&'a self, exchange: &'a mut Exchange<'_>) -> Applied<'a> {
        Applied::Waiting(Box::pin(self.run(exchange)))
    }

    fn needs_body(&self, request: &OutboundRequest, _: &Identity) -> bool {
        self.send_body && self.decides(request) && !request.facts().is_connect()
    }

    fn wait(&self, request: &OutboundRequest) -> Option<Duration> {
        self.decides(request).then_some(self.timeout)
    }
}
