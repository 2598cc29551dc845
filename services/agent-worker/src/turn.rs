//! Running one chat turn: the I/O around [`crate::machine`]'s pure decisions.
//!
//! A turn works on the conversation's state ([`Conversation`], loaded through the
//! event log's typed core: from this replica's cache, else a snapshot and the events
//! after it), asks [`machine::next_action`] what to do, does it (a model call, tool
//! commands) and records the outcome with one append naming the version it decided
//! on (docs/ARCHITECTURE.md invariant 5). A cached state may be stale; the append
//! finds out, and the turn goes on from the fresh state. Every event id is derived
//! from the request, so a turn run twice, by a redelivery or by two workers at once,
//! records everything once; the first ending recorded (reply or failure) is the
//! turn's answer, and the reply is (re)published from it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use eventlog::{Appended, EventMetadata, Repository, RepositoryError, Versioned};
use proto_schemas::chat::{
    ChatError, ChatErrorCode, ChatOutcome, ChatReply, ChatRequest, ChatStreamChunk,
    PendingApproval, TurnKind,
};
use proto_schemas::events::{ConversationEvent, EventsAppended, StreamId};
use proto_schemas::tasks::{TaskCommand, TaskCommandReply, ToolCall};
use proto_schemas::{EventId, RequestId, Subjects};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::conversation::{Access, Conversation, KnownTurn};
use crate::machine::{self, Action, CallState, Ending, Next, TurnState, event_ids};
use crate::model::{ModelClient, ModelError};
use crate::prompt;
use crate::running::RunningTurns;
use crate::tools::ToolCatalog;

/// How often one decision is appended again on top of other turns of the same
/// conversation that keep getting there first, before the turn gives up (and is
/// redelivered).
const MAX_APPEND_ATTEMPTS: u32 = 20;

/// The shortest time between two text-delta chunks of one model step. A model streams
/// a token or a word per event; publishing each as a chunk of its own stores hundreds
/// of progress messages for one long answer (a listed task list: five per task). The
/// first delta of a step goes out at once, later ones at most this often, and what is
/// left when the step ends at once: a reader sees the first word as soon as it exists
/// and the text at 20 updates a second, which reads the same.
const DELTA_PUBLISH_INTERVAL: Duration = Duration::from_millis(50);

/// Settings of the turn loop.
#[derive(Debug, Clone)]
pub(crate) struct TurnSettings {
    /// Model calls one turn may make.
    pub max_model_steps: u32,
    /// Earlier user and assistant messages shown to the model.
    pub history_messages: usize,
    pub system_prompt: String,
    /// How long one task command may take.
    pub tool_timeout: Duration,
    /// Tries of one task command before the turn fails (and is redelivered).
    pub tool_attempts: u32,
    /// Tools that run only once the person approves the call (`AGENT_CONFIRM_TOOLS`).
    pub confirm_tools: BTreeSet<String>,
}

/// Why a turn could not finish now; the request is redelivered and resumes.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TurnError {
    #[error("the conversation failed to load or change")]
    Conversation(#[from] RepositoryError),
    #[error("conversation {stream} kept changing under the turn")]
    Contended { stream: String },
    #[error("task-service did not run tool call {name}: {reason}")]
    ToolUnavailable { name: String, reason: String },
    #[error("failed to publish the reply")]
    Publish(#[source] async_nats::Error),
    /// The person stopped the turn while it ran. Never leaves [`Worker::run_turn`],
    /// which ends the turn with the recorded cancellation.
    #[error("the turn was cancelled")]
    Cancelled,
}

impl TurnError {
    /// Whether a redelivery can help: not when the store refuses what the turn
    /// records (the same value would be refused again).
    pub(crate) fn is_permanent(&self) -> bool {
        match self {
            Self::Conversation(error) => error.is_permanent(),
            Self::Contended { .. }
            | Self::ToolUnavailable { .. }
            | Self::Publish(_)
            | Self::Cancelled => false,
        }
    }
}

impl From<eventlog::StoreError> for TurnError {
    fn from(error: eventlog::StoreError) -> Self {
        Self::Conversation(error.into())
    }
}

/// Everything a turn needs; shared by all turns of a replica.
#[derive(Debug)]
pub(crate) struct Worker {
    /// A short name for this replica in logs (which replica ran which turn).
    pub replica: String,
    pub conversations: Repository<Conversation>,
    pub bus: async_nats::Client,
    pub jetstream: jetstream::Context,
    pub subjects: Subjects,
    pub model: ModelClient,
    pub tools: ToolCatalog,
    /// The turns running on this replica, to stop one when it is cancelled.
    pub running: Arc<RunningTurns>,
    pub settings: TurnSettings,
}

/// How [`Worker::record_failure`] left a turn: the reply of the ending that stands.
#[derive(Debug)]
pub(crate) struct RecordedEnding {
    pub reply: ChatReply,
    /// Whether this call recorded the ending (false: the turn had ended before, or
    /// its conversation is not the user's).
    pub recorded: bool,
}

/// A turn in progress: its conversation as last seen and its own state.
struct Turn<'r> {
    request: &'r ChatRequest,
    stream: StreamId,
    conversation: Versioned<Conversation>,
    state: TurnState,
}

