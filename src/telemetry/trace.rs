//! Request-side tracing: the span of one ext_proc stream, its parent taken from the
//! request's `traceparent`, and the trace id that goes into the audit record.
//!
//! Every span here has the target [`SPAN_TARGET`]. Logs never show them; they exist only
//! when an OTLP exporter is installed (see [`super::Telemetry`]). Without one, `tracing`
//! hands out disabled spans, and nothing here builds an OpenTelemetry context or allocates.
//!
//! Attributes hold names, methods, hosts, paths without query, decisions and reasons —
//! never a header value, a query string, a token or a credential.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
pub use opentelemetry::trace::TraceId;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::policy::Decision;
use crate::request::OutboundRequest;

/// The `tracing` target of every exported span.
pub const SPAN_TARGET: &str = "portcullis::span";

/// What a stream's span says about its decision: the audit record's fields of the same
/// names.
#[derive(Debug, Clone, Copy)]
pub struct SpanDecision<'a> {
    pub decision: Decision,
    pub config_version: &'a str,
    pub policy: Option<&'a str>,
    pub rule: Option<u32>,
    pub reason: Option<&'a str>,
    pub transform: Option<&'a str>,
    pub status: Option<u16>,
}

/// The trace of one ext_proc stream (one HTTP request).
#[derive(Debug)]
pub struct StreamTrace {
    span: Span,
    trace_id: Option<TraceId>,
}

impl Default for StreamTrace {
    fn default() -> Self {
        StreamTrace {
            span: Span::none(),
            trace_id: None,
        }
    }
}

impl StreamTrace {
    /// Opens the `ext_proc` span of a request, as a child of the caller's span when the
    /// request carries a valid `traceparent`, else as the root of a new trace.
    pub fn start(request: &OutboundRequest) -> StreamTrace {
        let inbound = single_header(request, "traceparent").and_then(traceparent_trace_id);
        let span = tracing::info_span!(
            target: SPAN_TARGET,
            "ext_proc",
            otel.kind = "server",
            portcullis.request_id = request.id.as_str(),
            http.request.method = request.method_name.as_str(),
            url.scheme = request.scheme.as_str(),
            server.address = request.host.as_str(),
            server.port = request.port,
            url.path = request.path.as_str(),
            portcullis.decision = Empty,
            portcullis.policy = Empty,
            portcullis.rule = Empty,
            portcullis.reason = Empty,
            portcullis.transform = Empty,
            portcullis.config_version = Empty,
            http.response.status_code = Empty,
            otel.status_code = Empty,
        );
        if span.is_disabled() {
            // Not exported: the audit record still names the caller's trace.
            return StreamTrace {
                span,
                trace_id: inbound,
            };
        }
        if inbound.is_some() {
            let parent = TraceContextPropagator::new().extract(&Headers(request));
            let _ = span.set_parent(parent);
        }
        let context = span.context();
        let span_context = context.span().span_context().clone();
        StreamTrace {
            span,
            trace_id: span_context.is_valid().then(|| span_context.trace_id()),
        }
    }

    /// The span, to run the rest of the request in.
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// The trace this request belongs to: the exported one, or without export the
    /// caller's (from a valid `traceparent`).
    pub fn trace_id(&self) -> Option<TraceId> {
        self.trace_id
    }

    /// Records the decision on the span.
    pub fn decided(&self, decided: &SpanDecision<'_>) {
        if self.span.is_disabled() {
            return;
        }
        let span = &self.span;
        span.record("portcullis.decision", decided.decision.as_str());
        span.record("portcullis.config_version", decided.config_version);
        if let Some(policy) = decided.policy {
            span.record("portcullis.policy", policy);
        }
        if let Some(rule) = decided.rule {
            span.record("portcullis.rule", rule);
        }
        if let Some(reason) = decided.reason {
            span.record("portcullis.reason", reason);
        }
        if let Some(transform) = decided.transform {
            span.record("portcullis.transform", transform);
        }
        if let Some(status) = decided.status {
            span.record("http.response.status_code", status);
        }
    }

    /// Marks the stream as failed (a protocol error: Envoy fails the request closed).
    pub fn failed(&self) {
        if !self.span.is_disabled() {
            self.span.record("otel.status_code", "ERROR");
        }
    }
}

/// The span of one transform run, a child of the current (stream) span.
pub fn transform_span(name: &'static str) -> Span {
    tracing::info_span!(
        target: SPAN_TARGET,
        "transform",
        transform.name = name,
        transform.action = Empty,
        transform.reason = Empty,
    )
}

/// The span of one read from a secret backend. `source` describes the source (its type
/// and where it reads), never its value.
pub fn secret_fetch_span(source: &str) -> Span {
    tracing::info_span!(
        target: SPAN_TARGET,
        "secret_fetch",
        secret.source = source,
        otel.status_code = Empty,
    )
}

