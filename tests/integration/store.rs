//! The policy store, one suite run against both backends: SQLite in a temp file and a real
//! PostgreSQL (a fresh database per run, dropped afterwards). `scripts/postgres` starts the
//! server when it is not running; `PORTCULLIS_TEST_POSTGRES` names another one.

use portcullis::policy::{PolicyConfig, PolicyStatus};
use portcullis::store::{Change, Operation, Store, StoreError, diff};
use sqlx::Connection as _;

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
    let alice = Change::by("alice", "first cut");
    let p1 =
        policy("{name: ci-npm, priority: 10, action: allow, rules: [{host: registry.npmjs.org}]}");
    assert_eq!(store.create(&p1, &alice).await.unwrap(), 1);
    assert!(matches!(
        store.create(&p1, &alice).await,
        Err(StoreError::Exists(_))
    ));

    // Update with the version read: 2. With a stale version: 409-style error, nothing
    // written.
    let mut p2 = p1.clone();
    p2.priority = 5;
    assert_eq!(
        store
            .update(1, &p2, &Change::by("bob", "tighten"))
            .await
            .unwrap(),
        2
    );
    let mut p3 = p1.clone();
    p3.priority = 99;
    match store.update(1, &p3, &Change::by("carol", "late")).await {
        Err(StoreError::Stale {
            expected: 1,
            live: 2,
            ..
        }) => {}
        other => panic!("expected a stale-version error, got {other:?}"),
    }
    assert_eq!(store.get("ci-npm").await.unwrap().policy.priority, 5);

    // Invalid input changes nothing.
    let mut bad = p2.clone();
    bad.rules.clear();
    match store.update(2, &bad, &alice).await {
        Err(StoreError::Invalid(errors)) => assert_eq!(errors[0].path, "rules"),
        other => panic!("expected invalid, got {other:?}"),
    }
    assert_eq!(store.get("ci-npm").await.unwrap().version, 2);

    // Disable keeps it listed; enable brings it back.
    assert_eq!(store.disable("ci-npm", 2, &alice).await.unwrap(), 3);
    let listed = store.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].policy.status, PolicyStatus::Disabled);
    assert_eq!(store.enable("ci-npm", 3, &alice).await.unwrap(), 4);

    // History and diff; rollback is a new version equal to an earlier one.
    let history = store.history("ci-npm").await.unwrap();
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
        &serde_json::to_value(&history[0].policy).unwrap(),
        &serde_json::to_value(&history[1].policy).unwrap(),
    );
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].path, "priority");
    assert_eq!(store.rollback("ci-npm", 1, &alice).await.unwrap(), 5);
    let live = store.get("ci-npm").await.unwrap();
    assert_eq!((live.version, live.policy.priority), (5, 10));
    assert_eq!(live.policy, history[0].policy);
    assert!(matches!(
        store.rollback("ci-npm", 42, &alice).await,
        Err(StoreError::NoSuchVersion { version: 42, .. })
    ));

    // Delete: gone from the live set, not from history; the name can be reused.
    assert_eq!(store.delete("ci-npm", 5, &alice).await.unwrap(), 6);
    assert!(store.list().await.unwrap().is_empty());
    assert!(matches!(
        store.get("ci-npm").await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.history("ci-npm").await.unwrap().len(), 6);
    assert_eq!(store.create(&p1, &alice).await.unwrap(), 7);

    // Concurrent writers on the same version: exactly one wins.
    let (w1, w2) = (Change::by("w1", "race"), Change::by("w2", "race"));
    let (a, b) = tokio::join!(store.update(7, &p2, &w1), store.update(7, &p3, &w2));
    assert_eq!(
        [a.is_ok(), b.is_ok()].iter().filter(|ok| **ok).count(),
        1,
        "{a:?} {b:?}"
    );
    assert_eq!(store.get("ci-npm").await.unwrap().version, 8);
    assert_eq!(store.history("ci-npm").await.unwrap().len(), 8);
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
        assert_eq!(again.history("ci-npm").await.unwrap().len(), 8);
    });
}

#[test]
fn the_store_suite_on_postgres() {
    let admin = std::env::var("PORTCULLIS_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let database = format!("portcullis_test_{}", uuid::Uuid::new_v4().simple());
    runtime().block_on(async {
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| {
                panic!("PostgreSQL at {admin} is not reachable ({e}); scripts/postgres starts it")
            });
        // The name is ours (a UUID), never input.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let url = match admin.rfind('/') {
            Some(i) => format!("{}/{database}", &admin[..i]),
            None => panic!("{admin} names no database"),
        };
        let store = Store::open(&url).await.unwrap();
        suite(&store).await;
        drop(store);
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {database} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
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
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(args)
            .env("PORTCULLIS_STORE", &url)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
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
    assert!(out.contains("updated  a (version 2)"), "{out}");
    assert!(out.contains("kept     b"), "{out}");
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
        let history = store.history("a").await.unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!(history[0].operator, "ci");
        assert_eq!(store.get("a").await.unwrap().policy.priority, 3);
        assert!(matches!(store.get("b").await, Err(StoreError::NotFound(_))));
        assert_eq!(
            store.history("b").await.unwrap().len(),
            2,
            "deleted, history kept"
        );
    });
}
