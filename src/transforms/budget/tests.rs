use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::transforms::test_support::{config_errors, request, snapshot};
use crate::vocab::Tag;

fn at(rfc3339: &str) -> SystemTime {
    humantime::parse_rfc3339(rfc3339).unwrap()
}

#[test]
fn windows_are_utc_hours_days_and_calendar_months() {
    let now = at("2026-12-31T23:59:30Z");
    let (_, hour_ends) = window_of(BudgetWindow::Hour, now);
    assert_eq!(hour_ends, at("2027-01-01T00:00:00Z"));
    let (_, day_ends) = window_of(BudgetWindow::Day, now);
    assert_eq!(day_ends, at("2027-01-01T00:00:00Z"));
    let (december, month_ends) = window_of(BudgetWindow::Month, now);
    assert_eq!(month_ends, at("2027-01-01T00:00:00Z"));
    let (january, _) = window_of(BudgetWindow::Month, at("2027-01-01T00:00:00Z"));
    assert_eq!(january, december + 1);
    // February of a leap year, and of a year that is not.
    assert_eq!(
        window_of(BudgetWindow::Month, at("2028-02-10T00:00:00Z")).1,
        at("2028-03-01T00:00:00Z")
    );
    assert_eq!(
        window_of(BudgetWindow::Month, at("2027-02-28T23:00:00Z")).1,
        at("2027-03-01T00:00:00Z")
    );
    for days in [0u64, 59, 365, 10_000, 20_000, 40_000] {
        let (year, month) = civil_month(days);
        let start = days_from_civil(year, month);
        assert!(start <= days && days - start < 31, "{days}");
    }
    let _ = UNIX_EPOCH;
}

fn usage(input: u64, output: u64, model: &str) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        model: Some(model.into()),
    }
}

#[test]
fn prices_match_model_globs_first_first_and_fall_back_to_the_default() {
    let table = PriceTable {
        prices: vec![
            (
                model_glob("gpt-4o-mini*").unwrap(),
                PerMillion {
                    input: 0.15,
                    output: 0.6,
                },
            ),
            (
                model_glob("gpt-4o*").unwrap(),
                PerMillion {
                    input: 2.5,
                    output: 10.0,
                },
            ),
        ],
        default: None,
    };
    let cost = |u: &Usage| table.cost(u).map(|c| (c * 1e6).round() / 1e6);
    assert_eq!(cost(&usage(1_000_000, 0, "gpt-4o-2024-08-06")), Some(2.5));
    assert_eq!(
        cost(&usage(1_000_000, 1_000_000, "GPT-4o-mini")),
        Some(0.75)
    );
    assert_eq!(cost(&usage(10, 10, "claude-3")), None);
}

const CONFIG: &str = "policies:\n  - {name: api, action: allow, rules: [{host: '*'}]}\n\
                      transforms:\n  - allowlist\n  - BUDGET\n";

fn with(budget: &str) -> String {
    CONFIG.replace("BUDGET", budget)
}

#[tokio::test]
async fn a_spent_budget_refuses_llm_calls_with_429_until_the_window_turns() {
    let snapshot = snapshot(&with(
        "{name: budget, config: {per: day, tokens: 100, key: 'tag:team'}}",
    ));
    let call = request("POST https://api.openai.com/v1/chat/completions", &[]);
    let team = |t: &str| vec![Tag::try_from(t.to_owned()).unwrap()];
    let decided = snapshot.decide(&call, &team("team:ml"), Some(b"{}")).await;
    assert!(decided.outcome.rejection.is_none());
    let meter = decided.outcome.response.meter.expect("the call is metered");
    assert_eq!(meter.key, "team:ml");
    // The call asks for an answer it can read.
    assert!(
        decided
            .outcome
            .mutations
            .set
            .iter()
            .any(|(name, value)| name == "accept-encoding" && value.expose() == "identity")
    );
    let charge = meter.charge(usage(60, 50, "gpt-4o"));
    assert_eq!(charge.window_tokens, 110);
    assert_eq!(charge.tokens_budget, Some(100));
    let refused = snapshot.decide(&call, &team("team:ml"), Some(b"{}")).await;
    let rejection = refused.outcome.rejection.expect("over budget");
    assert_eq!(rejection.status, 429);
    assert_eq!(rejection.kind, RefusalKind::BudgetExceeded);
    assert_eq!(rejection.reason, "budget_exceeded");
    assert!(
        rejection.message.contains("110 of 100 tokens"),
        "{}",
        rejection.message
    );
    let retry = rejection.retry_after.unwrap();
    assert!((1..=86_400).contains(&retry), "{retry}");
    // Another team has its own budget; what is not an LLM call is not metered at all.
    let other = snapshot.decide(&call, &team("team:web"), Some(b"{}")).await;
    assert!(other.outcome.rejection.is_none());
    let page = request("GET https://api.openai.com/v1/models", &[]);
    let listed = snapshot.decide(&page, &team("team:ml"), None).await;
    assert!(listed.outcome.rejection.is_none());
    assert!(listed.outcome.response.meter.is_none());
}

