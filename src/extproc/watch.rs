//! What reads an allowed request's response as Envoy passes it through: a budget's meter
//! (the usage an LLM call reports, charged when the response ends — or when the stream
//! ends without it, so hanging up early does not make a call free) and a `response_dlp`
//! inspection. The Envoy side — which messages, which answers — stays in `stream.rs`.

use std::sync::Arc;

use crate::audit::{AuditSink, InspectionRecord, UsageRecord};
use crate::inspect::usage::UsageReader;
use crate::telemetry::metrics::Metrics;
use crate::transforms::budget::Meter;
use crate::transforms::response_dlp::{Inspection, ResponseAction, ResponseInspector};

/// An LLM call's response, read for what its budget charges.
pub(super) struct UsageWatch {
    meter: Meter,
    reader: Option<UsageReader>,
    /// Why the usage cannot be read, once known.
    unreadable: Option<&'static str>,
    request_id: String,
    identity: Option<Arc<str>>,
    audit: AuditSink,
    metrics: Arc<Metrics>,
    done: bool,
}

impl UsageWatch {
    pub(super) fn new(
        meter: Meter,
        request_id: &str,
        identity: Option<Arc<str>>,
        audit: AuditSink,
        metrics: Arc<Metrics>,
    ) -> UsageWatch {
        UsageWatch {
            meter,
            reader: None,
            unreadable: None,
            request_id: request_id.to_owned(),
            identity,
            audit,
            metrics,
            done: false,
        }
    }

    /// The response headers: how to read the body (or why it cannot be read).
    pub(super) fn headers(&mut self, content_type: &str, encoded: bool) {
        if encoded {
            self.unreadable = Some("encoded");
        } else {
            self.reader = Some(UsageReader::new(content_type));
        }
    }

    pub(super) fn piece(&mut self, piece: &[u8]) {
        if let Some(reader) = &mut self.reader {
            reader.feed(piece);
        }
    }

    /// The response is over: charge what it used, write the audit line.
    pub(super) fn end(&mut self, complete: bool) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let usage = self.reader.take().and_then(UsageReader::finish);
        let (charge, reason) = match usage {
            Some(usage) => (Some(self.meter.charge(usage)), None),
            None if !complete => (None, Some("incomplete")),
            None => (None, Some(self.unreadable.unwrap_or("no_usage"))),
        };
        if let Some(charge) = &charge {
            self.metrics.record_llm_usage(
                &charge.budget,
                charge.usage.input_tokens,
                charge.usage.output_tokens,
                charge.cost,
            );
        } else {
            tracing::warn!(request_id = %self.request_id, budget = &*self.meter.budget,
                reason = reason.unwrap_or(""), "an LLM call's usage could not be read; nothing charged");
        }
        let line = serde_json::to_vec(&UsageRecord {
            ts: crate::audit::now_rfc3339(),
            request_id: &self.request_id,
            event: if charge.is_some() {
                "llm_usage"
            } else {
                "llm_usage_unread"
            },
            identity: self.identity.as_deref(),
            charge: charge.as_ref(),
            reason,
        });
        let audit = self.audit.clone();
        if let Ok(line) = line {
            // Dropped streams end here too, outside any task that could wait.
            tokio::spawn(async move { audit.write_raw(line).await });
        }
    }
}

impl Drop for UsageWatch {
    fn drop(&mut self) {
        // The stream ended before the response did (the workload hung up, Envoy reset):
        // what was read is still charged.
        self.end(false);
    }
}

/// A response inspected by `response_dlp`.
pub(super) struct InspectWatch {
    pub(super) inspection: Inspection,
    pub(super) inspector: Option<ResponseInspector>,
    /// Envoy holds the response until its whole body is answered.
    pub(super) buffered: bool,
    pub(super) request_id: String,
    pub(super) error_shape: super::convert::ErrorShape,
    audit: AuditSink,
    metrics: Arc<Metrics>,
}

impl InspectWatch {
    pub(super) fn new(
        inspection: Inspection,
        request_id: &str,
        error_shape: super::convert::ErrorShape,
        audit: AuditSink,
        metrics: Arc<Metrics>,
    ) -> InspectWatch {
        InspectWatch {
            inspection,
            inspector: None,
            buffered: false,
            request_id: request_id.to_owned(),
            error_shape,
            audit,
            metrics,
        }
    }

    /// The audit line and metrics of an inspection that ended with `outcome` (a finding's
    /// outcome is the action's unless given).
    pub(super) async fn record(&self, outcome: Option<&'static str>) {
        let findings = self
            .inspector
            .as_ref()
            .map(ResponseInspector::findings)
            .unwrap_or_default();
        let action = self.inspection.action;
        for finding in &findings {
            self.metrics.record_response_finding(
                finding["detector"].as_str().unwrap_or(""),
                action.as_str(),
                finding["count"].as_u64().unwrap_or(0),
            );
        }
        let outcome = match outcome {
            Some(outcome) => outcome,
            None if findings.is_empty() => return,
            None => match action {
                ResponseAction::Redact => "redacted",
                ResponseAction::Flag => "flagged",
                ResponseAction::Deny => "denied",
            },
        };
        self.audit
            .write_event(&InspectionRecord {
                ts: crate::audit::now_rfc3339(),
                request_id: &self.request_id,
                event: "response_inspected",
                transform: &self.inspection.place,
                outcome,
                findings,
            })
            .await;
    }
}
