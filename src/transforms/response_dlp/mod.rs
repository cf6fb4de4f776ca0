//! The `response_dlp` transform: DLP detectors over what comes back. The request passes;
//! its response is inspected before the workload reads it, and what a detector finds is
//! `redact`ed (replaced by `[REDACTED:<detector>]`), `flag`ged (recorded, passed), or
//! makes the gateway `deny` the response (the workload gets an error, never a cut body).
//!
//! Two shapes, both with bounded memory:
//! - A server-sent-events stream (`text/event-stream`, how LLMs stream) stays a stream: it
//!   is inspected event by event, each passed on as soon as it is complete; only an
//!   incomplete event is held (at most [`MAX_EVENT`], past which what is held is inspected
//!   and passed as it is). A denial replaces the rest of the stream with one `error` event.
//! - Any other body is inspected whole: Envoy buffers it (within its buffer limit, 2 MiB in
//!   the shipped configs; a larger one is refused by Envoy) and the answer holds the
//!   response until it is inspected, so a denial is a 502 with the contract's JSON body. A
//!   JSON body is inspected string by string, decoded — `\u0041KIA…` is found as `AKIA…` —
//!   and written back when something was redacted; any other body byte by byte.
//!
//! What is inspected is what the upstream sent, uncompressed: the request is asked for
//! `accept-encoding: identity`, and a response compressed anyway is withheld (`redact`,
//! `deny`) or passed with its audit line saying it was not inspected (`flag`).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::kind::{
    Applied, CompileContext, Kind, Transform, TransformConfig, optional_config, validated,
};
use super::{Annotations, Exchange, Step};
use crate::dlp::{DetectorId, Findings, Scanner};
use crate::request::OutboundRequest;
use crate::vocab::FieldError;

pub(super) const KIND: Kind = Kind {
    name: "response_dlp",
    parse: |_, config| {
        let config: ResponseDlpConfig = optional_config(config)?;
        let problems = config.problems();
        Ok(Arc::new(validated(config, problems)?))
    },
};

/// The largest incomplete event of a stream held back while the rest arrives.
pub const MAX_EVENT: usize = 256 << 10;

/// `config` of a `response_dlp` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResponseDlpConfig {
    /// Builtin detectors to look for; default every one but `email`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub detectors: Vec<String>,
    /// `redact` (default), `flag` or `deny`.
    pub action: ResponseAction,
}

impl Default for ResponseDlpConfig {
    fn default() -> Self {
        ResponseDlpConfig {
            detectors: Vec::new(),
            action: ResponseAction::Redact,
        }
    }
}

/// What a finding in a response does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResponseAction {
    Redact,
    Flag,
    Deny,
}

impl ResponseAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseAction::Redact => "redact",
            ResponseAction::Flag => "flag",
            ResponseAction::Deny => "deny",
        }
    }
}

impl ResponseDlpConfig {
    fn problems(&self) -> Vec<FieldError> {
        let scanner = Scanner::builtin();
        self.detectors
            .iter()
            .enumerate()
            .filter(|(_, name)| scanner.detector_id(name).is_none())
            .map(|(i, name)| {
                FieldError::new(
                    format!("detectors[{i}]"),
                    format!(
                        "unknown detector {name:?}: one of {}",
                        scanner.names().collect::<Vec<_>>().join(", ")
                    ),
                )
            })
            .collect()
    }
}

impl TransformConfig for ResponseDlpConfig {
    fn name(&self) -> &'static str {
        KIND.name
    }

    fn compile(&self, ctx: &CompileContext<'_>) -> Result<Box<dyn Transform>, Vec<FieldError>> {
        Ok(Box::new(ResponseDlp {
            inspection: Inspection::new(ctx.at, &self.detectors, self.action),
        }))
    }
}

/// A compiled `response_dlp` entry.
struct ResponseDlp {
    inspection: Inspection,
}

/// What inspects one response: the detectors and what a finding does.
#[derive(Clone)]
pub struct Inspection {
    /// `transforms[N]`.
    pub place: Arc<str>,
    scanner: Arc<Scanner>,
    only: Arc<[DetectorId]>,
    pub action: ResponseAction,
}

impl Inspection {
    /// The builtin `detectors` (every one but `email` when empty; unknown names are left
    /// out, having been refused by validation) and what a finding does.
    pub fn new(place: &str, detectors: &[String], action: ResponseAction) -> Inspection {
        let scanner = Scanner::builtin();
        let only: Vec<DetectorId> = if detectors.is_empty() {
            scanner
                .names()
                .filter(|name| *name != "email")
                .filter_map(|name| scanner.detector_id(name))
                .collect()
        } else {
            detectors
                .iter()
                .filter_map(|name| scanner.detector_id(name))
                .collect()
        };
        Inspection {
            place: Arc::from(place),
            scanner: Arc::new(scanner),
            only: Arc::from(only),
            action,
        }
    }
}

