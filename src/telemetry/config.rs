//! `telemetry:` in the config file.

use serde::{Deserialize, Serialize};

/// Traces. Changing this section needs a restart.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Export spans over OTLP/gRPC. Without this section, spans are exported only when
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpConfig>,
}

/// An OpenTelemetry collector that accepts OTLP over gRPC. Each field falls back to the
/// standard environment variable; a field set here wins over it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// `http://host:4317`, or `https://…` for TLS (system trust store). Default:
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, then `OTEL_EXPORTER_OTLP_ENDPOINT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<OtlpEndpoint>,
    /// `service.name` of the exported spans. Default: `OTEL_SERVICE_NAME`, then
    /// `portcullis`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// The share of new traces sampled, from 0.0 to 1.0. A request that arrives with a
    /// `traceparent` follows its caller's sampling decision. Default 1.0.
    #[serde(
        default,
        deserialize_with = "sample_ratio",
        skip_serializing_if = "Option::is_none"
    )]
    pub sample_ratio: Option<f64>,
}

/// A validated OTLP/gRPC endpoint: an `http` or `https` URL with a host.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct OtlpEndpoint(String);

impl OtlpEndpoint {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_https(&self) -> bool {
        self.0.starts_with("https:")
    }
}

impl TryFrom<String> for OtlpEndpoint {
    type Error = String;

    fn try_from(url: String) -> Result<Self, String> {
        let uri: tonic::codegen::http::Uri = url
            .parse()
            .map_err(|e| format!("invalid OTLP endpoint {url:?}: {e}"))?;
        // Not echoed: whatever is before `@` may be a password.
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(
                "an OTLP endpoint must not carry credentials (`user:password@`): \
                        send them with OTEL_EXPORTER_OTLP_HEADERS"
                    .to_owned(),
            );
        }
        let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
        if !scheme_ok || uri.host().is_none_or(str::is_empty) || uri.query().is_some() {
            return Err(format!(
                "invalid OTLP endpoint {url:?}: expected http://host:port or https://host:port"
            ));
        }
        Ok(OtlpEndpoint(url))
    }
}

impl From<OtlpEndpoint> for String {
    fn from(endpoint: OtlpEndpoint) -> String {
        endpoint.0
    }
}

fn sample_ratio<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<f64>, D::Error> {
    let ratio = f64::deserialize(deserializer)?;
    if (0.0..=1.0).contains(&ratio) {
        Ok(Some(ratio))
    } else {
        Err(serde::de::Error::custom(format!(
            "sample_ratio must be between 0.0 and 1.0, found {ratio}"
        )))
    }
}
