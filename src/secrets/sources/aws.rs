//! `type: aws_secrets_manager`, `aws_ssm`, `aws_credentials`: AWS, through the standard
//! credential chain, with an optional endpoint override.
//!
//! - **SDK config.** Built on the first read (constructors are synchronous), from
//!   `aws_config` defaults: the standard credential chain (environment, profile, web
//!   identity, container or instance role), the standard region chain, and the standard
//!   `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_<SERVICE>` variables. A source's `region` and
//!   `endpoint_url` override them (a VPC endpoint, or a local emulator in tests).
//! - **Time limits.** A backend that hangs must not hang requests: 2 s to connect, 5 s per
//!   read, one quick retry.
//! - **Errors** name what failed: the service's error code and message
//!   (`ResourceNotFoundException: Secrets Manager can't find the specified secret.`), or
//!   the endpoint that could not be reached. Never a value.
//! - **Secrets Manager** returns `SecretString`; a binary-only secret is returned base64
//!   encoded. **SSM** returns the parameter's value, decrypted unless
//!   `with_decryption: false`.
//! - **`aws_credentials`** returns the gateway's own credentials as JSON
//!   (`access_key_id`, `secret_access_key`, `session_token` when there is one), the form
//!   `aws_sigv4` signs with. Temporary credentials are re-read before they expire.

use std::error::Error;
use std::time::{Duration, SystemTime};

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use base64::Engine;
use tokio::sync::OnceCell;

use super::Fetched;
use crate::secrets::{SecretValue, SourceError};
use crate::vocab::FieldError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and as whom a source talks to AWS.
#[derive(Debug, Clone, Default)]
struct Target {
    region: Option<String>,
    endpoint_url: Option<String>,
    profile: Option<String>,
    /// Tests only: credentials instead of the standard chain.
    #[cfg(test)]
    credentials: Option<Credentials>,
}

impl Target {
    fn new(
        region: Option<&str>,
        endpoint_url: Option<&str>,
        profile: Option<&str>,
        errors: &mut Vec<FieldError>,
    ) -> Target {
        if let Some(region) = region
            && (region.is_empty()
                || !region
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
        {
            errors.push(FieldError::new(
                "region",
                format!("{region:?} is not an AWS region (e.g. us-east-1)"),
            ));
        }
        if let Some(url) = endpoint_url {
            match reqwest::Url::parse(url) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => {}
                _ => errors.push(FieldError::new(
                    "endpoint_url",
                    format!("{url:?} is not an http(s) URL (e.g. https://vpce-1.secretsmanager.us-east-1.vpce.amazonaws.com)"),
                )),
            }
        }
        if profile.is_some_and(|p| p.trim().is_empty()) {
            errors.push(FieldError::new("profile", "profile name is empty"));
        }
        Target {
            region: region.map(str::to_owned),
            endpoint_url: endpoint_url.map(str::to_owned),
            profile: profile.map(str::to_owned),
            #[cfg(test)]
            credentials: None,
        }
    }

    async fn load(&self) -> SdkConfig {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_timeout(OPERATION_TIMEOUT)
                    .build(),
            )
            // Requests wait on a read that is not cached: retry once, quickly.
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(2)
                    .with_initial_backoff(Duration::from_millis(50))
                    .with_max_backoff(Duration::from_millis(200)),
            );
        if let Some(region) = &self.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(url) = &self.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some(profile) = &self.profile {
            loader = loader.profile_name(profile);
        }
        #[cfg(test)]
        if let Some(credentials) = &self.credentials {
            loader = loader.credentials_provider(credentials.clone());
        }
        loader.load().await
    }

    fn endpoint(&self) -> &str {
        self.endpoint_url.as_deref().unwrap_or("the AWS endpoint")
    }

    /// What went wrong, from names, statuses and error codes only.
    fn describe<E: ProvideErrorMetadata + Error + 'static>(
        &self,
        error: &SdkError<E, HttpResponse>,
    ) -> String {
        match error {
            SdkError::ServiceError(ctx) => {
                let status = ctx.raw().status().as_u16();
                let code = ctx.err().code().unwrap_or("error");
                match ctx.err().message() {
                    Some(message) => format!("{code}: {message} (HTTP {status})"),
                    None => format!("{code} (HTTP {status})"),
                }
            }
            SdkError::DispatchFailure(failure) if failure.is_timeout() => {
                format!("cannot reach {}: timed out", self.endpoint())
            }
            SdkError::DispatchFailure(failure) => match failure.as_connector_error() {
                Some(e) => format!("cannot reach {}: {}", self.endpoint(), root_cause(e)),
                None => format!("cannot reach {}", self.endpoint()),
            },
            SdkError::TimeoutError(_) => format!(
                "no answer from {} within {}s",
                self.endpoint(),
                OPERATION_TIMEOUT.as_secs()
            ),
            // The raw response is not quoted: it is the backend's, and could hold anything.
            SdkError::ResponseError(ctx) => format!(
                "unreadable response from {} (HTTP {})",
                self.endpoint(),
                ctx.raw().status().as_u16()
            ),
            // Missing region or credentials, before anything was sent.
            SdkError::ConstructionFailure(_) => match error.source() {
                Some(source) => format!("cannot build the request: {}", chain(source)),
                None => "cannot build the request".to_owned(),
            },
            _ => format!("request failed: {}", chain(error)),
        }
    }
}

