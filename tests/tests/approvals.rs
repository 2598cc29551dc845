//! Confirm before destructive tools (`AGENT_CONFIRM_TOOLS`), end to end: the turn
//! pauses before a listed tool call, holding no worker, and the person's decision
//! resumes it, on any worker, even one started after the pause.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use system_tests::{Stack, StackOptions};
use testkit::eventually;

/// A stack whose workers ask before `delete_task`.
async fn confirming_stack() -> Stack {
    Stack::start_with(StackOptions {
        env: vec![("AGENT_CONFIRM_TOOLS", "delete_task".to_owned())],
        ..StackOptions::default()
    })
    .await
    .unwrap()
}

/// The paused turn and the approval a decision names.
#[derive(Debug, Clone)]
struct Approval {
    request_id: String,
    approval_id: String,
}

impl Approval {
    /// `POST /api/{path_user}/turns/{request_id}/approvals/{approval_id}` with `body`,
    /// holding `token_user`'s token.
    fn request(
        &self,
        stack: &Stack,
        path_user: &str,
        token_user: &str,
        body: Value,
    ) -> reqwest::RequestBuilder {
        let Self {
            request_id,
            approval_id,
        } = self;
        stack
            .http()
            .post(format!(
                "{}/api/{path_user}/turns/{request_id}/approvals/{approval_id}",
                stack.gateway
            ))
            .bearer_auth(stack.token(token_user))
            .json(&body)
    }

    /// Decides as `user`, on their own path: the status and the JSON answer.
    async fn decide(&self, stack: &Stack, user: &str, body: Value) -> (StatusCode, Value) {
        let response = self.request(stack, user, user, body).send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }
}

/// The titles of `user`'s tasks, once the read model shows `expected` of them.
async fn task_titles(stack: &Stack, user: &str, expected: usize) -> Vec<String> {
    eventually(Duration::from_secs(15), "the task list", || async {
        let (status, body) = stack.get(user, &format!("/api/{user}/tasks")).await.ok()?;
        let titles: Vec<String> = body["items"]
            .as_array()?
            .iter()
            .map(|task| task["title"].as_str().unwrap_or_default().to_owned())
            .collect();
        (status == StatusCode::OK && titles.len() == expected).then_some(titles)
    })
    .await
}

/// Adds a task, then asks to delete it: the answer is the pending approval, and the
/// conversation's id.
async fn ask_to_delete(stack: &Stack, user: &str) -> (Approval, String) {
    let added = stack.chat_ok(user, "Add a task to buy milk", None).await;
    let conversation = added["conversation_id"].as_str().unwrap().to_owned();
    let paused = stack
        .chat_ok(user, "Delete task 1", Some(&conversation))
        .await;
    let pending = &paused["pending_approval"];
    assert_eq!(pending["name"], "delete_task", "{paused}");
    assert_eq!(pending["arguments"]["task_id"], 1, "{paused}");
    assert_eq!(paused["response"], "", "{paused}");
    let approval = Approval {
        request_id: paused["request_id"].as_str().unwrap().to_owned(),
        approval_id: pending["approval_id"].as_str().unwrap().to_owned(),
    };
    (approval, conversation)
}

