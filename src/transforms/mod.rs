//! The transforms pipeline: an ordered list of steps that each inspect a request and either
//! let it continue (possibly with header mutations) or reject it. A reject short-circuits;
//! every step leaves a [`TransformTrace`] for the audit record.
//!
//! Transforms *return* mutations instead of editing the request, so the pipeline sees every
//! change, later steps see earlier steps' changes, and the Envoy layer converts them once.

mod allowlist;
pub mod budget;
pub mod capture;
pub mod grpc;
pub mod header_allowlist;
pub mod judge;
mod kind;
pub mod rate_limit;
mod refusal;
mod remote;
pub mod response_dlp;
pub mod secrets;
#[cfg(test)]
mod stamp;
mod state;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_norway::Value;
use tracing::Instrument;

use crate::identity::Identity;
use crate::inspect::Body;
use crate::policy::rule::{Rule, RuleConfig, any_rule_matches};
use crate::policy::{Action, Decision, PolicySet, Verdict, WorkloadTagIds};
use crate::request::OutboundRequest;
use crate::secrets::{SecretBytes, SecretValue, SourceCache, SourceContext};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::trace::transform_span;
use crate::vocab::FieldError;
use crate::vocab::from_value;

pub use capture::{BodyCaptureConfig, CapturedBody, CapturedHeader, HeaderCaptureConfig};
pub use grpc::{GrpcAnnotation, GrpcConfig};
pub use header_allowlist::HeaderAllowlistConfig;
pub use judge::{JudgeAnnotation, JudgeConfig};
pub use kind::{Applied, CompileContext, Kind, Transform, TransformConfig};
pub use refusal::{ApprovalTicket, RefusalKind, Rejection};
pub use remote::CREDENTIAL_HEADERS;
use remote::{millis, printable, sent_header_names, sent_header_problems, wait_timeout_problem};
pub use secrets::SecretConfig;

/// The kinds of transform, in the order the "unknown transform" error lists them. A new
/// kind is its own module (declared above) and one line here.
const KINDS: &[Kind] = &[
    allowlist::KIND,
    judge::KIND,
    grpc::KIND,
    capture::BODY_KIND,
    capture::HEADER_KIND,
    secrets::KIND,
    header_allowlist::KIND,
    rate_limit::KIND,
    budget::KIND,
    response_dlp::KIND,
    #[cfg(test)]
    stamp::KIND,
];

/// One entry of `transforms:` — either a bare name (`- allowlist`) or
/// `{name, rules, config}`.
#[derive(Debug, Clone)]
pub struct TransformEntry {
    /// The kind's parsed, validated config.
    pub config: Arc<dyn TransformConfig>,
    /// Scope: the transform only acts on requests matching one of these; empty: all.
    pub rules: Vec<RuleConfig>,
}

impl PartialEq for TransformEntry {
    fn eq(&self, other: &TransformEntry) -> bool {
        self.config.same_as(&*other.config) && self.rules == other.rules
    }
}

impl TransformEntry {
    pub fn allowlist() -> TransformEntry {
        TransformEntry {
            config: Arc::new(allowlist::AllowlistConfig),
            rules: Vec::new(),
        }
    }

    pub fn secrets() -> TransformEntry {
        TransformEntry {
            config: Arc::new(secrets::SecretsStep),
            rules: Vec::new(),
        }
    }

    pub fn name(&self) -> &'static str {
        self.config.name()
    }

    fn is_secrets(&self) -> bool {
        self.name() == secrets::KIND.name
    }

    /// Parses one element of `transforms:`; error paths are relative to it.
    pub fn parse(value: Value) -> Result<TransformEntry, Vec<FieldError>> {
        let raw = match value {
            Value::String(name) => kind::RawEntry {
                name,
                ..kind::RawEntry::default()
            },
            other => from_value::<kind::RawEntry>(other).map_err(|e| vec![e])?,
        };
        let Some(kind) = KINDS.iter().find(|k| k.name == raw.name) else {
            let known: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
            return Err(vec![FieldError::new(
                "name",
                format!(
                    "unknown transform `{}`, expected one of {}",
                    raw.name,
                    known.join(", ")
                ),
            )]);
        };
        let config = (kind.parse)(&raw.rules, raw.config)?;
        let errors = body_conditions_unsupported(
            &raw.rules,
            "a transform's scope matches host, paths and methods",
        );
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(TransformEntry {
            config,
            rules: raw.rules,
        })
    }
}

