//! `style: aws_sigv4`: AWS Signature Version 4 with the credentials from the secret's
//! source, for the configured service and region.
//!
//! - **The value** is JSON: `access_key_id`, `secret_access_key` and optionally
//!   `session_token` (what source `aws_credentials` produces); the AWS spellings
//!   `AccessKeyId`, `SecretAccessKey`, `SessionToken` work too. Anything else is refused
//!   (`credential_unavailable`), with a message that names fields, never values.
//! - **Re-signing.** A workload that signed with placeholder keys
//!   (`Authorization: AWS4-HMAC-SHA256 Credential=AKID/date/REGION/SERVICE/aws4_request, …`)
//!   must have signed for the configured region and service, or the request is refused
//!   (403 `signing_scope_mismatch`: "signed for s3 in eu-west-1; this credential signs sts
//!   in us-east-1"). Its `authorization`, `x-amz-date` and `x-amz-security-token` are
//!   replaced. Unsigned requests, and requests with any other `Authorization`, are signed.
//! - **Payload hash.** The workload's `x-amz-content-sha256` when it sent one (a digest or
//!   `UNSIGNED-PAYLOAD`), else the SHA-256 of the body (buffered for such requests; see
//!   [`needs_body`]), sent in `x-amz-content-sha256`. Chunk-signed uploads
//!   (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD`) carry signatures chained to the workload's
//!   and are refused.
//! - **Signed headers**: only what nothing downstream changes: `host` (the request's
//!   authority), `content-type`, `content-md5` and every `x-amz-*` header the upstream will
//!   receive. A `header_allowlist` after `secrets` must keep them.
//! - **URL**: the request's scheme, authority, and path and query as they will leave.
//!   For S3 (`s3`, `s3-object-lambda`, `s3-outposts`) the path is neither normalized nor
//!   re-encoded, as S3 expects; other services get the standard double encoding.
//! - **Written**: `authorization`, `x-amz-date`, `x-amz-security-token` (when the
//!   credentials have a session token; the workload's is removed otherwise) and
//!   `x-amz-content-sha256` (when the workload sent none).
//! - Presigned URLs (`X-Amz-Signature` in the query) are not re-signed (a header signature
//!   would be added beside theirs); keep them out of the secret's rules.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;

use super::inject::{Refusal, raw_path};
use crate::request::OutboundRequest;
use crate::secrets::SecretValue;
use crate::transforms::Mutations;

/// Whether this build can sign. Until it can, configs using `aws_sigv4` are refused at load.
pub const AVAILABLE: bool = true;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// The headers a signature consists of; the workload's are replaced.
const SIGNATURE_HEADERS: [&str; 3] = ["authorization", "x-amz-date", "x-amz-security-token"];

/// Signs for one service in one region.
pub struct Signer<'a> {
    pub service: &'a str,
    pub region: &'a str,
}

/// Whether signing this request needs its body: it has one, and the workload did not
/// declare the payload hash in `x-amz-content-sha256`.
pub fn needs_body(request: &OutboundRequest) -> bool {
    let declared = request.header("x-amz-content-sha256").is_some();
    has_body(request) && !declared
}

fn has_body(request: &OutboundRequest) -> bool {
    request
        .header("content-length")
        .is_some_and(|len| len != b"0")
        || request.header("transfer-encoding").is_some()
}

