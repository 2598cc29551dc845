//! The turn's state machine, pure: what the log says about one request
//! ([`TurnState`]), what to do next ([`next_action`]), and what the model is shown.
//!
//! A turn is a fold of its events. The worker keeps the turn's state (from the
//! conversation's state, see [`crate::conversation`]), asks [`next_action`] what to do,
//! does it (a model call, tool commands) and records the outcome with one append.
//! Because the state comes only from the log, a redelivered request resumes exactly
//! where the last worker stopped: recorded tool calls are reused, completed ones are
//! not run again (docs/ARCHITECTURE.md invariant 3).

use std::collections::BTreeMap;

use async_openai::types::chat::{
    ChatCompletionMessageToolCall, ChatCompletionMessageToolCalls,
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestAssistantMessageContent,
    ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage,
    ChatCompletionRequestToolMessage, ChatCompletionRequestToolMessageContent,
    ChatCompletionRequestUserMessage, FunctionCall,
};
use proto_schemas::chat::{
    ChatErrorCode, ChatMessage, ChatRequest, InvalidChatMessage, MESSAGE_MAX_CHARS,
    PendingApproval, ToolCallRecord,
};
use proto_schemas::events::ConversationEvent;
use proto_schemas::{ApprovalId, CommandId, EventId, RequestId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most tool calls recorded from one model step; more are dropped (and logged), so a
/// runaway or prompt-injected model cannot fan one message out into hundreds of
/// commands.
pub const MAX_CALLS_PER_STEP: usize = 16;

/// The most bytes of one tool's result that a turn records and shows the model. Well
/// under the bus's 1 MiB payload limit (the result travels in the turn's events and
/// its reply), and still room for hundreds of tasks in one list.
pub const MAX_TOOL_RESULT_BYTES: usize = 128 * 1024;

/// `result`, or the error the model reads instead when it is larger than
/// [`MAX_TOOL_RESULT_BYTES`]: a result that is too large is not recorded at all.
pub fn bounded_result(result: Value) -> Value {
    let size = serde_json::to_vec(&result).map_or(usize::MAX, |bytes| bytes.len());
    if size <= MAX_TOOL_RESULT_BYTES {
        return result;
    }
    serde_json::json!({
        "error": format!(
            "The tool's result was {size} bytes, more than the {MAX_TOOL_RESULT_BYTES} bytes \
             one tool call may return. Ask for less, e.g. list_tasks with a status filter."
        )
    })
}

/// Why a request is refused before anything is recorded (the gateway checks the same;
/// the worker does not trust the queue to hold only what the gateway let through).
pub fn invalid_message(request: &ChatRequest) -> Option<String> {
    // Only a new message brings text of its own; other kinds act on what is recorded.
    if !request.kind.is_message() {
        return None;
    }
    match ChatMessage::parse(request.message.as_str()) {
        Ok(_) => None,
        Err(InvalidChatMessage::Empty) => Some("The message is empty.".to_owned()),
        Err(InvalidChatMessage::TooLong { chars }) => Some(format!(
            "The message is too long: {chars} characters, at most {MESSAGE_MAX_CHARS} are accepted."
        )),
        Err(InvalidChatMessage::NulCharacter) => {
            Some("The message contains a NUL character, which cannot be stored.".to_owned())
        }
    }
}

/// `text` without NUL characters, which Postgres cannot store in text or JSON: what
/// a model says is recorded, so it must be storable (a value that cannot be stored
/// would fail every attempt to record the turn).
pub fn storable(text: &str) -> String {
    text.replace('\0', "")
}

/// [`storable`] for every string (and object key) in a JSON value.
pub fn storable_value(value: Value) -> Value {
    match value {
        Value::String(text) if text.contains('\0') => Value::String(storable(&text)),
        Value::Array(items) => Value::Array(items.into_iter().map(storable_value).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(key, field)| (storable(&key), storable_value(field)))
                .collect(),
        ),
        other => other,
    }
}

/// One tool call of a turn, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallState {
    pub step: u32,
    /// The call's position within its step (part of its command id and event ids).
    pub index: u32,
    pub call_id: String,
    pub name: String,
    pub arguments: Value,
    pub command_id: CommandId,
    /// Set once `ToolCallCompleted` is recorded.
    pub result: Option<Value>,
    /// Set when the call waits (or waited) for the person's approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
}