/// The value of a header sent exactly once. W3C Trace Context treats a repeated
/// `traceparent` as invalid.
fn single_header<'a>(request: &'a OutboundRequest, name: &str) -> Option<&'a [u8]> {
    let mut found = request.headers.iter().filter(|(n, _)| n == name);
    let (_, value) = found.next()?;
    found.next().is_none().then_some(value.as_slice())
}

/// The trace id of a valid W3C `traceparent`:
/// `{version:2}-{trace id:32}-{parent id:16}-{flags:2}`, lower-case hex, neither id all
/// zeros, version `ff` invalid; version `00` has exactly these four fields, later versions
/// may append `-…`.
pub fn traceparent_trace_id(value: &[u8]) -> Option<TraceId> {
    let value = value.trim_ascii();
    let hex = |part: &[u8]| part.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let well_formed = value.len() >= 55
        && hex(&value[0..2])
        && &value[0..2] != b"ff"
        && value[2] == b'-'
        && hex(&value[3..35])
        && value[35] == b'-'
        && hex(&value[36..52])
        && value[52] == b'-'
        && hex(&value[53..55])
        && if &value[0..2] == b"00" {
            value.len() == 55
        } else {
            value.len() == 55 || value[55] == b'-'
        };
    if !well_formed {
        return None;
    }
    let number = |part: &[u8]| {
        // Checked above: ASCII hex digits only.
        let text = std::str::from_utf8(part).ok()?;
        u128::from_str_radix(text, 16).ok()
    };
    let trace_id = number(&value[3..35])?;
    let parent_id = number(&value[36..52])?;
    (trace_id != 0 && parent_id != 0).then(|| TraceId::from(trace_id))
}

/// The request's headers, for the W3C propagator (names are lower case already).
struct Headers<'a>(&'a OutboundRequest);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        std::str::from_utf8(single_header(self.0, key)?).ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.headers.iter().map(|(n, _)| n.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    #[test]
    fn valid_traceparents_give_their_trace_id() {
        let id = TraceId::from_hex(TRACE).unwrap();
        for value in [
            format!("00-{TRACE}-00f067aa0ba902b7-01"),
            format!("00-{TRACE}-00f067aa0ba902b7-00"),
            format!(" 00-{TRACE}-00f067aa0ba902b7-01 "),
            // A later version may carry more fields.
            format!("01-{TRACE}-00f067aa0ba902b7-01-extra"),
            format!("cc-{TRACE}-00f067aa0ba902b7-09"),
        ] {
            assert_eq!(traceparent_trace_id(value.as_bytes()), Some(id), "{value}");
        }
        assert_eq!(
            traceparent_trace_id(b"00-0000000000000000000000000000000a-0000000000000001-01")
                .map(|id| id.to_string()),
            Some("0000000000000000000000000000000a".to_owned()),
            "printed with leading zeros"
        );
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for value in [
            String::new(),
            "garbage".to_owned(),
            format!("00-{TRACE}-00f067aa0ba902b7-01-extra"),
            format!("00-{TRACE}-00f067aa0ba902b7-1"),
            format!("ff-{TRACE}-00f067aa0ba902b7-01"),
            format!("00-{}-00f067aa0ba902b7-01", TRACE.to_uppercase()),
            format!("00-{TRACE}-00F067AA0BA902B7-01"),
            format!("00-{TRACE}-0000000000000000-01"),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_owned(),
            format!("00-+{}-00f067aa0ba902b7-01", &TRACE[1..]),
            format!("00_{TRACE}-00f067aa0ba902b7-01"),
            format!("01-{TRACE}-00f067aa0ba902b7-01x"),
            format!("0g-{TRACE}-00f067aa0ba902b7-01"),
        ] {
            assert_eq!(traceparent_trace_id(value.as_bytes()), None, "{value:?}");
        }
        assert_eq!(traceparent_trace_id(&[0xff; 55]), None);
    }

    fn request(headers: &[(&str, &str)]) -> OutboundRequest {
        let mut request = crate::check::build_request(&crate::check::CheckRequest {
            request_line: "GET http://api.example.com/x?token=abc".into(),
            ..Default::default()
        })
        .unwrap();
        request.headers.extend(
            headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec())),
        );
        request
    }

    #[test]
    fn without_an_exporter_the_audit_keeps_the_callers_trace_id() {
        let traceparent = format!("00-{TRACE}-00f067aa0ba902b7-01");
        let trace = StreamTrace::start(&request(&[("traceparent", &traceparent)]));
        assert!(trace.span().is_disabled());
        assert_eq!(trace.trace_id(), Some(TraceId::from_hex(TRACE).unwrap()));

        let trace = StreamTrace::start(&request(&[]));
        assert_eq!(trace.trace_id(), None);

        let repeated = request(&[("traceparent", &traceparent), ("traceparent", &traceparent)]);
        assert_eq!(StreamTrace::start(&repeated).trace_id(), None);
    }
}
