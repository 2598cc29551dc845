//! One chat turn as the gateway sees it: check the message, settle the request id
//! (fresh, or the one an `Idempotency-Key` already stands for), subscribe to the
//! turn's reply subject, then publish the turn's `Accepted` chunk to the progress
//! stream and the request to the requests stream (each with a message id derived
//! from the request id), and wait for the reply.
//!
//! Subscribing before publishing means a fast worker's reply cannot be missed; a
//! reused request id additionally looks for a reply already stored in the replies
//! stream, which covers retries that arrive after the turn finished. The turn's
//! progress is read back from the progress stream (`crate::progress`), from its start,
//! so nothing published before the reader was ready is missed.

use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::DirectGetErrorKind;
use axum::extract::{FromRequest, Request};
use axum::http::HeaderMap;
use futures::StreamExt as _;
use proto_schemas::chat::{
    ChatMessage, ChatReply, ChatRequest, ChatStreamChunk, InvalidChatMessage, TurnKind,
};
use proto_schemas::{ConversationId, RequestId, UserId};

use crate::api::ChatBody;
use crate::error::{ApiError, TurnIds};
use crate::extract::ApiJson;
use crate::idempotency::{self, Claim, Claimed, IdempotencyKey};
use backon::Retryable as _;
use platform::error_chain;
use platform::streams::QueueRefusal;

use crate::state::AppState;

/// A chat turn to queue, checked: a message that passed validation, or a regenerate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChatInput {
    /// Empty for a regenerate (the worker answers the last recorded message).
    pub message: String,
    /// `None` starts a new conversation.
    pub conversation: Option<ConversationId>,
    pub kind: TurnKind,
}

impl ChatInput {
    /// Messages [`ChatMessage::parse`] refuses (blank, or over
    /// [`MESSAGE_MAX_CHARS`](proto_schemas::chat::MESSAGE_MAX_CHARS) characters) and
    /// conversation ids that are not UUIDs → 422.
    pub(crate) fn parse(body: ChatBody) -> Result<Self, ApiError> {
        let message = ChatMessage::parse(body.message).map_err(|error| {
            let code = match error {
                InvalidChatMessage::Empty => "empty_message",
                InvalidChatMessage::TooLong { .. } => "message_too_long",
                InvalidChatMessage::NulCharacter => "invalid_message",
            };
            ApiError::invalid(code, error.to_string())
        })?;
        let conversation = match body.conversation_id.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(raw) => Some(raw.parse::<ConversationId>().map_err(|_| {
                ApiError::invalid(
                    "invalid_conversation_id",
                    format!("conversation_id {raw:?} is not a valid id"),
                )
            })?),
        };
        Ok(Self {
            message: message.into_inner(),
            conversation,
            kind: TurnKind::Message,
        })
    }

    /// Answer `conversation`'s last message again.
    pub(crate) fn regenerate(conversation: ConversationId) -> Self {
        Self {
            message: String::new(),
            conversation: Some(conversation),
            kind: TurnKind::Regenerate,
        }
    }
}

/// A new turn as a chat route receives it: the checked input, and the
/// `Idempotency-Key` that makes a retry of it safe.
#[derive(Debug)]
pub(crate) struct TurnRequest {
    pub input: ChatInput,
    pub key: Option<IdempotencyKey>,
}

impl TurnRequest {
    /// Answer `conversation`'s last message again, keyed by the request's headers.
    pub(crate) fn regenerate(
        conversation: ConversationId,
        headers: &HeaderMap,
    ) -> Result<Self, ApiError> {
        Ok(Self {
            input: ChatInput::regenerate(conversation),
            key: IdempotencyKey::from_headers(headers)?,
        })
    }
}

/// A chat message's turn: the body's errors first, as on every JSON route, then the
/// key's, then the message's.
impl FromRequest<AppState> for TurnRequest {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let key = IdempotencyKey::from_headers(request.headers());
        let ApiJson(body) = ApiJson::<ChatBody>::from_request(request, state).await?;
        let key = key?;
        Ok(Self {
            input: ChatInput::parse(body)?,
            key,
        })
    }
}

/// A published (or already answered) turn, with its reply subscription open.
#[derive(Debug)]
pub(crate) struct StartedTurn {
    pub request_id: RequestId,
    pub conversation_id: ConversationId,
    /// The reply, when a retried request finds it already stored.
    pub stored: Option<ChatReply>,
    pub replies: async_nats::Subscriber,
}