#[tokio::test]
async fn a_stream_that_did_not_ask_for_its_usage_is_made_to() {
    let snapshot = snapshot(&with("{name: budget, config: {per: hour, tokens: 1000}}"));
    let call = request("POST https://api.openai.com/v1/chat/completions", &[]);
    let streaming = br#"{"model":"gpt-4o","stream":true,"messages":[]}"#;
    let decided = snapshot.decide(&call, &[], Some(streaming)).await;
    let body = decided
        .outcome
        .mutations
        .body
        .expect("the body is rewritten");
    let body: serde_json::Value = serde_json::from_slice(body.expose()).unwrap();
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(body["model"], "gpt-4o");
    // Asked already, or not streaming: the body is left as it is.
    for body in [
        &br#"{"stream":true,"stream_options":{"include_usage":true}}"#[..],
        br#"{"stream":false}"#,
        br#"not json"#,
    ] {
        let decided = snapshot.decide(&call, &[], Some(body)).await;
        assert!(decided.outcome.mutations.body.is_none());
    }
    // Anthropic and Gemini streams report usage without being asked.
    let anthropic = request("POST https://api.anthropic.com/v1/messages", &[]);
    let decided = snapshot
        .decide(&anthropic, &[], Some(br#"{"stream":true}"#))
        .await;
    assert!(decided.outcome.mutations.body.is_none());
}

#[tokio::test]
async fn a_cost_budget_prices_usage() {
    let snapshot = snapshot(&with(
        "{name: budget, config: {per: month, cost: 1.0, \
         prices: [{model: 'claude-*', input: 3, output: 15}]}}",
    ));
    let call = request("POST https://api.anthropic.com/v1/messages", &[]);
    let decided = snapshot.decide(&call, &[], Some(b"{}")).await;
    let meter = decided.outcome.response.meter.unwrap();
    let charge = meter.charge(usage(100_000, 50_000, "claude-sonnet-4"));
    assert_eq!(
        charge.cost.map(|c| (c * 1000.0).round() / 1000.0),
        Some(1.05)
    );
    let refused = snapshot.decide(&call, &[], Some(b"{}")).await;
    let rejection = refused.outcome.rejection.expect("over the cost budget");
    assert!(
        rejection.message.contains("1.0500 of 1 spent"),
        "{}",
        rejection.message
    );
}

#[test]
fn bad_budgets_are_refused_with_their_field_paths() {
    let errors = config_errors(&with("{name: budget, config: {per: week, tokens: 5}}"));
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("transforms[1].config.per")),
        "{errors:?}"
    );
    let errors = config_errors(&with("{name: budget, config: {per: day}}"));
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("transforms[1].config.tokens")),
        "{errors:?}"
    );
    let errors = config_errors(&with("{name: budget, config: {per: day, cost: 5}}"));
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("transforms[1].config.prices")),
        "{errors:?}"
    );
    let errors = config_errors(&with(
        "{name: budget, config: {per: day, cost: 5, prices: [{model: '[', input: 1, output: 1}]}}",
    ));
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("transforms[1].config.prices[0].model")),
        "{errors:?}"
    );
    let errors = config_errors(
        "transforms:\n  - allowlist\n  - secrets\n  - {name: budget, config: {per: day, tokens: 5}}\n",
    );
    assert!(
        errors.iter().any(|e| e.contains("before `secrets`")),
        "{errors:?}"
    );
    let _ = Duration::ZERO;
}
