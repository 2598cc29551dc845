//! The public chat API end to end: every service as a process, real NATS and Postgres.
//! These follow the reference app's contract (`POST /api/{user_id}/chat`).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use system_tests::Stack;
use testkit::{eventually, expect_json};

fn tool_names(answer: &Value) -> Vec<String> {
    answer["tool_calls"]
        .as_array()
        .map(|calls| {
            calls
                .iter()
                .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the tasks read model shows `expected` (id, title, completed) for `user`.
async fn wait_for_tasks(stack: &Stack, user: &str, query: &str, expected: &[(u64, &str, bool)]) {
    let path = format!("/api/{user}/tasks{query}");
    eventually(
        Duration::from_secs(15),
        &format!("tasks {expected:?}"),
        || async {
            let (status, body) = stack.get(user, &path).await.ok()?;
            (status == StatusCode::OK).then_some(())?;
            let got: Vec<(u64, String, bool)> = body["items"]
                .as_array()?
                .iter()
                .map(|t| {
                    (
                        t["id"].as_u64().unwrap_or_default(),
                        t["title"].as_str().unwrap_or_default().to_owned(),
                        t["completed"].as_bool().unwrap_or_default(),
                    )
                })
                .collect();
            let want: Vec<(u64, String, bool)> = expected
                .iter()
                .map(|(id, title, done)| (*id, (*title).to_owned(), *done))
                .collect();
            (got == want).then_some(())
        },
    )
    .await
}

#[tokio::test]
async fn the_reference_chat_test_adds_a_task() {
    let stack = Stack::start().await.unwrap();
    let answer = stack
        .chat_ok("test-user", "Add a task to buy groceries", None)
        .await;
    assert!(
        answer["conversation_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
    assert!(answer["response"].as_str().is_some_and(|r| !r.is_empty()));
    let call = &answer["tool_calls"][0];
    assert_eq!(call["name"], "add_task");
    assert_eq!(call["arguments"]["title"], "Buy groceries");
    assert!(
        call["arguments"].get("user_id").is_none(),
        "the model never names the user"
    );
    assert_eq!(
        call["result"],
        json!({"task_id": 1, "status": "created", "title": "Buy groceries"})
    );
    wait_for_tasks(&stack, "test-user", "", &[(1, "Buy groceries", false)]).await;
}

#[tokio::test]
async fn tasks_are_listed_completed_renamed_and_deleted_by_chat_in_one_conversation() {
    let stack = Stack::start().await.unwrap();
    let user = "alice";
    let first = stack.chat_ok(user, "add a task to buy milk", None).await;
    let conversation = first["conversation_id"].as_str().unwrap().to_owned();
    let conv = Some(conversation.as_str());
    for message in ["add a task to walk the dog", "add a task to call mom"] {
        let answer = stack.chat_ok(user, message, conv).await;
        assert_eq!(
            answer["conversation_id"],
            conversation.as_str(),
            "same conversation"
        );
    }

    let listed = stack.chat_ok(user, "show my tasks", conv).await;
    assert_eq!(tool_names(&listed), ["list_tasks"]);
    assert_eq!(listed["tool_calls"][0]["result"]["count"], 3);

    let completed = stack.chat_ok(user, "mark 1 done", conv).await;
    assert_eq!(tool_names(&completed), ["complete_task"]);
    assert_eq!(
        completed["tool_calls"][0]["result"],
        json!({"task_id": 1, "status": "completed", "title": "Buy milk"})
    );

    let renamed = stack.chat_ok(user, "rename 2 to walk the cat", conv).await;
    assert_eq!(tool_names(&renamed), ["update_task"]);
    assert_eq!(renamed["tool_calls"][0]["result"]["status"], "updated");

    let deleted = stack.chat_ok(user, "delete task 3", conv).await;
    assert_eq!(tool_names(&deleted), ["delete_task"]);
    assert_eq!(deleted["tool_calls"][0]["result"]["status"], "deleted");

    let missing = stack.chat_ok(user, "complete task 9", conv).await;
    assert_eq!(
        missing["tool_calls"][0]["result"],
        json!({"error": "Task not found", "task_id": 9})
    );

    let pending = stack.chat_ok(user, "what's still open?", conv).await;
    assert_eq!(pending["tool_calls"][0]["arguments"]["status"], "pending");
    assert_eq!(pending["tool_calls"][0]["result"]["count"], 1);

    wait_for_tasks(
        &stack,
        user,
        "",
        &[(1, "Buy milk", true), (2, "Walk the cat", false)],
    )
    .await;
    wait_for_tasks(
        &stack,
        user,
        "?status=pending",
        &[(2, "Walk the cat", false)],
    )
    .await;
    wait_for_tasks(&stack, user, "?status=completed", &[(1, "Buy milk", true)]).await;

    // History: one conversation of 9 turns, 18 messages, tool calls attached.
    let conversations = eventually(Duration::from_secs(15), "conversation listed", || async {
        let (_, body) = stack
            .get(user, &format!("/api/{user}/conversations"))
            .await
            .ok()?;
        let items = body["items"].as_array()?.clone();
        (items.len() == 1 && items[0]["message_count"] == 18).then_some(items)
    })
    .await;
    assert_eq!(conversations[0]["conversation_id"], conversation.as_str());
    let messages_path = format!("/api/{user}/conversations/{conversation}/messages");
    let messages = stack
        .get_ok(user, &format!("{messages_path}?limit=200"))
        .await;
    let messages = messages["items"].as_array().unwrap();
    assert_eq!(messages.len(), 18);
    assert_eq!(messages[0]["role"], "user");
    assert_eq!(messages[0]["content"], "add a task to buy milk");
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["tool_calls"][0]["name"], "add_task");

    // Pagination of the messages.
    let page = stack
        .get_ok(user, &format!("{messages_path}?limit=5"))
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 5);
    let cursor = page["next_cursor"].as_str().expect("a next page");
    let next = stack
        .get_ok(user, &format!("{messages_path}?limit=5&cursor={cursor}"))
        .await;
    assert_eq!(next["items"][0], messages[5]);
}

#[tokio::test]
async fn a_turn_streams_as_server_sent_events() {
    let stack = Stack::start().await.unwrap();
    let response = testkit::open_event_stream(
        stack
            .http()
            .post(format!("{}/api/sse-user/chat/stream", stack.gateway))
            .bearer_auth(stack.token("sse-user"))
            .json(&json!({"message": "add a task to buy milk"})),
    )
    .await;
    let events = testkit::read_events(response).await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    let position = |wanted: &str| names.iter().position(|n| *n == wanted);
    let started = position("tool_call_started").expect("tool_call_started");
    let finished = position("tool_call_finished").expect("tool_call_finished");
    let delta = position("delta").expect("delta");
    let last = names.len() - 1;
    assert!(
        started < finished && finished < delta && delta < last,
        "order: {names:?}"
    );
    assert_eq!(names[last], "final", "{names:?}");
    let text: String = events
        .iter()
        .filter(|e| e.event == "delta")
        .map(|e| e.data["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, events[last].data["response"].as_str().unwrap());
    assert_eq!(events[finished].data["result"]["status"], "created");
}

#[tokio::test]
async fn a_retried_post_with_the_same_idempotency_key_runs_once() {
    let stack = Stack::start().await.unwrap();
    let post = |key: &str| {
        stack
            .http()
            .post(format!("{}/api/idem/chat", stack.gateway))
            .bearer_auth(stack.token("idem"))
            .header("Idempotency-Key", key)
            .json(&json!({"message": "add a task to buy milk"}))
    };
    let first = expect_json(post("key-1"), StatusCode::OK).await;
    let (a, b) = tokio::join!(
        expect_json(post("key-1"), StatusCode::OK),
        expect_json(post("key-1"), StatusCode::OK)
    );
    for retry in [a, b] {
        assert_eq!(retry, first, "a retry returns the first answer");
    }
    let other = expect_json(post("key-2"), StatusCode::OK).await;
    assert_ne!(other["request_id"], first["request_id"]);
    // Two tasks: the first key's once, the second key's once.
    let twice = [(1, "Buy milk", false), (2, "Buy milk", false)];
    wait_for_tasks(&stack, "idem", "", &twice).await;
    // And nothing more arrives.
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_for_tasks(&stack, "idem", "", &twice).await;
}