/// A tool call's approval, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub approval_id: ApprovalId,
    /// The person's decision, once recorded.
    pub approved: Option<bool>,
}

impl CallState {
    /// Whether the call may not run yet: it waits for a decision.
    pub fn awaits_approval(&self) -> bool {
        self.approval
            .as_ref()
            .is_some_and(|approval| approval.approved.is_none())
    }

    /// Whether the person declined the call.
    pub fn is_declined(&self) -> bool {
        self.approval
            .as_ref()
            .is_some_and(|approval| approval.approved == Some(false))
    }

    /// The call as the person is asked about it.
    pub fn pending_approval(&self) -> Option<PendingApproval> {
        let approval = self.approval.as_ref()?;
        Some(PendingApproval {
            approval_id: approval.approval_id,
            call_id: self.call_id.clone(),
            name: self.name.clone(),
            arguments: self.arguments.clone(),
        })
    }

    pub fn record(&self) -> Option<ToolCallRecord> {
        Some(ToolCallRecord {
            name: self.name.clone(),
            arguments: self.arguments.clone(),
            result: self.result.clone()?,
        })
    }
}

/// How a turn ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ending {
    Replied(String),
    Failed {
        code: ChatErrorCode,
        message: String,
    },
}

/// Everything the log says about one request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TurnState {
    pub user_message: Option<String>,
    /// The turn's tool calls by step, each step's calls in index order.
    pub steps: BTreeMap<u32, Vec<CallState>>,
    pub ending: Option<Ending>,
}

impl TurnState {
    /// Folds the events of `request` out of a conversation's events.
    pub fn from_events(events: &[ConversationEvent], request: RequestId) -> Self {
        let mut state = Self::default();
        for event in events
            .iter()
            .filter(|event| event.request_id() == Some(request))
        {
            state.apply(event);
        }
        state
    }

    /// Folds in one event of this turn.
    pub fn apply(&mut self, event: &ConversationEvent) {
        match event {
            ConversationEvent::UserMessageReceived { text, .. } => {
                self.user_message.get_or_insert_with(|| text.clone());
            }
            ConversationEvent::ToolCallRequested {
                step,
                call_id,
                name,
                arguments,
                command_id,
                ..
            } => {
                let calls = self.steps.entry(*step).or_default();
                let index = u32::try_from(calls.len()).unwrap_or(u32::MAX);
                calls.push(CallState {
                    step: *step,
                    index,
                    call_id: call_id.clone(),
                    name: name.clone(),
                    arguments: arguments.clone(),
                    command_id: *command_id,
                    result: None,
                    approval: None,
                });
            }
            ConversationEvent::ToolCallApprovalRequested {
                call_id,
                approval_id,
                ..
            } => {
                if let Some(call) = self.call_mut(call_id) {
                    call.approval.get_or_insert(Approval {
                        approval_id: *approval_id,
                        approved: None,
                    });
                }
            }
            ConversationEvent::ToolCallApprovalDecided {
                approval_id,
                approved,
                ..
            } => {
                if let Some(approval) = self
                    .steps
                    .values_mut()
                    .flatten()
                    .filter_map(|call| call.approval.as_mut())
                    .find(|approval| approval.approval_id == *approval_id)
                {
                    // The first decision recorded stands.
                    approval.approved.get_or_insert(*approved);
                }
            }
            ConversationEvent::ToolCallCompleted {
                call_id, result, ..
            } => {
                if let Some(call) = self
                    .steps
                    .values_mut()
                    .flatten()
                    .find(|call| call.call_id == *call_id && call.result.is_none())
                {
                    call.result = Some(result.clone());
                }
            }
            ConversationEvent::AssistantReplied { text, .. } => {
                self.ending
                    .get_or_insert_with(|| Ending::Replied(text.clone()));
            }
            ConversationEvent::TurnFailed { code, message, .. } => {
                self.ending.get_or_insert_with(|| Ending::Failed {
                    code: *code,
                    message: message.clone(),
                });
            }
            ConversationEvent::ConversationStarted { .. }
            | ConversationEvent::ConversationRenamed { .. }
            | ConversationEvent::ConversationDeleted {}
            | ConversationEvent::FeedbackGiven { .. } => {}
        }
    }

