//! The audit trail: one JSON object per line and per request, written by a dedicated thread
//! so request handling never waits on the disk — unless the disk falls behind by thousands
//! of records, in which case requests wait rather than audit records being lost.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::{AuditConfig, AuditSinkKind, AuditWhenFull};
use crate::identity::Identity;
use crate::policy::Decision;
use crate::request::OutboundRequest;
use crate::snapshot::{Decided, Snapshot};
use crate::store::Store;
use crate::store::audit::AuditEvent;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::trace::{SpanDecision, TraceId};
use crate::transforms::{DryRun, TransformTrace};

/// One audited request. Holds names, tags and reasons only — never header values.
#[derive(Debug, Serialize)]
pub struct AuditRecord<'a> {
    /// RFC 3339, microseconds, UTC.
    pub ts: String,
    pub request_id: &'a str,
    /// The W3C trace of the request: the exported one when traces are exported, else the
    /// caller's, from a valid `traceparent` header.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "hex_trace_id"
    )]
    pub trace_id: Option<TraceId>,
    pub config_version: &'a str,
    pub decision: Decision,
    /// The status the workload got, for refused requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// The deciding policy (or the refusing one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<&'a str>,
    /// The store version of that policy (absent for policies from a config file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<u32>,
    /// The transform that refused the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transform: Option<&'static str>,
    pub identity: IdentityRecord<'a>,
    pub tags: Vec<&'a str>,
    pub method: &'a str,
    pub scheme: &'a str,
    pub host: &'a str,
    pub port: u16,
    /// Normalized, without the query string (queries often carry credentials).
    pub path: &'a str,
    /// The address the network guard vetted and Envoy connects to, or the internal one it
    /// refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_address: Option<std::net::SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<&'a DryRun>,
    /// The approval this request is tied to: the one a refused request waits for, or the
    /// one whose grant allowed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<&'a str>,
    pub transforms: &'a [TransformTrace],
    /// Time from receiving the request headers to the decision, in microseconds.
    pub decision_us: f64,
    /// `envoy` for a request Envoy decided by itself on the fast path (its routes,
    /// docs/fast-path.md); absent for those Portcullis decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct IdentityRecord<'a> {
    /// `uri_san`, `token`, `source_cidr`, `gateway` (no principal), or `refused` (the
    /// presented proxy credentials were not accepted).
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl<'a> AuditRecord<'a> {
    /// What the stream's trace span records of this decision.
    pub fn span_decision(&self) -> SpanDecision<'_> {
        SpanDecision {
            decision: self.decision,
            config_version: self.config_version,
            policy: self.policy,
            rule: self.rule,
            reason: self.reason,
            transform: self.transform,
            status: self.status,
        }
    }

    /// Builds the record of a decided request.
    pub fn of(
        request: &'a OutboundRequest,
        decided: &'a Decided,
        snapshot: &'a Snapshot,
        decision_us: f64,
    ) -> AuditRecord<'a> {
        let outcome = &decided.outcome;
        let rejection = outcome.rejection.as_ref();
        let allowlist = outcome
            .trace
            .iter()
            .find(|t| t.name == "allowlist")
            .map(|t| &t.annotations);
        let (policy, rule) = match rejection {
            Some(r) => (r.policy.as_deref(), r.rule),
            None => (
                allowlist.and_then(|a| a.policy.as_deref()),
                allowlist.and_then(|a| a.rule),
            ),
        };
        let reason = rejection
            .map(|r| r.reason)
            .or_else(|| allowlist.and_then(|a| a.reason));
        let (identity, tags) = match &decided.identity {
            Ok(identity) => (identity_record(identity, request), identity_tags(identity)),
            Err(_) => (
                IdentityRecord {
                    kind: "refused",
                    name: None,
                    spiffe_id: None,
                    source: request.source.map(|s| s.to_string()),
                },
                Vec::new(),
            ),
        };
        // The version of the policy named in the record: the engine's deciding policy.
        let deciding = outcome
            .verdict
            .and_then(|v| v.decided_by)
            .map(|rule| snapshot.policies.policy(rule.policy))
            .filter(|p| Some(&*p.name) == policy);
        let policy_version = deciding.and_then(|p| p.version);
        let approval = match rejection {
            Some(r) => r.approval.as_ref().map(|a| a.id.as_str()),
            None => deciding
                .and_then(|p| p.grant.as_ref())
                .map(|g| &*g.approval),
        };
        AuditRecord {
            ts: now_rfc3339(),
            request_id: &request.id,
            trace_id: None,
            config_version: &snapshot.version,
            decision: outcome.decision,
            status: rejection.map(|r| r.status),
            reason,
            policy,
            policy_version,
            rule,
            transform: rejection.map(|r| r.transform),
            identity,
            tags,
            method: &request.method_name,
            scheme: &request.scheme,
            host: &request.host,
            port: request.port,
            path: &request.path,
            upstream_address: outcome
                .trace
                .iter()
                .find(|t| t.name == "network_guard")
                .and_then(|t| t.annotations.upstream_address),
            dry_run: allowlist.and_then(|a| a.dry_run.as_ref()),
            approval,
            transforms: &outcome.trace,
            decision_us,
            decided_by: None,
        }
    }
}

