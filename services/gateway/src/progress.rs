//! A turn's events as JetStream keeps them, for `POST …/chat/stream`,
//! `GET …/turns/{request_id}/events` and ChatKit's streams (each rendered by a
//! [`RenderTurn`]): the progress stream holds the turn's chunks
//! (the gateway's `Accepted` first, then the worker's), the replies stream its end.
//! An event's SSE id is its chunk's sequence in the progress stream, and `end` for
//! the final event, so the ids of a turn are the same on every replica, after a
//! gateway restart and on every read; `Last-Event-ID` picks up after one of them.
//!
//! Ownership: the progress subject carries the user's token, so a turn found on the
//! user's subject is theirs; once its progress has expired, its stored reply names
//! its user.

use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::{Ordered, OrderedConfig};
use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use axum::http::HeaderMap;
use axum::response::sse::Event;
use futures::StreamExt as _;
use platform::error_chain;
use proto_schemas::chat::{ChatOutcome, ChatReply, ChatRequest, ChatStreamChunk};
use proto_schemas::{ConversationId, RequestId, UserId};
use tokio::sync::mpsc;

use crate::api::chunk_event;
use crate::error::{ApiError, TurnIds};
use crate::routes::chat::answer;
use crate::state::AppState;
use crate::turn::{self, StartedTurn};

/// The SSE id of a turn's last event (`final` or `error`).
pub(crate) const END_EVENT_ID: &str = "end";

/// How long the end of a turn waits for chunks the progress stream holds but has not
/// delivered yet, before the end event goes out regardless.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The pause after an error of the progress consumer.
const CONSUMER_PAUSE: Duration = Duration::from_millis(250);

/// The most significant digits of a `Last-Event-ID` number, leading zeros aside. Every
/// such number fits a `u64` (sequences never get near 10^19), so the API description's
/// pattern can say exactly what is accepted: `0*[0-9]{1,19}`.
const MAX_SEQUENCE_DIGITS: u32 = 19;

/// The first number with more than [`MAX_SEQUENCE_DIGITS`] significant digits.
const SEQUENCE_LIMIT: u64 = 10u64.pow(MAX_SEQUENCE_DIGITS);

/// Where a client left a turn's events (`Last-Event-ID`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LastEventId {
    /// After the progress chunk with this sequence.
    Chunk(u64),
    /// After the end: nothing is left.
    End,
}

impl LastEventId {
    /// The `Last-Event-ID` header, if any: a chunk's sequence or `end`; anything
    /// else → 422.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, ApiError> {
        let Some(value) = headers.get("last-event-id") else {
            return Ok(None);
        };
        let malformed = || {
            ApiError::invalid(
                "invalid_last_event_id",
                format!(
                    "Last-Event-ID must be an event id this turn sent (a number, or {END_EVENT_ID:?})"
                ),
            )
        };
        let raw = value.to_str().map_err(|_| malformed())?.trim();
        if raw == END_EVENT_ID {
            return Ok(Some(Self::End));
        }
        // Digits only (`u64::from_str` would take a leading `+` too).
        if !raw.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed());
        }
        raw.parse::<u64>()
            .ok()
            .filter(|&id| id < SEQUENCE_LIMIT)
            .map(|id| Some(Self::Chunk(id)))
            .ok_or_else(malformed)
    }
}

/// A request id from the path; not a UUID → 422.
pub(crate) fn parse_request_id(raw: &str) -> Result<RequestId, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::invalid(
            "invalid_request_id",
            format!("request id {raw:?} is not a valid id"),
        )
    })
}

/// What JetStream still holds of one of a user's turns.
#[derive(Debug)]
pub(crate) enum KnownTurn {
    /// Its progress, starting with the request as queued.
    Progress(Box<ChatRequest>),
    /// Only its reply: the progress has expired.
    Reply(Box<ChatReply>),
}

/// `user`'s turn `request_id`, or 404 (unknown, or another user's).
pub(crate) async fn find(
    state: &AppState,
    user: &UserId,
    request_id: RequestId,
) -> Result<KnownTurn, ApiError> {
    if let Some(request) = accepted(state, user, request_id).await? {
        return Ok(KnownTurn::Progress(Box::new(request)));
    }
    match turn::stored_reply(state, request_id).await {
        Some(reply) if reply.user_id.as_ref() == Some(user) => {
            Ok(KnownTurn::Reply(Box::new(reply)))
        }
        _ => Err(ApiError::turn_not_found(request_id)),
    }
}

