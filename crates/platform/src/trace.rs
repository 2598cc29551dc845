//! Joining the caller's trace: the W3C trace context (`traceparent`, `tracestate`) of
//! an incoming HTTP request, so that a request from a client that traces is one trace
//! with everything it causes (invariant 8). NATS messages carry the same headers; see
//! [`crate::bus::follow_trace`].

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TraceContextExt as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

struct HttpHeaders<'a>(&'a http::HeaderMap);

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The remote context an HTTP request's headers carry (an invalid span context when
/// they carry none).
pub fn extract_http_context(headers: &http::HeaderMap) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HttpHeaders(headers))
    })
}

/// Makes `span` a child of the trace an HTTP request's headers carry.
///
/// Call it right after creating the span and before entering it. Requests without a
/// trace context leave the span where it is (under its local parent, or a new root).
pub fn follow_http_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    follow_context(span, extract_http_context(headers));
}

/// Makes `span` a child of `context` when that names a span.
pub(crate) fn follow_context(span: &tracing::Span, context: opentelemetry::Context) {
    if !context.span().span_context().is_valid() {
        return;
    }
    if let Err(error) = span.set_parent(context) {
        tracing::debug!(%error, "could not attach the span to the incoming trace");
    }
}

/// A W3C `traceparent` and the checks that a context was read from it, for the tests
/// of both kinds of headers.
#[cfg(test)]
pub(crate) mod sample {
    use opentelemetry::trace::TraceContextExt as _;

    pub(crate) const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// Installs the propagator the services use.
    pub(crate) fn with_propagator() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
    }

    /// `context` is the remote parent [`TRACEPARENT`] names.
    pub(crate) fn assert_is_the_sample(context: &opentelemetry::Context) {
        let span = context.span();
        let span_context = span.span_context();
        assert!(span_context.is_valid());
        assert!(span_context.is_remote());
        assert_eq!(
            span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(span_context.span_id().to_string(), "00f067aa0ba902b7");
    }
}

#[cfg(test)]
mod tests {
    use super::sample::{TRACEPARENT, assert_is_the_sample, with_propagator};
    use super::*;

    #[test]
    fn extracts_a_well_formed_traceparent_from_http_headers() {
        with_propagator();
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", http::HeaderValue::from_static(TRACEPARENT));
        assert_is_the_sample(&extract_http_context(&headers));
    }

    #[test]
    fn headers_without_a_trace_give_no_remote_span() {
        with_propagator();
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", http::HeaderValue::from_static("garbage"));
        assert!(
            !extract_http_context(&headers)
                .span()
                .span_context()
                .is_valid()
        );
        assert!(
            !extract_http_context(&http::HeaderMap::new())
                .span()
                .span_context()
                .is_valid()
        );
    }
}
