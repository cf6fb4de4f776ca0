//! `type: vault`: a secret from HashiCorp Vault's KV version 2 engine.

use std::sync::Arc;

use super::{CompiledSource, Fetched, SourceContext};
use crate::config::FieldError;
use crate::secrets::{SourceCache, SourceError};

pub struct VaultSource;

impl VaultSource {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        _address: &str,
        _token: Arc<CompiledSource>,
        _mount: &str,
        _path: &str,
        _key: Option<&str>,
        _namespace: Option<&str>,
        _ctx: &SourceContext,
    ) -> Result<VaultSource, Vec<FieldError>> {
        Err(vec![FieldError::new(
            "type",
            "source type `vault` is not supported by this build of portcullis yet",
        )])
    }

    pub async fn fetch(&self, _cache: &SourceCache) -> Result<Fetched, SourceError> {
        Err(SourceError::new("not available"))
    }
}