    pub fn calls(&self) -> impl Iterator<Item = &CallState> {
        self.steps.values().flatten()
    }

    /// The latest call recorded under `call_id` that has no result yet.
    fn call_mut(&mut self, call_id: &str) -> Option<&mut CallState> {
        self.steps
            .values_mut()
            .flatten()
            .rev()
            .find(|call| call.call_id == call_id && call.result.is_none())
    }

    /// The call waiting for the person's decision `approval_id`, if any.
    pub fn awaiting(&self, approval_id: ApprovalId) -> Option<&CallState> {
        self.calls().find(|call| {
            call.awaits_approval()
                && call
                    .approval
                    .as_ref()
                    .is_some_and(|approval| approval.approval_id == approval_id)
        })
    }

    /// The public record of the turn's tool calls (completed ones, in order).
    pub fn records(&self) -> Vec<ToolCallRecord> {
        self.calls().filter_map(CallState::record).collect()
    }

    /// The step the next model call is for.
    pub fn next_step(&self) -> u32 {
        self.steps.keys().next_back().map_or(0, |last| last + 1)
    }

    /// Whether `call_id` is already used by a call of this turn.
    pub fn has_call_id(&self, call_id: &str) -> bool {
        self.calls().any(|call| call.call_id == call_id)
    }
}

/// What the turn does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Record `ConversationStarted` (when `start`) and the user's message.
    RecordUserMessage { start: bool },
    /// Run the requested calls that have no result yet, in order (again, after a
    /// crash: their command ids make that safe), then do `next`; the results and
    /// what `next` decides are recorded with one append.
    Advance {
        pending: Vec<(u32, u32)>,
        next: Next,
    },
    /// A call waits for the person's approval and nothing else can run: the turn
    /// pauses (its pending reply is published; no worker holds it) until a decision.
    Pause(PendingApproval),
    /// The turn has ended: (re)publish its reply.
    Finish(Ending),
}

/// What a turn does once its tool calls have results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Ask the model for step `step`.
    CallModel { step: u32 },
    /// The model used every step it may: end with a friendly message.
    GiveUp,
    /// A later call of the step waits for approval: record these results, then pause.
    AwaitApproval,
}

/// The next thing to do for a turn, given its state. `start` says the conversation
/// has no events yet.
pub fn next_action(state: &TurnState, start: bool, max_model_steps: u32) -> Action {
    if let Some(ending) = &state.ending {
        return Action::Finish(ending.clone());
    }
    if state.user_message.is_none() {
        return Action::RecordUserMessage { start };
    }
    // Calls run in order: those before the first one waiting for approval may run.
    let mut pending = Vec::new();
    for call in state.calls().filter(|call| call.result.is_none()) {
        if call.awaits_approval() {
            if pending.is_empty() {
                return Action::Pause(
                    call.pending_approval()
                        .expect("a call awaiting approval has one"),
                );
            }
            return Action::Advance {
                pending,
                next: Next::AwaitApproval,
            };
        }
        pending.push((call.step, call.index));
    }
    let step = state.next_step();
    let next = if step >= max_model_steps {
        Next::GiveUp
    } else {
        Next::CallModel { step }
    };
    Action::Advance { pending, next }
}

/// The result a declined call records, for the model to read.
pub fn declined_result(name: &str) -> Value {
    serde_json::json!({
        "error": format!(
            "The person declined this {name} call, so it was not run. Do not retry it; \
             tell them it was not done."
        )
    })
}

/// Ids of the events a turn records, derived from the request (or the conversation
/// for its first event) so that a redelivered turn re-derives them and the log
/// stores each once.
pub mod event_ids {
    use super::*;

    pub fn conversation_started(conversation: proto_schemas::ConversationId) -> EventId {
        EventId::derived(conversation.as_uuid(), "conversation-started", 0)
    }

    pub fn user_message(request: RequestId) -> EventId {
        EventId::derived(request.as_uuid(), "user-message", 0)
    }

