//! A local AWS (moto, from `scripts/requirements.txt`) for the AWS source and SigV4 tests:
//! `moto_server` on a free port, killed on drop; secrets and parameters are written with
//! the Rust SDK, and botocore (in the same virtualenv) signs and checks signatures
//! independently of Portcullis.

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_credential_types::Credentials;

use super::{Process, envoy_binary, free_port, repo, wait_until};

/// The credentials and region moto accepts (while its signature checks are off).
pub const KEY_ID: &str = "testing";
pub const SECRET_KEY: &str = "testing";
pub const REGION: &str = "us-east-1";

/// A running moto server.
pub struct Moto {
    pub port: u16,
    process: Process,
    runtime: tokio::runtime::Runtime,
    secrets: aws_sdk_secretsmanager::Client,
    ssm: aws_sdk_ssm::Client,
    _dir: tempfile::TempDir,
}

/// The virtualenv's python, with botocore and boto3 (installed with moto).
pub fn python() -> PathBuf {
    // The bootstrap that installs Envoy installs moto too.
    envoy_binary();
    repo().join(".venv/bin/python")
}

impl Moto {
    /// Starts moto on a free port and waits until it answers. The port we probed free may
    /// be taken before moto binds it (tests run in parallel): then moto exits saying so,
    /// and starts again on a fresh port, up to three times.
    pub fn start() -> Moto {
        envoy_binary();
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("moto.log");
        let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        let mut started = None;
        for attempt in 0..3 {
            let log = std::fs::File::create(&log_path).unwrap();
            let port = free_port();
            let child = Command::new(repo().join(".venv/bin/moto_server"))
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("moto_server starts (scripts/bootstrap installs it)");
            let mut process = Process { child };
            // Listening, and it is moto that listens there (its own banner names the port):
            // another process that took the port would answer the connect too.
            let banner = format!("Running on http://127.0.0.1:{port}");
            let up = wait_until(Duration::from_secs(30), || {
                process.is_running()
                    && read_log().contains(&banner)
                    && TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
            if up {
                started = Some((port, process));
                break;
            }
            let text = read_log();
            let taken = !process.is_running()
                && (text.contains("Address already in use") || text.contains("is in use"));
            assert!(taken && attempt < 2, "moto did not start: {text}");
            eprintln!("moto: port {port} was taken before it could bind it; retrying on another");
            process.stop();
        }
        let (port, process) = started.expect("moto started");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let config = runtime.block_on(
            aws_config::defaults(BehaviorVersion::latest())
                .region(Region::new(REGION))
                .endpoint_url(&url)
                .credentials_provider(Credentials::new(KEY_ID, SECRET_KEY, None, None, "moto"))
                .load(),
        );
        Moto {
            port,
            process,
            secrets: aws_sdk_secretsmanager::Client::new(&config),
            ssm: aws_sdk_ssm::Client::new(&config),
            runtime,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment Portcullis needs to call moto.
    pub fn gateway_env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_REGION", REGION),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
    }

    pub fn create_secret(&self, name: &str, value: &str) {
        self.runtime
            .block_on(
                self.secrets
                    .create_secret()
                    .name(name)
                    .secret_string(value)
                    .send(),
            )
            .unwrap_or_else(|e| panic!("create secret {name}: {e:?}"));
    }

    /// A new version of the secret (becomes AWSCURRENT).
    pub fn put_secret_value(&self, name: &str, value: &str) {
        self.runtime
            .block_on(
                self.secrets
                    .put_secret_value()
                    .secret_id(name)
                    .secret_string(value)
                    .send(),
            )
            .unwrap_or_else(|e| panic!("put secret value {name}: {e:?}"));
    }

    /// A parameter; `secure` makes it a SecureString.
    pub fn put_parameter(&self, name: &str, value: &str, secure: bool) {
        let kind = if secure {
            aws_sdk_ssm::types::ParameterType::SecureString
        } else {
            aws_sdk_ssm::types::ParameterType::String
        };
        self.runtime
            .block_on(
                self.ssm
                    .put_parameter()
                    .name(name)
                    .value(value)
                    .r#type(kind)
                    .overwrite(true)
                    .send(),
            )
            .unwrap_or_else(|e| panic!("put parameter {name}: {e:?}"));
    }

    /// Creates an IAM user allowed everything and returns its access key (id, secret).
    /// Call before [`Moto::check_signatures`].
    pub fn iam_user(&self, name: &str) -> (String, String) {
        let out = run_python(
            r#"
import json, sys, boto3
a = json.load(sys.stdin)
iam = boto3.client("iam", endpoint_url=a["url"], region_name="us-east-1",
                   aws_access_key_id="testing", aws_secret_access_key="testing")
iam.create_user(UserName=a["name"])
iam.put_user_policy(UserName=a["name"], PolicyName="all", PolicyDocument=json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
key = iam.create_access_key(UserName=a["name"])["AccessKey"]
print(json.dumps({"id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}))
"#,
            &serde_json::json!({"url": self.url(), "name": name}),
        );
        (
            out["id"].as_str().unwrap().to_owned(),
            out["secret"].as_str().unwrap().to_owned(),
        )
    }

    /// From now on moto authenticates every request: the signature must verify against an
    /// IAM access key it knows (`/moto-api/reset-auth`, the server-mode form of
    /// `INITIAL_NO_AUTH_ACTION_COUNT`).
    pub fn check_signatures(&self) {
        let out = Command::new("curl")
            // Not a form: moto reads the raw body.
            .args(["-sS", "--noproxy", "*", "-H", "Content-Type: text/plain"])
            .args(["--data-binary", "0"])
            .arg(format!("{}/moto-api/reset-auth", self.url()))
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(body.contains("\"ok\""), "reset-auth: {body}");
    }

    /// Stops moto (an outage).
    pub fn stop(&mut self) {
        self.process.stop();
    }
}

/// Runs a python snippet in the virtualenv with `input` as JSON on stdin; parses stdout.
pub fn run_python(script: &str, input: &serde_json::Value) -> serde_json::Value {
    let mut child = Command::new(python())
        .args(["-c", script])
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("AWS_PROFILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "python printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// botocore's SigV4 (`botocore.auth.SigV4Auth`), independent of Portcullis.
const BOTOCORE_SIGV4: &str = r#"
import json, sys
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
a = json.load(sys.stdin)
creds = Credentials(a["access_key"], a["secret_key"], a.get("token"))
req = AWSRequest(method=a["method"], url=a["url"], data=bytes.fromhex(a["body_hex"]),
                 headers=a["headers"])
auth = SigV4Auth(creds, a["service"], a["region"])
if a["mode"] == "sign":
    auth.add_auth(req)
    print(json.dumps(dict(req.headers.items())))
else:
    req.context["timestamp"] = a["timestamp"]
    canonical = auth.canonical_request(req)
    print(json.dumps({"signature": auth.signature(auth.string_to_sign(req, canonical), req),
                      "canonical_request": canonical}))
"#;

/// What a workload's AWS SDK would send: the headers botocore adds to sign the request
/// with `credentials` (placeholder keys, in the tests).
pub struct SigV4Request<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
    pub service: &'a str,
    pub region: &'a str,
}

impl SigV4Request<'_> {
    fn input(&self, mode: &str, key: &str, secret: &str, token: Option<&str>) -> serde_json::Value {
        let headers: serde_json::Map<String, serde_json::Value> = self
            .headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), serde_json::Value::String((*v).to_owned())))
            .collect();
        serde_json::json!({
            "mode": mode, "method": self.method, "url": self.url, "headers": headers,
            "body_hex": self.body.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "service": self.service, "region": self.region,
            "access_key": key, "secret_key": secret, "token": token,
        })
    }

    /// The headers botocore sends, `authorization` and `x-amz-date` included.
    pub fn signed_by_botocore(
        &self,
        key: &str,
        secret: &str,
        token: Option<&str>,
    ) -> Vec<(String, String)> {
        let out = run_python(BOTOCORE_SIGV4, &self.input("sign", key, secret, token));
        out.as_object()
            .unwrap()
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.as_str().unwrap().to_owned()))
            .collect()
    }

    /// curl arguments that send this request with `signed` headers (from
    /// [`SigV4Request::signed_by_botocore`]).
    pub fn curl_args(&self, signed: &[(String, String)]) -> Vec<String> {
        let mut args: Vec<String> = Vec::new();
        for (name, value) in signed {
            args.extend(["-H".into(), format!("{name}: {value}")]);
        }
        args.extend(["-X".into(), self.method.into()]);
        if !self.body.is_empty() {
            let body = std::str::from_utf8(self.body).expect("a text body");
            args.extend(["--data-binary".into(), body.into()]);
        }
        args.push(self.url.into());
        args
    }

    /// The signature botocore computes for this request (the headers given are the signed
    /// ones, as received), at `timestamp` (`x-amz-date`); with the canonical request.
    pub fn botocore_signature(&self, key: &str, secret: &str, timestamp: &str) -> (String, String) {
        let mut input = self.input("verify", key, secret, None);
        input["timestamp"] = serde_json::Value::String(timestamp.to_owned());
        let out = run_python(BOTOCORE_SIGV4, &input);
        (
            out["signature"].as_str().unwrap().to_owned(),
            out["canonical_request"].as_str().unwrap().to_owned(),
        )
    }
}
