//! The OpenTelemetry exporter: OTLP over gRPC (the tonic already serving ext_proc), behind
//! a batch span processor on the tokio runtime. Requests never wait on it: a finished span
//! is queued without blocking, and a full queue drops spans instead.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::runtime;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
};

use super::config::{OtlpEndpoint, TelemetryConfig};

/// Export failures are logged at most this often; the rest are counted in the next line.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Where and how spans are exported, from the config file and the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSettings {
    pub endpoint: OtlpEndpoint,
    pub service_name: String,
    pub sample_ratio: f64,
}

impl ExportSettings {
    /// `Ok(None)`: no endpoint in the config nor the environment, nothing is exported.
    /// A field in the config wins over its environment variable.
    pub fn resolve(
        config: &TelemetryConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<ExportSettings>, String> {
        let otlp = config.otlp.clone().unwrap_or_default();
        let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let endpoint = match otlp.endpoint {
            Some(endpoint) => endpoint,
            None => {
                let from_env = [
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                ]
                .into_iter()
                .find_map(|name| env(name).map(|url| (name, url)));
                match from_env {
                    Some((name, url)) => OtlpEndpoint::try_from(url.trim().to_owned())
                        .map_err(|e| format!("{name}: {e}"))?,
                    None => return Ok(None),
                }
            }
        };
        Ok(Some(ExportSettings {
            endpoint,
            service_name: otlp
                .service_name
                .or_else(|| env("OTEL_SERVICE_NAME"))
                .unwrap_or_else(|| "portcullis".to_owned()),
            sample_ratio: otlp.sample_ratio.unwrap_or(1.0),
        }))
    }
}

/// Builds the tracer provider and its exporter. Needs a tokio runtime: the gRPC channel
/// and the batch processor run on it.
pub fn provider(settings: &ExportSettings) -> Result<SdkTracerProvider, String> {
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(settings.endpoint.as_str());
    if settings.endpoint.is_https() {
        exporter =
            exporter.with_tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots());
    }
    let exporter = exporter
        .build()
        .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
    // The batch settings honour the standard OTEL_BSP_* variables.
    let processor = BatchSpanProcessor::builder(LoggedExporter::new(exporter), runtime::Tokio)
        .with_batch_config(BatchConfigBuilder::default().build())
        .build();
    let resource = Resource::builder()
        .with_service_name(settings.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.sample_ratio,
        ))))
        .with_resource(resource)
        .build())
}

/// The tracer the `tracing` layer writes spans to.
pub fn tracer(provider: &SdkTracerProvider) -> SdkTracer {
    provider.tracer("portcullis")
}

/// Logs export failures (a collector down or refusing), rate-limited: a request is never
/// failed or slowed by them, and a log is not flooded.
#[derive(Debug)]
struct LoggedExporter<E> {
    inner: E,
    failures: Mutex<Failures>,
}

#[derive(Debug, Default)]
struct Failures {
    last_logged: Option<Instant>,
    /// Failed batches and their spans since the last line.
    batches: u64,
    spans: u64,
}

impl<E> LoggedExporter<E> {
    fn new(inner: E) -> Self {
        LoggedExporter {
            inner,
            failures: Mutex::default(),
        }
    }

    fn failed(&self, spans: usize, error: &dyn std::fmt::Display) {
        let Ok(mut failures) = self.failures.lock() else {
            return;
        };
        failures.batches += 1;
        failures.spans += spans as u64;
        let due = failures
            .last_logged
            .is_none_or(|at| at.elapsed() >= FAILURE_LOG_INTERVAL);
        if due {
            tracing::warn!(
                %error,
                failed_batches = failures.batches,
                lost_spans = failures.spans,
                "cannot export spans to the OTLP collector; requests are not affected \
                 (logged at most once a minute)"
            );
            *failures = Failures {
                last_logged: Some(Instant::now()),
                ..Failures::default()
            };
        }
    }
}

impl<E: SpanExporter> SpanExporter for LoggedExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        if let Err(error) = &result {
            self.failed(spans, error);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::config::OtlpConfig;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn with_otlp(otlp: OtlpConfig) -> TelemetryConfig {
        TelemetryConfig { otlp: Some(otlp) }
    }

    #[test]
    fn nothing_is_exported_without_an_endpoint() {
        let none = ExportSettings::resolve(&TelemetryConfig::default(), &env(&[]));
        assert_eq!(none, Ok(None));
        let blank = ExportSettings::resolve(
            &TelemetryConfig::default(),
            &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]),
        );
        assert_eq!(blank, Ok(None));
        let name_only = with_otlp(OtlpConfig {
            service_name: Some("gw".into()),
            ..OtlpConfig::default()
        });
        assert_eq!(ExportSettings::resolve(&name_only, &env(&[])), Ok(None));
    }

    #[test]
    fn the_environment_enables_export_and_the_config_wins() {
        let vars = &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_SERVICE_NAME", "from-env"),
        ];
        let settings = ExportSettings::resolve(&TelemetryConfig::default(), &env(vars))
            .unwrap()
            .unwrap();
        assert_eq!(settings.endpoint.as_str(), "http://collector:4317");
        assert_eq!(settings.service_name, "from-env");
        assert_eq!(settings.sample_ratio, 1.0);

        let config = with_otlp(OtlpConfig {
            endpoint: Some(OtlpEndpoint::try_from("https://otel.example:4317".to_owned()).unwrap()),
            service_name: Some("from-config".into()),
            sample_ratio: Some(0.5),
        });
        let settings = ExportSettings::resolve(&config, &env(vars))
            .unwrap()
            .unwrap();
        assert_eq!(settings.endpoint.as_str(), "https://otel.example:4317");
        assert_eq!(settings.service_name, "from-config");
        assert_eq!(settings.sample_ratio, 0.5);

        let traces_first = &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://general:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
        ];
        let settings = ExportSettings::resolve(&TelemetryConfig::default(), &env(traces_first))
            .unwrap()
            .unwrap();
        assert_eq!(settings.endpoint.as_str(), "http://traces:4317");
        assert_eq!(settings.service_name, "portcullis");
    }

    #[test]
    fn a_malformed_endpoint_in_the_environment_is_an_error_naming_the_variable() {
        let error = ExportSettings::resolve(
            &TelemetryConfig::default(),
            &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")]),
        )
        .unwrap_err();
        assert!(
            error.starts_with("OTEL_EXPORTER_OTLP_ENDPOINT: invalid OTLP endpoint"),
            "{error}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http_and_https_endpoints_build_an_exporter() {
        for endpoint in ["http://127.0.0.1:4317", "https://otel.example:4317"] {
            let settings = ExportSettings {
                endpoint: OtlpEndpoint::try_from(endpoint.to_owned()).unwrap(),
                service_name: "test".into(),
                sample_ratio: 1.0,
            };
            let provider = provider(&settings).unwrap_or_else(|e| panic!("{endpoint}: {e}"));
            // Nothing was exported: shutting down does not wait on the (absent) collector.
            let shutdown = tokio::task::spawn_blocking(move || provider.shutdown());
            assert!(shutdown.await.unwrap().is_ok(), "{endpoint}");
        }
    }
}
