//! Engine benchmarks: one decision against 10, 1,000 and 10,000 policies.
//!
//! `cargo bench --bench engine` runs criterion (mean/median per decision) and then prints a
//! percentile table (p50/p99/p99.9 per decision over individually timed decisions), the
//! compile time of each set and the memory it holds. Under `cargo test` each benchmark runs
//! once as a smoke test. `cargo bench --bench engine -- dlp` runs only the DLP scanner's
//! group; `-- scrub` only the response scrubber's; `-- network_guard` only the network
//! guard's (resolution against a DNS stand-in on loopback, warm and cold cache);
//! `-- response_dlp` response inspection; `-- scale` the engine alone at 10,000 and 100,000
//! policies, with the bytes the config and the set hold (a counting global allocator).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use portcullis::check::{CheckRequest, build_request};
use portcullis::config::parse_str;
use portcullis::policy::rule::Tag;
use portcullis::policy::{PolicyConfig, PolicySet};
use portcullis::request::OutboundRequest;
use portcullis::snapshot::Snapshot;
use portcullis::store::Held;
use portcullis::transforms::grpc::proto::decide_response::Decision as Answer;
use portcullis::transforms::grpc::proto::processor_server::{Processor, ProcessorServer};
use portcullis::transforms::grpc::proto::{Continue, DecideRequest, DecideResponse};

const SIZES: [usize; 3] = [10, 1_000, 10_000];

/// The system allocator, counting the bytes in use: what a parsed config and a compiled set
/// hold, exactly, where RSS also counts what the allocator keeps after freeing.
struct Counting;

static LIVE_BYTES: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only a counter is added.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            std::sync::atomic::Ordering::Relaxed,
        );
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_mib() -> f64 {
    LIVE_BYTES.load(std::sync::atomic::Ordering::Relaxed) as f64 / (1024.0 * 1024.0)
}

/// A deterministic pseudo-random sequence (no dependency, same sets every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A fleet of `n` policies shaped like a multi-tenant deployment: most are per-tenant
/// allowlists (exact hosts and `*.` suffixes, path globs, method sets), some fleet-wide
/// baselines, denies and flags at other priorities, a few CIDR and dry-run policies.
fn fleet_yaml(n: usize) -> String {
    let tenants = (n / 10).max(1);
    let mut rng = Lcg(n as u64);
    let mut yaml = String::from("gateway: {tags: [env:bench]}\ndefault_action: deny\npolicies:\n");
    for i in 0..n {
        let tenant = rng.below(tenants);
        let match_tags = match rng.below(10) {
            0 => String::new(),
            1 | 2 => format!("tenant:t{tenant}, env:prod"),
            _ => format!("tenant:t{tenant}"),
        };
        let (action, priority) = match rng.below(20) {
            0..=2 => ("deny", 5),
            3 | 4 => ("flag", 50),
            _ => ("allow", 100),
        };
        let warn = if rng.below(50) == 0 {
            ", warn: true"
        } else {
            ""
        };
        yaml.push_str(&format!(
            "  - {{name: p{i}, priority: {priority}, action: {action}{warn}, match_tags: [{match_tags}], rules: ["
        ));
        for r in 0..1 + rng.below(3) {
            let host = match rng.below(20) {
                0 => format!("10.{}.0.0/16", rng.below(250)),
                1 => format!("\"api-*.h{}.example.org\"", rng.below(n)),
                2..=6 => format!("\"*.svc{}.example.net\"", rng.below(n)),
                _ => format!("api{}.example.com", rng.below(n)),
            };
            let paths = match rng.below(4) {
                0 => String::new(),
                1 => ", paths: [\"/v1/*\"]".to_owned(),
                2 => ", paths: [\"/v1/chat/*\", \"/v1/models\"]".to_owned(),
                _ => format!(
                    ", paths: [\"/repos/r{}/*\", \"/users/*/keys\"]",
                    rng.below(100)
                ),
            };
            let methods = match rng.below(3) {
                0 => "",
                1 => ", methods: [GET, HEAD]",
                _ => ", methods: [GET, POST]",
            };
            if r > 0 {
                yaml.push_str(", ");
            }
            yaml.push_str(&format!("{{host: {host}{paths}{methods}}}"));
        }
        yaml.push_str("]}\n");
    }
    yaml
}

/// The same fleet with body conditions: the seed patterns fleet-wide (a credential-leak
/// deny on writes, a flag on sensitive words at a priority after the tenants' allows), and
/// one tenant policy in twenty scanning its API's bodies.
fn body_fleet_yaml(n: usize) -> String {
    let tenants = (n / 10).max(1);
    let mut yaml = fleet_yaml(n);
    yaml.push_str(
        "  - {name: leak, priority: 1, action: deny, rules: [{host: \"*\", methods: [POST, PUT, PATCH], \
         body: {contains: [aws_secret_access_key]}}]}\n  \
         - {name: sensitive, priority: 500, action: flag, rules: [{host: \"*\", \
         body: {contains: [salary, customer list], regex: ['(?i)ssn:\\s*\\d{3}-\\d{2}-\\d{4}']}}]}\n",
    );
    for i in 0..(n / 20).max(1) {
        yaml.push_str(&format!(
            "  - {{name: scan{i}, priority: 10, match_tags: [tenant:t{}], action: deny, \
             rules: [{{host: api{i}.example.com, paths: [\"/v1/*\"], body: {{regex: ['BEGIN [A-Z ]*PRIVATE KEY']}}}}]}}\n",
            i % tenants
        ));
    }
    yaml
}

