//! `type: oauth2`: access tokens minted by Portcullis (client credentials, refresh token,
//! JWT bearer), cached until shortly before they expire.

use super::{Fetched, SourceContext};
use crate::config::FieldError;
use crate::secrets::config::OAuth2Config;
use crate::secrets::{SourceCache, SourceError};

pub struct OAuth2Source;

impl OAuth2Source {
    pub fn new(
        _config: &OAuth2Config,
        _ctx: &SourceContext,
    ) -> Result<OAuth2Source, Vec<FieldError>> {
        Err(vec![FieldError::new(
            "type",
            "source type `oauth2` is not supported by this build of portcullis yet",
        )])
    }

    pub async fn fetch(&self, _cache: &SourceCache) -> Result<Fetched, SourceError> {
        Err(SourceError::new("not available"))
    }
}
