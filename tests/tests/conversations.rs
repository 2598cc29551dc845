//! Conversations a person manages, end to end: rename, delete, and regenerate the last
//! answer (real services, NATS and Postgres). The log keeps everything; the read
//! models and later turns follow the events.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use system_tests::Stack;
use testkit::eventually;

/// `method path` on the gateway as `user`, with an optional JSON body.
async fn call(
    stack: &Stack,
    user: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = stack
        .http()
        .request(method, format!("{}{path}", stack.gateway))
        .bearer_auth(stack.token(user));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The user's conversations as (id, title), once the read model lists `count` of them.
async fn listed(
    stack: &Stack,
    user: &str,
    count: usize,
    title: Option<&str>,
) -> Vec<(String, String)> {
    eventually(Duration::from_secs(15), "the conversation list", || async {
        let (status, body) = stack
            .get(user, &format!("/api/{user}/conversations"))
            .await
            .ok()?;
        (status == StatusCode::OK).then_some(())?;
        let items: Vec<(String, String)> = body["items"]
            .as_array()?
            .iter()
            .map(|c| {
                (
                    c["conversation_id"].as_str().unwrap_or_default().to_owned(),
                    c["title"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let titled = title.is_none_or(|title| items.iter().any(|(_, t)| t == title));
        (items.len() == count && titled).then_some(items)
    })
    .await
}

/// `projection verify` must find the read models equal to a fresh fold of the log.
async fn verify(stack: &Stack) {
    stack.run_to_end("projection", &["verify"]).await;
}

/// `PATCH path` as `user`, renaming the conversation to `title`.
async fn rename(stack: &Stack, user: &str, path: &str, title: Value) -> (StatusCode, Value) {
    let body = json!({ "title": title });
    call(stack, user, Method::PATCH, path, Some(body)).await
}

/// `DELETE path` as `user`.
async fn delete(stack: &Stack, user: &str, path: &str) -> (StatusCode, Value) {
    call(stack, user, Method::DELETE, path, None).await
}

#[tokio::test]
async fn a_conversation_is_renamed_then_deleted_from_every_read() {
    let stack = Stack::start().await.unwrap();
    let first = stack.chat_ok("ada", "Add a task to buy milk", None).await;
    let id = first["conversation_id"].as_str().unwrap().to_owned();
    stack.chat_ok("ada", "Add a task to call mum", None).await;
    listed(&stack, "ada", 2, Some("Add a task to buy milk")).await;
    let path = format!("/api/ada/conversations/{id}");

    // Bad titles and other users change nothing.
    for (title, code) in [
        (json!("  "), "invalid_title"),
        (json!("x".repeat(201)), "invalid_title"),
    ] {
        let (status, body) = rename(&stack, "ada", &path, title).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["code"], code);
    }
    let theirs = format!("/api/eve/conversations/{id}");
    let (status, _) = rename(&stack, "eve", &theirs, json!("Mine")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = delete(&stack, "eve", &theirs).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = delete(&stack, "eve", &path).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = delete(&stack, "ada", "/api/ada/conversations/42").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // Renamed: the list shows the new title, and a later message does not re-title it.
    let (status, body) = rename(&stack, "ada", &path, json!(" Groceries ")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"conversation_id": id, "title": "Groceries"}));
    stack
        .chat_ok("ada", "Add a task to buy bread", Some(&id))
        .await;
    listed(&stack, "ada", 2, Some("Groceries")).await;
    verify(&stack).await;

    // Deleted: gone from the list and the messages, and no turn continues it.
    let (status, _) = delete(&stack, "ada", &path).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let left = listed(&stack, "ada", 1, None).await;
    assert_ne!(left[0].0, id);
    let (status, _) = stack.get("ada", &format!("{path}/messages")).await.unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = stack
        .chat("ada", "Add a task to buy eggs", Some(&id))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "conversation_not_found");
    let (status, _) = delete(&stack, "ada", &path).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "deleting twice");
    let (status, _) = rename(&stack, "ada", &path, json!("Back")).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "renaming a deleted conversation"
    );
    verify(&stack).await;

    // The log keeps the conversation's history, and the deletion.
    let pool = stack.db.pool().await;
    let kinds: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE stream_id = $1 ORDER BY stream_version",
    )
    .bind(format!("conversation-{id}"))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("ConversationStarted")
    );
    assert!(
        kinds.contains(&"ConversationRenamed".to_owned()),
        "{kinds:?}"
    );
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("ConversationDeleted")
    );
}

#[tokio::test]
async fn a_regenerated_answer_replaces_the_last_one_and_the_log_keeps_both() {
    let stack = Stack::start().await.unwrap();
    let first = stack.chat_ok("ada", "Add a task to buy milk", None).await;
    let id = first["conversation_id"].as_str().unwrap().to_owned();
    let asked = stack.chat_ok("ada", "What is still open?", Some(&id)).await;
    let path = format!("/api/ada/conversations/{id}/regenerate");

    let (status, again) = call(&stack, "ada", Method::POST, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["conversation_id"], id);
    assert_ne!(again["request_id"], asked["request_id"]);
    assert_eq!(again["tool_calls"][0]["name"], "list_tasks", "{again}");

    // The messages show the conversation with the latest answer only.
    let messages = eventually(
        Duration::from_secs(15),
        "the regenerated answer",
        || async {
            // The read model may not know the conversation yet: 404 means "not yet".
            let (status, body) = stack
                .get("ada", &format!("/api/ada/conversations/{id}/messages"))
                .await
                .ok()?;
            (status == StatusCode::OK).then_some(())?;
            let items = body["items"].as_array()?.clone();
            let last = items.last()?;
            (items.len() == 4 && last["request_id"] == again["request_id"]).then_some(items)
        },
    )
    .await;
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant"]);
    assert_eq!(messages[2]["content"], "What is still open?");
    assert!(
        messages
            .iter()
            .all(|m| m["request_id"] != asked["request_id"])
    );
    let listed = stack.get_ok("ada", "/api/ada/conversations").await;
    assert_eq!(listed["items"][0]["message_count"], 4, "{listed}");
    verify(&stack).await;

    // The log holds both answers, the new one marked as answering the old turn again.
    let pool = stack.db.pool().await;
    let answers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE stream_id = $1 AND event_type = 'AssistantReplied'",
    )
    .bind(format!("conversation-{id}"))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(answers, 3);
    let regenerates: Option<String> = sqlx::query_scalar(
        "SELECT payload->>'regenerates' FROM events WHERE stream_id = $1 \
         AND event_type = 'UserMessageReceived' ORDER BY stream_version DESC LIMIT 1",
    )
    .bind(format!("conversation-{id}"))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(regenerates.as_deref(), asked["request_id"].as_str());

    // The stream twin ends with `final`; another user's conversation is not found.
    let response = stack
        .http()
        .post(format!("{}{path}/stream", stack.gateway))
        .bearer_auth(stack.token("ada"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let events = testkit::read_events(response).await;
    let last = events.last().unwrap();
    assert_eq!(last.event, "final", "{events:?}");
    assert_eq!(last.data["conversation_id"], id);
    let (status, body) = call(
        &stack,
        "eve",
        Method::POST,
        &format!("/api/eve/conversations/{id}/regenerate"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "conversation_not_found");
}
