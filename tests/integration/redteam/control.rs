//! The control plane under hostile or broken input: admin API bounds, store isolation and
//! liveness, the audit queue.

use serde_json::{Value, json};

use crate::common::{Gateway, GatewayOptions, Reply, Upstream, run_portcullis};

const EDITOR: &str = "redteam-editor-token-51c0";
const ADMIN: &str = "redteam-admin-token-9e22";
const VIEWER: &str = "redteam-viewer-token-0b7d";
/// A value only the gateway host holds: no stored secret may reach it.
const HOST_SECRET: &str = "SENTINEL-gateway-host-secret-7a3e";
/// A value the operator set aside for stored secrets (`STORED_` prefix).
const STORED_SECRET: &str = "SENTINEL-stored-secret-c41d";

/// A gateway on an embedded store; `store_extra` is added inside its `store` section.
fn store_gateway(store_extra: &str) -> (Gateway, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap().keep();
    let url = format!("sqlite://{}", dir.join("store.db").display());
    let config = format!(
        r#"
store: {{url: "{url}"{store_extra}}}
gateway: {{tags: [env:test]}}
admin:
  tokens:
    - {{name: mallory, role: editor, token: {{env: EDITOR_TOKEN}}}}
    - {{name: root, role: admin, token: {{env: ADMIN_TOKEN}}}}
    - {{name: dashboards, role: viewer, token: {{env: VIEWER_TOKEN}}}}
"#
    );
    let options = GatewayOptions {
        env: vec![
            ("EDITOR_TOKEN".into(), EDITOR.into()),
            ("ADMIN_TOKEN".into(), ADMIN.into()),
            ("VIEWER_TOKEN".into(), VIEWER.into()),
            ("GATEWAY_HOST_SECRET".into(), HOST_SECRET.into()),
            ("STORED_UPSTREAM_KEY".into(), STORED_SECRET.into()),
        ],
        ..GatewayOptions::default()
    };
    (Gateway::start(&config, options), dir)
}

fn call(gw: &Gateway, token: &str, method: &str, path: &str, body: Value) -> Reply {
    gw.api(method, path, Some(token), Some(&body.to_string()))
}

/// A bearer secret for the loopback upstream's `/keyed/*`, read from `source`.
fn keyed_secret(name: &str, source: Value) -> Value {
    json!({"secret": {"name": name, "source": source, "inject": {"style": "bearer"},
           "allow_plaintext": true,
           "rules": [{"host": "127.0.0.1", "paths": ["/keyed/*"]}]}})
}

fn allow_loopback(gw: &Gateway) {
    let policy = json!({"policy": {"name": "loopback", "action": "allow",
                        "rules": [{"host": "127.0.0.1"}]}});
    let reply = call(gw, EDITOR, "POST", "/v1/policies", policy);
    assert_eq!(reply.status, 201, "{reply:?}");
}

/// What the upstream saw in the `Authorization` header of its last request.
fn last_authorization(upstream: &Upstream) -> Option<String> {
    upstream
        .seen()
        .last()
        .and_then(|s| s.header("authorization").map(str::to_owned))
}

