//! The fast path through the real Envoy (docs/fast-path.md): requests the policies decide
//! from host, port, path and method are allowed or refused by routes Portcullis serves,
//! without an ext_proc round trip, and still reach the audit trail, the metrics and the fire
//! counts; everything else — proxy credentials, encoded paths — is decided by Portcullis;
//! a policy change moves a host onto and off the fast path; and random policy sets decide
//! random requests the same with the fast path and without it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::dns::LoopbackDns;
use crate::common::{Gateway, Reply, Upstream, wait_until};
use crate::control::{create, get, options, post, update};

/// How many ext_proc streams Envoy has opened: a request Envoy decides by itself opens none.
const STREAMS: &str = "ext_proc.portcullis.streams_started";

fn store_gateway(dns: &LoopbackDns) -> Gateway {
    let dir = tempfile::tempdir().unwrap().keep();
    let url = format!("sqlite://{}", dir.join("store.db").display());
    let config = format!("{}{}", crate::control::config(&url), dns.guard_config());
    Gateway::start(&config, options())
}

/// The request through the proxy, and whether Portcullis was asked about it.
fn send(gw: &Gateway, args: &[&str]) -> (Reply, bool) {
    let before = gw.envoy_counter(STREAMS);
    let reply = gw.via_proxy(args);
    (reply, gw.envoy_counter(STREAMS) > before)
}