impl Signer<'_> {
    /// Signs `request` (re-signing it when the workload signed with placeholder keys),
    /// writing the headers into `mutations`; returns the locations written.
    pub fn sign(
        &self,
        request: &OutboundRequest,
        body: Option<&[u8]>,
        credentials: &SecretValue,
        now: SystemTime,
        mutations: &mut Mutations,
    ) -> Result<Vec<String>, Refusal> {
        self.check_scope(request)?;
        let credentials = parse_credentials(credentials)?;

        // What the upstream will receive, minus the workload's signature.
        let headers: Vec<(String, String)> = outgoing_headers(request, mutations)
            .into_iter()
            .filter(|(name, _)| !SIGNATURE_HEADERS.contains(&name.as_str()))
            .filter(|(name, _)| {
                name == "content-type" || name == "content-md5" || name.starts_with("x-amz-")
            })
            .map(|(name, value)| match String::from_utf8(value) {
                Ok(text) => Ok((name, text)),
                Err(_) => Err(Refusal::UnusableValue(format!(
                    "header {name} is not UTF-8 and cannot be signed"
                ))),
            })
            .collect::<Result<_, _>>()?;
        let declared = headers
            .iter()
            .find(|(name, _)| name == "x-amz-content-sha256")
            .map(|(_, value)| value.trim().to_owned());

        let swapped_body = mutations.body.as_ref().map(|b| b.expose().to_vec());
        let body = match (&declared, swapped_body.as_deref().or(body)) {
            (Some(hash), _) if hash == "UNSIGNED-PAYLOAD" => SignableBody::UnsignedPayload,
            (Some(hash), _) if hash.starts_with("STREAMING-") => {
                return Err(Refusal::ScopeMismatch(format!(
                    "chunk-signed uploads ({hash}) cannot be re-signed; send UNSIGNED-PAYLOAD \
                     or the body's SHA-256 in x-amz-content-sha256"
                )));
            }
            (Some(hash), _) => SignableBody::Precomputed(hash.clone()),
            (None, Some(bytes)) => SignableBody::Bytes(bytes),
            (None, None) if has_body(request) => {
                return Err(Refusal::UnusableValue(
                    "the request body was not buffered, so it cannot be signed".into(),
                ));
            }
            (None, None) => SignableBody::Bytes(&[]),
        };

        let mut settings = SigningSettings::default();
        settings.payload_checksum_kind = if declared.is_some() {
            PayloadChecksumKind::NoHeader
        } else {
            PayloadChecksumKind::XAmzSha256
        };
        if matches!(self.service, "s3" | "s3-object-lambda" | "s3-outposts") {
            settings.percent_encoding_mode = PercentEncodingMode::Single;
            settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        }

        let url = format!(
            "{}://{}{}",
            request.scheme,
            request.authority,
            mutations.path_or(raw_path(request))
        );
        let signable = SignableRequest::new(
            &request.method_name,
            url,
            std::iter::once(("host", request.authority.as_str()))
                .chain(headers.iter().map(|(n, v)| (n.as_str(), v.as_str()))),
            body,
        )
        .map_err(|_| Refusal::UnusableValue("the request URL cannot be signed".into()))?;
        let has_token = credentials.session_token().is_some();
        let identity = credentials.into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(self.region)
            .name(self.service)
            .time(now)
            .settings(settings)
            .build()
            .map_err(|_| Refusal::UnusableValue("the signing parameters are incomplete".into()))?
            .into();
        // The library's errors describe the request, not the keys; they are not passed on.
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|_| {
                Refusal::UnusableValue(
                    "the request cannot be signed (a header or the URL is not signable)".into(),
                )
            })?
            .into_parts();

        for name in SIGNATURE_HEADERS {
            if request.header(name).is_some() {
                mutations.remove(name);
            }
        }
        let (written, _) = instructions.into_parts();
        for header in &written {
            mutations.set(header.name(), SecretValue::new(header.value()));
        }
        let mut locations = vec![
            "header:authorization".to_owned(),
            "header:x-amz-date".to_owned(),
        ];
        if declared.is_none() {
            locations.push("header:x-amz-content-sha256".into());
        }
        if has_token {
            locations.push("header:x-amz-security-token".into());
        }
        Ok(locations)
    }

    /// A workload's own SigV4 signature must be for this service and region.
    fn check_scope(&self, request: &OutboundRequest) -> Result<(), Refusal> {
        let Some(authorization) = request.header("authorization") else {
            return Ok(());
        };
        let text = String::from_utf8_lossy(authorization);
        let Some(rest) = text.trim_start().strip_prefix(ALGORITHM) else {
            // Not a SigV4 signature (a bearer token, say): replaced like one.
            return Ok(());
        };
        let unreadable = || {
            Refusal::ScopeMismatch(
                "the request's AWS4-HMAC-SHA256 signature has no readable credential scope".into(),
            )
        };
        let credential = rest
            .split([',', ' '])
            .find_map(|part| part.trim().strip_prefix("Credential="))
            .ok_or_else(unreadable)?;
        // AKID/date/region/service/aws4_request; only the last four parts are read.
        let parts: Vec<&str> = credential.rsplitn(5, '/').collect();
        let [terminator, service, region, _date, _key] = parts[..] else {
            return Err(unreadable());
        };
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if terminator != "aws4_request" || !name_ok(service) || !name_ok(region) {
            return Err(unreadable());
        }
        if service != self.service || region != self.region {
            return Err(Refusal::ScopeMismatch(format!(
                "signed for {service} in {region}; this credential signs {} in {}",
                self.service, self.region
            )));
        }
        Ok(())
    }

    /// What `sign` would write, with a marker instead of a signature.
    pub fn preview(&self, marker: &str, mutations: &mut Mutations) -> Vec<String> {
        mutations.set(
            "authorization",
            SecretValue::new(format!(
                "AWS4-HMAC-SHA256 Credential={marker}/<date>/{}/{}/aws4_request, \
                 SignedHeaders=<...>, Signature=<...>",
                self.region, self.service
            )),
        );
        mutations.set("x-amz-date", SecretValue::new("<date>"));
        vec!["header:authorization".into(), "header:x-amz-date".into()]
    }
}

