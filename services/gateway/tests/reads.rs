//! Reads and readiness through a real gateway, with a fake projection answering the
//! query subjects on the machine's NATS.

mod common;

use common::{FakeProjection, Gateway};
use proto_schemas::ConversationId;
use reqwest::StatusCode;
use serde_json::json;
use testkit::expect_json;

#[tokio::test]
async fn tasks_are_asked_for_the_verified_user_with_the_filters() {
    let gateway = Gateway::start().await;
    let projection = FakeProjection::start(&gateway, gateway.subjects().query_tasks(), |_| {
        json!({
            "outcome": "found",
            "page": {
                "items": [{"id": 1, "title": "buy milk", "description": "", "completed": false}],
                "next_cursor": "after-1"
            }
        })
    })
    .await;

    let body = expect_json(
        gateway.get("ada", "/api/ada/tasks?status=pending&limit=1&cursor=c0"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        body,
        json!({
            "items": [{"id": 1, "title": "buy milk", "description": "", "completed": false}],
            "next_cursor": "after-1"
        })
    );
    assert_eq!(
        projection.queries(),
        [json!({"user_id": "ada", "status": "pending", "page": {"limit": 1, "cursor": "c0"}})]
    );

    expect_json(gateway.get("ada", "/api/ada/tasks"), StatusCode::OK).await;
    assert_eq!(
        projection.queries()[1],
        json!({"user_id": "ada", "status": "all", "page": {"limit": 50}})
    );
}

#[tokio::test]
async fn conversations_and_messages_come_from_the_projection() {
    let gateway = Gateway::start().await;
    let conversation = ConversationId::new();
    let request = proto_schemas::RequestId::new();
    let conversations = FakeProjection::start(
        &gateway,
        gateway.subjects().query_conversations(),
        move |_| {
            json!({"outcome": "found", "page": {"items": [{
                "conversation_id": conversation.to_string(),
                "title": "Add a task",
                "message_count": 2,
                "created_at": "2026-01-01T10:00:00Z",
                "updated_at": "2026-01-01T10:00:05Z"
            }]}})
        },
    )
    .await;
    let messages = FakeProjection::start(&gateway, gateway.subjects().query_messages(), move |query| {
        if query["conversation_id"] == conversation.to_string() {
            json!({"outcome": "found", "page": {"items": [
                {"role": "user", "content": "Add a task", "request_id": request.to_string(), "created_at": "2026-01-01T10:00:00Z"},
                {"role": "assistant", "content": "Done", "tool_calls": [
                    {"name": "add_task", "arguments": {"title": "x"}, "result": {"task_id": 1, "status": "created", "title": "x"}}
                ], "request_id": request.to_string(), "created_at": "2026-01-01T10:00:05Z"}
            ]}})
        } else {
            json!({"outcome": "not_found"})
        }
    })
    .await;

    let body = expect_json(gateway.get("ada", "/api/ada/conversations"), StatusCode::OK).await;
    assert_eq!(
        body["items"][0]["conversation_id"],
        conversation.to_string()
    );
    assert_eq!(body["items"][0]["message_count"], 2);
    assert!(body.get("next_cursor").is_none());
    assert_eq!(conversations.queries()[0]["user_id"], "ada");

    let path = format!("/api/ada/conversations/{conversation}/messages?limit=10");
    let body = expect_json(gateway.get("ada", &path), StatusCode::OK).await;
    assert_eq!(body["items"][0]["role"], "user");
    assert_eq!(body["items"][0]["tool_calls"], json!([]));
    assert_eq!(body["items"][1]["tool_calls"][0]["name"], "add_task");
    assert_eq!(
        messages.queries()[0],
        json!({"user_id": "ada", "conversation_id": conversation.to_string(), "page": {"limit": 10}})
    );

    // Another conversation (e.g. another user's): the projection says not found.
    let other = ConversationId::new();
    let body = expect_json(
        gateway.get("ada", &format!("/api/ada/conversations/{other}/messages")),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test]
async fn projection_refusals_and_absence_map_to_422_and_503() {
    let gateway = Gateway::start().await;
    let _tasks = FakeProjection::start(&gateway, gateway.subjects().query_tasks(), |query| {
        if query["page"]["cursor"] == "broken" {
            json!({"outcome": "invalid", "reason": "cursor is not one we issued"})
        } else {
            json!({"outcome": "unavailable", "reason": "rebuilding"})
        }
    })
    .await;
    let body = expect_json(
        gateway.get("ada", "/api/ada/tasks?cursor=broken"),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(body["error"]["message"], "cursor is not one we issued");

    let body = expect_json(
        gateway.get("ada", "/api/ada/tasks"),
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    assert_eq!(body["error"]["code"], "service_unavailable");
    assert!(
        !body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("rebuilding")
    );

    // Nobody answers conversations at all.
    expect_json(
        gateway.get("ada", "/api/ada/conversations"),
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
}

#[tokio::test]
async fn ready_only_when_the_projection_answers() {
    let gateway = Gateway::start().await;
    let readyz = || gateway.http.get(gateway.url("/readyz"));
    expect_json(readyz(), StatusCode::SERVICE_UNAVAILABLE).await;
    expect_json(gateway.http.get(gateway.url("/healthz")), StatusCode::OK).await;

    let _health = FakeProjection::start(
        &gateway,
        gateway.subjects().query_health(),
        |_| json!({"events_applied": 42}),
    )
    .await;
    let body = expect_json(readyz(), StatusCode::OK).await;
    assert_eq!(
        body,
        json!({"status": "ready", "projection_events_applied": 42})
    );
}

#[tokio::test]
async fn dev_tokens_work_for_the_api_when_enabled() {
    let gateway = Gateway::start_with(common::Options {
        dev_login: true,
        ..Default::default()
    })
    .await;
    let _tasks = FakeProjection::start(
        &gateway,
        gateway.subjects().query_tasks(),
        |_| json!({"outcome": "found", "page": {"items": []}}),
    )
    .await;
    let body = expect_json(
        gateway
            .http
            .post(gateway.url("/api/dev/token"))
            .json(&json!({"user_id": "alice"})),
        StatusCode::OK,
    )
    .await;
    let token = body["token"].as_str().unwrap();
    let tasks = |user: &str| {
        gateway
            .http
            .get(gateway.url(&format!("/api/{user}/tasks")))
            .bearer_auth(token)
    };
    expect_json(tasks("alice"), StatusCode::OK).await;
    expect_json(tasks("bob"), StatusCode::FORBIDDEN).await;
}