/// The `Accepted` chunk of `request_id` on `user`'s progress subject: the turn's
/// first chunk, stored as it was queued.
async fn accepted(
    state: &AppState,
    user: &UserId,
    request_id: RequestId,
) -> Result<Option<ChatRequest>, ApiError> {
    let subject = state.subjects().chat_stream(user, request_id);
    let stream = progress_stream(state).await?;
    let first = match stream.direct_get_first_for_subject(subject.clone()).await {
        // No answer at all: the stream may be gone with a NATS restart (it is kept in
        // memory). Make sure it is there, and ask once more.
        Err(error) if error.kind() != DirectGetErrorKind::NotFound => {
            tracing::debug!(error = %error_chain(&error), "progress stream look-up failed");
            state.restore_progress_stream().await;
            stream.direct_get_first_for_subject(subject).await
        }
        first => first,
    };
    match first {
        Ok(message) => match platform::bus::decode_json::<ChatStreamChunk>(&message.payload) {
            Ok(ChatStreamChunk::Accepted { request }) if request.request_id == request_id => {
                Ok(Some(request))
            }
            // Its start was pushed out (the stream keeps at most so many bytes).
            Ok(_) => Ok(None),
            Err(error) => {
                tracing::error!(%request_id, error = %error_chain(&error), "unreadable first chunk of a turn");
                Ok(None)
            }
        },
        Err(error) if error.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Err(error) => Err(ApiError::bus_unavailable(error_chain(&error))),
    }
}

async fn progress_stream(state: &AppState) -> Result<Stream<()>, ApiError> {
    state
        .jetstream()
        .get_stream_no_info(state.subjects().chat_progress_stream())
        .await
        .map_err(|error| ApiError::bus_unavailable(error_chain(&error)))
}

/// A turn's chunks, read in order from the progress stream.
pub(crate) struct Progress {
    stream: Stream<()>,
    subject: String,
    messages: Ordered,
    /// The sequence of the last chunk read (shown or not).
    read: u64,
}

impl Progress {
    /// Reads `user`'s turn `request_id` from just after the chunk `after` (from its
    /// start with 0).
    pub(crate) async fn open(
        state: &AppState,
        user: &UserId,
        request_id: RequestId,
        after: u64,
    ) -> Result<Self, ApiError> {
        let stream = progress_stream(state).await?;
        let subject = state.subjects().chat_stream(user, request_id);
        let deliver_policy = match after {
            0 => DeliverPolicy::All,
            after => DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            },
        };
        let consumer = stream
            .create_consumer(OrderedConfig {
                deliver_subject: state.client().new_inbox(),
                filter_subject: subject.clone(),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|error| ApiError::bus_unavailable(error_chain(&error)))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|error| ApiError::bus_unavailable(error_chain(&error)))?;
        Ok(Self {
            stream,
            subject,
            messages,
            read: after,
        })
    }

    /// The next chunk with its sequence (`None` for a chunk that cannot be read);
    /// `None` when the consumer ended.
    async fn next(&mut self) -> Option<Option<(u64, ChatStreamChunk)>> {
        loop {
            let message = match self.messages.next().await? {
                Ok(message) => message,
                Err(error) => {
                    // The ordered consumer recreates itself and goes on from where it
                    // was; a pause keeps a bus outage from spinning here.
                    tracing::warn!(error = %error_chain(&error), "progress consumer hiccup");
                    tokio::time::sleep(CONSUMER_PAUSE).await;
                    continue;
                }
            };
            let sequence = match message.info() {
                Ok(info) => info.stream_sequence,
                Err(error) => {
                    tracing::warn!(%error, "progress chunk without stream info");
                    continue;
                }
            };
            self.read = sequence;
            return Some(decode_chunk(&message.payload).map(|chunk| (sequence, chunk)));
        }
    }

    /// The sequence of the turn's last stored chunk. (Not a method: `Progress` is not
    /// `Sync`, and the relay's future must be `Send`.)
    async fn last_stored(stream: &Stream<()>, subject: &str) -> Option<u64> {
        match stream.direct_get_last_for_subject(subject).await {
            Ok(message) => Some(message.sequence),
            Err(error) => {
                if error.kind() != DirectGetErrorKind::NotFound {
                    tracing::warn!(error = %error_chain(&error), "failed to look up a turn's last chunk");
                }
                None
            }
        }
    }

    /// Sends every chunk stored so far; false when the client went away.
    async fn drain(&mut self, events: &mpsc::Sender<Event>, render: &mut impl RenderTurn) -> bool {
        let Some(last) = Self::last_stored(&self.stream, &self.subject).await else {
            return true;
        };
        while self.read < last {
            match tokio::time::timeout(DRAIN_TIMEOUT, self.next()).await {
                Ok(Some(Some((sequence, chunk)))) => {
                    if !send_all(events, render.chunk(sequence, chunk)).await {
                        return false;
                    }
                }
                Ok(Some(None)) => {}
                Ok(None) | Err(_) => {
                    tracing::warn!(
                        read = self.read,
                        last,
                        "progress chunks missing at the end of a turn"
                    );
                    break;
                }
            }
        }
        true
    }
}