/// The request's headers as the upstream will receive them: Envoy's pseudo-headers
/// dropped, earlier mutations applied.
fn outgoing_headers(request: &OutboundRequest, mutations: &Mutations) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::with_capacity(request.headers.len());
    for (name, value) in &request.headers {
        if name.starts_with(':') || mutations.remove.contains(name) {
            continue;
        }
        match mutations.set.iter().find(|(n, _)| n == name) {
            // A set header replaces every value the workload sent.
            Some((_, set)) => {
                if !out.iter().any(|(n, _)| n == name) {
                    out.push((name.clone(), set.expose().as_bytes().to_vec()));
                }
            }
            None => out.push((name.clone(), value.clone())),
        }
    }
    for (name, value) in &mutations.set {
        if !out.iter().any(|(n, _)| n == name) {
            out.push((name.clone(), value.expose().as_bytes().to_vec()));
        }
    }
    out
}

/// Reads the credential JSON. Errors name fields, never values.
fn parse_credentials(value: &SecretValue) -> Result<Credentials, Refusal> {
    const SHAPE: &str = "aws_sigv4 needs a JSON object with access_key_id, secret_access_key \
                         and optionally session_token";
    let parsed: serde_json::Value = serde_json::from_str(value.expose())
        .map_err(|_| Refusal::UnusableValue(format!("the value is not JSON; {SHAPE}")))?;
    let object = parsed.as_object().ok_or_else(|| {
        Refusal::UnusableValue(format!("the value is not a JSON object; {SHAPE}"))
    })?;
    let field = |names: [&str; 2]| -> Result<Option<&str>, Refusal> {
        for name in names {
            match object.get(name) {
                Some(serde_json::Value::String(s)) if !s.is_empty() => return Ok(Some(s)),
                Some(serde_json::Value::String(_) | serde_json::Value::Null) | None => {}
                Some(_) => {
                    return Err(Refusal::UnusableValue(format!(
                        "field {name} is not a string; {SHAPE}"
                    )));
                }
            }
        }
        Ok(None)
    };
    let missing = |name: &str| Refusal::UnusableValue(format!("field {name} is missing; {SHAPE}"));
    let access_key_id =
        field(["access_key_id", "AccessKeyId"])?.ok_or_else(|| missing("access_key_id"))?;
    let secret_access_key = field(["secret_access_key", "SecretAccessKey"])?
        .ok_or_else(|| missing("secret_access_key"))?;
    let session_token = field(["session_token", "SessionToken"])?;
    // The key id and the token travel in headers.
    if !access_key_id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(Refusal::UnusableValue(
            "field access_key_id holds characters an access key id cannot have".into(),
        ));
    }
    if session_token.is_some_and(|t| t.bytes().any(|b| b < 0x20 || b == 0x7f)) {
        return Err(Refusal::UnusableValue(
            "field session_token holds control characters".into(),
        ));
    }
    Ok(Credentials::new(
        access_key_id,
        secret_access_key,
        session_token.map(str::to_owned),
        None,
        "portcullis-secret",
    ))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use sha2::{Digest, Sha256};

    use super::*;
    use crate::transforms::secrets::inject::hex;
    use crate::transforms::test_support::request;

    fn set(m: &Mutations, name: &str) -> Option<String> {
        m.set
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.expose().to_owned())
    }

    fn signature(m: &Mutations) -> String {
        let auth = set(m, "authorization").expect("signed");
        auth.rsplit("Signature=").next().unwrap().to_owned()
    }

    /// 2013-05-24T00:00:00Z, the date of the S3 documentation examples.
    fn s3_example_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_369_353_600)
    }

    /// 2015-08-30T12:36:00Z, the date of the AWS SigV4 test suite.
    fn suite_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_440_938_160)
    }

    const S3_KEYS: &str = r#"{"access_key_id":"AKIAIOSFODNN7EXAMPLE","secret_access_key":"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}"#;

    #[test]
    fn published_s3_examples() {
        // "Signature Calculations for the Authorization Header" in the S3 API reference:
        // GET Bucket lifecycle and GET Bucket (list objects), empty payload.
        let signer = Signer {
            service: "s3",
            region: "us-east-1",
        };
        let keys = SecretValue::new(S3_KEYS);
        for (path, expected) in [
            (
                "/?lifecycle",
                "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543",
            ),
            (
                "/?max-keys=2&prefix=J",
                "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
            ),
        ] {
            let req = request(
                &format!("GET https://examplebucket.s3.amazonaws.com{path}"),
                &[],
            );
            let mut m = Mutations::default();
            let locations = signer
                .sign(&req, Some(&[]), &keys, s3_example_time(), &mut m)
                .unwrap();
            assert_eq!(
                set(&m, "authorization").unwrap(),
                format!(
                    "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
                     SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={expected}"
                )
            );
            assert_eq!(set(&m, "x-amz-date").as_deref(), Some("20130524T000000Z"));
            assert_eq!(
                set(&m, "x-amz-content-sha256").as_deref(),
                Some("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
            );
            assert_eq!(
                locations,
                [
                    "header:authorization",
                    "header:x-amz-date",
                    "header:x-amz-content-sha256"
                ]
            );
        }
    }

    #[test]
    fn resigns_a_workload_signature_as_botocore_would() {
        // Expected value computed with botocore 1.44.5 (`SigV4Auth(creds, "ssm",
        // "us-east-1")`, canonical_request → string_to_sign → signature) for the same
        // method, URL, signed headers, body and date.
        let body = br#"{"Name":"/app/token"}"#;
        let req = request(
            "POST https://ssm.us-east-1.amazonaws.com/",
            &[
                ("content-type", "application/x-amz-json-1.1"),
                ("x-amz-target", "AmazonSSM.GetParameter"),
                ("content-length", &body.len().to_string()),
                ("user-agent", "botocore/1.44"),
                ("x-amz-date", "20990101T000000Z"),
                ("x-amz-security-token", "placeholder-token"),
                (
                    "authorization",
                    "AWS4-HMAC-SHA256 Credential=PLACEHOLDER/20990101/us-east-1/ssm/aws4_request, \
                     SignedHeaders=content-type;host;x-amz-date, Signature=00",
                ),
            ],
        );
        assert!(needs_body(&req));
        let keys = SecretValue::new(
            r#"{"AccessKeyId":"AKIDEXAMPLE","SecretAccessKey":"wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY","SessionToken":"session-token-example"}"#,
        );
        let signer = Signer {
            service: "ssm",
            region: "us-east-1",
        };
        let mut m = Mutations::default();
        let locations = signer
            .sign(&req, Some(body), &keys, suite_time(), &mut m)
            .unwrap();
        assert_eq!(
            set(&m, "authorization").unwrap(),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/ssm/aws4_request, \
             SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date;x-amz-security-token;x-amz-target, \
             Signature=e21583d33ad0a0baddbeb1fa752838411be4d6f6a295f093dcbba738f0c7b74f"
        );
        assert_eq!(
            set(&m, "x-amz-content-sha256"),
            Some(hex(&Sha256::digest(body)))
        );
        assert_eq!(
            set(&m, "x-amz-security-token").as_deref(),
            Some("session-token-example")
        );
        assert_eq!(set(&m, "x-amz-date").as_deref(), Some("20150830T123600Z"));
        assert!(m.remove.is_empty(), "replaced, not removed: {:?}", m.remove);
        assert_eq!(
            locations,
            [
                "header:authorization",
                "header:x-amz-date",
                "header:x-amz-content-sha256",
                "header:x-amz-security-token"
            ]
        );
    }

    #[test]
    fn declared_payload_hash_and_double_encoding() {
        // botocore 1.44.5, SigV4Auth(creds, "execute-api", "eu-west-1"): the path is
        // normalized and its escapes re-encoded; the declared UNSIGNED-PAYLOAD is signed.
        let req = request(
            "GET https://abc.execute-api.eu-west-1.amazonaws.com:8443/prod/a%20b/./c?z=1&a=%2F",
            &[
                ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
                ("authorization", "Bearer workload-own"),
                ("x-amz-security-token", "placeholder"),
            ],
        );
        assert!(!needs_body(&req));
        let keys = SecretValue::new(
            r#"{"access_key_id":"AKIDEXAMPLE","secret_access_key":"wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"}"#,
        );
        let signer = Signer {
            service: "execute-api",
            region: "eu-west-1",
        };
        let mut m = Mutations::default();
        let locations = signer
            .sign(&req, None, &keys, suite_time(), &mut m)
            .unwrap();
        assert_eq!(
            signature(&m),
            "11857d8cdd1ff79ad128c6c6f2bbe65d82e756d56cd6e5f2c417068d5cd2b188"
        );
        assert_eq!(
            set(&m, "x-amz-content-sha256"),
            None,
            "the workload's is kept"
        );
        assert_eq!(
            m.remove,
            ["x-amz-security-token"],
            "no session token: removed"
        );
        assert_eq!(locations, ["header:authorization", "header:x-amz-date"]);
    }

    #[test]
    fn a_signature_for_another_scope_is_refused() {
        let keys = SecretValue::new(S3_KEYS);
        let signer = Signer {
            service: "sts",
            region: "us-east-1",
        };
        let signed_for = |scope: &str| {
            request(
                "POST https://sts.amazonaws.com/",
                &[(
                    "authorization",
                    &format!(
                        "AWS4-HMAC-SHA256 Credential=AKIDPLACEHOLDER/20240101/{scope}/aws4_request, \
                         SignedHeaders=host;x-amz-date, Signature=abc"
                    ),
                )],
            )
        };
        let mut m = Mutations::default();
        let refused = signer
            .sign(
                &signed_for("eu-west-1/s3"),
                Some(&[]),
                &keys,
                suite_time(),
                &mut m,
            )
            .unwrap_err();
        assert_eq!(
            refused,
            Refusal::ScopeMismatch(
                "signed for s3 in eu-west-1; this credential signs sts in us-east-1".into()
            )
        );
        assert!(m.is_empty());
        let refused = signer
            .sign(
                &signed_for("us-east-1/ssm"),
                Some(&[]),
                &keys,
                suite_time(),
                &mut m,
            )
            .unwrap_err();
        assert!(
            matches!(refused, Refusal::ScopeMismatch(ref why) if why.starts_with("signed for ssm in us-east-1"))
        );
        // An unreadable scope is refused too.
        let garbled = request(
            "GET https://sts.amazonaws.com/",
            &[(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=nonsense, Signature=1",
            )],
        );
        assert!(matches!(
            signer.sign(&garbled, Some(&[]), &keys, suite_time(), &mut m),
            Err(Refusal::ScopeMismatch(_))
        ));
        // The matching scope is re-signed.
        signer
            .sign(
                &signed_for("us-east-1/sts"),
                Some(&[]),
                &keys,
                suite_time(),
                &mut m,
            )
            .unwrap();
        assert!(set(&m, "authorization").unwrap().starts_with(
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20150830/us-east-1/sts/"
        ));
        // Chunk-signed uploads cannot be re-signed.
        let chunked = request(
            "PUT https://b.s3.amazonaws.com/k",
            &[("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD")],
        );
        let s3 = Signer {
            service: "s3",
            region: "us-east-1",
        };
        assert!(matches!(
            s3.sign(
                &chunked,
                None,
                &keys,
                suite_time(),
                &mut Mutations::default()
            ),
            Err(Refusal::ScopeMismatch(_))
        ));
    }

    #[test]
    fn signed_headers_are_the_conservative_set_as_they_will_leave() {
        let req = request(
            "PUT https://b.s3.amazonaws.com/k%20ey?x=1",
            &[
                ("content-type", "text/plain"),
                ("content-md5", "1B2M2Y8AsgTpgAmY7PhCfg=="),
                ("x-amz-meta-a", "1"),
                ("x-amz-meta-dropped", "2"),
                ("user-agent", "curl"),
                ("accept", "*/*"),
                ("x-request-id", "r"),
            ],
        );
        let mut m = Mutations::default();
        m.remove("x-amz-meta-dropped");
        m.set("x-amz-meta-added", SecretValue::new("3"));
        m.path = Some(SecretValue::new("/k%20ey?x=2"));
        let keys = SecretValue::new(S3_KEYS);
        Signer {
            service: "s3",
            region: "us-east-1",
        }
        .sign(&req, Some(b"hello"), &keys, suite_time(), &mut m)
        .unwrap();
        let auth = set(&m, "authorization").unwrap();
        assert!(
            auth.contains(
                "SignedHeaders=content-md5;content-type;host;x-amz-content-sha256;x-amz-date;\
                 x-amz-meta-a;x-amz-meta-added,"
            ),
            "{auth}"
        );
        assert_eq!(
            set(&m, "x-amz-content-sha256"),
            Some(hex(&Sha256::digest(b"hello")))
        );
    }

    #[test]
    fn malformed_credentials_are_named_by_field_never_by_value() {
        let req = request("GET https://sts.amazonaws.com/", &[]);
        let signer = Signer {
            service: "sts",
            region: "us-east-1",
        };
        for (value, says) in [
            ("SENTINEL-not-json", "not JSON"),
            (r#"["SENTINEL-array"]"#, "not a JSON object"),
            (
                r#"{"secret_access_key":"SENTINEL-s"}"#,
                "access_key_id is missing",
            ),
            (
                r#"{"access_key_id":"AKID","SecretAccessKey":""}"#,
                "secret_access_key is missing",
            ),
            (
                r#"{"access_key_id":"AKID","secret_access_key":7}"#,
                "secret_access_key is not a string",
            ),
            (
                r#"{"access_key_id":"AK ID\nSENTINEL","secret_access_key":"s"}"#,
                "access_key_id holds",
            ),
            (
                r#"{"access_key_id":"AKID","secret_access_key":"s","session_token":"SENTINEL\r\nx"}"#,
                "session_token holds",
            ),
        ] {
            let mut m = Mutations::default();
            let Err(Refusal::UnusableValue(why)) = signer.sign(
                &req,
                Some(&[]),
                &SecretValue::new(value),
                suite_time(),
                &mut m,
            ) else {
                panic!("{value} was accepted");
            };
            assert!(why.contains(says), "{why}");
            assert!(!why.contains("SENTINEL") && !why.contains("AKID"), "{why}");
            assert!(m.is_empty());
        }
    }

    #[test]
    fn body_is_needed_only_when_there_is_one_and_no_declared_hash() {
        assert!(!needs_body(&request("GET https://sts.amazonaws.com/", &[])));
        assert!(!needs_body(&request(
            "POST https://sts.amazonaws.com/",
            &[("content-length", "0")]
        )));
        assert!(needs_body(&request(
            "POST https://sts.amazonaws.com/",
            &[("transfer-encoding", "chunked")]
        )));
        assert!(!needs_body(&request(
            "POST https://sts.amazonaws.com/",
            &[
                ("content-length", "5"),
                ("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
            ]
        )));
        // Asked to sign a body it was not given: refused rather than signed wrongly.
        let req = request(
            "POST https://sts.amazonaws.com/",
            &[("content-length", "5")],
        );
        assert!(matches!(
            Signer {
                service: "sts",
                region: "us-east-1"
            }
            .sign(
                &req,
                None,
                &SecretValue::new(S3_KEYS),
                suite_time(),
                &mut Mutations::default()
            ),
            Err(Refusal::UnusableValue(_))
        ));
    }
}