/// Errors for rules that carry conditions (body, headers, cel, …) where only policy
/// rules may; `reason` says what those rules match instead. Paths are `rules[N].<field>`.
pub(crate) fn body_conditions_unsupported(rules: &[RuleConfig], reason: &str) -> Vec<FieldError> {
    rules
        .iter()
        .enumerate()
        .flat_map(|(i, rule)| {
            rule.condition_fields().into_iter().map(move |field| {
                FieldError::new(
                    format!("rules[{i}].{field}"),
                    format!("`{field}` conditions apply to policy rules only; {reason}"),
                )
            })
        })
        .collect()
}

/// What a transform did, for the audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceAction {
    Continue,
    Reject,
    /// Out of the transform's `rules` scope: not run.
    Skip,
}

impl TraceAction {
    pub fn as_str(self) -> &'static str {
        match self {
            TraceAction::Continue => "continue",
            TraceAction::Reject => "reject",
            TraceAction::Skip => "skip",
        }
    }
}

/// A dry-run policy's would-be decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DryRun {
    pub policy: Arc<str>,
    pub rule: u32,
    pub action: Action,
}

/// A credential put to use, for the audit record: the secret's name and where it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CredentialUse {
    pub secret: Arc<str>,
    /// `header:authorization`, `query:key`, `path`, `body`.
    pub locations: Vec<String>,
}

/// Per-transform audit context. Typed on purpose: nothing here can hold a credential, only
/// names, indexes and fixed reasons — and, from the capture transforms (which run before
/// `secrets` and never capture credential headers), what the workload sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Annotations {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<DryRun>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stripped_headers: Vec<String>,
    /// A credential added (bearer, basic, custom, path_token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub injected: Option<CredentialUse>,
    /// A placeholder replaced by the credential (proxy_token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swapped: Option<CredentialUse>,
    /// A signature computed with the credential (aws_sigv4, hmac).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed: Option<CredentialUse>,
    /// What the LLM judge said, or why it said nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub judge: Option<Box<JudgeAnnotation>>,
    /// What the gRPC decision processor answered, or why it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc: Option<Box<GrpcAnnotation>>,
    /// Other secrets that matched but lost to an earlier one in config order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shadowed: Vec<Arc<str>>,
    /// `body_capture`: the (first bytes of the) body the workload sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub captured_body: Option<Box<CapturedBody>>,
    /// `header_capture`: the listed headers' values, as the workload sent them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub captured_headers: Vec<CapturedHeader>,
    /// Why a refusing policy's condition could not be evaluated (reason `condition_error`):
    /// the error's kind and types, never the request's values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition_error: Option<String>,
    /// A request no policy allows, to a host and port a policy opens CONNECT tunnels to:
    /// that policy. Under interception the tunnel's requests are decided on their own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel_allowed_by: Option<Arc<str>>,
    /// `network_guard`: the address Envoy connects to, or the internal one refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_address: Option<std::net::SocketAddr>,
    /// `network_guard`: the internal range of a refused address (`loopback`, `link_local`…).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address_range: Option<&'static str>,
    /// The approval a refused request waits for (`approval_required`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
}

impl Annotations {
    /// Counts what this step's kind counts beyond the decision (a judge's verdict, a gRPC
    /// processor's outcome).
    pub fn record_metrics(&self, metrics: &Metrics) {
        if let Some(judge) = &self.judge {
            judge.record(metrics);
        }
        if let Some(grpc) = &self.grpc {
            grpc.record(metrics);
        }
    }

    fn is_empty(&self) -> bool {
        *self == Annotations::default()
    }
}

/// One line of a request's transform trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransformTrace {
    pub name: &'static str,
    pub action: TraceAction,
    #[serde(skip_serializing_if = "Annotations::is_empty")]
    pub annotations: Annotations,
}