/// Settles the request id, subscribes and publishes the request.
pub(crate) async fn start(
    state: &AppState,
    user: UserId,
    input: ChatInput,
    key: Option<IdempotencyKey>,
) -> Result<StartedTurn, ApiError> {
    let proposed = Claim {
        request_id: RequestId::new(),
        conversation_id: input.conversation.unwrap_or_default(),
        new_conversation: input.conversation.is_none(),
        fingerprint: idempotency::fingerprint(&input.message, input.conversation, input.kind),
    };
    let bucket_key = key.as_ref().map(|key| idempotency::bucket_key(&user, key));
    let claimed = match &bucket_key {
        None => Claimed::New(proposed),
        Some(bucket_key) => {
            // Claiming is create-if-absent: a retry after a claim that went through
            // unconfirmed finds it, with the same fingerprint, and carries on with it.
            let attempt = || async {
                let store = state.idempotency().await?;
                idempotency::claim(store, bucket_key, proposed.clone()).await
            };
            attempt
                .retry(platform::retry::bus_outage())
                .when(ApiError::is_bus_outage)
                .await?
        }
    };
    let reused = matches!(claimed, Claimed::Existing(_));
    let Claim {
        request_id,
        conversation_id,
        new_conversation,
        ..
    } = claimed.claim().clone();
    tracing::Span::current().record("request_id", tracing::field::display(request_id));
    // A retry of an accepted message is not a new message: only new ones count.
    if !reused && let Err(refusal) = state.turn_rate().admit(&user) {
        return Err(unclaim(state, bucket_key.as_deref(), refusal).await);
    }

    let replies = subscribe_replies(state, request_id).await?;
    let mut turn = StartedTurn {
        request_id,
        conversation_id,
        stored: None,
        replies,
    };

    if reused {
        turn.stored = stored_reply(state, request_id).await;
        if turn.stored.is_some() {
            tracing::info!(%request_id, "answering a retried request from the stored reply");
            return Ok(turn);
        }
    }

    let request = ChatRequest {
        request_id,
        user_id: user,
        conversation_id,
        new_conversation,
        message: input.message,
        received_at: chrono::Utc::now(),
        kind: input.kind,
    };
    // The message ids derive from the request id: a publish repeated after one that
    // went through unconfirmed is dropped by the streams as a duplicate.
    let published = (|| publish(state, &request))
        .retry(platform::retry::bus_outage())
        .when(ApiError::is_bus_outage)
        .await;
    match published {
        Ok(()) => Ok(turn),
        Err(refusal) if !reused => Err(unclaim(state, bucket_key.as_deref(), refusal).await),
        Err(error) => Err(error),
    }
}

/// A new message refused at admission leaves nothing behind: its Idempotency-Key is
/// released, so that a retry with the same key is admitted (or refused) afresh rather
/// than taken for an accepted message. Any other error keeps the claim (the request
/// may have been queued without the gateway hearing back).
async fn unclaim(state: &AppState, bucket_key: Option<&str>, error: ApiError) -> ApiError {
    if let (Some(bucket_key), true) = (bucket_key, error.is_admission_refusal()) {
        match state.idempotency().await {
            Ok(store) => idempotency::release(store, bucket_key).await,
            Err(failed) => {
                tracing::warn!(error = %failed, "could not release a refused Idempotency-Key")
            }
        }
    }
    error
}

/// A request about a turn whose message is in the log already (an approval decision,
/// or the ending of a paused turn): no new message, and the turn's conversation.
pub(crate) fn about_turn(
    request_id: RequestId,
    user: UserId,
    conversation_id: ConversationId,
    kind: TurnKind,
) -> ChatRequest {
    ChatRequest {
        request_id,
        user_id: user,
        conversation_id,
        new_conversation: false,
        message: String::new(),
        received_at: chrono::Utc::now(),
        kind,
    }
}

