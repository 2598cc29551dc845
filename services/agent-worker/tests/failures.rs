//! When things fail: a flaky model server is retried, a dead one gives the user a
//! clear error and a failure event, and a request whose every delivery fails is still
//! answered. In every case nothing stays stuck in the work queue.

mod common;

use std::time::Duration;

use common::{Stack, chat_error, failed};
use proto_schemas::chat::ChatErrorCode;
use proto_schemas::events::ConversationEvent;
use testkit::{ModelStub, Scripted};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_server_failing_twice_with_503_is_retried_and_the_turn_answered() {
    let (stack, model) = Stack::with_model(|call| {
        if call < 2 {
            Scripted::Status(503, None)
        } else {
            Scripted::Proxy
        }
    })
    .await;

    let request = stack.new_chat("alice", "add a task to buy milk");
    let (_, calls) = stack.chat_answered(&request).await;
    assert_eq!(calls[0].result["status"], "created");
    // Two failures, then the two model steps of the turn.
    assert_eq!(model.calls(), 4);
    assert_eq!(stack.tasks("alice").await.len(), 1);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let (stack, model) = Stack::with_model(|call| {
        if call == 0 {
            Scripted::Status(429, Some(1))
        } else {
            Scripted::Proxy
        }
    })
    .await;

    stack
        .chat_answered(&stack.new_chat("alice", "show my tasks"))
        .await;
    let requests = model.requests.lock().unwrap().clone();
    let waited = requests[1].0 - requests[0].0;
    assert!(
        waited >= Duration::from_millis(950),
        "retried after {waited:?}, not after Retry-After: 1"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_server_that_always_fails_gives_a_clear_error_and_a_failure_event() {
    let (mut stack, model) = Stack::with_model(|_| Scripted::Status(503, None)).await;
    let retries = stack.worker_config().model_retries as usize;

    let request = stack.new_chat("alice", "add a task to buy milk");
    let reply = stack.chat(&request).await;
    let error = failed(&reply);
    assert_eq!(
        error,
        &chat_error(
            ChatErrorCode::ModelUnavailable,
            agent_worker::prompt::MODEL_UNAVAILABLE_MESSAGE
        )
    );
    assert!(
        !error.message.contains("503"),
        "no internals reach the user"
    );
    assert_eq!(model.calls(), retries + 1);

    let events = stack.conversation(request.conversation_id).await;
    assert!(
        matches!(
            events.last(),
            Some(ConversationEvent::TurnFailed { code: ChatErrorCode::ModelUnavailable, request_id, .. })
                if *request_id == request.request_id
        ),
        "{events:#?}"
    );
    assert!(stack.task_events("alice").await.is_empty());
    stack.wait_queue_empty().await;

    // The conversation goes on once the model is back: the failed turn's message is
    // history, and the reply of the new turn is a normal one.
    let healthy = ModelStub::start(Some(stack.llm_base.clone()), |_| Scripted::Proxy).await;
    for worker in stack.workers.drain(..) {
        worker.stop().await;
    }
    stack.spawn_worker_on(&healthy, |_| {}).await;
    let again = stack.follow_up("alice", request.conversation_id, "add a task to buy milk");
    stack.chat_answered(&again).await;
    let shown = healthy.request(0);
    assert_eq!(
        shown["messages"][1]["content"], "add a task to buy milk",
        "the failed turn's message is history"
    );
    stack.stop().await;
}

/// Task commands cannot be delivered (no task-service listens on this prefix): each
/// delivery fails, is retried after its backoff, and the last one answers the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_every_delivery_fails_is_answered_with_an_error() {
    let mut stack = Stack::start(0).await;
    // The worker needs nothing from task-service to start (its tools are compiled in),
    // so it runs with none at all, and every task command finds no responders.
    for service in stack.services.drain(..1) {
        service.stop().await;
    }
    let mut config = stack.worker_config();
    config.max_deliver = 3;
    config.tool_attempts = 1;
    config.tool_timeout_secs = 1;
    config.redelivery_backoff_ms = vec![100];
    stack.spawn_worker(config).await;

    let request = stack.new_chat("alice", "add a task to buy milk");
    let reply = stack.chat(&request).await;
    assert_eq!(
        failed(&reply),
        &chat_error(
            ChatErrorCode::DeliveryExhausted,
            agent_worker::prompt::DELIVERY_EXHAUSTED_MESSAGE
        )
    );

    let events = stack.conversation(request.conversation_id).await;
    // The tool call was decided once and kept across deliveries, never completed.
    let requested = events
        .iter()
        .filter(|e| matches!(e, ConversationEvent::ToolCallRequested { .. }))
        .count();
    let completed = events
        .iter()
        .filter(|e| matches!(e, ConversationEvent::ToolCallCompleted { .. }))
        .count();
    assert_eq!((requested, completed), (1, 0), "{events:#?}");
    assert!(matches!(
        events.last(),
        Some(ConversationEvent::TurnFailed {
            code: ChatErrorCode::DeliveryExhausted,
            ..
        })
    ));
    stack.wait_queue_empty().await;
    stack.stop().await;
}