impl Worker {
    /// Runs (or resumes) the turn of `request` to its end and publishes its reply.
    ///
    /// Model failures end the turn (a friendly error reply and a `TurnFailed` event);
    /// `Err` means the store, the bus or task-service failed, and the turn can be
    /// resumed later from what it recorded.
    pub(crate) async fn run_turn(&self, request: &ChatRequest) -> Result<ChatReply, TurnError> {
        if let Some(reason) = machine::invalid_message(request) {
            tracing::warn!(%reason, "chat request refused");
            let reply = failed(request, ChatErrorCode::Internal, &reason);
            self.publish_reply(&reply).await?;
            return Ok(reply);
        }
        // Registered before the turn is read: a cancellation broadcast before this
        // was recorded before it, so the read below finds the ending.
        let running = self.running.register(request.request_id);
        let cancel = running.token();
        let mut turn = self.open(request).await?;
        if let TurnKind::Approval {
            approval_id,
            approve,
        } = request.kind
        {
            // The gateway lets only decisions on a paused turn through; the queue is
            // not trusted to hold only those. Nothing is recorded for any other.
            if turn.state.user_message.is_none() {
                tracing::warn!(%approval_id, "approval for a turn that has not started, refused");
                let reply = failed(
                    request,
                    ChatErrorCode::Internal,
                    prompt::NO_PAUSED_TURN_MESSAGE,
                );
                return Ok(reply);
            }
            self.decide(&mut turn, approval_id, approve).await?;
        }
        loop {
            if turn.conversation.state.access(request) == Access::NotFound {
                return self.not_found(request).await;
            }
            let start = turn.conversation.version == 0;
            let advanced =
                match machine::next_action(&turn.state, start, self.settings.max_model_steps) {
                    Action::Finish(ending) => {
                        let reply = reply_for(request, &turn.state, ending);
                        self.publish_reply(&reply).await?;
                        return Ok(reply);
                    }
                    Action::Pause(approval) => {
                        return self.pause(request, &turn.state, approval).await;
                    }
                    Action::RecordUserMessage { start } => {
                        // The message is recorded with the first model step's outcome:
                        // one append (and commit) fewer per turn. A crash before that
                        // append loses only the model call, which the redelivery makes
                        // again; nothing of the turn has run yet.
                        let Some(message) = turn_message(request, &turn.conversation.state) else {
                            tracing::info!("nothing to regenerate in this conversation");
                            let reply = failed(
                                request,
                                ChatErrorCode::NothingToRegenerate,
                                prompt::NOTHING_TO_REGENERATE_MESSAGE,
                            );
                            self.publish_reply(&reply).await?;
                            return Ok(reply);
                        };
                        let mut events = opening_events(request, start, message);
                        let mut opened = turn.state.clone();
                        for (_, event) in &events {
                            opened.apply(event);
                        }
                        let first =
                            machine::next_action(&opened, false, self.settings.max_model_steps);
                        match first {
                            Action::Advance { pending, next } => self
                                .advance(&turn, opened, &pending, next, cancel)
                                .await
                                .map(|more| {
                                    events.extend(more);
                                    events
                                }),
                            _ => Ok(events),
                        }
                    }
                    Action::Advance { pending, next } => {
                        self.advance(&turn, turn.state.clone(), &pending, next, cancel)
                            .await
                    }
                };
            let events = match advanced {
                Err(TurnError::Cancelled) => return self.stop(request).await,
                other => other?,
            };
            self.record(&mut turn, events).await?;
        }
    }

    /// Ends a turn stopped while it ran: the cancellation is in the log (it is recorded
    /// before it is broadcast), so the turn, read again, finishes with it; what the
    /// stopped step did but had not recorded is dropped (a tool call that had started
    /// stays applied in task-service, and a redelivery would not run it: the turn has
    /// ended). Recorded here too, should the broadcast ever come alone.
    async fn stop(&self, request: &ChatRequest) -> Result<ChatReply, TurnError> {
        tracing::info!("turn cancelled, stopped");
        let reply = self
            .record_failure(request, ChatErrorCode::Cancelled, prompt::CANCELLED_MESSAGE)
            .await?
            .reply;
        self.publish_reply(&reply).await?;
        Ok(reply)
    }

    /// Ends the turn of `request` with a failure, unless it has ended already (then
    /// that ending stands), and publishes the reply. Best effort: when the store is
    /// down the failure is still published, just not recorded.
    pub(crate) async fn end_with_failure(
        &self,
        request: &ChatRequest,
        code: ChatErrorCode,
        message: &str,
    ) -> ChatReply {
        let reply = self
            .record_failure(request, code, message)
            .await
            .map(|ended| ended.reply)
            .unwrap_or_else(|error| {
                tracing::error!(error = %platform::error_chain(&error), "failed to record the turn's failure");
                failed(request, code, message)
            });
        if let Err(error) = self.publish_reply(&reply).await {
            tracing::error!(error = %platform::error_chain(&error), "failed to publish the failure reply");
        }
        reply
    }