/// Changes to the upstream request. Values are [`SecretValue`]s: whatever a transform
/// sets may carry a credential, so none of it is printable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mutations {
    /// Headers to set (replacing any existing value). Names lower case.
    pub set: Vec<(String, SecretValue)>,
    /// Headers to remove. Names lower case.
    pub remove: Vec<String>,
    /// A new `:path` (path and query).
    pub path: Option<SecretValue>,
    /// A new request body.
    pub body: Option<SecretBytes>,
    /// Every form in which a credential left with the request (the value, its encodings):
    /// cut out of the response ([`crate::secrets::scrub`]). Not a change to the request.
    pub scrub: Vec<SecretBytes>,
}

impl Mutations {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty() && self.path.is_none() && self.body.is_none()
    }

    pub fn remove(&mut self, name: &str) {
        self.set.retain(|(n, _)| n != name);
        if !self.remove.iter().any(|n| n == name) {
            self.remove.push(name.to_owned());
        }
    }

    pub fn set(&mut self, name: &str, value: SecretValue) {
        self.remove.retain(|n| n != name);
        match self.set.iter_mut().find(|(n, _)| n == name) {
            Some(entry) => entry.1 = value,
            None => self.set.push((name.to_owned(), value)),
        }
    }

    /// The `:path` as it will leave: mutated, or as sent.
    pub fn path_or(&self, sent: &str) -> String {
        match &self.path {
            Some(path) => path.expose().to_owned(),
            None => sent.to_owned(),
        }
    }
}

/// What the pipeline decided for one request.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub decision: Decision,
    /// The policy engine's verdict, when the allowlist ran.
    pub verdict: Option<Verdict>,
    pub rejection: Option<Rejection>,
    pub mutations: Mutations,
    pub trace: Vec<TransformTrace>,
    /// The answer to a refused MCP message: a JSON-RPC error the agent's MCP client
    /// understands, instead of the JSON error body.
    pub jsonrpc_reply: Option<JsonRpcReply>,
    /// What reads the response of an allowed request.
    pub response: ResponseWatchers,
}

/// What reads an allowed request's response as it passes: a budget's meter (the LLM
/// call's usage), a DLP inspection.
#[derive(Debug, Clone, Default)]
pub struct ResponseWatchers {
    pub meter: Option<budget::Meter>,
    pub inspection: Option<response_dlp::Inspection>,
}

impl ResponseWatchers {
    pub fn any(&self) -> bool {
        self.meter.is_some() || self.inspection.is_some()
    }
}

/// An HTTP answer carrying a JSON-RPC document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonRpcReply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Everything a transform may look at.
pub struct Exchange<'a> {
    pub request: &'a OutboundRequest,
    /// The buffered request body, when a transform needed it (empty for a request without
    /// one); `None` when the body was not requested. Parsed lazily and once, whichever
    /// transforms look into it (JSON, MCP messages, DLP findings).
    pub body: Option<&'a Body<'a>>,
    pub identity: &'a Identity,
    pub policies: &'a PolicySet,
    pub tag_ids: WorkloadTagIds,
    pub mutations: Mutations,
    pub verdict: Option<Verdict>,
    /// Render credentials as markers and read no source (`portcullis check`).
    pub preview: bool,
    /// Set by a `budget` that meters this call: charges the response's usage.
    pub meter: Option<budget::Meter>,
    /// Set by `response_dlp`: inspects the response.
    pub inspection: Option<response_dlp::Inspection>,
}

/// A transform's result.
pub enum Step {
    Continue(Annotations),
    Reject(Rejection, Annotations),
}

struct Stage {
    transform: Box<dyn Transform>,
    scope: Vec<Rule>,
}

/// The compiled pipeline.
pub struct Pipeline {
    stages: Vec<Stage>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.stages.iter().map(|s| s.transform.name()))
            .finish()
    }
}

impl Pipeline {
    /// The pipeline's rate limits, with their places (`transforms[N]`).
    pub fn rate_limits(&self) -> impl Iterator<Item = (usize, &rate_limit::RateLimit)> {
        self.stages
            .iter()
            .enumerate()
            .filter_map(|(i, stage)| stage.transform.rate_limit().map(|limit| (i, limit)))
    }

