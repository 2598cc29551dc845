//! The read models as a pure fold of the event log: task lists per user,
//! conversations per user, the messages of each conversation, and the tool calls of
//! turns still in flight.
//!
//! Everything here is free of I/O and of the clock (times come from the events'
//! `recorded_at`), so the same code folds the whole log in memory (`projection
//! verify`) and a batch at a time on top of rows loaded from Postgres (the live
//! projector and `projection replay`). Both must therefore come out identical, which
//! is what `verify` checks.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use eventlog::StoredEvent;
use proto_schemas::chat::ToolCallRecord;
use proto_schemas::events::{ConversationEvent, DecodeError, StreamId, TaskEvent};
use proto_schemas::queries::MessageRole;
use serde_json::Value;
use uuid::Uuid;

/// The longest conversation title, in characters (longer first messages are cut and
/// end with an ellipsis).
pub(crate) const TITLE_MAX_CHARS: usize = 60;

/// One task in a user's list.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskKey {
    pub user_id: String,
    pub task_id: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRow {
    pub title: String,
    pub description: String,
    pub completed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationRow {
    /// Whose conversation it is (from `ConversationStarted`).
    pub user_id: String,
    /// The start of the first user message; empty until there is one.
    pub title: String,
    pub message_count: u32,
    /// When the conversation started.
    pub created_at: DateTime<Utc>,
    /// When its latest event was recorded.
    pub updated_at: DateTime<Utc>,
    /// The person deleted it: every query treats it as not found.
    pub deleted: bool,
    /// Turns answered again (regenerate): their messages are no longer shown.
    pub superseded: Vec<Uuid>,
}

/// One message: `seq` is the stream version of the event that made it, so messages
/// sort in conversation order and a cursor over them never shifts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageKey {
    pub conversation_id: Uuid,
    pub seq: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MessageRow {
    pub role: MessageRole,
    pub content: String,
    /// The tool calls of the turn (assistant messages only), in the order requested.
    pub tool_calls: Vec<ToolCallRecord>,
    pub request_id: Uuid,
    pub created_at: DateTime<Utc>,
}

/// A turn whose reply has not been recorded yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TurnKey {
    pub conversation_id: Uuid,
    pub request_id: Uuid,
}

/// A tool call of a turn in flight; `result` is set once it completed.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingCall {
    pub call_id: String,
    pub name: String,
    pub arguments: Value,
    pub result: Option<Value>,
}

/// A stored event as the read models see it.
#[derive(Debug, Clone, PartialEq)]
pub enum Projected {
    Task {
        user_id: String,
        event: TaskEvent,
    },
    Conversation {
        conversation_id: Uuid,
        seq: i64,
        event: ConversationEvent,
    },
    /// A stream no read model follows.
    Other,
}

/// A decoded event and when it was recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Fact {
    pub projected: Projected,
    pub recorded_at: DateTime<Utc>,
}

impl Fact {
    /// Decodes `event` by its [`StreamId`]: a task list's as a [`TaskEvent`], a
    /// conversation's as a [`ConversationEvent`], any other stream as [`Projected::Other`].
    ///
    /// An event of a followed stream that does not decode is an error, not something
    /// to skip: skipping it would make the read models silently disagree with the log.
    pub fn decode(event: &StoredEvent) -> Result<Self, DecodeError> {
        let projected = match StreamId::parse(&event.stream_id) {
            Ok(StreamId::Tasks(user_id)) => Projected::Task {
                user_id: user_id.as_str().to_owned(),
                event: event.decode()?,
            },
            Ok(StreamId::Conversation(conversation_id)) => Projected::Conversation {
                conversation_id: conversation_id.as_uuid(),
                seq: i64::try_from(event.stream_version).unwrap_or(i64::MAX),
                event: event.decode()?,
            },
            Err(_) => Projected::Other,
        };
        Ok(Self {
            projected,
            recorded_at: event.recorded_at,
        })
    }
}

/// Something odd in the log that the fold tolerated. Events are facts, so none of these
/// stop the fold; they are worth a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anomaly {
    /// A conversation event before (or without) the conversation's `ConversationStarted`.
    UnknownConversation(Uuid),
    /// A second `ConversationStarted` for one conversation.
    StartedTwice(Uuid),
    /// A tool call completed that the turn never requested.
    UnrequestedCompletion {
        conversation_id: Uuid,
        call_id: String,
    },
}

