//! `type: env` — an environment variable of the portcullis process.

use super::Fetched;
use crate::secrets::{SecretValue, SourceError};
use crate::vocab::FieldError;

pub struct EnvSource {
    var: String,
}

impl EnvSource {
    pub fn new(var: &str) -> Result<EnvSource, Vec<FieldError>> {
        if var.is_empty() || var.contains(['=', '\0']) {
            return Err(vec![FieldError::new(
                "var",
                format!("{var:?} is not a variable name"),
            )]);
        }
        Ok(EnvSource {
            var: var.to_owned(),
        })
    }

    pub fn fetch(&self) -> Result<Fetched, SourceError> {
        match std::env::var(&self.var) {
            Ok(value) => Ok(Fetched::value(SecretValue::new(value))),
            Err(std::env::VarError::NotPresent) => Err(SourceError::new("the variable is not set")),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(SourceError::new("the variable is not valid UTF-8"))
            }
        }
    }
}
