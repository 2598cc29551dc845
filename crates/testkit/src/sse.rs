//! A small reader of Server-Sent Events responses whose events carry JSON data (the
//! gateway's streamed turns).

use std::time::Duration;

use futures::StreamExt as _;

/// How long [`read_events`] waits for the stream to reach its last event.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub event: String,
    /// The event's `id:`, if it has one.
    pub id: Option<String>,
    pub data: serde_json::Value,
}

/// Reads events from an SSE response until a `final` or `error` event (inclusive) or
/// the end of the stream. Panics when an event's data is not JSON or the stream has
/// not got there in 60 s.
pub async fn read_events(response: reqwest::Response) -> Vec<SseEvent> {
    read_until(response, |event| {
        event.event == "final" || event.event == "error"
    })
    .await
}

/// Reads the first `count` events (fewer if the stream ends first), then drops the
/// connection, as a client whose network failed would.
pub async fn read_first_events(response: reqwest::Response, count: usize) -> Vec<SseEvent> {
    let mut seen = 0;
    read_until(response, |_| {
        seen += 1;
        seen == count
    })
    .await
}

/// Reads events until `last` says the event just read is the last one wanted, or the
/// stream ends.
async fn read_until(
    response: reqwest::Response,
    mut last: impl FnMut(&SseEvent) -> bool,
) -> Vec<SseEvent> {
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    let reading = async {
        while let Some(chunk) = body.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk.expect("stream chunk")));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                // Keep-alive comments are not events.
                let Some(event) = parse_block(&block) else {
                    continue;
                };
                let done = last(&event);
                events.push(event);
                if done {
                    return;
                }
            }
        }
    };
    tokio::time::timeout(READ_TIMEOUT, reading)
        .await
        .expect("the stream ended in time");
    events
}

/// One event block (the lines before a blank line); `None` when it names no event.
fn parse_block(block: &str) -> Option<SseEvent> {
    let mut event = None;
    let mut id = None;
    let mut data = String::new();
    for line in block.lines() {
        if let Some(name) = line.strip_prefix("event:") {
            event = Some(name.trim().to_owned());
        } else if let Some(value) = line.strip_prefix("id:") {
            id = Some(value.trim().to_owned());
        } else if let Some(chunk) = line.strip_prefix("data:") {
            data.push_str(chunk.strip_prefix(' ').unwrap_or(chunk));
        }
    }
    Some(SseEvent {
        event: event?,
        id,
        data: serde_json::from_str(&data).expect("json event data"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_named_json_events_and_skips_comments() {
        assert_eq!(
            parse_block("event: delta\nid: 7\ndata: {\"text\":\"hi\"}\n\n"),
            Some(SseEvent {
                event: "delta".into(),
                id: Some("7".into()),
                data: serde_json::json!({"text": "hi"}),
            })
        );
        assert_eq!(parse_block(":\n\n"), None);
    }
}
