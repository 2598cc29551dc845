//! Checks of HTTP answers that many tests make the same way: the status a user would
//! see, then the JSON body or the event stream behind it.
//!
//! Failures name the body, so a wrong status shows what the server said instead.

/// Sends `request`, asserts the answer's status is `expected` and returns its JSON body.
/// Panics (naming the body) when the request fails, the status differs or the body is
/// not JSON.
pub async fn expect_json(
    request: reqwest::RequestBuilder,
    expected: reqwest::StatusCode,
) -> serde_json::Value {
    let response = request.send().await.expect("the request was answered");
    let status = response.status();
    let text = response.text().await.expect("the body was read");
    assert_eq!(status, expected, "{text}");
    serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("non-JSON body ({status}): {error}: {text}"))
}

/// Sends `request` and asserts it is answered 200 with a `text/event-stream`; returns
/// the response for its headers and events (see [`crate::read_events`]).
pub async fn open_event_stream(request: reqwest::RequestBuilder) -> reqwest::Response {
    let response = request.send().await.expect("the request was answered");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    assert!(
        content_type.starts_with("text/event-stream"),
        "content-type {content_type:?}"
    );
    response
}