/// 32 lower-case hex digits, as in `traceparent`.
fn hex_trace_id<S: serde::Serializer>(
    trace_id: &Option<TraceId>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match trace_id {
        Some(id) => serializer.collect_str(id),
        None => serializer.serialize_none(),
    }
}

fn identity_record<'a>(identity: &'a Identity, request: &OutboundRequest) -> IdentityRecord<'a> {
    IdentityRecord {
        kind: identity.kind.as_str(),
        name: identity.name.as_deref(),
        spiffe_id: identity.spiffe_id.as_deref(),
        source: request.source.map(|s| s.to_string()),
    }
}

fn identity_tags(identity: &Identity) -> Vec<&str> {
    identity.tags.iter().map(|t| t.as_str()).collect()
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

/// What happened to the response of an audited request, when something did: a credential
/// echoed back was scrubbed, or the response was withheld because it could not be. A
/// second line for the same `request_id`; counts and names only, never a value.
#[derive(Debug, Serialize)]
pub struct ResponseRecord<'a> {
    pub ts: String,
    pub request_id: &'a str,
    /// `response_scrubbed` or `response_withheld`.
    pub event: &'static str,
    /// The secret whose credential the request carried.
    pub secret: &'a str,
    /// How many times a form of the credential was replaced by the marker.
    pub replacements: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

/// What an LLM call used, read from its response, and what its budget stands at after
/// it (`event: llm_usage`), or that its usage could not be read (`llm_usage_unread`).
#[derive(Debug, Serialize)]
pub struct UsageRecord<'a> {
    pub ts: String,
    pub request_id: &'a str,
    pub event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<&'a str>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub charge: Option<&'a crate::transforms::budget::Charge>,
    /// Why nothing was read (`encoded`, `no_usage`, `incomplete`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

/// What `response_dlp` found in a response and did (`event: response_inspected`).
#[derive(Debug, Serialize)]
pub struct InspectionRecord<'a> {
    pub ts: String,
    pub request_id: &'a str,
    pub event: &'static str,
    pub transform: &'a str,
    /// `redacted`, `flagged`, `denied`, `withheld` (not inspectable), `not_inspected`.
    pub outcome: &'static str,
    /// `[{detector, count}]`: names and counts, never what matched.
    pub findings: Vec<serde_json::Value>,
}

/// Rounds to 0.1 µs: finer digits are noise.
pub fn micros(elapsed: std::time::Duration) -> f64 {
    (elapsed.as_nanos() as f64 / 100.0).round() / 10.0
}

/// A handle for writing audit lines; cheap to clone.
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<Vec<u8>>,
    /// A copy of every record for the store, when it keeps audit events.
    store: Option<StoreCopy>,
    when_full: AuditWhenFull,
    block_timeout: std::time::Duration,
    /// Where a full queue is counted.
    metrics: Option<Arc<Metrics>>,
    /// Records that met a full queue, for logging the 1st, 2nd, 4th, 8th… only: a stuck
    /// sink must not flood the log as well.
    full: Arc<std::sync::atomic::AtomicU64>,
}

/// The audit trail could not take a request's record in time (`audit.when_full: block`):
/// the request is refused rather than forwarded unaudited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuditUnavailable {
    #[error("the audit trail is not keeping up: its queue stayed full for {0:?}")]
    Full(std::time::Duration),
    #[error("the audit writer has stopped")]
    Stopped,
}

impl AuditUnavailable {
    /// The workload's answer: 503, so a client retries later; never a 500.
    pub fn rejection(&self) -> crate::transforms::Rejection {
        crate::transforms::Rejection {
            status: 503,
            kind: crate::transforms::RefusalKind::AuditUnavailable,
            reason: "audit_unavailable",
            message: format!(
                "{self}; the request was not forwarded, since it could not be audited \
                 (audit.when_full: block)"
            ),
            policy: None,
            rule: None,
            transform: "audit",
            retry_after: None,
            approval: None,
        }
    }
}