impl std::fmt::Debug for Inspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inspection")
            .field("place", &self.place)
            .field("action", &self.action)
            .finish()
    }
}

impl Transform for ResponseDlp {
    fn name(&self) -> &'static str {
        KIND.name
    }

    fn watches_response(&self, _: &OutboundRequest) -> bool {
        true
    }

    fn apply<'a>(&'a self, exchange: &'a mut Exchange<'_>) -> Applied<'a> {
        if !exchange.preview {
            exchange.inspection = Some(self.inspection.clone());
        }
        // What is compressed cannot be inspected.
        exchange.mutations.set(
            "accept-encoding",
            crate::secrets::SecretValue::new("identity"),
        );
        Applied::Done(Step::Continue(Annotations::default()))
    }
}

/// What inspecting a piece of a response came to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Inspected {
    /// What to pass on in place of the piece.
    pub body: Vec<u8>,
    /// The piece was changed (redacted, held back, or replaced by a denial).
    pub changed: bool,
    /// A finding under `deny`: for a whole body, refuse the response.
    pub denied: bool,
}

/// One response being inspected.
pub struct ResponseInspector {
    inspection: Inspection,
    streaming: bool,
    /// A stream's incomplete last event.
    held: Vec<u8>,
    /// A stream was denied: everything after is dropped.
    denied: bool,
    /// Every finding so far, per detector.
    found: Vec<(Arc<str>, usize)>,
}

impl ResponseInspector {
    /// Whether a response of this content type is inspected as a stream of events.
    pub fn is_stream(content_type: &str) -> bool {
        content_type
            .split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
    }

    pub fn new(inspection: Inspection, content_type: &str) -> ResponseInspector {
        ResponseInspector {
            inspection,
            streaming: ResponseInspector::is_stream(content_type),
            held: Vec::new(),
            denied: false,
            found: Vec::new(),
        }
    }

    pub fn inspection(&self) -> &Inspection {
        &self.inspection
    }

    pub fn is_streaming(&self) -> bool {
        self.streaming
    }

    /// What was found so far: `[{detector, count}]`.
    pub fn findings(&self) -> Vec<serde_json::Value> {
        self.found
            .iter()
            .map(|(detector, count)| serde_json::json!({"detector": &**detector, "count": count}))
            .collect()
    }

    fn note(&mut self, findings: &Findings) {
        for (detector, count) in findings.iter() {
            match self.found.iter_mut().find(|(d, _)| &**d == detector) {
                Some(entry) => entry.1 += count,
                None => self.found.push((Arc::from(detector), count)),
            }
        }
    }

