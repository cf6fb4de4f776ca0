//! The `budget` transform: LLM tokens (and, with a price table, money) per identity, tag
//! value or host per calendar window (hour, day, month, UTC). A request whose key has
//! spent its budget is refused before it leaves, with 429 `budget_exceeded` and
//! `Retry-After` the seconds until the window turns. An allowed LLM call's response is
//! read as it passes ([`crate::inspect::usage`]) and what it used is charged.
//!
//! Only LLM calls are metered (a POST to a path [`classify_path`] names); any other request
//! in scope passes untouched, its response unread. A metered call is asked for an
//! uncompressed answer (`accept-encoding: identity`), and an OpenAI-style streaming call
//! that did not ask for its usage (`stream_options.include_usage`) is made to — otherwise
//! the stream would carry none, and streaming would be a way around the budget.
//!
//! A budget is checked before a call, charged after it: calls already under way when the
//! budget runs out still finish (and are charged), so a key can overshoot by what its calls
//! in flight use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::kind::{
    Applied, CompileContext, Kind, Transform, TransformConfig, required_config, validated,
};
use super::rate_limit::LimitKey;
use super::{Annotations, Exchange, RefusalKind, Rejection, Step};
use crate::inspect::usage::Usage;
use crate::inspect::{ActionType, classify_path};
use crate::request::OutboundRequest;
use crate::secrets::SecretBytes;
use crate::vocab::FieldError;

pub(super) const KIND: Kind = Kind {
    name: "budget",
    parse: |_, config| {
        let config: BudgetConfig = required_config(
            config,
            "budget needs a `config` with `per` and `tokens` or `cost` (e.g. {per: day, \
             tokens: 200000})",
        )?;
        let problems = config.problems();
        Ok(Arc::new(validated(config, problems)?))
    },
};

/// Keys past which those of past windows are dropped.
const MAX_KEYS: usize = 100_000;

/// `config` of a `budget` entry.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// The window a budget is spent in: `hour`, `day` or `month`, in UTC.
    pub per: BudgetWindow,
    /// Tokens (input + output) a key may use per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// What a key may spend per window, priced with `prices`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    /// What is counted separately: `identity` (default), `tag:<prefix>`, `host`, `policy`
    /// or `global`.
    #[serde(default)]
    pub key: LimitKey,
    /// Prices per million tokens by model glob (`gpt-4o*`), first match first; a model no
    /// price matches is charged `default_price` when set, else nothing (its tokens still
    /// count against `tokens`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prices: Vec<Price>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_price: Option<PerMillion>,
}

/// The calendar window a budget is spent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetWindow {
    Hour,
    Day,
    Month,
}

/// What a million tokens cost, in and out.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PerMillion {
    pub input: f64,
    pub output: f64,
}

/// One line of the price table.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// A model name glob, as the provider reports the model (`claude-sonnet-*`).
    pub model: String,
    pub input: f64,
    pub output: f64,
}

impl BudgetConfig {
    fn problems(&self) -> Vec<FieldError> {
        let mut problems = Vec::new();
        match (self.tokens, self.cost) {
            (None, None) => problems.push(FieldError::new(
                "tokens",
                "a budget needs `tokens`, `cost`, or both",
            )),
            (Some(0), _) => problems.push(FieldError::new(
                "tokens",
                "0 tokens refuses every LLM call: use a deny policy for that",
            )),
            _ => {}
        }
        if let Some(cost) = self.cost {
            if !(cost.is_finite() && cost > 0.0) {
                problems.push(FieldError::new("cost", "must be a number above 0"));
            }
            if self.prices.is_empty() && self.default_price.is_none() {
                problems.push(FieldError::new(
                    "prices",
                    "a `cost` budget needs `prices` (or a `default_price`) to price tokens with",
                ));
            }
        }
        for (i, price) in self.prices.iter().enumerate() {
            if let Err(e) = model_glob(&price.model) {
                problems.push(FieldError::new(format!("prices[{i}].model"), e));
            }
            for (field, value) in [("input", price.input), ("output", price.output)] {
                if !(value.is_finite() && value >= 0.0) {
                    problems.push(FieldError::new(
                        format!("prices[{i}].{field}"),
                        "a price per million tokens: a number, 0 or more",
                    ));
                }
            }
        }
        if let Some(price) = self.default_price {
            for (field, value) in [("input", price.input), ("output", price.output)] {
                if !(value.is_finite() && value >= 0.0) {
                    problems.push(FieldError::new(
                        format!("default_price.{field}"),
                        "a price per million tokens: a number, 0 or more",
                    ));
                }
            }
        }
        problems
    }
}

