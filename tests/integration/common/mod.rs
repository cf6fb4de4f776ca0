//! The integration harness: a real Envoy (from `scripts/bootstrap`), the real `portcullis`
//! binary, and a real upstream, on free ports, driven with curl as a user would.

pub mod backends;
pub mod collector;
pub mod dns;
pub mod issuer;
pub mod llm;
pub mod mcp;
pub mod moto;
pub mod postgres;
pub mod processor;
pub mod redis;
pub mod session;
pub mod tcp_proxy;
pub mod tls_probe;
pub mod upstream;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use upstream::{Seen, TestTls, Upstream};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What one run of the `portcullis` command printed, and how it exited.
#[derive(Debug)]
pub struct CliRun {
    /// The exit code (-1 when a signal ended it).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliRun {
    /// Everything it printed, standard output first.
    pub fn printed(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// The whitespace-separated fields of the first stdout line whose first field is
    /// `first` (a table row).
    pub fn row(&self, first: &str) -> Vec<String> {
        self.stdout
            .lines()
            .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .find(|fields| fields.first().is_some_and(|f| f == first))
            .unwrap_or_else(|| panic!("no row {first:?} in:\n{}", self.stdout))
    }
}

/// Runs the `portcullis` binary to completion. The variables that would point it at
/// something of the developer's (a store, a server, an admin token, a proxy) are removed,
/// then `env` is set.
pub fn run_portcullis(args: &[&str], env: &[(&str, &str)]) -> CliRun {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .env_remove("PORTCULLIS_STORE")
        .env_remove("PORTCULLIS_SERVER")
        .env_remove("PORTCULLIS_ADMIN_TOKEN")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .envs(env.iter().copied())
        .output()
        .expect("the portcullis binary runs");
    CliRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The real Envoy binary, installed into `.venv` by `scripts/bootstrap` on first use.
pub fn envoy_binary() -> &'static Path {
    static ENVOY: OnceLock<PathBuf> = OnceLock::new();
    ENVOY.get_or_init(|| {
        if let Ok(path) = std::env::var("PORTCULLIS_ENVOY") {
            return PathBuf::from(path);
        }
        let out = Command::new(repo().join("scripts/bootstrap"))
            .stderr(Stdio::inherit())
            .output()
            .expect("scripts/bootstrap runs");
        assert!(out.status.success(), "scripts/bootstrap failed: {out:?}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        PathBuf::from(
            stdout
                .lines()
                .last()
                .expect("bootstrap prints the Envoy path")
                .trim(),
        )
    })
}

/// The seeds' common patterns as a config's `policies:` section
/// (`tests/fixtures/seed-policies.yaml`).
pub fn seed_policies() -> String {
    std::fs::read_to_string(repo().join("tests/fixtures/seed-policies.yaml")).unwrap()
}

/// Test upstreams live on loopback, which the network guard refuses by default: a config
/// that does not set `network_guard` itself gets the operator's opt-in for loopback, so
/// tests about something else reach their upstreams.
pub fn loopback_opt_in(config: &str) -> String {
    if config.lines().any(|l| l.starts_with("network_guard:")) {
        return config.to_owned();
    }
    format!("{config}\nnetwork_guard: {{allow_cidrs: [127.0.0.0/8, \"::1/128\"]}}\n")
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A one-worker runtime for a test server, and a listener on a free loopback port.
pub fn loopback_server() -> (
    tokio::runtime::Runtime,
    tokio::net::TcpListener,
    std::net::SocketAddr,
) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    (runtime, listener, addr)
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed on drop.
pub struct Process {
    pub child: Child,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM (a graceful shutdown), without waiting.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM {}", self.pid());
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What curl got back.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// The proxy's answer to CONNECT (0 when no CONNECT was sent).
    pub connect_status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// curl's exit code (0 when a response arrived).
    pub exit: i32,
    /// Read through `Debug` in failure messages.
    #[allow(dead_code)]
    pub stderr: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// The status of the answer that arrived whole: the response's (curl exited 0), or the
    /// proxy's refusal of a CONNECT (curl gets no response then); 0 when neither did.
    pub fn answered(&self) -> u16 {
        if self.status != 0 {
            if self.exit == 0 { self.status } else { 0 }
        } else if self.connect_status >= 300 {
            self.connect_status
        } else {
            0
        }
    }
}

static CURL_SEQ: AtomicUsize = AtomicUsize::new(0);

/// Runs curl with `args`; the reply's headers and body are captured to files in `dir`.
pub fn curl(dir: &Path, args: &[&str]) -> Reply {
    let n = CURL_SEQ.fetch_add(1, Ordering::Relaxed);
    let headers_file = dir.join(format!("curl-{n}.headers"));
    let body_file = dir.join(format!("curl-{n}.body"));
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "15", "-D"])
        .arg(&headers_file)
        .arg("-o")
        .arg(&body_file)
        .args(["-w", "%{http_code} %{http_connect}"])
        .args(args)
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("no_proxy")
        .env_remove("NO_PROXY")
        .output()
        .expect("curl runs");
    let headers_text = std::fs::read_to_string(&headers_file).unwrap_or_default();
    // With CONNECT, the proxy's response headers come first: keep the last block.
    let last_block = headers_text
        .split("\r\n\r\n")
        .filter(|b| !b.trim().is_empty())
        .last()
        .unwrap_or_default();
    let headers = last_block
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let codes = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut codes = codes.split_whitespace().map(|c| c.parse().unwrap_or(0));
    Reply {
        status: codes.next().unwrap_or(0),
        connect_status: codes.next().unwrap_or(0),
        headers,
        body: std::fs::read_to_string(&body_file).unwrap_or_default(),
        exit: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// How the shipped Envoy configs reach Portcullis: replaced by the test's own socket.
const GRPC_SOCKET_IN_ENVOY_CONFIGS: &str = "path: /run/portcullis/grpc.sock";

/// Where the shipped Envoy configs write the access log Portcullis follows: beside the
/// socket, replaced with it.
pub const ENVOY_ACCESS_LOG_IN_ENVOY_CONFIGS: &str = "/run/portcullis/access.jsonl";

/// A gRPC channel over Portcullis's Unix socket, as Envoy (or any process of this user)
/// opens it.
pub async fn grpc_channel(
    socket: &Path,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let socket = socket.to_path_buf();
    tonic::transport::Endpoint::from_static("http://portcullis.invalid")
        .connect_with_connector(UnixConnector(socket))
        .await
}

#[derive(Clone)]
struct UnixConnector(PathBuf);

impl tonic::codegen::Service<tonic::codegen::http::Uri> for UnixConnector {
    type Response = hyper_util::rt::TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: tonic::codegen::http::Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move {
            tokio::net::UnixStream::connect(path)
                .await
                .map(hyper_util::rt::TokioIo::new)
        })
    }
}