#[derive(Clone)]
struct StoreCopy {
    tx: mpsc::Sender<AuditEvent>,
    metrics: Arc<Metrics>,
}

/// How many records may wait for the store before new ones are dropped from its copy
/// (never from the sink): a store outage must not hold up requests.
pub const STORE_QUEUE: usize = 64 * 1024;

/// Joins the writer thread (flushing every record) when dropped after all sinks.
pub struct AuditWriter {
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AuditWriter {
    /// Waits until every record sent so far is written and flushed. Call after dropping
    /// every [`AuditSink`].
    pub fn finish(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl AuditSink {
    /// Opens the sink and starts its writer thread.
    pub fn start(config: &AuditConfig) -> std::io::Result<(AuditSink, AuditWriter)> {
        let out: Box<dyn Write + Send> = match (config.sink, &config.path) {
            (AuditSinkKind::File, Some(path)) => Box::new(open_append(path)?),
            (AuditSinkKind::File, None) => {
                return Err(std::io::Error::other("audit sink `file` needs a `path`"));
            }
            (AuditSinkKind::Stdout, _) => Box::new(std::io::stdout()),
        };
        let (tx, rx) = mpsc::channel::<Vec<u8>>(config.queue.max(1));
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_lines(rx, out))?;
        Ok((
            AuditSink {
                tx,
                store: None,
                when_full: config.when_full,
                block_timeout: config.block_timeout.0,
                metrics: None,
                full: Arc::default(),
            },
            AuditWriter {
                thread: Some(thread),
            },
        ))
    }

    /// Also sends every record to `tx`, for the store; a full queue drops the store's copy
    /// and counts it.
    pub fn with_store(mut self, tx: mpsc::Sender<AuditEvent>, metrics: Arc<Metrics>) -> AuditSink {
        self.store = Some(StoreCopy { tx, metrics });
        self
    }

    /// Counts full-queue events in `metrics`.
    pub fn counted(mut self, metrics: Arc<Metrics>) -> AuditSink {
        self.metrics = Some(metrics);
        self
    }

    /// Queues one record. When the queue is full, `audit.when_full` decides: `block` waits
    /// up to `block_timeout`, then gives up — the caller must not forward the request —
    /// and `drop` loses the record.
    pub async fn write(&self, record: &AuditRecord<'_>) -> Result<(), AuditUnavailable> {
        let mut line = match serde_json::to_vec(record) {
            Ok(line) => line,
            Err(e) => {
                tracing::error!(error = %e, "cannot serialize audit record");
                return Ok(());
            }
        };
        if let Some(store) = &self.store {
            let event = stored_event(record, &line);
            if store.tx.try_send(event).is_err() {
                store.metrics.record_audit_store_dropped();
            }
        }
        line.push(b'\n');
        let count = |outcome: &'static str| {
            if let Some(metrics) = &self.metrics {
                metrics.control.record_audit_queue_full(outcome);
            }
        };
        let seen = || {
            let n = self.full.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            n.is_power_of_two().then_some(n)
        };
        let line = match self.tx.try_send(line) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("audit writer has stopped; record lost");
                return Err(AuditUnavailable::Stopped);
            }
            Err(mpsc::error::TrySendError::Full(line)) => line,
        };
        match self.when_full {
            AuditWhenFull::Drop => {
                count("dropped");
                if let Some(n) = seen() {
                    tracing::warn!(
                        request_id = record.request_id,
                        full_so_far = n,
                        "audit queue full: record dropped (audit.when_full: drop)"
                    );
                }
                Ok(())
            }
            AuditWhenFull::Block => {
                count("block");
                match tokio::time::timeout(self.block_timeout, self.tx.send(line)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err(AuditUnavailable::Stopped),
                    Err(_) => {
                        count("refused");
                        if let Some(n) = seen() {
                            tracing::warn!(request_id = record.request_id,
                                wait = ?self.block_timeout, full_so_far = n,
                                "audit queue full: request refused (audit.when_full: block)");
                        }
                        Err(AuditUnavailable::Full(self.block_timeout))
                    }
                }
            }
        }
    }
}

impl AuditSink {
    /// Queues a response record, for the sink only: the store keeps one row per decision.
    pub async fn write_response(&self, record: &ResponseRecord<'_>) {
        self.write_line(record).await;
    }