/// Publishes the turn's `Accepted` chunk (`Nats-Msg-Id` = `<request id>/accepted`)
/// and then the request to its user's subject (`Nats-Msg-Id` = request id), and waits
/// for both acks. The requests stream refuses the request when the user, or everyone
/// together, has as many turns waiting or running as its limits allow; the chunk of
/// a refused turn is taken back.
pub(crate) async fn publish(state: &AppState, request: &ChatRequest) -> Result<(), ApiError> {
    let chunk = ChatStreamChunk::Accepted {
        request: request.clone(),
    };
    let accepted = PublishMessage::build()
        .payload(platform::bus::encode_json(&chunk).map_err(ApiError::internal)?)
        .headers(platform::bus::traced_headers())
        .message_id(format!("{}/accepted", request.request_id));
    // Sent first on the same connection: stored before any worker can take the
    // request, so the turn can be found (and cancelled) as soon as it is queued.
    let accepted = state
        .jetstream()
        .send_publish(
            state
                .subjects()
                .chat_stream(&request.user_id, request.request_id),
            accepted,
        )
        .await
        .map_err(|error| ApiError::bus_unavailable(error_chain(&error)))?;
    let payload = platform::bus::encode_json(request).map_err(ApiError::internal)?;
    // Headers first: `headers` replaces the map that `message_id` writes into.
    let message = PublishMessage::build()
        .payload(payload)
        .headers(platform::bus::traced_headers())
        .message_id(request.message_id());
    let refused =
        |error: async_nats::jetstream::context::PublishError| match QueueRefusal::of(&error) {
            Some(QueueRefusal::UserLimit) => ApiError::TooManyTurns {
                limit: state.settings().queue_limits.per_user,
            },
            Some(QueueRefusal::Full) => ApiError::Busy,
            None => ApiError::bus_unavailable(error_chain(&error)),
        };
    let queued = state
        .jetstream()
        .send_publish(state.subjects().chat_request(&request.user_id), message)
        .await
        .map_err(refused)?;
    let (accepted, queued) = tokio::join!(accepted.into_future(), queued.into_future());
    let accepted = match accepted {
        Ok(ack) => ack,
        Err(error) => {
            if error.kind() == PublishErrorKind::StreamNotFound {
                // Lost with a NATS restart (memory storage): the retry finds it again.
                state.restore_progress_stream().await;
            }
            return Err(ApiError::bus_unavailable(error_chain(&error)));
        }
    };
    let ack = match queued {
        Ok(ack) => ack,
        Err(error) => {
            let error = refused(error);
            if error.is_admission_refusal() && !accepted.duplicate {
                forget_accepted(state, accepted.sequence).await;
            }
            return Err(error);
        }
    };
    tracing::info!(
        request_id = %request.request_id,
        conversation_id = %request.conversation_id,
        new_conversation = request.new_conversation,
        duplicate = ack.duplicate,
        sequence = ack.sequence,
        "chat request published"
    );
    Ok(())
}

/// Deletes the `Accepted` chunk of a turn the requests stream refused: that turn never
/// existed. Best effort; a chunk left behind expires with the progress stream's age.
async fn forget_accepted(state: &AppState, sequence: u64) {
    let deleted = match state
        .jetstream()
        .get_stream_no_info(state.subjects().chat_progress_stream())
        .await
    {
        Ok(stream) => stream
            .delete_message(sequence)
            .await
            .map(drop)
            .map_err(|error| error_chain(&error)),
        Err(error) => Err(error_chain(&error)),
    };
    if let Err(error) = deleted {
        tracing::warn!(%error, sequence, "failed to delete the progress of a refused turn");
    }
}

/// The reply the replies stream keeps for `request_id`, if any. Failures to look are
/// logged and treated as "none yet": the subscription still catches a live reply.
pub(crate) async fn stored_reply(state: &AppState, request_id: RequestId) -> Option<ChatReply> {
    let subject = state.subjects().chat_reply(request_id);
    let stream = match state
        .jetstream()
        .get_stream_no_info(state.subjects().chat_replies_stream())
        .await
    {
        Ok(stream) => stream,
        Err(error) => {
            tracing::warn!(error = %error_chain(&error), "cannot open the replies stream");
            return None;
        }
    };
    match stream.direct_get_last_for_subject(subject).await {
        Ok(message) => match platform::bus::decode_json::<ChatReply>(&message.payload) {
            Ok(reply) if reply.request_id == request_id => Some(reply),
            Ok(reply) => {
                tracing::warn!(%request_id, other = %reply.request_id, "stored reply names another request");
                None
            }
            Err(error) => {
                tracing::error!(%request_id, error = %error_chain(&error), "stored reply is unreadable");
                None
            }
        },
        Err(error) if error.kind() == DirectGetErrorKind::NotFound => None,
        Err(error) => {
            tracing::warn!(%request_id, error = %error_chain(&error), "failed to look up a stored reply");
            None
        }
    }
}

/// Subscribes to the replies of `request_id`; subscribe before looking for a stored
/// reply, so that a reply in between is not missed.
pub(crate) async fn subscribe_replies(
    state: &AppState,
    request_id: RequestId,
) -> Result<async_nats::Subscriber, ApiError> {
    state
        .client()
        .subscribe(state.subjects().chat_reply(request_id))
        .await
        .map_err(|error| ApiError::bus_unavailable(error_chain(&error)))
}