    /// A whole (buffered) body.
    pub fn whole(&mut self, body: &[u8]) -> Inspected {
        let (redacted, findings) = match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(mut document) => match self.redact_strings(&mut document) {
                Some(findings) => (serde_json::to_vec(&document).ok(), findings),
                None => (None, Findings::default()),
            },
            Err(_) => match self.inspection.scanner.redact(body, &self.inspection.only) {
                Some((bytes, findings)) => (Some(bytes), findings),
                None => (None, Findings::default()),
            },
        };
        self.note(&findings);
        match (self.inspection.action, redacted) {
            (_, None) | (ResponseAction::Flag, _) => Inspected {
                body: body.to_vec(),
                changed: false,
                denied: false,
            },
            (ResponseAction::Deny, Some(_)) => Inspected {
                body: Vec::new(),
                changed: true,
                denied: true,
            },
            (ResponseAction::Redact, Some(bytes)) => Inspected {
                body: bytes,
                changed: true,
                denied: false,
            },
        }
    }

    /// Every string of a JSON document, decoded, redacted in place; what was found, when
    /// anything was.
    fn redact_strings(&self, value: &mut serde_json::Value) -> Option<Findings> {
        let mut all: Option<Findings> = None;
        let mut visit = |text: &mut String| {
            if let Some((bytes, findings)) = self
                .inspection
                .scanner
                .redact(text.as_bytes(), &self.inspection.only)
            {
                *text = String::from_utf8_lossy(&bytes).into_owned();
                match &mut all {
                    Some(found) => found.merge(&findings),
                    None => all = Some(findings),
                }
            }
        };
        walk_strings(value, &mut visit);
        all
    }

    /// The next piece of an event stream: each complete event inspected and passed on,
    /// the incomplete rest held.
    pub fn piece(&mut self, piece: &[u8], end_of_stream: bool) -> Inspected {
        if self.denied {
            return Inspected {
                body: Vec::new(),
                changed: !piece.is_empty(),
                denied: true,
            };
        }
        let mut out = Vec::with_capacity(piece.len() + self.held.len());
        let mut changed = !self.held.is_empty();
        self.held.extend_from_slice(piece);
        let mut rest = std::mem::take(&mut self.held);
        let mut events: Vec<Vec<u8>> = Vec::new();
        while let Some(end) = event_end(&rest) {
            events.push(rest.drain(..end).collect());
        }
        if end_of_stream || rest.len() > MAX_EVENT {
            // The stream ends (or an event outgrows what is held): what is left is
            // inspected as it is.
            events.push(std::mem::take(&mut rest));
        } else if !rest.is_empty() {
            changed = true;
        }
        for event in events {
            match self.event(&event) {
                EventOutcome::Pass => out.extend_from_slice(&event),
                EventOutcome::Redacted(bytes) => {
                    changed = true;
                    out.extend_from_slice(&bytes);
                }
                EventOutcome::Denied => {
                    self.denied = true;
                    out.extend_from_slice(&denial_event(&self.inspection.place));
                    return Inspected {
                        body: out,
                        changed: true,
                        denied: true,
                    };
                }
            }
        }
        self.held = rest;
        Inspected {
            body: out,
            changed,
            denied: false,
        }
    }

    /// Whether an incomplete event is held (trailers now would cut it off).
    pub fn holds_back(&self) -> bool {
        !self.held.is_empty()
    }

    fn event(&mut self, event: &[u8]) -> EventOutcome {
        if event.is_empty() {
            return EventOutcome::Pass;
        }
        // Each `data:` line's JSON is inspected decoded, as a client will read it.
        let mut findings = Findings::default();
        let mut rewritten = Vec::with_capacity(event.len());
        let mut any = false;
        for line in event.split_inclusive(|&b| b == b'\n') {
            let (content, ending) = split_ending(line);
            let payload = content
                .strip_prefix(b"data:")
                .map(|data| data.strip_prefix(b" ").unwrap_or(data));
            let document = payload
                .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                .filter(|d| d.is_object() || d.is_array());
            let redacted = match document {
                Some(mut document) => self.redact_strings(&mut document).map(|found| {
                    findings.merge(&found);
                    let mut line = b"data: ".to_vec();
                    line.extend(serde_json::to_vec(&document).unwrap_or_default());
                    line
                }),
                None => self
                    .inspection
                    .scanner
                    .redact(content, &self.inspection.only)
                    .map(|(bytes, found)| {
                        findings.merge(&found);
                        bytes
                    }),
            };
            match redacted {
                Some(bytes) => {
                    any = true;
                    rewritten.extend_from_slice(&bytes);
                }
                None => rewritten.extend_from_slice(content),
            }
            rewritten.extend_from_slice(ending);
        }
        self.note(&findings);
        match (any, self.inspection.action) {
            (false, _) | (true, ResponseAction::Flag) => EventOutcome::Pass,
            (true, ResponseAction::Redact) => EventOutcome::Redacted(rewritten),
            (true, ResponseAction::Deny) => EventOutcome::Denied,
        }
    }
}

enum EventOutcome {
    Pass,
    Redacted(Vec<u8>),
    Denied,
}

/// A line without its line ending, and the ending.
fn split_ending(line: &[u8]) -> (&[u8], &[u8]) {
    let content = line.strip_suffix(b"\n").unwrap_or(line);
    let content = content.strip_suffix(b"\r").unwrap_or(content);
    (content, &line[content.len()..])
}

/// Where the first complete event ends (after its blank line), if one is complete.
fn event_end(bytes: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' {
            let line = &bytes[line_start..i];
            if line.is_empty() || line == b"\r" {
                return Some(i + 1);
            }
            line_start = i + 1;
        }
    }
    None
}

/// The event that ends a stream a finding denied: an SSE `error` event with the
/// contract's error object, which SDKs surface as an error.
fn denial_event(place: &str) -> Vec<u8> {
    let error = serde_json::json!({"error": {
        "type": "response_refused",
        "reason": "response_dlp",
        "message": "the rest of this response was withheld by the Portcullis egress gateway: \
                    a DLP detector found a credential or personal data in it",
        "transform": place,
    }});
    format!("event: error\ndata: {error}\n\n").into_bytes()
}

fn walk_strings(value: &mut serde_json::Value, visit: &mut impl FnMut(&mut String)) {
    match value {
        serde_json::Value::String(text) => visit(text),
        serde_json::Value::Array(items) => {
            for item in items {
                walk_strings(item, visit);
            }
        }
        serde_json::Value::Object(map) => {
            for (_, item) in map.iter_mut() {
                walk_strings(item, visit);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
