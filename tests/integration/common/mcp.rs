//! A real MCP server and client (the official Python SDK, `mcp` in `scripts/requirements.txt`)
//! for the MCP tests: [`McpServer`] runs `tests/mcp/server.py` on a free port and reads the
//! log of the tool calls it executed; [`run_client`] runs `tests/mcp/client.py` with a script
//! of steps, directly or through a proxy, and returns its report (see the top of
//! `tests/mcp/client.py` for its shape).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{Process, envoy_binary, free_port, repo, wait_until};

/// The virtualenv's python, with the `mcp` SDK (`scripts/bootstrap` installs it).
pub fn python() -> PathBuf {
    envoy_binary();
    repo().join(".venv/bin/python")
}

/// How the server answers.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Answer POSTs with `application/json` instead of SSE (`text/event-stream`).
    pub json: bool,
    /// No sessions (no `Mcp-Session-Id`).
    pub stateless: bool,
    /// Filler tools `extra_tool_0..N` beside the four real ones.
    pub extra_tools: usize,
}

/// `tests/mcp/server.py`, killed on drop.
pub struct McpServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    process: Process,
}

impl McpServer {
    /// Starts the server on a free port and waits until it accepts connections.
    pub fn start(options: ServerOptions) -> McpServer {
        let python = python();
        let dir = tempfile::tempdir().unwrap();
        // A port taken between our probe and the server's bind is retried.
        for _ in 0..3 {
            let port = free_port();
            let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
            let mut command = Command::new(&python);
            command
                .arg(repo().join("tests/mcp/server.py"))
                .arg(port.to_string())
                .arg(dir.path().join("calls.jsonl"))
                .args(["--extra-tools", &options.extra_tools.to_string()])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            if options.json {
                command.arg("--json");
            }
            if options.stateless {
                command.arg("--stateless");
            }
            let mut process = Process {
                child: command.spawn().expect("python starts"),
            };
            let up = wait_until(Duration::from_secs(30), || {
                process.is_running() && TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
            if up {
                return McpServer { port, dir, process };
            }
            process.stop();
        }
        panic!(
            "the MCP server did not start; log:\n{}",
            std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
        );
    }

    /// The MCP endpoint, `http://127.0.0.1:PORT/mcp`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    /// The tool calls the server executed, in order: `{"tool": NAME, "args": {...}}`.
    pub fn calls(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("calls.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("call log line ({e}): {l}")))
            .collect()
    }

    /// The names of the tools the server executed, in order.
    pub fn called_tools(&self) -> Vec<String> {
        self.calls()
            .iter()
            .map(|c| c["tool"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The server's stdout and stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }
}

/// How the client connects.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The HTTP forward proxy (`http://127.0.0.1:PORT`); None: straight to the server.
    pub proxy: Option<String>,
    /// Sent to the proxy as `Proxy-Authorization: Bearer TOKEN`.
    pub token: Option<String>,
    /// The SDK's connect mode: `legacy` (the initialize handshake), `auto` (probe
    /// `server/discover`, fall back to the handshake) or `2026-07-28` (no handshake).
    pub mode: String,
    /// Seconds each step may take (a reply that never correlates ends as a timeout).
    pub timeout_secs: f64,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            proxy: None,
            token: None,
            mode: "legacy".into(),
            timeout_secs: 10.0,
        }
    }
}

impl ClientOptions {
    /// Through the proxy at `proxy_port` on loopback.
    pub fn via_proxy(proxy_port: u16) -> ClientOptions {
        ClientOptions {
            proxy: Some(format!("http://127.0.0.1:{proxy_port}")),
            ..ClientOptions::default()
        }
    }
}

/// Runs `tests/mcp/client.py` against `url` with `script` (a JSON array of steps) and returns
/// its report. Panics when the client itself fails (not when the gateway denies).
pub fn run_client(url: &str, script: &Value, options: &ClientOptions) -> Report {
    assert!(script.is_array(), "a script is a JSON array of steps");
    let mut command = Command::new(python());
    command
        .arg(repo().join("tests/mcp/client.py"))
        .arg(url)
        .arg(script.to_string())
        .args(["--mode", &options.mode])
        .args(["--timeout", &options.timeout_secs.to_string()])
        .stdin(Stdio::null());
    if let Some(proxy) = &options.proxy {
        command.args(["--proxy", proxy]);
    }
    if let Some(token) = &options.token {
        command.args(["--token", token]);
    }
    for var in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "no_proxy",
        "NO_PROXY",
    ] {
        command.env_remove(var);
    }
    let out = command.output().expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the MCP client failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let report = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("the MCP client's report is not JSON ({e}): {stdout}\nstderr: {stderr}")
    });
    Report(report)
}

/// What `tests/mcp/client.py` printed.
#[derive(Debug, Clone)]
pub struct Report(pub Value);

impl Report {
    /// Whether the connection (handshake or discovery) succeeded.
    pub fn connected(&self) -> bool {
        self.0["connect"]["ok"] == true
    }

    /// The error that ended the connection attempt.
    pub fn connect_error(&self) -> &Value {
        &self.0["connect"]["error"]
    }

    /// The negotiated protocol version.
    pub fn protocol_version(&self) -> Option<&str> {
        self.0["connect"]["protocol_version"].as_str()
    }

    pub fn steps(&self) -> &[Value] {
        self.0["steps"].as_array().map_or(&[], Vec::as_slice)
    }

    /// Step `i`'s result; panics, showing the whole report, if there is none.
    pub fn step(&self, i: usize) -> &Value {
        self.steps()
            .get(i)
            .unwrap_or_else(|| panic!("no step {i} in {:#}", self.0))
    }

    /// The tool names a `list_tools` step got.
    pub fn tools(&self, i: usize) -> Vec<String> {
        let step = self.step(i);
        step["tools"]
            .as_array()
            .unwrap_or_else(|| panic!("step {i} listed no tools: {step:#}"))
            .iter()
            .map(|t| t.as_str().unwrap().to_owned())
            .collect()
    }

    /// The JSON-RPC error a step got (`{code, message, data, id, http_status}`), if any.
    pub fn error(&self, i: usize) -> Option<&Value> {
        self.step(i).get("error")
    }

    /// The text of a `call` step's result (its text content blocks, joined).
    pub fn text(&self, i: usize) -> String {
        let step = self.step(i);
        let content = step["result"]["content"]
            .as_array()
            .unwrap_or_else(|| panic!("step {i} has no result: {step:#}"));
        content
            .iter()
            .filter_map(|c| c["text"].as_str())
            .collect::<Vec<_>>()
            .join("")
    }

    /// The HTTP exchanges made during step `i`.
    pub fn http(&self, i: usize) -> &[Value] {
        self.step(i)["http"].as_array().map_or(&[], Vec::as_slice)
    }
}
