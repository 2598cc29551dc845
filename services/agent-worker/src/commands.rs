//! Commands on conversations and turns, from the gateway (NATS request-reply on
//! `conversations.commands`, queue group `agent-workers`): rename, delete, cancel a
//! turn, record feedback. The workers own the conversation streams, so these are appended here, through
//! the same repository (and expected versions) as the turns themselves.
//!
//! A cancellation is the turn's ending, recorded like any other (`TurnFailed` with
//! code `cancelled`, under the turn's one ending id): whichever ending is recorded
//! first stands. The replica running the turn learns it from the broadcast on
//! `chat.cancelled.<request_id>` (and, failing that, from its next append).

use std::sync::Arc;
use std::time::Duration;

use eventlog::{EventMetadata, Executed};
use proto_schemas::chat::{ChatErrorCode, ChatOutcome, ChatRequest};
use proto_schemas::conversations::{
    ConversationCommand, ConversationCommandReply, ConversationTitle, check_feedback_items,
};
use proto_schemas::events::{ConversationEvent, FeedbackKind, StreamId};
use proto_schemas::{ConversationId, EventId, UserId};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::conversation::Conversation;
use crate::prompt;
use crate::turn::{RecordedEnding, TurnError, Worker};

/// How long a stopping replica keeps answering commands already delivered to it.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Commands one replica handles at once.
const CONCURRENCY: usize = 32;

/// Answers conversation commands from `subscriber` until `shutdown`.
pub(crate) async fn serve(
    worker: Arc<Worker>,
    subscriber: async_nats::Subscriber,
    shutdown: CancellationToken,
) {
    platform::bus::serve(
        vec![subscriber],
        CONCURRENCY,
        shutdown,
        DRAIN_TIMEOUT,
        "conversation commands",
        move |message| {
            let worker = Arc::clone(&worker);
            async move { answer(&worker, &message).await }
        },
    )
    .await;
}

async fn answer(worker: &Worker, message: &async_nats::Message) {
    let span = tracing::info_span!("conversation_command", command = tracing::field::Empty);
    platform::bus::follow_trace(&span, message.headers.as_ref());
    async {
        let reply = match platform::bus::decode_json::<ConversationCommand>(&message.payload) {
            Ok(command) => {
                tracing::Span::current().record("command", command_name(&command));
                worker.handle_command(command).await
            }
            Err(error) => {
                tracing::warn!(%error, "malformed conversation command");
                ConversationCommandReply::Invalid {
                    reason: format!("malformed conversation command: {error}"),
                }
            }
        };
        if let Err(error) = platform::bus::reply_json(&worker.bus, message, &reply).await {
            tracing::warn!(error = %platform::error_chain(&error), "failed to reply to a conversation command");
        }
    }
    .instrument(span)
    .await;
}

fn command_name(command: &ConversationCommand) -> &'static str {
    match command {
        ConversationCommand::Rename { .. } => "rename",
        ConversationCommand::Delete { .. } => "delete",
        ConversationCommand::CancelTurn { .. } => "cancel_turn",
        ConversationCommand::Feedback { .. } => "feedback",
    }
}

/// What a decision on the conversation's state came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Done,
    NotFound,
}

impl Worker {
    pub(crate) async fn handle_command(
        &self,
        command: ConversationCommand,
    ) -> ConversationCommandReply {
        let outcome = match command {
            ConversationCommand::Rename {
                user_id,
                conversation_id,
                title,
            } => match ConversationTitle::parse(&title) {
                Ok(title) => self.rename(&user_id, conversation_id, title).await,
                Err(error) => {
                    return ConversationCommandReply::Invalid {
                        reason: error.to_string(),
                    };
                }
            },
            ConversationCommand::Delete {
                user_id,
                conversation_id,
            } => self.delete(&user_id, conversation_id).await,
            ConversationCommand::CancelTurn { request } => self.cancel(&request).await,
            ConversationCommand::Feedback {
                user_id,
                conversation_id,
                item_ids,
                kind,
            } => match check_feedback_items(&item_ids) {
                Ok(()) => {
                    self.feedback(&user_id, conversation_id, item_ids, kind)
                        .await
                }
                Err(reason) => return ConversationCommandReply::Invalid { reason },
            },
        };
        outcome.unwrap_or_else(|error| {
            tracing::warn!(error = %platform::error_chain(&error), "conversation command failed");
            ConversationCommandReply::Unavailable {
                reason: "the event log is unavailable; try again".to_owned(),
            }
        })
    }