fn model_glob(pattern: &str) -> Result<globset::GlobMatcher, String> {
    if pattern.trim().is_empty() {
        return Err("a model pattern must not be empty (`*` prices every model)".into());
    }
    globset::GlobBuilder::new(pattern)
        .literal_separator(false)
        .case_insensitive(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| {
            format!(
                "model pattern {pattern:?} is not a valid glob: {}",
                e.kind()
            )
        })
}

impl TransformConfig for BudgetConfig {
    fn name(&self) -> &'static str {
        KIND.name
    }

    fn must_precede_secrets(&self) -> Option<&'static str> {
        Some("the body it asks a stream's usage in would no longer be the body signed")
    }

    fn compile(&self, ctx: &CompileContext<'_>) -> Result<Box<dyn Transform>, Vec<FieldError>> {
        let prices = self
            .prices
            .iter()
            .map(|p| {
                model_glob(&p.model).map(|glob| {
                    (
                        glob,
                        PerMillion {
                            input: p.input,
                            output: p.output,
                        },
                    )
                })
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(|e| ctx.under_config(vec![FieldError::new("prices", e)]))?;
        Ok(Box::new(Budget {
            place: ctx.at.to_owned(),
            state: ctx.budgets.get(self),
            prices: Arc::new(PriceTable {
                prices,
                default: self.default_price,
            }),
            config: self.clone(),
        }))
    }
}

/// The price table, compiled.
struct PriceTable {
    prices: Vec<(globset::GlobMatcher, PerMillion)>,
    default: Option<PerMillion>,
}

impl PriceTable {
    /// What `usage` cost; `None` when no price applies.
    fn cost(&self, usage: &Usage) -> Option<f64> {
        let model = usage.model.as_deref().unwrap_or("");
        let price = self
            .prices
            .iter()
            .find(|(glob, _)| glob.is_match(model))
            .map(|(_, price)| *price)
            .or(self.default)?;
        Some(
            (usage.input_tokens as f64 * price.input + usage.output_tokens as f64 * price.output)
                / 1_000_000.0,
        )
    }
}

/// A key's spending in one window.
#[derive(Debug, Clone, Copy, Default)]
struct Spent {
    window: u64,
    tokens: u64,
    cost: f64,
}

/// What every key of one budget spent.
pub(crate) struct BudgetState {
    per: BudgetWindow,
    spent: Mutex<HashMap<String, Spent>>,
}

impl BudgetState {
    fn new(config: &BudgetConfig) -> BudgetState {
        BudgetState {
            per: config.per,
            spent: Mutex::new(HashMap::new()),
        }
    }

    /// What `key` spent in the window `now` is in.
    fn spent(&self, key: &str, now: SystemTime) -> Spent {
        let window = window_of(self.per, now).0;
        let spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        match spent.get(key) {
            Some(s) if s.window == window => *s,
            _ => Spent {
                window,
                ..Spent::default()
            },
        }
    }

    /// Adds to what `key` spent this window; the totals after.
    fn charge(&self, key: &str, tokens: u64, cost: f64, now: SystemTime) -> Spent {
        let window = window_of(self.per, now).0;
        let mut spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        if spent.len() >= MAX_KEYS && !spent.contains_key(key) {
            spent.retain(|_, s| s.window == window);
        }
        let entry = spent.entry(key.to_owned()).or_default();
        if entry.window != window {
            *entry = Spent {
                window,
                ..Spent::default()
            };
        }
        entry.tokens = entry.tokens.saturating_add(tokens);
        entry.cost += cost;
        *entry
    }
}

/// The window `now` is in: its number (hours, days or months since 1970) and when it ends.
fn window_of(per: BudgetWindow, now: SystemTime) -> (u64, SystemTime) {
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
    match per {
        BudgetWindow::Hour => (secs / 3600, at((secs / 3600 + 1) * 3600)),
        BudgetWindow::Day => (secs / 86_400, at((secs / 86_400 + 1) * 86_400)),
        BudgetWindow::Month => {
            let (year, month) = civil_month(secs / 86_400);
            let index = year * 12 + (month - 1);
            let (next_year, next_month) = if month == 12 {
                (year + 1, 1)
            } else {
                (year, month + 1)
            };
            (index, at(days_from_civil(next_year, next_month) * 86_400))
        }
    }
}

/// The year and month (1-12) of a day counted from 1970-01-01 (Howard Hinnant's
/// civil-from-days).
fn civil_month(days: u64) -> (u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month)
}

