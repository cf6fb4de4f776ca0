//! Logs, metrics and traces.
//!
//! Logs go to stderr (stdout is the default audit sink). Traces are `tracing` spans with
//! the target [`trace::SPAN_TARGET`], exported over OTLP/gRPC when an endpoint is
//! configured (`telemetry.otlp` or `OTEL_EXPORTER_OTLP_ENDPOINT`); logs never show them.

pub mod config;
pub mod control;
pub mod metrics;
mod otel;
pub mod trace;

use std::io::IsTerminal;
use std::time::Duration;

use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

use config::TelemetryConfig;
pub use otel::ExportSettings;
use trace::SPAN_TARGET;

/// How long shutdown waits for the last spans to reach the collector.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The process's logging and, when configured, span export. Keep it until shutdown, then
/// call [`Telemetry::shutdown`] so the last spans are exported.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Installs the process-wide `tracing` subscriber: logs on stderr (`PORTCULLIS_LOG` or
    /// `RUST_LOG` sets the filter, `PORTCULLIS_LOG_FORMAT=json` switches to JSON lines),
    /// plus the OTLP exporter when an endpoint is configured. Call inside the tokio
    /// runtime. Fails only on a malformed endpoint in the environment.
    pub fn start(config: &TelemetryConfig) -> Result<Telemetry, String> {
        let settings = ExportSettings::resolve(config, &|name| std::env::var(name).ok())?;
        let provider = settings.as_ref().map(otel::provider).transpose()?;
        install_subscriber(provider.as_ref());
        if let Some(settings) = &settings {
            tracing::info!(
                endpoint = settings.endpoint.as_str(),
                service_name = %settings.service_name,
                sample_ratio = settings.sample_ratio,
                "exporting traces over OTLP/gRPC"
            );
        } else if config.otlp.is_some() {
            tracing::warn!(
                "telemetry.otlp has no endpoint and OTEL_EXPORTER_OTLP_ENDPOINT is not set: \
                 traces are not exported"
            );
        }
        Ok(Telemetry { provider })
    }

    /// Exports the spans still queued and stops the exporter, waiting at most a few
    /// seconds for a slow collector.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The processor's shutdown blocks until its task on this runtime has exported.
        let flushed = tokio::time::timeout(
            FLUSH_TIMEOUT,
            tokio::task::spawn_blocking(move || provider.shutdown()),
        )
        .await;
        match flushed {
            Ok(Ok(Ok(()))) => tracing::debug!("spans flushed"),
            Ok(Ok(Err(error))) => tracing::warn!(%error, "cannot flush the last spans"),
            Ok(Err(error)) => tracing::warn!(%error, "cannot flush the last spans"),
            Err(_) => tracing::warn!(
                "the OTLP collector did not take the last spans within {FLUSH_TIMEOUT:?}"
            ),
        }
    }
}

fn install_subscriber(provider: Option<&SdkTracerProvider>) {
    let directives = std::env::var("PORTCULLIS_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    // Exported spans are not log lines.
    let logs_filter = EnvFilter::new(directives).add_directive(
        format!("{SPAN_TARGET}=off")
            .parse()
            .expect("a valid directive"),
    );
    let registry = tracing_subscriber::registry();
    // A subscriber may already be installed (tests in one process): keep it.
    let _ = match provider {
        // Without export, one filter for the whole subscriber, as before traces existed:
        // span callsites are switched off for good and cost nothing.
        None => registry.with(logs_filter).with(log_lines()).try_init(),
        Some(provider) => registry
            .with(log_lines().with_filter(logs_filter))
            .with(span_layer(provider))
            .try_init(),
    };
}

/// The layer that turns Portcullis's spans into OpenTelemetry spans of `provider`: the
/// request's spans, and warnings raised inside them (as span events).
pub fn span_layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + use<S>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_tracer(otel::tracer(provider))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_filter(
            Targets::new()
                .with_target(SPAN_TARGET, Level::INFO)
                .with_target("portcullis", Level::WARN),
        )
}

fn log_lines<S>() -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    if std::env::var("PORTCULLIS_LOG_FORMAT").as_deref() == Ok("json") {
        Box::new(logs.json())
    } else {
        Box::new(logs)
    }
}