/// Which Envoy bootstrap to run, from `envoy/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvoyMode {
    ForwardProxy,
    BaseUrl,
    HttpsIntercept,
    Transparent,
    /// The forward proxy over mutual TLS (`envoy/mesh-mtls.yaml`); its certificate files are
    /// swapped in through `envoy_edits`.
    MeshMtls,
}

/// Options for [`Gateway::start`].
pub struct GatewayOptions {
    pub mode: EnvoyMode,
    /// Environment variables for portcullis (token sources).
    pub env: Vec<(String, String)>,
    /// Replacements applied to the Envoy config text after the port substitutions.
    pub envoy_edits: Vec<(String, String)>,
    /// The trust store Envoy uses towards upstreams (base-URL mode).
    pub upstream_ca_pem: Option<String>,
    /// Portcullis is expected to start unready (its store unreachable): wait for it to
    /// answer `/healthz` only.
    pub starts_unready: bool,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            mode: EnvoyMode::ForwardProxy,
            env: Vec::new(),
            envoy_edits: Vec::new(),
            upstream_ca_pem: None,
            starts_unready: false,
        }
    }
}

/// Envoy + Portcullis, running in a temp dir. Everything stops on drop.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub proxy_port: u16,
    /// Portcullis's gRPC socket (ext_proc and SDS), owner-only, in the temp dir.
    pub grpc_socket: PathBuf,
    pub admin_port: u16,
    pub envoy_admin_port: u16,
    pub envoy: Process,
    pub portcullis: Process,
    env: Vec<(String, String)>,
}

