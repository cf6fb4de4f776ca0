//! The fleet on PostgreSQL: two Portcullis instances (each with its own Envoy) share one
//! database, and each reaches it through its own relay ([`TcpProxy`]), so a test can take
//! the database away from one instance or from both without touching the server. A change
//! made through one instance's API decides requests through the other's Envoy within a
//! second; an instance cut off keeps deciding with its last snapshot and catches up when
//! the database is back; one that never read the store refuses everything (503); one that
//! joins late reads everything already stored.
//!
//! `fleet::bench` (ignored) measures propagation over 100 changes and the decision
//! throughput of an instance while changes stream in (BENCHMARKS.md).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::postgres::TestDatabase;
use crate::common::tcp_proxy::TcpProxy;
use crate::common::{Gateway, GatewayOptions, Reply, Upstream, wait_until};
use crate::control::{EDITOR, allow, config, create, get, options, post, status_of, update};

/// The bound the spec sets on propagation to every other instance.
const PROPAGATION: Duration = Duration::from_secs(1);
/// How long an instance cut off from the database may take to catch up once it is back.
/// Its reconnection backoff is capped at 5 s; within one attempt, sqlx retries a refused
/// connection at intervals of up to 6 s.
const RECONNECTION: Duration = Duration::from_secs(10);

/// How long an instance whose connections went silent (nothing arrives, nothing fails)
/// may take to notice and decide with a change. The notification connection must answer
/// every 5 s within 5 s; each silent connection left in the pool then costs its 5 s
/// acquire timeout once.
const SILENT: Duration = Duration::from_secs(25);

/// One Portcullis instance with its Envoy, and the relay it reaches the database through.
struct Instance {
    gw: Gateway,
    relay: TcpProxy,
}

impl Instance {
    fn start(db: &TestDatabase) -> Instance {
        Instance::start_with(db, options(), false)
    }

    /// An instance whose relay is cut before it starts: it never read the store.
    fn start_cut_off(db: &TestDatabase) -> Instance {
        Instance::start_with(
            db,
            GatewayOptions {
                starts_unready: true,
                ..options()
            },
            true,
        )
    }

    fn start_with(db: &TestDatabase, options: GatewayOptions, cut_off: bool) -> Instance {
        Instance::start_configured(db, options, cut_off, "")
    }

    /// With `store_settings` (`resync_interval: 1h, `) added to the `store` section.
    fn start_configured(
        db: &TestDatabase,
        options: GatewayOptions,
        cut_off: bool,
        store_settings: &str,
    ) -> Instance {
        let relay = TcpProxy::start(db.server_addr());
        if cut_off {
            relay.block();
        }
        let config = config(&db.url_via(relay.port))
            .replace("store: {", &format!("store: {{{store_settings}"));
        let gw = Gateway::start(&config, options);
        Instance { gw, relay }
    }

    fn status(&self, upstream: &Upstream, path: &str) -> u16 {
        status_of(&self.gw, upstream, path)
    }

    fn request(&self, upstream: &Upstream, path: &str) -> Reply {
        self.gw
            .via_proxy(&[&format!("http://127.0.0.1:{}{path}", upstream.port())])
    }

    fn store_up(&self) -> Option<f64> {
        self.gw.metric("portcullis_store_up")
    }

    /// `/readyz`: its status and its `store_revision`.
    fn readyz(&self) -> (u16, Value) {
        let reply = self.gw.admin("/readyz");
        (reply.status, reply.json())
    }

    fn revision(&self) -> Option<i64> {
        self.readyz().1["store_revision"].as_i64()
    }

    /// The audit record of the newest request for `path` decided at store `revision`.
    fn audit_at(&self, path: &str, revision: i64) -> Value {
        let suffix = format!("+r{revision}");
        self.gw.audit_for(|r| {
            r["path"] == path
                && r["config_version"]
                    .as_str()
                    .is_some_and(|v| v.ends_with(&suffix))
        })
    }
}

