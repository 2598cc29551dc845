//! One tracing set-up for every service: the `RUST_LOG` filter, plain or JSON log
//! lines, and OpenTelemetry spans exported over OTLP/HTTP when an endpoint is set.
//!
//! The OpenTelemetry layer is installed even when nothing is exported, so spans
//! always have real trace and span ids and the W3C context still travels on the bus:
//! a service that exports sees its callers' traces even if they do not export.

use std::sync::Once;
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, TelemetryConfig};

/// The filter used when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn";

/// Keeps the tracer provider alive; dropping it exports the spans still buffered and
/// shuts the provider down. Hold it in `main` until the service has stopped.
#[must_use = "dropping the guard shuts tracing export down"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl std::fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryGuard")
            .field("active", &self.provider.is_some())
            .finish()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        // Shutting down waits for the batch exporter thread, whose HTTP calls run on
        // the Tokio runtime: on a multi-thread runtime let the other workers run them.
        let flavor = tokio::runtime::Handle::try_current().map(|handle| handle.runtime_flavor());
        let result = match flavor {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                tokio::task::block_in_place(|| provider.shutdown())
            }
            _ => provider.shutdown(),
        };
        if let Err(error) = result {
            // The subscriber may already be gone, so say it on stderr as well.
            eprintln!("failed to shut the tracer provider down: {error}");
        }
    }
}

/// Installs the global tracing subscriber and the W3C trace-context propagator.
///
/// Call once per process, from inside the Tokio runtime (the OTLP exporter sends
/// on it); a second call fails because a global subscriber is already set.
pub fn init(
    service_name: &'static str,
    config: &TelemetryConfig,
) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(DEFAULT_FILTER))
        .context("failed to build the log filter")?;

    let mut provider = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service_name).build());
    if let Some(endpoint) = config
        .otlp_endpoint
        .as_deref()
        .filter(|e| !e.trim().is_empty())
    {
        provider = provider.with_batch_exporter(otlp_exporter(endpoint)?);
    }
    let provider = provider.build();
    let otel_layer = tracing_opentelemetry::layer().with_tracer(provider.tracer(service_name));

    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    let installed = match config.log_format {
        LogFormat::Plain => registry.with(tracing_subscriber::fmt::layer()).try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
    };
    installed.context("failed to install the tracing subscriber")?;

    tracing::info!(
        service = service_name,
        otlp_endpoint = config.otlp_endpoint.as_deref().unwrap_or("off"),
        "telemetry initialised"
    );
    Ok(TelemetryGuard {
        provider: Some(provider),
    })
}

/// A subscriber for tests: logs through the test harness's capture, keeps real trace
/// ids (no export) and installs the propagator. Safe to call from every test.
pub fn init_for_tests() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let filter =
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
        let provider = SdkTracerProvider::builder().build();
        // The filter only quiets the log output: spans stay enabled for the
        // OpenTelemetry layer whatever RUST_LOG says, so trace ids are always real.
        let otel_layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("tests"));
        let fmt_layer = tracing_subscriber::fmt::layer()
            .with_test_writer()
            .with_filter(filter);
        // Another subscriber may already be installed (a test set its own): keep it.
        let _ = tracing_subscriber::registry()
            .with(otel_layer)
            .with(fmt_layer)
            .try_init();
    });
}

fn otlp_exporter(endpoint: &str) -> anyhow::Result<OnTokio<opentelemetry_otlp::SpanExporter>> {
    // The setting is the collector's base URL (like OTEL_EXPORTER_OTLP_ENDPOINT), but an
    // endpoint set in code is used verbatim, so the traces path is added here.
    let traces_url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(traces_url.clone())
        .with_timeout(Duration::from_secs(10))
        .build()
        .with_context(|| format!("failed to build the otlp exporter for {traces_url}"))?;
    let runtime = tokio::runtime::Handle::try_current()
        .context("telemetry::init must run inside a tokio runtime when otlp export is on")?;
    Ok(OnTokio {
        inner: std::sync::Arc::new(exporter),
        runtime,
    })
}

/// Runs an exporter's calls on the Tokio runtime.
///
/// The SDK's batch processor exports from its own OS thread with a plain
/// `block_on`, but the async reqwest client needs a Tokio reactor; spawning each
/// export onto the runtime gives it one without the experimental async-runtime
/// processor, and keeps the processor's bounded shutdown.
#[derive(Debug)]
struct OnTokio<E> {
    inner: std::sync::Arc<E>,
    runtime: tokio::runtime::Handle,
}

impl<E: SpanExporter + 'static> SpanExporter for OnTokio<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let inner = std::sync::Arc::clone(&self.inner);
        let task = self.runtime.spawn(async move { inner.export(batch).await });
        task.await.unwrap_or_else(|error| {
            Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
                format!("span export task failed: {error}"),
            ))
        })
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called while the provider is built, before any export holds a clone.
        if let Some(inner) = std::sync::Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_filter_parses() {
        EnvFilter::try_new(DEFAULT_FILTER).unwrap();
    }
}