/// Waits up to the reply timeout for the turn's next reply on `replies`; a wait that
/// ends without one is the error it means.
pub(crate) async fn wait_for_reply(
    state: &AppState,
    replies: &mut async_nats::Subscriber,
    request_id: RequestId,
    conversation_id: ConversationId,
) -> Result<ChatReply, ApiError> {
    let deadline = deadline(state.settings().reply_timeout);
    next_reply(state, replies, request_id, deadline)
        .await
        .map_err(|end| {
            let turn = TurnIds {
                request_id,
                conversation_id,
            };
            wait_error(end, turn)
        })
}

/// Why waiting for a reply ended without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitEnd {
    TimedOut,
    ShuttingDown,
    /// The subscription ended (the NATS client was closed).
    Closed,
}

/// How often a wait for a reply also looks in the replies stream: a reply published
/// while this gateway was reconnecting to NATS never reaches the subscription, but it
/// is stored.
const REPLY_RECHECK: Duration = Duration::from_secs(5);

/// Waits until `deadline` for the turn's reply on `replies` (and, every
/// [`REPLY_RECHECK`], in the replies stream). Replies that cannot be read or name
/// another request are logged and skipped.
pub(crate) async fn next_reply(
    state: &AppState,
    replies: &mut async_nats::Subscriber,
    request_id: RequestId,
    deadline: tokio::time::Instant,
) -> Result<ChatReply, WaitEnd> {
    let mut recheck =
        tokio::time::interval_at(tokio::time::Instant::now() + REPLY_RECHECK, REPLY_RECHECK);
    loop {
        let message = tokio::select! {
            message = replies.next() => message.ok_or(WaitEnd::Closed)?,
            _ = recheck.tick() => match stored_reply(state, request_id).await {
                Some(reply) => return Ok(reply),
                None => continue,
            },
            () = tokio::time::sleep_until(deadline) => return Err(WaitEnd::TimedOut),
            () = state.shutdown().cancelled() => return Err(WaitEnd::ShuttingDown),
        };
        match platform::bus::decode_json::<ChatReply>(&message.payload) {
            Ok(reply) if reply.request_id == request_id => return Ok(reply),
            Ok(reply) => {
                tracing::warn!(%request_id, other = %reply.request_id, "ignoring a reply for another request")
            }
            Err(error) => {
                tracing::error!(%request_id, error = %error_chain(&error), "ignoring an unreadable reply")
            }
        }
    }
}

/// The deadline of a turn that starts waiting now.
pub(crate) fn deadline(timeout: Duration) -> tokio::time::Instant {
    tokio::time::Instant::now() + timeout
}

/// The error a wait that ended without a reply becomes.
pub(crate) fn wait_error(end: WaitEnd, turn: TurnIds) -> ApiError {
    match end {
        WaitEnd::TimedOut => ApiError::ReplyTimeout { turn },
        WaitEnd::ShuttingDown => ApiError::ShuttingDown { turn },
        WaitEnd::Closed => ApiError::bus_unavailable("reply subscription closed"),
    }
}

#[cfg(test)]
mod tests {
    use proto_schemas::chat::MESSAGE_MAX_CHARS;

    use super::*;

    fn body(message: &str, conversation_id: Option<&str>) -> ChatBody {
        ChatBody {
            message: message.to_owned(),
            conversation_id: conversation_id.map(str::to_owned),
        }
    }

    #[test]
    fn messages_are_checked() {
        assert_eq!(ChatInput::parse(body("hi", None)).unwrap().message, "hi");
        for empty in ["", "   ", "\n\t"] {
            assert_eq!(
                ChatInput::parse(body(empty, None)).unwrap_err().code(),
                "empty_message"
            );
        }
        let longest = "é".repeat(MESSAGE_MAX_CHARS);
        assert!(ChatInput::parse(body(&longest, None)).is_ok());
        let error = ChatInput::parse(body(&format!("{longest}x"), None)).unwrap_err();
        assert_eq!(error.code(), "message_too_long");
        assert!(error.to_string().contains("4000"), "{error}");
    }

    #[test]
    fn conversation_ids_are_checked() {
        let id = ConversationId::new();
        let input = ChatInput::parse(body("hi", Some(&id.to_string()))).unwrap();
        assert_eq!(input.conversation, Some(id));
        assert_eq!(
            ChatInput::parse(body("hi", Some(""))).unwrap().conversation,
            None
        );
        let error = ChatInput::parse(body("hi", Some("42"))).unwrap_err();
        assert_eq!(error.code(), "invalid_conversation_id");
    }
}