/// Polls `probe` every 10 ms until it holds, for at most `timeout`; how long after `since`
/// that was.
fn time_until(
    since: Instant,
    timeout: Duration,
    mut probe: impl FnMut() -> bool,
) -> Option<Duration> {
    loop {
        if probe() {
            return Some(since.elapsed());
        }
        if since.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Asserts that `condition` holds at every check for `duration` (what an instance that
/// must not see a change keeps doing).
fn holds_for(duration: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + duration;
    while Instant::now() < until {
        if !condition() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Makes a change through `write` (an API call on A) and measures how long after its
/// answer `b` answers `status` for `path`, as [`reaches`] does. Returns the change's store
/// revision and `b`'s audit record of the request that showed the change.
fn propagates(
    what: &str,
    write: impl FnOnce() -> Reply,
    b: &Instance,
    upstream: &Upstream,
    path: &str,
    status: u16,
) -> (i64, Value) {
    let reply = write();
    let written = Instant::now();
    assert!(
        matches!(reply.status, 200 | 201),
        "{what} through A: {reply:?}"
    );
    let revision = reply.json()["store_revision"]
        .as_i64()
        .unwrap_or_else(|| panic!("{what}: the answer names the store revision: {reply:?}"));
    reaches(what, written, revision, b, || {
        b.status(upstream, path) == status
    });
    (revision, b.audit_at(path, revision))
}

/// Polls B (every 10 ms, with curl) until `shows` holds, printing how long after the
/// change's answer (`written`) that was; asserts it is within a second, and that B then
/// reports the change's store `revision` on `/readyz` and in its metrics.
fn reaches(what: &str, written: Instant, revision: i64, b: &Instance, shows: impl FnMut() -> bool) {
    let Some(delay) = time_until(written, Duration::from_secs(5), shows) else {
        panic!(
            "{what}: B does not decide with the change 5 s after it; B's log:\n{}",
            b.gw.portcullis_log()
        );
    };
    eprintln!("propagation A→B ({what}): {} ms", delay.as_millis());
    assert!(
        delay < PROPAGATION,
        "{what}: B took {delay:?} to decide with the change"
    );
    assert_eq!(
        b.revision(),
        Some(revision),
        "{what}: B's /readyz names the change's revision"
    );
    assert_eq!(
        b.gw.metric("portcullis_store_revision"),
        Some(revision as f64)
    );
}

#[test]
fn a_change_through_one_instance_decides_requests_through_another_within_a_second() {
    let db = TestDatabase::create();
    let upstream = Upstream::start(None);
    let a = Instance::start(&db);
    let b = Instance::start(&db);
    // Nothing stored yet: the default action (deny) decides on both.
    assert_eq!(a.status(&upstream, "/repo/a"), 403);
    assert_eq!(b.status(&upstream, "/repo/a"), 403);

    let (_, record) = propagates(
        "create",
        || create(&a.gw, &allow("repos", 10, &["/repo/*"])),
        &b,
        &upstream,
        "/repo/a",
        200,
    );
    assert_eq!(record["decision"], "ALLOWED");
    assert_eq!(record["policy"], "repos");
    assert_eq!(record["policy_version"], 1);

    let (revision, record) = propagates(
        "update",
        || update(&a.gw, "repos", 1, &allow("repos", 10, &["/repo/public/*"])),
        &b,
        &upstream,
        "/repo/a",
        403,
    );
    assert_eq!(record["decision"], "DENIED");
    assert!(
        record.get("policy").is_none(),
        "the default denies: {record}"
    );
    assert_eq!(b.status(&upstream, "/repo/public/x"), 200);
    let record = b.audit_at("/repo/public/x", revision);
    assert_eq!(
        (&record["policy"], &record["policy_version"]),
        (&json!("repos"), &json!(2))
    );

    let (_, record) = propagates(
        "disable",
        || post(&a.gw, "/v1/policies/repos/disable", json!({"version": 2})),
        &b,
        &upstream,
        "/repo/public/x",
        403,
    );
    assert_eq!(record["decision"], "DENIED");
    assert!(record.get("policy").is_none(), "{record}");

    let (_, record) = propagates(
        "enable",
        || post(&a.gw, "/v1/policies/repos/enable", json!({"version": 3})),
        &b,
        &upstream,
        "/repo/public/x",
        200,
    );
    assert_eq!(record["policy_version"], 4);

    let (_, record) = propagates(
        "rollback",
        || {
            post(
                &a.gw,
                "/v1/policies/repos/rollback",
                json!({"to_version": 1, "version": 4}),
            )
        },
        &b,
        &upstream,
        "/repo/a",
        200,
    );
    assert_eq!(record["policy"], "repos");
    assert_eq!(record["policy_version"], 5, "a rollback is a new version");

    let (_, record) = propagates(
        "delete",
        || {
            a.gw.api("DELETE", "/v1/policies/repos?version=5", Some(EDITOR), None)
        },
        &b,
        &upstream,
        "/repo/a",
        403,
    );
    assert!(record.get("policy").is_none(), "{record}");

    // Enrollment tokens: minted on A, carried on B; revoked on A, refused (407) on B.
    let mut tenant = allow("acme-only", 10, &["/acme/*"]);
    tenant["match_tags"] = json!(["tenant:acme"]);
    assert_eq!(create(&a.gw, &tenant).status, 201);
    let minted = post(
        &a.gw,
        "/v1/tokens",
        json!({"name": "acme-ci", "tags": ["tenant:acme"]}),
    );
    let written = Instant::now();
    assert_eq!(minted.status, 201, "{minted:?}");
    let minted = minted.json();
    let proxy_auth = format!(
        "Proxy-Authorization: Bearer {}",
        minted["value"].as_str().unwrap()
    );
    let url = format!("http://127.0.0.1:{}/acme/x", upstream.port());
    let with_token = || b.gw.via_proxy(&["-H", &proxy_auth, &url]).status;
    reaches("mint a token", written, a.revision().unwrap(), &b, || {
        with_token() == 200
    });
    let id = minted["token"]["id"].as_str().unwrap();
    let revoked =
        a.gw.api("DELETE", &format!("/v1/tokens/{id}"), Some(EDITOR), None);
    let written = Instant::now();
    assert_eq!(revoked.status, 200, "{revoked:?}");
    reaches("revoke a token", written, a.revision().unwrap(), &b, || {
        with_token() == 407
    });

    // What B denies never reaches the upstream; the writer decides the same way.
    let hits = upstream.hits();
    let denied = b.request(&upstream, "/repo/a");
    assert_eq!(denied.status, 403);
    assert_eq!(denied.json()["error"]["type"], "policy_denied");
    assert_eq!(a.status(&upstream, "/repo/a"), 403);
    assert_eq!(upstream.hits(), hits);
    assert_eq!(a.revision(), b.revision());
}

#[test]
fn instances_cut_off_from_the_database_keep_deciding_and_catch_up_when_it_is_back() {
    let db = TestDatabase::create();
    let upstream = Upstream::start(None);
    let a = Instance::start(&db);
    let b = Instance::start(&db);
    let (revision, _) = propagates(
        "create",
        || create(&a.gw, &allow("outage", 10, &["/o/*"])),
        &b,
        &upstream,
        "/o/a",
        200,
    );
    assert_eq!(b.status(&upstream, "/elsewhere"), 403);
    assert_eq!(b.store_up(), Some(1.0));

    // B loses the database: it keeps its snapshot, and says the store is down.
    b.relay.block();
    assert!(
        wait_until(Duration::from_secs(5), || b.store_up() == Some(0.0)),
        "B's store_up: {:?}",
        b.store_up()
    );
    let hits = upstream.hits();
    assert_eq!(b.status(&upstream, "/o/a"), 200);
    assert_eq!(
        upstream.hits(),
        hits + 1,
        "B still forwards what it allowed"
    );
    assert_eq!(b.status(&upstream, "/elsewhere"), 403);
    assert_eq!(b.readyz().0, 200, "B stays ready");
    assert_eq!(b.revision(), Some(revision));

    // A still reaches it: a change there decides A's requests at once, not B's.
    let narrowed = update(&a.gw, "outage", 1, &allow("outage", 10, &["/o/public/*"]));
    assert_eq!(narrowed.status, 200, "{narrowed:?}");
    let changed = narrowed.json()["store_revision"].as_i64().unwrap();
    assert_eq!(a.status(&upstream, "/o/a"), 403);
    assert!(
        holds_for(2 * PROPAGATION, || b.status(&upstream, "/o/a") == 200),
        "B cannot have heard of the change"
    );
    assert_eq!(b.revision(), Some(revision));

    // Both cut off: both keep deciding, each with what it last read.
    a.relay.block();
    assert!(
        wait_until(Duration::from_secs(5), || a.store_up() == Some(0.0)),
        "A's store_up: {:?}",
        a.store_up()
    );
    assert_eq!(a.status(&upstream, "/o/a"), 403);
    assert_eq!(a.status(&upstream, "/o/public/x"), 200);
    assert_eq!(b.status(&upstream, "/o/a"), 200);
    // A write now is refused and changes nothing.
    let started = Instant::now();
    let refused = update(&a.gw, "outage", 2, &allow("outage", 10, &["/*"]));
    eprintln!(
        "a write with the database gone answered {} after {} ms",
        refused.status,
        started.elapsed().as_millis()
    );
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.json()["error"]["type"], "store_unavailable");
    assert_eq!(a.status(&upstream, "/o/a"), 403);
    assert_eq!(a.revision(), Some(changed));

    // The database is back: B picks up the change made while it was away.
    a.relay.unblock();
    b.relay.unblock();
    let unblocked = Instant::now();
    let caught_up = time_until(unblocked, RECONNECTION, || {
        b.status(&upstream, "/o/a") == 403
    });
    let Some(caught_up) = caught_up else {
        panic!(
            "B did not catch up within {RECONNECTION:?}; log:\n{}",
            b.gw.portcullis_log()
        );
    };
    eprintln!(
        "B caught up {} ms after the database came back",
        caught_up.as_millis()
    );
    assert_eq!(b.status(&upstream, "/o/public/x"), 200);
    let record = b.audit_at("/o/public/x", changed);
    assert_eq!(record["policy_version"], 2);
    assert_eq!(b.revision(), Some(changed));
    for (name, instance) in [("A", &a), ("B", &b)] {
        assert!(
            wait_until(RECONNECTION, || instance.store_up() == Some(1.0)),
            "{name}'s store_up: {:?}",
            instance.store_up()
        );
    }
    // The refused write left no trace.
    let stored = get(&a.gw, "/v1/policies/outage");
    assert_eq!(stored["version"], 2);
    assert_eq!(
        stored["policy"]["rules"][0]["paths"],
        json!(["/o/public/*"])
    );
    let history = get(&a.gw, "/v1/policies/outage/history");
    assert_eq!(history["versions"].as_array().unwrap().len(), 2);
    assert_eq!(a.revision(), Some(changed));
}

#[test]
fn a_notification_connection_that_goes_silent_is_noticed_and_replaced() {
    let db = TestDatabase::create();
    let upstream = Upstream::start(None);
    let a = Instance::start(&db);
    // No resync to fall back on: whatever B learns, it learns through its notifications.
    let b = Instance::start_configured(&db, options(), false, "resync_interval: 1h, ");
    propagates(
        "create",
        || create(&a.gw, &allow("quiet", 10, &["/q/*"])),
        &b,
        &upstream,
        "/q/a",
        200,
    );

    // Every connection B holds goes silent, as a flow a NAT dropped: no notification
    // arrives and nothing reports an error. New connections go through.
    b.relay.silence();
    let narrowed = update(&a.gw, "quiet", 1, &allow("quiet", 10, &["/q/public/*"]));
    let written = Instant::now();
    assert_eq!(narrowed.status, 200, "{narrowed:?}");
    let noticed = time_until(written, SILENT, || b.status(&upstream, "/q/a") == 403);
    let Some(noticed) = noticed else {
        panic!(
            "B still decides with the old policy {SILENT:?} after the change; log:\n{}",
            b.gw.portcullis_log()
        );
    };
    eprintln!(
        "B decided with a change {} ms after it, its connections silent",
        noticed.as_millis()
    );
    // Its notifications flow again: the next change arrives as any other.
    propagates(
        "update after the silence",
        || update(&a.gw, "quiet", 2, &allow("quiet", 10, &["/q/*"])),
        &b,
        &upstream,
        "/q/a",
        200,
    );
}

#[test]
fn an_instance_that_never_read_the_store_refuses_everything_until_it_has() {
    let db = TestDatabase::create();
    let upstream = Upstream::start(None);
    let revision = seed(&db, &[allow("stored", 10, &["/s/*"])]);
    let c = Instance::start_cut_off(&db);

    let (status, body) = c.readyz();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready"], false);
    assert!(body["store_revision"].is_null(), "{body}");
    let refused = c.request(&upstream, "/s/a");
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.json()["error"]["type"], "policy_unavailable");
    assert_eq!(upstream.hits(), 0, "nothing is forwarded");
    assert_eq!(c.store_up(), Some(0.0));
    let write = create(&c.gw, &allow("other", 10, &["/*"]));
    assert_eq!(write.status, 503, "{write:?}");
    assert_eq!(write.json()["error"]["type"], "store_unavailable");

    c.relay.unblock();
    let unblocked = Instant::now();
    assert!(
        wait_until(RECONNECTION, || c.readyz().0 == 200),
        "not ready {RECONNECTION:?} after the database came back; log:\n{}",
        c.gw.portcullis_log()
    );
    eprintln!(
        "ready {} ms after the database came back",
        unblocked.elapsed().as_millis()
    );
    assert_eq!(c.revision(), Some(revision));
    assert_eq!(c.status(&upstream, "/s/a"), 200);
    assert_eq!(upstream.hits(), 1);
    let record = c.audit_at("/s/a", revision);
    assert_eq!(
        (&record["policy"], &record["policy_version"]),
        (&json!("stored"), &json!(1))
    );
    assert_eq!(c.status(&upstream, "/elsewhere"), 403);
    assert_eq!(c.store_up(), Some(1.0));
}

#[test]
fn an_instance_joining_late_reads_everything_already_stored() {
    let db = TestDatabase::create();
    let upstream = Upstream::start(None);
    let key = "late-joiner-upstream-key-5e1f";
    let with_key = || {
        let mut options = options();
        options.env.push(("LATE_KEY".into(), key.into()));
        options
    };
    let writer = Instance::start_with(&db, with_key(), false);
    let a = &writer.gw;

    let ok = |reply: Reply| assert!(matches!(reply.status, 200 | 201), "{reply:?}");
    ok(create(a, &allow("docs", 10, &["/docs/*"])));
    ok(update(a, "docs", 1, &allow("docs", 10, &["/docs/v2/*"])));
    ok(create(
        a,
        &json!({"name": "no-secrets", "priority": 1, "action": "deny",
                "rules": [{"host": "127.0.0.1", "paths": ["/docs/v2/secret*"]}]}),
    ));
    ok(create(a, &allow("legacy", 10, &["/legacy/*"])));
    ok(post(
        a,
        "/v1/policies/legacy/disable",
        json!({"version": 1}),
    ));
    ok(create(a, &allow("gone", 10, &["/gone/*"])));
    ok(a.api("DELETE", "/v1/policies/gone?version=1", Some(EDITOR), None));
    let mut acme = allow("acme-only", 10, &["/acme/*"]);
    acme["match_tags"] = json!(["tenant:acme"]);
    ok(create(a, &acme));
    let minted = post(
        a,
        "/v1/tokens",
        json!({"name": "acme-ci", "tags": ["tenant:acme"]}),
    );
    assert_eq!(minted.status, 201, "{minted:?}");
    let token = minted.json()["value"].as_str().unwrap().to_owned();
    let secret = post(
        a,
        "/v1/secrets",
        json!({"secret": {"name": "upstream-key", "source": {"type": "env", "var": "LATE_KEY"},
               "inject": {"style": "bearer"},
               "rules": [{"host": "127.0.0.1", "paths": ["/docs/v2/api/*"]}]}}),
    );
    assert_eq!(secret.status, 201, "{secret:?}");
    let revision = secret.json()["store_revision"].as_i64().unwrap();

    let b = Instance::start_with(&db, with_key(), false);
    assert_eq!(
        b.revision(),
        Some(revision),
        "B starts at the latest revision"
    );
    assert_eq!(get(&b.gw, "/v1/policies"), get(a, "/v1/policies"));

    // The live version, not the first one.
    assert_eq!(b.status(&upstream, "/docs/v2/x"), 200);
    let record = b.audit_at("/docs/v2/x", revision);
    assert_eq!(
        (&record["policy"], &record["policy_version"]),
        (&json!("docs"), &json!(2))
    );
    assert_eq!(b.status(&upstream, "/docs/x"), 403);
    let denied = b.request(&upstream, "/docs/v2/secret.txt");
    assert_eq!(denied.status, 403);
    assert_eq!(denied.json()["error"]["policy"], "no-secrets");
    // Disabled and deleted policies decide nothing.
    assert_eq!(b.status(&upstream, "/legacy/x"), 403);
    assert_eq!(b.status(&upstream, "/gone/x"), 403);
    // The enrollment token carries its tags on B too.
    let url = format!("http://127.0.0.1:{}/acme/x", upstream.port());
    assert_eq!(b.gw.via_proxy(&[&url]).status, 403);
    let proxy_auth = format!("Proxy-Authorization: Bearer {token}");
    let with_token = b.gw.via_proxy(&["-H", &proxy_auth, &url]);
    assert_eq!(with_token.status, 200, "{with_token:?}");
    let record = b.audit_at("/acme/x", revision);
    assert_eq!(record["identity"]["name"], "acme-ci");
    // The secret is injected by B, from B's own environment.
    assert_eq!(b.status(&upstream, "/docs/v2/api/items"), 200);
    let seen = upstream.seen();
    let last = seen.last().unwrap();
    assert_eq!(last.path, "/docs/v2/api/items");
    assert_eq!(
        last.header("authorization"),
        Some(format!("Bearer {key}").as_str())
    );
    b.gw.assert_no_leaks(&[key, &token], &[]);
}

/// Writes `policies` straight into the store (as `portcullis apply` would); returns the
/// store revision after them.
fn seed(db: &TestDatabase, policies: &[Value]) -> i64 {
    use portcullis::policy::PolicyConfig;
    use portcullis::store::{Change, Store};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Store::open(&db.url).await.unwrap();
        let change = Change::by("seed", "fleet test");
        for policy in policies {
            let policy: PolicyConfig = serde_json::from_value(policy.clone()).unwrap();
            store.policies().create(&policy, &change).await.unwrap();
        }
        store.revision().await.unwrap()
    })
}

// ---------------------------------------------------------------------------- benchmark

/// `cargo test --test integration fleet::bench -- --ignored --nocapture`
///
/// Two instances and one database, as in the tests above, with `BENCH_POLICIES`
/// (comma-separated, default `0,1000`) generated policies stored beside the ones measured:
///
/// 1. **Propagation.** `BENCH_CHANGES` (default 100) sequential updates through A, each
///    turning the policy deciding `GET /flip/bench` from allow to deny or back, each timed
///    from A's answer until B's Envoy answers the other way (polled over one kept-alive
///    connection every millisecond: a curl per poll costs more than what is measured).
/// 2. **Throughput.** wrk (`-t2 -c50`) through B's Envoy for `BENCH_DURATION` seconds
///    (default 10): with no changes; while a thread updates another policy through A every
///    100 ms (B recompiles its snapshot for each); and, as a control, while the same
///    thread writes the same changes to an instance on another database (what making
///    changes costs this machine, with B applying none). `BENCH_ROUNDS` rounds (default 3)
///    interleaved.
#[test]
#[ignore = "a benchmark: cargo test --test integration fleet::bench -- --ignored --nocapture"]
fn bench_propagation_and_throughput_under_changes() {
    let setting = |name: &str, default: &str| std::env::var(name).unwrap_or(default.into());
    let sizes: Vec<usize> = setting("BENCH_POLICIES", "0,1000")
        .split(',')
        .map(|n| n.trim().parse().expect("BENCH_POLICIES: numbers"))
        .collect();
    let changes: usize = setting("BENCH_CHANGES", "100").parse().unwrap();
    let duration: u64 = setting("BENCH_DURATION", "10").parse().unwrap();
    let rounds: usize = setting("BENCH_ROUNDS", "3").parse().unwrap();
    assert!(
        std::process::Command::new("wrk")
            .arg("--version")
            .output()
            .is_ok(),
        "wrk is not installed: apt-get install -y wrk"
    );
    let mut report = Vec::new();
    for size in sizes {
        report.push(bench_fleet(size, changes, duration, rounds));
    }
    eprintln!("\n==== fleet benchmark (dev profile, loopback, shared machine) ====");
    for line in report.concat() {
        eprintln!("{line}");
    }
}

/// Changes timed for B's CPU per change applied.
const SYNC_SAMPLES: u64 = 20;

impl Instance {
    /// Snapshots compiled from the store so far.
    fn syncs(&self) -> u64 {
        self.gw
            .metric("portcullis_store_syncs_total{result=\"success\"}")
            .unwrap_or(0.0) as u64
    }
}

fn bench_fleet(fillers: usize, changes: usize, duration: u64, rounds: usize) -> Vec<String> {
    let db = TestDatabase::create();
    let seeded = Instant::now();
    seed(&db, &(0..fillers).map(filler).collect::<Vec<_>>());
    let seeded = seeded.elapsed();
    let upstream = Upstream::start(None);
    let a = Instance::start(&db);
    let b = Instance::start(&db);
    let total = fillers + 2;
    eprintln!("---- {total} policies (seeded in {seeded:?}) ----");

    // 1. Propagation: each change flips B's decision.
    let flip = |action: &str| {
        json!({"name": "flip", "priority": 5, "action": action,
               "rules": [{"host": "127.0.0.1", "paths": ["/flip/*"], "methods": ["GET"]}]})
    };
    let url = format!("http://127.0.0.1:{}/flip/bench", upstream.port());
    let host = format!("127.0.0.1:{}", upstream.port());
    let mut poller = ProxyConnection::new(b.gw.proxy_port);
    assert_eq!(create(&a.gw, &flip("allow")).status, 201);
    assert!(wait_until(Duration::from_secs(5), || poller
        .get(&url, &host)
        == 200));
    let (mut after_answer, mut after_send, mut write) = (Vec::new(), Vec::new(), Vec::new());
    let mut polls = 0usize;
    for i in 1..=changes {
        let (action, expected) = if i % 2 == 1 {
            ("deny", 403)
        } else {
            ("allow", 200)
        };
        // Change i updates version i (the create was version 1).
        let version = i as i64;
        let sent = Instant::now();
        let reply = update(&a.gw, "flip", version, &flip(action));
        let answered = Instant::now();
        assert_eq!(reply.status, 200, "change {i}: {reply:?}");
        loop {
            polls += 1;
            if poller.get(&url, &host) == expected {
                break;
            }
            assert!(
                answered.elapsed() < Duration::from_secs(5),
                "change {i} did not reach B"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let seen = Instant::now();
        after_answer.push(seen - answered);
        after_send.push(seen - sent);
        write.push(answered - sent);
    }
    assert_eq!(a.revision(), b.revision());
    let mut lines = vec![
        format!("## {total} policies: propagation over {changes} changes (A's PUT → B's Envoy)"),
        "| measured | p50 | p90 | p99 | max |".into(),
        "|---|---:|---:|---:|---:|".into(),
    ];
    for (what, samples) in [
        ("A's answer → B decides with it", &mut after_answer),
        ("PUT sent → B decides with it", &mut after_send),
        ("PUT round trip on A (curl)", &mut write),
    ] {
        samples.sort();
        lines.push(format!(
            "| {what} | {} | {} | {} | {} |",
            ms(percentile(samples, 50)),
            ms(percentile(samples, 90)),
            ms(percentile(samples, 99)),
            ms(*samples.last().unwrap()),
        ));
    }
    lines.push(format!(
        "({polls} polls of B for {changes} changes; under 1 s: {}/{changes})",
        after_answer.iter().filter(|d| **d < PROPAGATION).count()
    ));

    // 2. Throughput through B's Envoy, without and with changes streaming in through A.
    let script = b.gw.dir.path().join("proxy.lua");
    std::fs::write(
        &script,
        format!("wrk.method = \"GET\"\nwrk.path = \"{url}\"\nwrk.headers[\"Host\"] = \"{host}\"\n"),
    )
    .unwrap();
    let churn = |n: usize| {
        json!({"name": "churn", "priority": 20, "action": "allow",
               "rules": [{"host": "127.0.0.1", "paths": [format!("/churn/{n}/*")], "methods": ["GET"]}]})
    };
    assert_eq!(create(&a.gw, &churn(0)).status, 201);
    let mut churn_version = 1;
    // What B spends applying one change (read the store, compile, publish), with no load.
    let (cpu, syncs) = (cpu_seconds(b.gw.portcullis.pid()), b.syncs());
    for _ in 0..SYNC_SAMPLES {
        let reply = update(
            &a.gw,
            "churn",
            churn_version,
            &churn(churn_version as usize),
        );
        assert_eq!(reply.status, 200, "{reply:?}");
        churn_version += 1;
        let revision = reply.json()["store_revision"].as_i64();
        assert!(wait_until(Duration::from_secs(5), || b.revision() == revision));
    }
    let per_sync = (cpu_seconds(b.gw.portcullis.pid()) - cpu) / (b.syncs() - syncs) as f64;
    lines.push(format!(
        "B's CPU per change applied, no load: {:.1} ms ({SYNC_SAMPLES} changes, /readyz polled every 20 ms)",
        per_sync * 1e3
    ));
    // The control: the same writes to an instance on another database, which B never
    // reads — what making changes costs this machine, without B applying them.
    let elsewhere = TestDatabase::create();
    seed(&elsewhere, &(0..fillers).map(filler).collect::<Vec<_>>());
    let c = Instance::start(&elsewhere);
    assert_eq!(create(&c.gw, &churn(0)).status, 201);
    let mut versions = [churn_version, 1];
    let warmup = wrk(b.gw.proxy_port, &script, 3);
    assert_eq!(warmup.non_2xx, 0, "the benchmark request is allowed");
    let mut runs: Vec<(usize, Churn, Load)> = Vec::new();
    for round in 0..rounds {
        // Each round in another order: drift on this shared machine hits each setup alike.
        let mut order = [Churn::None, Churn::ThroughA, Churn::Elsewhere];
        order.rotate_left(round % 3);
        for churning in order {
            let writer = match churning {
                Churn::None => None,
                Churn::ThroughA => Some((&a, &mut versions[0])),
                Churn::Elsewhere => Some((&c, &mut versions[1])),
            };
            let before = Usage::of(writer.as_ref().map_or(&a, |w| w.0), &b, &upstream);
            let stop = std::sync::atomic::AtomicBool::new(false);
            let (load, written) = std::thread::scope(|scope| {
                let writer = writer.map(|(to, version)| {
                    let stop = &stop;
                    let writes = move || {
                        let mut next = Instant::now();
                        let mut written = 0;
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            let reply =
                                update(&to.gw, "churn", *version, &churn(*version as usize));
                            assert_eq!(reply.status, 200, "{reply:?}");
                            *version += 1;
                            written += 1;
                            next += Duration::from_millis(100);
                            std::thread::sleep(next.saturating_duration_since(Instant::now()));
                        }
                        (to, written)
                    };
                    scope.spawn(writes)
                });
                let load = wrk(b.gw.proxy_port, &script, duration);
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                (load, writer.map(|w| w.join().unwrap()))
            });
            // B followed every change through A (its revision is A's once the last landed).
            assert!(wait_until(Duration::from_secs(5), || a.revision() == b.revision()));
            let mut load = load;
            let (to, written) = written.unwrap_or((&a, 0));
            load.usage = Usage::of(to, &b, &upstream).since(&before);
            load.changes = written;
            assert_eq!(load.non_2xx, 0, "every benchmark request stays allowed");
            assert!(
                (load.usage.hits as u64).abs_diff(load.requests) <= 100,
                "the upstream got every request: {} hits for {} requests",
                load.usage.hits,
                load.requests
            );
            if churning != Churn::ThroughA {
                assert_eq!(load.usage.syncs, 0, "B saw no change");
            }
            eprintln!(
                "{churning:?}: {:.0} req/s, p50 {}, p99 {}, {} changes, {} B syncs",
                load.requests_per_second, load.p50, load.p99, load.changes, load.usage.syncs
            );
            runs.push((round, churning, load));
        }
    }
    lines.push(String::new());
    lines.push(format!(
        "## {total} policies: wrk -t2 -c50 -d{duration}s through B's Envoy, {rounds} rounds interleaved"
    ));
    lines.push(
        "| round | changes | req/s | p50 | p99 | B syncs | upstream hits | B CPU/req | B Envoy CPU/req | writer CPU |"
            .into(),
    );
    lines.push("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|".into());
    for (round, churning, load) in &runs {
        let usage = &load.usage;
        let rate = load.changes as f64 / duration as f64;
        lines.push(format!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {:.0} µs | {:.0} µs | {} |",
            round + 1,
            match churning {
                Churn::None => "none".to_owned(),
                Churn::ThroughA => format!("{} through A ({rate:.1}/s)", load.changes),
                Churn::Elsewhere => format!("{} to another database ({rate:.1}/s)", load.changes),
            },
            load.requests_per_second,
            load.p50,
            load.p99,
            usage.syncs,
            usage.hits,
            usage.b_cpu * 1e6 / load.requests as f64,
            usage.b_envoy_cpu * 1e6 / load.requests as f64,
            if *churning == Churn::None {
                "—".to_owned()
            } else {
                format!("{:.2} s", usage.writer_cpu)
            },
        ));
    }
    // Ratios within each round (the machine's load drifts between rounds), then their median.
    let rate = |round: usize, churning: Churn| {
        runs.iter()
            .find(|(r, c, _)| *r == round && *c == churning)
            .map(|(_, _, l)| l.requests_per_second)
            .unwrap()
    };
    let ratios = |over: Churn, under: Churn| {
        let mut ratios: Vec<f64> = (0..rounds)
            .map(|r| rate(r, over) / rate(r, under))
            .collect();
        ratios.sort_by(f64::total_cmp);
        let median = (ratios[(ratios.len() - 1) / 2] + ratios[ratios.len() / 2]) / 2.0;
        let each: Vec<String> = (0..rounds)
            .map(|r| format!("{:.2}", rate(r, over) / rate(r, under)))
            .collect();
        format!("{median:.2}× (rounds: {})", each.join(", "))
    };
    lines.push(format!(
        "req/s with changes B applies / without changes: **{}**",
        ratios(Churn::ThroughA, Churn::None)
    ));
    lines.push(format!(
        "req/s with changes elsewhere (control) / without changes: {}",
        ratios(Churn::Elsewhere, Churn::None)
    ));
    lines.push(format!(
        "req/s with changes B applies / control: **{}**",
        ratios(Churn::ThroughA, Churn::Elsewhere)
    ));
    lines.push(String::new());
    lines
}

/// What streams in while wrk runs: nothing, a change through A every 100 ms (B applies
/// each), or the same changes to an instance on another database (B sees none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Churn {
    None,
    ThroughA,
    Elsewhere,
}