    /// Records the end of `request`'s turn as failed, unless it has ended already:
    /// the reply of the ending that stands (not published), and whether this call
    /// recorded it. A request that cannot use its conversation gets the not-found
    /// reply, and nothing is recorded.
    pub(crate) async fn record_failure(
        &self,
        request: &ChatRequest,
        code: ChatErrorCode,
        message: &str,
    ) -> Result<RecordedEnding, TurnError> {
        let mut turn = self.open(request).await?;
        let mut recorded = false;
        loop {
            if turn.conversation.state.access(request) == Access::NotFound {
                return Ok(RecordedEnding {
                    reply: failed(
                        request,
                        ChatErrorCode::ConversationNotFound,
                        prompt::CONVERSATION_NOT_FOUND_MESSAGE,
                    ),
                    recorded: false,
                });
            }
            if let Some(ending) = &turn.state.ending {
                return Ok(RecordedEnding {
                    reply: reply_for(request, &turn.state, ending.clone()),
                    recorded,
                });
            }
            // A turn that never got going still gets its conversation and message
            // recorded, so the failure sits where the user will look for it.
            let mut events = Vec::new();
            if turn.state.user_message.is_none()
                && let Some(message) = turn_message(request, &turn.conversation.state)
            {
                events = opening_events(request, turn.conversation.version == 0, message);
            }
            events.push(ended(
                request,
                Ending::Failed {
                    code,
                    message: message.to_owned(),
                },
            ));
            recorded = self.record(&mut turn, events).await?;
        }
    }

