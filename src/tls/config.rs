//! The `interception` section of the config file.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::vocab::DurationText;
use crate::vocab::FieldError;

/// HTTPS interception: Portcullis serves Envoy's secret discovery service (SDS) and mints a
/// leaf certificate per TLS server name, signed by this CA, for hosts some active policy
/// could allow. Changing this section needs a restart.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InterceptionConfig {
    pub ca: CaFiles,
    /// How long a minted leaf certificate is valid; it is re-minted and pushed to Envoy
    /// when a third of that is left. Default `24h`; at least `1m`.
    #[serde(default = "default_leaf_lifetime")]
    pub leaf_lifetime: DurationText,
    /// The most leaf certificates kept; the least recently used go first. Default 10000.
    #[serde(default = "default_max_certificates")]
    pub max_certificates: u64,
    /// The most server names one SDS stream (one Envoy) may hold. Names asked for beyond it
    /// get no certificate (the handshake fails; counted as `too_many_names`) until Envoy
    /// lets some go: whoever can open streams cannot make Portcullis track, or mint for,
    /// an unbounded set of names. Default 10000.
    #[serde(default = "default_max_names_per_stream")]
    pub max_names_per_stream: u64,
}

/// Where the CA lives: PEM files, e.g. a Kubernetes Secret mounted as a volume.
/// `portcullis ca init --dir DIR` writes `DIR/ca.crt` and `DIR/ca.key`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CaFiles {
    /// The CA certificate (PEM). Workloads must trust it.
    pub cert_file: PathBuf,
    /// The CA private key (PEM, PKCS#8 or SEC1).
    pub key_file: PathBuf,
}

fn default_leaf_lifetime() -> DurationText {
    DurationText(Duration::from_secs(24 * 3600))
}

fn default_max_certificates() -> u64 {
    10_000
}

fn default_max_names_per_stream() -> u64 {
    10_000
}

impl InterceptionConfig {
    /// Interception with the CA in `ca` and every other setting at its default.
    pub fn with_ca(ca: CaFiles) -> InterceptionConfig {
        InterceptionConfig {
            ca,
            leaf_lifetime: default_leaf_lifetime(),
            max_certificates: default_max_certificates(),
            max_names_per_stream: default_max_names_per_stream(),
        }
    }

    /// Reads the CA and sets up the leaf cache. Errors name the field and the file.
    pub fn load(&self) -> Result<super::leaves::LeafCertificates, FieldError> {
        let ca = super::ca::CertificateAuthority::load(&self.ca.cert_file, &self.ca.key_file)
            .map_err(|e| {
                let field = match &e {
                    super::ca::CaError::File { path, .. } if *path == self.ca.key_file => {
                        "interception.ca.key_file"
                    }
                    _ => "interception.ca.cert_file",
                };
                FieldError::new(field, e.to_string())
            })?;
        Ok(
            super::leaves::LeafCertificates::new(ca, self.leaf_lifetime.0, self.max_certificates)
                .with_max_names_per_stream(self.max_names_per_stream),
        )
    }

    /// Checks the values; the CA files themselves are read by `serve` and `validate`.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.leaf_lifetime.0 < Duration::from_secs(60) {
            errors.push(FieldError::new(
                "interception.leaf_lifetime",
                "must be at least 1m (leaves are re-minted when a third of it is left)",
            ));
        }
        if self.max_certificates == 0 {
            errors.push(FieldError::new(
                "interception.max_certificates",
                "must be at least 1",
            ));
        }
        if self.max_names_per_stream == 0 {
            errors.push(FieldError::new(
                "interception.max_names_per_stream",
                "must be at least 1",
            ));
        }
        errors
    }
}
