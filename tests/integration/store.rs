//! The policy store, one suite run against both backends: SQLite in a temp file and a real
//! PostgreSQL (a fresh database per run, dropped afterwards). `scripts/postgres` starts the
//! server when it is not running; `PORTCULLIS_TEST_POSTGRES` names another one.

use portcullis::policy::rule::Tag;
use portcullis::policy::{PolicyConfig, PolicyStatus};
use portcullis::store::audit::{AuditEvent, AuditQuery};
use portcullis::store::{Change, Operation, Store, StoreError, diff};
use portcullis::transforms::SecretConfig;
use secrecy::ExposeSecret;

use crate::common::postgres::TestDatabase;

fn policy(yaml: &str) -> PolicyConfig {
    serde_norway::from_str(yaml).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// What every backend must do.
async fn suite(store: &Store) {
    policies(store).await;
    secrets(store).await;
    tokens(store).await;
    audit(store).await;
    contents(store).await;
}

async fn policies(store: &Store) {
    let policies = store.policies();
    let alice = Change::by("alice", "first cut");
    let p1 =
        policy("{name: ci-npm, priority: 10, action: allow, rules: [{host: registry.npmjs.org}]}");
    assert_eq!(policies.create(&p1, &alice).await.unwrap(), 1);
    assert!(matches!(
        policies.create(&p1, &alice).await,
        Err(StoreError::Exists { kind: "policy", .. })
    ));

    // Update with the version read: 2. With a stale version: 409-style error, nothing
    // written.
    let mut p2 = p1.clone();
    p2.priority = 5;
    assert_eq!(
        policies
            .update(1, &p2, &Change::by("bob", "tighten"))
            .await
            .unwrap(),
        2
    );
    let mut p3 = p1.clone();
    p3.priority = 99;
    match policies.update(1, &p3, &Change::by("carol", "late")).await {
        Err(StoreError::Stale {
            expected: 1,
            live: 2,
            ..
        }) => {}
        other => panic!("expected a stale-version error, got {other:?}"),
    }
    assert_eq!(policies.get("ci-npm").await.unwrap().definition.priority, 5);

    // Invalid input changes nothing.
    let mut bad = p2.clone();
    bad.rules.clear();
    match policies.update(2, &bad, &alice).await {
        Err(StoreError::Invalid(errors)) => assert_eq!(errors[0].path, "rules"),
        other => panic!("expected invalid, got {other:?}"),
    }
    assert_eq!(policies.get("ci-npm").await.unwrap().version, 2);

    // Disable keeps it listed; enable brings it back.
    assert_eq!(policies.disable("ci-npm", 2, &alice).await.unwrap(), 3);
    let listed = policies.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].definition.status, PolicyStatus::Disabled);
    assert_eq!(policies.enable("ci-npm", 3, &alice).await.unwrap(), 4);

    // History and diff; rollback is a new version equal to an earlier one.
    let history = policies.history("ci-npm").await.unwrap();
    let operations: Vec<Operation> = history.iter().map(|v| v.operation).collect();
    assert_eq!(
        operations,
        [
            Operation::Create,
            Operation::Update,
            Operation::Disable,
            Operation::Enable
        ]
    );
    assert_eq!(history[1].operator, "bob");
    assert_eq!(history[1].reason, "tighten");
    let changes = diff(
        &serde_json::to_value(&history[0].definition).unwrap(),
        &serde_json::to_value(&history[1].definition).unwrap(),
    );
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].path, "priority");
    assert_eq!(
        policies
            .rollback("ci-npm", 1, Some(4), &alice)
            .await
            .unwrap(),
        5
    );
    let live = policies.get("ci-npm").await.unwrap();
    assert_eq!((live.version, live.definition.priority), (5, 10));
    assert_eq!(live.definition, history[0].definition);
    assert!(matches!(
        policies.rollback("ci-npm", 42, None, &alice).await,
        Err(StoreError::NoSuchVersion { version: 42, .. })
    ));
    assert!(matches!(
        policies.rollback("ci-npm", 1, Some(4), &alice).await,
        Err(StoreError::Stale { live: 5, .. })
    ));

    // Delete: gone from the live set, not from history; the name can be reused.
    assert_eq!(policies.delete("ci-npm", 5, &alice).await.unwrap(), 6);
    assert!(policies.list().await.unwrap().is_empty());
    assert!(matches!(
        policies.get("ci-npm").await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(policies.history("ci-npm").await.unwrap().len(), 6);
    assert_eq!(policies.create(&p1, &alice).await.unwrap(), 7);

    // Concurrent writers on the same version: exactly one wins.
    let (w1, w2) = (Change::by("w1", "race"), Change::by("w2", "race"));
    let (a, b) = tokio::join!(policies.update(7, &p2, &w1), policies.update(7, &p3, &w2));
    assert_eq!(
        [a.is_ok(), b.is_ok()].iter().filter(|ok| **ok).count(),
        1,
        "{a:?} {b:?}"
    );
    assert_eq!(policies.get("ci-npm").await.unwrap().version, 8);
    assert_eq!(policies.history("ci-npm").await.unwrap().len(), 8);
}

async fn secrets(store: &Store) {
    let secrets = store.secrets();
    let change = Change::by("alice", "github for ci");
    let github: SecretConfig = serde_norway::from_str(
        "{name: github, match_tags: [env:ci], rules: [{host: api.github.com}], \
          source: {type: vault, address: 'http://vault:8200', path: ci/github, ttl: 1m, \
                   token: {type: env, var: VAULT_TOKEN}}, \
          inject: {style: bearer}}",
    )
    .unwrap();
    assert_eq!(secrets.create(&github, &change).await.unwrap(), 1);
    // The source reference survives the round trip through the store whole.
    assert_eq!(secrets.get("github").await.unwrap().definition, github);
    let mut rotated = github.clone();
    rotated.match_tags.clear();
    assert_eq!(secrets.update(1, &rotated, &change).await.unwrap(), 2);
    assert!(matches!(
        secrets.update(1, &rotated, &change).await,
        Err(StoreError::Stale { kind: "secret", .. })
    ));
    assert_eq!(secrets.history("github").await.unwrap().len(), 2);
    assert_eq!(
        secrets.rollback("github", 1, None, &change).await.unwrap(),
        3
    );
    assert_eq!(secrets.get("github").await.unwrap().definition, github);
    // Policies and secrets are separate namespaces.
    assert!(matches!(
        store.policies().get("github").await,
        Err(StoreError::NotFound { kind: "policy", .. })
    ));
}

async fn tokens(store: &Store) {
    let change = Change::by("alice", "enroll");
    let tags = vec![
        Tag::parse("tenant:acme").unwrap(),
        Tag::parse("agent:ci").unwrap(),
    ];
    let minted = store.mint_token("acme-ci", &tags, &change).await.unwrap();
    let value = minted.value.expose_secret().to_owned();
    assert!(value.starts_with("ptk_") && value.len() > 40, "{value}");
    // Only the hash is kept, and the record never shows the value.
    assert_eq!(minted.token.sha256.len(), 64);
    assert!(!format!("{minted:?}").contains(&value));
    let listed = store.tokens().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].tags, tags);
    assert!(
        !serde_json::to_string(&listed)
            .unwrap()
            .contains(&minted.token.sha256)
    );
    assert!(matches!(
        store.mint_token("acme-ci", &tags, &change).await,
        Err(StoreError::Exists { kind: "token", .. })
    ));
    let other = store.mint_token("other", &[], &change).await.unwrap();
    assert_ne!(other.value.expose_secret(), value.as_str());
    let revoked = store
        .revoke_token(&minted.token.id, &Change::by("bob", "offboard"))
        .await
        .unwrap();
    assert_eq!(revoked.revoked_by.as_deref(), Some("bob"));
    let active: Vec<String> = store
        .contents()
        .await
        .unwrap()
        .tokens
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(active, ["other"]);
    // A revoked name can be minted again.
    store.mint_token("acme-ci", &tags, &change).await.unwrap();
    assert!(matches!(
        store.revoke_token("no-such-id", &change).await,
        Err(StoreError::NotFound { .. })
    ));
}

