//! The one shape of a transform. A [`Kind`] (one line in [`super::KINDS`]) parses its
//! `transforms:` entry into a [`TransformConfig`]; the config compiles, once per snapshot,
//! into the [`Transform`] that runs on requests. Everything the pipeline asks of a
//! transform — its name, whether it must run before `secrets`, whether it needs the body,
//! how long it may wait on another service, which secret sources it reads — it asks through
//! these traits, so a new kind is its own folder and one line in the registry.

use std::any::Any;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_norway::Value;

use super::judge::JudgeStates;
use super::{Exchange, SecretConfig, Step};
use crate::identity::Identity;
use crate::policy::rule::RuleConfig;
use crate::request::OutboundRequest;
use crate::secrets::{CompiledSource, SourceCache, SourceContext};
use crate::vocab::FieldError;

/// One kind of transform, by the name users write in `transforms:`.
pub struct Kind {
    pub name: &'static str,
    /// Reads an entry's `rules` (its scope, checked by the pipeline too) and `config`;
    /// errors are relative to the entry (`config.timeout`, `rules`).
    pub parse: ParseEntry,
}

/// How a kind reads an entry's `rules` and `config`.
pub type ParseEntry =
    fn(&[RuleConfig], Option<Value>) -> Result<Arc<dyn TransformConfig>, Vec<FieldError>>;

/// An entry of `transforms:` as written, before its kind reads it.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEntry {
    pub name: String,
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    #[serde(default)]
    pub config: Option<Value>,
}

/// A kind's parsed, validated configuration.
pub trait TransformConfig: Debug + Send + Sync + Any + SameConfig {
    fn name(&self) -> &'static str;
    /// Why this transform must run before `secrets`, when it must: it would otherwise see
    /// (and send or record) the credentials `secrets` injects.
    fn must_precede_secrets(&self) -> Option<&'static str> {
        None
    }
    /// The transform may appear once in the pipeline.
    fn runs_once(&self) -> bool {
        false
    }
    /// The longest a request may wait on another service for this transform.
    fn wait_timeout(&self) -> Duration {
        Duration::ZERO
    }
    /// Compiles for one snapshot; errors carry full paths (see [`CompileContext::at`]).
    fn compile(&self, ctx: &CompileContext<'_>) -> Result<Box<dyn Transform>, Vec<FieldError>>;
}

/// Whether two configs, of any kinds, are the same (a reload compares configs): every config
/// type that can be compared has it, so a kind only derives `PartialEq`.
pub trait SameConfig {
    fn same_as(&self, other: &dyn TransformConfig) -> bool;
}

impl<T: PartialEq + Any> SameConfig for T {
    fn same_as(&self, other: &dyn TransformConfig) -> bool {
        (other as &dyn Any).downcast_ref::<T>() == Some(self)
    }
}

/// What a transform compiles with.
pub struct CompileContext<'a> {
    /// Where the entry is: `transforms[N]`.
    pub at: &'a str,
    /// The top-level `secrets:` section.
    pub secrets: &'a [SecretConfig],
    pub cache: &'a SourceCache,
    pub sources: &'a SourceContext,
    pub judges: &'a JudgeStates,
    pub limits: &'a super::rate_limit::LimitStates,
    pub budgets: &'a super::budget::BudgetStates,
}

impl CompileContext<'_> {
    /// Errors relative to the entry's `config`, placed under it.
    pub fn under_config(&self, errors: Vec<FieldError>) -> Vec<FieldError> {
        let at = format!("{}.config", self.at);
        errors.into_iter().map(|e| e.under(&at)).collect()
    }
}

/// A transform's work on one request: done at once, or waiting on something (a secret
/// backend, a judge, a processor). A transform that never waits allocates nothing.
// `Done` holds the step itself, as every transform returned it before: boxing it would
// allocate on every request for the transforms that never wait.
#[allow(clippy::large_enum_variant)]
pub enum Applied<'a> {
    Done(Step),
    Waiting(Pin<Box<dyn Future<Output = Step> + Send + 'a>>),
}

impl Applied<'_> {
    pub async fn step(self) -> Step {
        match self {
            Applied::Done(step) => step,
            Applied::Waiting(future) => future.await,
        }
    }
}

/// A compiled transform of one snapshot.
pub trait Transform: Send + Sync {
    fn name(&self) -> &'static str;
    fn apply<'a>(&'a self, exchange: &'a mut Exchange<'_>) -> Applied<'a>;
    /// Whether it needs this request's body before it can act.
    fn needs_body(&self, _request: &OutboundRequest, _identity: &Identity) -> bool {
        false
    }
    /// How long it may wait on another service for this request, when it does.
    fn wait(&self, _request: &OutboundRequest) -> Option<Duration> {
        None
    }
    /// The secret sources it reads, for cache refreshes.
    fn sources(&self) -> Vec<Arc<CompiledSource>> {
        Vec::new()
    }
    /// Whether it may put a credential on this request (whose echo the response is then
    /// scrubbed of).
    fn may_put_credential(&self, _request: &OutboundRequest) -> bool {
        false
    }
    /// Whether it may put a credential on some request to this host and port, whatever
    /// its path and method (the facts' path and method are not read).
    fn may_put_credential_on_host(&self, _host: &crate::policy::RequestFacts<'_>) -> bool {
        false
    }
    /// Whether it is the policy engine's step.
    fn is_policy_engine(&self) -> bool {
        false
    }
    /// A rate limit, for reports of its use.
    fn rate_limit(&self) -> Option<&super::rate_limit::RateLimit> {
        None
    }
    /// A budget, for reports of its spending.
    fn budget(&self) -> Option<&super::budget::Budget> {
        None
    }
    /// Whether, when it applies, it reads this request's response (an LLM call's usage, a
    /// DLP inspection): Envoy must then be asked for the response when the request headers
    /// are answered, before the decision is known.
    fn watches_response(&self, _request: &OutboundRequest) -> bool {
        false
    }
}

/// An entry's required `config`, read as `C`; `missing` says what it must hold.
pub fn required_config<C: serde::de::DeserializeOwned>(
    config: Option<Value>,
    missing: &str,
) -> Result<C, Vec<FieldError>> {
    let config = config.ok_or_else(|| vec![FieldError::new("config", missing)])?;
    crate::vocab::from_value(config).map_err(|e| vec![e.under("config")])
}

/// An entry's optional `config`, read as `C` (its default when absent).
pub fn optional_config<C: serde::de::DeserializeOwned + Default>(
    config: Option<Value>,
) -> Result<C, Vec<FieldError>> {
    match config {
        Some(config) => crate::vocab::from_value(config).map_err(|e| vec![e.under("config")]),
        None => Ok(C::default()),
    }
}

/// A config's own validation problems, placed under `config`.
pub fn validated<C>(config: C, problems: Vec<FieldError>) -> Result<C, Vec<FieldError>> {
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems.into_iter().map(|e| e.under("config")).collect())
    }
}