    /// Compiles validated entries; errors carry paths under `transforms[N]` (and
    /// `secrets[N]` for the secrets the `secrets` step holds).
    pub fn compile(
        entries: &[TransformEntry],
        secrets: &[SecretConfig],
        cache: &SourceCache,
        sources: &SourceContext,
        judges: &judge::JudgeStates,
        limits: &rate_limit::LimitStates,
        budgets: &budget::BudgetStates,
    ) -> Result<Pipeline, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut stages = Vec::with_capacity(entries.len());
        if !secrets.is_empty() && !entries.iter().any(TransformEntry::is_secrets) {
            errors.push(FieldError::new(
                "transforms",
                "`secrets:` are defined but the pipeline has no `secrets` step: add it \
                 (after allowlist, before header_allowlist)",
            ));
        }
        // Judges and processors a request may wait on, one after the other.
        let mut wait_timeouts = Duration::ZERO;
        for (i, entry) in entries.iter().enumerate() {
            let path = format!("transforms[{i}]");
            wait_timeouts += entry.config.wait_timeout();
            if let Some(why) = entry.config.must_precede_secrets()
                && let Some(at) = entries[..i].iter().position(TransformEntry::is_secrets)
            {
                errors.push(FieldError::new(
                    format!("{path}.name"),
                    format!(
                        "{} must run before `secrets` (transforms[{at}]): after it, {why}",
                        entry.name()
                    ),
                ));
                continue;
            }
            if entry.config.runs_once() && entries[..i].iter().any(|e| e.name() == entry.name()) {
                errors.push(FieldError::new(
                    format!("{path}.name"),
                    format!("{} is listed twice; it runs once", entry.name()),
                ));
                continue;
            }
            let context = CompileContext {
                at: &path,
                secrets,
                cache,
                sources,
                judges,
                limits,
                budgets,
            };
            match entry.config.compile(&context) {
                Ok(transform) => stages.push(Stage {
                    transform,
                    scope: entry.rules.iter().map(Rule::compile).collect(),
                }),
                Err(e) => errors.extend(e),
            }
        }
        if wait_timeouts > remote::MAX_WAIT {
            errors.push(FieldError::new(
                "transforms",
                format!(
                    "the judges' and grpc processors' timeouts add up to {} (a request in \
                     scope of all of them may wait for each); Envoy waits at most 30s for a \
                     decision: keep the sum at or under 29s",
                    humantime::format_duration(wait_timeouts)
                ),
            ));
        }
        if errors.is_empty() {
            Ok(Pipeline { stages })
        } else {
            Err(errors)
        }
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.stages.iter().map(|s| s.transform.name()).collect()
    }

    /// The pipeline's budgets, with their places (`transforms[N]`).
    pub fn budgets(&self) -> impl Iterator<Item = &budget::Budget> {
        self.stages
            .iter()
            .filter_map(|stage| stage.transform.budget())
    }

    /// The stages in scope of this request that need the processor beyond the policy
    /// engine's verdict: every one but `allowlist`, and `secrets` when no secret applies.
    pub fn processor_stages(&self, request: &OutboundRequest) -> Vec<&'static str> {
        let facts = request.facts();
        self.stages
            .iter()
            .filter(|stage| stage.scope.is_empty() || any_rule_matches(&stage.scope, &facts))
            .filter(|stage| {
                let name = stage.transform.name();
                !(stage.transform.is_policy_engine()
                    || (name == secrets::KIND.name && !stage.transform.may_put_credential(request)))
            })
            .map(|stage| stage.transform.name())
            .collect()
    }

    /// The stages beyond the policy engine that could apply to some request to the
    /// probe's host and port, whatever its path and method: a scope is in play when one
    /// of its rules names the host, and the secrets step when one of its secrets' rules
    /// does. Such a host is decided by Portcullis, never by Envoy's routes.
    pub fn stages_for_host(&self, host: &crate::policy::RequestFacts<'_>) -> Vec<&'static str> {
        self.stages
            .iter()
            .filter(|stage| {
                stage.scope.is_empty() || stage.scope.iter().any(|rule| rule.host.matches(host))
            })
            .filter(|stage| {
                let name = stage.transform.name();
                !(stage.transform.is_policy_engine()
                    || (name == secrets::KIND.name
                        && !stage.transform.may_put_credential_on_host(host)))
            })
            .map(|stage| stage.transform.name())
            .collect()
    }

    /// Whether a stage in scope may read this request's response.
    pub fn watches_response(&self, request: &OutboundRequest) -> bool {
        let facts = request.facts();
        self.stages.iter().any(|stage| {
            (stage.scope.is_empty() || any_rule_matches(&stage.scope, &facts))
                && stage.transform.watches_response(request)
        })
    }

    /// Whether some stage in scope needs this request's body before it can decide.
    pub fn needs_body(&self, request: &OutboundRequest, identity: &Identity) -> bool {
        let facts = request.facts();
        self.stages.iter().any(|stage| {
            (stage.scope.is_empty() || any_rule_matches(&stage.scope, &facts))
                && stage.transform.needs_body(request, identity)
        })
    }

    /// Whether a secret's rules match this request (whatever the workload's tags): the
    /// secrets step may then put a credential on it, whose echo the response is scrubbed of.
    pub fn may_put_credential(&self, request: &OutboundRequest) -> bool {
        self.stages
            .iter()
            .any(|stage| stage.transform.may_put_credential(request))
    }

    /// The longest the stages in scope of this request may spend waiting on another
    /// service (an LLM judge, a gRPC processor): the sum of their timeouts; `None` when no
    /// such stage applies. The ext_proc layer asks Envoy to wait that long (plus a margin)
    /// before deciding.
    pub fn longest_wait(&self, request: &OutboundRequest) -> Option<Duration> {
        let facts = request.facts();
        let mut wait = None;
        for stage in &self.stages {
            let Some(timeout) = stage.transform.wait(request) else {
                continue;
            };
            if stage.scope.is_empty() || any_rule_matches(&stage.scope, &facts) {
                *wait.get_or_insert(Duration::ZERO) += timeout;
            }
        }
        wait
    }

    /// Every secret source the pipeline reads (a judge's API key too), for cache refreshes.
    pub fn sources(&self) -> Vec<Arc<crate::secrets::CompiledSource>> {
        self.stages
            .iter()
            .flat_map(|s| s.transform.sources())
            .collect()
    }

    pub fn has_allowlist(&self) -> bool {
        self.stages.iter().any(|s| s.transform.is_policy_engine())
    }

    /// Runs every stage in order until one rejects; each stage that runs has its own span.
    pub async fn run(&self, mut exchange: Exchange<'_>) -> Outcome {
        let mut trace = Vec::with_capacity(self.stages.len());
        let mut rejection = None;
        let facts = exchange.request.facts();
        for stage in &self.stages {
            let name = stage.transform.name();
            if !stage.scope.is_empty() && !any_rule_matches(&stage.scope, &facts) {
                trace.push(TransformTrace {
                    name,
                    action: TraceAction::Skip,
                    annotations: Annotations::default(),
                });
                continue;
            }
            let span = transform_span(name);
            let applied = {
                // A transform that never waits does its work here, inside its span too.
                let _entered = span.enter();
                stage.transform.apply(&mut exchange)
            };
            let step = applied.step().instrument(span.clone()).await;
            let (action, annotations) = match step {
                Step::Continue(annotations) => (TraceAction::Continue, annotations),
                Step::Reject(r, annotations) => {
                    rejection = Some(r);
                    (TraceAction::Reject, annotations)
                }
            };
            if !span.is_disabled() {
                span.record("transform.action", action.as_str());
                if let Some(reason) = annotations.reason {
                    span.record("transform.reason", reason);
                }
            }
            trace.push(TransformTrace {
                name,
                action,
                annotations,
            });
            if action == TraceAction::Reject {
                break;
            }
        }
        let decision = match (&rejection, exchange.verdict) {
            (Some(_), _) => Decision::Denied,
            (None, Some(v)) if v.action == Action::Flag => Decision::Flagged,
            (None, _) => Decision::Allowed,
        };
        let response = match rejection {
            Some(_) => ResponseWatchers::default(),
            None => ResponseWatchers {
                meter: exchange.meter,
                inspection: exchange.inspection,
            },
        };
        Outcome {
            decision,
            verdict: exchange.verdict,
            rejection,
            mutations: exchange.mutations,
            trace,
            jsonrpc_reply: None,
            response,
        }
    }
}

/// Whether a request header (lower case) routes or frames the request, or is the
/// workload's credential towards the gateway: no transform may write it.
fn routes_or_frames(name: &str) -> bool {
    matches!(
        name,
        "host" | "content-length" | "transfer-encoding" | "connection" | "proxy-authorization"
    ) || name.starts_with(':')
        || name.starts_with("x-envoy-")
}

#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;
