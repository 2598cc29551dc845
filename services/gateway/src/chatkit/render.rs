//! One live turn as ChatKit thread stream events: the gateway's chunks and the reply,
//! rendered for the API's relay (`crate::progress`, [`RenderTurn`]).
//!
//! Tool calls become one workflow item (`workflow_<request id>`) whose tasks load and
//! complete as the calls run, each announced with a `progress_update` ("Adding
//! task…"); the answer is an assistant message (`assistant_<request id>`) streamed as
//! content-part text deltas and finished with the reply's text. The item ids are the
//! ones `items.list` returns for the turn later.

use axum::response::sse::Event;
use chrono::{DateTime, Utc};
use proto_schemas::RequestId;
use proto_schemas::chat::{ChatOutcome, ChatReply, ChatStreamChunk, ToolCallRecord};

use super::threads::{
    assistant_item, assistant_item_id, tool_task, tool_title, workflow_item, workflow_item_id,
};
use super::types::{AssistantContent, ItemUpdate, NoticeLevel, StreamEvent, Task, ThreadItem};
use crate::error::ApiError;
use crate::progress::RenderTurn;
use crate::routes::chat::answer;

/// A stream event as SSE: `data: <json>`, no event name, as the protocol sends it.
pub(crate) fn sse(event: &StreamEvent) -> Event {
    // The types are strings, numbers and JSON values: they always serialize.
    Event::default().data(serde_json::to_string(event).unwrap_or_default())
}

/// The state of the turn's items as streamed so far.
pub(crate) struct TurnEvents {
    thread_id: String,
    request_id: RequestId,
    started_at: DateTime<Utc>,
    /// The workflow's tasks with their call ids; empty until the first tool call.
    tasks: Vec<(String, Task)>,
    workflow_done: bool,
    /// Whether the answer's item was added (its text comes whole with the reply).
    answer_open: bool,
}

impl TurnEvents {
    pub(crate) fn new(thread_id: String, request_id: RequestId) -> Self {
        Self {
            thread_id,
            request_id,
            started_at: Utc::now(),
            tasks: Vec::new(),
            workflow_done: false,
            answer_open: false,
        }
    }

    fn workflow(&self) -> ThreadItem {
        workflow_item(
            &self.thread_id,
            self.request_id,
            self.tasks.iter().map(|(_, task)| task.clone()).collect(),
            self.started_at,
        )
    }

    /// `thread.item.done` for the workflow, once, if it has tasks.
    fn close_workflow(&mut self, out: &mut Vec<StreamEvent>) {
        if !self.tasks.is_empty() && !self.workflow_done {
            self.workflow_done = true;
            out.push(StreamEvent::ItemDone {
                item: self.workflow(),
            });
        }
    }

    fn tool_started(
        &mut self,
        call_id: String,
        name: &str,
        arguments: &serde_json::Value,
        out: &mut Vec<StreamEvent>,
    ) {
        let (_, doing) = tool_title(name);
        out.push(StreamEvent::ProgressUpdate { text: doing });
        let task = tool_task(name, arguments, None);
        self.tasks.push((call_id, task.clone()));
        if self.tasks.len() == 1 {
            out.push(StreamEvent::ItemAdded {
                item: self.workflow(),
            });
        } else {
            out.push(StreamEvent::ItemUpdated {
                item_id: workflow_item_id(self.request_id),
                update: ItemUpdate::TaskAdded {
                    task_index: index(self.tasks.len() - 1),
                    task,
                },
            });
        }
    }

    fn tool_finished(
        &mut self,
        call: &ToolCallRecord,
        call_id: String,
        out: &mut Vec<StreamEvent>,
    ) {
        let task = tool_task(&call.name, &call.arguments, Some(&call.result));
        let position = match self.tasks.iter().position(|(id, _)| *id == call_id) {
            Some(position) => position,
            // Its start was missed (the chunks are best effort): it starts done.
            None => {
                self.tool_started(call_id, &call.name, &call.arguments, out);
                self.tasks.len() - 1
            }
        };
        self.tasks[position].1 = task.clone();
        out.push(StreamEvent::ItemUpdated {
            item_id: workflow_item_id(self.request_id),
            update: ItemUpdate::TaskUpdated {
                task_index: index(position),
                task,
            },
        });
    }