/// Issue 13 item 12: an editor token chose an `env` (or `file`) source and a host it
/// controls, and the gateway sent its own environment there.
#[test]
fn an_editor_token_cannot_make_the_gateway_read_its_own_host() {
    let upstream = Upstream::start(None);
    let (gw, _dir) = store_gateway(", secret_sources: {env_prefixes: [STORED_]}");
    allow_loopback(&gw);
    let url = format!("http://127.0.0.1:{}/keyed/x", upstream.port());

    // An editor may change policies, not secrets.
    let host_env = keyed_secret(
        "exfil",
        json!({"type": "env", "var": "GATEWAY_HOST_SECRET"}),
    );
    let refused = call(&gw, EDITOR, "POST", "/v1/secrets", host_env.clone());
    assert_eq!(gw.via_proxy(&[&url]).status, 200);
    assert_ne!(
        last_authorization(&upstream).as_deref(),
        Some(format!("Bearer {HOST_SECRET}").as_str()),
        "the gateway sent its own environment to a host the editor chose"
    );
    assert_eq!(refused.status, 403, "{refused:?}");
    assert_eq!(refused.json()["error"]["type"], "forbidden");
    assert!(
        refused.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("needs an admin"),
        "{refused:?}"
    );

    // An admin may, but only sources the file config sets aside for the store.
    let mut replies = vec![(refused, 403)];
    for (source, path) in [
        (
            json!({"type": "env", "var": "GATEWAY_HOST_SECRET"}),
            "secret.source.var",
        ),
        (
            json!({"type": "file", "path": "/proc/self/environ"}),
            "secret.source.path",
        ),
        (
            json!({"type": "vault", "address": "http://127.0.0.1:1", "path": "x",
                   "token": {"type": "env", "var": "STORED_UPSTREAM_KEY"}}),
            "secret.source.type",
        ),
        (
            json!({"type": "vault", "address": "http://127.0.0.1:1", "path": "x",
                   "token": {"type": "env", "var": "GATEWAY_HOST_SECRET"}}),
            "secret.source.token.var",
        ),
    ] {
        let reply = call(
            &gw,
            ADMIN,
            "POST",
            "/v1/secrets",
            keyed_secret("exfil", source.clone()),
        );
        assert_eq!(reply.status, 422, "{source}: {reply:?}");
        let errors = reply.json()["error"]["errors"].clone();
        assert!(
            errors.as_array().unwrap().iter().any(|e| e["path"] == path),
            "{source}: {errors}"
        );
        replies.push((reply, 422));
    }
    assert_eq!(gw.via_proxy(&[&url]).status, 200);
    assert_eq!(last_authorization(&upstream), None);

    // What the operator set aside is injected as before.
    let allowed = keyed_secret(
        "upstream-key",
        json!({"type": "env", "var": "STORED_UPSTREAM_KEY"}),
    );
    let created = call(&gw, ADMIN, "POST", "/v1/secrets", allowed);
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(gw.via_proxy(&[&url]).status, 200);
    assert_eq!(
        last_authorization(&upstream),
        Some(format!("Bearer {STORED_SECRET}"))
    );
    let refs: Vec<(&Reply, u16)> = replies.iter().map(|(r, status)| (r, *status)).collect();
    gw.assert_no_leaks_checked(&[HOST_SECRET, STORED_SECRET], &refs);
}

/// Runs `statements` against the embedded store at `dir`, from outside the gateway (a
/// hand edit, a migration of another version, a damaged restore).
fn edit_store(dir: &std::path::Path, statements: &[&str]) {
    use sqlx::Connection as _;
    let url = format!("sqlite://{}", dir.join("store.db").display());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        for statement in statements {
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_string()))
                .execute(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
        }
    });
}

/// Writes a secret straight into the store at `dir`, as `portcullis apply --store` does:
/// not through the admin API, so not bounded by it.
fn write_secret_directly(dir: &std::path::Path, secret: Value) {
    use portcullis::store::{Change, Store};
    let url = format!("sqlite://{}", dir.join("store.db").display());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Store::open(&url).await.unwrap();
        let secret = serde_json::from_value(secret["secret"].clone()).unwrap();
        store
            .secrets()
            .create(&secret, &Change::by("gitops", "apply --store"))
            .await
            .unwrap();
    });
}

fn mint(gw: &Gateway, name: &str, tags: &[&str]) -> (String, String) {
    let minted = call(
        gw,
        EDITOR,
        "POST",
        "/v1/tokens",
        json!({"name": name, "tags": tags}),
    );
    assert_eq!(minted.status, 201, "{minted:?}");
    let body = minted.json();
    (
        body["token"]["id"].as_str().unwrap().to_owned(),
        body["value"].as_str().unwrap().to_owned(),
    )
}

