//! The fleet on PostgreSQL: two Portcullis instances (each with its own Envoy) share one
//! database, and each reaches it through its own relay ([`TcpProxy`]), so a test can take
//! the database away from one instance or from both without touching the server. A change
//! made through one instance's API decides requests through the other's Envoy, carried by
//! the store's notifications (the reader's periodic resync is set to an hour, so nothing
//! else can carry it; how long it took is printed, and measured in `fleet::bench`); an
//! instance cut off keeps deciding with its last snapshot and catches up when the database
//! is back; one that never read the store refuses everything (503); one that joins late
//! reads everything already stored. An instance reads a change as the rows it changed, and
//! still follows writers that stamp nothing: at once when the rows' tally (count, sum of
//! versions) says so, at its next resync otherwise.
//!
//! `fleet::bench` (ignored, in `fleet/bench.rs`) measures propagation over 100 changes and
//! the decision throughput of an instance while changes stream in (BENCHMARKS.md).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::postgres::TestDatabase;
use crate::common::tcp_proxy::TcpProxy;
use crate::common::{Gateway, GatewayOptions, Reply, Upstream, wait_until};
use crate::control::{EDITOR, allow, config, create, get, options, post, status_of, update};

/// How long a test waits for a change to reach another instance before it gives up: a
/// deadline, not the spec's bound (a second, which `fleet::bench` measures). Readers
/// resync hourly ([`NO_RESYNC`]), so whatever arrives within it came through the store's
/// notifications.
const PROPAGATION_DEADLINE: Duration = Duration::from_secs(30);
/// For a reader: no periodic resync within a test (the default is every 30 s, inside the
/// deadline), so a change that reaches it was announced to it.
const NO_RESYNC: &str = "resync_interval: 1h, ";
/// How long an instance that must not hear of a change is watched not hearing of it.
const UNCHANGED_FOR: Duration = Duration::from_secs(2);
/// How long an instance cut off from the database may take to catch up once it is back.
/// Its reconnection backoff is capped at 5 s; within one attempt, sqlx retries a refused
/// connection at intervals of up to 6 s. Generous for a shared machine; with an hourly
/// resync, only the reconnection can explain a catch-up within it.
const RECONNECTION: Duration = Duration::from_secs(30);

/// How long an instance whose connections went silent (nothing arrives, nothing fails)
/// may take to notice and decide with a change. The notification connection must answer
/// every 5 s within 5 s; each silent connection left in the pool then costs its 5 s
/// acquire timeout once: about 25 s at worst, doubled for a shared machine. The instance
/// resyncs hourly, so only noticing the silence can explain a change decided within it.
const SILENT: Duration = Duration::from_secs(50);

/// One Portcullis instance with its Envoy, and the relay it reaches the database through.
struct Instance {
    gw: Gateway,
    relay: TcpProxy,
}

impl Instance {
    fn start(db: &TestDatabase) -> Instance {
        Instance::start_with(db, options(), false)
    }

