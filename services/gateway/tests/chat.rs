//! Chat turns through a real gateway and the machine's NATS, with a fake worker
//! consuming the real requests stream.

mod common;

use std::time::Duration;

use common::{FakeWorker, Gateway, Options, Script, added};
use proto_schemas::chat::{ChatError, ChatErrorCode, ChatOutcome, ChatStreamChunk};
use proto_schemas::{ConversationId, RequestId};
use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::{expect_json, open_event_stream, read_events};

fn answer(title: &str) -> Script {
    Script {
        outcome: Some(added(title)),
        ..Script::default()
    }
}

/// A chat body continuing `conversation`.
fn in_conversation(message: &str, conversation: ConversationId) -> Value {
    json!({"message": message, "conversation_id": conversation.to_string()})
}

/// A turn that fails with `code`; `message` is what the worker says (not the user).
fn failure(code: ChatErrorCode, message: &str) -> Script {
    Script {
        outcome: Some(ChatOutcome::Failed {
            error: ChatError {
                code,
                message: message.into(),
            },
        }),
        ..Script::default()
    }
}

#[tokio::test]
async fn chat_answers_in_the_reference_shape() {
    let gateway = Gateway::start().await;
    let worker = FakeWorker::start(&gateway, |_| answer("buy groceries")).await;

    let body = expect_json(
        gateway.chat(
            "test-user",
            json!({"message": "Add a task to buy groceries"}),
        ),
        StatusCode::OK,
    )
    .await;
    let conversation: ConversationId = body["conversation_id"].as_str().unwrap().parse().unwrap();
    let request: RequestId = body["request_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        body["response"],
        "I've added \"buy groceries\" to your list."
    );
    assert_eq!(
        body["tool_calls"],
        json!([{
            "name": "add_task",
            "arguments": {"title": "buy groceries"},
            "result": {"task_id": 1, "status": "created", "title": "buy groceries"}
        }])
    );

    let received = worker.received();
    assert_eq!(received.len(), 1);
    let first = &received[0];
    assert_eq!(first.request.user_id.as_str(), "test-user");
    assert_eq!(first.request.message, "Add a task to buy groceries");
    assert_eq!(first.request.request_id, request);
    assert_eq!(first.request.conversation_id, conversation);
    assert!(first.request.new_conversation);
    assert_eq!(
        first
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_owned()),
        Some(request.to_string())
    );
    assert!(
        first.headers.get("traceparent").is_some(),
        "the request carries the trace"
    );

    // The same conversation continues by id.
    let body = expect_json(
        gateway.chat("test-user", in_conversation("what's open?", conversation)),
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["conversation_id"], conversation.to_string());
    let second = &worker.received()[1];
    assert_eq!(second.request.conversation_id, conversation);
    assert!(!second.request.new_conversation);
    assert_ne!(second.request.request_id, request);
}

#[tokio::test]
async fn no_reply_in_time_is_504_with_the_request_id() {
    let gateway = Gateway::start_with(Options {
        reply_timeout_secs: 1,
        ..Options::default()
    })
    .await;
    let worker = FakeWorker::start(&gateway, |_| Script {
        delay: Duration::from_secs(3),
        outcome: Some(added("slow")),
        ..Script::default()
    })
    .await;

    let started = std::time::Instant::now();
    let body = expect_json(
        gateway.chat("ada", json!({"message": "add slow"})),
        StatusCode::GATEWAY_TIMEOUT,
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered at the timeout, not the reply"
    );
    assert_eq!(body["error"]["code"], "reply_timeout");
    let request = body["error"]["request_id"].as_str().unwrap();
    assert_eq!(worker.received()[0].request.request_id.to_string(), request);
    assert!(body["error"]["message"].as_str().unwrap().contains(request));
    assert_eq!(
        body["error"]["conversation_id"],
        worker.received()[0].request.conversation_id.to_string()
    );
}

