//! The HTTP transport under async-openai: one place that retries model calls on
//! rate limits (429), server errors (5xx) and connection failures, with exponential
//! backoff that honours `Retry-After` (and OpenAI's `retry-after-ms`).
//!
//! async-openai's own client retries too (a fixed three times, no cap on
//! `Retry-After`); installing this transport with `Client::with_http_service`
//! replaces that, so attempts are counted once and configured here. The delay
//! arithmetic is pure and unit-tested; [`RetryingTransport`] is the I/O around it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use reqwest::header::{HeaderMap, RETRY_AFTER};

/// How model calls are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// The first backoff; each later one doubles, up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// A server asking to wait longer than this is not waited for: the call fails at
    /// once instead of holding the chat turn (and the user) hostage.
    pub max_retry_after: Duration,
}

impl RetryPolicy {
    /// The wait before retry number `retry` (0 for the first retry) after `failure`,
    /// or `None` when the failure is final (not retryable, retries used up, or the
    /// server asked for a longer wait than allowed). `jitter` in [0, 1) spreads
    /// retries of many workers apart.
    pub fn delay(&self, retry: u32, failure: &Failure, jitter: f64) -> Option<Duration> {
        if retry >= self.max_retries || !failure.is_retryable() {
            return None;
        }
        if let Failure::Status {
            retry_after: Some(wait),
            ..
        } = failure
        {
            return (*wait <= self.max_retry_after).then_some(*wait);
        }
        let exponential = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(retry))
            .min(self.max_delay);
        // Up to a quarter more, so that workers hit by the same outage spread out.
        Some(exponential.mul_f64(1.0 + jitter.clamp(0.0, 1.0) / 4.0))
    }
}

/// What went wrong with one HTTP attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The server answered with a non-success status.
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// The connection could not be made (refused, DNS, TLS handshake, connect timeout).
    Connect,
    /// Anything else (the request could not be built, the connection broke after sending).
    Other,
}

impl Failure {
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Status { status, .. } => *status == 429 || (500..600).contains(status),
            Self::Connect => true,
            Self::Other => false,
        }
    }
}

/// The wait a response asks for: `retry-after-ms` (OpenAI), else `Retry-After` as
/// seconds or as an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = header_str(headers, "retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        return finite_secs(ms / 1000.0);
    }
    let value = header_str(headers, RETRY_AFTER.as_str())?;
    if let Ok(secs) = value.parse::<f64>() {
        return finite_secs(secs);
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = date.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
}

fn finite_secs(secs: f64) -> Option<Duration> {
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// A jitter value in [0, 1) without a random-number crate: the random bits of a
/// fresh UUIDv7.
pub fn jitter() -> f64 {
    let random = uuid::Uuid::now_v7().as_u128() as u64 & 0xFFFF;
    random as f64 / 65_536.0
}

/// The tower service async-openai sends every request through.
#[derive(Debug, Clone)]
pub struct RetryingTransport {
    client: reqwest::Client,
    policy: RetryPolicy,
}

impl RetryingTransport {
    pub fn new(client: reqwest::Client, policy: RetryPolicy) -> Self {
        Self { client, policy }
    }
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<reqwest::Response, OpenAIError>> + Send>>;

impl tower::Service<HttpRequestFactory> for RetryingTransport {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, factory: HttpRequestFactory) -> Self::Future {
        let client = self.client.clone();
        let policy = self.policy.clone();
        Box::pin(async move {
            let mut retry = 0;
            loop {
                let request = factory.build().await?;
                let (failure, result) = match client.execute(request).await {
                    Ok(response) if response.status().is_success() => return Ok(response),
                    Ok(response) => {
                        let failure = Failure::Status {
                            status: response.status().as_u16(),
                            retry_after: retry_after(response.headers()),
                        };
                        (failure, Ok(response))
                    }
                    Err(error) if error.is_connect() => (Failure::Connect, Err(error)),
                    Err(error) => (Failure::Other, Err(error)),
                };
                let Some(wait) = policy.delay(retry, &failure, jitter()) else {
                    // The final answer: async-openai turns an error status into an
                    // `ApiError` carrying it.
                    return result.map_err(OpenAIError::Reqwest);
                };
                match &result {
                    Ok(response) => tracing::warn!(
                        status = response.status().as_u16(),
                        retry = retry + 1,
                        wait_ms = wait.as_millis() as u64,
                        "model server answered with an error, retrying"
                    ),
                    Err(error) => tracing::warn!(
                        %error,
                        retry = retry + 1,
                        wait_ms = wait.as_millis() as u64,
                        "model server unreachable, retrying"
                    ),
                }
                // Release the connection before sleeping.
                drop(result);
                tokio::time::sleep(wait).await;
                retry += 1;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_retries: 3,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(4),
            max_retry_after: Duration::from_secs(30),
        }
    }

    fn status(status: u16) -> Failure {
        Failure::Status {
            status,
            retry_after: None,
        }
    }

    #[test]
    fn retryable_failures_back_off_exponentially_up_to_the_limit() {
        let p = policy();
        assert_eq!(
            p.delay(0, &status(503), 0.0),
            Some(Duration::from_millis(500))
        );
        assert_eq!(p.delay(1, &status(429), 0.0), Some(Duration::from_secs(1)));
        assert_eq!(
            p.delay(2, &Failure::Connect, 0.0),
            Some(Duration::from_secs(2))
        );
        assert_eq!(p.delay(3, &status(503), 0.0), None, "retries used up");
        let capped = RetryPolicy {
            max_retries: 10,
            ..p
        };
        assert_eq!(
            capped.delay(6, &status(500), 0.0),
            Some(Duration::from_secs(4))
        );
        let jittered = policy().delay(0, &status(503), 0.99).unwrap();
        assert!(jittered > Duration::from_millis(500) && jittered < Duration::from_millis(625));
    }

    #[test]
    fn client_errors_are_final() {
        for code in [400, 401, 403, 404, 422] {
            assert_eq!(policy().delay(0, &status(code), 0.0), None, "{code}");
        }
        assert_eq!(policy().delay(0, &Failure::Other, 0.0), None);
    }

    #[test]
    fn retry_after_is_honoured_within_its_cap() {
        let asked = Failure::Status {
            status: 429,
            retry_after: Some(Duration::from_secs(7)),
        };
        assert_eq!(policy().delay(0, &asked, 0.5), Some(Duration::from_secs(7)));
        let too_long = Failure::Status {
            status: 429,
            retry_after: Some(Duration::from_secs(120)),
        };
        assert_eq!(policy().delay(0, &too_long, 0.0), None);
    }

    #[test]
    fn retry_after_headers_parse() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(250)));

        let mut headers = HeaderMap::new();
        let soon = chrono::Utc::now() + chrono::Duration::seconds(20);
        let date = soon.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&date).unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(
            wait > Duration::from_secs(17) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );

        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("-1"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j));
        }
    }
}