    pub fn tool_call_requested(request: RequestId, step: u32, index: u32) -> EventId {
        EventId::derived(
            request.as_uuid(),
            &format!("tool-call-requested/{step}"),
            index,
        )
    }

    pub fn tool_call_completed(request: RequestId, step: u32, index: u32) -> EventId {
        EventId::derived(
            request.as_uuid(),
            &format!("tool-call-completed/{step}"),
            index,
        )
    }

    pub fn approval_requested(request: RequestId, step: u32, index: u32) -> EventId {
        EventId::derived(
            request.as_uuid(),
            &format!("approval-requested/{step}"),
            index,
        )
    }

    /// One per approval: the first decision recorded stands, a second is a no-op.
    pub fn approval_decided(approval: proto_schemas::ApprovalId) -> EventId {
        EventId::derived(approval.as_uuid(), "approval-decided", 0)
    }

    /// Shared by `AssistantReplied` and `TurnFailed`: a turn ends once, whichever
    /// worker gets there first.
    pub fn turn_ended(request: RequestId) -> EventId {
        EventId::derived(request.as_uuid(), "turn-ended", 0)
    }
}

/// The call id recorded for the model's `index`-th call of `step`: the model's own id
/// when it is usable, else one derived from the position. Results are matched to calls
/// by this id, so it must be unique within the turn (some servers reuse ids such as
/// `call_0` in every response).
pub fn recorded_call_id(
    state: &TurnState,
    model_id: &str,
    step: u32,
    index: u32,
    taken: &[String],
) -> String {
    let usable = !model_id.trim().is_empty()
        && model_id.len() <= 128
        && !state.has_call_id(model_id)
        && !taken.iter().any(|id| id == model_id);
    if usable {
        model_id.to_owned()
    } else {
        format!("call_{step}_{index}")
    }
}

/// The model's arguments as JSON: the parsed object, or the raw text as a string when
/// it is not JSON (recorded as given, answered with an error).
pub fn parse_arguments(raw: &str) -> Value {
    if raw.trim().is_empty() {
        return Value::Object(Default::default());
    }
    storable_value(serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned())))
}

/// The arguments as sent back to the model in its own earlier message.
fn arguments_text(arguments: &Value) -> String {
    match arguments {
        Value::String(raw) => raw.clone(),
        other => other.to_string(),
    }
}

/// One earlier exchange shown to the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryMessage {
    User(String),
    Assistant(String),
}

/// The messages of the model call for `step`: instructions, earlier turns, this
/// turn's message and its tool calls and results of the steps before.
pub fn model_messages(
    system_prompt: &str,
    history: &[HistoryMessage],
    state: &TurnState,
    step: u32,
) -> Vec<ChatCompletionRequestMessage> {
    let mut messages = vec![ChatCompletionRequestMessage::System(
        ChatCompletionRequestSystemMessage {
            content: system_prompt.into(),
            name: None,
        },
    )];
    for message in history {
        messages.push(match message {
            HistoryMessage::User(text) => user(text),
            HistoryMessage::Assistant(text) => assistant_text(text),
        });
    }
    if let Some(text) = &state.user_message {
        messages.push(user(text));
    }
    for (_, calls) in state.steps.range(..step) {
        let tool_calls = calls
            .iter()
            .map(|call| {
                ChatCompletionMessageToolCalls::Function(ChatCompletionMessageToolCall {
                    id: call.call_id.clone(),
                    function: FunctionCall {
                        name: call.name.clone(),
                        arguments: arguments_text(&call.arguments),
                    },
                })
            })
            .collect();
        messages.push(ChatCompletionRequestMessage::Assistant(
            ChatCompletionRequestAssistantMessage {
                tool_calls: Some(tool_calls),
                ..Default::default()
            },
        ));
        for call in calls {
            let content = call
                .result
                .as_ref()
                .map_or_else(|| "null".to_owned(), Value::to_string);
            messages.push(ChatCompletionRequestMessage::Tool(
                ChatCompletionRequestToolMessage {
                    content: ChatCompletionRequestToolMessageContent::Text(content),
                    tool_call_id: call.call_id.clone(),
                },
            ));
        }
    }
    messages
}