#[tokio::test]
async fn idempotency_key_returns_the_first_answer_and_runs_once() {
    let gateway = Gateway::start().await;
    // Slow enough that the concurrent retry arrives while the first turn runs.
    let worker = FakeWorker::start(&gateway, |request| Script {
        delay: Duration::from_millis(500),
        outcome: Some(added(&request.message)),
        ..Script::default()
    })
    .await;
    let send =
        |key, message| expect_json(gateway.chat_with_key("ada", key, message), StatusCode::OK);

    let (first, concurrent) = tokio::join!(send("key-1", "buy milk"), send("key-1", "buy milk"));
    assert_eq!(first, concurrent);
    assert!(first["request_id"].is_string(), "{first}");

    // A retry after the turn finished is answered from the stored reply.
    assert_eq!(send("key-1", "buy milk").await, first);
    assert_eq!(worker.received().len(), 1, "the turn ran once");

    // The same key for another message is refused and changes nothing.
    let reused = expect_json(
        gateway.chat_with_key("ada", "key-1", "buy bread"),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(reused["error"]["code"], "idempotency_key_reused");
    assert_eq!(worker.received().len(), 1);

    // Keys are per user: bob's "key-1" is his own turn.
    let bob = expect_json(
        gateway.chat_with_key("bob", "key-1", "buy milk"),
        StatusCode::OK,
    )
    .await;
    assert_ne!(bob["request_id"], first["request_id"]);
    assert_eq!(worker.received().len(), 2);
}

#[tokio::test]
async fn stream_relays_progress_then_the_final_answer() {
    let gateway = Gateway::start().await;
    let _worker = FakeWorker::start(&gateway, |_| Script {
        delay: Duration::from_millis(100),
        chunks: vec![
            ChatStreamChunk::ToolCallStarted {
                call_id: "c1".into(),
                name: "add_task".into(),
                arguments: json!({"title": "buy groceries"}),
            },
            ChatStreamChunk::ToolCallFinished {
                call_id: "c1".into(),
                name: "add_task".into(),
                arguments: json!({"title": "buy groceries"}),
                result: json!({"task_id": 1, "status": "created", "title": "buy groceries"}),
            },
            ChatStreamChunk::TextDelta {
                text: "I've added ".into(),
            },
            ChatStreamChunk::TextDelta {
                text: "\"buy groceries\" to your list.".into(),
            },
        ],
        outcome: Some(added("buy groceries")),
    })
    .await;

    let response = open_event_stream(
        gateway.chat_stream("ada", json!({"message": "Add a task to buy groceries"})),
    )
    .await;
    let request_header = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let events = read_events(response).await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names,
        [
            "tool_call_started",
            "tool_call_finished",
            "delta",
            "delta",
            "final"
        ]
    );
    assert_eq!(
        events[0].data,
        json!({"call_id": "c1", "name": "add_task", "arguments": {"title": "buy groceries"}})
    );
    assert_eq!(events[1].data["result"]["status"], "created");
    assert_eq!(events[2].data, json!({"text": "I've added "}));
    let last = &events[4].data;
    assert_eq!(
        last["response"],
        "I've added \"buy groceries\" to your list."
    );
    assert_eq!(last["tool_calls"][0]["name"], "add_task");
    assert_eq!(last["request_id"], request_header);
    assert!(last["conversation_id"].is_string());
    // Ids: the chunks' positions in the progress stream, rising (the turn's Accepted
    // chunk, not shown, came first), then `end`.
    let positions: Vec<u64> = events[..4]
        .iter()
        .map(|e| e.id.as_deref().expect("an id").parse().expect("a number"))
        .collect();
    assert!(positions[0] > 1, "{positions:?}");
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    assert_eq!(events[4].id.as_deref(), Some("end"));
}

