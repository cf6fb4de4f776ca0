//! Prometheus metrics, served on the admin port at `/metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::policy::Decision;

/// Label value for decisions no policy made (the default action, or a refusal before the
/// policy engine ran).
pub const NO_POLICY: &str = "";

/// Every metric Portcullis exports.
pub struct Metrics {
    registry: Registry,
    decisions: IntCounterVec,
    dry_runs: IntCounterVec,
    rejections: IntCounterVec,
    decision_seconds: Histogram,
    reloads: IntCounterVec,
    policies_loaded: IntGauge,
    active_streams: IntGauge,
    stream_errors: IntCounter,
    certificates: IntCounterVec,
    store_up: IntGauge,
    store_revision: IntGauge,
    store_syncs: IntCounterVec,
    audit_stored: IntCounter,
    audit_store_dropped: IntCounter,
    judge_verdicts: IntCounterVec,
    judge_fallbacks: IntCounterVec,
    judge_tokens: IntCounter,
    grpc_decisions: IntCounterVec,
    response_scrubbed: IntCounterVec,
    llm_tokens: IntCounterVec,
    llm_cost: prometheus::CounterVec,
    response_findings: IntCounterVec,
    /// Store faults, revision regressions, the audit queue.
    pub control: super::control::ControlMetrics,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("portcullis".into()), None)
            .expect("a constant prefix is valid");
        let decisions = IntCounterVec::new(
            Opts::new(
                "decisions_total",
                "Requests decided, by decision and deciding policy (empty: no policy)",
            ),
            &["decision", "policy"],
        )
        .expect("valid metric");
        let dry_runs = IntCounterVec::new(
            Opts::new(
                "dry_run_total",
                "Requests a dry-run (warn) policy would have decided, by policy and action",
            ),
            &["policy", "action"],
        )
        .expect("valid metric");
        let decision_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "decision_duration_seconds",
                "Time from request headers received to decision",
            )
            .buckets(vec![
                1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 2.5e-2,
            ]),
        )
        .expect("valid metric");
        let rejections = IntCounterVec::new(
            Opts::new(
                "rejections_total",
                "Refused requests, by the stage that refused and its fixed reason (e.g. \
                 request/body_too_large, allowlist/policy_deny)",
            ),
            &["transform", "reason"],
        )
        .expect("valid metric");
        let reloads = IntCounterVec::new(
            Opts::new("config_reloads_total", "Config reloads, by result"),
            &["result"],
        )
        .expect("valid metric");
        let policies_loaded =
            IntGauge::new("policies_active", "Active policies in the live snapshot")
                .expect("valid metric");
        let active_streams = IntGauge::new("active_streams", "Open ext_proc streams from Envoy")
            .expect("valid metric");
        let stream_errors = IntCounter::new(
            "stream_errors_total",
            "ext_proc streams ended by a protocol error (Envoy fails those requests closed)",
        )
        .expect("valid metric");
        let certificates = IntCounterVec::new(
            Opts::new(
                "certificates_total",
                "TLS server names answered over SDS: `issued`, or why no certificate was sent",
            ),
            &["result"],
        )
        .expect("valid metric");
        let store_up = IntGauge::new(
            "store_up",
            "1 while the policy store answers, 0 while it is unreachable (the last snapshot stays live)",
        )
        .expect("valid metric");
        let store_revision = IntGauge::new(
            "store_revision",
            "The store revision the live snapshot was compiled from",
        )
        .expect("valid metric");
        let store_syncs = IntCounterVec::new(
            Opts::new(
                "store_syncs_total",
                "Snapshots compiled from the store, by result (`failure`: the last good one stays)",
            ),
            &["result"],
        )
        .expect("valid metric");
        let audit_stored = IntCounter::new(
            "audit_store_written_total",
            "Audit records written to the store",
        )
        .expect("valid metric");
        let audit_store_dropped = IntCounter::new(
            "audit_store_dropped_total",
            "Audit records not written to the store because its queue was full (the audit sink still has them)",
        )
        .expect("valid metric");
        let judge_verdicts = IntCounterVec::new(
            Opts::new(
                "judge_verdicts_total",
                "LLM judge outcomes, by verdict (allow, deny, none) and how it was reached \
                 (judged, cached, fallback_deny, fallback_skip)",
            ),
            &["verdict", "outcome"],
        )
        .expect("valid metric");
        let judge_fallbacks = IntCounterVec::new(
            Opts::new(
                "judge_fallbacks_total",
                "Requests the LLM judge gave no verdict for, by cause (timeout, error, status, \
                 malformed, breaker_open, busy)",
            ),
            &["cause"],
        )
        .expect("valid metric");
        let judge_tokens = IntCounter::new(
            "judge_tokens_total",
            "Tokens the LLM judge's provider reported for its calls",
        )
        .expect("valid metric");
        let grpc_decisions = IntCounterVec::new(
            Opts::new(
                "grpc_decisions_total",
                "gRPC decision processor outcomes (continue, reject, failed), by failure \
                 (none, timeout, unavailable, error, invalid_response) and the fail mode \
                 applied (none, closed, open)",
            ),
            &["outcome", "failure", "fail_mode"],
        )
        .expect("valid metric");
        let response_scrubbed = IntCounterVec::new(
            Opts::new(
                "response_scrubbed_total",
                "Credentials cut out of responses (an upstream echoed what Portcullis \
                 injected), by secret",
            ),
            &["secret"],
        )
        .expect("valid metric");
        let llm_tokens = IntCounterVec::new(
            Opts::new(
                "llm_tokens_total",
                "LLM tokens metered by budgets, by budget (transforms[N]) and kind (input, output)",
            ),
            &["budget", "kind"],
        )
        .expect("valid metric");
        let llm_cost = prometheus::CounterVec::new(
            Opts::new(
                "llm_cost_total",
                "What metered LLM calls cost, priced with each budget's table, by budget",
            ),
            &["budget"],
        )
        .expect("valid metric");
        let response_findings = IntCounterVec::new(
            Opts::new(
                "response_findings_total",
                "DLP findings in responses, by detector and the action taken",
            ),
            &["detector", "action"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(decisions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(llm_tokens.clone()),
            Box::new(llm_cost.clone()),
            Box::new(response_findings.clone()),
            Box::new(response_scrubbed.clone()),
            Box::new(grpc_decisions.clone()),
            Box::new(judge_verdicts.clone()),
            Box::new(judge_fallbacks.clone()),
            Box::new(judge_tokens.clone()),
            Box::new(store_up.clone()),
            Box::new(store_revision.clone()),
            Box::new(store_syncs.clone()),
            Box::new(audit_stored.clone()),
            Box::new(audit_store_dropped.clone()),
            Box::new(dry_runs.clone()),
            Box::new(rejections.clone()),
            Box::new(decision_seconds.clone()),
            Box::new(reloads.clone()),
            Box::new(policies_loaded.clone()),
            Box::new(active_streams.clone()),
            Box::new(stream_errors.clone()),
            Box::new(certificates.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        for result in ["success", "failure"] {
            reloads.with_label_values(&[result]);
            store_syncs.with_label_values(&[result]);
        }
        let control = super::control::ControlMetrics::register(&registry);
        Metrics {
            control,
            registry,
            decisions,
            dry_runs,
            rejections,
            decision_seconds,
            reloads,
            policies_loaded,
            active_streams,
            stream_errors,
            certificates,
            store_up,
            store_revision,
            store_syncs,
            audit_stored,
            audit_store_dropped,
            judge_verdicts,
            judge_fallbacks,
            judge_tokens,
            grpc_decisions,
            response_scrubbed,
            llm_tokens,
            llm_cost,
            response_findings,
        }
    }

    /// What one metered LLM call used, charged to `budget`.
    pub fn record_llm_usage(&self, budget: &str, input: u64, output: u64, cost: Option<f64>) {
        self.llm_tokens
            .with_label_values(&[budget, "input"])
            .inc_by(input);
        self.llm_tokens
            .with_label_values(&[budget, "output"])
            .inc_by(output);
        if let Some(cost) = cost.filter(|c| c.is_finite() && *c > 0.0) {
            self.llm_cost.with_label_values(&[budget]).inc_by(cost);
        }
    }

    /// `count` findings of `detector` in a response, and the action taken.
    pub fn record_response_finding(&self, detector: &str, action: &str, count: u64) {
        self.response_findings
            .with_label_values(&[detector, action])
            .inc_by(count);
    }

    /// One gRPC processor step of a decided request: its outcome, why it had no valid
    /// answer (`none`), and the fail mode applied then (`none`).
    pub fn record_grpc(&self, outcome: &str, failure: &str, fail_mode: &str) {
        self.grpc_decisions
            .with_label_values(&[outcome, failure, fail_mode])
            .inc();
    }

    /// One LLM judge step of a decided request: its verdict, how it was reached (`judged`,
    /// `cached`, `fallback_deny`, `fallback_skip`), why a fallback applied, and the tokens
    /// the judge's model used.
    pub fn record_judge(
        &self,
        verdict: &str,
        outcome: &str,
        fallback_cause: Option<&str>,
        tokens: Option<u64>,
    ) {
        self.judge_verdicts
            .with_label_values(&[verdict, outcome])
            .inc();
        if let Some(cause) = fallback_cause {
            self.judge_fallbacks.with_label_values(&[cause]).inc();
        }
        if let Some(tokens) = tokens {
            self.judge_tokens.inc_by(tokens);
        }
    }

    /// A snapshot compiled from the store (or refused, keeping the last good one).
    pub fn record_store_sync(&self, ok: bool, revision: Option<i64>) {
        self.store_syncs
            .with_label_values(&[if ok { "success" } else { "failure" }])
            .inc();
        if let Some(revision) = revision {
            self.store_revision.set(revision);
        }
    }

    pub fn set_store_up(&self, up: bool) {
        self.store_up.set(i64::from(up));
    }

    pub fn record_audit_stored(&self, n: usize) {
        self.audit_stored.inc_by(n as u64);
    }

    pub fn record_audit_store_dropped(&self) {
        self.audit_store_dropped.inc();
    }

    /// `count` credentials of `secret` cut out of a response.
    pub fn record_response_scrubbed(&self, secret: &str, count: u64) {
        self.response_scrubbed
            .with_label_values(&[secret])
            .inc_by(count);
    }

    /// One SDS answer: `issued`, or the reason no certificate was sent.
    pub fn record_certificate(&self, result: &str) {
        self.certificates.with_label_values(&[result]).inc();
    }

    pub fn record_decision(&self, decision: Decision, policy: Option<&str>, seconds: f64) {
        self.decisions
            .with_label_values(&[decision.as_str(), policy.unwrap_or(NO_POLICY)])
            .inc();
        self.decision_seconds.observe(seconds);
    }

    /// A refusal: both labels are fixed strings, never request data.
    pub fn record_rejection(&self, transform: &'static str, reason: &'static str) {
        self.rejections
            .with_label_values(&[transform, reason])
            .inc();
    }

    pub fn record_dry_run(&self, policy: &str, action: &str) {
        self.dry_runs.with_label_values(&[policy, action]).inc();
    }

    pub fn record_reload(&self, ok: bool, active_policies: Option<usize>) {
        self.reloads
            .with_label_values(&[if ok { "success" } else { "failure" }])
            .inc();
        if let Some(n) = active_policies {
            self.policies_loaded.set(n as i64);
        }
    }

    pub fn set_active_policies(&self, n: usize) {
        self.policies_loaded.set(n as i64);
    }

    pub fn stream_error(&self) {
        self.stream_errors.inc();
    }

    /// Counts an open stream until the guard drops.
    pub fn stream_guard(&self) -> StreamGuard {
        self.active_streams.inc();
        StreamGuard(self.active_streams.clone())
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Decrements the active-stream gauge on drop.
pub struct StreamGuard(IntGauge);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