fn user(text: &str) -> ChatCompletionRequestMessage {
    ChatCompletionRequestMessage::User(ChatCompletionRequestUserMessage {
        content: text.into(),
        name: None,
    })
}

fn assistant_text(text: &str) -> ChatCompletionRequestMessage {
    ChatCompletionRequestMessage::Assistant(ChatCompletionRequestAssistantMessage {
        content: Some(ChatCompletionRequestAssistantMessageContent::Text(
            text.to_owned(),
        )),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::fixtures::{completed, replied, request, requested, said, started};

    #[test]
    fn blank_and_oversized_messages_are_refused() {
        let mut request = request(true);
        assert_eq!(invalid_message(&request), None);
        request.message = " \n ".into();
        assert_eq!(
            invalid_message(&request).as_deref(),
            Some("The message is empty.")
        );
        request.message = "é".repeat(proto_schemas::chat::MESSAGE_MAX_CHARS);
        assert_eq!(invalid_message(&request), None, "characters, not bytes");
        request.message.push('x');
        assert!(invalid_message(&request).unwrap().contains("too long"));
    }

    #[test]
    fn a_fresh_turn_records_the_message_then_calls_the_model() {
        let state = TurnState::default();
        assert_eq!(
            next_action(&state, true, 10),
            Action::RecordUserMessage { start: true }
        );
        let r = RequestId::new();
        let state = TurnState::from_events(&[started("alice"), said(r, "hi")], r);
        assert_eq!(
            next_action(&state, false, 10),
            Action::Advance {
                pending: vec![],
                next: Next::CallModel { step: 0 }
            }
        );
    }

    #[test]
    fn a_resumed_turn_reuses_recorded_calls_and_runs_only_unfinished_ones() {
        let r = RequestId::new();
        let events = vec![
            started("alice"),
            said(r, "complete 1 and 2"),
            requested(r, 0, 0, "call_a", "complete_task", json!({"task_id": 1})),
            requested(r, 0, 1, "call_b", "complete_task", json!({"task_id": 2})),
            completed(
                r,
                "call_a",
                "complete_task",
                json!({"task_id": 1, "status": "completed", "title": "x"}),
            ),
        ];
        let state = TurnState::from_events(&events, r);
        assert_eq!(
            next_action(&state, false, 10),
            Action::Advance {
                pending: vec![(0, 1)],
                next: Next::CallModel { step: 1 }
            }
        );
        assert_eq!(
            state.steps[&0][1].command_id,
            CommandId::for_tool_call(r, 0, 1)
        );

        let mut events = events;
        events.push(completed(
            r,
            "call_b",
            "complete_task",
            json!({"error": "Task not found", "task_id": 2}),
        ));
        let state = TurnState::from_events(&events, r);
        assert_eq!(
            next_action(&state, false, 10),
            Action::Advance {
                pending: vec![],
                next: Next::CallModel { step: 1 }
            }
        );
        assert_eq!(state.records().len(), 2);
        assert_eq!(state.records()[1].result["error"], "Task not found");

        events.push(replied(r, "Done."));
        let state = TurnState::from_events(&events, r);
        assert_eq!(
            next_action(&state, false, 10),
            Action::Finish(Ending::Replied("Done.".into()))
        );
    }

    #[test]
    fn a_call_waiting_for_approval_pauses_the_turn_until_decided() {
        let r = RequestId::new();
        let approval_id = ApprovalId::for_tool_call(r, 0, 1);
        let mut events = vec![
            started("alice"),
            said(r, "complete 1 and delete 2"),
            requested(r, 0, 0, "call_a", "complete_task", json!({"task_id": 1})),
            requested(r, 0, 1, "call_b", "delete_task", json!({"task_id": 2})),
            ConversationEvent::ToolCallApprovalRequested {
                request_id: r,
                call_id: "call_b".into(),
                approval_id,
            },
        ];
        // The call before the one that waits may run; then the turn pauses.
        let state = TurnState::from_events(&events, r);
        assert_eq!(
            next_action(&state, false, 10),
            Action::Advance {
                pending: vec![(0, 0)],
                next: Next::AwaitApproval
            }
        );
        events.push(completed(
            r,
            "call_a",
            "complete_task",
            json!({"task_id": 1}),
        ));
        let state = TurnState::from_events(&events, r);
        let Action::Pause(pending) = next_action(&state, false, 10) else {
            panic!("expected a pause");
        };
        assert_eq!(pending.approval_id, approval_id);
        assert_eq!(pending.name, "delete_task");
        assert_eq!(pending.arguments, json!({"task_id": 2}));
        assert!(state.awaiting(approval_id).is_some());

        // Approved: the call runs like any other. The first decision stands.
        let decided = |approved| ConversationEvent::ToolCallApprovalDecided {
            request_id: r,
            approval_id,
            approved,
        };
        let mut approved = events.clone();
        approved.push(decided(true));
        approved.push(decided(false));
        let state = TurnState::from_events(&approved, r);
        assert!(state.awaiting(approval_id).is_none());
        assert!(!state.steps[&0][1].is_declined());
        assert_eq!(
            next_action(&state, false, 10),
            Action::Advance {
                pending: vec![(0, 1)],
                next: Next::CallModel { step: 1 }
            }
        );

        // Declined: still pending (its result is the refusal the model reads).
        events.push(decided(false));
        let state = TurnState::from_events(&events, r);
        assert!(state.steps[&0][1].is_declined());
        assert!(
            matches!(next_action(&state, false, 10), Action::Advance { ref pending, .. } if pending == &[(0, 1)])
        );
        assert!(
            declined_result("delete_task")["error"]
                .as_str()
                .unwrap()
                .contains("declined")
        );
    }

    #[test]
    fn the_step_budget_ends_the_turn() {
        let r = RequestId::new();
        let events = vec![
            said(r, "loop"),
            requested(r, 0, 0, "c0", "list_tasks", json!({})),
            completed(
                r,
                "c0",
                "list_tasks",
                json!({"tasks": [], "count": 0, "filter": "all"}),
            ),
            requested(r, 1, 0, "c1", "list_tasks", json!({})),
            completed(
                r,
                "c1",
                "list_tasks",
                json!({"tasks": [], "count": 0, "filter": "all"}),
            ),
        ];
        let state = TurnState::from_events(&events, r);
        assert_eq!(
            next_action(&state, false, 2),
            Action::Advance {
                pending: vec![],
                next: Next::GiveUp
            }
        );
        assert_eq!(
            next_action(&state, false, 3),
            Action::Advance {
                pending: vec![],
                next: Next::CallModel { step: 2 }
            }
        );
    }

    #[test]
    fn a_failure_is_an_ending_and_the_first_ending_wins() {
        let r = RequestId::new();
        let events = vec![
            said(r, "hi"),
            ConversationEvent::TurnFailed {
                request_id: r,
                code: ChatErrorCode::ModelUnavailable,
                message: "sorry".into(),
            },
            replied(r, "late"),
        ];
        let state = TurnState::from_events(&events, r);
        assert_eq!(
            state.ending,
            Some(Ending::Failed {
                code: ChatErrorCode::ModelUnavailable,
                message: "sorry".into()
            })
        );
    }

    #[test]
    fn other_requests_do_not_leak_into_the_turn() {
        let mine = RequestId::new();
        let other = RequestId::new();
        let events = vec![
            said(other, "other"),
            requested(other, 0, 0, "x", "list_tasks", json!({})),
            said(mine, "mine"),
        ];
        let state = TurnState::from_events(&events, mine);
        assert_eq!(state.user_message.as_deref(), Some("mine"));
        assert!(state.steps.is_empty());
    }

    #[test]
    fn model_messages_replay_the_turn_so_far() {
        let r = RequestId::new();
        let events = vec![
            said(r, "add milk"),
            requested(r, 0, 0, "call_a", "add_task", json!({"title": "Milk"})),
            requested(
                r,
                0,
                1,
                "call_b",
                "add_task",
                Value::String("{not json".into()),
            ),
            completed(
                r,
                "call_a",
                "add_task",
                json!({"task_id": 1, "status": "created", "title": "Milk"}),
            ),
            completed(r, "call_b", "add_task", json!({"error": "bad"})),
        ];
        let state = TurnState::from_events(&events, r);
        let history = vec![
            HistoryMessage::User("hello".into()),
            HistoryMessage::Assistant("hi!".into()),
        ];
        let messages = model_messages("be nice", &history, &state, 1);
        let json = serde_json::to_value(&messages).unwrap();
        assert_eq!(json[0], json!({"role": "system", "content": "be nice"}));
        assert_eq!(json[1], json!({"role": "user", "content": "hello"}));
        assert_eq!(json[2], json!({"role": "assistant", "content": "hi!"}));
        assert_eq!(json[3], json!({"role": "user", "content": "add milk"}));
        assert_eq!(json[4]["role"], "assistant");
        assert_eq!(json[4]["tool_calls"][0]["id"], "call_a");
        assert_eq!(
            json[4]["tool_calls"][0]["function"]["arguments"],
            "{\"title\":\"Milk\"}"
        );
        assert_eq!(
            json[4]["tool_calls"][1]["function"]["arguments"],
            "{not json"
        );
        assert_eq!(
            json[5],
            json!({"role": "tool", "tool_call_id": "call_a", "content": "{\"status\":\"created\",\"task_id\":1,\"title\":\"Milk\"}"})
        );
        assert_eq!(json[6]["tool_call_id"], "call_b");
        assert_eq!(messages.len(), 7);
        // Step 0 sees only the user's message.
        assert_eq!(model_messages("be nice", &[], &state, 0).len(), 2);
    }

    #[test]
    fn call_ids_are_unique_within_a_turn() {
        let r = RequestId::new();
        let events = vec![
            said(r, "x"),
            requested(r, 0, 0, "call_0", "list_tasks", json!({})),
        ];
        let state = TurnState::from_events(&events, r);
        assert_eq!(recorded_call_id(&state, "call_9", 1, 0, &[]), "call_9");
        assert_eq!(recorded_call_id(&state, "call_0", 1, 0, &[]), "call_1_0");
        assert_eq!(recorded_call_id(&state, "", 1, 1, &[]), "call_1_1");
        assert_eq!(
            recorded_call_id(&state, "dup", 1, 1, &["dup".into()]),
            "call_1_1"
        );
    }

    #[test]
    fn oversized_tool_results_become_an_error_the_model_reads() {
        let small = serde_json::json!([{"id": 1, "title": "Milk"}]);
        assert_eq!(bounded_result(small.clone()), small);
        let task = serde_json::json!({"id": 1, "title": "x".repeat(200)});
        let huge = Value::Array(vec![task; 1_000]);
        let bounded = bounded_result(huge);
        let message = bounded["error"].as_str().unwrap();
        assert!(message.contains("131072 bytes"), "{message}");
        assert!(serde_json::to_vec(&bounded).unwrap().len() < 1024);
    }

    #[test]
    fn what_the_model_says_is_made_storable() {
        assert_eq!(storable("Milk\0 added"), "Milk added");
        assert_eq!(
            parse_arguments(r#"{"title": "Buy\u0000 milk", "t\u0000ags": ["a\u0000"]}"#),
            json!({"title": "Buy milk", "tags": ["a"]})
        );
        assert_eq!(parse_arguments("{oops\0"), Value::String("{oops".into()));
        let mut request = request(true);
        request.message = "add\0milk".into();
        assert!(invalid_message(&request).unwrap().contains("NUL"));
    }

    #[test]
    fn arguments_parse_or_stay_raw() {
        assert_eq!(parse_arguments("{\"title\":\"x\"}"), json!({"title": "x"}));
        assert_eq!(parse_arguments(""), json!({}));
        assert_eq!(parse_arguments("{oops"), Value::String("{oops".into()));
    }

    #[test]
    fn event_ids_are_stable_and_distinct() {
        let r = RequestId::new();
        assert_eq!(
            event_ids::tool_call_requested(r, 0, 1),
            event_ids::tool_call_requested(r, 0, 1)
        );
        assert_ne!(
            event_ids::tool_call_requested(r, 0, 1),
            event_ids::tool_call_requested(r, 1, 0)
        );
        assert_ne!(
            event_ids::tool_call_requested(r, 0, 0),
            event_ids::tool_call_completed(r, 0, 0)
        );
        assert_ne!(event_ids::user_message(r), event_ids::turn_ended(r));
    }
}