#[tokio::test]
async fn stream_ends_with_an_error_event_for_a_failed_turn() {
    let gateway = Gateway::start().await;
    let _worker = FakeWorker::start(&gateway, |_| Script {
        chunks: vec![ChatStreamChunk::TextDelta {
            text: "Let me".into(),
        }],
        ..failure(ChatErrorCode::ModelUnavailable, "provider timed out")
    })
    .await;
    let response = open_event_stream(gateway.chat_stream("ada", json!({"message": "hello"}))).await;
    let events = read_events(response).await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["delta", "error"]);
    assert_eq!(events[1].data["error"]["code"], "model_unavailable");
    assert!(events[1].data["error"]["request_id"].is_string());
}

#[tokio::test]
async fn a_client_that_leaves_the_stream_does_not_stop_the_turn() {
    let gateway = Gateway::start().await;
    let worker = FakeWorker::start(&gateway, |_| Script {
        delay: Duration::from_millis(500),
        outcome: Some(added("buy milk")),
        ..Script::default()
    })
    .await;
    let response = open_event_stream(
        gateway
            .chat_stream("ada", json!({"message": "buy milk"}))
            .header("Idempotency-Key", "leave-early"),
    )
    .await;
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    drop(response);

    // The turn finishes without the client; the retry gets its answer.
    let body = expect_json(
        gateway.chat_with_key("ada", "leave-early", "buy milk"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["request_id"], request_id);
    assert_eq!(worker.received().len(), 1);
}

#[tokio::test]
async fn a_conversation_that_is_not_the_users_is_404() {
    let gateway = Gateway::start().await;
    let _worker = FakeWorker::start(&gateway, |_| {
        failure(ChatErrorCode::ConversationNotFound, "no such conversation")
    })
    .await;
    let conversation = ConversationId::new();
    let body = expect_json(
        gateway.chat("ada", in_conversation("hi", conversation)),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(body["error"]["code"], "conversation_not_found");
    assert_eq!(body["error"]["conversation_id"], conversation.to_string());
}

#[tokio::test]
async fn model_failures_are_a_friendly_502_with_the_request_id() {
    let gateway = Gateway::start().await;
    let worker = FakeWorker::start(&gateway, |_| {
        failure(
            ChatErrorCode::ModelUnavailable,
            "upstream 500: internal stack trace",
        )
    })
    .await;
    let body = expect_json(
        gateway.chat("ada", json!({"message": "hi"})),
        StatusCode::BAD_GATEWAY,
    )
    .await;
    assert_eq!(body["error"]["code"], "model_unavailable");
    let request = worker.received()[0].request.request_id.to_string();
    assert_eq!(body["error"]["request_id"], request);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(&request), "{message}");
    assert!(!message.contains("stack trace"), "{message}");
}

#[tokio::test]
async fn shutdown_ends_a_waiting_chat_with_its_request_id() {
    let gateway = Gateway::start().await;
    let worker = FakeWorker::start(&gateway, |_| Script::default()).await;
    let pending = gateway.chat("ada", json!({"message": "hi"})).send();
    let pending = tokio::spawn(pending);
    testkit::eventually(
        Duration::from_secs(5),
        "the request to be published",
        || async { (!worker.received().is_empty()).then_some(()) },
    )
    .await;
    gateway.begin_shutdown();
    let response = pending.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "shutting_down");
    assert_eq!(
        body["error"]["request_id"],
        worker.received()[0].request.request_id.to_string()
    );
    gateway.stop().await;
}

#[tokio::test]
async fn the_request_joins_the_callers_trace() {
    let gateway = Gateway::start().await;
    let worker = FakeWorker::start(&gateway, |_| answer("x")).await;
    expect_json(
        gateway.chat("ada", json!({"message": "add x"})).header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        StatusCode::OK,
    )
    .await;
    let received = worker.received();
    let traceparent = received[0]
        .headers
        .get("traceparent")
        .expect("traceparent")
        .as_str();
    assert!(
        traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "the bus message continues the caller's trace: {traceparent}"
    );
    assert!(
        !traceparent.contains("00f067aa0ba902b7"),
        "the gateway's own span is the parent"
    );
}