fn event(
    ts: &str,
    id: &str,
    decision: &str,
    policy: Option<&str>,
    host: &str,
    tags: &[&str],
) -> AuditEvent {
    AuditEvent {
        ts: ts.into(),
        request_id: id.into(),
        decision: decision.into(),
        policy: policy.map(str::to_owned),
        policy_version: policy.map(|_| 3),
        status: (decision == "DENIED").then_some(403),
        reason: None,
        method: "GET".into(),
        scheme: "http".into(),
        host: host.into(),
        port: 80,
        path: "/".into(),
        identity: None,
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        record: format!(r#"{{"request_id":"{id}"}}"#),
    }
}

async fn audit(store: &Store) {
    let events: Vec<AuditEvent> = (0..250)
        .map(|i| {
            let (decision, policy) = match i % 5 {
                0 => ("DENIED", None),
                1 => ("DENIED", Some("block")),
                2 => ("FLAGGED", Some("watch")),
                _ => ("ALLOWED", Some("allow-all")),
            };
            let host = if i % 2 == 0 {
                "api.github.com"
            } else {
                "example.com"
            };
            let tags: &[&str] = if i % 3 == 0 {
                &["env:ci", "tenant:acme"]
            } else {
                &["env:ci"]
            };
            let mut event = event(
                &format!("2026-12-01T10:{:02}:{:02}.000000Z", i / 60, i % 60),
                &format!("r{i:03}"),
                decision,
                policy,
                host,
                tags,
            );
            if i % 10 == 0 {
                event.identity = Some("agent-7".into());
            }
            event
        })
        .collect();
    store.insert_audit(&events).await.unwrap();
    // Writing the same events again changes nothing.
    store.insert_audit(&events[..10]).await.unwrap();

    // Pages, newest first, without overlap or gaps.
    let mut query = AuditQuery {
        limit: 100,
        ..AuditQuery::default()
    };
    let mut seen = Vec::new();
    loop {
        let page = store.search_audit(&query).await.unwrap();
        seen.extend(page.events.into_iter().map(|e| e.request_id));
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 250);
    assert_eq!(seen[0], "r249");
    assert_eq!(seen[249], "r000");

    let search = |q: AuditQuery| async move { store.search_audit(&q).await.unwrap().events };
    let tagged = search(AuditQuery {
        tags: vec!["tenant:acme".into()],
        limit: 1000,
        ..Default::default()
    })
    .await;
    assert_eq!(tagged.len(), 84);
    assert!(
        tagged
            .iter()
            .all(|e| e.tags.contains(&"tenant:acme".to_owned()))
    );
    let denied_by_block = search(AuditQuery {
        decision: Some("denied".into()),
        policy: Some("block".into()),
        limit: 1000,
        ..Default::default()
    })
    .await;
    assert_eq!(denied_by_block.len(), 50);
    assert!(denied_by_block.iter().all(|e| e.policy_version == Some(3)));
    let github = search(AuditQuery {
        host: Some("*.github.com".into()),
        limit: 1000,
        ..Default::default()
    })
    .await;
    assert_eq!(github.len(), 125);
    let no_wildcard_leak = search(AuditQuery {
        host: Some("*.c_m".into()),
        limit: 1000,
        ..Default::default()
    })
    .await;
    assert!(
        no_wildcard_leak.is_empty(),
        "`_` in a host filter is literal"
    );
    let window = search(AuditQuery {
        since: Some("2026-12-01T10:01:00.000000Z".into()),
        until: Some("2026-12-01T10:02:00.000000Z".into()),
        limit: 1000,
        ..Default::default()
    })
    .await;
    assert_eq!(window.len(), 60);
    let by_identity = search(AuditQuery {
        identity: Some("agent-7".into()),
        limit: 1000,
        ..Default::default()
    })
    .await;
    assert_eq!(by_identity.len(), 25);
    assert!(
        by_identity
            .iter()
            .all(|e| e.identity.as_deref() == Some("agent-7"))
    );
    let prefix_is_not_a_match = search(AuditQuery {
        identity: Some("agent".into()),
        limit: 1000,
        ..Default::default()
    })
    .await;
    assert!(prefix_is_not_a_match.is_empty());

    let counts = store
        .fire_counts("2026-12-01T00:00:00.000000Z")
        .await
        .unwrap();
    let count = |policy: Option<&str>, decision: &str| {
        counts
            .iter()
            .find(|c| c.policy.as_deref() == policy && c.decision == decision)
            .map_or(0, |c| c.count)
    };
    assert_eq!(count(Some("allow-all"), "ALLOWED"), 100);
    assert_eq!(count(Some("block"), "DENIED"), 50);
    assert_eq!(count(None, "DENIED"), 50);

    assert_eq!(
        store
            .prune_audit("2026-12-01T10:02:00.000000Z")
            .await
            .unwrap(),
        120
    );
    let left = search(AuditQuery {
        limit: 1000,
        ..Default::default()
    })
    .await;
    assert_eq!(left.len(), 130);
}

async fn contents(store: &Store) {
    let before = store.revision().await.unwrap();
    let contents = store.contents().await.unwrap();
    assert_eq!(contents.revision, before);
    assert_eq!(contents.policies.len(), 1);
    assert_eq!(contents.secrets.len(), 1);
    assert_eq!(contents.tokens.len(), 2);
    // Every change bumps the revision, refused ones do not.
    let p = store.policies().get("ci-npm").await.unwrap();
    store
        .policies()
        .disable("ci-npm", p.version, &Change::by("a", "b"))
        .await
        .unwrap();
    assert_eq!(store.revision().await.unwrap(), before + 1);
    let _ = store
        .policies()
        .disable("ci-npm", p.version, &Change::by("a", "b"))
        .await;
    assert_eq!(store.revision().await.unwrap(), before + 1);
}

#[test]
fn the_store_suite_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("portcullis.db").display());
    runtime().block_on(async {
        let store = Store::open(&url).await.unwrap();
        suite(&store).await;
        // Reopening keeps everything (and migrations run once).
        drop(store);
        let again = Store::open(&url).await.unwrap();
        assert_eq!(again.policies().history("ci-npm").await.unwrap().len(), 9);
    });
}