/// Requests that hit indexed hosts and miss them, from workloads with one to three tags.
fn requests(n: usize) -> Vec<(OutboundRequest, Vec<Tag>)> {
    let tenants = (n / 10).max(1);
    let mut rng = Lcg(7 + n as u64);
    (0..1024)
        .map(|_| {
            let host = match rng.below(10) {
                0 => format!("x.svc{}.example.net", rng.below(n)),
                1 => format!("10.{}.1.2", rng.below(250)),
                2 => format!("api-eu.h{}.example.org", rng.below(n)),
                3 => "unknown.example.io".to_owned(),
                _ => format!("api{}.example.com", rng.below(n)),
            };
            let path = [
                "/v1/chat/completions",
                "/v1/models",
                "/repos/r3/issues",
                "/users/u/keys",
                "/",
            ][rng.below(5)];
            let method = ["GET", "POST", "HEAD", "DELETE"][rng.below(4)];
            let request = build_request(&CheckRequest {
                request_line: format!("{method} https://{host}{path}"),
                headers: vec![
                    ("accept".into(), "*/*".into()),
                    ("user-agent".into(), "bench".into()),
                ],
                ..CheckRequest::default()
            })
            .unwrap();
            let mut tags = vec![Tag::parse(&format!("tenant:t{}", rng.below(tenants))).unwrap()];
            if rng.below(3) == 0 {
                tags.push(Tag::parse("env:prod").unwrap());
            }
            (request, tags)
        })
        .collect()
}

struct Prepared {
    size: usize,
    set: PolicySet,
    /// [`body_fleet_yaml`]'s set, for `needs_body`.
    body_set: PolicySet,
    snapshot: Snapshot,
    requests: Vec<(OutboundRequest, Vec<Tag>)>,
    compile: Duration,
    resident_mib: f64,
}

fn resident_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / (1024.0 * 1024.0)
}

/// A snapshot from config text; panics with what is wrong with it.
/// A snapshot of `yaml`. Every allowed decision goes through the network guard, which
/// resolves the host: here through a DNS stand-in on loopback, so the decision benches pay
/// the guard's warm-cache lookup (as a live gateway does) and never wait for a real DNS.
fn compile_snapshot(yaml: &str) -> Snapshot {
    static DNS: std::sync::OnceLock<std::net::SocketAddr> = std::sync::OnceLock::new();
    let dns = DNS.get_or_init(public_dns);
    let yaml = format!("{yaml}\nnetwork_guard:\n  nameservers: [\"{dns}\"]\n");
    let loaded = parse_str(&yaml, None).unwrap_or_else(|e| panic!("bench config: {e}"));
    Snapshot::compile(
        &loaded.config,
        &loaded.version,
        &|_| None,
        &Default::default(),
    )
    .unwrap_or_else(|e| panic!("bench config: {e:?}"))
}

fn prepare(size: usize) -> Prepared {
    let yaml = fleet_yaml(size);
    let loaded = parse_str(&yaml, None).unwrap_or_else(|e| panic!("generated config: {e}"));
    let before = resident_mib();
    let started = Instant::now();
    let set = PolicySet::compile(&loaded.config.policies, loaded.config.default_action);
    let compile = started.elapsed();
    let resident = resident_mib() - before;
    let snapshot = compile_snapshot(&yaml);
    let body_yaml = body_fleet_yaml(size);
    let body_loaded = parse_str(&body_yaml, None).unwrap_or_else(|e| panic!("body config: {e}"));
    let body_set = PolicySet::compile(
        &body_loaded.config.policies,
        body_loaded.config.default_action,
    );
    let requests = requests(size);
    let needing = requests
        .iter()
        .filter(|(r, tags)| body_set.needs_body(&r.facts(), &body_set.tag_ids(tags)))
        .count();
    assert!(
        0 < needing && needing < requests.len(),
        "the body bench needs requests of both kinds ({needing} of {} need the body)",
        requests.len()
    );
    Prepared {
        size,
        set,
        body_set,
        snapshot,
        requests,
        compile,
        resident_mib: resident,
    }
}

fn bench_engine(c: &mut Criterion, prepared: &[Prepared]) {
    let mut group = c.benchmark_group("evaluate");
    for p in prepared {
        let ids: Vec<_> = p
            .requests
            .iter()
            .map(|(_, tags)| p.set.tag_ids(tags))
            .collect();
        let mut i = 0;
        group.bench_function(format!("{}_policies", p.size), |b| {
            b.iter(|| {
                i = (i + 1) % p.requests.len();
                black_box(p.set.evaluate(&p.requests[i].0.facts(), &ids[i]))
            })
        });
    }
    group.finish();
    // Asked on the headers of every request with a body: free without body conditions,
    // one more index walk with them.
    let mut group = c.benchmark_group("needs_body");
    for p in prepared {
        for (case, set) in [("no_body_rules", &p.set), ("body_rules", &p.body_set)] {
            let ids: Vec<_> = p
                .requests
                .iter()
                .map(|(_, tags)| set.tag_ids(tags))
                .collect();
            let mut i = 0;
            group.bench_function(format!("{}_policies_{case}", p.size), |b| {
                b.iter(|| {
                    i = (i + 1) % p.requests.len();
                    black_box(set.needs_body(&p.requests[i].0.facts(), &ids[i]))
                })
            });
        }
    }
    group.finish();
    // The whole decision Portcullis makes per request (identity, tags, pipeline) plus the
    // audit record's serialization — everything except the protobuf conversion and I/O.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("decide_and_audit");
    for p in prepared {
        let mut i = 0;
        group.bench_function(format!("{}_policies", p.size), |b| {
            b.iter(|| {
                i = (i + 1) % p.requests.len();
                let (request, tags) = &p.requests[i];
                let decided = runtime.block_on(p.snapshot.decide(request, tags, None));
                let record =
                    portcullis::audit::AuditRecord::of(request, &decided, &p.snapshot, 1.0);
                black_box(serde_json::to_vec(&record).unwrap())
            })
        });
    }
    group.finish();
}