/// Issue 13 item 13, first part: one stored row that does not parse failed the whole
/// store read — every later change, revocations included, stopped applying, and a
/// restarted instance refused everything with 503.
#[test]
fn one_unparseable_store_row_does_not_freeze_the_fleet() {
    let upstream = Upstream::start(None);
    let (mut gw, dir) = store_gateway(", secret_sources: {env_prefixes: [STORED_]}");
    let port = upstream.port();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    allow_loopback(&gw);
    let guard = json!({"policy": {"name": "acme-guard", "priority": 1, "action": "deny",
        "match_tags": ["tenant:acme"],
        "rules": [{"host": "127.0.0.1", "paths": ["/acme/private/*"]}]}});
    assert_eq!(call(&gw, EDITOR, "POST", "/v1/policies", guard).status, 201);
    let (ops_id, ops) = mint(&gw, "ops", &["team:ops"]);
    let (_, acme) = mint(&gw, "acme", &["tenant:acme"]);
    let as_token = |token: &str, path: &str| {
        let header = format!("Proxy-Authorization: Bearer {token}");
        gw.via_proxy(&["-H", &header, &url(path)]).status
    };
    assert_eq!(as_token(&ops, "/x"), 200);
    assert_eq!(as_token(&acme, "/acme/public/x"), 200);
    assert_eq!(as_token(&acme, "/acme/private/x"), 403);

    // A row no version of Portcullis wrote: the action is misspelt.
    edit_store(
        &dir,
        &[
            r#"UPDATE policies SET version = version + 1, definition = '{"name":"acme-guard","priority":1,"match_tags":["tenant:acme"],"action":"denny","rules":[{"host":"127.0.0.1","paths":["/acme/private/*"]}]}' WHERE name = 'acme-guard'"#,
            "UPDATE store_revision SET revision = revision + 1 WHERE id = 1",
        ],
    );
    // And a secret written around the API, reading what the file config does not allow.
    write_secret_directly(
        &dir,
        keyed_secret(
            "host-reader",
            json!({"type": "env", "var": "GATEWAY_HOST_SECRET"}),
        ),
    );

    // A revocation still applies.
    let revoked = call(
        &gw,
        EDITOR,
        "DELETE",
        &format!("/v1/tokens/{ops_id}"),
        json!({}),
    );
    assert_eq!(revoked.status, 200, "{revoked:?}");
    assert_eq!(
        as_token(&ops, "/x"),
        407,
        "a revoked token keeps working; log:\n{}",
        gw.portcullis_log()
    );
    // So does a new policy.
    let docs = json!({"policy": {"name": "no-docs", "priority": 1, "action": "deny",
        "rules": [{"host": "127.0.0.1", "paths": ["/docs/*"]}]}});
    let created = call(&gw, EDITOR, "POST", "/v1/policies", docs);
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(gw.via_proxy(&[&url("/docs/x")]).status, 403);

    // The broken policy fails closed in the scope it still names: tenant:acme.
    let check_decisions = |gw: &Gateway| {
        let header = format!("Proxy-Authorization: Bearer {acme}");
        let denied = gw.via_proxy(&["-H", &header, &url("/acme/public/x")]);
        assert_eq!(denied.status, 403, "{denied:?}");
        assert_eq!(denied.json()["error"]["policy"], "acme-guard");
        assert_eq!(gw.via_proxy(&[&url("/acme/public/x")]).status, 200);
        // The secret outside the bounds is never injected.
        assert_eq!(gw.via_proxy(&[&url("/keyed/x")]).status, 200);
        assert_eq!(last_authorization(&upstream), None);
    };
    check_decisions(&gw);

    // Loud: /readyz (still ready), a metric, a log line with each name.
    let check_loud = |gw: &Gateway| {
        let ready = gw.admin("/readyz");
        assert_eq!(ready.status, 200, "{ready:?}");
        let faults = ready.json()["store_faults"].clone();
        let find = |name: &str| {
            faults
                .as_array()
                .and_then(|f| f.iter().find(|f| f["name"] == name).cloned())
                .unwrap_or_else(|| panic!("no fault for {name}: {faults}"))
        };
        let policy = find("acme-guard");
        assert_eq!(
            (&policy["kind"], &policy["outcome"]),
            (&json!("policy"), &json!("denies"))
        );
        assert!(policy.get("error").is_none(), "/readyz says which, not why");
        let secret = find("host-reader");
        assert_eq!(
            (&secret["kind"], &secret["outcome"]),
            (&json!("secret"), &json!("left_out"))
        );
        assert_eq!(
            gw.metric(r#"portcullis_store_faults{kind="policy"}"#),
            Some(1.0)
        );
        assert_eq!(
            gw.metric(r#"portcullis_store_faults{kind="secret"}"#),
            Some(1.0)
        );
        let log = gw.portcullis_log();
        for name in ["acme-guard", "host-reader"] {
            assert!(
                log.lines()
                    .any(|l| l.contains("cannot be used") && l.contains(name)),
                "no log line names {name}:\n{log}"
            );
        }
    };
    check_loud(&gw);

    // A restarted instance reads the same store and decides the same.
    gw.restart_portcullis();
    check_decisions(&gw);
    check_loud(&gw);
    let listed = gw.api("GET", "/v1/policies", Some(VIEWER), None);
    assert_eq!(listed.status, 200, "{listed:?}");
    let fault = &listed.json()["faults"][0];
    assert_eq!(fault["name"], "acme-guard");
    assert!(
        fault["error"].as_str().unwrap().contains("action"),
        "the API says why: {fault}"
    );

    // Fixed through the API: the fault is gone.
    let fixed = json!({"version": 2, "policy": {"name": "acme-guard", "priority": 1,
        "action": "deny", "match_tags": ["tenant:acme"],
        "rules": [{"host": "127.0.0.1", "paths": ["/acme/private/*"]}]}});
    let reply = call(&gw, EDITOR, "PUT", "/v1/policies/acme-guard", fixed);
    assert_eq!(reply.status, 200, "{reply:?}");
    let header = format!("Proxy-Authorization: Bearer {acme}");
    assert_eq!(
        gw.via_proxy(&["-H", &header, &url("/acme/public/x")])
            .status,
        200
    );
    assert_eq!(
        gw.metric(r#"portcullis_store_faults{kind="policy"}"#),
        Some(0.0)
    );
    gw.assert_no_leaks_checked(
        &[HOST_SECRET, &ops, &acme],
        &[(&revoked, 200), (&listed, 200)],
    );
}

/// Issue 13 item 13: a store restored to a lower revision was ignored until the revision
/// caught up again — the gateway kept deciding with what the restore had undone.
#[test]
fn a_store_restored_to_a_lower_revision_is_followed() {
    let upstream = Upstream::start(None);
    let (gw, dir) = store_gateway("");
    let port = upstream.port();
    let status = |path: &str| {
        gw.via_proxy(&[&format!("http://127.0.0.1:{port}{path}")])
            .status
    };
    let policy = |name: &str, paths: &[&str]| {
        json!({"name": name, "action": "allow",
               "rules": [{"host": "127.0.0.1", "paths": paths}]})
    };
    let created = call(
        &gw,
        EDITOR,
        "POST",
        "/v1/policies",
        json!({"policy": policy("docs", &["/docs/*"])}),
    );
    assert_eq!(created.status, 201);
    let backed_up = created.json()["store_revision"].as_i64().unwrap();
    let backup = dir.join("backup.db");
    edit_store(&dir, &[&format!("VACUUM INTO '{}'", backup.display())]);

    // Changes after the backup: the docs narrowed, an extra policy.
    let narrowed = call(
        &gw,
        EDITOR,
        "PUT",
        "/v1/policies/docs",
        json!({"version": 1, "policy": policy("docs", &["/docs/v2/*"])}),
    );
    assert_eq!(narrowed.status, 200, "{narrowed:?}");
    let extra = call(
        &gw,
        EDITOR,
        "POST",
        "/v1/policies",
        json!({"policy": policy("extra", &["/extra/*"])}),
    );
    assert_eq!(extra.status, 201);
    assert_eq!((status("/docs/x"), status("/extra/x")), (403, 200));

    // The backup is restored: every table as it was, the revision lower.
    let mut restore = vec![
        format!("ATTACH DATABASE '{}' AS backup", backup.display()),
        "BEGIN".to_owned(),
    ];
    for table in [
        "policies",
        "policy_versions",
        "secrets",
        "secret_versions",
        "enrollment_tokens",
        "store_revision",
    ] {
        restore.push(format!("DELETE FROM main.{table}"));
        restore.push(format!(
            "INSERT INTO main.{table} SELECT * FROM backup.{table}"
        ));
    }
    restore.push("COMMIT".to_owned());
    let restore: Vec<&str> = restore.iter().map(String::as_str).collect();
    edit_store(&dir, &restore);

    let followed = crate::common::wait_until(std::time::Duration::from_secs(5), || {
        status("/extra/x") == 403 && status("/docs/x") == 200
    });
    assert!(
        followed,
        "the gateway still decides with what the restore undid: /extra/x {}, /docs/x {}; \
         /readyz {}",
        status("/extra/x"),
        status("/docs/x"),
        gw.admin("/readyz").body
    );
    assert_eq!(
        gw.admin("/readyz").json()["store_revision"],
        json!(backed_up)
    );
    assert_eq!(
        gw.metric("portcullis_store_revision_regressions_total"),
        Some(1.0)
    );
    assert!(
        gw.portcullis_log().contains("revision went backwards"),
        "{}",
        gw.portcullis_log()
    );
    // The next change is taken up as any other.
    let again = call(
        &gw,
        EDITOR,
        "POST",
        "/v1/policies",
        json!({"policy": policy("again", &["/again/*"])}),
    );
    assert_eq!(again.status, 201, "{again:?}");
    assert_eq!(again.json()["store_revision"], json!(backed_up + 1));
    assert_eq!(status("/again/x"), 200);
}

/// Issue 13 item 13, last part: the notification connection dropped, and its reconnection
/// went where packets are dropped, not refused: the handshake never completed, nothing
/// reported it, and the instance heard of no change any more (with `resync_interval: 1h`,
/// for an hour) while its other connections worked.
#[test]
fn a_notification_connection_that_cannot_reopen_is_noticed_and_changes_still_arrive() {
    use crate::common::postgres::TestDatabase;
    use crate::common::tcp_proxy::TcpProxy;
    use crate::common::wait_until;
    use std::time::{Duration, Instant};

    /// docs/store.md: the store is read every 5 s, and a connection must open within 5 s;
    /// B re-reads everything only hourly (`resync_interval: 1h`), so any deadline far short
    /// of an hour shows the change came by that read. Generous for a loaded machine.
    const FOLLOWS: Duration = Duration::from_secs(30);
    let db = TestDatabase::create();
    let upstream = Upstream::start(None);
    let a = Gateway::start(&crate::control::config(&db.url), crate::control::options());
    let relay = TcpProxy::start(db.server_addr());
    // B's sessions carry a name of their own, so the database can say when B LISTENs again.
    let b_url = db.url_via(relay.port);
    let b_url = match b_url.contains('?') {
        true => format!("{b_url}&application_name={B_SESSIONS}"),
        false => format!("{b_url}?application_name={B_SESSIONS}"),
    };
    let b_config =
        crate::control::config(&b_url).replace("store: {", "store: {resync_interval: 1h, ");
    let b = Gateway::start(&b_config, crate::control::options());
    let status = |path: &str| crate::control::status_of(&b, &upstream, path);
    let created = crate::control::create(&a, &crate::control::allow("quiet", 10, &["/q/*"]));
    assert_eq!(created.status, 201, "{created:?}");
    assert!(wait_until(FOLLOWS, || status("/q/a") == 200));

    // New connections to the database now go nowhere; B's open ones still work. Then its
    // notification connection drops (A's too: A reconnects directly).
    relay.swallow_new(true);
    terminate_listeners(&db.url);
    assert!(
        wait_until(FOLLOWS, || {
            b.portcullis_log().contains("policy store unreachable")
        }),
        "B does not notice its notification connection dropped:\n{}",
        b.portcullis_log()
    );
    let narrowed = crate::control::update(
        &a,
        "quiet",
        1,
        &crate::control::allow("quiet", 10, &["/q/public/*"]),
    );
    assert_eq!(narrowed.status, 200, "{narrowed:?}");
    let written = Instant::now();
    let followed = wait_until(FOLLOWS, || status("/q/a") == 403);
    assert!(
        followed,
        "B still decides with the old policy {:?} after the change; log:\n{}",
        written.elapsed(),
        b.portcullis_log()
    );
    eprintln!(
        "B decided with the change {} ms after it, its notifications gone",
        written.elapsed().as_millis()
    );

    // The network is back: notifications flow again. B's pool answers first (the store is
    // up again); its notification connection reopens after its backoff (up to 5 s) and any
    // attempt still held by the black hole timing out (5 s): waited for as the database
    // sees it, a session of B's that has run its `LISTEN`, not for a fixed time.
    assert!(
        !b_listens(&db.url, Duration::ZERO),
        "B listens while its new connections go nowhere"
    );
    relay.swallow_new(false);
    let back = Instant::now();
    assert!(
        wait_until(Duration::from_secs(30), || {
            b.metric("portcullis_store_up") == Some(1.0)
        }),
        "B does not see the store again; log:\n{}",
        b.portcullis_log()
    );
    assert!(
        b_listens(&db.url, Duration::from_secs(30)),
        "B's notification connection does not reopen; log:\n{}",
        b.portcullis_log()
    );
    eprintln!(
        "B listened again {} ms after the network came back",
        back.elapsed().as_millis()
    );
    let widened = crate::control::update(
        &a,
        "quiet",
        2,
        &crate::control::allow("quiet", 10, &["/q/*"]),
    );
    assert_eq!(widened.status, 200, "{widened:?}");
    let written = Instant::now();
    assert!(
        wait_until(Duration::from_secs(30), || status("/q/a") == 200),
        "B still decides with the narrowed policy after the change; log:\n{}",
        b.portcullis_log()
    );
    eprintln!(
        "B decided with the widened policy {} ms after it",
        written.elapsed().as_millis()
    );
}

/// The `application_name` of gateway B's sessions in
/// `a_notification_connection_that_cannot_reopen_is_noticed_and_changes_still_arrive`.
const B_SESSIONS: &str = "portcullis-b";

/// Whether, within `timeout`, the test database holds a session of [`B_SESSIONS`] that has
/// finished a `LISTEN` (or, since, a heartbeat `SELECT 1`): B's notification connection.
/// Its pool's sessions run only store reads.
fn b_listens(url: &str, timeout: std::time::Duration) -> bool {
    crate::common::postgres::connected(url, async |conn| {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let listening: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name = $1 \
                 AND state = 'idle' AND (query ILIKE 'LISTEN%' OR query = 'SELECT 1')",
            )
            .bind(B_SESSIONS)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
            if listening > 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
}

/// Ends every `LISTEN`ing connection to the test database, as a failover or an idle-flow
/// reaper would.
fn terminate_listeners(url: &str) {
    crate::common::postgres::connected(url, async |conn| {
        sqlx::raw_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
             AND (query ILIKE 'LISTEN%' OR query = 'SELECT 1')",
        )
        .execute(conn)
        .await
        .unwrap();
    });
}

/// `GET url` through the proxy on one kept-alive connection: the status and the body.
/// Fast enough to fill a queue of thousands of audit records.
struct KeptAlive {
    port: u16,
    stream: Option<std::io::BufReader<std::net::TcpStream>>,
}

impl KeptAlive {
    fn get(&mut self, url: &str) -> (u16, String) {
        use std::io::{BufRead, Read, Write};
        for _ in 0..3 {
            let stream = match &mut self.stream {
                Some(stream) => stream,
                None => {
                    let stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
                    stream.set_nodelay(true).unwrap();
                    stream
                        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
                        .unwrap();
                    self.stream.insert(std::io::BufReader::new(stream))
                }
            };
            let request = format!("GET {url} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
            let exchanged = (|| -> std::io::Result<(u16, String, bool)> {
                stream.get_mut().write_all(request.as_bytes())?;
                let mut line = String::new();
                stream.read_line(&mut line)?;
                let status: u16 = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| std::io::Error::other(format!("status line {line:?}")))?;
                let (mut length, mut close) = (0usize, false);
                loop {
                    line.clear();
                    stream.read_line(&mut line)?;
                    let header = line.trim_end().to_ascii_lowercase();
                    if header.is_empty() {
                        break;
                    }
                    if let Some(v) = header.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    close |= header == "connection: close";
                }
                let mut body = vec![0; length];
                stream.read_exact(&mut body)?;
                Ok((status, String::from_utf8_lossy(&body).into_owned(), close))
            })();
            match exchanged {
                Ok((status, body, close)) => {
                    if close {
                        self.stream = None;
                    }
                    return (status, body);
                }
                Err(_) => self.stream = None,
            }
        }
        panic!("no answer from the proxy on port {}", self.port);
    }
}

/// A FIFO nobody reads: an audit sink that blocks once the pipe's buffer is full. The
/// returned file holds the read end open (so opening the write end does not wait).
fn blocked_sink(dir: &std::path::Path) -> (std::path::PathBuf, std::fs::File) {
    let fifo = dir.join("audit.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // Read and write: opening a FIFO so never blocks, and nothing is ever read from it.
    let held = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    (fifo, held)
}

/// Issue 13 item 15: an audit sink that stops taking records (a full disk, a stuck pipe)
/// turned every request into Envoy's 500, and no metric said why.
#[test]
fn a_blocked_audit_sink_never_turns_into_a_500() {
    let upstream = Upstream::start(None);
    let dir = tempfile::tempdir().unwrap();
    let (fifo, _held) = blocked_sink(dir.path());
    let config = |when_full: &str| {
        format!(
            "audit: {{sink: file, path: {}, queue: 64{when_full}}}\n\
             policies:\n  - {{name: loopback, action: allow, rules: [{{host: 127.0.0.1}}]}}\n",
            fifo.display()
        )
    };
    let gw = Gateway::start(&config(""), GatewayOptions::default());
    let mut client = KeptAlive {
        port: gw.proxy_port,
        stream: None,
    };
    let url = format!("http://127.0.0.1:{}/x", upstream.port());
    // Fill the pipe and the queue, until the gateway stops forwarding.
    let mut refused = None;
    for sent in 0..20_000 {
        let (status, body) = client.get(&url);
        assert_ne!(
            status, 500,
            "request {sent} got a 500 with the audit sink blocked: {body}"
        );
        if status != 200 {
            refused = Some((status, body, upstream.hits()));
            break;
        }
    }
    let (status, body, hits) = refused.expect("the sink never filled up");
    // The default (`block`): a bounded wait, then a clear refusal; nothing unaudited.
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["type"], "audit_unavailable", "{body}");
    assert_eq!(client.get(&url).0, 503);
    assert_eq!(upstream.hits(), hits, "nothing is forwarded unaudited");
    assert!(
        gw.metric(r#"portcullis_audit_queue_full_total{outcome="refused"}"#)
            .is_some_and(|n| n >= 2.0),
        "{}",
        gw.admin("/metrics").body
    );
    drop(gw);

    // `drop`: the workload's requests go on, and the lost records are counted.
    let (fifo2, _held2) = {
        let dir2 = dir.path().join("second");
        std::fs::create_dir(&dir2).unwrap();
        blocked_sink(&dir2)
    };
    let config = config(", when_full: drop")
        .replace(&fifo.display().to_string(), &fifo2.display().to_string());
    let gw = Gateway::start(&config, GatewayOptions::default());
    let mut client = KeptAlive {
        port: gw.proxy_port,
        stream: None,
    };
    for _ in 0..400 {
        assert_eq!(client.get(&url).0, 200);
    }
    assert!(
        gw.metric("portcullis_audit_dropped_total")
            .is_some_and(|n| n > 0.0),
        "{}",
        gw.admin("/metrics").body
    );
}

/// Issue 13 item 18: `portcullis validate` (and the API) stopped at the first error inside
/// one policy — a bad method and an unknown field in the same policy were not both
/// reported, so each fix revealed the next.
#[test]
fn every_error_of_one_policy_is_reported_by_validate_and_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "policies:\n  - name: p\n    action: allow\n    colour: red\n    rules:\n      \
         - {host: a.example, methods: [GET, FETCH]}\n      - {host: b.example, pths: [/x]}\n",
    )
    .unwrap();
    let validated = run_portcullis(&["validate", file.to_str().unwrap()], &[]);
    let printed = &validated.stdout;
    assert_eq!(validated.code, 1, "{printed}");
    let f = file.display();
    for expected in [
        format!("{f}:4:5: policies[0].colour (policy \"p\"): unknown field `colour`"),
        format!(
            "{f}:6:42: policies[0].rules[0].methods[1] (policy \"p\"): unknown method \"FETCH\""
        ),
        format!("{f}:7:27: policies[0].rules[1].pths (policy \"p\"): unknown field `pths`"),
    ] {
        assert!(
            printed.lines().any(|l| l.starts_with(&expected)),
            "missing {expected:?} in:\n{printed}"
        );
    }
    assert!(printed.contains("3 errors"), "{printed}");

    // The API: one 422 with every error and its path.
    let (gw, _dir) = store_gateway("");
    let reply = call(
        &gw,
        EDITOR,
        "POST",
        "/v1/policies",
        json!({"policy": {"name": "p", "action": "allow", "colour": "red",
               "rules": [{"host": "a.example", "methods": ["GET", "FETCH"]},
                         {"host": "b.example", "pths": ["/x"]}]}}),
    );
    assert_eq!(reply.status, 422, "{reply:?}");
    let paths: Vec<String> = reply.json()["error"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        paths,
        [
            "policy.colour",
            "policy.rules[0].methods[1]",
            "policy.rules[1].pths"
        ],
        "{reply:?}"
    );
}