impl std::fmt::Display for Anomaly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownConversation(id) => {
                write!(f, "event for conversation {id}, which never started")
            }
            Self::StartedTwice(id) => write!(f, "conversation {id} started twice"),
            Self::UnrequestedCompletion {
                conversation_id,
                call_id,
            } => write!(
                f,
                "tool call {call_id} of conversation {conversation_id} completed without a request"
            ),
        }
    }
}

/// All read models, or (in the batched projector) the rows one batch touches.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadModels {
    pub tasks: BTreeMap<TaskKey, TaskRow>,
    pub conversations: BTreeMap<Uuid, ConversationRow>,
    pub messages: BTreeMap<MessageKey, MessageRow>,
    pub pending: BTreeMap<TurnKey, Vec<PendingCall>>,
}

impl ReadModels {
    /// Folds one event in.
    ///
    /// Only reads the task rows and conversation/pending rows of the event's own key,
    /// and never reads messages: that is the contract that lets the projector load just
    /// those rows for a batch.
    pub fn apply(&mut self, fact: &Fact) -> Option<Anomaly> {
        match &fact.projected {
            Projected::Task { user_id, event } => {
                self.apply_task(user_id, event);
                None
            }
            Projected::Conversation {
                conversation_id,
                seq,
                event,
            } => self.apply_conversation(*conversation_id, *seq, event, fact.recorded_at),
            Projected::Other => None,
        }
    }

    /// The same rules as task-service's aggregate: adding (re)places a task, and an
    /// event naming a task that is not there changes nothing.
    fn apply_task(&mut self, user_id: &str, event: &TaskEvent) {
        let key = |task_id: proto_schemas::TaskNumber| TaskKey {
            user_id: user_id.to_owned(),
            task_id: task_id.0,
        };
        match event {
            TaskEvent::TaskAdded {
                task_id,
                title,
                description,
            } => {
                self.tasks.insert(
                    key(*task_id),
                    TaskRow {
                        title: title.clone(),
                        description: description.clone(),
                        completed: false,
                    },
                );
            }
            TaskEvent::TaskCompleted { task_id } => {
                if let Some(task) = self.tasks.get_mut(&key(*task_id)) {
                    task.completed = true;
                }
            }
            TaskEvent::TaskDeleted { task_id } => {
                self.tasks.remove(&key(*task_id));
            }
            TaskEvent::TaskUpdated {
                task_id,
                title,
                description,
            } => {
                if let Some(task) = self.tasks.get_mut(&key(*task_id)) {
                    if let Some(title) = title {
                        task.title.clone_from(title);
                    }
                    if let Some(description) = description {
                        task.description.clone_from(description);
                    }
                }
            }
        }
    }