/// Every message in an error's chain, joined.
fn chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        let message = e.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        next = e.source();
    }
    text
}

/// The innermost error: "Connection refused (os error 111)".
fn root_cause(error: &dyn Error) -> String {
    let mut last = error;
    while let Some(e) = last.source() {
        last = e;
    }
    last.to_string()
}

fn identifier(field: &str, value: &str, what: &str, errors: &mut Vec<FieldError>) {
    if value.trim().is_empty() {
        errors.push(FieldError::new(field, format!("{what} is empty")));
    } else if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        errors.push(FieldError::new(
            field,
            format!("{value:?} is not a valid {what}: it contains whitespace"),
        ));
    }
}

/// `GetSecretValue`.
pub struct SecretsManagerSource {
    secret_id: String,
    version_stage: Option<String>,
    target: Target,
    client: OnceCell<aws_sdk_secretsmanager::Client>,
}

impl SecretsManagerSource {
    pub fn new(
        secret_id: &str,
        version_stage: Option<&str>,
        region: Option<&str>,
        endpoint_url: Option<&str>,
    ) -> Result<SecretsManagerSource, Vec<FieldError>> {
        let mut errors = Vec::new();
        identifier("secret_id", secret_id, "secret name or ARN", &mut errors);
        if let Some(stage) = version_stage {
            identifier("version_stage", stage, "version stage", &mut errors);
        }
        let target = Target::new(region, endpoint_url, None, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(SecretsManagerSource {
            secret_id: secret_id.to_owned(),
            version_stage: version_stage.map(str::to_owned),
            target,
            client: OnceCell::new(),
        })
    }

    pub async fn fetch(&self) -> Result<Fetched, SourceError> {
        let client = self
            .client
            .get_or_init(|| async {
                aws_sdk_secretsmanager::Client::new(&self.target.load().await)
            })
            .await;
        let output = client
            .get_secret_value()
            .secret_id(&self.secret_id)
            .set_version_stage(self.version_stage.clone())
            .send()
            .await
            .map_err(|e| SourceError::new(self.target.describe(&e)))?;
        // Taken out of the response, not copied.
        if let Some(text) = output.secret_string {
            return Ok(Fetched::value(SecretValue::new(text)));
        }
        match output.secret_binary {
            Some(blob) => {
                let bytes = secrecy::SecretBox::new(Box::new(blob.into_inner()));
                Ok(Fetched::value(SecretValue::new(
                    base64::engine::general_purpose::STANDARD
                        .encode(secrecy::ExposeSecret::expose_secret(&bytes)),
                )))
            }
            None => Err(SourceError::new(
                "the secret version has neither SecretString nor SecretBinary",
            )),
        }
    }
}

/// `GetParameter`.
pub struct SsmSource {
    parameter: String,
    with_decryption: bool,
    target: Target,
    client: OnceCell<aws_sdk_ssm::Client>,
}

impl SsmSource {
    pub fn new(
        parameter: &str,
        with_decryption: bool,
        region: Option<&str>,
        endpoint_url: Option<&str>,
    ) -> Result<SsmSource, Vec<FieldError>> {
        let mut errors = Vec::new();
        identifier("parameter", parameter, "parameter name or ARN", &mut errors);
        let target = Target::new(region, endpoint_url, None, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(SsmSource {
            parameter: parameter.to_owned(),
            with_decryption,
            target,
            client: OnceCell::new(),
        })
    }

    pub async fn fetch(&self) -> Result<Fetched, SourceError> {
        let client = self
            .client
            .get_or_init(|| async { aws_sdk_ssm::Client::new(&self.target.load().await) })
            .await;
        let output = client
            .get_parameter()
            .name(&self.parameter)
            .with_decryption(self.with_decryption)
            .send()
            .await
            .map_err(|e| SourceError::new(self.target.describe(&e)))?;
        match output.parameter.and_then(|p| p.value) {
            Some(value) => Ok(Fetched::value(SecretValue::new(value))),
            None => Err(SourceError::new("the response holds no parameter value")),
        }
    }
}

/// The gateway's own credentials, from the standard chain.
pub struct CredentialsSource {
    target: Target,
    /// The chain, resolved on first use (`None`: the SDK config has no provider).
    provider: OnceCell<Option<SharedCredentialsProvider>>,
}

impl CredentialsSource {
    pub fn new(
        profile: Option<&str>,
        region: Option<&str>,
    ) -> Result<CredentialsSource, Vec<FieldError>> {
        let mut errors = Vec::new();
        let target = Target::new(region, None, profile, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(CredentialsSource {
            target,
            provider: OnceCell::new(),
        })
    }

    pub async fn fetch(&self) -> Result<Fetched, SourceError> {
        let provider = self
            .provider
            .get_or_init(|| async { self.target.load().await.credentials_provider() })
            .await
            .as_ref()
            .ok_or_else(|| SourceError::new("no credential provider is configured"))?;
        let credentials = provider
            .provide_credentials()
            .await
            .map_err(|e| SourceError::new(format!("no credentials: {}", chain(&e))))?;
        Ok(credentials_json(&credentials, SystemTime::now()))
    }
}

/// The JSON form `aws_sigv4` reads, and how long the credentials stay valid.
fn credentials_json(credentials: &Credentials, now: SystemTime) -> Fetched {
    let mut json = serde_json::json!({
        "access_key_id": credentials.access_key_id(),
        "secret_access_key": credentials.secret_access_key(),
    });
    if let Some(token) = credentials.session_token() {
        json["session_token"] = serde_json::Value::String(token.to_owned());
    }
    let value = SecretValue::new(json.to_string());
    drop(json);
    Fetched {
        value,
        expires_in: credentials
            .expiry()
            .map(|at| at.duration_since(now).unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A one-answer-fits-all HTTP endpoint standing in for AWS; records request heads.
    async fn fake_aws(status: u16, body: &'static str) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let record = record.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // Read the head, then the declared body.
                    loop {
                        let n = stream.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let length = text[..end]
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            if buf.len() >= end + 4 + length {
                                record.lock().unwrap().push(text);
                                break;
                            }
                        }
                    }
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/x-amz-json-1.1\r\n\
                         content-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                });
            }
        });
        (url, seen)
    }

    fn with_test_credentials(target: &mut Target) {
        target.credentials = Some(Credentials::new(
            "AKIDTEST",
            "test-secret",
            None,
            None,
            "test",
        ));
    }

    #[test]
    fn config_mistakes_are_named_relative_to_the_source() {
        let errors = SecretsManagerSource::new(" ", Some(""), Some("US East"), Some("nope"))
            .err()
            .unwrap();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["secret_id", "version_stage", "region", "endpoint_url"]
        );
        let errors = SsmSource::new("", true, None, Some("ftp://x"))
            .err()
            .unwrap();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["parameter", "endpoint_url"]);
        assert!(
            SsmSource::new("/app/name with space", true, None, None)
                .err()
                .unwrap()[0]
                .message
                .contains("whitespace")
        );
        let errors = CredentialsSource::new(Some(""), Some("eu-west-1"))
            .err()
            .unwrap();
        assert_eq!(errors[0].path, "profile");
        assert!(
            SecretsManagerSource::new(
                "arn:aws:secretsmanager:us-east-1:1:secret:a/b-x",
                None,
                Some("us-east-1"),
                Some("http://127.0.0.1:5000")
            )
            .is_ok()
        );
        assert!(CredentialsSource::new(None, None).is_ok());
    }

    #[tokio::test]
    async fn secrets_manager_reads_the_string_or_the_binary() {
        let (url, seen) = fake_aws(200, r#"{"Name":"app/token","SecretString":"s3cr3t-v1"}"#).await;
        let mut source = SecretsManagerSource::new(
            "app/token",
            Some("AWSCURRENT"),
            Some("us-east-1"),
            Some(&url),
        )
        .unwrap();
        with_test_credentials(&mut source.target);
        let fetched = source.fetch().await.unwrap();
        assert_eq!(fetched.value.expose(), "s3cr3t-v1");
        assert!(fetched.expires_in.is_none());
        let request = seen.lock().unwrap()[0].clone();
        assert!(
            request.contains("secretsmanager.GetSecretValue"),
            "{request}"
        );
        assert!(request.contains(r#""SecretId":"app/token""#), "{request}");
        assert!(
            request.contains(r#""VersionStage":"AWSCURRENT""#),
            "{request}"
        );
        assert!(
            request.contains("Credential=AKIDTEST/"),
            "signed: {request}"
        );

        // "AAEC/w==" is the bytes 0, 1, 2, 255: handed on base64-encoded.
        let (url, _) = fake_aws(200, r#"{"Name":"b","SecretBinary":"AAEC/w=="}"#).await;
        let mut source =
            SecretsManagerSource::new("b", None, Some("us-east-1"), Some(&url)).unwrap();
        with_test_credentials(&mut source.target);
        assert_eq!(source.fetch().await.unwrap().value.expose(), "AAEC/w==");

        let (url, _) = fake_aws(200, r#"{"Name":"c"}"#).await;
        let mut source =
            SecretsManagerSource::new("c", None, Some("us-east-1"), Some(&url)).unwrap();
        with_test_credentials(&mut source.target);
        let error = source.fetch().await.unwrap_err();
        assert!(
            error.0.contains("neither SecretString nor SecretBinary"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn errors_carry_the_service_code_or_the_endpoint() {
        let (url, _) = fake_aws(
            400,
            r#"{"__type":"ResourceNotFoundException","message":"Secrets Manager can't find the specified secret."}"#,
        )
        .await;
        let mut source =
            SecretsManagerSource::new("missing", None, Some("us-east-1"), Some(&url)).unwrap();
        with_test_credentials(&mut source.target);
        let error = source.fetch().await.unwrap_err();
        assert_eq!(
            error.0,
            "ResourceNotFoundException: Secrets Manager can't find the specified secret. (HTTP 400)"
        );

        let (url, _) = fake_aws(
            400,
            r#"{"__type":"ParameterNotFound","message":"Parameter /x not found."}"#,
        )
        .await;
        let mut source = SsmSource::new("/x", true, Some("us-east-1"), Some(&url)).unwrap();
        with_test_credentials(&mut source.target);
        let error = source.fetch().await.unwrap_err();
        assert!(
            error
                .0
                .starts_with("ParameterNotFound: Parameter /x not found."),
            "{error}"
        );

        // Nothing listens there.
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", listener.local_addr().unwrap())
        };
        let mut source = SsmSource::new("/x", true, Some("us-east-1"), Some(&closed)).unwrap();
        with_test_credentials(&mut source.target);
        let error = source.fetch().await.unwrap_err();
        assert!(
            error.0.starts_with(&format!("cannot reach {closed}: ")),
            "{error}"
        );
    }

    #[tokio::test]
    async fn ssm_reads_the_decrypted_value() {
        let (url, seen) = fake_aws(
            200,
            r#"{"Parameter":{"Name":"/app/key","Type":"SecureString","Value":"s3cr3t-ssm","Version":3}}"#,
        )
        .await;
        let mut source = SsmSource::new("/app/key", true, Some("us-east-1"), Some(&url)).unwrap();
        with_test_credentials(&mut source.target);
        assert_eq!(source.fetch().await.unwrap().value.expose(), "s3cr3t-ssm");
        let request = seen.lock().unwrap()[0].clone();
        assert!(request.contains("AmazonSSM.GetParameter"), "{request}");
        assert!(request.contains(r#""WithDecryption":true"#), "{request}");
    }

    #[test]
    fn credentials_become_json_with_their_lifetime() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let permanent = Credentials::new("AKID1", "secret/1+x", None, None, "test");
        let fetched = credentials_json(&permanent, now);
        let json: serde_json::Value = serde_json::from_str(fetched.value.expose()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"access_key_id": "AKID1", "secret_access_key": "secret/1+x"})
        );
        assert_eq!(fetched.expires_in, None);
        let temporary = Credentials::new(
            "ASIA1",
            "secret-2",
            Some("token\"3".into()),
            Some(now + Duration::from_secs(900)),
            "test",
        );
        let fetched = credentials_json(&temporary, now);
        let json: serde_json::Value = serde_json::from_str(fetched.value.expose()).unwrap();
        assert_eq!(json["session_token"], "token\"3");
        assert_eq!(fetched.expires_in, Some(Duration::from_secs(900)));
        let expired = Credentials::new("A", "s", None, Some(now - Duration::from_secs(1)), "t");
        assert_eq!(
            credentials_json(&expired, now).expires_in,
            Some(Duration::ZERO)
        );
    }

    #[tokio::test]
    async fn credentials_source_reads_the_chain() {
        let mut source = CredentialsSource::new(None, Some("us-east-1")).unwrap();
        source.target.credentials = Some(Credentials::new(
            "AKIDCHAIN",
            "chain-secret",
            Some("tok".into()),
            None,
            "t",
        ));
        let fetched = source.fetch().await.unwrap();
        let json: serde_json::Value = serde_json::from_str(fetched.value.expose()).unwrap();
        assert_eq!(json["access_key_id"], "AKIDCHAIN");
        assert_eq!(json["session_token"], "tok");
    }
}