#[test]
fn the_store_suite_on_postgres() {
    let database = TestDatabase::create();
    runtime().block_on(async {
        let store = Store::open(&database.url).await.unwrap();
        suite(&store).await;
    });
}

#[test]
fn an_unknown_store_url_is_refused_without_its_password() {
    let error = runtime()
        .block_on(Store::open("mysql://admin:hunter2@db/x"))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("use sqlite://PATH or postgres://"),
        "{error}"
    );
    assert!(!error.contains("hunter2"), "{error}");
}

#[test]
fn apply_writes_a_config_files_policies_as_versions() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let file = dir.path().join("policies.yaml");
    let run = |args: &[&str]| {
        let run = crate::common::run_portcullis(args, &[("PORTCULLIS_STORE", &url)]);
        (run.code, run.printed())
    };
    let path = file.to_str().unwrap();
    std::fs::write(
        &file,
        "policies:\n  - {name: a, action: allow, rules: [{host: a.example}]}\n  - {name: b, action: deny, rules: [{host: b.example}]}\n",
    )
    .unwrap();
    let (code, out) = run(&["migrate"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(&["apply", "-f", path, "--operator", "ci"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("2 created, 0 updated, 0 unchanged, 0 deleted"),
        "{out}"
    );
    let (_, out) = run(&["apply", "-f", path]);
    assert!(out.contains("0 created, 0 updated, 2 unchanged"), "{out}");

    std::fs::write(
        &file,
        "policies:\n  - {name: a, priority: 3, action: allow, rules: [{host: a.example}]}\n",
    )
    .unwrap();
    let (_, out) = run(&["apply", "-f", path]);
    assert!(out.contains("updated  policy a (version 2)"), "{out}");
    assert!(out.contains("kept     policy b"), "{out}");
    let (_, out) = run(&["apply", "-f", path, "--prune"]);
    assert!(out.contains("1 unchanged, 1 deleted"), "{out}");

    // An invalid file writes nothing and says where.
    std::fs::write(
        &file,
        "policies:\n  - {name: a, action: allow, rules: [{host: 'a[.example'}]}\n",
    )
    .unwrap();
    let (code, out) = run(&["apply", "-f", path]);
    assert_eq!(code, 1);
    assert!(
        out.contains("policies.yaml:2") && out.contains("nothing applied"),
        "{out}"
    );

    runtime().block_on(async {
        let store = Store::open(&url).await.unwrap();
        let policies = store.policies();
        let history = policies.history("a").await.unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!(history[0].operator, "ci");
        assert_eq!(policies.get("a").await.unwrap().definition.priority, 3);
        assert!(matches!(
            policies.get("b").await,
            Err(StoreError::NotFound { .. })
        ));
        assert_eq!(
            policies.history("b").await.unwrap().len(),
            2,
            "deleted, history kept"
        );
    });
}
