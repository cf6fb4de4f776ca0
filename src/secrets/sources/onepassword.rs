//! `type: onepassword_connect`: a field of an item, read from a 1Password Connect server.

use std::sync::Arc;

use super::{CompiledSource, Fetched, SourceContext};
use crate::config::FieldError;
use crate::secrets::{SourceCache, SourceError};

pub struct ConnectSource;

impl ConnectSource {
    pub fn new(
        _url: &str,
        _token: Arc<CompiledSource>,
        _vault: &str,
        _item: &str,
        _field: &str,
        _ctx: &SourceContext,
    ) -> Result<ConnectSource, Vec<FieldError>> {
        Err(vec![FieldError::new(
            "type",
            "source type `onepassword_connect` is not supported by this build of portcullis yet",
        )])
    }

    pub async fn fetch(&self, _cache: &SourceCache) -> Result<Fetched, SourceError> {
        Err(SourceError::new("not available"))
    }
}