    /// The conversation and the turn's state, read as the store has them now: this
    /// replica's cached state plus the events after it (usually none, or the last
    /// turn's when another replica ran it), a snapshot and the events after it when
    /// nothing is cached. Replicas take turns of one conversation in any order, so a
    /// cached state is often one turn behind; one short read here is cheaper than the
    /// conflicted append (and its look-ups and retry) that trusting it would cost.
    async fn open<'r>(&self, request: &'r ChatRequest) -> Result<Turn<'r>, TurnError> {
        let stream = StreamId::Conversation(request.conversation_id);
        let conversation = self.conversations.load(&stream).await?;
        let state = self
            .turn_state(&stream, &conversation, request.request_id)
            .await?;
        Ok(Turn {
            request,
            stream,
            conversation,
            state,
        })
    }

    /// The turn's state from the conversation's, or from the log by request id when
    /// the conversation's state no longer holds it (a bounded read: one turn).
    async fn turn_state(
        &self,
        stream: &StreamId,
        conversation: &Versioned<Conversation>,
        request: RequestId,
    ) -> Result<TurnState, TurnError> {
        match conversation.state.turn(request) {
            KnownTurn::Known(state) => Ok(state),
            KnownTurn::Forgotten => {
                let name = stream.to_string();
                let caused = self
                    .conversations
                    .store()
                    .find_by_causation(request.as_uuid())
                    .await?;
                let mine: Vec<_> = caused
                    .into_iter()
                    .filter(|event| event.stream_id == name)
                    .collect();
                let events = Repository::<Conversation>::decode_all(&mine)?;
                Ok(TurnState::from_events(&events, request))
            }
        }
    }

    /// Appends `events`, decided on the turn's state, at the conversation's version:
    /// true when this call wrote them, false when the turn goes on from what another
    /// writer (or an earlier attempt) recorded instead.
    ///
    /// When another writer moved the conversation: if nothing changed for this
    /// request (the writer was another turn of the conversation), the same events go
    /// on top of it; otherwise (another worker ran this very turn) the turn goes on
    /// from the fresh state. Ids already stored mean the events are there.
    async fn record(
        &self,
        turn: &mut Turn<'_>,
        events: Vec<(EventId, ConversationEvent)>,
    ) -> Result<bool, TurnError> {
        let request = turn.request;
        let metadata = EventMetadata::traced(
            Some(request.request_id.as_uuid()),
            Some(request.request_id.as_uuid()),
            Some(request.user_id.to_string()),
        );
        for _ in 0..MAX_APPEND_ATTEMPTS {
            let appended = self
                .conversations
                .append(&turn.stream, &mut turn.conversation, &events, &metadata)
                .await;
            let fresh = match appended {
                Ok(Appended::Written(outcome)) => {
                    for (_, event) in &events {
                        turn.state.apply(event);
                    }
                    // Only the projection listens, and it also polls the log: one
                    // wake-up when the turn settles (ends, or waits for a person)
                    // brings every append of the turn in, a notice per model step
                    // fewer. Mid-turn, the read models may lag by the poll interval.
                    let settled = matches!(
                        machine::next_action(&turn.state, false, self.settings.max_model_steps),
                        Action::Finish(_) | Action::Pause(_)
                    );
                    if settled {
                        self.notify_appended(&turn.stream, outcome.last_position)
                            .await;
                    }
                    return Ok(true);
                }
                Ok(Appended::AlreadyStored(_)) => {
                    self.turn_state(&turn.stream, &turn.conversation, request.request_id)
                        .await?
                }
                // Part of the batch is in: the conversation was started by another
                // request meanwhile. Go on from what is there.
                Err(RepositoryError::PartiallyStored { .. }) => {
                    self.conversations
                        .refresh(&turn.stream, &mut turn.conversation)
                        .await?;
                    self.turn_state(&turn.stream, &turn.conversation, request.request_id)
                        .await?
                }
                Ok(Appended::Conflict { .. }) => {
                    let fresh = self
                        .turn_state(&turn.stream, &turn.conversation, request.request_id)
                        .await?;
                    // A decision to start the conversation was made on its absence,
                    // which no longer holds: decide again.
                    let starts = events.iter().any(|(_, event)| {
                        matches!(event, ConversationEvent::ConversationStarted { .. })
                    });
                    if fresh == turn.state && !starts {
                        continue;
                    }
                    fresh
                }
                Err(error) => return Err(error.into()),
            };
            turn.state = fresh;
            return Ok(false);
        }
        Err(TurnError::Contended {
            stream: turn.stream.to_string(),
        })
    }

    /// Records the person's decision on the call waiting for `approval_id`, if one
    /// is. A decision on a call that is not waiting (decided already, or unknown)
    /// changes nothing: the first decision recorded stands, and the turn goes on
    /// from the log as it is.
    async fn decide(
        &self,
        turn: &mut Turn<'_>,
        approval_id: proto_schemas::ApprovalId,
        approved: bool,
    ) -> Result<(), TurnError> {
        if turn.state.awaiting(approval_id).is_none() {
            tracing::info!(%approval_id, "no call waits for this approval; nothing to decide");
            return Ok(());
        }
        tracing::info!(%approval_id, approved, "tool call approval decided");
        let event = ConversationEvent::ToolCallApprovalDecided {
            request_id: turn.request.request_id,
            approval_id,
            approved,
        };
        self.record(
            turn,
            vec![(event_ids::approval_decided(approval_id), event)],
        )
        .await?;
        Ok(())
    }

    /// Pauses the turn before a call that needs the person's approval: tells the
    /// stream and publishes the pending reply. Nothing holds the turn meanwhile;
    /// the decision comes back as a request of its own ([`TurnKind::Approval`]).
    async fn pause(
        &self,
        request: &ChatRequest,
        state: &TurnState,
        approval: PendingApproval,
    ) -> Result<ChatReply, TurnError> {
        tracing::info!(approval_id = %approval.approval_id, tool = %approval.name, "turn paused for approval");
        self.publish_chunk(
            request,
            &ChatStreamChunk::ApprovalRequired {
                approval: approval.clone(),
            },
        )
        .await;
        let reply = ChatReply {
            request_id: request.request_id,
            conversation_id: request.conversation_id,
            user_id: Some(request.user_id.clone()),
            outcome: ChatOutcome::PendingApproval {
                approval,
                tool_calls: state.records(),
            },
        };
        self.publish_reply(&reply).await?;
        Ok(reply)
    }

    /// Wakes the log's tailers after a commit to `stream`.
    pub(crate) async fn notify_appended(&self, stream: &StreamId, last_position: i64) {
        let notice = EventsAppended {
            stream: stream.to_string(),
            last_position,
        };
        platform::bus::notify_appended(&self.bus, &self.subjects, &notice).await;
    }

    async fn not_found(&self, request: &ChatRequest) -> Result<ChatReply, TurnError> {
        tracing::info!(conversation_id = %request.conversation_id, "conversation not found for this user");
        let reply = failed(
            request,
            ChatErrorCode::ConversationNotFound,
            prompt::CONVERSATION_NOT_FOUND_MESSAGE,
        );
        self.publish_reply(&reply).await?;
        Ok(reply)
    }

    /// Runs the pending tool calls of `state` (the turn's state, or a copy ahead of it
    /// by events not yet recorded), then `next`: the events that record all of it,
    /// for one append.
    async fn advance(
        &self,
        turn: &Turn<'_>,
        mut state: TurnState,
        pending: &[(u32, u32)],
        next: Next,
        cancel: &CancellationToken,
    ) -> Result<Vec<(EventId, ConversationEvent)>, TurnError> {
        let request = turn.request;
        // The model of the next step must see these results: they go into `state`.
        let mut events = Vec::new();
        for &(step, index) in pending {
            // A tool call that has started runs to its end; none starts after a cancel.
            if cancel.is_cancelled() {
                return Err(TurnError::Cancelled);
            }
            let call = &state.steps[&step][index as usize];
            let result = if call.is_declined() {
                tracing::info!(tool = %call.name, "tool call declined by the person, not run");
                machine::declined_result(&call.name)
            } else {
                self.run_tool(request, call).await?
            };
            let event = ConversationEvent::ToolCallCompleted {
                request_id: request.request_id,
                call_id: call.call_id.clone(),
                name: call.name.clone(),
                result,
            };
            state.apply(&event);
            events.push((
                event_ids::tool_call_completed(request.request_id, step, index),
                event,
            ));
        }
        match next {
            Next::CallModel { step } => {
                events.extend(self.call_model(turn, &state, step, cancel).await?);
            }
            // The results so far are recorded; the next action pauses the turn.
            Next::AwaitApproval => {}
            Next::GiveUp => {
                tracing::warn!(
                    max_model_steps = self.settings.max_model_steps,
                    "model used every step of the turn"
                );
                events.push(ended(
                    request,
                    Ending::Replied(prompt::MAX_TURNS_MESSAGE.to_owned()),
                ));
            }
        }
        Ok(events)
    }

    /// One model step, and the events that record what it decided. A cancel drops the
    /// model call in flight (and so its HTTP request).
    async fn call_model(
        &self,
        turn: &Turn<'_>,
        state: &TurnState,
        step: u32,
        cancel: &CancellationToken,
    ) -> Result<Vec<(EventId, ConversationEvent)>, TurnError> {
        let request = turn.request;
        let history = turn
            .conversation
            .state
            .history_before(request.request_id, self.settings.history_messages);
        let messages = machine::model_messages(&self.settings.system_prompt, &history, state, step);
        // Deltas go through a channel so that a slow publish never stalls the model's
        // stream; the sender is dropped with the step, which ends the forwarding.
        let (deltas, mut forward) = tokio::sync::mpsc::unbounded_channel::<String>();
        let step_call = self.model.step(&messages, self.tools.tools(), move |text| {
            let _ = deltas.send(text);
        });
        let forwarding = async {
            let mut pacer = DeltaPacer::new(DELTA_PUBLISH_INTERVAL);
            while let Some(text) = pacer.next(&mut forward).await {
                self.publish_chunk(request, &ChatStreamChunk::TextDelta { text })
                    .await;
            }
        };
        let started = std::time::Instant::now();
        let (outcome, ()) = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(TurnError::Cancelled),
            done = async { tokio::join!(step_call, forwarding) } => done,
        };
        let elapsed_ms = started.elapsed().as_millis() as u64;
        Ok(match outcome {
            Ok(model_step) if model_step.calls.is_empty() => {
                tracing::debug!(step, elapsed_ms, "model answered");
                let text = if model_step.text.trim().is_empty() {
                    prompt::EMPTY_REPLY_MESSAGE.to_owned()
                } else {
                    machine::storable(&model_step.text)
                };
                vec![ended(request, Ending::Replied(text))]
            }
            Ok(mut model_step) => {
                tracing::debug!(
                    step,
                    elapsed_ms,
                    calls = model_step.calls.len(),
                    "model asked for tools"
                );
                if model_step.calls.len() > machine::MAX_CALLS_PER_STEP {
                    tracing::warn!(
                        asked = model_step.calls.len(),
                        kept = machine::MAX_CALLS_PER_STEP,
                        "model asked for too many tool calls in one step, extra calls dropped"
                    );
                    model_step.calls.truncate(machine::MAX_CALLS_PER_STEP);
                }
                let mut taken = Vec::new();
                let mut events = Vec::new();
                for (index, call) in model_step.calls.into_iter().enumerate() {
                    let index = u32::try_from(index).unwrap_or(u32::MAX);
                    let call_id = machine::recorded_call_id(
                        state,
                        &machine::storable(&call.id),
                        step,
                        index,
                        &taken,
                    );
                    taken.push(call_id.clone());
                    let call = CallState {
                        step,
                        index,
                        call_id,
                        name: machine::storable(&call.name),
                        arguments: machine::parse_arguments(&call.arguments),
                        command_id: proto_schemas::CommandId::for_tool_call(
                            request.request_id,
                            step,
                            index,
                        ),
                        result: None,
                        approval: None,
                    };
                    // Only a call that would run waits for approval: one the worker
                    // refuses anyway (unknown tool, bad arguments) is answered at once.
                    let confirm = self.settings.confirm_tools.contains(&call.name)
                        && tool_command(&self.tools, request, &call).is_ok();
                    events.push((
                        event_ids::tool_call_requested(request.request_id, step, index),
                        ConversationEvent::ToolCallRequested {
                            request_id: request.request_id,
                            step,
                            call_id: call.call_id.clone(),
                            name: call.name,
                            arguments: call.arguments,
                            command_id: call.command_id,
                        },
                    ));
                    if confirm {
                        events.push((
                            event_ids::approval_requested(request.request_id, step, index),
                            ConversationEvent::ToolCallApprovalRequested {
                                request_id: request.request_id,
                                call_id: call.call_id,
                                approval_id: proto_schemas::ApprovalId::for_tool_call(
                                    request.request_id,
                                    step,
                                    index,
                                ),
                            },
                        ));
                    }
                }
                events
            }
            Err(error) => {
                // The cause goes to the logs; the user gets a friendly message.
                tracing::error!(step, elapsed_ms, model = self.model.model(), error = %error, "model call failed");
                let (code, message) = match error {
                    ModelError::TooLarge => (
                        ChatErrorCode::Internal,
                        prompt::MODEL_REPLY_TOO_LARGE_MESSAGE,
                    ),
                    _ => (
                        ChatErrorCode::ModelUnavailable,
                        prompt::MODEL_UNAVAILABLE_MESSAGE,
                    ),
                };
                vec![ended(
                    request,
                    Ending::Failed {
                        code,
                        message: message.to_owned(),
                    },
                )]
            }
        })
    }

    /// Runs one recorded tool call and returns its result (a tool error is a result
    /// for the model to read, not a failure of the turn).
    async fn run_tool(&self, request: &ChatRequest, call: &CallState) -> Result<Value, TurnError> {
        let chunk = ChatStreamChunk::ToolCallStarted {
            call_id: call.call_id.clone(),
            name: call.name.clone(),
            arguments: call.arguments.clone(),
        };
        self.publish_chunk(request, &chunk).await;
        let result = match tool_command(&self.tools, request, call) {
            Ok(command) => machine::bounded_result(self.send_command(&command).await?),
            Err(refusal) => {
                tracing::info!(tool = %call.name, result = %refusal, "tool call refused before sending");
                refusal
            }
        };
        let chunk = ChatStreamChunk::ToolCallFinished {
            call_id: call.call_id.clone(),
            name: call.name.clone(),
            arguments: call.arguments.clone(),
            result: result.clone(),
        };
        self.publish_chunk(request, &chunk).await;
        Ok(result)
    }

    /// Sends a task command, retrying (with the same command id, so it applies once)
    /// while task-service is unreachable, slow or reports itself unavailable; a
    /// failure that another try cannot cure ends at once.
    async fn send_command(&self, command: &TaskCommand) -> Result<Value, TurnError> {
        use backon::Retryable as _;

        let name = command.call.name();
        let attempt = || async {
            let reply = platform::bus::request_json::<_, TaskCommandReply>(
                &self.bus,
                self.subjects.task_commands(),
                command,
                self.settings.tool_timeout,
            )
            .await;
            match reply {
                Ok(TaskCommandReply::Applied { output }) => Ok(serde_json::to_value(output)
                    .unwrap_or_else(|error| json!({"error": error.to_string()}))),
                Ok(TaskCommandReply::Unavailable { reason }) => Err((true, reason)),
                Err(error) => Err((error.is_transient(), platform::error_chain(&error))),
            }
        };
        attempt
            .retry(platform::retry::service_call(self.settings.tool_attempts))
            .when(|(transient, _)| *transient)
            .notify(|(_, reason), _| {
                tracing::warn!(
                    tool = name,
                    command_id = %command.command_id,
                    %reason,
                    "task command failed, retrying"
                );
            })
            .await
            .map_err(|(_, reason)| TurnError::ToolUnavailable {
                name: name.to_owned(),
                reason,
            })
    }

    /// Publishes the final reply to the replies stream, where the gateway (or a retried
    /// HTTP request) finds it. The message id makes a republish a no-op.
    pub(crate) async fn publish_reply(&self, reply: &ChatReply) -> Result<(), TurnError> {
        let payload = platform::bus::encode_json(reply)
            .map_err(|error| TurnError::Publish(Box::new(error)))?;
        // The message id makes a republished reply a no-op; each pause of a turn is a
        // reply of its own, and so is its end.
        let message_id = match &reply.outcome {
            ChatOutcome::PendingApproval { approval, .. } => {
                format!("{}/approval/{}", reply.request_id, approval.approval_id)
            }
            _ => reply.request_id.to_string(),
        };
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload)
            .headers(platform::bus::traced_headers())
            .message_id(message_id);
        let ack = self
            .jetstream
            .send_publish(self.subjects.chat_reply(reply.request_id), publish)
            .await
            .map_err(|error| TurnError::Publish(Box::new(error)))?;
        ack.await
            .map_err(|error| TurnError::Publish(Box::new(error)))?;
        Ok(())
    }

    /// Live progress is best effort (core NATS): a lost chunk costs a preview, the
    /// final reply still arrives.
    async fn publish_chunk(&self, request: &ChatRequest, chunk: &ChatStreamChunk) {
        let subject = self
            .subjects
            .chat_stream(&request.user_id, request.request_id);
        if let Err(error) = platform::bus::publish_json(&self.bus, subject, chunk).await {
            tracing::debug!(%error, "failed to publish a stream chunk");
        }
    }
}