    fn apply_conversation(
        &mut self,
        conversation_id: Uuid,
        seq: i64,
        event: &ConversationEvent,
        at: DateTime<Utc>,
    ) -> Option<Anomaly> {
        if let ConversationEvent::ConversationStarted { user_id } = event {
            if self.conversations.contains_key(&conversation_id) {
                return Some(Anomaly::StartedTwice(conversation_id));
            }
            self.conversations.insert(
                conversation_id,
                ConversationRow {
                    user_id: user_id.to_string(),
                    title: String::new(),
                    message_count: 0,
                    created_at: at,
                    updated_at: at,
                    deleted: false,
                    superseded: Vec::new(),
                },
            );
            return None;
        }
        // Without its start nobody owns the conversation, so nobody may see it.
        let Some(conversation) = self.conversations.get_mut(&conversation_id) else {
            return Some(Anomaly::UnknownConversation(conversation_id));
        };
        conversation.updated_at = at;
        let message_key = MessageKey {
            conversation_id,
            seq,
        };
        let turn = |request_id: proto_schemas::RequestId| TurnKey {
            conversation_id,
            request_id: request_id.as_uuid(),
        };
        match event {
            ConversationEvent::ConversationStarted { .. } => unreachable!("handled above"),
            ConversationEvent::UserMessageReceived {
                request_id,
                text,
                regenerates,
            } => {
                // The turn answered again leaves the conversation: its message and its
                // answer (one each for an ended turn); this turn brings the message back.
                if let Some(earlier) = regenerates
                    && !conversation.superseded.contains(&earlier.as_uuid())
                {
                    conversation.superseded.push(earlier.as_uuid());
                    conversation.message_count = conversation.message_count.saturating_sub(2);
                }
                // A title the person chose (or the first message's) stays.
                if conversation.title.is_empty() {
                    conversation.title = conversation_title(text);
                }
                conversation.message_count += 1;
                self.messages.insert(
                    message_key,
                    MessageRow {
                        role: MessageRole::User,
                        content: text.clone(),
                        tool_calls: Vec::new(),
                        request_id: request_id.as_uuid(),
                        created_at: at,
                    },
                );
            }
            ConversationEvent::ToolCallRequested {
                request_id,
                call_id,
                name,
                arguments,
                ..
            } => {
                self.pending
                    .entry(turn(*request_id))
                    .or_default()
                    .push(PendingCall {
                        call_id: call_id.clone(),
                        name: name.clone(),
                        arguments: arguments.clone(),
                        result: None,
                    });
            }
            ConversationEvent::ToolCallCompleted {
                request_id,
                call_id,
                name,
                result,
            } => {
                let calls = self.pending.entry(turn(*request_id)).or_default();
                // The same call id may come back in a later step; pair with the oldest
                // request still waiting for its result.
                match calls
                    .iter_mut()
                    .find(|c| c.call_id == *call_id && c.result.is_none())
                {
                    Some(call) => call.result = Some(result.clone()),
                    None => {
                        calls.push(PendingCall {
                            call_id: call_id.clone(),
                            name: name.clone(),
                            arguments: Value::Null,
                            result: Some(result.clone()),
                        });
                        return Some(Anomaly::UnrequestedCompletion {
                            conversation_id,
                            call_id: call_id.clone(),
                        });
                    }
                }
            }
            ConversationEvent::AssistantReplied { request_id, text } => {
                // A call requested but never completed did not run (a resumed turn
                // asked the model again), so the reply does not show it.
                let tool_calls = self
                    .pending
                    .remove(&turn(*request_id))
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|call| {
                        call.result.map(|result| ToolCallRecord {
                            name: call.name,
                            arguments: call.arguments,
                            result,
                        })
                    })
                    .collect();
                conversation.message_count += 1;
                self.messages.insert(
                    message_key,
                    MessageRow {
                        role: MessageRole::Assistant,
                        content: text.clone(),
                        tool_calls,
                        request_id: request_id.as_uuid(),
                        created_at: at,
                    },
                );
            }
            ConversationEvent::TurnFailed {
                request_id,
                message,
                ..
            } => {
                self.pending.remove(&turn(*request_id));
                conversation.message_count += 1;
                self.messages.insert(
                    message_key,
                    MessageRow {
                        role: MessageRole::Error,
                        content: message.clone(),
                        tool_calls: Vec::new(),
                        request_id: request_id.as_uuid(),
                        created_at: at,
                    },
                );
            }
            ConversationEvent::ConversationRenamed { title } => {
                conversation.title.clone_from(title);
            }
            ConversationEvent::ConversationDeleted {} => conversation.deleted = true,
            // Approvals show through the calls' results; feedback is history only.
            ConversationEvent::ToolCallApprovalRequested { .. }
            | ConversationEvent::ToolCallApprovalDecided { .. }
            | ConversationEvent::FeedbackGiven { .. } => {}
        }
        None
    }
}

