//! Real clients behind the gateway: what package managers and SDKs actually send, through
//! the shipped Envoy configs, against local servers.

use std::process::Command;
use std::time::Duration;

use crate::common::{EnvoyMode, Gateway, GatewayOptions, TestTls, Upstream, wait_until};

/// Python 3.11's `http.client` (and so pip, requests and urllib3 on it) opens HTTPS through
/// a proxy with `CONNECT host:port HTTP/1.0`. Run by the machine's own Python 3.11, the
/// interpreter pip runs on.
fn python_https_get(gw: &Gateway, ca_file: &str, url: &str) -> (String, String) {
    let script = r#"
import json, ssl, sys, urllib.request, urllib.error
url, proxy, ca = sys.argv[1:]
opener = urllib.request.build_opener(
    urllib.request.ProxyHandler({"https": proxy}),
    urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=ca)))
try:
    with opener.open(url, timeout=10) as response:
        print(json.dumps({"status": response.status, "body": response.read().decode()}))
except urllib.error.HTTPError as error:
    print(json.dumps({"status": error.code, "body": error.read().decode()}))
except OSError as error:
    print(json.dumps({"error": str(error)}))
"#;
    let proxy = format!("http://127.0.0.1:{}", gw.proxy_port);
    let out = Command::new("python3")
        .args(["-c", script, url, &proxy, ca_file])
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .output()
        .expect("python3 runs");
    (
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn python_version() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        .output()
        .expect("python3 runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

const TUNNEL_POLICY: &str = r#"
policies:
  - {name: tunnel-localhost, action: allow, rules: [{host: localhost, methods: [CONNECT, GET]}]}
  - {name: plain-loopback, action: allow, rules: [{host: 127.0.0.1, methods: [GET]}]}
"#;

/// pip and requests on Python 3.11 send `CONNECT … HTTP/1.0`; every listener must hear it
/// (Envoy's codec answers 426 by itself otherwise, and Portcullis never decides).
#[test]
fn http_1_0_connect_from_python_3_11_is_decided_and_tunnelled() {
    let tls = TestTls::generate();
    let upstream = Upstream::start(Some(tls.server.clone()));
    let gw = Gateway::start(TUNNEL_POLICY, GatewayOptions::default());
    let ca = gw.dir.path().join("upstream-ca.pem");
    std::fs::write(&ca, &tls.ca_pem).unwrap();
    let ca = ca.display().to_string();

    let version = python_version();
    let url = format!("https://localhost:{}/simple/requests/", upstream.port());
    let (out, err) = python_https_get(&gw, &ca, &url);
    assert!(
        out.contains("\"status\": 200"),
        "Python {version} through the proxy: {out} {err}\n{}",
        gw.envoy_log()
    );
    assert_eq!(upstream.seen().last().unwrap().path, "/simple/requests/");
    let record = gw.audit_for(|r| r["method"] == "CONNECT" && r["decision"] == "ALLOWED");
    assert_eq!(record["host"], "localhost");
    assert_eq!(record["policy"], "tunnel-localhost");

    // The same client refused: it gets a 403 for its CONNECT, and the refusal is audited.
    let hits = upstream.hits();
    let refused = format!("https://127.0.0.1:{}/simple/", upstream.port());
    let (out, _) = python_https_get(&gw, &ca, &refused);
    assert!(out.contains("Tunnel connection failed: 403"), "{out}");
    assert_eq!(upstream.hits(), hits, "the refused tunnel reached nothing");
    let record = gw.audit_for(|r| r["method"] == "CONNECT" && r["decision"] == "DENIED");
    assert_eq!(record["host"], "127.0.0.1");
    assert_eq!(record["reason"], "no_matching_policy");

    // curl says the same in HTTP/1.0 explicitly (--proxy1.0), and an HTTP/1.0 request in
    // absolute form (`curl -0`) is decided too.
    let proxy = format!("127.0.0.1:{}", gw.proxy_port);
    let reply = crate::common::curl(
        gw.dir.path(),
        &["--proxy1.0", &proxy, "--cacert", &ca, &url],
    );
    assert_eq!(
        (reply.connect_status, reply.status),
        (200, 200),
        "{reply:?}"
    );
    let plain_upstream = Upstream::start(None);
    let plain = format!("http://127.0.0.1:{}/plain/1.0", plain_upstream.port());
    let reply = gw.via_proxy(&["-0", &plain]);
    assert_ne!(reply.status, 426, "{reply:?}");
    let record = gw.audit_for(|r| r["path"] == "/plain/1.0");
    assert_eq!(record["decision"], "ALLOWED", "{record}");

    // HTTP/1.0 lets a request go without a Host: such a request names no destination, and
    // is refused without reaching anything.
    let hits = plain_upstream.hits();
    let answer = raw_exchange(gw.proxy_port, b"GET /no-host HTTP/1.0\r\n\r\n");
    assert!(
        answer.starts_with("HTTP/1.0 4") || answer.starts_with("HTTP/1.1 4"),
        "{answer:?}"
    );
    assert_eq!(plain_upstream.hits(), hits);

    // Older clients send `Proxy-Connection` (a hop-by-hop header of their own making): it is
    // taken, and not passed on.
    let keep_alive = format!(
        "http://127.0.0.1:{}/proxy-connection",
        plain_upstream.port()
    );
    let reply = gw.via_proxy(&["-H", "Proxy-Connection: Keep-Alive", &keep_alive]);
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = plain_upstream.seen();
    let seen = seen.iter().find(|s| s.path == "/proxy-connection").unwrap();
    assert_eq!(seen.header("proxy-connection"), None);
}

/// Writes `request` to the proxy on a fresh connection and reads its answer until it closes.
fn raw_exchange(proxy_port: u16, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut socket = std::net::TcpStream::connect(("127.0.0.1", proxy_port)).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    socket.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = socket.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// Under interception the CONNECT listener and the tunnel's inner listeners take HTTP/1.0
/// too.
#[test]
fn http_1_0_connect_is_heard_under_interception() {
    let ca = crate::interception::Ca::init();
    let gw = Gateway::start(
        &format!(
            r#"
policies:
  - {{name: tunnel-any, action: allow, rules: [{{host: "*", methods: [CONNECT]}}]}}
  - {{name: inside, action: allow, rules: [{{host: localhost, methods: [GET]}}]}}
interception:
  ca: {{cert_file: {}, key_file: {}}}
"#,
            ca.cert.display(),
            ca.key.display()
        ),
        GatewayOptions {
            mode: EnvoyMode::HttpsIntercept,
            ..GatewayOptions::default()
        },
    );
    // The upstream is not needed: a 426 would come from Envoy's codec before any decision.
    let proxy = format!("127.0.0.1:{}", gw.proxy_port);
    let reply = crate::common::curl(
        gw.dir.path(),
        &["--proxy1.0", &proxy, "-k", "https://localhost:1/x"],
    );
    assert_ne!(reply.connect_status, 426, "{reply:?}");
    assert!(
        gw.audit()
            .iter()
            .any(|r| r["method"] == "CONNECT" && r["host"] == "localhost"),
        "the HTTP/1.0 CONNECT was decided: {:?}",
        gw.audit()
    );
}

/// Allowed, then failed upstream: the workload gets Envoy's answer as JSON with a type and
/// the request id (even with `header_allowlist` stripping `x-request-id`), and the audit
/// trail gets an `upstream` record under that id, as does Envoy's access log line.
#[test]
fn upstream_failures_carry_a_type_and_the_request_id_and_are_audited() {
    let upstream = Upstream::start(None);
    let closed = crate::common::free_port();
    let gw = Gateway::start(
        r#"
policies:
  - {name: loopback, action: allow, rules: [{host: 127.0.0.1, methods: [GET]}]}
transforms:
  - {name: allowlist}
  - {name: header_allowlist, config: {allow: [accept, user-agent]}}
"#,
        GatewayOptions::default(),
    );

    // Nothing listens on `closed`: Envoy's connection fails after Portcullis allowed it.
    // The workload names its own request id; neither the answer nor the records take it.
    const CHOSEN: &str = "workload-chosen-id-0451";
    let failed = gw.via_proxy(&[
        "-H",
        &format!("X-Request-Id: {CHOSEN}"),
        &format!("http://127.0.0.1:{closed}/down"),
    ]);
    assert_eq!(failed.status, 503, "{failed:?}");
    assert_eq!(failed.header("content-type"), Some("application/json"));
    let body = failed.json();
    assert_eq!(body["error"]["type"], "upstream_connect_failed", "{body}");
    assert!(
        body["error"]["reason"].as_str().unwrap().contains("UF"),
        "{body}"
    );
    let id = failed
        .header("x-portcullis-request-id")
        .expect("the request id header")
        .to_owned();
    assert_eq!(body["error"]["request_id"], id.as_str());
    assert_ne!(id, CHOSEN);
    let decided = gw.audit_for(|r| r["path"] == "/down");
    assert_eq!(decided["decision"], "ALLOWED");
    assert_eq!(decided["request_id"], id.as_str());
    let outcome = gw.audit_for(|r| r["event"] == "upstream" && r["request_id"] == id.as_str());
    assert_eq!(outcome["status"], 503, "{outcome}");
    assert_eq!(
        outcome["response_flags"],
        serde_json::json!(["UF"]),
        "{outcome}"
    );
    assert!(
        gw.all_output().contains(&format!("id={id}")),
        "Envoy's access log names the same id:\n{}",
        gw.all_output()
    );
    assert!(
        !gw.all_output().contains(CHOSEN),
        "the workload's id reached a log or record"
    );

    // A request that went through: its outcome is the upstream's status, no flags.
    let ok = gw.via_proxy(&[&format!("http://127.0.0.1:{}/fine", upstream.port())]);
    assert_eq!(ok.status, 200, "{ok:?}");
    let decided = gw.audit_for(|r| r["path"] == "/fine");
    let id = decided["request_id"].as_str().unwrap().to_owned();
    let outcome = gw.audit_for(|r| r["event"] == "upstream" && r["request_id"] == id.as_str());
    assert_eq!(outcome["status"], 200, "{outcome}");
    assert!(outcome.get("response_flags").is_none(), "{outcome}");
    assert!(
        outcome["upstream_address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );

    // A refusal is its decision record alone: Envoy logs it to Portcullis all the same,
    // which writes no record for it. Shown by order, not by waiting: an allowed request
    // follows it on the same connection (the same Envoy worker, so the same access-log
    // stream, read in order); once that one's record is written, the refusal's entry was
    // read before it.
    const CONNECTIONS: &str = "http.forward_proxy.downstream_cx_total";
    let connections = gw.envoy_counter(CONNECTIONS);
    let proxy = format!("http://127.0.0.1:{}", gw.proxy_port);
    let refused = gw.via_proxy(&[
        "-X",
        "POST",
        &format!("http://127.0.0.1:{}/no", upstream.port()),
        "--next",
        "--proxy",
        &proxy,
        "-o",
        "/dev/null",
        &format!("http://127.0.0.1:{}/after-the-refusal", upstream.port()),
    ]);
    assert_eq!(refused.status, 403, "{refused:?}");
    assert_eq!(
        gw.envoy_counter(CONNECTIONS),
        connections + 1,
        "both requests went on one connection"
    );
    let refused_id = refused
        .header("x-portcullis-request-id")
        .unwrap()
        .to_owned();
    let after = gw.audit_for(|r| r["path"] == "/after-the-refusal");
    assert_eq!(after["decision"], "ALLOWED", "{after}");
    let after_id = after["request_id"].as_str().unwrap().to_owned();
    assert!(
        wait_until(Duration::from_secs(30), || gw.audit_lines().iter().any(
            |r| r["event"] == "upstream" && r["request_id"] == after_id.as_str()
        )),
        "no upstream record for the request after the refusal: {:#?}",
        gw.audit_lines()
    );
    assert!(
        !gw.audit_lines()
            .iter()
            .any(|r| r["event"] == "upstream" && r["request_id"] == refused_id.as_str()),
        "{:#?}",
        gw.audit_lines()
    );
}

/// Portcullis unreachable: Envoy fails closed, and says so in the same JSON shape (503,
/// `decision_unavailable`), with Envoy's request id.
#[test]
fn an_unreachable_gateway_decision_is_a_typed_503() {
    let upstream = Upstream::start(None);
    let mut gw = Gateway::start(
        "policies: [{name: all, action: allow, rules: [{host: '*'}]}]",
        GatewayOptions::default(),
    );
    gw.portcullis.stop();
    let reply = gw.via_proxy(&[&format!("http://127.0.0.1:{}/x", upstream.port())]);
    assert_eq!(reply.status, 503, "{reply:?}");
    let body = reply.json();
    assert_eq!(body["error"]["type"], "decision_unavailable", "{body}");
    let id = reply.header("x-portcullis-request-id").expect("an id");
    assert!(!id.is_empty());
    assert_eq!(body["error"]["request_id"], id);
    assert_eq!(upstream.hits(), 0, "fail closed");
}

/// npm prints `body.error` as a string: it gets our sentence there, with the request id.
#[test]
fn npm_is_refused_with_a_sentence_it_can_print() {
    let gw = Gateway::start(
        "policies: [{name: none, action: allow, rules: [{host: registry.test}]}]",
        GatewayOptions::default(),
    );
    let reply = gw.via_proxy(&[
        "-A",
        "npm/10.9.2 node/v20.20.2 linux x64 workspaces/false",
        "http://127.0.0.1:9/left-pad",
    ]);
    assert_eq!(reply.status, 403, "{reply:?}");
    let body = reply.json();
    let id = reply.header("x-portcullis-request-id").unwrap();
    let sentence = body["error"].as_str().expect("a string, not an object");
    assert!(
        sentence.contains("no policy allows GET 127.0.0.1:9/left-pad"),
        "{sentence}"
    );
    assert!(sentence.contains(&id.replace('-', "")), "{sentence}");
    assert_eq!(body["portcullis"]["type"], "policy_denied");
    // Everyone else keeps the object.
    let reply = gw.via_proxy(&["-A", "cargo/1.95.0", "http://127.0.0.1:9/left-pad"]);
    assert_eq!(reply.json()["error"]["type"], "policy_denied");
}

// ------------------------------------------------------------------------------------------
// The client matrix: real package managers and SDKs, through the real Envoy, against the
// local registries of tests/clients/registry.py, in tunnel and in intercept mode.

/// tests/clients/registry.py: every ecosystem's registry on one HTTPS port, its
/// certificate for `localhost` from a test CA.
struct Registry {
    _process: crate::common::Process,
    https_port: u16,
    tls: TestTls,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        use std::io::BufRead;
        let tls = TestTls::generate_for(&["localhost"]);
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("chain.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, &tls.server_chain_pem).unwrap();
        std::fs::write(&key, &tls.server_key_pem).unwrap();
        let mut child = Command::new("python3")
            .arg(crate::common::repo().join("tests/clients/registry.py"))
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ports: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("registry.py did not start ({e}): {line:?}"));
        Registry {
            https_port: u16::try_from(ports["https_port"].as_u64().unwrap()).unwrap(),
            tls,
            _process: crate::common::Process { child },
            _dir: dir,
        }
    }
}

/// Without interception, another host than the registry's is refused (its CONNECT).
const MATRIX_POLICIES: &str = r#"
policies:
  - name: registries
    action: allow
    rules: [{host: localhost, methods: [CONNECT, GET, HEAD, POST]}]
"#;

/// Under interception, the `forbidden` package's paths inside the allowed tunnel. (Without
/// it, this rule would refuse the whole opaque tunnel to localhost: the tunnel could carry
/// those paths.)
const MATRIX_FORBIDDEN_PACKAGES: &str = r#"
  - name: no-forbidden-packages
    priority: 10
    action: deny
    rules:
      - host: localhost
        paths: ["/simple/forbidden/*", "/simple/files/forbidden-*", "/npm/forbidden*",
                "/cargo/index/fo/rb/forbidden", "/cargo/api/v1/crates/forbidden/*",
                "/git/forbidden.git/*", "/apt/forbidden_*", "/forbidden/*"]
"#;

struct Matrix {
    gw: Gateway,
    registry: Registry,
    /// The registry's CA and, under interception, Portcullis's: what the clients trust.
    bundle: String,
    intercept: bool,
    work: tempfile::TempDir,
    _ca: Option<crate::interception::Ca>,
}

/// One client run: what the client printed, and whether it succeeded.
#[derive(Debug)]
struct Run {
    ok: bool,
    output: String,
}

impl Matrix {
    fn start(intercept: bool) -> Matrix {
        let registry = Registry::start();
        let ca = intercept.then(crate::interception::Ca::init);
        let mut config = MATRIX_POLICIES.to_owned();
        if let Some(ca) = &ca {
            config.push_str(MATRIX_FORBIDDEN_PACKAGES);
            config.push_str(&format!(
                "interception:\n  ca: {{cert_file: {}, key_file: {}}}\n",
                ca.cert.display(),
                ca.key.display()
            ));
        }
        let gw = Gateway::start(
            &config,
            GatewayOptions {
                mode: if intercept {
                    EnvoyMode::HttpsIntercept
                } else {
                    EnvoyMode::ForwardProxy
                },
                // Envoy checks the registry's certificate where it originates TLS.
                upstream_ca_pem: intercept.then(|| registry.tls.ca_pem.clone()),
                ..GatewayOptions::default()
            },
        );
        let work = tempfile::tempdir().unwrap();
        let mut bundle_pem = registry.tls.ca_pem.clone();
        if let Some(ca) = &ca {
            bundle_pem.push_str(&std::fs::read_to_string(&ca.cert).unwrap());
        }
        let bundle = work.path().join("bundle.pem");
        std::fs::write(&bundle, bundle_pem).unwrap();
        Matrix {
            gw,
            registry,
            bundle: bundle.display().to_string(),
            intercept,
            work,
            _ca: ca,
        }
    }

    fn proxy(&self) -> String {
        format!("http://127.0.0.1:{}", self.gw.proxy_port)
    }

    /// The registry's base URL: `localhost` (allowed), or 127.0.0.1 (no policy names it).
    fn base(&self, allowed_host: bool) -> String {
        let host = if allowed_host {
            "localhost"
        } else {
            "127.0.0.1"
        };
        format!("https://{host}:{}", self.registry.https_port)
    }

    /// A fresh directory for one client run.
    fn scratch(&self, name: &str) -> std::path::PathBuf {
        let dir = self.work.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Runs a client with a clean environment of proxies and trust settings.
    fn run(&self, command: &mut Command) -> Run {
        for name in [
            "http_proxy",
            "HTTP_PROXY",
            "https_proxy",
            "HTTPS_PROXY",
            "no_proxy",
            "NO_PROXY",
            "REQUESTS_CA_BUNDLE",
            "SSL_CERT_FILE",
            "CURL_CA_BUNDLE",
            "NODE_EXTRA_CA_CERTS",
            "PIP_CERT",
            "CARGO_TARGET_DIR",
        ] {
            command.env_remove(name);
        }
        eprintln!("client matrix: {command:?}");
        let out = command.output().expect("the client runs");
        Run {
            ok: out.status.success(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    /// pip says why an index page could not be fetched (a 403) only at `-vv`: at its
    /// default verbosity a refusal reads "No matching distribution found".
    fn pip(&self, python: &str, package: &str, allowed_host: bool) -> Run {
        let out = self.scratch(&format!("pip-{python}-{package}-{allowed_host}"));
        self.run(
            Command::new(python)
                .args([
                    "-m",
                    "pip",
                    "download",
                    "-vv",
                    "--no-deps",
                    "--no-cache-dir",
                ])
                .args([
                    "--disable-pip-version-check",
                    "--retries",
                    "0",
                    "--timeout",
                    "10",
                ])
                .args([
                    "--index-url",
                    &format!("{}/simple/", self.base(allowed_host)),
                ])
                .args(["--proxy", &self.proxy(), "--cert", &self.bundle, "-d"])
                .arg(&out)
                .arg(package)
                .env("PIP_CONFIG_FILE", "/dev/null"),
        )
    }

    fn npm(&self, package: &str, allowed_host: bool) -> Run {
        let dir = self.scratch(&format!("npm-{package}-{allowed_host}"));
        let userconfig = dir.join("npmrc");
        std::fs::write(&userconfig, "").unwrap();
        self.run(
            Command::new("npm")
                .args(["install", package, "--no-audit", "--no-fund"])
                .args(["--no-update-notifier", "--fetch-retries", "0"])
                .args(["--registry", &format!("{}/npm/", self.base(allowed_host))])
                .args(["--proxy", &self.proxy(), "--https-proxy", &self.proxy()])
                .args(["--cafile", &self.bundle, "--prefix"])
                .arg(&dir)
                .arg("--cache")
                .arg(dir.join("cache"))
                .arg("--userconfig")
                .arg(&userconfig),
        )
    }

    fn cargo(&self, package: &str, allowed_host: bool) -> Run {
        let dir = self.scratch(&format!("cargo-{package}-{allowed_host}"));
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::create_dir_all(dir.join(".cargo")).unwrap();
        std::fs::write(dir.join("src/lib.rs"), "").unwrap();
        std::fs::write(
            dir.join("Cargo.toml"),
            format!(
                "[package]\nname = \"matrix\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
                 [dependencies]\n{package} = {{ version = \"0.1.0\", registry = \"gateway\" }}\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join(".cargo/config.toml"),
            format!(
                "[registries.gateway]\nindex = \"sparse+{}/cargo/index/\"\n\
                 [http]\nproxy = \"{}\"\ncainfo = \"{}\"\n[net]\nretry = 0\n",
                self.base(allowed_host),
                self.proxy(),
                self.bundle
            ),
        )
        .unwrap();
        self.run(
            // cargo reads `.cargo/config.toml` from the directory it runs in.
            Command::new("cargo")
                .current_dir(&dir)
                .args(["fetch", "--manifest-path"])
                .arg(dir.join("Cargo.toml"))
                .env("CARGO_HOME", dir.join("cargo-home")),
        )
    }

    fn git(&self, repo: &str, allowed_host: bool) -> Run {
        let dir = self.scratch(&format!("git-{repo}-{allowed_host}"));
        self.run(
            Command::new("git")
                .args(["-c", &format!("http.proxy={}", self.proxy())])
                .args(["clone", "-q"])
                .arg(format!("{}/git/{repo}.git", self.base(allowed_host)))
                .arg(dir.join("clone"))
                .env("GIT_SSL_CAINFO", &self.bundle)
                .env("GIT_TERMINAL_PROMPT", "0")
                .env("HOME", &dir)
                .env("GIT_CONFIG_NOSYSTEM", "1"),
        )
    }

    fn apt(&self, package: &str, allowed_host: bool) -> Run {
        let dir = self.scratch(&format!("apt-{package}-{allowed_host}"));
        for sub in ["lists/partial", "cache/archives/partial", "state"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::write(dir.join("status"), "").unwrap();
        std::fs::write(
            dir.join("sources.list"),
            format!("deb [trusted=yes] {}/apt/ ./\n", self.base(allowed_host)),
        )
        .unwrap();
        let options = [
            format!(
                "Dir::Etc::SourceList={}",
                dir.join("sources.list").display()
            ),
            "Dir::Etc::SourceParts=/nonexistent".to_owned(),
            format!("Dir::State={}", dir.join("state").display()),
            format!("Dir::State::Lists={}", dir.join("lists").display()),
            format!("Dir::State::Status={}", dir.join("status").display()),
            format!("Dir::Cache={}", dir.join("cache").display()),
            "Debug::NoLocking=1".to_owned(),
            "APT::Sandbox::User=root".to_owned(),
            "Acquire::Languages=none".to_owned(),
            "Acquire::Retries=0".to_owned(),
            format!("Acquire::https::Proxy={}", self.proxy()),
            format!("Acquire::https::CaInfo={}", self.bundle),
        ];
        let apt = |verb: &[&str]| {
            let mut command = Command::new("apt-get");
            command.arg("-q").current_dir(&dir);
            for option in &options {
                command.args(["-o", option]);
            }
            command.args(verb);
            command
        };
        let update = self.run(&mut apt(&["update"]));
        if !update.ok || update.output.contains("Err:") {
            return Run {
                ok: false,
                output: update.output,
            };
        }
        self.run(&mut apt(&["download", package]))
    }

    fn openai(&self, path_prefix: &str, allowed_host: bool) -> Run {
        let script = r#"
import sys, openai
base, proxy, bundle = sys.argv[1:]
client = openai.OpenAI(base_url=base, api_key="sk-placeholder", max_retries=0,
                       http_client=openai.DefaultHttpxClient(proxy=proxy, verify=bundle))
try:
    reply = client.chat.completions.create(model="stand-in", messages=[{"role": "user", "content": "hi"}])
    print("answer:", reply.choices[0].message.content)
except openai.APIStatusError as error:
    print("status error:", error, "request id:", error.request_id)
    sys.exit(1)
except openai.APIConnectionError as error:
    print("connection error:", error, repr(error.__cause__))
    sys.exit(1)
"#;
        self.run(Command::new(crate::common::mcp::python()).args([
            "-c",
            script,
            &format!("{}{path_prefix}/v1", self.base(allowed_host)),
            &self.proxy(),
            &self.bundle,
        ]))
    }

    /// The allowed run succeeded and left an ALLOWED audit record for the registry; the
    /// refused one failed, the client said 403, and a DENIED record says why.
    fn assert_pair(
        &self,
        client: &str,
        allowed: Run,
        refused: Run,
        body_shown: bool,
        before: usize,
    ) {
        let mode = if self.intercept {
            "intercept"
        } else {
            "tunnel"
        };
        assert!(
            allowed.ok,
            "{client} ({mode}) through the gateway: {}\naudit: {:#?}",
            allowed.output,
            self.gw.audit()
        );
        assert!(
            self.gw
                .audit()
                .iter()
                .any(|r| r["host"] == "localhost" && r["decision"] == "ALLOWED"),
            "{client} ({mode}): no ALLOWED record"
        );
        assert!(
            !refused.ok,
            "{client} ({mode}) was let through: {}",
            refused.output
        );
        assert!(
            refused.output.contains("403"),
            "{client} ({mode}) does not say 403: {}",
            refused.output
        );
        let new_refusals: Vec<serde_json::Value> = self
            .gw
            .audit()
            .into_iter()
            .filter(|r| r["decision"] == "DENIED")
            .skip(before)
            .collect();
        let denied = new_refusals.last().expect("a refusal was audited");
        if self.intercept {
            assert_eq!(denied["policy"], "no-forbidden-packages", "{denied}");
        } else {
            assert_eq!(denied["method"], "CONNECT", "{denied}");
            assert_eq!(denied["reason"], "no_matching_policy", "{denied}");
        }
        if self.intercept && body_shown {
            assert!(
                new_refusals.iter().any(|r| {
                    let id = r["request_id"].as_str().unwrap();
                    // npm masks UUIDs in what it prints: it is shown without its dashes.
                    refused.output.contains(id) || refused.output.contains(&id.replace('-', ""))
                }),
                "{client} ({mode}) does not show the request id of any of {:?}: {}",
                new_refusals
                    .iter()
                    .map(|r| &r["request_id"])
                    .collect::<Vec<_>>(),
                refused.output
            );
        }
    }
}

/// A Python newer than 3.11 with pip, when this machine has one (pyenv's, or on PATH).
fn newer_python() -> Option<String> {
    let mut candidates: Vec<String> = ["python3.13", "python3.12"]
        .iter()
        .map(|p| (*p).to_owned())
        .collect();
    if let Ok(entries) = std::fs::read_dir("/root/.pyenv/versions") {
        let mut found: Vec<String> = entries
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("3.12") || name.starts_with("3.13") || name.starts_with("3.14")
            })
            .map(|e| e.path().join("bin/python3").display().to_string())
            .collect();
        found.sort();
        candidates.splice(0..0, found.into_iter().rev());
    }
    candidates.into_iter().find(|python| {
        Command::new(python)
            .args(["-m", "pip", "--version"])
            .output()
            .is_ok_and(|out| out.status.success())
    })
}

fn client_matrix(intercept: bool) {
    let m = Matrix::start(intercept);
    // Tunnel mode refuses another host's CONNECT; intercept mode refuses a package's paths
    // inside an allowed tunnel.
    let (refused_host_allowed, refused_package) = if intercept {
        (true, "forbidden")
    } else {
        (false, "portcullis-demo")
    };
    let refused_repo = if intercept { "forbidden" } else { "demo" };
    let denied = |m: &Matrix| {
        m.gw.audit()
            .iter()
            .filter(|r| r["decision"] == "DENIED")
            .count()
    };
    let mut timings = Vec::new();
    let mut check =
        |name: &str, body_shown: bool, allowed: &dyn Fn() -> Run, refused: &dyn Fn() -> Run| {
            let started = std::time::Instant::now();
            let before = denied(&m);
            let ok = allowed();
            let no = refused();
            assert!(
                crate::common::wait_until(std::time::Duration::from_secs(5), || denied(&m)
                    > before),
                "{name}: the refusal was not audited: {no:?}"
            );
            m.assert_pair(name, ok, no, body_shown, before);
            timings.push(format!("{name} {:.1}s", started.elapsed().as_secs_f64()));
        };
    check(
        "pip (python3, 3.11)",
        false,
        &|| m.pip("python3", "portcullis-demo", true),
        &|| m.pip("python3", refused_package, refused_host_allowed),
    );
    if let Some(python) = newer_python() {
        check(
            &format!("pip ({python})"),
            false,
            &|| m.pip(&python, "portcullis-demo", true),
            &|| m.pip(&python, refused_package, refused_host_allowed),
        );
    } else {
        eprintln!("client matrix: no Python newer than 3.11 with pip here; only 3.11's pip ran");
    }
    check("npm", true, &|| m.npm("portcullis-demo", true), &|| {
        m.npm(refused_package, refused_host_allowed)
    });
    check("cargo", true, &|| m.cargo("portcullis-demo", true), &|| {
        m.cargo(refused_package, refused_host_allowed)
    });
    check("git", false, &|| m.git("demo", true), &|| {
        m.git(refused_repo, refused_host_allowed)
    });
    check("apt", false, &|| m.apt("portcullis-demo", true), &|| {
        m.apt(refused_package, refused_host_allowed)
    });
    let refused_prefix = if intercept { "/forbidden" } else { "" };
    check("openai sdk", true, &|| m.openai("", true), &|| {
        m.openai(refused_prefix, refused_host_allowed)
    });
    eprintln!(
        "client matrix ({}): {}",
        if intercept { "intercept" } else { "tunnel" },
        timings.join(", ")
    );
}

#[test]
fn client_matrix_through_tunnels() {
    client_matrix(false);
}

#[test]
fn client_matrix_under_interception() {
    client_matrix(true);
}

/// Under interception a CONNECT-only rule opens the tunnel and nothing more: the refusal
/// of the request inside says so, and the audit record names the tunnel's policy. The
/// gateway intercepts by `serve --interception-ca` (`PORTCULLIS_INTERCEPTION_CA`, what
/// `INTERCEPT=1 scripts/run` does) with a file that has no `interception`, and that file
/// stays the live one: the fix, written to it, reaches the gateway.
#[test]
fn a_tunnel_only_rule_under_interception_says_why_the_request_inside_is_refused() {
    let tls = TestTls::generate_for(&["localhost"]);
    let upstream = Upstream::start(Some(tls.server.clone()));
    let ca = crate::interception::Ca::init();
    let ca_dir = ca.cert.parent().unwrap().display().to_string();
    let tunnel_only = "policies:\n  - {name: tunnel-only, action: allow, rules: [{host: localhost, methods: [CONNECT]}]}\n";
    let gw = Gateway::start(
        tunnel_only,
        GatewayOptions {
            mode: EnvoyMode::HttpsIntercept,
            env: vec![("PORTCULLIS_INTERCEPTION_CA".into(), ca_dir)],
            upstream_ca_pem: Some(tls.ca_pem.clone()),
            ..GatewayOptions::default()
        },
    );
    let cacert = ca.cert.display().to_string();
    let url = format!("https://localhost:{}/repos", upstream.port());
    let reply = gw.via_proxy(&["--cacert", &cacert, &url]);
    assert_eq!(
        (reply.connect_status, reply.status),
        (200, 403),
        "intercepted (the CA from the flag) and refused inside: {reply:?}\n{}",
        gw.portcullis_log()
    );
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains(&format!(
            "Policy \"tunnel-only\" opens the CONNECT tunnel to localhost:{}, but the requests \
             inside an intercepted tunnel are decided on their own",
            upstream.port()
        )),
        "{message}"
    );
    let record = gw.audit_for(|r| r["path"] == "/repos" && r["decision"] == "DENIED");
    assert_eq!(
        record["transforms"][0]["annotations"]["tunnel_allowed_by"], "tunnel-only",
        "{record}"
    );
    assert_eq!(upstream.hits(), 0);

    // The file is live: naming GET next to CONNECT lets the request inside through.
    gw.write_config_in_place(&tunnel_only.replace("[CONNECT]", "[CONNECT, GET]"));
    assert!(
        crate::common::wait_until(std::time::Duration::from_secs(10), || {
            gw.via_proxy(&["--cacert", &cacert, &url]).status == 200
        }),
        "the edit did not reach the gateway: {}",
        gw.portcullis_log()
    );
    assert!(
        !gw.portcullis_log().contains("`interception` changed"),
        "the flag's interception is not a change on reload: {}",
        gw.portcullis_log()
    );
}

/// `CONNECT host:port` over HTTP/2 (cleartext, prior knowledge), as HTTP/2 clients open
/// tunnels: the status Envoy answers it with, and the bytes that came back through the
/// tunnel after sending `payload` (empty when it was refused).
fn h2_connect(gw: &Gateway, target: &str, payload: &[u8]) -> (u16, Vec<u8>) {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let proxy = format!("127.0.0.1:{}", gw.proxy_port);
    let target = target.to_owned();
    let payload = payload.to_vec();
    runtime.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(&proxy).await.unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(connection);
        let request = hyper::Request::connect(target.as_str())
            .body(http_body_util::Empty::<hyper::body::Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        if status != 200 {
            let _ = response.into_body().collect().await;
            return (status, Vec::new());
        }
        let mut tunnel = TokioIo::new(hyper::upgrade::on(response).await.unwrap());
        tunnel.write_all(&payload).await.unwrap();
        let mut back = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tunnel.read_to_end(&mut back),
        )
        .await;
        (status, back)
    })
}

/// HTTP/2 clients open tunnels with an HTTP/2 CONNECT: decided like an HTTP/1.1 one, and the
/// tunnel carries the payload to the upstream.
#[test]
fn http2_connect_is_decided_and_tunnelled() {
    let upstream = Upstream::start(None);
    let gw = Gateway::start(TUNNEL_POLICY, GatewayOptions::default());
    let target = format!("localhost:{}", upstream.port());
    let request =
        format!("GET /through/h2-tunnel HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
    let (status, back) = h2_connect(&gw, &target, request.as_bytes());
    assert_eq!(status, 200, "{}", gw.envoy_log());
    assert!(
        String::from_utf8_lossy(&back).starts_with("HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&back)
    );
    assert_eq!(upstream.seen().last().unwrap().path, "/through/h2-tunnel");
    let record = gw.audit_for(|r| r["method"] == "CONNECT" && r["decision"] == "ALLOWED");
    assert_eq!(record["host"], "localhost");

    // No policy names 127.0.0.1 for CONNECT: refused before any byte flows.
    let hits = upstream.hits();
    let (status, _) = h2_connect(&gw, &format!("127.0.0.1:{}", upstream.port()), b"");
    assert_eq!(status, 403);
    assert_eq!(upstream.hits(), hits);
}