/// The task command for a recorded tool call, or the error result the model gets
/// instead when the call cannot be run. The user is always the request's: a
/// `user_id` the model made up is ignored (invariant 6).
pub(crate) fn tool_command(
    tools: &ToolCatalog,
    request: &ChatRequest,
    call: &CallState,
) -> Result<TaskCommand, Value> {
    if !tools.contains(&call.name) {
        let known: Vec<&str> = tools.names().collect();
        return Err(
            json!({"error": format!("Unknown tool: {}. Available tools: {}", call.name, known.join(", "))}),
        );
    }
    if !call.arguments.is_object() {
        return Err(
            json!({"error": format!("Invalid arguments for {}: expected a JSON object", call.name)}),
        );
    }
    let parsed = ToolCall::from_name_and_arguments(&call.name, call.arguments.clone()).map_err(
        |error| json!({"error": format!("Invalid arguments for {}: {error}", call.name)}),
    )?;
    Ok(TaskCommand {
        command_id: call.command_id,
        user_id: request.user_id.clone(),
        correlation_id: Some(request.request_id.as_uuid()),
        call: parsed,
        // The turn wakes the projection itself when it settles.
        notify_appended: false,
    })
}

/// The message a turn answers: the request's own, or for a regenerate the
/// conversation's latest user message and the turn it supersedes. `None`: a
/// regenerate with no finished answer to replace.
fn turn_message(
    request: &ChatRequest,
    conversation: &Conversation,
) -> Option<(String, Option<RequestId>)> {
    match request.kind {
        TurnKind::Regenerate => conversation
            .message_to_regenerate()
            .map(|(earlier, text)| (text, Some(earlier))),
        TurnKind::Message | TurnKind::Approval { .. } => Some((request.message.clone(), None)),
    }
}