fn decode_chunk(payload: &[u8]) -> Option<ChatStreamChunk> {
    match platform::bus::decode_json::<ChatStreamChunk>(payload) {
        Ok(chunk) => Some(chunk),
        Err(error) => {
            tracing::warn!(%error, "ignoring an unreadable stream chunk");
            None
        }
    }
}

/// How a turn's chunks and its end become SSE events: the API's named events with
/// ids ([`ApiEvents`]), or ChatKit's thread stream events (`crate::chatkit`).
pub(crate) trait RenderTurn: Send + 'static {
    /// The events the chunk with progress-stream `sequence` becomes (none for chunks
    /// the client is not shown).
    fn chunk(&mut self, sequence: u64, chunk: ChatStreamChunk) -> Vec<Event>;
    /// The last events: for the reply, or for why waiting for it ended.
    fn end(&mut self, end: Result<ChatReply, ApiError>) -> Vec<Event>;
}

/// The API's events: `delta`, `tool_call_started`, `tool_call_finished`,
/// `approval_required` with the chunk's sequence as id, then `final` or `error` (id
/// `end`).
pub(crate) struct ApiEvents;

impl RenderTurn for ApiEvents {
    fn chunk(&mut self, sequence: u64, chunk: ChatStreamChunk) -> Vec<Event> {
        chunk_event(chunk)
            .map(|(name, data)| {
                Event::default()
                    .id(sequence.to_string())
                    .event(name)
                    .data(data.to_string())
            })
            .into_iter()
            .collect()
    }

    fn end(&mut self, end: Result<ChatReply, ApiError>) -> Vec<Event> {
        match end {
            Ok(reply) => end_event(reply).into_iter().collect(),
            Err(error) => vec![error_event(&error)],
        }
    }
}

/// Sends `batch` in order; false when the client went away.
async fn send_all(events: &mpsc::Sender<Event>, batch: Vec<Event>) -> bool {
    for event in batch {
        if events.send(event).await.is_err() {
            return false;
        }
    }
    true
}

/// A turn to relay as SSE events.
pub(crate) struct Follow {
    pub request_id: RequestId,
    pub conversation_id: ConversationId,
    /// Its chunks; `None` when the progress stream holds none (expired, or unreadable).
    pub progress: Option<Progress>,
    /// Its reply, when it was already stored.
    pub stored: Option<ChatReply>,
    /// The live reply, subscribed before `stored` was looked up.
    pub replies: async_nats::Subscriber,
}

impl Follow {
    /// A turn just started: its progress read from its first chunk.
    pub(crate) async fn started(state: &AppState, user: &UserId, started: StartedTurn) -> Self {
        let progress = match Progress::open(state, user, started.request_id, 0).await {
            Ok(progress) => Some(progress),
            Err(error) => {
                // The turn is queued: its end still comes, only its progress is missed.
                tracing::warn!(%error, "cannot read the turn's progress");
                None
            }
        };
        Self {
            request_id: started.request_id,
            conversation_id: started.conversation_id,
            progress,
            stored: started.stored,
            replies: started.replies,
        }
    }
}