/// A generated policy that never decides the benchmark's requests: per-tenant allowlists
/// and some denies and flags, on hosts, globs and CIDRs of their own.
fn filler(i: usize) -> Value {
    let action = match i % 10 {
        0 => "deny",
        1 => "flag",
        _ => "allow",
    };
    json!({"name": format!("tenant-{i}"), "priority": 10 + (i % 4) as i32, "action": action,
           "match_tags": [format!("tenant:t{}", i % 50)],
           "rules": [
               {"host": format!("api-{i}.svc{}.example.com", i % 20), "paths": ["/v1/*"], "methods": ["GET", "POST"]},
               {"host": format!("*.h{i}.example.net")},
               {"host": format!("10.{}.{}.0/24", i / 250, i % 250), "paths": ["/internal/*"]}]})
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p).div_ceil(100).max(1) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// One kept-alive HTTP/1.1 connection to a forward proxy.
struct ProxyConnection {
    port: u16,
    stream: Option<std::io::BufReader<std::net::TcpStream>>,
}

impl ProxyConnection {
    fn new(port: u16) -> ProxyConnection {
        ProxyConnection { port, stream: None }
    }

    /// `GET url` (absolute form) through the proxy; the status.
    fn get(&mut self, url: &str, host: &str) -> u16 {
        for _ in 0..3 {
            let stream = match &mut self.stream {
                Some(stream) => stream,
                None => {
                    let stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
                    stream.set_nodelay(true).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(5)))
                        .unwrap();
                    self.stream.insert(std::io::BufReader::new(stream))
                }
            };
            match exchange(stream, url, host) {
                Ok((status, keep_alive)) => {
                    if !keep_alive {
                        self.stream = None;
                    }
                    return status;
                }
                // Envoy closed the kept-alive connection: open another.
                Err(_) => self.stream = None,
            }
        }
        panic!("no answer from the proxy on port {}", self.port);
    }
}