/// The day (from 1970-01-01) a month starts on.
fn days_from_civil(year: u64, month: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The spending of every budget, by the budget's whole config: a reload that keeps a
/// budget keeps what was spent.
#[derive(Default)]
pub struct BudgetStates(super::state::StatesByConfig<BudgetState>);

impl BudgetStates {
    fn get(&self, config: &BudgetConfig) -> Arc<BudgetState> {
        self.0.get(config, BudgetState::new)
    }
}

/// A compiled `budget` entry.
pub struct Budget {
    /// `transforms[N]`.
    place: String,
    state: Arc<BudgetState>,
    prices: Arc<PriceTable>,
    pub config: BudgetConfig,
}

/// What charges an allowed LLM call's usage to its key once its response is read.
#[derive(Clone)]
pub struct Meter {
    pub budget: Arc<str>,
    pub key: String,
    state: Arc<BudgetState>,
    prices: Arc<PriceTable>,
    tokens: Option<u64>,
    cost: Option<f64>,
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter")
            .field("budget", &self.budget)
            .field("key", &self.key)
            .finish()
    }
}

/// One charge: what a call used, what it cost, and the key's totals after it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Charge {
    pub budget: Arc<str>,
    pub key: String,
    #[serde(flatten)]
    pub usage: Usage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    pub window_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_cost: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_budget: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_budget: Option<f64>,
}

impl Meter {
    /// Charges what the response said it used.
    pub fn charge(&self, usage: Usage) -> Charge {
        let cost = self.prices.cost(&usage);
        let after = self.state.charge(
            &self.key,
            usage.total(),
            cost.unwrap_or(0.0),
            SystemTime::now(),
        );
        Charge {
            budget: self.budget.clone(),
            key: self.key.clone(),
            usage,
            cost,
            window_tokens: after.tokens,
            window_cost: self.cost.map(|_| after.cost),
            tokens_budget: self.tokens,
            cost_budget: self.cost,
        }
    }
}

/// One key's spending now, for reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeySpent {
    pub key: String,
    pub tokens: u64,
    pub cost: f64,
}

impl Budget {
    /// The `top` keys that spent most this window, most first.
    pub fn spending(&self, top: usize) -> Vec<KeySpent> {
        let window = window_of(self.state.per, SystemTime::now()).0;
        let spent = self.state.spent.lock().unwrap_or_else(|e| e.into_inner());
        let mut keys: Vec<KeySpent> = spent
            .iter()
            .filter(|(_, s)| s.window == window)
            .map(|(key, s)| KeySpent {
                key: key.clone(),
                tokens: s.tokens,
                cost: s.cost,
            })
            .collect();
        keys.sort_by(|a, b| b.tokens.cmp(&a.tokens).then_with(|| a.key.cmp(&b.key)));
        keys.truncate(top);
        keys
    }

    /// When the current window ends (RFC 3339).
    pub fn window_ends(&self) -> String {
        humantime::format_rfc3339_seconds(window_of(self.state.per, SystemTime::now()).1)
            .to_string()
    }

    pub fn place(&self) -> &str {
        &self.place
    }

    fn over(&self, spent: &Spent) -> Option<String> {
        if let Some(tokens) = self.config.tokens
            && spent.tokens >= tokens
        {
            return Some(format!("{} of {tokens} tokens used", spent.tokens));
        }
        if let Some(cost) = self.config.cost
            && spent.cost >= cost
        {
            return Some(format!("{:.4} of {cost} spent", spent.cost));
        }
        None
    }
}