/// Sends the turn's chunks, then its end, rendered by `render`, to `events`: until the
/// reply arrives, the wait times out, the server stops or the client goes away. (The
/// API's renderer ends a turn paused for an approval after `approval_required`, with
/// no end event.)
pub(crate) async fn relay(
    state: AppState,
    follow: Follow,
    events: mpsc::Sender<Event>,
    mut render: impl RenderTurn,
) {
    let Follow {
        request_id,
        conversation_id,
        mut progress,
        stored,
        mut replies,
    } = follow;
    let reply = match stored {
        Some(reply) => Ok(reply),
        None => {
            let deadline = turn::deadline(state.settings().reply_timeout);
            loop {
                tokio::select! {
                    // Chunks first: a chunk and the reply may both be waiting, and the
                    // chunk was sent earlier.
                    biased;
                    () = events.closed() => {
                        tracing::info!(%request_id, "stream client went away, the turn goes on");
                        return;
                    }
                    chunk = next_of(&mut progress), if progress.is_some() => match chunk {
                        Some(Some((sequence, chunk))) => {
                            if !send_all(&events, render.chunk(sequence, chunk)).await {
                                return;
                            }
                        }
                        Some(None) => {}
                        None => progress = None,
                    },
                    reply = turn::next_reply(&state, &mut replies, request_id, deadline) => break reply,
                }
            }
        }
    };
    // The worker publishes every chunk before the reply: what the progress stream
    // holds up to its last chunk is the rest of the turn.
    if let Some(progress) = progress.as_mut()
        && !progress.drain(&events, &mut render).await
    {
        return;
    }
    let end = reply.map_err(|end| {
        let turn = TurnIds {
            request_id,
            conversation_id,
        };
        turn::wait_error(end, turn)
    });
    send_all(&events, render.end(end)).await;
}

async fn next_of(progress: &mut Option<Progress>) -> Option<Option<(u64, ChatStreamChunk)>> {
    progress.as_mut()?.next().await
}

/// `final` with the answer, or `error` for a failed turn; none for a paused turn,
/// whose last event is its `approval_required` chunk.
fn end_event(reply: ChatReply) -> Option<Event> {
    if matches!(reply.outcome, ChatOutcome::PendingApproval { .. }) {
        return None;
    }
    Some(match answer(reply) {
        Ok(answer) => Event::default()
            .id(END_EVENT_ID)
            .event("final")
            .data(serde_json::to_string(&answer).unwrap_or_default()),
        Err(error) => error_event(&error),
    })
}

fn error_event(error: &ApiError) -> Event {
    if error.status().is_server_error() {
        tracing::warn!(code = error.code(), error = %error, "chat stream ended with an error");
    }
    Event::default()
        .id(END_EVENT_ID)
        .event("error")
        .data(serde_json::to_string(&error.body()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn parsed(value: &[u8]) -> Result<Option<LastEventId>, String> {
        let mut headers = HeaderMap::new();
        headers.insert(
            "last-event-id",
            HeaderValue::from_bytes(value).expect("a header value"),
        );
        LastEventId::from_headers(&headers).map_err(|error| error.code().to_owned())
    }

    #[test]
    fn last_event_ids_are_chunk_sequences_or_the_end() {
        assert_eq!(LastEventId::from_headers(&HeaderMap::new()).unwrap(), None);
        assert_eq!(parsed(b"42"), Ok(Some(LastEventId::Chunk(42))));
        assert_eq!(parsed(b" 7 "), Ok(Some(LastEventId::Chunk(7))));
        assert_eq!(parsed(b"end"), Ok(Some(LastEventId::End)));
        assert_eq!(
            parsed(b"0000000000000000000000042"),
            Ok(Some(LastEventId::Chunk(42)))
        );
        assert_eq!(
            parsed(b"9999999999999999999"),
            Ok(Some(LastEventId::Chunk(9_999_999_999_999_999_999)))
        );
        for malformed in [
            &b""[..],
            b"-1",
            b"+1",
            b"1.5",
            b"END",
            b"abc",
            b"99999999999999999999999",
            // Fits a u64, but has more digits than the API description allows.
            b"10000000000000000000",
            b"00904441091050436833729360\t\t \t",
            b"\xff",
        ] {
            assert_eq!(
                parsed(malformed),
                Err("invalid_last_event_id".to_owned()),
                "{malformed:?}"
            );
        }
    }

    #[test]
    fn request_ids_must_be_ids() {
        let id = RequestId::new();
        assert_eq!(parse_request_id(&id.to_string()).unwrap(), id);
        assert_eq!(
            parse_request_id("42").unwrap_err().code(),
            "invalid_request_id"
        );
    }
}