/// `ConversationStarted` (for a new conversation) and the user's message.
fn opening_events(
    request: &ChatRequest,
    start: bool,
    (text, regenerates): (String, Option<RequestId>),
) -> Vec<(EventId, ConversationEvent)> {
    let mut events = Vec::with_capacity(2);
    if start {
        events.push((
            event_ids::conversation_started(request.conversation_id),
            ConversationEvent::ConversationStarted {
                user_id: request.user_id.clone(),
            },
        ));
    }
    events.push((
        event_ids::user_message(request.request_id),
        ConversationEvent::UserMessageReceived {
            request_id: request.request_id,
            text,
            regenerates,
        },
    ));
    events
}

fn ended(request: &ChatRequest, ending: Ending) -> (EventId, ConversationEvent) {
    let event = match ending {
        Ending::Replied(text) => ConversationEvent::AssistantReplied {
            request_id: request.request_id,
            text,
        },
        Ending::Failed { code, message } => ConversationEvent::TurnFailed {
            request_id: request.request_id,
            code,
            message,
        },
    };
    (event_ids::turn_ended(request.request_id), event)
}

/// The reply a turn's ending gives.
pub(crate) fn reply_for(request: &ChatRequest, state: &TurnState, ending: Ending) -> ChatReply {
    let outcome = match ending {
        Ending::Replied(response) => ChatOutcome::Answered {
            response,
            tool_calls: state.records(),
        },
        Ending::Failed { code, message } => ChatOutcome::Failed {
            error: ChatError { code, message },
        },
    };
    ChatReply {
        request_id: request.request_id,
        conversation_id: request.conversation_id,
        user_id: Some(request.user_id.clone()),
        outcome,
    }
}