fn exchange(
    stream: &mut std::io::BufReader<std::net::TcpStream>,
    url: &str,
    host: &str,
) -> std::io::Result<(u16, bool)> {
    use std::io::{BufRead, Read, Write};
    write!(
        stream.get_mut(),
        "GET {url} HTTP/1.1\r\nHost: {host}\r\n\r\n"
    )?;
    let mut line = String::new();
    stream.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line: {line:?}")))?;
    let (mut length, mut keep_alive) = (0, true);
    loop {
        line.clear();
        if stream.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let Some((name, value)) = line.trim_end().split_once(':') else {
            break;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().map_err(std::io::Error::other)?;
        } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
            keep_alive = false;
        }
    }
    stream.read_exact(&mut vec![0; length])?;
    Ok((status, keep_alive))
}

/// What one wrk run measured.
#[derive(Default)]
struct Load {
    requests: u64,
    requests_per_second: f64,
    non_2xx: u64,
    p50: String,
    p99: String,
    changes: usize,
    usage: Usage,
}

fn wrk(proxy_port: u16, script: &std::path::Path, seconds: u64) -> Load {
    let out = std::process::Command::new("wrk")
        .args(["-t2", "-c50", "--latency", "-d"])
        .arg(format!("{seconds}s"))
        .arg("-s")
        .arg(script)
        .arg(format!("http://127.0.0.1:{proxy_port}"))
        .output()
        .expect("wrk runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "wrk: {text}");
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_owned()))
    };
    Load {
        requests: text
            .lines()
            .find_map(|l| l.trim().split_once(" requests in "))
            .and_then(|(n, _)| n.parse().ok())
            .unwrap_or_else(|| panic!("wrk output: {text}")),
        requests_per_second: field("Requests/sec:").unwrap().parse().unwrap(),
        non_2xx: field("Non-2xx or 3xx responses:").map_or(0, |n| n.parse().unwrap()),
        p50: field("50%").unwrap_or_default(),
        p99: field("99%").unwrap_or_default(),
        ..Load::default()
    }
}

/// Counters read around a run: CPU seconds of the writing instance and of B's processes, B's successful syncs, the
/// upstream's hits.
#[derive(Default)]
struct Usage {
    writer_cpu: f64,
    b_cpu: f64,
    b_envoy_cpu: f64,
    syncs: u64,
    hits: usize,
}

impl Usage {
    fn of(writer: &Instance, b: &Instance, upstream: &Upstream) -> Usage {
        Usage {
            writer_cpu: cpu_seconds(writer.gw.portcullis.pid()),
            b_cpu: cpu_seconds(b.gw.portcullis.pid()),
            b_envoy_cpu: cpu_seconds(b.gw.envoy.pid()),
            syncs: b.syncs(),
            hits: upstream.hits(),
        }
    }

    fn since(&self, before: &Usage) -> Usage {
        Usage {
            writer_cpu: self.writer_cpu - before.writer_cpu,
            b_cpu: self.b_cpu - before.b_cpu,
            b_envoy_cpu: self.b_envoy_cpu - before.b_envoy_cpu,
            syncs: self.syncs - before.syncs,
            hits: self.hits - before.hits,
        }
    }
}

/// User and system CPU time of a process, from `/proc/PID/stat` (clock ticks of 10 ms).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}
