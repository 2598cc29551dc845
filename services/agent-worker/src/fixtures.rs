//! Events and requests the unit tests of the turn's state machine and of the
//! conversation state are written with.

use proto_schemas::chat::ChatRequest;
use proto_schemas::events::ConversationEvent;
use proto_schemas::{CommandId, ConversationId, RequestId, UserId};
use serde_json::Value;

/// A request from alice, in a new conversation or (false) a follow-up.
pub(crate) fn request(new_conversation: bool) -> ChatRequest {
    ChatRequest {
        request_id: RequestId::new(),
        user_id: UserId::parse("alice").unwrap(),
        conversation_id: ConversationId::new(),
        new_conversation,
        message: "add a task to buy milk".into(),
        received_at: chrono::Utc::now(),
        kind: Default::default(),
    }
}

pub(crate) fn started(user: &str) -> ConversationEvent {
    ConversationEvent::ConversationStarted {
        user_id: UserId::parse(user).unwrap(),
    }
}

pub(crate) fn said(request: RequestId, text: &str) -> ConversationEvent {
    ConversationEvent::UserMessageReceived {
        request_id: request,
        text: text.into(),
        regenerates: None,
    }
}

pub(crate) fn replied(request: RequestId, text: &str) -> ConversationEvent {
    ConversationEvent::AssistantReplied {
        request_id: request,
        text: text.into(),
    }
}

pub(crate) fn requested(
    request: RequestId,
    step: u32,
    index: u32,
    call_id: &str,
    name: &str,
    arguments: Value,
) -> ConversationEvent {
    ConversationEvent::ToolCallRequested {
        request_id: request,
        step,
        call_id: call_id.into(),
        name: name.into(),
        arguments,
        command_id: CommandId::for_tool_call(request, step, index),
    }
}

pub(crate) fn completed(
    request: RequestId,
    call_id: &str,
    name: &str,
    result: Value,
) -> ConversationEvent {
    ConversationEvent::ToolCallCompleted {
        request_id: request,
        call_id: call_id.into(),
        name: name.into(),
        result,
    }
}
