//! Fail closed: without Portcullis, Envoy refuses; nothing is forwarded.

use std::time::Duration;

use crate::common::{Gateway, GatewayOptions, Upstream};

/// How long a test waits for what must happen before it gives up (a shared machine).
const DEADLINE: Duration = Duration::from_secs(30);

#[test]
fn portcullis_down_means_envoy_refuses() {
    let upstream = Upstream::start(None);
    let mut gw = Gateway::start(
        "policies: [{name: all, action: allow, rules: [{host: '*'}]}]",
        GatewayOptions::default(),
    );
    let url = format!("http://127.0.0.1:{}/x", upstream.port());
    assert_eq!(gw.via_proxy(&[&url]).status, 200);
    assert_eq!(upstream.hits(), 1);

    gw.portcullis.stop();
    for _ in 0..3 {
        let reply = gw.via_proxy(&[&url]);
        assert!(
            reply.status >= 500,
            "Envoy must refuse without Portcullis: {reply:?}"
        );
    }
    let tunnel = gw.via_proxy(&["-p", &url]);
    assert_ne!(
        tunnel.connect_status, 200,
        "no tunnel without Portcullis: {tunnel:?}"
    );
    assert_eq!(
        upstream.hits(),
        1,
        "nothing was forwarded while Portcullis was down"
    );

    gw.restart_portcullis();
    assert_eq!(gw.via_proxy(&[&url]).status, 200, "Envoy reconnects");
}

#[test]
fn graceful_shutdown_flushes_the_audit_trail() {
    let upstream = Upstream::start(None);
    let mut gw = Gateway::start(
        "policies: [{name: all, action: allow, rules: [{host: '*'}]}]",
        GatewayOptions::default(),
    );
    for i in 0..20 {
        assert_eq!(
            gw.via_proxy(&[&format!("http://127.0.0.1:{}/n/{i}", upstream.port())])
                .status,
            200
        );
    }
    gw.portcullis.terminate();
    let exited = gw.portcullis.child.wait().unwrap();
    assert!(exited.success(), "SIGTERM is a clean exit: {exited:?}");
    assert_eq!(gw.audit().len(), 20, "every request audited before exit");
    assert!(gw.portcullis_log().contains("shutting down"));
}

#[test]
fn sigterm_turns_not_ready_and_keeps_deciding_for_the_shutdown_delay() {
    // A shutdown delay generous enough for the checks below on a shared machine.
    let upstream = Upstream::start(None);
    let mut gw = Gateway::start(
        "server: {shutdown_delay: 5s}\npolicies: [{name: all, action: allow, rules: [{host: '*'}]}]",
        GatewayOptions::default(),
    );
    assert_eq!(gw.admin("/readyz").status, 200);
    // A request in flight: the upstream has it, and answers only when released.
    let held = format!("http://127.0.0.1:{}/hold/sigterm", upstream.port());
    let proxy = format!("http://127.0.0.1:{}", gw.proxy_port);
    let dir = gw.dir.path().to_path_buf();
    let in_flight = std::thread::spawn(move || {
        crate::common::curl(&dir, &["--max-time", "120", "--proxy", &proxy, &held])
    });
    assert!(
        crate::common::wait_until(DEADLINE, || upstream
            .seen()
            .iter()
            .any(|s| s.path == "/hold/sigterm")),
        "the request never reached the upstream: {:?}",
        upstream.seen()
    );
    gw.portcullis.terminate();
    let mut not_ready = None;
    crate::common::wait_until(DEADLINE, || {
        let reply = gw.admin("/readyz");
        let done = reply.status == 503;
        not_ready = Some(reply);
        done
    });
    let not_ready = not_ready.unwrap();
    assert_eq!(not_ready.status, 503, "{not_ready:?}");
    assert_eq!(not_ready.json()["draining"], true);
    let during = gw.via_proxy(&[&format!("http://127.0.0.1:{}/during", upstream.port())]);
    assert_eq!(
        during.status, 200,
        "requests are still decided during the delay"
    );
    assert!(
        !in_flight.is_finished(),
        "the request was in flight across the signal"
    );
    upstream.release("sigterm");
    let finished = in_flight.join().unwrap();
    assert_eq!(
        finished.status, 200,
        "the request in flight finished: {finished:?}"
    );
    let exited = gw.portcullis.child.wait().unwrap();
    assert!(exited.success(), "{exited:?}");
}
