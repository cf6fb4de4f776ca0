//! The `judge` transform: an LLM reads a bounded summary of the request (method, URL, a few
//! headers, the start of the body) and the operator's natural-language policy, and answers
//! `allow` or `deny`.
//!
//! - **It can only deny.** `allow` lets the request continue to the next transform; nothing
//!   the judge says can make another transform let a request through.
//! - **It never sees a credential.** It must run before `secrets` (a config error
//!   otherwise), and `authorization`, `proxy-authorization` and `cookie` are never sent.
//! - **It may not answer.** A timeout, an error status, a malformed verdict, an open circuit
//!   breaker or the concurrency cap apply the `fallback` (`deny` or `skip`), recorded with
//!   its cause.
//! - **It is slow.** Envoy's message timeout is far shorter than an LLM call: the ext_proc
//!   layer asks Envoy to wait longer ([`crate::transforms::Pipeline::longest_wait`]) before
//!   the pipeline runs.

mod annotation;
mod breaker;
pub mod config;
mod provider;
mod summary;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

pub use annotation::{FallbackApplied, FallbackCause, JudgeAnnotation, JudgeVerdict};
pub use config::{Fallback, JudgeConfig, Provider};
use provider::{JudgeReply, Ruling};
use summary::{Summary, SummaryRules};

use super::kind::{
    Applied, CompileContext, Kind, Transform, TransformConfig, required_config, validated,
};
use super::{Annotations, Exchange, RefusalKind, Rejection, Step, millis, printable};
use crate::identity::Identity;
use crate::inspect::Body;
use crate::request::OutboundRequest;
use crate::secrets::sources::{self, CompiledSource, SourceContext};
use crate::secrets::{SourceCache, SourceConfig, SourceKind};
use crate::vocab::FieldError;

/// The judge's reason is cut to this many characters in the audit record and the error.
const MAX_REASON_CHARS: usize = 200;

/// A provider response larger than this is not a verdict.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// Judge state that outlives a snapshot — breaker, concurrency cap, verdict cache — keyed
/// by the judge's whole config, so a reload that keeps a judge keeps its state, and a
/// changed judge (another policy, model or endpoint) starts afresh.
#[derive(Default)]
pub struct JudgeStates(super::state::StatesByConfig<JudgeState>);

impl JudgeStates {
    fn get(&self, config: &JudgeConfig) -> Arc<JudgeState> {
        self.0.get(config, JudgeState::new)
    }
}

struct JudgeState {
    breaker: breaker::Breaker,
    permits: Semaphore,
    cache: Option<moka::future::Cache<[u8; 32], Cached>>,
}

impl JudgeState {
    fn new(config: &JudgeConfig) -> JudgeState {
        let ttl = config.cache.ttl.0;
        JudgeState {
            breaker: breaker::Breaker::new(
                config.circuit_breaker.failures,
                config.circuit_breaker.cooldown.0,
            ),
            permits: Semaphore::new(config.max_concurrency),
            cache: (!ttl.is_zero() && config.cache.max_entries > 0).then(|| {
                moka::future::Cache::builder()
                    .max_capacity(config.cache.max_entries)
                    .time_to_live(ttl)
                    .build()
            }),
        }
    }
}

/// A remembered verdict.
#[derive(Clone)]
struct Cached {
    ruling: Ruling,
    reason: Option<Arc<str>>,
}

/// Why a call gave no verdict; `Unkeyed` is not the judge's fault (no breaker count).
enum Failure {
    Unkeyed,
    TimedOut,
    Transport(reqwest::Error),
    Status(u16),
    Malformed { tokens: Option<u64> },
}

impl From<reqwest::Error> for Failure {
    fn from(e: reqwest::Error) -> Failure {
        // reqwest's own timer is set to ours and may fire first.
        if e.is_timeout() {
            Failure::TimedOut
        } else {
            Failure::Transport(e.without_url())
        }
    }
}