    /// Queues a line about a response (its usage, its inspection), for the sink only.
    pub async fn write_event(&self, record: &impl Serialize) {
        self.write_line(record).await;
    }

    /// Queues a line already serialized (without its newline).
    pub async fn write_raw(&self, mut line: Vec<u8>) {
        line.push(b'\n');
        if self.tx.send(line).await.is_err() {
            tracing::error!("audit writer has stopped; record lost");
        }
    }

    /// Queues how an allowed request ended upstream, for the sink only (as responses).
    pub async fn write_upstream(&self, record: &UpstreamRecord) {
        self.write_line(record).await;
    }

    async fn write_line(&self, record: &impl Serialize) {
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        if self.tx.send(line).await.is_err() {
            tracing::error!("audit writer has stopped; record lost");
        }
    }
}

/// The store's row for a record, with `line` (its JSON) kept whole.
fn stored_event(record: &AuditRecord<'_>, line: &[u8]) -> AuditEvent {
    AuditEvent {
        ts: record.ts.clone(),
        request_id: record.request_id.to_owned(),
        decision: record.decision.as_str().to_owned(),
        policy: record.policy.map(str::to_owned),
        policy_version: record.policy_version,
        status: record.status.map(i64::from),
        reason: record.reason.map(str::to_owned),
        method: record.method.to_owned(),
        scheme: record.scheme.to_owned(),
        host: record.host.to_owned(),
        port: record.port,
        path: record.path.to_owned(),
        identity: record.identity.name.map(str::to_owned),
        tags: record.tags.iter().map(|t| (*t).to_owned()).collect(),
        record: String::from_utf8_lossy(line).into_owned(),
    }
}

/// Writes the store's copy of the audit trail in batches until every sink is dropped. A
/// failed write is retried with backoff; records keep queueing meanwhile.
pub async fn write_to_store(
    store: Store,
    mut rx: mpsc::Receiver<AuditEvent>,
    metrics: Arc<Metrics>,
) {
    const BATCH: usize = 1000;
    let mut batch: Vec<AuditEvent> = Vec::with_capacity(BATCH);
    let mut failing = false;
    let mut backoff = std::time::Duration::from_millis(200);
    loop {
        if batch.is_empty() {
            match rx.recv().await {
                Some(event) => batch.push(event),
                None => return,
            }
            // Let a burst gather into one transaction.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        match store.insert_audit(&batch).await {
            Ok(()) => {
                metrics.record_audit_stored(batch.len());
                batch.clear();
                if failing {
                    tracing::info!("audit records reach the store again");
                }
                failing = false;
                backoff = std::time::Duration::from_millis(200);
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, queued = batch.len(),
                        "cannot write audit records to the store; retrying (the audit sink has them)");
                }
                failing = true;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

/// How long the writer lets records gather after a flush. Bounds how stale the sink can be
/// and spares a thread wake-up and a write per request under load.
const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(2);

fn write_lines(mut rx: mpsc::Receiver<Vec<u8>>, out: Box<dyn Write + Send>) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    while let Some(line) = rx.blocking_recv() {
        let mut ok = out.write_all(&line).is_ok();
        while let Ok(line) = rx.try_recv() {
            ok &= out.write_all(&line).is_ok();
        }
        ok &= out.flush().is_ok();
        if !ok {
            tracing::error!("cannot write audit records");
        }
        std::thread::sleep(BATCH_WINDOW);
    }
    let _ = out.flush();
}

/// How an allowed request ended, as Envoy saw it: a second audit line for its
/// `request_id`. Addresses, counts and Envoy's own words; no header, path or body.
#[derive(Debug, Serialize, PartialEq)]
pub struct UpstreamRecord {
    pub ts: String,
    pub request_id: String,
    /// Always `upstream`.
    pub event: &'static str,
    /// The status the workload got: the upstream's, or Envoy's own when it answered
    /// (a failed connection, a timeout). Absent when the stream ended without one.
    pub status: Option<u32>,
    /// Envoy's response flags (`UF` connection failure, `UT` timeout, `UC` upstream
    /// closed, …); empty when nothing went wrong.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub response_flags: Vec<&'static str>,
    /// Envoy's response code details (`via_upstream`, `upstream_reset_before_response_started{…}`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
    /// Why the connection to the upstream failed, when it did (TLS, connect).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub upstream_failure: String,
    /// The address Envoy connected to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_address: Option<String>,
    /// From the first byte received from the workload to the last byte sent to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    /// Bytes of the request's body sent on, and of the response's body received.
    pub request_body_bytes: u64,
    pub response_body_bytes: u64,
}
