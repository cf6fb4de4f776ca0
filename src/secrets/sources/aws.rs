//! `type: aws_secrets_manager`, `aws_ssm`, `aws_credentials`: AWS, through the standard
//! credential chain, with an optional endpoint override.

use super::Fetched;
use crate::config::FieldError;
use crate::secrets::SourceError;

fn not_available(kind: &str) -> Vec<FieldError> {
    vec![FieldError::new(
        "type",
        format!("source type `{kind}` is not supported by this build of portcullis yet"),
    )]
}

pub struct SecretsManagerSource;

impl SecretsManagerSource {
    pub fn new(
        _secret_id: &str,
        _version_stage: Option<&str>,
        _region: Option<&str>,
        _endpoint_url: Option<&str>,
    ) -> Result<SecretsManagerSource, Vec<FieldError>> {
        Err(not_available("aws_secrets_manager"))
    }

    pub async fn fetch(&self) -> Result<Fetched, SourceError> {
        Err(SourceError::new("not available"))
    }
}

pub struct SsmSource;

impl SsmSource {
    pub fn new(
        _parameter: &str,
        _with_decryption: bool,
        _region: Option<&str>,
        _endpoint_url: Option<&str>,
    ) -> Result<SsmSource, Vec<FieldError>> {
        Err(not_available("aws_ssm"))
    }

    pub async fn fetch(&self) -> Result<Fetched, SourceError> {
        Err(SourceError::new("not available"))
    }
}

pub struct CredentialsSource;

impl CredentialsSource {
    pub fn new(
        _profile: Option<&str>,
        _region: Option<&str>,
    ) -> Result<CredentialsSource, Vec<FieldError>> {
        Err(not_available("aws_credentials"))
    }

    pub async fn fetch(&self) -> Result<Fetched, SourceError> {
        Err(SourceError::new("not available"))
    }
}