    /// An instance that learns of changes only through the store's notifications (and
    /// its reconnections): no periodic resync within a test.
    fn start_reader(db: &TestDatabase) -> Instance {
        Instance::start_configured(db, options(), false, NO_RESYNC)
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

/// Makes a change through `write` (an API call on A) and waits until `b` answers `status`
/// for `path`, as [`reaches`] does. Returns the change's store revision and `b`'s audit
/// record of the request that showed the change.
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

/// Polls B (every 10 ms, with curl) until `shows` holds, at most [`PROPAGATION_DEADLINE`],
/// printing how long after the change's answer (`written`) that was; asserts that B then
/// reports the change's store `revision` on `/readyz` and in its metrics. B resyncs hourly
/// ([`Instance::start_reader`]): the change reached it as a notification.
fn reaches(what: &str, written: Instant, revision: i64, b: &Instance, shows: impl FnMut() -> bool) {
    let Some(delay) = time_until(written, PROPAGATION_DEADLINE, shows) else {
        panic!(
            "{what}: B does not decide with the change {PROPAGATION_DEADLINE:?} after it; \
             B's log:\n{}",
            b.gw.portcullis_log()
        );
    };
    eprintln!("propagation A→B ({what}): {} ms", delay.as_millis());
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
fn a_change_through_one_instance_decides_requests_through_another() {
    let db = TestDatabase::create();
    let upstream = Upstream::start(None);
    let a = Instance::start(&db);
    let b = Instance::start_reader(&db);
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
    let b = Instance::start_reader(&db);
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
        holds_for(UNCHANGED_FOR, || b.status(&upstream, "/o/a") == 200),
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
    let b = Instance::start_reader(&db);
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
               "inject": {"style": "bearer"}, "allow_plaintext": true,
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

#[test]
fn changes_are_read_row_by_row_and_writes_that_stamp_nothing_are_still_followed() {
    let db = TestDatabase::create();
    let upstream = Upstream::start(None);
    seed(
        &db,
        &[
            allow("docs", 10, &["/docs/*"]),
            allow("blog", 10, &["/blog/*"]),
            allow("wiki", 10, &["/wiki/*"]),
        ],
    );
    let a = Instance::start(&db);
    // Reads the store whole every 2 s when it moved; between those, what notifications say.
    let b = Instance::start_configured(&db, options(), false, "resync_interval: 2s, ");
    assert_eq!(b.status(&upstream, "/docs/x"), 200);

    // A change through A reaches B as the one row it changed.
    let written = Instant::now();
    let reply = update(&a.gw, "docs", 1, &allow("docs", 10, &["/docs/v2/*"]));
    assert_eq!(reply.status, 200, "{reply:?}");
    reaches("update", written, a.revision().unwrap(), &b, || {
        b.status(&upstream, "/docs/x") == 403
    });
    let loaded = |read: &str| {
        let log = b.gw.portcullis_log();
        (log.lines())
            .filter(|l| l.contains("policies loaded from the store") && l.contains(read))
            .count()
    };
    assert!(
        loaded("read=\"changes\" changed_rows=1") >= 1,
        "B read the change as one row:\n{}",
        b.gw.portcullis_log()
    );

    // Writers that do not stamp the rows they change (an older version during a rolling
    // upgrade, SQL by hand): the revision moves and is announced, the row keeps the stamp
    // of its last change, so reading what changed finds nothing.
    let unstamped = |name: &str, version: &str| {
        let deny = json!({"name": name, "priority": 10, "action": "deny",
                          "rules": [{"host": "127.0.0.1", "paths": [format!("/{name}/*")]}]});
        let definition = deny.to_string();
        crate::common::postgres::connected(&db.url, async |conn| {
            use sqlx::Executor;
            conn.execute(sqlx::AssertSqlSafe(format!(
                "BEGIN; UPDATE policies SET version = {version}, definition = '{definition}' \
                 WHERE name = '{name}'; \
                 UPDATE store_revision SET revision = revision + 1 WHERE id = 1; \
                 SELECT pg_notify('portcullis_changes', '{{}}'); COMMIT;"
            )))
            .await
            .unwrap();
        });
        Instant::now()
    };
    let follows = |written: Instant, path: &str| {
        time_until(written, PROPAGATION_DEADLINE, || {
            b.status(&upstream, path) == 403
        })
        .unwrap_or_else(|| panic!("B never followed the write:\n{}", b.gw.portcullis_log()))
    };
    // One that adds a version, as every write does: the rows no longer tally with what B
    // holds, and B reads the store whole at once.
    let written = unstamped("blog", "version + 1");
    let followed = follows(written, "/blog/x");
    eprintln!("an unstamped write with a new version followed after {followed:?}");
    let log = b.gw.portcullis_log();
    assert!(log.contains("do not tally"), "{log}");
    // One that keeps the version: followed at B's next resync, within 2 s.
    let whole_reads = loaded("read=\"whole\"");
    let written = unstamped("wiki", "version");
    let followed = follows(written, "/wiki/x");
    eprintln!(
        "an unstamped write under the same version followed after {followed:?} (resync every 2 s)"
    );
    assert!(loaded("read=\"whole\"") > whole_reads);
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

mod bench;
