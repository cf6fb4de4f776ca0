//! Hot reload: a valid change decides requests soon after the file changes (how soon is
//! printed, for the benchmarks; the config watcher itself is tested without the backup poll
//! in `config::watch`), without restarting either process and without dropping a request
//! in flight; an invalid change keeps the old set.

use std::time::{Duration, Instant};

use crate::common::{Gateway, GatewayOptions, Upstream, wait_until};

/// How long a change may take to decide requests before the test gives up. Generous: this
/// is a shared 2-core machine; the time it took is printed.
const DEADLINE: Duration = Duration::from_secs(30);

fn config(allowed_path: &str) -> String {
    format!(
        r#"
policies:
  - {{name: moving, action: allow, rules: [{{host: 127.0.0.1, paths: ["{allowed_path}", "/hold/*"]}}]}}
"#
    )
}

#[test]
fn a_valid_change_goes_live_without_restarts() {
    let upstream = Upstream::start(None);
    let mut gw = Gateway::start(&config("/v1/*"), GatewayOptions::default());
    let base = format!("http://127.0.0.1:{}", upstream.port());
    assert_eq!(gw.via_proxy(&[&format!("{base}/v1/x")]).status, 200);
    assert_eq!(gw.via_proxy(&[&format!("{base}/v2/x")]).status, 403);
    let (envoy_pid, portcullis_pid) = (gw.envoy.pid(), gw.portcullis.pid());

    // A request in flight across the reload: it has reached the upstream before the file
    // is written, and the upstream answers it only once the change is live.
    let held_url = format!("{base}/hold/reload");
    let proxy = format!("http://127.0.0.1:{}", gw.proxy_port);
    let dir = gw.dir.path().to_path_buf();
    let in_flight = std::thread::spawn(move || {
        crate::common::curl(&dir, &["--max-time", "120", "--proxy", &proxy, &held_url])
    });
    assert!(wait_until(DEADLINE, || upstream
        .seen()
        .iter()
        .any(|s| s.path == "/hold/reload")));

    gw.write_config(&config("/v2/*"));
    let delay = time_until(&gw, &format!("{base}/v2/x"), 200);
    eprintln!(
        "reload: new policy decided a request {} ms after the file was written",
        delay.as_millis()
    );
    assert!(
        !in_flight.is_finished(),
        "the held request is still in flight after the change went live"
    );
    assert_eq!(
        gw.via_proxy(&[&format!("{base}/v1/x")]).status,
        403,
        "the old rule is gone"
    );

    upstream.release("reload");
    let slow = in_flight.join().unwrap();
    assert_eq!(
        slow.status, 200,
        "the in-flight request completed: {slow:?}"
    );
    assert!(gw.envoy.is_running() && gw.portcullis.is_running());
    assert_eq!(
        (gw.envoy.pid(), gw.portcullis.pid()),
        (envoy_pid, portcullis_pid),
        "no restart"
    );
    assert_eq!(
        gw.metric(r#"portcullis_config_reloads_total{result="success"}"#),
        Some(1.0)
    );
    let versions: Vec<String> = gw
        .audit()
        .iter()
        .map(|r| r["config_version"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        versions.first() != versions.last(),
        "audit records name the config version"
    );
}

#[test]
fn an_invalid_change_is_rejected_and_the_last_good_set_stays() {
    let upstream = Upstream::start(None);
    let gw = Gateway::start(&config("/v1/*"), GatewayOptions::default());
    let base = format!("http://127.0.0.1:{}", upstream.port());
    assert_eq!(gw.via_proxy(&[&format!("{base}/v1/x")]).status, 200);

    gw.write_config(
        r#"
policies:
  - {name: broken, action: allow, rules: [{host: "127.0.0.1", paths: ["/v2/[oops"]}]}
  - {name: also-broken, action: alow, rules: [{host: x}]}
"#,
    );
    assert!(
        wait_until(DEADLINE, || gw
            .metric(r#"portcullis_config_reloads_total{result="failure"}"#)
            == Some(1.0)),
        "{}",
        gw.portcullis_log()
    );
    let log = gw.portcullis_log();
    let file = gw.config_path.display().to_string();
    assert!(
        log.contains(&format!("{file}:3:")) && log.contains("policies[0].rules[0].paths[0]"),
        "{log}"
    );
    assert!(
        log.contains("(policy \\\"broken\\\")") || log.contains("(policy \"broken\")"),
        "{log}"
    );
    assert!(
        log.contains(&format!("{file}:4:")) && log.contains("policies[1].action"),
        "{log}"
    );
    assert!(log.contains("the last good config stays live"), "{log}");
    // Decisions are those of the old set.
    assert_eq!(gw.via_proxy(&[&format!("{base}/v1/x")]).status, 200);
    assert_eq!(gw.via_proxy(&[&format!("{base}/v2/x")]).status, 403);

    // Fixing the file in place (same inode) is picked up too.
    gw.write_config_in_place(&config("/v2/*"));
    let delay = time_until(&gw, &format!("{base}/v2/x"), 200);
    eprintln!(
        "reload: an in-place fix decided a request after {} ms",
        delay.as_millis()
    );
}

/// How long until `url` gets `status` through the gateway (at most [`DEADLINE`]).
fn time_until(gw: &Gateway, url: &str, status: u16) -> Duration {
    let started = Instant::now();
    assert!(
        wait_until(DEADLINE, || gw.via_proxy(&[url]).status == status),
        "{url} did not answer {status} within {DEADLINE:?}; log:\n{}",
        gw.portcullis_log()
    );
    started.elapsed()
}

#[test]
fn kubernetes_configmap_swaps_are_seen() {
    let upstream = Upstream::start(None);
    let gw = Gateway::start(&config("/v1/*"), GatewayOptions::default());
    let base = format!("http://127.0.0.1:{}", upstream.port());
    gw.use_configmap_layout();
    // The layout change replaced the watched file with a symlink to the same content: the
    // same decisions, whether or not the gateway has looked at it yet (no wait needed).
    assert_eq!(gw.via_proxy(&[&format!("{base}/v1/x")]).status, 200);

    gw.swap_configmap(1, &config("/v2/*"));
    let delay = time_until(&gw, &format!("{base}/v2/x"), 200);
    eprintln!(
        "reload: ConfigMap ..data swap decided a request after {} ms",
        delay.as_millis()
    );
    assert_eq!(gw.via_proxy(&[&format!("{base}/v1/x")]).status, 403);

    gw.swap_configmap(2, &config("/v3/*"));
    let delay = time_until(&gw, &format!("{base}/v3/x"), 200);
    eprintln!(
        "reload: a second ..data swap decided a request after {} ms",
        delay.as_millis()
    );
    assert_eq!(gw.via_proxy(&[&format!("{base}/v2/x")]).status, 403);
    assert_eq!(
        gw.metric(r#"portcullis_config_reloads_total{result="success"}"#),
        Some(2.0),
        "each swap is one reload"
    );
}