/// The compiled transform.
pub struct Judge {
    provider: Provider,
    url: reqwest::Url,
    model: String,
    api_key: Option<Arc<CompiledSource>>,
    system: String,
    timeout: Duration,
    fallback: Fallback,
    summary: SummaryRules,
    state: Arc<JudgeState>,
    http: reqwest::Client,
    keys: SourceCache,
}

impl Judge {
    /// Compiles a validated config; errors are relative to `config`.
    pub fn compile(
        config: &JudgeConfig,
        keys: &SourceCache,
        ctx: &SourceContext,
        states: &JudgeStates,
    ) -> Result<Judge, Vec<FieldError>> {
        let errors = config.validate();
        if !errors.is_empty() {
            return Err(errors);
        }
        let url = reqwest::Url::parse(&config.url)
            .map_err(|e| vec![FieldError::new("url", e.to_string())])?;
        // The key is read like a secret (cached, refreshed, a file re-read when it
        // changes), from the same `env` / `file` shape as proxy tokens.
        let api_key = match &config.api_key {
            None => None,
            Some(key) => {
                let kind = match (&key.env, &key.file) {
                    (Some(var), _) => SourceKind::Env { var: var.clone() },
                    (None, Some(path)) => SourceKind::File { path: path.clone() },
                    (None, None) => unreachable!("validated: env or file"),
                };
                let source = SourceConfig {
                    kind,
                    ttl: None,
                    failure_ttl: None,
                    json_key: None,
                };
                Some(sources::compile(&source, ctx).map_err(|errors| {
                    errors
                        .into_iter()
                        .map(|e| e.under("api_key"))
                        .collect::<Vec<_>>()
                })?)
            }
        };
        Ok(Judge {
            provider: config.provider,
            url,
            model: config.model.clone(),
            api_key,
            system: provider::system_prompt(&config.policy),
            timeout: config.timeout.0,
            fallback: config.fallback,
            summary: SummaryRules::compile(&config.summary),
            state: states.get(config),
            http: ctx.http.clone(),
            keys: keys.clone(),
        })
    }

    /// Whether this request is judged at all (see [`Judge::apply`]).
    pub fn judges(&self, request: &OutboundRequest) -> bool {
        !request.intercepted
    }

    pub(super) async fn run(&self, exchange: &mut Exchange<'_>) -> Step {
        let request = exchange.request;
        if !self.judges(request) {
            // An intercepted tunnel's requests come one by one, each judged on its own.
            return Step::Continue(Annotations {
                reason: Some("tunnel_judged_per_request"),
                ..Annotations::default()
            });
        }
        if exchange.preview {
            return Step::Continue(Annotations {
                reason: Some("judge_not_called_in_preview"),
                ..Annotations::default()
            });
        }
        let started = Instant::now();
        let text = self
            .summary
            .summarize(request, exchange.body.map(Body::bytes))
            .to_json();
        let key = Summary::key(&text);
        if let Some(cache) = &self.state.cache
            && let Some(hit) = cache.get(&key).await
        {
            let note = JudgeAnnotation {
                verdict: verdict_of(hit.ruling),
                reason: hit.reason.as_deref().map(str::to_owned),
                duration_ms: millis(started.elapsed()),
                tokens: None,
                cached: true,
                fallback: FallbackApplied::None,
                cause: None,
            };
            return self.rule(hit.ruling, note);
        }
        match self.consult(&text, &request.id).await {
            Ok((verdict, tokens)) => {
                let reason = printable(&verdict.reason, MAX_REASON_CHARS);
                if let Some(cache) = &self.state.cache {
                    cache
                        .insert(
                            key,
                            Cached {
                                ruling: verdict.verdict,
                                reason: reason.as_deref().map(Arc::from),
                            },
                        )
                        .await;
                }
                let note = JudgeAnnotation {
                    verdict: verdict_of(verdict.verdict),
                    reason,
                    duration_ms: millis(started.elapsed()),
                    tokens,
                    cached: false,
                    fallback: FallbackApplied::None,
                    cause: None,
                };
                self.rule(verdict.verdict, note)
            }
            Err((cause, tokens)) => {
                let mut note = JudgeAnnotation {
                    verdict: JudgeVerdict::None,
                    reason: None,
                    duration_ms: millis(started.elapsed()),
                    tokens,
                    cached: false,
                    fallback: FallbackApplied::Skip,
                    cause: Some(cause),
                };
                match self.fallback {
                    Fallback::Skip => Step::Continue(Annotations {
                        judge: Some(Box::new(note)),
                        ..Annotations::default()
                    }),
                    Fallback::Deny => {
                        note.fallback = FallbackApplied::Deny;
                        let rejection = Rejection {
                            status: 503,
                            kind: RefusalKind::JudgeUnavailable,
                            reason: cause.reason(),
                            message: format!(
                                "the LLM judge could not decide this request ({cause}); \
                                 requests it cannot decide are refused"
                            ),
                            policy: None,
                            rule: None,
                            transform: "judge",
                            retry_after: None,
                            approval: None,
                        };
                        Step::Reject(
                            rejection,
                            Annotations {
                                reason: Some(cause.reason()),
                                judge: Some(Box::new(note)),
                                ..Annotations::default()
                            },
                        )
                    }
                }
            }
        }
    }

