//! `weft control`'s logs, as text or JSON on stderr, and its traces: with `--otlp-endpoint`,
//! its own `tracing` spans (each config push, each certificate request) go to an OTLP
//! collector through tracing-opentelemetry and the SDK's batch exporter, whose queue is
//! bounded and drops rather than blocks.

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Keeps the trace exporter; dropping it flushes what is queued.
pub struct Guard(Option<opentelemetry_sdk::trace::SdkTracerProvider>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber. Must run inside the Tokio runtime when `otlp_endpoint` is
/// set: the exporter's gRPC channel lives there.
pub fn init(
    log_level: &str,
    format: LogFormat,
    otlp_endpoint: Option<&str>,
    namespace: &str,
) -> anyhow::Result<Guard> {
    let filter = tracing_subscriber::EnvFilter::try_new(log_level).context("--log-level")?;
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
    });
    let text = (format == LogFormat::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
    });
    let provider = match otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(std::time::Duration::from_secs(5))
                .build()
                .with_context(|| format!("the OTLP exporter for {endpoint:?}"))?;
            let resource = opentelemetry_sdk::Resource::builder_empty()
                .with_attributes([
                    opentelemetry::KeyValue::new("service.name", "weft-control"),
                    opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                    opentelemetry::KeyValue::new("k8s.namespace.name", namespace.to_owned()),
                ])
                .build();
            Some(
                opentelemetry_sdk::trace::SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
        None => None,
    };
    // Only weft's own spans are exported, not those of the libraries beneath.
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("weft-control"))
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("weft_control", tracing::Level::INFO),
            )
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(json)
        .with(text)
        .with(otel)
        .try_init()?;
    Ok(Guard(provider))
}