    /// Adds the assistant message item and its content part, once.
    fn open_answer(&mut self, out: &mut Vec<StreamEvent>) {
        if self.answer_open {
            return;
        }
        self.close_workflow(out);
        self.answer_open = true;
        out.push(StreamEvent::ItemAdded {
            item: ThreadItem::AssistantMessage {
                id: assistant_item_id(self.request_id),
                thread_id: self.thread_id.clone(),
                created_at: Utc::now(),
                content: Vec::new(),
            },
        });
        out.push(StreamEvent::ItemUpdated {
            item_id: assistant_item_id(self.request_id),
            update: ItemUpdate::ContentPartAdded {
                content_index: 0,
                content: AssistantContent::text(""),
            },
        });
    }

    fn events(&mut self, chunk: ChatStreamChunk) -> Vec<StreamEvent> {
        let mut out = Vec::new();
        match chunk {
            ChatStreamChunk::ToolCallStarted {
                call_id,
                name,
                arguments,
            } => self.tool_started(call_id, &name, &arguments, &mut out),
            ChatStreamChunk::ToolCallFinished {
                call_id,
                name,
                arguments,
                result,
            } => {
                let call = ToolCallRecord {
                    name,
                    arguments,
                    result,
                };
                self.tool_finished(&call, call_id, &mut out);
            }
            ChatStreamChunk::TextDelta { text } => {
                self.open_answer(&mut out);
                out.push(StreamEvent::ItemUpdated {
                    item_id: assistant_item_id(self.request_id),
                    update: ItemUpdate::TextDelta {
                        content_index: 0,
                        delta: text,
                    },
                });
            }
            // The approval shows at the end, when the reply says the turn paused.
            ChatStreamChunk::Accepted { .. } | ChatStreamChunk::ApprovalRequired { .. } => {}
        }
        out
    }

    /// A reply's tool calls the chunks did not show (a retried request answered from
    /// the stored reply has no chunks), as a finished workflow.
    fn catch_up_calls(&mut self, calls: &[ToolCallRecord], out: &mut Vec<StreamEvent>) {
        if self.tasks.is_empty() && !calls.is_empty() {
            self.tasks = calls
                .iter()
                .enumerate()
                .map(|(n, call)| {
                    let task = tool_task(&call.name, &call.arguments, Some(&call.result));
                    (format!("call-{n}"), task)
                })
                .collect();
            self.workflow_done = true;
            out.push(StreamEvent::ItemDone {
                item: self.workflow(),
            });
        }
    }

    fn end_events(&mut self, end: Result<ChatReply, ApiError>) -> Vec<StreamEvent> {
        let mut out = Vec::new();
        let reply = match end {
            Ok(reply) => reply,
            Err(error) => {
                self.close_workflow(&mut out);
                out.push(error_event(&error));
                return out;
            }
        };
        match &reply.outcome {
            ChatOutcome::Answered {
                response,
                tool_calls,
            } => {
                self.catch_up_calls(tool_calls, &mut out);
                self.open_answer(&mut out);
                let id = assistant_item_id(self.request_id);
                out.push(StreamEvent::ItemUpdated {
                    item_id: id,
                    update: ItemUpdate::ContentPartDone {
                        content_index: 0,
                        content: AssistantContent::text(response.clone()),
                    },
                });
                out.push(StreamEvent::ItemDone {
                    item: assistant_item(
                        &self.thread_id,
                        self.request_id,
                        response.clone(),
                        Utc::now(),
                    ),
                });
            }
            ChatOutcome::PendingApproval { tool_calls, .. } => {
                self.catch_up_calls(tool_calls, &mut out);
                self.close_workflow(&mut out);
                // ChatKit has no approvals: say where to give it.
                out.push(StreamEvent::Notice {
                    level: NoticeLevel::Warning,
                    message: "The assistant waits for your approval of a tool call. Approve or \
                              decline it on taskchat's own page; the answer then shows here."
                        .to_owned(),
                });
            }
            ChatOutcome::Failed { .. } => {
                self.close_workflow(&mut out);
                if let Err(error) = answer(reply) {
                    out.push(error_event(&error));
                }
            }
        }
        out
    }
}

/// The protocol's `error` event for an API error: its message (no internals), and a
/// retry offered for the server's own failures.
pub(crate) fn error_event(error: &ApiError) -> StreamEvent {
    if error.status().is_server_error() {
        tracing::warn!(code = error.code(), %error, "chatkit stream ended with an error");
    }
    StreamEvent::error(error.to_string(), error.status().is_server_error())
}

