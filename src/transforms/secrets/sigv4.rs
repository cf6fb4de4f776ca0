//! `style: aws_sigv4`: AWS Signature Version 4 with the credentials from the secret's
//! source, for the configured service and region.

use std::time::SystemTime;

use super::inject::Refusal;
use crate::request::OutboundRequest;
use crate::secrets::SecretValue;
use crate::transforms::Mutations;

/// Whether this build can sign. Until it can, configs using `aws_sigv4` are refused at load.
pub const AVAILABLE: bool = false;

/// Signs for one service in one region.
pub struct Signer<'a> {
    pub service: &'a str,
    pub region: &'a str,
}

/// Whether signing this request needs its body: it has one, and the workload did not
/// declare the payload hash in `x-amz-content-sha256`.
pub fn needs_body(request: &OutboundRequest) -> bool {
    let declared = request.header("x-amz-content-sha256").is_some();
    let has_body = request
        .header("content-length")
        .is_none_or(|len| len != b"0")
        && request.header("content-length").is_some()
        || request.header("transfer-encoding").is_some();
    has_body && !declared
}

impl Signer<'_> {
    /// Signs `request` (re-signing it when the workload signed with placeholder keys),
    /// writing the headers into `mutations`; returns the locations written.
    pub fn sign(
        &self,
        _request: &OutboundRequest,
        _body: Option<&[u8]>,
        _credentials: &SecretValue,
        _now: SystemTime,
        _mutations: &mut Mutations,
    ) -> Result<Vec<String>, Refusal> {
        Err(Refusal::UnusableValue(
            "aws_sigv4 signing is not available in this build".into(),
        ))
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
        vec!["header:authorization".into(), "header:x-amz-date".into()]
    }
}
