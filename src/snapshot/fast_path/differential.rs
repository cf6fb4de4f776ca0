//! The fast path's agreement with Portcullis, at the engine: random policy sets and random
//! requests, each decided by the route Envoy would take ([`Snapshot::fast_route`]) and by
//! the full decision ([`Snapshot::decide`], what ext_proc runs). Wherever a route decides,
//! both must give the same decision by the same rule. The suite through the real Envoy is
//! `tests/integration/fast_path.rs`.

use super::*;
use crate::policy::{Decision, RuleRef};
use crate::transforms::test_support::{request, snapshot};

/// A small deterministic generator (xorshift): the same seed, the same cases.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const HOSTS: [&str; 6] = ["a.test", "b.test", "a.test:8080", "*.test", "b.*", "c.test"];
const PATHS: [&str; 7] = [
    "",
    "[/v1/*]",
    "[/v1/x]",
    "[/v2/*, /v1/a]",
    "[\"/v[12]/*\"]",
    "[/]",
    "[/v1]",
];
const METHODS: [&str; 5] = ["", "[GET]", "[GET, POST]", "[DELETE]", "[CONNECT, GET]"];
const ACTIONS: [&str; 5] = ["allow", "deny", "flag", "allow", "deny"];

/// A random config of `count` policies.
fn random_config(dice: &mut Dice, count: usize) -> String {
    let mut yaml = format!(
        "default_action: {}\npolicies:\n",
        if dice.chance(80) { "deny" } else { "allow" }
    );
    for i in 0..count {
        let mut rule = format!("host: \"{}\"", dice.pick(&HOSTS));
        let paths = dice.pick(&PATHS);
        if !paths.is_empty() {
            rule.push_str(&format!(", paths: {paths}"));
        }
        let methods = dice.pick(&METHODS);
        if !methods.is_empty() {
            rule.push_str(&format!(", methods: {methods}"));
        }
        if dice.chance(10) {
            rule.push_str(", headers: [{name: x-team, present: true}]");
        }
        let mut policy = format!(
            "  - {{name: p{i}, priority: {}, action: {}",
            dice.next() % 4,
            dice.pick(&ACTIONS)
        );
        if dice.chance(10) {
            policy.push_str(", warn: true");
        }
        if dice.chance(10) {
            policy.push_str(", match_tags: [env:ci]");
        } else if dice.chance(10) {
            policy.push_str(", match_tags: [listener:fp]");
        }
        policy.push_str(&format!(", rules: [{{{rule}}}]}}\n"));
        yaml.push_str(&policy);
    }
    yaml
}

/// A random request line and headers.
fn random_request(dice: &mut Dice) -> (String, Vec<(&'static str, &'static str)>) {
    let method = dice.pick(&["GET", "POST", "DELETE", "PUT", "PROPFIND", "GET"]);
    let host = dice.pick(&[
        "a.test",
        "b.test",
        "c.test",
        "a.test:8080",
        "d.test",
        "b.example",
    ]);
    let path = dice.pick(&[
        "/", "/v1/x", "/v1/a", "/v2/b", "/v1", "/v10", "/v1/x/y", "", "/v1/%78", "/v1/./x",
    ]);
    let mut headers = Vec::new();
    if dice.chance(10) {
        headers.push(("x-team", "red"));
    }
    (format!("{method} http://{host}{path}"), headers)
}

/// What the two paths said about one request, when they disagree.
fn disagreement(
    snapshot: &Snapshot,
    route: &RouteAction,
    decided: &crate::snapshot::Decided,
) -> Option<String> {
    let outcome = &decided.outcome;
    let by = outcome.verdict.and_then(|v| v.decided_by);
    let (decision, rule): (Decision, Option<RuleRef>) = match route {
        RouteAction::Allow { rule, flag } => (
            if *flag {
                Decision::Flagged
            } else {
                Decision::Allowed
            },
            Some(*rule),
        ),
        RouteAction::Deny { rule } => (Decision::Denied, *rule),
        RouteAction::Processor { .. } => return None,
    };
    let name =
        |r: Option<RuleRef>| r.map(|r| (snapshot.policies.policy(r.policy).name.clone(), r.rule));
    (outcome.decision != decision || by != rule).then(|| {
        format!(
            "route says {decision:?} by {:?}, Portcullis {:?} by {:?} ({:?})",
            name(rule),
            outcome.decision,
            name(by),
            outcome.rejection.as_ref().map(|r| r.reason),
        )
    })
}

/// Runs `sets` random policy sets of `policies` each against `requests` random requests,
/// with `route` standing for the table; returns (cases decided by a route, disagreements).
async fn run(
    seed: u64,
    sets: usize,
    requests: usize,
    route: impl Fn(&Snapshot, &crate::request::OutboundRequest) -> Result<RouteAction, String>,
) -> (usize, Vec<String>) {
    let mut dice = Dice(seed);
    let mut decided_by_route = 0;
    let mut wrong = Vec::new();
    for _ in 0..sets {
        let count = 1 + (dice.next() % 8) as usize;
        let yaml = random_config(&mut dice, count);
        let snapshot = snapshot(&yaml);
        for _ in 0..requests {
            let (line, headers) = random_request(&mut dice);
            let request = request(&line, &headers);
            let Ok(action) = route(&snapshot, &request) else {
                continue;
            };
            if matches!(action, RouteAction::Processor { .. }) {
                continue;
            }
            decided_by_route += 1;
            let decided = snapshot.decide(&request, &listener(), None).await;
            if let Some(why) = disagreement(&snapshot, &action, &decided) {
                wrong.push(format!("{line} {headers:?}\n{yaml}{why}"));
            }
        }
    }
    (decided_by_route, wrong)
}

fn listener() -> Vec<crate::vocab::Tag> {
    vec![crate::vocab::Tag::parse("listener:fp").unwrap()]
}

#[tokio::test]
async fn routes_agree_with_the_full_decision_on_random_policy_sets() {
    let (decided, wrong) = run(0x5eed_f457, 400, 25, |s, r| s.fast_route(r, &listener())).await;
    assert!(
        wrong.is_empty(),
        "{} disagreements, first:\n{}",
        wrong.len(),
        wrong[0]
    );
    // A good share of the cases is decided by a route: the test exercises them.
    assert!(
        decided > 2000,
        "only {decided} of 10000 cases were decided by a route"
    );
}

#[tokio::test]
async fn a_table_that_skips_a_rule_is_caught() {
    // The seeded fault: routes built as if the first rule for the host were missing,
    // which changes the answer wherever that rule decides.
    let faulty = |s: &Snapshot, r: &crate::request::OutboundRequest| {
        let tags = s.anonymous_tags(&listener())?;
        let mut routes = s.host_routes(&tags, &r.host, r.port);
        if routes.routes.len() > 1 {
            routes.routes.remove(0);
        }
        s.fast_route(r, &listener())?;
        routes
            .route(&r.path, r.method)
            .map(|route| route.action.clone())
            .ok_or_else(|| "no route".into())
    };
    let (_, wrong) = run(0x5eed_f457, 400, 25, faulty).await;
    assert!(!wrong.is_empty(), "the seeded fault went unnoticed");
}