fn failed(request: &ChatRequest, code: ChatErrorCode, message: &str) -> ChatReply {
    ChatReply {
        request_id: request.request_id,
        conversation_id: request.conversation_id,
        user_id: Some(request.user_id.clone()),
        outcome: ChatOutcome::Failed {
            error: ChatError {
                code,
                message: message.to_owned(),
            },
        },
    }
}

/// Gathers a model step's text deltas into chunks at most one per interval (see
/// [`DELTA_PUBLISH_INTERVAL`]): the first at once, the rest when due, and what is left
/// as soon as the step ends.
struct DeltaPacer {
    interval: Duration,
    /// When the next chunk may go out; `None` before the first.
    due: Option<tokio::time::Instant>,
}

impl DeltaPacer {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            due: None,
        }
    }

    /// The next chunk: every delta received since the last one, once it is due or the
    /// deltas have ended. `None` once they have ended and nothing is left.
    async fn next(
        &mut self,
        deltas: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    ) -> Option<String> {
        let mut text = deltas.recv().await?;
        // The first delta goes out alone, even when more are queued behind it: a reader
        // sees the answer start as early as the model starts it.
        if let Some(due) = self.due {
            let wait = tokio::time::sleep_until(due);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    more = deltas.recv() => match more {
                        Some(more) => text.push_str(&more),
                        None => break,
                    },
                    () = &mut wait => break,
                }
            }
            while let Ok(more) = deltas.try_recv() {
                text.push_str(&more);
            }
        }
        self.due = Some(tokio::time::Instant::now() + self.interval);
        Some(text)
    }
}

#[cfg(test)]
mod tests {
    use proto_schemas::tasks::AddTaskArgs;
    use proto_schemas::{CommandId, ConversationId, UserId};

    use super::*;

    fn catalog() -> ToolCatalog {
        ToolCatalog::only(&["add_task"])
    }