/// 1,000 per-tenant secrets (distinct env sources, a mix of styles) over the same policies,
/// and requests that each match one secret.
fn secrets_yaml(n: usize) -> String {
    let mut yaml = String::from("secrets:\n");
    for i in 0..n {
        let inject = match i % 4 {
            0 => "{style: bearer}".to_owned(),
            1 => "{style: basic, username: bot}".to_owned(),
            2 => "{style: custom, header: X-Api-Key, format: 'token {{ value }}'}".to_owned(),
            _ => format!("{{style: proxy_token, placeholder: ptok_bench_{i:05}}}"),
        };
        yaml.push_str(&format!(
            "  - {{name: s{i}, match_tags: [tenant:s{i}], source: {{type: env, var: PORTCULLIS_BENCH_SECRET_{i}}}, \
             inject: {inject}, rules: [{{host: api{i}.secrets.example, paths: [\"/v1/*\"]}}]}}\n"
        ));
    }
    yaml
}

fn secret_requests(n: usize) -> Vec<(OutboundRequest, Vec<Tag>)> {
    let mut rng = Lcg(99);
    (0..1024)
        .map(|_| {
            let i = rng.below(n);
            let request = build_request(&CheckRequest {
                request_line: format!("POST https://api{i}.secrets.example/v1/chat/completions"),
                headers: vec![
                    ("authorization".into(), format!("Bearer ptok_bench_{i:05}")),
                    ("content-type".into(), "application/json".into()),
                ],
                ..CheckRequest::default()
            })
            .unwrap();
            (request, vec![Tag::parse(&format!("tenant:s{i}")).unwrap()])
        })
        .collect()
}