/// The audit record of `request_id`, once Envoy's access log delivered it.
fn record_of(gw: &Gateway, request_id: &str) -> Value {
    let mut found = Value::Null;
    assert!(
        wait_until(Duration::from_secs(10), || {
            found = gw
                .audit()
                .into_iter()
                .find(|r| r["request_id"] == request_id && r.get("event").is_none())
                .unwrap_or(Value::Null);
            !found.is_null()
        }),
        "no audit record for {request_id}:\n{}",
        gw.audit_lines()
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    found
}

/// The `x-request-id` of the last request the upstream saw: Envoy's id for it.
fn last_request_id(upstream: &Upstream) -> String {
    let seen = upstream.seen();
    let last = seen.last().expect("the upstream saw a request");
    last.header("x-request-id").unwrap().to_owned()
}

/// How many decision records (not `upstream` ones) `lines` hold for `request_id`.
fn decisions_for(lines: &[Value], request_id: &str) -> usize {
    lines
        .iter()
        .filter(|r| r["request_id"] == request_id && r.get("event").is_none())
        .count()
}

fn registry(port: u16) -> Value {
    json!({"name": "registry", "priority": 10, "action": "allow",
           "rules": [{"host": format!("fast.test:{port}"), "paths": ["/pkg/*"], "methods": ["GET"]}]})
}

fn no_admin(port: u16) -> Value {
    json!({"name": "no-admin", "priority": 5, "action": "deny",
           "rules": [{"host": format!("fast.test:{port}"), "paths": ["/pkg/admin*"]}]})
}

/// A gateway on the embedded store whose `registry` and `no-admin` policies name
/// `fast.test` on the upstream's port, once Envoy holds their routes.
fn registry_gateway() -> (Upstream, Gateway) {
    let dns = LoopbackDns::start();
    let upstream = Upstream::start(None);
    let port = upstream.port();
    let gw = store_gateway(&dns);
    assert_eq!(create(&gw, &registry(port)).status, 201);
    assert_eq!(create(&gw, &no_admin(port)).status, 201);
    assert!(gw.wait_routes_current(), "{}", gw.envoy_log());
    (upstream, gw)
}

#[test]
fn envoy_allows_and_refuses_by_itself_and_the_audit_trail_still_sees_it() {
    let (upstream, gw) = registry_gateway();
    let port = upstream.port();
    let base = format!("http://fast.test:{port}");

    // Allowed by a route: the upstream answers, Portcullis is never asked.
    let (reply, asked) = send(&gw, &[&format!("{base}/pkg/left-pad?v=1")]);
    assert_eq!(reply.status, 200, "{reply:?}\n{}", gw.envoy_log());
    assert!(!asked, "an allowed fast-path request went through ext_proc");
    let seen = upstream.seen();
    let last = seen.last().unwrap();
    assert_eq!(last.path, "/pkg/left-pad?v=1");
    assert_eq!(last.header("x-portcullis-upstream-address"), None);
    let request_id = last.header("x-request-id").unwrap().to_owned();
    let record = record_of(&gw, &request_id);
    assert_eq!(record["decision"], "ALLOWED", "{record}");
    assert_eq!(record["decided_by"], "envoy");
    assert_eq!(record["policy"], "registry");
    assert_eq!(record["policy_version"], 1);
    assert_eq!(record["rule"], 0);
    assert_eq!(
        record["path"], "/pkg/left-pad",
        "no query in the audit trail"
    );
    assert_eq!(record["host"], "fast.test");
    assert_eq!(record["port"], port);
    assert_eq!(record["method"], "GET");
    assert_eq!(
        record["tags"],
        json!(["env:test", "listener:forward-proxy"])
    );
    assert_eq!(record["identity"]["kind"], "gateway");
    assert_eq!(
        record["upstream_address"],
        format!("127.0.0.1:{port}"),
        "{record}"
    );

    // Refused by a route: the contract's JSON, its request id in the header and the body.
    let (reply, asked) = send(&gw, &[&format!("{base}/pkg/admin/users")]);
    assert_eq!(reply.status, 403, "{reply:?}");
    assert!(!asked, "a refused fast-path request went through ext_proc");
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body = reply.json();
    assert_eq!(body["error"]["type"], "policy_denied", "{body}");
    assert_eq!(body["error"]["reason"], "policy_deny");
    assert_eq!(body["error"]["policy"], "no-admin");
    assert_eq!(body["error"]["transform"], "allowlist");
    let request_id = body["error"]["request_id"].as_str().unwrap().to_owned();
    assert!(!request_id.is_empty());
    assert_eq!(
        reply.header("x-portcullis-request-id"),
        Some(request_id.as_str())
    );
    assert_eq!(
        body["error"]["message"],
        format!("GET fast.test:{port}/pkg/admin/users is denied by policy \"no-admin\"")
    );
    let record = record_of(&gw, &request_id);
    assert_eq!(record["decision"], "DENIED", "{record}");
    assert_eq!(record["decided_by"], "envoy");
    assert_eq!(record["status"], 403);
    assert_eq!(record["policy"], "no-admin");
    assert_eq!(record["reason"], "policy_deny");

    // A method no rule allows on a host the routes know: the default action, in Envoy.
    let (reply, asked) = send(&gw, &["-X", "POST", &format!("{base}/pkg/left-pad")]);
    assert_eq!(reply.status, 403, "{reply:?}");
    assert!(!asked);
    assert_eq!(reply.json()["error"]["reason"], "no_matching_policy");
    assert_eq!(reply.json()["error"]["policy"], Value::Null);

    // Metrics and fire counts count them as they count Portcullis's decisions.
    assert_eq!(
        gw.metric(r#"portcullis_decisions_total{decision="ALLOWED",policy="registry"}"#),
        Some(1.0)
    );
    let mut fires = Value::Null;
    assert!(
        wait_until(Duration::from_secs(10), || {
            fires = get(&gw, "/v1/fire-counts?window=1h");
            fires["no_policy"]["DENIED"] == 1
        }),
        "{fires}"
    );
    let of = |name: &str| {
        fires["policies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["policy"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(of("registry")["ALLOWED"], 1, "{fires}");
    assert_eq!(of("no-admin")["DENIED"], 1, "{fires}");
}

#[test]
fn a_hostile_path_cannot_forge_an_audit_line() {
    // Envoy's access log is JSON lines Portcullis reads back: a workload that could end a
    // line or add a field through its path could write records of its own choosing.
    let (upstream, gw) = registry_gateway();
    let port = upstream.port();
    let forged = r#"/pkg/x","rid":"forged-rid","route":"fast|deny|v|0|-|listener:forward-proxy|no-admin","path":"/pkg/admin"}{"rid":"forged-two"#;
    let raw = gw.send_raw(
        format!(
            "GET http://fast.test:{port}{forged} HTTP/1.1\r\nHost: fast.test:{port}\r\n\
             Connection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    // Whether Envoy takes such a target or refuses it (400), nothing else is written.
    assert!(matches!(raw.status, 200 | 400), "{raw:?}");
    eprintln!(
        "a path with quotes and braces: Envoy answered {}",
        raw.status
    );
    if raw.status == 200 {
        let seen = upstream.seen();
        let last = seen.last().unwrap();
        let request_id = last.header("x-request-id").unwrap().to_owned();
        let record = record_of(&gw, &request_id);
        assert_eq!(record["path"], last.path.as_str(), "{record}");
        assert_eq!(record["decision"], "ALLOWED");
        assert_eq!(record["policy"], "registry");
    }
    // A byte that is not UTF-8 in the path must not make the line unreadable, and the
    // request unaudited.
    let mut evasive = format!("GET http://fast.test:{port}/pkg/evade-").into_bytes();
    evasive.push(0xff);
    evasive.extend_from_slice(
        format!(" HTTP/1.1\r\nHost: fast.test:{port}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let before = upstream.seen().len();
    let raw = gw.send_raw(&evasive);
    assert!(matches!(raw.status, 200 | 400), "{raw:?}");
    if raw.status == 200 {
        let seen = upstream.seen();
        assert_eq!(seen.len(), before + 1);
        let request_id = seen
            .last()
            .unwrap()
            .header("x-request-id")
            .unwrap()
            .to_owned();
        let record = record_of(&gw, &request_id);
        assert_eq!(record["decision"], "ALLOWED", "{record}");
        assert!(
            record["path"].as_str().unwrap().starts_with("/pkg/evade-"),
            "{record}"
        );
    }
    eprintln!(
        "a path with a byte that is not UTF-8: Envoy answered {}",
        raw.status
    );
    // A request after it is recorded: the trail has read past the hostile line.
    let (reply, asked) = send(&gw, &[&format!("http://fast.test:{port}/pkg/after")]);
    assert_eq!(reply.status, 200);
    assert!(!asked);
    let after = last_request_id(&upstream);
    record_of(&gw, &after);
    let lines = gw.audit_lines();
    assert!(
        lines
            .iter()
            .all(|r| r["request_id"] != "forged-rid" && r["request_id"] != "forged-two"),
        "{lines:?}"
    );
    assert!(
        lines.iter().all(|r| r["policy"] != "no-admin"),
        "a refusal nobody asked for was recorded: {lines:?}"
    );
}

#[test]
fn fast_path_requests_while_portcullis_is_away_are_audited_when_it_is_back() {
    let (upstream, mut gw) = registry_gateway();
    let port = upstream.port();
    // Envoy keeps the routes it holds: its fast path decides without Portcullis.
    gw.portcullis.stop();
    let mut ids = Vec::new();
    for n in 0..3 {
        let reply = gw.via_proxy(&[&format!("http://fast.test:{port}/pkg/away-{n}")]);
        assert_eq!(reply.status, 200, "{reply:?}");
        ids.push(last_request_id(&upstream));
    }
    // Give Envoy a flush (200 ms here) so the lines are in the file before Portcullis is back.
    std::thread::sleep(Duration::from_millis(600));
    gw.restart_portcullis();
    for id in &ids {
        let record = record_of(&gw, id);
        assert_eq!(record["decided_by"], "envoy", "{record}");
        assert_eq!(record["decision"], "ALLOWED");
    }
    // Each once: a restart resumes where the last run stopped reading.
    let lines = gw.audit_lines();
    for id in &ids {
        let decisions = decisions_for(&lines, id);
        assert_eq!(decisions, 1, "{id}: {lines:?}");
    }
    gw.restart_portcullis();
    let reply = gw.via_proxy(&[&format!("http://fast.test:{port}/pkg/later")]);
    assert_eq!(reply.status, 200);
    let later = last_request_id(&upstream);
    record_of(&gw, &later);
    let lines = gw.audit_lines();
    for id in &ids {
        let decisions = decisions_for(&lines, id);
        assert_eq!(decisions, 1, "read again after a second restart: {id}");
    }
}

#[test]
fn what_envoy_cannot_decide_alone_still_goes_to_portcullis() {
    let (upstream, gw) = registry_gateway();
    let port = upstream.port();
    let base = format!("http://fast.test:{port}");

    // Proxy credentials: the identity and its tags come from them, so Portcullis decides.
    // A token whose tags a policy allows /pkg/admin for gets it — where the route, for a
    // token-less workload, refuses.
    let mut ci_admin = no_admin(port);
    ci_admin["name"] = json!("ci-admin");
    ci_admin["priority"] = json!(1);
    ci_admin["action"] = json!("allow");
    ci_admin["match_tags"] = json!(["team:ci"]);
    assert_eq!(create(&gw, &ci_admin).status, 201);
    let minted = post(
        &gw,
        "/v1/tokens",
        json!({"name": "ci", "tags": ["team:ci"]}),
    );
    assert_eq!(minted.status, 201, "{minted:?}");
    let token = minted.json()["value"].as_str().unwrap().to_owned();
    assert!(gw.wait_routes_current());
    let admin = format!("{base}/pkg/admin");
    let (reply, asked) = send(&gw, &[&admin]);
    assert_eq!((reply.status, asked), (403, false), "{reply:?}");
    let auth = format!("Proxy-Authorization: Bearer {token}");
    let (reply, asked) = send(&gw, &["-H", &auth, &admin]);
    assert!(asked, "a token-bearing request skipped Portcullis");
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = upstream.seen();
    let last = seen.last().unwrap();
    assert!(last.header("proxy-authorization").is_none());
    let record = record_of(&gw, last.header("x-request-id").unwrap());
    assert_eq!(record["identity"]["name"], "ci", "{record}");
    assert_eq!(record["policy"], "ci-admin");
    assert!(record.get("decided_by").is_none());
    // An unknown token is refused by Portcullis too.
    let (reply, asked) = send(
        &gw,
        &[
            "--proxy-user",
            "ci:not-a-token",
            &format!("{base}/pkg/left-pad"),
        ],
    );
    assert!(asked);
    assert_eq!(reply.status, 407, "{reply:?}");

    // An encoded unreserved character: Envoy decodes it before routing (normalize_path),
    // as Portcullis would, so either refuses it by the same policy.
    let (reply, _) = send(&gw, &[&format!("{base}/pkg/%61dmin?q=1")]);
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(reply.json()["error"]["policy"], "no-admin");
    // An encoding Envoy keeps (a reserved character): Portcullis reads it, by its
    // `request:` settings — here an encoded `;`, refused as a path parameter.
    let (reply, asked) = send(&gw, &[&format!("{base}/pkg/admin%3Bx=1")]);
    assert!(asked, "an encoded path was decided by a route");
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(reply.json()["error"]["policy"], "no-admin");

    // Dot segments: Envoy resolves them before routing, so the route refuses.
    let (reply, _) = send(&gw, &["--path-as-is", &format!("{base}/pkg/x/../admin")]);
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(reply.json()["error"]["policy"], "no-admin");

    // `;` parameters: Portcullis's `request.path_parameters` (reject by default) decides.
    let (reply, asked) = send(&gw, &[&format!("{base}/pkg/admin;x=1")]);
    assert!(asked);
    assert_eq!(reply.status, 400, "{reply:?}");

    // A workload naming its own upstream address on an allowed route does not choose
    // where Envoy connects: the vetted address overwrites it, and it never leaves.
    let hits = upstream.hits();
    let (reply, asked) = send(
        &gw,
        &[
            "-H",
            "x-portcullis-upstream-address: 10.255.255.1:80",
            &format!("{base}/pkg/redirected"),
        ],
    );
    assert!(!asked);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(upstream.hits(), hits + 1);
    assert_eq!(
        upstream
            .seen()
            .last()
            .unwrap()
            .header("x-portcullis-upstream-address"),
        None
    );

    // A host spelled in capitals is the same host to both.
    let (reply, _) = send(&gw, &[&format!("http://FAST.TEST:{port}/pkg/admin")]);
    assert_eq!(reply.status, 403, "{reply:?}");

    // A request id the workload sends does not become the audit record's: records of
    // different requests cannot be made to collide.
    let (reply, _) = send(
        &gw,
        &[
            "-H",
            "x-request-id: forged-id",
            &format!("{base}/pkg/admin"),
        ],
    );
    assert_eq!(reply.status, 403);
    assert_ne!(
        reply.json()["error"]["request_id"],
        "forged-id",
        "{reply:?}"
    );
}

#[test]
fn a_policy_change_moves_a_host_onto_and_off_the_fast_path_within_a_second() {
    let dns = LoopbackDns::start();
    let upstream = Upstream::start(None);
    let port = upstream.port();
    let gw = store_gateway(&dns);
    assert_eq!(create(&gw, &registry(port)).status, 201);
    assert!(gw.wait_routes_current(), "{}", gw.envoy_log());
    let url = format!("http://fast.test:{port}/pkg/left-pad");
    assert!(!send(&gw, &[&url]).1, "starts on the fast path");

    // A header condition: the decision now reads more than host, path and method.
    let mut conditional = registry(port);
    conditional["rules"][0]["headers"] = json!([{"name": "x-team", "present": true}]);
    let changed = Instant::now();
    assert_eq!(update(&gw, "registry", 1, &conditional).status, 200);
    let mut off = None;
    assert!(wait_until(Duration::from_secs(10), || {
        let (reply, asked) = send(&gw, &[&url]);
        if asked {
            assert_eq!(reply.status, 403, "no x-team header: refused by Portcullis");
            off = Some(changed.elapsed());
        }
        asked
    }));
    let (reply, asked) = send(&gw, &["-H", "x-team: red", &url]);
    assert!(asked);
    assert_eq!(reply.status, 200);

    let changed = Instant::now();
    assert_eq!(update(&gw, "registry", 2, &registry(port)).status, 200);
    let mut on = None;
    assert!(wait_until(Duration::from_secs(10), || {
        let (reply, asked) = send(&gw, &[&url]);
        if !asked {
            assert_eq!(reply.status, 200);
            on = Some(changed.elapsed());
        }
        !asked
    }));
    eprintln!(
        "fast path: a change took the host off the fast path {} ms after the API answered, \
         and back on {} ms after (each measured to the first request decided the new way)",
        off.unwrap().as_millis(),
        on.unwrap().as_millis()
    );
}

/// A small deterministic generator (xorshift).
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
}

/// Random policies over three hosts on the upstream's port (and a wildcard), as YAML.
fn random_policies(dice: &mut Dice, port: u16) -> String {
    let hosts = [
        format!("a.test:{port}"),
        format!("b.test:{port}"),
        format!("c.test:{port}"),
        "*.test".to_owned(),
    ];
    let paths = ["", "[/v1/*]", "[/v1/x]", "[/v2/*, /v1/a]", "[\"/v[12]/*\"]"];
    let methods = ["", "[GET]", "[GET, POST]", "[DELETE]"];
    let actions = ["allow", "deny", "flag", "allow", "deny"];
    let mut yaml = String::from("policies:\n");
    for i in 0..(2 + dice.next() % 6) {
        let mut rule = format!("host: \"{}\"", dice.pick(&hosts));
        let p = dice.pick(&paths);
        if !p.is_empty() {
            rule.push_str(&format!(", paths: {p}"));
        }
        let m = dice.pick(&methods);
        if !m.is_empty() {
            rule.push_str(&format!(", methods: {m}"));
        }
        if dice.next().is_multiple_of(10) {
            rule.push_str(", headers: [{name: x-team, present: true}]");
        }
        let warn = if dice.next().is_multiple_of(10) {
            ", warn: true"
        } else {
            ""
        };
        yaml.push_str(&format!(
            "  - {{name: p{i}, priority: {}, action: {}{warn}, rules: [{{{rule}}}]}}\n",
            dice.next() % 4,
            dice.pick(&actions)
        ));
    }
    yaml
}

/// What a client and the audit trail saw of one request.
fn outcome(reply: &Reply) -> String {
    let error = serde_json::from_str::<Value>(&reply.body)
        .map(|b| b["error"].clone())
        .unwrap_or(Value::Null);
    format!(
        "{} {} {} {} {}",
        reply.status, error["type"], error["reason"], error["policy"], error["message"]
    )
}

#[test]
fn random_policy_sets_decide_random_requests_the_same_with_and_without_the_fast_path() {
    let dns = LoopbackDns::start();
    let upstream = Upstream::start(None);
    let port = upstream.port();
    let settings = |fast: bool| {
        format!(
            "gateway: {{tags: [env:test], fast_path: {fast}}}\n{}",
            dns.guard_config()
        )
    };
    let fast = Gateway::start(&settings(true), Default::default());
    let slow = Gateway::start(&settings(false), Default::default());
    let mut dice = Dice(0x00c0_ffee_f457);
    let (mut cases, mut by_envoy) = (0, 0);
    for set in 0..12 {
        let policies = random_policies(&mut dice, port);
        let version = |gw: &Gateway| gw.admin("/readyz").json()["config_version"].clone();
        let before = (version(&fast), version(&slow));
        fast.write_config(&format!("{}{policies}", settings(true)));
        slow.write_config(&format!("{}{policies}", settings(false)));
        // Both run the new set, and both Envoys hold its routes, before the requests go.
        assert!(wait_until(Duration::from_secs(10), || version(&fast)
            != before.0
            && version(&slow) != before.1));
        assert!(fast.wait_routes_current() && slow.wait_routes_current());
        let audited = (fast.audit().len(), slow.audit().len());
        let mut expected = Vec::new();
        for _ in 0..40 {
            let method = *dice.pick(&["GET", "POST", "DELETE", "PUT"]);
            let host = *dice.pick(&["a.test", "b.test", "c.test", "d.test"]);
            let path = *dice.pick(&["/", "/v1/x", "/v1/a", "/v2/b", "/v1", "/v10", "/v1/%78"]);
            let team = dice.next().is_multiple_of(5);
            let url = format!("http://{host}:{port}{path}");
            let mut args = vec!["-X", method];
            if team {
                args.extend(["-H", "x-team: red"]);
            }
            args.push(&url);
            let (fast_reply, asked) = send(&fast, &args);
            let slow_reply = slow.via_proxy(&args);
            cases += 1;
            by_envoy += usize::from(!asked);
            assert_eq!(
                outcome(&fast_reply),
                outcome(&slow_reply),
                "set {set}: {method} {url} (x-team: {team}), decided by {}:\n{policies}",
                if asked { "Portcullis" } else { "Envoy" }
            );
            expected.push(format!("{method} {host} {path}"));
        }
        // The same audit decisions, request for request (compared as sets of lines: the
        // access log service delivers fast-path records in its own batches).
        let decisions = |gw: &Gateway, skip: usize| {
            let mut lines = BTreeMap::new();
            assert!(wait_until(Duration::from_secs(10), || {
                lines.clear();
                for r in gw
                    .audit()
                    .into_iter()
                    .skip(skip)
                    .filter(|r| r.get("event").is_none())
                {
                    let key = format!(
                        "{} {} {} {} {}",
                        r["method"].as_str().unwrap_or_default(),
                        r["host"].as_str().unwrap_or_default(),
                        r["path"].as_str().unwrap_or_default(),
                        r["decision"].as_str().unwrap_or_default(),
                        r["policy"].as_str().unwrap_or("-"),
                    );
                    *lines.entry(key).or_insert(0) += 1;
                }
                lines.values().sum::<usize>() >= expected.len()
            }));
            lines
        };
        assert_eq!(
            decisions(&fast, audited.0),
            decisions(&slow, audited.1),
            "set {set}: the audit trails differ:\n{policies}"
        );
    }
    eprintln!(
        "fast path: {cases} random requests over 12 random policy sets agreed with and without \
         the fast path; Envoy decided {by_envoy} of them by itself"
    );
    assert!(
        by_envoy > cases / 5,
        "only {by_envoy} of {cases} took the fast path"
    );
}