/// A conversation's title from its first user message: whitespace runs become one
/// space, and past [`TITLE_MAX_CHARS`] characters it is cut and ends with "…".
pub(crate) fn conversation_title(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let flat = words.join(" ");
    if flat.chars().count() <= TITLE_MAX_CHARS {
        return flat;
    }
    let cut: String = flat.chars().take(TITLE_MAX_CHARS - 1).collect();
    format!("{}…", cut.trim_end())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;
    use proto_schemas::chat::ChatErrorCode;
    use proto_schemas::{CommandId, RequestId, TaskNumber, UserId};
    use serde_json::json;

    use super::*;

    fn at(second: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, second).unwrap()
    }

    fn task(user: &str, event: TaskEvent) -> Fact {
        Fact {
            projected: Projected::Task {
                user_id: user.into(),
                event,
            },
            recorded_at: at(0),
        }
    }

    fn conv(id: Uuid, seq: i64, second: u32, event: ConversationEvent) -> Fact {
        Fact {
            projected: Projected::Conversation {
                conversation_id: id,
                seq,
                event,
            },
            recorded_at: at(second),
        }
    }

    /// Conversation `id` started by ada (its first event).
    fn started(id: Uuid) -> Fact {
        conv(
            id,
            1,
            0,
            ConversationEvent::ConversationStarted {
                user_id: UserId::parse("ada").unwrap(),
            },
        )
    }

    /// The user's message of `request` as the conversation's second event.
    fn said(id: Uuid, request: RequestId, text: &str) -> Fact {
        conv(
            id,
            2,
            1,
            ConversationEvent::UserMessageReceived {
                request_id: request,
                text: text.into(),
                regenerates: None,
            },
        )
    }

    fn added(n: u32, title: &str) -> TaskEvent {
        TaskEvent::TaskAdded {
            task_id: TaskNumber(n),
            title: title.into(),
            description: String::new(),
        }
    }

    fn fold(facts: &[Fact]) -> (ReadModels, Vec<Anomaly>) {
        let mut models = ReadModels::default();
        let anomalies = facts.iter().filter_map(|f| models.apply(f)).collect();
        (models, anomalies)
    }

    #[test]
    fn tasks_follow_the_aggregate_rules() {
        let (models, _) = fold(&[
            task("ada", added(1, "Buy milk")),
            task("ada", added(2, "Call mum")),
            task("bob", added(1, "Bob's own")),
            task(
                "ada",
                TaskEvent::TaskCompleted {
                    task_id: TaskNumber(1),
                },
            ),
            task(
                "ada",
                TaskEvent::TaskUpdated {
                    task_id: TaskNumber(2),
                    title: None,
                    description: Some("on Sunday".into()),
                },
            ),
            task(
                "ada",
                TaskEvent::TaskDeleted {
                    task_id: TaskNumber(1),
                },
            ),
            // Events naming missing tasks change nothing.
            task(
                "ada",
                TaskEvent::TaskCompleted {
                    task_id: TaskNumber(9),
                },
            ),
            task(
                "ada",
                TaskEvent::TaskUpdated {
                    task_id: TaskNumber(9),
                    title: Some("x".into()),
                    description: None,
                },
            ),
        ]);
        let ada2 = &models.tasks[&TaskKey {
            user_id: "ada".into(),
            task_id: 2,
        }];
        assert_eq!(ada2.title, "Call mum");
        assert_eq!(ada2.description, "on Sunday");
        assert!(!ada2.completed);
        assert!(!models.tasks.contains_key(&TaskKey {
            user_id: "ada".into(),
            task_id: 1
        }));
        assert!(models.tasks.contains_key(&TaskKey {
            user_id: "bob".into(),
            task_id: 1
        }));
        assert_eq!(models.tasks.len(), 2);
    }

    #[test]
    fn a_turn_becomes_a_user_and_an_assistant_message_with_its_tool_calls() {
        let id = Uuid::now_v7();
        let request = RequestId::new();
        let requested =
            |step, call_id: &str, name: &str, args| ConversationEvent::ToolCallRequested {
                request_id: request,
                step,
                call_id: call_id.into(),
                name: name.into(),
                arguments: args,
                command_id: CommandId::for_tool_call(request, step, 0),
            };
        let completed = |call_id: &str, name: &str, result| ConversationEvent::ToolCallCompleted {
            request_id: request,
            call_id: call_id.into(),
            name: name.into(),
            result,
        };
        let (models, anomalies) = fold(&[
            started(id),
            said(id, request, "Add milk and list"),
            conv(
                id,
                3,
                2,
                requested(0, "call_a", "add_task", json!({"title": "milk"})),
            ),
            conv(id, 4, 2, requested(0, "call_b", "list_tasks", json!({}))),
            // Completions may arrive in another order; the reply keeps request order.
            conv(
                id,
                5,
                3,
                completed("call_b", "list_tasks", json!({"count": 1})),
            ),
            conv(
                id,
                6,
                3,
                completed("call_a", "add_task", json!({"task_id": 1})),
            ),
            // Requested, never completed: the turn was resumed and asked again.
            conv(
                id,
                7,
                4,
                requested(1, "call_c", "delete_task", json!({"task_id": 1})),
            ),
            conv(
                id,
                8,
                5,
                ConversationEvent::AssistantReplied {
                    request_id: request,
                    text: "Done".into(),
                },
            ),
        ]);
        assert!(anomalies.is_empty());
        assert!(
            models.pending.is_empty(),
            "a replied turn leaves nothing pending"
        );
        let conversation = &models.conversations[&id];
        assert_eq!(conversation.user_id, "ada");
        assert_eq!(conversation.title, "Add milk and list");
        assert_eq!(conversation.message_count, 2);
        assert_eq!(conversation.created_at, at(0));
        assert_eq!(conversation.updated_at, at(5));
        let messages: Vec<_> = models.messages.iter().collect();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].0.seq, 2);
        assert_eq!(messages[0].1.role, MessageRole::User);
        let reply = messages[1].1;
        assert_eq!(reply.role, MessageRole::Assistant);
        assert_eq!(reply.content, "Done");
        assert_eq!(
            reply.tool_calls,
            vec![
                ToolCallRecord {
                    name: "add_task".into(),
                    arguments: json!({"title": "milk"}),
                    result: json!({"task_id": 1})
                },
                ToolCallRecord {
                    name: "list_tasks".into(),
                    arguments: json!({}),
                    result: json!({"count": 1})
                },
            ]
        );
    }

    #[test]
    fn a_failed_turn_is_an_error_message_and_clears_its_calls() {
        let id = Uuid::now_v7();
        let request = RequestId::new();
        let (models, _) = fold(&[
            started(id),
            said(id, request, "hi"),
            conv(
                id,
                3,
                2,
                ConversationEvent::ToolCallRequested {
                    request_id: request,
                    step: 0,
                    call_id: "c".into(),
                    name: "list_tasks".into(),
                    arguments: json!({}),
                    command_id: CommandId::new(),
                },
            ),
            conv(
                id,
                4,
                3,
                ConversationEvent::TurnFailed {
                    request_id: request,
                    code: ChatErrorCode::ModelUnavailable,
                    message: "The assistant is unavailable".into(),
                },
            ),
        ]);
        assert!(models.pending.is_empty());
        let error = &models.messages[&MessageKey {
            conversation_id: id,
            seq: 4,
        }];
        assert_eq!(error.role, MessageRole::Error);
        assert_eq!(error.content, "The assistant is unavailable");
        assert!(error.tool_calls.is_empty());
        assert_eq!(models.conversations[&id].message_count, 2);
    }

    #[test]
    fn renames_deletes_and_regenerates_change_the_conversation_row() {
        let id = Uuid::now_v7();
        let first = RequestId::new();
        let again = RequestId::new();
        let replied = |seq, request| {
            conv(
                id,
                seq,
                2,
                ConversationEvent::AssistantReplied {
                    request_id: request,
                    text: "Added.".into(),
                },
            )
        };
        let (models, anomalies) = fold(&[
            started(id),
            said(id, first, "Add milk"),
            replied(3, first),
            conv(
                id,
                4,
                3,
                ConversationEvent::ConversationRenamed {
                    title: "Groceries".into(),
                },
            ),
            conv(
                id,
                5,
                4,
                ConversationEvent::UserMessageReceived {
                    request_id: again,
                    text: "Add milk".into(),
                    regenerates: Some(first),
                },
            ),
            replied(6, again),
        ]);
        assert!(anomalies.is_empty());
        let row = &models.conversations[&id];
        // The person's title stays; the superseded turn's two messages are not counted.
        assert_eq!(row.title, "Groceries");
        assert_eq!(row.superseded, [first.as_uuid()]);
        assert_eq!(row.message_count, 2);
        assert!(!row.deleted);
        // Its rows stay (the log is the truth); queries leave them out.
        assert_eq!(models.messages.len(), 4);

        let mut models = models;
        models.apply(&conv(id, 7, 5, ConversationEvent::ConversationDeleted {}));
        assert!(models.conversations[&id].deleted);
    }

    #[test]
    fn events_of_a_conversation_that_never_started_are_not_shown() {
        let id = Uuid::now_v7();
        let (models, anomalies) = fold(&[conv(
            id,
            1,
            0,
            ConversationEvent::UserMessageReceived {
                request_id: RequestId::new(),
                text: "x".into(),
                regenerates: None,
            },
        )]);
        assert_eq!(anomalies, vec![Anomaly::UnknownConversation(id)]);
        assert_eq!(models, ReadModels::default());
    }

    #[test]
    fn titles_are_flattened_and_cut() {
        assert_eq!(conversation_title("  Buy\n milk  "), "Buy milk");
        let long = "word ".repeat(30);
        let title = conversation_title(&long);
        assert_eq!(title.chars().count(), TITLE_MAX_CHARS);
        assert!(title.ends_with('…'));
        assert_eq!(conversation_title(&"é".repeat(60)), "é".repeat(60));
    }
}