/// Per-request `decide` percentiles (ns) over warm caches.
fn decide_percentiles(
    runtime: &tokio::runtime::Runtime,
    snapshot: &Snapshot,
    requests: &[(OutboundRequest, Vec<Tag>)],
    count: usize,
) -> [u64; 4] {
    for (request, tags) in requests {
        runtime.block_on(snapshot.decide(request, tags, None));
    }
    let mut samples = Vec::with_capacity(count);
    for n in 0..count {
        let (request, tags) = &requests[n % requests.len()];
        let started = Instant::now();
        black_box(runtime.block_on(snapshot.decide(black_box(request), tags, None)));
        samples.push(started.elapsed().as_nanos() as u64);
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    [at(0.5), at(0.99), at(0.999), *samples.last().unwrap()]
}

/// The cost of injection: the same requests decided with 1,000 policies, without and
/// with 1,000 secrets loaded.
fn secrets_case(count: usize) {
    const SECRETS: usize = 1_000;
    for i in 0..SECRETS {
        // Set before any other thread exists (the bench is single-threaded here).
        unsafe {
            std::env::set_var(
                format!("PORTCULLIS_BENCH_SECRET_{i}"),
                format!("sk-bench-{i:08}"),
            )
        };
    }
    let policies = fleet_yaml(1_000).replace("policies:\n", "policies:\n  - {name: secrets-hosts, priority: 1, action: allow, rules: [{host: \"*.secrets.example\"}]}\n");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let requests = secret_requests(SECRETS);
    let without = compile_snapshot(&policies);
    let before = resident_mib();
    let with = compile_snapshot(&format!("{policies}{}", secrets_yaml(SECRETS)));
    let memory = resident_mib() - before;
    let check = runtime.block_on(with.decide(&requests[0].0, &requests[0].1, None));
    assert!(
        check
            .outcome
            .trace
            .iter()
            .any(|t| t.annotations.injected.is_some() || t.annotations.swapped.is_some()),
        "the bench requests must match a secret"
    );
    let base = decide_percentiles(&runtime, &without, &requests, count);
    let inj = decide_percentiles(&runtime, &with, &requests, count);
    println!();
    println!(
        "decide() per matching request, 1,000 policies, warm cache, {count} timed decisions each"
    );
    println!("| case | p50 | p99 | p99.9 | max |");
    println!("|---|---:|---:|---:|---:|");
    for (name, p) in [
        ("no secrets", base),
        ("1,000 secrets loaded, one injected", inj),
    ] {
        println!(
            "| {name} | {:.2} µs | {:.2} µs | {:.2} µs | {:.1} µs |",
            p[0] as f64 / 1000.0,
            p[1] as f64 / 1000.0,
            p[2] as f64 / 1000.0,
            p[3] as f64 / 1000.0
        );
    }
    println!(
        "injection adds: p50 {:+.2} µs, p99 {:+.2} µs; 1,000 secrets hold {memory:.1} MiB",
        (inj[0] as f64 - base[0] as f64) / 1000.0,
        (inj[1] as f64 - base[1] as f64) / 1000.0
    );
}

/// Times `count` decisions one by one and reports percentiles in nanoseconds.
/// The engine alone at `sizes` policies (the fleet of [`fleet_yaml`]): how long the config
/// takes to parse and the set to compile, the process's size then, and `count`
/// individually timed decisions. A table for BENCHMARKS.md.
fn scale_case(sizes: &[usize], count: usize) {
    println!(
        "| policies | parse | compile | config held | set held | RSS after compile | p50 | p99 | p99.9 | max | one changed (file) | one changed (store) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &size in sizes {
        let yaml = fleet_yaml(size);
        let before = live_mib();
        let started = Instant::now();
        let loaded = parse_str(&yaml, None).unwrap_or_else(|e| panic!("generated config: {e}"));
        let parse = started.elapsed();
        let text = yaml.len() as f64 / (1024.0 * 1024.0);
        drop(yaml);
        // What the loaded config holds beyond its copy of the text.
        let config_held = live_mib() - before - text;
        let before = live_mib();
        let started = Instant::now();
        let set = PolicySet::compile(&loaded.config.policies, loaded.config.default_action);
        let compile = started.elapsed();
        let set_held = live_mib() - before;
        drop(loaded);
        // The whole process, the config dropped: freed parse memory the allocator keeps
        // is counted too, so this is an upper bound on the set's size.
        let memory = resident_mib();
        let requests = requests(size);
        let ids: Vec<_> = requests.iter().map(|(_, tags)| set.tag_ids(tags)).collect();
        let mut samples = Vec::with_capacity(count);
        for n in 0..count {
            let i = n % requests.len();
            let facts = requests[i].0.facts();
            let started = Instant::now();
            black_box(set.evaluate(black_box(&facts), &ids[i]));
            samples.push(started.elapsed().as_nanos() as u64);
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
        let us = |ns: u64| ns as f64 / 1000.0;
        let (file, store) = recompile_one(size, &set);
        println!(
            "| {size} | {:.2} s | {:.2} s | {config_held:.0} MiB | {set_held:.0} MiB | {memory:.0} MiB | {:.2} µs | {:.2} µs | {:.2} µs | {:.1} µs | {:.0} ms | {:.0} ms |",
            parse.as_secs_f64(),
            compile.as_secs_f64(),
            us(at(0.5)),
            us(at(0.99)),
            us(at(0.999)),
            us(*samples.last().unwrap()),
            file.as_secs_f64() * 1000.0,
            store.as_secs_f64() * 1000.0,
        );
    }
}

/// How long a recompile after a change to one of `size` policies takes, given the set
/// compiled before it: from a config file (each definition known again by its digest)
/// and from a store (definitions held as JSON, known again by its identity).
fn recompile_one(size: usize, compiled: &PolicySet) -> (Duration, Duration) {
    let mut policies = parse_str(&fleet_yaml(size), None)
        .unwrap_or_else(|e| panic!("generated config: {e}"))
        .config
        .policies;
    let default = compiled.default_action();
    let changed = size / 2;
    policies[changed].priority += 1;
    let started = Instant::now();
    black_box(PolicySet::compile_reusing(
        &policies,
        &[],
        default,
        Some(compiled),
    ));
    let file = started.elapsed();
    let mut held: Vec<Held<PolicyConfig>> = policies.iter().map(|p| Held::new(1, p)).collect();
    let versions = vec![1; size];
    let earlier = PolicySet::compile_reusing(&held, &versions, default, None);
    let mut edited = policies[changed].clone();
    edited.priority += 1;
    held[changed] = Held::new(1, &edited);
    let started = Instant::now();
    black_box(PolicySet::compile_reusing(
        &held,
        &versions,
        default,
        Some(&earlier),
    ));
    (file, started.elapsed())
}

fn percentiles(p: &Prepared, count: usize) -> [u64; 4] {
    let ids: Vec<_> = p
        .requests
        .iter()
        .map(|(_, tags)| p.set.tag_ids(tags))
        .collect();
    let mut samples = Vec::with_capacity(count);
    for n in 0..count {
        let i = n % p.requests.len();
        let facts = p.requests[i].0.facts();
        let started = Instant::now();
        black_box(p.set.evaluate(black_box(&facts), &ids[i]));
        samples.push(started.elapsed().as_nanos() as u64);
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    [at(0.5), at(0.99), at(0.999), *samples.last().unwrap()]
}

/// A collector that takes every span at once.
#[derive(Debug)]
struct Discard;

impl opentelemetry_sdk::trace::SpanExporter for Discard {
    async fn export(
        &self,
        _: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

/// What tracing adds per request: the stream span (half the requests carry a
/// `traceparent`), the transform spans, the audit record's trace id. First without an
/// exporter (as `serve` runs by default), then with spans exported, through the layer
/// `serve` installs, to a collector that takes everything.
fn tracing_case(p: &Prepared, count: usize) {
    use portcullis::telemetry::trace::StreamTrace;
    use tracing::Instrument;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let requests: Vec<(OutboundRequest, Vec<Tag>)> = p
        .requests
        .iter()
        .enumerate()
        .map(|(i, (request, tags))| {
            let mut request = request.clone();
            if i % 2 == 0 {
                let traceparent = format!("00-{:032x}-{:016x}-01", i + 1, i + 1);
                request
                    .headers
                    .push(("traceparent".into(), traceparent.into_bytes()));
            }
            (request, tags.clone())
        })
        .collect();
    let run = |count: usize| {
        let mut samples = Vec::with_capacity(count);
        for n in 0..count {
            let (request, tags) = &requests[n % requests.len()];
            let started = Instant::now();
            let trace = StreamTrace::start(request);
            let decided = runtime.block_on(
                p.snapshot
                    .decide(black_box(request), tags, None)
                    .instrument(trace.span().clone()),
            );
            let mut record =
                portcullis::audit::AuditRecord::of(request, &decided, &p.snapshot, 1.0);
            record.trace_id = trace.trace_id();
            trace.decided(&record.span_decision());
            black_box(&record);
            drop(trace);
            samples.push(started.elapsed().as_nanos() as u64);
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
        [at(0.5), at(0.99), at(0.999)]
    };
    run(requests.len());
    let off = run(count);
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(Discard)
        .build();
    tracing_subscriber::registry()
        .with(portcullis::telemetry::span_layer(&provider))
        .init();
    run(requests.len());
    let on = run(count);
    println!();
    println!(
        "decide() + audit record per request, {} policies, {count} timed requests each",
        p.size
    );
    println!("| spans | p50 | p99 | p99.9 |");
    println!("|---|---:|---:|---:|");
    for (case, [p50, p99, p999]) in [("not exported", off), ("exported", on)] {
        println!(
            "| {case} | {:.2} µs | {:.2} µs | {:.2} µs |",
            p50 as f64 / 1000.0,
            p99 as f64 / 1000.0,
            p999 as f64 / 1000.0
        );
    }
    let _ = provider.shutdown();
}

/// Agent policies: each case is a snapshot holding one kind of condition in front of a
/// default allow, deciding a clean OpenAI chat body ([`chat_body`]: logs, ids, hashes; no
/// condition holds, so every byte is looked at) of 4 KiB and 64 KiB, as the gateway does
/// once the body is buffered.
const AGENT_CASES: &[(&str, &str)] = &[
    ("headers_only", ""),
    (
        "cel_on_agent_tag",
        r#"  - {name: c, priority: 5, action: deny, rules: [{host: api.openai.com, cel: 'agent.slug == "cursor" && request.path.startsWith("/v1/")'}]}"#,
    ),
    (
        "prompt_contains",
        r#"  - {name: p, priority: 10, action: deny, rules: [{host: api.openai.com, action_types: [chat_completion], prompt: {contains: [aws_secret_access_key, salary, customer list, production database]}}]}"#,
    ),
    (
        "dlp_all_detectors",
        r#"  - {name: d, priority: 10, action: deny, rules: [{host: api.openai.com, dlp: [aws_access_key, aws_secret_key, private_key, github_token, gitlab_token, slack_token, openai_key, anthropic_key, stripe_key, jwt, credit_card, email]}]}"#,
    ),
    (
        "cel_on_body",
        r#"  - {name: b, priority: 10, action: deny, rules: [{host: api.openai.com, cel: 'request.body.model == "forbidden" || request.body.messages.size() > 500'}]}"#,
    ),
];

fn agents_case(c: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    let request = build_request(&CheckRequest {
        request_line: "POST https://api.openai.com/v1/chat/completions".into(),
        headers: vec![("content-type".into(), "application/json".into())],
        ..CheckRequest::default()
    })
    .unwrap();
    let bodies = [
        ("4KiB", chat_body(4 * 1024, None)),
        ("64KiB", chat_body(64 * 1024, None)),
    ];
    let mut group = c.benchmark_group("agent_conditions");
    for (case, policy) in AGENT_CASES {
        let yaml = format!(
            "gateway: {{tags: [agent:claude-code], max_body_bytes: 1048576}}\npolicies:\n{policy}\n  - {{name: allow, priority: 1000, action: allow, rules: [{{host: \"*\"}}]}}\n"
        );
        let snapshot = compile_snapshot(&yaml);
        let buffered = snapshot.needs_body(&request, &[]);
        assert_eq!(
            buffered,
            !matches!(*case, "headers_only" | "cel_on_agent_tag"),
            "{case}"
        );
        for (size, body) in &bodies {
            let body = buffered.then_some(body.as_slice());
            group.bench_function(format!("{case}_{size}"), |b| {
                b.iter(|| {
                    let decided = runtime.block_on(snapshot.decide(&request, &[], body));
                    assert!(decided.outcome.rejection.is_none());
                    black_box(decided)
                })
            });
        }
    }
    // The `grpc` transform against a processor on loopback that always continues: the
    // cost of one gRPC round trip per decision, headers only and with a 4 KiB body sent.
    let (_server, endpoint) = continuing_processor();
    for (case, extra) in [
        ("grpc_processor_headers", ""),
        (
            "grpc_processor_body",
            "      send_body: true\n      max_body_bytes: 65536\n",
        ),
    ] {
        let snapshot = compile_snapshot(&format!(
            "policies:\n  - {{name: allow, action: allow, rules: [{{host: \"*\"}}]}}\ntransforms:\n  - allowlist\n  - name: grpc\n    config:\n      endpoint: {endpoint}\n      timeout: 1s\n{extra}"
        ));
        let buffered = snapshot.needs_body(&request, &[]);
        assert_eq!(buffered, !extra.is_empty(), "{case}");
        let body = buffered.then_some(bodies[0].1.as_slice());
        group.bench_function(format!("{case}_4KiB"), |b| {
            b.iter(|| {
                let decided = runtime.block_on(snapshot.decide(&request, &[], body));
                assert!(
                    decided.outcome.rejection.is_none(),
                    "{:?}",
                    decided.outcome.rejection
                );
                black_box(decided)
            })
        });
    }
    group.finish();
}

/// The `rate_limit` transform's cost per decision: the same pipeline without it, with one
/// key always, and with 10,000 keys in turn (hosts, against the same 10,000 hosts without
/// it). The limit is never reached, so every decision takes a token.
fn bench_rate_limit(c: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    let mut group = c.benchmark_group("rate_limit");
    let hosts: Vec<OutboundRequest> = (0..10_000)
        .map(|n| {
            build_request(&CheckRequest {
                request_line: format!("GET https://h{n}.example.com/v1/items"),
                ..CheckRequest::default()
            })
            .unwrap()
        })
        .collect();
    for (case, transform, keys) in [
        ("without", "", 1),
        (
            "identity_one_key",
            "  - {name: rate_limit, config: {requests: 1000000000, per: 1s}}\n",
            1,
        ),
        // 10,000 hosts cost the network guard's cache on their own: compare with this.
        ("without_10000_hosts", "", 10_000),
        (
            "host_10000_keys",
            "  - {name: rate_limit, config: {requests: 1000000000, per: 1s, key: host}}\n",
            10_000,
        ),
    ] {
        bench_limit_case(&mut group, runtime, &hosts, case, transform, keys);
    }
    // The same limit counted in a private redis-server on loopback: one script per decision.
    let redis = PrivateRedis::start();
    let transform = format!(
        "  - {{name: rate_limit, config: {{requests: 1000000000, per: 1s, redis: {{url: \"redis://127.0.0.1:{}\", timeout: 1s}}}}}}\n",
        redis.port
    );
    bench_limit_case(
        &mut group,
        runtime,
        &hosts,
        "identity_one_key_redis",
        &transform,
        1,
    );
    group.finish();
}

fn bench_limit_case(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    runtime: &tokio::runtime::Runtime,
    hosts: &[OutboundRequest],
    case: &str,
    transform: &str,
    keys: usize,
) {
    {
        let snapshot = compile_snapshot(&format!(
            "policies:\n  - {{name: allow, action: allow, rules: [{{host: \"*\"}}]}}\ntransforms:\n  - allowlist\n{transform}"
        ));
        let mut n = 0usize;
        group.bench_function(case, |b| {
            b.iter(|| {
                n = (n + 1) % keys;
                let decided = runtime.block_on(snapshot.decide(&hosts[n], &[], None));
                assert!(
                    decided.outcome.rejection.is_none(),
                    "{case}: {:?}",
                    decided.outcome.rejection
                );
                black_box(decided)
            })
        });
    }
}

/// A `redis-server` of its own on a free loopback port, stopped on drop.
struct PrivateRedis {
    port: u16,
    child: std::process::Child,
}

impl PrivateRedis {
    fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (Debian's package) for the Redis-backed limit");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        PrivateRedis { port, child }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `portcullis.processor.v1.Processor` that answers `continue` to everything.
struct Continuing;

#[tonic::async_trait]
impl Processor for Continuing {
    async fn decide(
        &self,
        _: tonic::Request<DecideRequest>,
    ) -> Result<tonic::Response<DecideResponse>, tonic::Status> {
        Ok(tonic::Response::new(DecideResponse {
            decision: Some(Answer::ContinueRequest(Continue::default())),
        }))
    }
}

/// [`Continuing`] on a free loopback port, on its own one-worker runtime (kept alive by
/// the returned handle); its `http://` endpoint.
fn continuing_processor() -> (tokio::runtime::Runtime, String) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(ProcessorServer::new(Continuing))
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            ),
    );
    (runtime, endpoint)
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    // `cargo bench --bench engine -- dlp` (or `agent_conditions`): the body-scanning groups
    // alone, without the fleets.
    if benchmarking && std::env::args().skip(1).any(|a| a == "rate_limit") {
        let mut criterion = Criterion::default().configure_from_args();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        bench_rate_limit(&mut criterion, &runtime);
        criterion.final_summary();
        return;
    }
    // `cargo bench --profile dev --bench engine -- scale`: the policy engine at 10,000 and
    // 100,000 policies alone (compile time, memory, decision percentiles), issue 18's rows.
    if benchmarking && std::env::args().skip(1).any(|a| a == "scale") {
        scale_case(&[10_000, 100_000], 200_000);
        return;
    }
    if benchmarking && std::env::args().skip(1).any(|a| a == "network_guard") {
        let mut criterion = Criterion::default().configure_from_args();
        bench_network_guard(&mut criterion);
        criterion.final_summary();
        return;
    }
    if benchmarking
        && std::env::args()
            .skip(1)
            .any(|a| a == "dlp" || a == "agent_conditions" || a == "scrub" || a == "response_dlp")
    {
        let mut criterion = Criterion::default().configure_from_args();
        bench_dlp(&mut criterion);
        bench_scrub(&mut criterion);
        bench_response_dlp(&mut criterion);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        agents_case(&mut criterion, &runtime);
        criterion.final_summary();
        return;
    }
    // First, while the process has one thread (it sets environment variables).
    secrets_case(if benchmarking { 200_000 } else { 1_000 });
    let sizes: &[usize] = if benchmarking { &SIZES } else { &SIZES[..1] };
    let prepared: Vec<Prepared> = sizes.iter().map(|n| prepare(*n)).collect();
    let mut criterion = Criterion::default().configure_from_args();
    bench_engine(&mut criterion, &prepared);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    agents_case(&mut criterion, &runtime);
    bench_rate_limit(&mut criterion, &runtime);
    bench_dlp(&mut criterion);
    bench_scrub(&mut criterion);
    bench_response_dlp(&mut criterion);
    bench_network_guard(&mut criterion);
    criterion.final_summary();
    if !benchmarking {
        tracing_case(&prepared[0], 1_000);
        return;
    }
    println!();
    println!(
        "per-decision latency, {} individually timed decisions each (Instant overhead included)",
        200_000
    );
    println!("| policies | p50 | p99 | p99.9 | max | compile | index memory |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for p in &prepared {
        let [p50, p99, p999, max] = percentiles(p, 200_000);
        println!(
            "| {} | {:.2} µs | {:.2} µs | {:.2} µs | {:.1} µs | {} ms | {:.1} MiB |",
            p.size,
            p50 as f64 / 1000.0,
            p99 as f64 / 1000.0,
            p999 as f64 / 1000.0,
            max as f64 / 1000.0,
            p.compile.as_millis(),
            p.resident_mib
        );
    }
    // Last: it installs a subscriber for the rest of the process.
    tracing_case(&prepared[1], 200_000);
}

/// A chat request body (OpenAI shape) of `size` bytes: prose, code and log lines with ids,
/// hashes and long numbers; with `secret`, a line holding it about 100 bytes before the end.
fn chat_body(size: usize, secret: Option<&str>) -> Vec<u8> {
    let mut rng = Lcg(size as u64);
    let mut hex = |n: usize| -> String {
        (0..n)
            .map(|_| char::from(b"0123456789abcdef"[rng.below(16)]))
            .collect()
    };
    let envelope = |content: &str| {
        serde_json::json!({
            "model": "gpt-4o",
            "temperature": 0.2,
            "messages": [
                {"role": "system", "content": "You are a careful senior engineer."},
                {"role": "user", "content": content},
            ],
        })
        .to_string()
    };
    let tail = "\nWhat went wrong, and how do we stop it happening again? Thanks!";
    let mut text = String::from("Here are the logs from last night's incident:\n");
    let mut n = 0u64;
    while envelope(&text).len() + tail.len() + 160 < size {
        n += 1;
        let line = match n % 5 {
            0 => format!(
                "2024-03-{:02}T02:{:02}:{:02}.{:03}Z INFO request_id={}-{}-4{}-a{}-{} path=/v1/orders/{} status=200 duration_ms={}\n",
                1 + n % 28,
                n % 60,
                (n * 7) % 60,
                n % 1000,
                hex(8),
                hex(4),
                hex(3),
                hex(3),
                hex(12),
                1_000_000_000 + n * 7919,
                n % 900
            ),
            1 => format!(
                "  commit {} built image registry.example.com/api@sha256:{}\n",
                hex(40),
                hex(64)
            ),
            2 => "    let total: u64 = orders.iter().filter(|o| o.paid).map(|o| o.cents).sum();\n"
                .to_owned(),
            3 => format!(
                "{} WARN job retry={} backoff={}ms trace_id={} order #{}\n",
                1_709_000_000_000 + n * 1_337,
                n % 5,
                n * 13 % 60_000,
                hex(32),
                90_000_000 + n
            ),
            _ => "The worker restarts every few minutes and the queue keeps growing; memory looks flat.\n"
                .to_owned(),
        };
        text.push_str(&line);
    }
    if let Some(secret) = secret {
        text.push_str(&format!("env: aws_access_key_id={secret}\n"));
    }
    text.push_str(tail);
    while envelope(&text).len() < size {
        text.push(' ');
    }
    envelope(&text).into_bytes()
}

/// DLP: the builtin detectors over a clean chat body and one with a key near its end.
fn bench_dlp(c: &mut Criterion) {
    use portcullis::dlp::Scanner;
    let scanner = Scanner::builtin();
    let aws = scanner.detector_id("aws_access_key").unwrap();
    let mut group = c.benchmark_group("dlp");
    for (size, label) in [(4 << 10, "4KiB"), (64 << 10, "64KiB")] {
        for (case, secret) in [
            ("clean", None),
            ("key_near_end", Some("AKIAIOSFODNN7EXAMPLE")),
        ] {
            let body = chat_body(size, secret);
            let findings = scanner.scan(&body);
            match secret {
                None => assert!(findings.is_empty(), "{label} {case}: {findings:?}"),
                Some(_) => assert!(findings.contains(aws), "{label} {case}: {findings:?}"),
            }
            group.throughput(criterion::Throughput::Bytes(body.len() as u64));
            group.bench_function(format!("scan_{label}_{case}"), |b| {
                b.iter(|| black_box(scanner.scan(black_box(&body))))
            });
        }
    }
    group.finish();
}

/// The response scrubber: a credential's forms (value, base64, percent-encoded, basic's
/// `base64(user:value)`) cut out of a 4 KiB body in one piece, a 1 MiB body streamed in
/// 16 KiB pieces, and an event stream of 1,000 small events, one piece each; the scrubber
/// is built per response, as a request with a credential does.
fn bench_scrub(c: &mut Criterion) {
    use base64::Engine;
    use portcullis::secrets::SecretBytes;
    use portcullis::secrets::scrub::Scrubber;
    let secret = "SENTINEL-bench-ghp_7f3a9c2e0d1b4a5f";
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let forms = [
        secret.to_owned(),
        b64(secret),
        secret.replace('_', "%5F"),
        b64(&format!("bot:{secret}")),
    ];
    let scrubber = || {
        Scrubber::new(
            forms
                .iter()
                .map(|f| SecretBytes::new(f.as_bytes().to_vec())),
        )
    };
    let mut group = c.benchmark_group("scrub");
    let small = chat_body(4 << 10, Some(secret));
    let large = chat_body(1 << 20, Some(secret));
    let events: Vec<Vec<u8>> = (0..1000)
        .map(|i| {
            let data = if i == 500 {
                secret.to_owned()
            } else {
                format!("token {i} of the answer")
            };
            format!("event: delta\ndata: {{\"i\":{i},\"text\":\"{data}\"}}\n\n").into_bytes()
        })
        .collect();
    let sse_bytes: usize = events.iter().map(Vec::len).sum();
    let run = |pieces: &[&[u8]]| {
        let mut s = scrubber().unwrap();
        let mut out = 0;
        for (i, piece) in pieces.iter().enumerate() {
            out += s.piece(piece, i + 1 == pieces.len()).len();
        }
        assert_eq!(s.replaced(), 1);
        out
    };
    for (label, body, piece) in [
        ("4KiB", &small, small.len()),
        ("1MiB_16KiB_pieces", &large, 16 << 10),
    ] {
        let pieces: Vec<&[u8]> = body.chunks(piece).collect();
        group.throughput(criterion::Throughput::Bytes(body.len() as u64));
        group.bench_function(label, |b| b.iter(|| black_box(run(black_box(&pieces)))));
    }
    let pieces: Vec<&[u8]> = events.iter().map(Vec::as_slice).collect();
    group.throughput(criterion::Throughput::Bytes(sse_bytes as u64));
    group.bench_function("sse_1000_events", |b| {
        b.iter(|| black_box(run(black_box(&pieces))))
    });
    group.throughput(criterion::Throughput::Elements(1));
    group.bench_function("build", |b| b.iter(|| black_box(scrubber())));
    group.finish();
}

/// `response_dlp` over responses: a JSON body inspected whole (4 KiB, 1 MiB; clean, and
/// with a key to redact), and a stream of 1,000 events in 16 KiB pieces.
fn bench_response_dlp(c: &mut Criterion) {
    use portcullis::transforms::response_dlp::{Inspection, ResponseAction, ResponseInspector};
    let key = "AKIAIOSFODNN7EXAMPLE";
    let inspection = Inspection::new("transforms[1]", &[], ResponseAction::Redact);
    let mut group = c.benchmark_group("response_dlp");
    for (label, size) in [("4KiB", 4usize << 10), ("1MiB", 1 << 20)] {
        for (case, secret) in [("clean", None), ("redact", Some(key))] {
            let body = chat_body(size, secret);
            group.throughput(criterion::Throughput::Bytes(body.len() as u64));
            group.bench_function(format!("json_{label}_{case}"), |b| {
                b.iter(|| {
                    let mut inspector =
                        ResponseInspector::new(inspection.clone(), "application/json");
                    let out = inspector.whole(black_box(&body));
                    assert_eq!(out.changed, secret.is_some());
                    black_box(out.body.len())
                })
            });
        }
    }
    let stream: Vec<u8> = (0..1000)
        .flat_map(|i| {
            let text = if i == 500 {
                key.to_owned()
            } else {
                format!("token {i} of the answer ")
            };
            format!(
                "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}}}}]}}\n\n"
            )
            .into_bytes()
        })
        .collect();
    let pieces: Vec<&[u8]> = stream.chunks(16 << 10).collect();
    group.throughput(criterion::Throughput::Bytes(stream.len() as u64));
    group.bench_function("sse_1000_events", |b| {
        b.iter(|| {
            let mut inspector = ResponseInspector::new(inspection.clone(), "text/event-stream");
            let mut out = 0;
            for (i, piece) in pieces.iter().enumerate() {
                out += inspector.piece(piece, i + 1 == pieces.len()).body.len();
            }
            black_box(out)
        })
    });
    group.finish();
}

/// A DNS stand-in on loopback answering every A query with one public address (TTL 300 s):
/// the cold case pays a real UDP round trip and hickory's parsing, not a far-away server.
fn public_dns() -> std::net::SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((len, peer)) = socket.recv_from(&mut buf) {
            let query = &buf[..len];
            let mut at = 12;
            while at < len && query[at] != 0 {
                at += 1 + query[at] as usize;
            }
            if at + 5 > len {
                continue;
            }
            let is_a = query[at + 1..at + 3] == [0, 1];
            let mut reply = query[..at + 5].to_vec();
            reply[2] = 0x81;
            reply[3] = 0x80;
            reply[6..12].copy_from_slice(&[0, u8::from(is_a), 0, 0, 0, 0]);
            if is_a {
                reply.extend_from_slice(&[
                    0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 1, 44, 0, 4, 93, 184, 215, 14,
                ]);
            }
            let _ = socket.send_to(&reply, peer);
        }
    });
    addr
}

/// The network guard per request: an IP literal (classification only), a name in the cache
/// (warm), and a name never seen before (cold: a query to the stand-in on loopback).
fn bench_network_guard(c: &mut Criterion) {
    use portcullis::network::{NetworkGuard, NetworkGuardConfig, Resolvers};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = NetworkGuardConfig {
        nameservers: vec![public_dns().to_string()],
        ..NetworkGuardConfig::default()
    };
    let guard = runtime.block_on(async { NetworkGuard::compile(&config, &Resolvers::default()) });
    let exempt = |_: std::net::IpAddr| false;
    let literal = Some("93.184.215.14".parse().unwrap());
    runtime
        .block_on(guard.vet("warm.bench.test", None, 443, &exempt))
        .expect("the stand-in answers");
    let mut group = c.benchmark_group("network_guard");
    group.bench_function("ip_literal", |b| {
        b.iter(|| runtime.block_on(guard.vet("93.184.215.14", literal, 443, &exempt)))
    });
    group.bench_function("warm_cache", |b| {
        b.iter(|| runtime.block_on(guard.vet(black_box("warm.bench.test"), None, 443, &exempt)))
    });
    let mut n = 0u64;
    group.bench_function("cold_cache", |b| {
        b.iter(|| {
            n += 1;
            let host = format!("n{n}.cold.bench.test");
            runtime.block_on(guard.vet(&host, None, 443, &exempt))
        })
    });
    group.finish();
}
