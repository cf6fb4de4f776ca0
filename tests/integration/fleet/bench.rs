//! The fleet benchmark: propagation from one instance to another over many changes, and
//! an instance's decision throughput while changes stream in (BENCHMARKS.md).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Instance, PROPAGATION_DEADLINE, seed};
use crate::common::postgres::TestDatabase;
use crate::common::{Upstream, wait_until};
use crate::control::{create, update};

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
    let profile = if cfg!(debug_assertions) {
        "dev"
    } else {
        "release"
    };
    eprintln!("\n==== fleet benchmark ({profile} profile, loopback, shared machine) ====");
    for line in report.concat() {
        eprintln!("{line}");
    }
}

/// The bound the spec sets on propagation to every other instance: reported against here,
/// never asserted (a shared machine's timing is for the report).
const SPEC_PROPAGATION: Duration = Duration::from_secs(1);

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
    let b = Instance::start_reader(&db);
    let total = fillers + 2;
    eprintln!("---- {total} policies (seeded in {seeded:?}) ----");
    // Memory once both serve the seeded store, settled for two seconds.
    std::thread::sleep(Duration::from_secs(2));
    let memory_ready = [memory(a.gw.portcullis.pid()), memory(b.gw.portcullis.pid())];

    // 1. Propagation: each change flips B's decision.
    let flip = |action: &str| {
        json!({"name": "flip", "priority": 5, "action": action,
               "rules": [{"host": "127.0.0.1", "paths": ["/flip/*"], "methods": ["GET"]}]})
    };
    let url = format!("http://127.0.0.1:{}/flip/bench", upstream.port());
    let host = format!("127.0.0.1:{}", upstream.port());
    let mut poller = ProxyConnection::new(b.gw.proxy_port);
    assert_eq!(create(&a.gw, &flip("allow")).status, 201);
    assert!(wait_until(PROPAGATION_DEADLINE, || poller.get(&url, &host) == 200));
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
                answered.elapsed() < PROPAGATION_DEADLINE,
                "change {i} did not reach B within {PROPAGATION_DEADLINE:?}"
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
        after_answer
            .iter()
            .filter(|d| **d < SPEC_PROPAGATION)
            .count()
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
        assert!(wait_until(PROPAGATION_DEADLINE, || b.revision() == revision));
    }
    let per_sync = (cpu_seconds(b.gw.portcullis.pid()) - cpu) / (b.syncs() - syncs) as f64;
    lines.push(format!(
        "B's CPU per change applied, no load: {:.1} ms ({SYNC_SAMPLES} changes, /readyz polled every 20 ms)",
        per_sync * 1e3
    ));
    // Memory after every change so far (the flips and these), settled for three seconds.
    std::thread::sleep(Duration::from_secs(3));
    let memory_changed = [memory(a.gw.portcullis.pid()), memory(b.gw.portcullis.pid())];
    for (who, ready, changed) in [
        ("A (writer)", memory_ready[0], memory_changed[0]),
        ("B (reader)", memory_ready[1], memory_changed[1]),
    ] {
        lines.push(format!(
            "{who} RSS: {:.1} MiB when serving the seeded store, {:.1} MiB after {} changes; peak {:.1} MiB",
            ready.0,
            changed.0,
            changes + SYNC_SAMPLES as usize + 2,
            changed.1
        ));
    }
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
            assert!(wait_until(PROPAGATION_DEADLINE, || a.revision() == b.revision()));
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
               // Distinct /24s up to 62,500 fillers, then the same ones again.
               {"host": format!("10.{}.{}.0/24", i / 250 % 250, i % 250), "paths": ["/internal/*"]}]})
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

/// A process's resident memory and its peak (VmRSS, VmHWM), in MiB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or_else(|| panic!("{key} in /proc/{pid}/status"))
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

/// User and system CPU time of a process, from `/proc/PID/stat` (clock ticks of 10 ms).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}
