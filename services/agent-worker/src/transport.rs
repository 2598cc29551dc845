//! The HTTP transport under async-openai: one place that retries model calls on
//! rate limits (429), server errors (5xx) and connection failures, with exponential
//! backoff that honours `Retry-After` (and OpenAI's `retry-after-ms`).
//!
//! async-openai's own client retries too (a fixed three times, no cap on
//! `Retry-After`); installing this transport with `Client::with_http_service`
//! replaces that, so attempts are counted once and configured here. The schedule is
//! the workspace's ([`platform::retry`]); what is retried and how `Retry-After`
//! changes a pause is pure and unit-tested; [`RetryingTransport`] is the I/O around it.

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
    /// The backoff between attempts: the workspace's exponential schedule
    /// ([`platform::retry::exponential`]) with this policy's bounds.
    pub fn backoff(&self) -> backon::ExponentialBuilder {
        platform::retry::exponential(
            self.base_delay,
            self.max_delay,
            usize::try_from(self.max_retries).unwrap_or(usize::MAX),
        )
    }

    /// The wait before the next attempt after `failure`, given the schedule's `next`
    /// pause (`None` once retries are used up): the server's `Retry-After` when it
    /// sent one, or `None` (give up) when it asks for more than
    /// [`Self::max_retry_after`].
    pub fn adjust(&self, failure: &Failure, next: Option<Duration>) -> Option<Duration> {
        let next = next?;
        match failure {
            Failure::Status {
                retry_after: Some(wait),
                ..
            } => (*wait <= self.max_retry_after).then_some(*wait),
            _ => Some(next),
        }
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
            use backon::Retryable as _;

            let attempt = || async {
                let request = factory.build().await.map_err(Attempt::Build)?;
                match client.execute(request).await {
                    Ok(response) if response.status().is_success() => Ok(response),
                    Ok(response) => Err(Attempt::Failed(
                        Failure::Status {
                            status: response.status().as_u16(),
                            retry_after: retry_after(response.headers()),
                        },
                        Ok(response),
                    )),
                    Err(error) if error.is_connect() => {
                        Err(Attempt::Failed(Failure::Connect, Err(error)))
                    }
                    Err(error) => Err(Attempt::Failed(Failure::Other, Err(error))),
                }
            };
            let answer = attempt
                .retry(policy.backoff())
                .when(|attempt| matches!(attempt, Attempt::Failed(failure, _) if failure.is_retryable()))
                .adjust(|attempt, next| match attempt {
                    Attempt::Failed(failure, _) => policy.adjust(failure, next),
                    Attempt::Build(_) => None,
                })
                .notify(|attempt, wait| {
                    let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
                    match attempt {
                        Attempt::Failed(_, Ok(response)) => tracing::warn!(
                            status = response.status().as_u16(),
                            wait_ms,
                            "model server answered with an error, retrying"
                        ),
                        Attempt::Failed(_, Err(error)) => {
                            tracing::warn!(%error, wait_ms, "model server unreachable, retrying")
                        }
                        Attempt::Build(_) => {}
                    }
                })
                .await;
            match answer {
                Ok(response) => Ok(response),
                // The final answer: async-openai turns an error status into an
                // `ApiError` carrying it.
                Err(Attempt::Failed(_, Ok(response))) => Ok(response),
                Err(Attempt::Failed(_, Err(error))) => Err(OpenAIError::Reqwest(error)),
                Err(Attempt::Build(error)) => Err(error),
            }
        })
    }
}

/// How one attempt went wrong: the request could not be built (final), or it failed
/// with the response or error to hand back if it is the last.
enum Attempt {
    Build(OpenAIError),
    Failed(Failure, Result<reqwest::Response, reqwest::Error>),
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
    fn only_rate_limits_server_errors_and_refused_connections_are_retried() {
        for code in [429, 500, 502, 503] {
            assert!(status(code).is_retryable(), "{code}");
        }
        for code in [400, 401, 403, 404, 422] {
            assert!(!status(code).is_retryable(), "{code}");
        }
        assert!(Failure::Connect.is_retryable());
        assert!(!Failure::Other.is_retryable());
    }

    #[test]
    fn the_schedule_backs_off_exponentially_up_to_the_limit() {
        use backon::BackoffBuilder as _;

        let pauses: Vec<Duration> = policy().backoff().build().collect();
        assert_eq!(pauses.len(), 3, "max_retries pauses: {pauses:?}");
        // Each pause is its exponential step plus jitter of up to the step again.
        for (pause, step) in pauses.iter().zip([500, 1_000, 2_000]) {
            let step = Duration::from_millis(step);
            assert!(
                *pause >= step && *pause <= step * 2,
                "{pause:?} for {step:?}"
            );
        }
    }

    #[test]
    fn retry_after_is_honoured_within_its_cap() {
        let next = Some(Duration::from_millis(500));
        assert_eq!(policy().adjust(&status(503), next), next);
        assert_eq!(policy().adjust(&status(503), None), None, "retries used up");
        let asked = Failure::Status {
            status: 429,
            retry_after: Some(Duration::from_secs(7)),
        };
        assert_eq!(policy().adjust(&asked, next), Some(Duration::from_secs(7)));
        assert_eq!(policy().adjust(&asked, None), None, "retries used up");
        let too_long = Failure::Status {
            status: 429,
            retry_after: Some(Duration::from_secs(120)),
        };
        assert_eq!(policy().adjust(&too_long, next), None);
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
}