    async fn rename(
        &self,
        user: &UserId,
        conversation_id: ConversationId,
        title: ConversationTitle,
    ) -> Result<ConversationCommandReply, TurnError> {
        let title = title.into_inner();
        self.change(user, conversation_id, |_| {
            // A fresh id each time: renaming again to an earlier title is a new change.
            (
                EventId::new(),
                ConversationEvent::ConversationRenamed {
                    title: title.clone(),
                },
            )
        })
        .await
    }

    async fn delete(
        &self,
        user: &UserId,
        conversation_id: ConversationId,
    ) -> Result<ConversationCommandReply, TurnError> {
        self.change(user, conversation_id, |id| {
            // Derived: a retried delete finds it stored and changes nothing.
            (
                EventId::derived(id.as_uuid(), "conversation-deleted", 0),
                ConversationEvent::ConversationDeleted {},
            )
        })
        .await
    }

    async fn feedback(
        &self,
        user: &UserId,
        conversation_id: ConversationId,
        item_ids: Vec<String>,
        kind: FeedbackKind,
    ) -> Result<ConversationCommandReply, TurnError> {
        self.change(user, conversation_id, |_| {
            // A fresh id each time: a person may change their mind, and each rating is
            // history.
            (
                EventId::new(),
                ConversationEvent::FeedbackGiven {
                    item_ids: item_ids.clone(),
                    kind,
                },
            )
        })
        .await
    }

    /// Appends the event `event` makes to `user`'s (live) conversation; not found for
    /// anyone else's, a deleted one or none.
    async fn change(
        &self,
        user: &UserId,
        conversation_id: ConversationId,
        event: impl Fn(ConversationId) -> (EventId, ConversationEvent),
    ) -> Result<ConversationCommandReply, TurnError> {
        let stream = StreamId::Conversation(conversation_id);
        let metadata = EventMetadata::traced(None, None, Some(user.to_string()));
        let executed = self
            .conversations
            .execute(&stream, &metadata, |conversation: &Conversation| {
                if conversation.is_visible_to(user) {
                    (vec![event(conversation_id)], Verdict::Done)
                } else {
                    (Vec::new(), Verdict::NotFound)
                }
            })
            .await?;
        let verdict = match executed {
            Executed::Decided {
                output, appended, ..
            } => {
                if let Some(outcome) = appended {
                    self.notify_appended(&stream, outcome.last_position).await;
                }
                output
            }
            Executed::AlreadyStored(_) => Verdict::Done,
        };
        Ok(match verdict {
            Verdict::Done => ConversationCommandReply::Done,
            Verdict::NotFound => ConversationCommandReply::NotFound,
        })
    }

    /// Records the end of `request`'s turn as cancelled (unless it has ended) and
    /// tells every replica, so that the one running it stops now.
    async fn cancel(&self, request: &ChatRequest) -> Result<ConversationCommandReply, TurnError> {
        let RecordedEnding { reply, recorded } = self
            .record_failure(request, ChatErrorCode::Cancelled, prompt::CANCELLED_MESSAGE)
            .await?;
        match &reply.outcome {
            ChatOutcome::Failed { error } if error.code == ChatErrorCode::ConversationNotFound => {
                return Ok(ConversationCommandReply::NotFound);
            }
            // Ended before, a cancelled turn too: that ending stands.
            _ if !recorded => return Ok(ConversationCommandReply::AlreadyEnded),
            _ => {}
        }
        if let Err(error) = self
            .bus
            .publish(
                self.subjects.turn_cancelled(request.request_id),
                Default::default(),
            )
            .await
        {
            // The running replica still finds the ending at its next append.
            tracing::warn!(%error, "failed to broadcast a cancellation");
        }
        self.publish_reply(&reply).await?;
        tracing::info!(request_id = %request.request_id, "turn cancelled");
        Ok(ConversationCommandReply::Done)
    }
}
