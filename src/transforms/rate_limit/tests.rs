use std::time::{Duration, Instant};

use super::*;
use crate::transforms::test_support::{config_errors, request, snapshot};
use crate::vocab::Tag;

fn limit(requests: u32, per: u64, burst: Option<u32>) -> LimitConfig {
    LimitConfig {
        requests,
        per: DurationText(Duration::from_secs(per)),
        burst,
        key: LimitKey::Identity,
        redis: None,
    }
}

#[test]
fn a_bucket_lets_its_burst_through_then_refills_at_the_rate() {
    // 60 a minute, 3 at once.
    let state = LimitState::new(&limit(60, 60, Some(3)));
    let start = Instant::now();
    for left in [2, 1, 0] {
        assert_eq!(state.take("a", start), Ok(left));
    }
    let wait = state.take("a", start).unwrap_err();
    assert!(
        wait > Duration::from_millis(990) && wait <= Duration::from_secs(1),
        "{wait:?}"
    );
    // Another key has its own bucket.
    assert_eq!(state.take("b", start), Ok(2));
    // A second later there is one token, not more.
    let later = start + Duration::from_secs(1);
    assert!(state.take("a", later).is_ok());
    assert!(state.take("a", later).is_err());
    // Refilled for long, a bucket holds its burst, never more.
    let much_later = start + Duration::from_secs(3600);
    for _ in 0..3 {
        assert!(state.take("a", much_later).is_ok());
    }
    assert!(state.take("a", much_later).is_err());
}

#[test]
fn past_the_key_cap_refilled_buckets_are_dropped_and_spent_ones_kept() {
    let state = LimitState::new(&limit(1, 3600, None));
    let now = Instant::now();
    assert!(state.take("spent", now).is_ok());
    for n in 1..MAX_KEYS {
        // Each of these takes its only token.
        let _ = state.take(&format!("k{n}"), now);
    }
    // An hour on, every bucket has refilled: the next new key, at the cap, sweeps them.
    let hour = now + Duration::from_secs(3600);
    assert!(state.take("newcomer", hour).is_ok());
    let kept = state.buckets.lock().unwrap().by_key.len();
    assert_eq!(kept, 1, "only the newcomer's bucket remains");
    // Spent buckets are not swept: a flood of new keys cannot reset a limited one.
    let state = LimitState::new(&limit(1, 3600, None));
    assert!(state.take("limited", now).is_ok());
    for n in 0..MAX_KEYS {
        let _ = state.take(&format!("k{n}"), now);
    }
    assert!(state.take("limited", now).is_err());
}

const CONFIG: &str = "policies:\n  - {name: api, action: allow, rules: [{host: '*'}]}\n\
                      transforms:\n  - allowlist\n  - LIMIT\n";

fn with(limit: &str) -> String {
    CONFIG.replace("LIMIT", limit)
}

#[tokio::test]
async fn a_spent_limit_refuses_with_429_and_retry_after_per_key() {
    let snapshot = snapshot(&with(
        "{name: rate_limit, config: {requests: 2, per: 1m, key: host}}",
    ));
    let get = |url: &str| request(&format!("GET {url}"), &[]);
    for _ in 0..2 {
        let passed = snapshot
            .decide(&get("https://a.example.com/"), &[], None)
            .await;
        assert!(passed.outcome.rejection.is_none());
    }
    let refused = snapshot
        .decide(&get("https://a.example.com/x"), &[], None)
        .await;
    let rejection = refused.outcome.rejection.expect("the third is refused");
    assert_eq!(rejection.status, 429);
    assert_eq!(rejection.kind, RefusalKind::RateLimited);
    assert_eq!(rejection.reason, "rate_limited");
    assert_eq!(rejection.transform, "rate_limit");
    // One token every 30 s.
    let retry = rejection.retry_after.unwrap();
    assert!((29..=30).contains(&retry), "{retry}");
    assert!(
        rejection.message.contains("host \"a.example.com\""),
        "{}",
        rejection.message
    );
    // Another host has its own bucket.
    let other = snapshot
        .decide(&get("https://b.example.com/"), &[], None)
        .await;
    assert!(other.outcome.rejection.is_none());
}

#[tokio::test]
async fn a_tag_key_counts_each_value_and_a_scope_limits_only_its_requests() {
    let snapshot = snapshot(&with(
        "{name: rate_limit, rules: [{host: api.example.com}], \
         config: {requests: 1, per: 1h, key: 'tag:team'}}",
    ));
    let api = request("GET https://api.example.com/", &[]);
    let team = |t: &str| vec![Tag::try_from(t.to_owned()).unwrap()];
    let decide = |tags: Vec<Tag>| {
        let snapshot = &snapshot;
        let api = &api;
        async move { snapshot.decide(api, &tags, None).await.outcome.rejection }
    };
    assert!(decide(team("team:ml")).await.is_none());
    assert!(decide(team("team:ml")).await.is_some());
    assert!(decide(team("team:web")).await.is_none(), "another team");
    // Untagged requests share one bucket.
    assert!(decide(Vec::new()).await.is_none());
    assert!(decide(Vec::new()).await.is_some());
    // Outside the scope, nothing is counted.
    let elsewhere = request("GET https://docs.example.com/", &[]);
    for _ in 0..3 {
        let decided = snapshot.decide(&elsewhere, &team("team:ml"), None).await;
        assert!(decided.outcome.rejection.is_none());
    }
}

#[test]
fn a_reload_keeping_the_limit_keeps_its_buckets() {
    let states = LimitStates::default();
    let config = limit(1, 3600, None);
    let first = states.get(&config);
    assert!(first.take("a", Instant::now()).is_ok());
    let again = states.get(&config);
    assert!(again.take("a", Instant::now()).is_err(), "the same buckets");
    let changed = states.get(&limit(2, 3600, None));
    assert!(
        changed.take("a", Instant::now()).is_ok(),
        "a new limit starts afresh"
    );
}

#[test]
fn every_config_problem_is_placed() {
    assert_eq!(
        config_errors(&with(
            "{name: rate_limit, config: {requests: 0, per: 0s, burst: 0}}"
        )),
        [
            "transforms[1].config.requests: 0 requests refuses everything: use a deny policy for that",
            "transforms[1].config.per: 0s is out of range: between 1s and 31d",
            "transforms[1].config.burst: a burst of 0 lets nothing through: at least 1",
        ]
    );
    let errors = config_errors(&with(
        "{name: rate_limit, config: {requests: 1, per: 1s, key: 'tag:'}}",
    ));
    assert!(
        errors[0].starts_with("transforms[1].config.key: unknown key \"tag:\""),
        "{errors:?}"
    );
    assert_eq!(
        config_errors(&with("rate_limit")),
        [
            "transforms[1].config: rate_limit needs a `config` with `requests` and `per` (e.g. {requests: 60, per: 1m})"
        ]
    );
}