#[tokio::test]
async fn an_approved_call_runs_and_a_declined_one_does_not() {
    let stack = confirming_stack().await;
    let (approval, _) = ask_to_delete(&stack, "ada").await;
    // Paused: nothing was deleted.
    assert_eq!(task_titles(&stack, "ada", 1).await, ["Buy milk"]);

    let (status, answer) = approval
        .decide(&stack, "ada", json!({"approve": true}))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["request_id"], approval.request_id);
    assert!(answer.get("pending_approval").is_none(), "{answer}");
    let calls = answer["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{answer}");
    assert_eq!(calls[0]["name"], "delete_task");
    assert_eq!(calls[0]["result"]["status"], "deleted", "{answer}");
    assert!(task_titles(&stack, "ada", 0).await.is_empty());
    // Decided: a second decision is a conflict and changes nothing.
    let (status, again) = approval
        .decide(&stack, "ada", json!({"approve": false}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    assert_eq!(again["error"]["code"], "turn_finished");

    // Declined: the task stays, and the model is told.
    let (approval, _) = ask_to_delete(&stack, "bo").await;
    let (status, answer) = approval
        .decide(&stack, "bo", json!({"approve": false}))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let calls = answer["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{answer}");
    assert!(
        calls[0]["result"]["error"]
            .as_str()
            .unwrap()
            .contains("declined"),
        "{answer}"
    );
    assert_eq!(task_titles(&stack, "bo", 1).await, ["Buy milk"]);
}

#[tokio::test]
async fn a_paused_turn_survives_a_worker_restart_and_is_the_users_own() {
    let mut stack = confirming_stack().await;
    let (approval, _) = ask_to_delete(&stack, "ada").await;

    // The pause is state in the log: a worker started afresh picks the turn up.
    stack.kill("agent-worker-0").await.unwrap();
    stack.spawn("agent-worker-1", "agent-worker", &[]).unwrap();

    // Another user cannot see or decide it (their own path: 404; ada's: 403); bad
    // ids and bodies change nothing.
    let (status, body) = approval
        .decide(&stack, "eve", json!({"approve": true}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let response = approval
        .request(&stack, "ada", "eve", json!({"approve": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    // Each case: the approval named, the body, the status and the error code if any.
    let unknown_request = Approval {
        request_id: proto_schemas::RequestId::new().to_string(),
        ..approval.clone()
    };
    let bad_approval_id = Approval {
        approval_id: "nope".to_owned(),
        ..approval.clone()
    };
    let other_approval = Approval {
        approval_id: proto_schemas::ApprovalId::new().to_string(),
        ..approval.clone()
    };
    for (named, body, expected, code) in [
        (
            &unknown_request,
            json!({"approve": true}),
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            &bad_approval_id,
            json!({"approve": true}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("invalid_approval_id"),
        ),
        (
            &approval,
            json!({"approve": "yes"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
        ),
        (
            &other_approval,
            json!({"approve": true}),
            StatusCode::CONFLICT,
            Some("approval_not_pending"),
        ),
    ] {
        let (status, answer) = named.decide(&stack, "ada", body).await;
        assert_eq!(status, expected, "{named:?}: {answer}");
        if let Some(code) = code {
            assert_eq!(answer["error"]["code"], code, "{named:?}");
        }
    }
    assert_eq!(task_titles(&stack, "ada", 1).await, ["Buy milk"]);

    let (status, answer) = approval
        .decide(&stack, "ada", json!({"approve": true}))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer["tool_calls"][0]["result"]["status"], "deleted",
        "{answer}"
    );
    assert!(task_titles(&stack, "ada", 0).await.is_empty());
}

#[tokio::test]
async fn without_the_setting_nothing_waits() {
    let stack = Stack::start().await.unwrap();
    let added = stack.chat_ok("ada", "Add a task to buy milk", None).await;
    let conversation = added["conversation_id"].as_str().unwrap();
    let deleted = stack
        .chat_ok("ada", "Delete task 1", Some(conversation))
        .await;
    assert!(deleted.get("pending_approval").is_none(), "{deleted}");
    assert_eq!(deleted["tool_calls"][0]["name"], "delete_task", "{deleted}");
}

/// `POST` a regenerate of `conversation` as `user` (`/stream` when `stream`).
async fn regenerate(
    stack: &Stack,
    user: &str,
    conversation: &str,
    stream: bool,
) -> reqwest::Response {
    let tail = if stream { "/stream" } else { "" };
    stack
        .http()
        .post(format!(
            "{}/api/{user}/conversations/{conversation}/regenerate{tail}",
            stack.gateway
        ))
        .bearer_auth(stack.token(user))
        .send()
        .await
        .unwrap()
}

/// The conversation's messages and its `message_count` in the list, once they agree
/// on `expected` messages.
async fn messages_as_counted(
    stack: &Stack,
    user: &str,
    conversation: &str,
    expected: usize,
) -> Vec<Value> {
    eventually(Duration::from_secs(15), "the messages", || async {
        // The read model may not know the conversation yet: 404 means "not yet".
        let (status, messages) = stack
            .get(
                user,
                &format!("/api/{user}/conversations/{conversation}/messages"),
            )
            .await
            .ok()?;
        (status == StatusCode::OK).then_some(())?;
        let listed = stack
            .get_ok(user, &format!("/api/{user}/conversations"))
            .await;
        let items = messages["items"].as_array()?.clone();
        let count = listed["items"]
            .as_array()?
            .iter()
            .find(|c| c["conversation_id"] == conversation)?["message_count"]
            .as_u64()?;
        (items.len() == expected && count == expected as u64).then_some(items)
    })
    .await
}

/// Only an ended turn is answered again: a paused one is decided first, so that no
/// superseded turn runs its tool or ends later, out of sight of the read models.
#[tokio::test]
async fn a_paused_turn_is_decided_before_it_is_regenerated() {
    let stack = confirming_stack().await;
    let (approval, conversation) = ask_to_delete(&stack, "ada").await;

    let response = regenerate(&stack, "ada", &conversation, false).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let refused: Value = response.json().await.unwrap();
    assert_eq!(
        refused["error"]["code"], "nothing_to_regenerate",
        "{refused}"
    );
    assert_eq!(refused["error"]["conversation_id"], conversation.as_str());
    let events = testkit::read_events(regenerate(&stack, "ada", &conversation, true).await).await;
    let last = events.last().unwrap();
    assert_eq!(last.event, "error", "{events:?}");
    assert_eq!(last.data["error"]["code"], "nothing_to_regenerate");
    // Refused, nothing changed: the paused turn is still the last one, and pending.
    let messages = messages_as_counted(&stack, "ada", &conversation, 3).await;
    assert_eq!(messages[2]["request_id"], approval.request_id);
    assert_eq!(task_titles(&stack, "ada", 1).await, ["Buy milk"]);

    // Decided (declined), the turn has ended: now it is answered again, and pauses
    // again before the same call.
    let (status, answer) = approval
        .decide(&stack, "ada", json!({"approve": false}))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    messages_as_counted(&stack, "ada", &conversation, 4).await;
    let response = regenerate(&stack, "ada", &conversation, false).await;
    assert_eq!(response.status(), StatusCode::OK);
    let again: Value = response.json().await.unwrap();
    assert_ne!(again["request_id"], approval.request_id);
    assert_eq!(again["pending_approval"]["name"], "delete_task", "{again}");
    // The superseded turn's message and answer are hidden; its request is back once.
    let messages = messages_as_counted(&stack, "ada", &conversation, 3).await;
    assert_eq!(messages[2]["request_id"], again["request_id"]);
    assert_eq!(messages[2]["content"], "Delete task 1");
    assert_eq!(task_titles(&stack, "ada", 1).await, ["Buy milk"]);
    stack.run_to_end("projection", &["verify"]).await;
}