/// Whether the request is an LLM call whose answer reports usage.
fn is_llm_call(request: &OutboundRequest) -> bool {
    matches!(
        classify_path(request.method, &request.path),
        Some(ActionType::ChatCompletion | ActionType::Embedding)
    )
}

/// An OpenAI-style streaming chat call that did not ask for its usage: the body asking
/// for it (`stream_options.include_usage: true`); `None` to leave the body as it is.
fn with_stream_usage(request: &OutboundRequest, body: &[u8]) -> Option<Vec<u8>> {
    let path = request.path.trim_end_matches('/');
    if !(path.ends_with("/chat/completions") || path.ends_with("/v1/completions")) {
        return None;
    }
    let mut document: serde_json::Value = serde_json::from_slice(body).ok()?;
    let object = document.as_object_mut()?;
    if object.get("stream") != Some(&serde_json::Value::Bool(true)) {
        return None;
    }
    let options = object
        .entry("stream_options")
        .or_insert_with(|| serde_json::json!({}));
    let options = options.as_object_mut()?;
    if options.get("include_usage") == Some(&serde_json::Value::Bool(true)) {
        return None;
    }
    options.insert("include_usage".into(), serde_json::Value::Bool(true));
    serde_json::to_vec(&document).ok()
}

impl Transform for Budget {
    fn name(&self) -> &'static str {
        KIND.name
    }

    fn needs_body(&self, request: &OutboundRequest, _: &crate::identity::Identity) -> bool {
        is_llm_call(request) && request.path.trim_end_matches('/').ends_with("completions")
    }

    fn watches_response(&self, request: &OutboundRequest) -> bool {
        is_llm_call(request)
    }

    fn budget(&self) -> Option<&Budget> {
        Some(self)
    }

    fn apply<'a>(&'a self, exchange: &'a mut Exchange<'_>) -> Applied<'a> {
        if !is_llm_call(exchange.request) {
            return Applied::Done(Step::Continue(Annotations::default()));
        }
        let key = super::rate_limit::key_of(&self.config.key, exchange);
        let now = SystemTime::now();
        let spent = self.state.spent(&key, now);
        if let Some(over) = self.over(&spent) {
            let ends = window_of(self.state.per, now).1;
            let wait = ends.duration_since(now).unwrap_or_default();
            let retry_after = super::rate_limit::whole_seconds(wait);
            let counted = self.config.key.counted(&key);
            let mut rejection = Rejection::new(
                RefusalKind::BudgetExceeded,
                "budget_exceeded",
                format!(
                    "LLM budget spent for {counted} this {}: {over}; it renews at {}",
                    window_name(self.state.per),
                    humantime::format_rfc3339_seconds(ends)
                ),
                KIND.name,
            );
            rejection.retry_after = Some(retry_after.max(1));
            return Applied::Done(Step::Reject(
                rejection,
                Annotations {
                    reason: Some("budget_exceeded"),
                    ..Annotations::default()
                },
            ));
        }
        if !exchange.preview {
            exchange.meter = Some(Meter {
                budget: Arc::from(self.place.as_str()),
                key,
                state: self.state.clone(),
                prices: self.prices.clone(),
                tokens: self.config.tokens,
                cost: self.config.cost,
            });
        }
        // An answer compressed is an answer whose usage cannot be read.
        exchange.mutations.set(
            "accept-encoding",
            crate::secrets::SecretValue::new("identity"),
        );
        if exchange.mutations.body.is_none()
            && let Some(body) = exchange.body
            && let Some(rewritten) = with_stream_usage(exchange.request, body.bytes())
        {
            exchange.mutations.body = Some(SecretBytes::new(rewritten));
        }
        Applied::Done(Step::Continue(Annotations::default()))
    }
}

fn window_name(per: BudgetWindow) -> &'static str {
    match per {
        BudgetWindow::Hour => "hour",
        BudgetWindow::Day => "day",
        BudgetWindow::Month => "month",
    }
}

#[cfg(test)]
mod tests;