    fn request() -> ChatRequest {
        ChatRequest {
            request_id: RequestId::new(),
            user_id: UserId::parse("alice").unwrap(),
            conversation_id: ConversationId::new(),
            new_conversation: true,
            message: "add milk".into(),
            received_at: chrono::Utc::now(),
            kind: Default::default(),
        }
    }

    fn call(request: &ChatRequest, name: &str, arguments: Value) -> CallState {
        CallState {
            step: 0,
            index: 0,
            call_id: "call_1".into(),
            name: name.into(),
            arguments,
            command_id: CommandId::for_tool_call(request.request_id, 0, 0),
            result: None,
            approval: None,
        }
    }

    #[test]
    fn the_user_comes_from_the_request_never_from_the_model() {
        let request = request();
        let command = tool_command(
            &catalog(),
            &request,
            &call(
                &request,
                "add_task",
                json!({"title": "Milk", "user_id": "mallory"}),
            ),
        )
        .unwrap();
        assert_eq!(command.user_id.as_str(), "alice");
        assert_eq!(
            command.command_id,
            CommandId::for_tool_call(request.request_id, 0, 0)
        );
        assert_eq!(command.correlation_id, Some(request.request_id.as_uuid()));
        assert_eq!(
            command.call,
            ToolCall::AddTask(AddTaskArgs {
                title: "Milk".into(),
                description: String::new()
            })
        );
    }

    #[test]
    fn unknown_tools_and_bad_arguments_become_error_results() {
        let request = request();
        let unknown = tool_command(
            &catalog(),
            &request,
            &call(&request, "drop_tables", json!({})),
        )
        .unwrap_err();
        assert!(
            unknown["error"]
                .as_str()
                .unwrap()
                .starts_with("Unknown tool: drop_tables"),
            "{unknown}"
        );
        let missing =
            tool_command(&catalog(), &request, &call(&request, "add_task", json!({}))).unwrap_err();
        assert!(
            missing["error"]
                .as_str()
                .unwrap()
                .contains("Invalid arguments for add_task"),
            "{missing}"
        );
        let raw = tool_command(
            &catalog(),
            &request,
            &call(&request, "add_task", Value::String("{oops".into())),
        )
        .unwrap_err();
        assert!(
            raw["error"]
                .as_str()
                .unwrap()
                .contains("expected a JSON object"),
            "{raw}"
        );
        // Offered by task-service but not in this catalog: refused as unknown.
        let not_offered = tool_command(
            &catalog(),
            &request,
            &call(&request, "list_tasks", json!({})),
        )
        .unwrap_err();
        assert!(
            not_offered["error"]
                .as_str()
                .unwrap()
                .starts_with("Unknown tool")
        );
    }

    #[test]
    fn replies_carry_the_recorded_tool_calls() {
        let request = request();
        let mut state = TurnState::default();
        let mut done = call(&request, "add_task", json!({"title": "Milk"}));
        done.result = Some(json!({"task_id": 1, "status": "created", "title": "Milk"}));
        state.steps.insert(0, vec![done]);
        let reply = reply_for(&request, &state, Ending::Replied("Added.".into()));
        let json = serde_json::to_value(&reply).unwrap();
        assert_eq!(json["outcome"]["status"], "answered");
        assert_eq!(json["outcome"]["response"], "Added.");
        assert_eq!(
            json["outcome"]["tool_calls"],
            json!([{"name": "add_task", "arguments": {"title": "Milk"}, "result": {"task_id": 1, "status": "created", "title": "Milk"}}])
        );
        let reply = reply_for(
            &request,
            &state,
            Ending::Failed {
                code: ChatErrorCode::ModelUnavailable,
                message: "sorry".into(),
            },
        );
        assert!(
            matches!(reply.outcome, ChatOutcome::Failed { error } if error.code == ChatErrorCode::ModelUnavailable)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn text_deltas_go_out_at_once_then_paced_then_at_the_end() {
        let interval = Duration::from_millis(50);
        let (send, mut deltas) = tokio::sync::mpsc::unbounded_channel::<String>();
        let mut pacer = DeltaPacer::new(interval);
        let started = tokio::time::Instant::now();

        // The first delta is not held back, nor joined by those queued behind it.
        send.send("I've".into()).unwrap();
        send.send(" added".into()).unwrap();
        assert_eq!(pacer.next(&mut deltas).await.as_deref(), Some("I've"));
        assert_eq!(started.elapsed(), Duration::ZERO);

        // Deltas within the interval go out together, when it has passed.
        let later = send.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            later.send(" task".into()).unwrap();
        });
        assert_eq!(
            pacer.next(&mut deltas).await.as_deref(),
            Some(" added task")
        );
        assert_eq!(started.elapsed(), interval);

        // The end of the step flushes what is left without waiting for the interval.
        send.send(" 1.".into()).unwrap();
        drop(send);
        let before_end = tokio::time::Instant::now();
        assert_eq!(pacer.next(&mut deltas).await.as_deref(), Some(" 1."));
        assert_eq!(before_end.elapsed(), Duration::ZERO);
        assert_eq!(pacer.next(&mut deltas).await, None);
    }
}