    /// A verdict, applied: `allow` continues, `deny` refuses (403).
    fn rule(&self, ruling: Ruling, note: JudgeAnnotation) -> Step {
        match ruling {
            Ruling::Allow => Step::Continue(Annotations {
                judge: Some(Box::new(note)),
                ..Annotations::default()
            }),
            Ruling::Deny => {
                let message = match &note.reason {
                    Some(reason) => format!("denied by the LLM judge: {reason}"),
                    None => "denied by the LLM judge".to_owned(),
                };
                Step::Reject(
                    Rejection {
                        status: 403,
                        kind: RefusalKind::PolicyDenied,
                        reason: "judge_deny",
                        message,
                        policy: None,
                        rule: None,
                        transform: "judge",
                        retry_after: None,
                        approval: None,
                    },
                    Annotations {
                        reason: Some("judge_deny"),
                        judge: Some(Box::new(note)),
                        ..Annotations::default()
                    },
                )
            }
        }
    }

    /// Asks the judge, through the breaker and the concurrency cap, within the timeout.
    async fn consult(
        &self,
        user: &str,
        request_id: &str,
    ) -> Result<(JudgeReply, Option<u64>), (FallbackCause, Option<u64>)> {
        let Some(ticket) = self.state.breaker.admit(Instant::now()) else {
            return Err((FallbackCause::BreakerOpen, None));
        };
        // Returning without a report frees a probe slot without counting.
        let Ok(_permit) = self.state.permits.try_acquire() else {
            return Err((FallbackCause::Busy, None));
        };
        let failure = match tokio::time::timeout(self.timeout, self.call(user)).await {
            Ok(Ok(answer)) => {
                ticket.succeeded();
                return Ok(answer);
            }
            Ok(Err(failure)) => failure,
            Err(_) => Failure::TimedOut,
        };
        let (cause, tokens, what) = match failure {
            // Not the judge's fault: no call was made.
            Failure::Unkeyed => return Err((FallbackCause::Error, None)),
            Failure::TimedOut => (
                FallbackCause::Timeout,
                None,
                "the judge did not answer in time".to_owned(),
            ),
            Failure::Transport(e) => (
                FallbackCause::Error,
                None,
                format!("the call failed: {}", chain(&e)),
            ),
            Failure::Status(code) => (
                FallbackCause::Status(code),
                None,
                format!("the judge answered {code}"),
            ),
            // The text itself is not logged: it may quote the request.
            Failure::Malformed { tokens } => (
                FallbackCause::Malformed,
                tokens,
                "the answer is not a verdict".to_owned(),
            ),
        };
        let opened = ticket.failed(Instant::now());
        tracing::warn!(request_id, judge = %self.url, fallback = ?self.fallback,
            "LLM judge gave no verdict: {what}");
        if opened {
            tracing::warn!(judge = %self.url, "LLM judge circuit breaker opened");
        }
        Err((cause, tokens))
    }