/// What came back on a raw socket to the proxy listener ([`Gateway::send_raw`]).
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl RawReply {
    /// The body as JSON (`null` when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// A field of the error body (`type`, `policy`, `message`, …), or "".
    pub fn error_field(&self, field: &str) -> String {
        self.json()["error"][field]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

impl Gateway {
    /// Sends `request` byte for byte to the proxy listener (curl would tidy headers and
    /// paths up) and reads the answer until Envoy closes.
    pub fn send_raw(&self, request: &[u8]) -> RawReply {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", self.proxy_port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        tcp.write_all(request).unwrap();
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        RawReply {
            status,
            head: head.to_owned(),
            body: body.to_owned(),
        }
    }
    /// Starts Portcullis with `config` and Envoy in front of it; waits until both are ready.
    pub fn start(config: &str, options: GatewayOptions) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("portcullis.yaml");
        std::fs::write(&config_path, loopback_opt_in(config)).unwrap();
        let grpc_socket = dir.path().join("grpc.sock");
        let admin_port = free_port();
        let portcullis = spawn_portcullis(
            dir.path(),
            &config_path,
            &grpc_socket,
            admin_port,
            &options.env,
        );
        let mut gateway = Gateway {
            config_path,
            proxy_port: 0,
            grpc_socket,
            admin_port,
            envoy_admin_port: 0,
            envoy: Process {
                child: Command::new("true").spawn().unwrap(),
            },
            portcullis,
            env: options.env.clone(),
            dir,
        };
        gateway.settle_admin_port(0);
        if options.starts_unready {
            gateway.wait_portcullis_answers();
        } else {
            gateway.wait_portcullis_ready();
        }
        // Envoy binds its own ports; a port taken between our probe and its bind is retried.
        for attempt in 0..3 {
            gateway.proxy_port = free_port();
            gateway.envoy_admin_port = free_port();
            gateway.envoy = gateway.spawn_envoy(&options, attempt);
            if gateway.wait_envoy_ready() {
                return gateway;
            }
            gateway.envoy.stop();
        }
        panic!("Envoy did not become ready; log:\n{}", gateway.envoy_log());
    }

    fn spawn_envoy(&self, options: &GatewayOptions, attempt: usize) -> Process {
        let file = match options.mode {
            EnvoyMode::ForwardProxy => "forward-proxy.yaml",
            EnvoyMode::BaseUrl => "base-url.yaml",
            EnvoyMode::HttpsIntercept => "https-intercept.yaml",
            EnvoyMode::Transparent => "transparent.yaml",
            EnvoyMode::MeshMtls => "mesh-mtls.yaml",
        };
        let mut text = std::fs::read_to_string(repo().join("envoy").join(file)).unwrap();
        let socket = format!("path: {}", self.grpc_socket.display());
        for (from, to) in [
            (
                "port_value: 10000",
                format!("port_value: {}", self.proxy_port),
            ),
            (GRPC_SOCKET_IN_ENVOY_CONFIGS, socket),
            (
                "port_value: 9902",
                format!("port_value: {}", self.envoy_admin_port),
            ),
        ] {
            assert_eq!(
                text.matches(from).count(),
                1,
                "{file} holds {from} exactly once"
            );
            text = text.replace(from, &to);
        }
        // Envoy's access log file, beside the socket, where Portcullis follows it.
        text = text.replace(
            ENVOY_ACCESS_LOG_IN_ENVOY_CONFIGS,
            &self
                .grpc_socket
                .with_file_name("access.jsonl")
                .display()
                .to_string(),
        );
        if let Some(ca) = &options.upstream_ca_pem {
            let ca_path = self.dir.path().join("upstream-ca.pem");
            std::fs::write(&ca_path, ca).unwrap();
            let store = "filename: /etc/ssl/certs/ca-certificates.crt";
            assert_eq!(
                text.matches(store).count(),
                1,
                "{file} names the trust store once"
            );
            text = text.replace(store, &format!("filename: {}", ca_path.display()));
        }
        for (from, to) in &options.envoy_edits {
            assert!(text.contains(from.as_str()), "{file} contains {from:?}");
            text = text.replace(from.as_str(), to);
        }
        let config = self.dir.path().join(format!("envoy-{attempt}.yaml"));
        std::fs::write(&config, text).unwrap();
        let log = std::fs::File::create(self.dir.path().join("envoy.log")).unwrap();
        let access = std::fs::File::create(self.dir.path().join("envoy-access.log")).unwrap();
        let child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&config)
            .args([
                "--disable-hot-restart",
                "--log-level",
                "warn",
                "--concurrency",
                "2",
                // The access log file reaches the audit trail this soon (1 s when shipped).
                "--file-flush-interval-msec",
                "200",
            ])
            .stdout(access)
            .stderr(log)
            .spawn()
            .expect("envoy starts");
        Process { child }
    }

    fn wait_envoy_ready(&mut self) -> bool {
        let url = format!("http://127.0.0.1:{}/ready", self.envoy_admin_port);
        let dir = self.dir.path().to_path_buf();
        let envoy = &mut self.envoy;
        wait_until(Duration::from_secs(20), || {
            envoy.is_running() && curl(&dir, &[&url]).status == 200
        })
    }

    /// The admin port we probed free may be taken before Portcullis binds it (tests run in
    /// parallel): then Portcullis exits saying so, and starts again on a fresh port, up to
    /// three times, as Envoy does. `seen`: how much of the log earlier starts wrote.
    fn settle_admin_port(&mut self, seen: usize) {
        let log = self.dir.path().join("portcullis.log");
        // What this start wrote.
        let mut seen = seen;
        for attempt in 0..4 {
            let new_log = || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                text.get(seen.min(text.len())..)
                    .unwrap_or_default()
                    .to_owned()
            };
            let portcullis = &mut self.portcullis;
            wait_until(Duration::from_secs(20), || {
                !portcullis.is_running() || new_log().contains("portcullis is serving")
            });
            let taken = !self.portcullis.is_running()
                && new_log().contains("cannot listen for admin")
                && new_log().contains("Address already in use");
            if !taken {
                return;
            }
            assert!(
                attempt < 3,
                "portcullis found its admin port taken four times; log:\n{}",
                self.portcullis_log()
            );
            eprintln!(
                "portcullis: admin port {} was taken before it could bind it; retrying on another",
                self.admin_port
            );
            self.admin_port = free_port();
            seen = std::fs::metadata(&log).map_or(0, |m| m.len() as usize);
            self.portcullis = spawn_portcullis(
                self.dir.path(),
                &self.config_path,
                &self.grpc_socket,
                self.admin_port,
                &self.env,
            );
        }
    }

    fn wait_portcullis_ready(&mut self) {
        let url = format!("http://127.0.0.1:{}/readyz", self.admin_port);
        let dir = self.dir.path().to_path_buf();
        let portcullis = &mut self.portcullis;
        let ready = wait_until(Duration::from_secs(20), || {
            portcullis.is_running() && curl(&dir, &[&url]).status == 200
        });
        assert!(
            ready,
            "portcullis did not become ready; log:\n{}",
            self.portcullis_log()
        );
    }

    fn wait_portcullis_answers(&mut self) {
        let url = format!("http://127.0.0.1:{}/healthz", self.admin_port);
        let dir = self.dir.path().to_path_buf();
        let portcullis = &mut self.portcullis;
        let up = wait_until(Duration::from_secs(20), || {
            portcullis.is_running() && curl(&dir, &[&url]).status == 200
        });
        assert!(
            up,
            "portcullis did not start; log:\n{}",
            self.portcullis_log()
        );
    }

    /// Calls the admin API: `method path`, with a bearer token and a JSON body.
    pub fn api(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Reply {
        let authorization = token.map(|t| format!("authorization: Bearer {t}"));
        let headers: Vec<&str> = authorization.iter().map(String::as_str).collect();
        self.api_with_headers(method, path, &headers, body)
    }

    /// A call to the admin server with exactly these headers (a JSON body adds its
    /// content type).
    pub fn api_with_headers(
        &self,
        method: &str,
        path: &str,
        headers: &[&str],
        body: Option<&str>,
    ) -> Reply {
        let url = format!("http://127.0.0.1:{}{path}", self.admin_port);
        let mut args = vec!["-X", method, url.as_str()];
        for header in headers {
            args.extend(["-H", header]);
        }
        if let Some(body) = body {
            args.extend([
                "-H",
                "content-type: application/json",
                "--data-binary",
                body,
            ]);
        }
        curl(self.dir.path(), &args)
    }

    /// Sends a request through the forward proxy (`curl --proxy`).
    pub fn via_proxy(&self, args: &[&str]) -> Reply {
        let proxy = format!("http://127.0.0.1:{}", self.proxy_port);
        let mut all = vec!["--proxy", proxy.as_str()];
        all.extend_from_slice(args);
        curl(self.dir.path(), &all)
    }

    /// Sends a request through the forward proxy and waits for Envoy to close its ext_proc
    /// stream; returns the reply and how many messages Portcullis sent on that stream
    /// (1: headers only; 2: the body was buffered and answered too).
    pub fn via_proxy_counting_messages(&self, args: &[&str]) -> (Reply, u64) {
        const SENT: &str = "ext_proc.portcullis.stream_msgs_sent";
        const CLOSED: &str = "ext_proc.portcullis.streams_closed";
        let (sent, closed) = (self.envoy_counter(SENT), self.envoy_counter(CLOSED));
        let reply = self.via_proxy(args);
        assert!(
            wait_until(Duration::from_secs(5), || self.envoy_counter(CLOSED)
                > closed),
            "Envoy closed the ext_proc stream"
        );
        (reply, self.envoy_counter(SENT) - sent)
    }

    /// Sends a request straight to the Envoy listener (base-URL mode).
    pub fn to_listener(&self, path: &str, args: &[&str]) -> Reply {
        let url = format!("http://127.0.0.1:{}{path}", self.proxy_port);
        let mut all = vec![url.as_str()];
        all.extend_from_slice(args);
        curl(self.dir.path(), &all)
    }

    pub fn admin(&self, path: &str) -> Reply {
        curl(
            self.dir.path(),
            &[&format!("http://127.0.0.1:{}{path}", self.admin_port)],
        )
    }

    /// The value of one Prometheus sample, e.g.
    /// `portcullis_decisions_total{decision="DENIED",policy="x"}`.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        self.admin("/metrics")
            .body
            .lines()
            .find_map(|l| l.strip_prefix(sample).map(|v| v.trim().parse().unwrap()))
    }

    /// The sum of Envoy's counters whose name ends with `suffix` (from its admin
    /// `/stats`), e.g. `ext_proc.stream_msgs_sent`: what Envoy itself says it did.
    pub fn envoy_counter(&self, suffix: &str) -> u64 {
        let url = format!("http://127.0.0.1:{}/stats", self.envoy_admin_port);
        curl(self.dir.path(), &[&url])
            .body
            .lines()
            .filter_map(|l| l.split_once(": "))
            .filter(|(name, _)| name.ends_with(suffix))
            .map(|(_, value)| value.trim().parse::<u64>().unwrap_or(0))
            .sum()
    }

    /// A GET on Envoy's admin interface (`/config_dump`, `/stats`…).
    pub fn envoy_admin(&self, path: &str) -> Reply {
        let url = format!("http://127.0.0.1:{}{path}", self.envoy_admin_port);
        curl(self.dir.path(), &[&url])
    }

    /// Waits until Envoy holds the routes Portcullis compiled from its live config
    /// (the fast path's RDS): its catch-all virtual host is named after the version.
    pub fn wait_routes_current(&self) -> bool {
        wait_until(Duration::from_secs(10), || {
            let version = self.admin("/readyz").json()["config_version"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            !version.is_empty()
                && self
                    .envoy_admin("/config_dump?resource=dynamic_route_configs")
                    .body
                    .contains(&format!("any_host|{version}"))
        })
    }

    /// Replaces the config file (as an editor would: write a temp file, rename over).
    pub fn write_config(&self, config: &str) {
        let tmp = self.dir.path().join(".portcullis.yaml.tmp");
        std::fs::write(&tmp, loopback_opt_in(config)).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }

    /// Rewrites the config file in place (truncate and write, same inode).
    pub fn write_config_in_place(&self, config: &str) {
        std::fs::write(&self.config_path, loopback_opt_in(config)).unwrap();
    }

    /// Turns the config file into a Kubernetes ConfigMap volume layout:
    /// `portcullis.yaml -> ..data/portcullis.yaml`, `..data -> ..v0`. Call before changes
    /// made with [`Gateway::swap_configmap`]. Portcullis keeps watching the same path.
    pub fn use_configmap_layout(&self) {
        let dir = self.dir.path();
        let content = std::fs::read_to_string(&self.config_path).unwrap();
        std::fs::create_dir(dir.join("..v0")).unwrap();
        std::fs::write(dir.join("..v0/portcullis.yaml"), content).unwrap();
        std::os::unix::fs::symlink("..v0", dir.join("..data")).unwrap();
        let tmp = dir.join(".link.tmp");
        std::os::unix::fs::symlink("..data/portcullis.yaml", &tmp).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }

    /// Updates the config as the kubelet does: new timestamped dir, atomic `..data` swap,
    /// old dir removed.
    pub fn swap_configmap(&self, version: u32, config: &str) {
        let dir = self.dir.path();
        let new = format!("..v{version}");
        std::fs::create_dir(dir.join(&new)).unwrap();
        std::fs::write(
            dir.join(&new).join("portcullis.yaml"),
            loopback_opt_in(config),
        )
        .unwrap();
        let old = std::fs::read_link(dir.join("..data")).unwrap();
        let tmp = dir.join("..data_tmp");
        std::os::unix::fs::symlink(&new, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
        std::fs::remove_dir_all(dir.join(old)).unwrap();
    }

    /// Audit records written so far.
    /// The audit trail's decision records (and response records), without the `upstream`
    /// records Envoy's access log adds for allowed requests.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        self.audit_lines()
            .into_iter()
            .filter(|r| r["event"] != "upstream")
            .collect()
    }

    /// Every line of the audit trail.
    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("portcullis.stdout"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line is JSON ({e}): {l}"))
            })
            .collect()
    }

    /// Waits for the audit record of a request (by id, or the newest for a path).
    pub fn audit_for(&self, predicate: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let mut found = None;
        wait_until(Duration::from_secs(30), || {
            found = self.audit_lines().into_iter().rev().find(|r| predicate(r));
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no matching audit record in {:#?}", self.audit_lines()))
    }

    pub fn portcullis_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("portcullis.log")).unwrap_or_default()
    }

    pub fn envoy_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    /// Every file the gateway wrote (logs, audit, Envoy access log), concatenated.
    pub fn all_output(&self) -> String {
        let mut all = String::new();
        for name in [
            "portcullis.stdout",
            "portcullis.log",
            "envoy.log",
            "envoy-access.log",
        ] {
            all.push_str(&std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default());
        }
        all
    }

    /// Asserts that no sentinel value appears in anything the gateway wrote (Portcullis's
    /// stdout and stderr, the audit trail, Envoy's logs and access log), on the metrics
    /// page, or in the given replies (error bodies and headers the workload saw).
    ///
    /// Each reply comes with the status the test expects of it, asserted first: a reply
    /// that is not the one the test meant to check (a 502, nothing at all) trivially holds
    /// no secret, and would make the check pass without proving anything.
    pub fn assert_no_leaks_checked(&self, sentinels: &[&str], replies: &[(&Reply, u16)]) {
        for (reply, expected) in replies {
            assert_eq!(
                reply.answered(),
                *expected,
                "a reply fed to the leak check is not the one expected: {reply:?}"
            );
        }
        let replies: Vec<&Reply> = replies.iter().map(|(reply, _)| *reply).collect();
        self.assert_no_leaks(sentinels, &replies);
    }

    /// [`Gateway::assert_no_leaks_checked`] for replies whose status the caller has
    /// asserted itself (or none: `&[]`, the gateway's own output only). Prefer the checked
    /// form for replies.
    pub fn assert_no_leaks(&self, sentinels: &[&str], replies: &[&Reply]) {
        let mut seen = self.all_output();
        seen.push_str(&self.admin("/metrics").body);
        for reply in replies {
            seen.push_str(&reply.body);
            seen.push_str(&format!("{:?}", reply.headers));
        }
        assert!(seen.len() > 100, "there is output to check");
        for sentinel in sentinels {
            assert!(!sentinel.is_empty());
            if let Some(at) = seen.find(sentinel) {
                let from = seen[..at]
                    .char_indices()
                    .rev()
                    .nth(80)
                    .map_or(0, |(i, _)| i);
                panic!(
                    "sentinel {sentinel:?} leaked, near: {:?}",
                    &seen[from..(at + sentinel.len()).min(seen.len())]
                );
            }
        }
    }

    /// Restarts portcullis on the same ports (Envoy keeps running). The admin port, free
    /// while the old process held it, may be taken by another process meanwhile: then it
    /// moves to a fresh one (Envoy only knows the gRPC socket).
    pub fn restart_portcullis(&mut self) {
        self.portcullis.stop();
        let seen = std::fs::metadata(self.dir.path().join("portcullis.log"))
            .map_or(0, |m| m.len() as usize);
        self.portcullis = spawn_portcullis(
            self.dir.path(),
            &self.config_path,
            &self.grpc_socket,
            self.admin_port,
            &self.env,
        );
        self.settle_admin_port(seen);
        self.wait_portcullis_ready();
    }
}

fn spawn_portcullis(
    dir: &Path,
    config: &Path,
    grpc_socket: &Path,
    admin_port: u16,
    env: &[(String, String)],
) -> Process {
    let stdout = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("portcullis.stdout"))
        .unwrap();
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("portcullis.log"))
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .arg("--grpc-listen")
        .arg(format!("unix:{}", grpc_socket.display()))
        .arg("--admin-listen")
        .arg(format!("127.0.0.1:{admin_port}"))
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("PORTCULLIS_LOG", "info")
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("portcullis starts");
    Process { child }
}