fn index(position: usize) -> u32 {
    u32::try_from(position).unwrap_or(u32::MAX)
}

impl RenderTurn for TurnEvents {
    fn chunk(&mut self, _sequence: u64, chunk: ChatStreamChunk) -> Vec<Event> {
        // No SSE ids: ChatKit does not resume streams.
        self.events(chunk).iter().map(sse).collect()
    }

    fn end(&mut self, end: Result<ChatReply, ApiError>) -> Vec<Event> {
        self.end_events(end).iter().map(sse).collect()
    }
}

#[cfg(test)]
mod tests {
    use proto_schemas::ConversationId;
    use serde_json::{Value, json};

    use super::*;
    use crate::error::TurnIds;

    fn types(events: &[StreamEvent]) -> Vec<String> {
        events
            .iter()
            .map(|event| {
                let value = serde_json::to_value(event).unwrap();
                let kind = value["type"].as_str().unwrap().to_owned();
                match value["update"]["type"].as_str() {
                    Some(update) => format!("{kind}:{update}"),
                    None => kind,
                }
            })
            .collect()
    }

    #[test]
    fn a_turn_with_a_tool_call_streams_a_workflow_then_the_answer() {
        let request_id = RequestId::new();
        let mut turn = TurnEvents::new("t".to_owned(), request_id);
        let mut events = turn.events(ChatStreamChunk::ToolCallStarted {
            call_id: "c1".to_owned(),
            name: "add_task".to_owned(),
            arguments: json!({"title": "milk"}),
        });
        events.extend(turn.events(ChatStreamChunk::ToolCallFinished {
            call_id: "c1".to_owned(),
            name: "add_task".to_owned(),
            arguments: json!({"title": "milk"}),
            result: json!({"task_id": 1}),
        }));
        events.extend(turn.events(ChatStreamChunk::TextDelta {
            text: "Added".to_owned(),
        }));
        let reply = ChatReply {
            request_id,
            conversation_id: ConversationId::new(),
            user_id: None,
            outcome: ChatOutcome::Answered {
                response: "Added milk.".to_owned(),
                tool_calls: Vec::new(),
            },
        };
        events.extend(turn.end_events(Ok(reply)));
        assert_eq!(
            types(&events),
            [
                "progress_update",
                "thread.item.added",
                "thread.item.updated:workflow.task.updated",
                "thread.item.done",
                "thread.item.added",
                "thread.item.updated:assistant_message.content_part.added",
                "thread.item.updated:assistant_message.content_part.text_delta",
                "thread.item.updated:assistant_message.content_part.done",
                "thread.item.done",
            ]
        );
        let done: Value = serde_json::to_value(events.last().unwrap()).unwrap();
        assert_eq!(done["item"]["id"], assistant_item_id(request_id));
        assert_eq!(done["item"]["content"][0]["text"], "Added milk.");
        let progress: Value = serde_json::to_value(&events[0]).unwrap();
        assert_eq!(progress["text"], "Adding task…");
    }

    #[test]
    fn a_stored_reply_shows_its_calls_and_a_failure_ends_with_an_error_event() {
        let request_id = RequestId::new();
        let conversation_id = ConversationId::new();
        let mut stored = TurnEvents::new("t".to_owned(), request_id);
        let reply = ChatReply {
            request_id,
            conversation_id,
            user_id: None,
            outcome: ChatOutcome::Answered {
                response: "Added milk.".to_owned(),
                tool_calls: vec![ToolCallRecord {
                    name: "add_task".to_owned(),
                    arguments: json!({"title": "milk"}),
                    result: json!({"task_id": 1}),
                }],
            },
        };
        let events = stored.end_events(Ok(reply));
        assert_eq!(types(&events)[0], "thread.item.done");
        let workflow = serde_json::to_value(&events[0]).unwrap();
        assert_eq!(workflow["item"]["id"], workflow_item_id(request_id));
        assert_eq!(
            workflow["item"]["workflow"]["tasks"][0]["status_indicator"],
            "complete"
        );

        let mut failed = TurnEvents::new("t".to_owned(), request_id);
        let turn = TurnIds {
            request_id,
            conversation_id,
        };
        let events = failed.end_events(Err(ApiError::ReplyTimeout { turn }));
        assert_eq!(types(&events), ["error"]);
        let error = serde_json::to_value(&events[0]).unwrap();
        assert_eq!(error["code"], "custom");
        assert_eq!(error["allow_retry"], true);
    }
}
