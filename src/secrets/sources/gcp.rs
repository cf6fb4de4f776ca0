//! `type: gcp_service_account`: a Google access token minted from a service-account key
//! with the JWT bearer grant.

use std::sync::Arc;

use super::{CompiledSource, Fetched, SourceContext};
use crate::config::FieldError;
use crate::secrets::{SourceCache, SourceError};

pub struct ServiceAccountSource;

impl ServiceAccountSource {
    pub fn new(
        _key: Arc<CompiledSource>,
        _scopes: &[String],
        _subject: Option<&str>,
        _token_url: Option<&str>,
        _ctx: &SourceContext,
    ) -> Result<ServiceAccountSource, Vec<FieldError>> {
        Err(vec![FieldError::new(
            "type",
            "source type `gcp_service_account` is not supported by this build of portcullis yet",
        )])
    }

    pub async fn fetch(&self, _cache: &SourceCache) -> Result<Fetched, SourceError> {
        Err(SourceError::new("not available"))
    }
}