    /// One call to the provider.
    async fn call(&self, user: &str) -> Result<(JudgeReply, Option<u64>), Failure> {
        let key = match &self.api_key {
            None => None,
            Some(source) => match self.keys.resolve(source).await {
                Ok(key) => Some(key),
                Err(error) => {
                    tracing::warn!(judge = %self.url, %error, "LLM judge API key unavailable");
                    return Err(Failure::Unkeyed);
                }
            },
        };
        let body = provider::request_body(self.provider, &self.model, &self.system, user);
        let mut call = self
            .http
            .post(self.url.clone())
            // Replaces the shared client's overall timeout, which is shorter than ours can be.
            .timeout(self.timeout)
            .json(&body);
        for (name, value) in provider::headers(self.provider, key.as_ref().map(|k| k.expose())) {
            let Ok(mut value) = reqwest::header::HeaderValue::from_str(&value) else {
                tracing::warn!(judge = %self.url, header = name,
                    "LLM judge API key cannot be sent in a header");
                return Err(Failure::Unkeyed);
            };
            value.set_sensitive(true);
            call = call.header(name, value);
        }
        let mut response = call.send().await.map_err(Failure::from)?;
        let status = response.status();
        if !status.is_success() {
            return Err(Failure::Status(status.as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(Failure::from)? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(Failure::Malformed { tokens: None });
            }
            body.extend_from_slice(&chunk);
        }
        let answer = provider::parse_answer(self.provider, &body);
        match answer.text.as_deref().and_then(provider::parse_verdict) {
            Some(verdict) => Ok((verdict, answer.tokens)),
            None => Err(Failure::Malformed {
                tokens: answer.tokens,
            }),
        }
    }
}

/// An error and its causes on one line (`error sending request: connection refused`).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn verdict_of(ruling: Ruling) -> JudgeVerdict {
    match ruling {
        Ruling::Allow => JudgeVerdict::Allow,
        Ruling::Deny => JudgeVerdict::Deny,
    }
}

/// `- {name: judge, config: …}`.
pub(super) const KIND: Kind = Kind {
    name: "judge",
    parse: |_, config| {
        let config: JudgeConfig = required_config(
            config,
            "judge needs a `config` with at least `provider`, `url`, `model` and `policy`",
        )?;
        let problems = config.validate();
        Ok(Arc::new(validated(config, problems)?))
    },
};

impl TransformConfig for JudgeConfig {
    fn name(&self) -> &'static str {
        KIND.name
    }

    fn must_precede_secrets(&self) -> Option<&'static str> {
        Some("the judge's provider would be sent the credentials `secrets` injects")
    }

    fn wait_timeout(&self) -> Duration {
        self.timeout.0
    }

    fn compile(&self, ctx: &CompileContext<'_>) -> Result<Box<dyn Transform>, Vec<FieldError>> {
        match Judge::compile(self, ctx.cache, ctx.sources, ctx.judges) {
            Ok(judge) => Ok(Box::new(judge)),
            Err(errors) => Err(ctx.under_config(errors)),
        }
    }
}

impl Transform for Judge {
    fn name(&self) -> &'static str {
        KIND.name
    }

    fn apply<'a>(&'a self, exchange: &'a mut Exchange<'_>) -> Applied<'a> {
        Applied::Waiting(Box::pin(self.run(exchange)))
    }

    fn needs_body(&self, request: &OutboundRequest, _: &Identity) -> bool {
        self.judges(request) && !request.facts().is_connect()
    }

    fn wait(&self, request: &OutboundRequest) -> Option<Duration> {
        self.judges(request).then_some(self.timeout)
    }

    fn sources(&self) -> Vec<Arc<CompiledSource>> {
        self.api_key.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests;
