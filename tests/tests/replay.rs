//! The log is the truth (invariant 1): drop every read model, replay the log, and the
//! public API answers exactly as before; `projection verify` agrees.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use system_tests::Stack;
use testkit::eventually;

/// Everything `user` can read through the gateway.
async fn answers(stack: &Stack, user: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for status in ["all", "pending", "completed"] {
        let (code, body) = stack
            .get(user, &format!("/api/{user}/tasks?status={status}"))
            .await
            .unwrap();
        assert_eq!(code, StatusCode::OK, "{body}");
        out.push(body);
    }
    let (code, conversations) = stack
        .get(user, &format!("/api/{user}/conversations"))
        .await
        .unwrap();
    assert_eq!(code, StatusCode::OK, "{conversations}");
    for conversation in conversations["items"].as_array().unwrap() {
        let id = conversation["conversation_id"].as_str().unwrap();
        let (code, messages) = stack
            .get(
                user,
                &format!("/api/{user}/conversations/{id}/messages?limit=200"),
            )
            .await
            .unwrap();
        assert_eq!(code, StatusCode::OK, "{messages}");
        out.push(messages);
    }
    out.push(conversations);
    out
}

#[tokio::test]
async fn replay_after_dropping_the_read_models_gives_identical_answers() {
    let stack = Stack::start().await.unwrap();
    let script: [(&str, &[&str]); 2] = [
        (
            "ana",
            &[
                "add a task to buy milk",
                "add a task to walk the dog",
                "mark 1 done",
                "show my tasks",
            ],
        ),
        (
            "ben",
            &[
                "add a task to call mom",
                "rename 1 to call dad",
                "delete 1",
                "complete 7",
            ],
        ),
    ];
    for (user, messages) in script {
        let mut conversation: Option<String> = None;
        for message in messages {
            let (status, answer) = stack
                .chat(user, message, conversation.as_deref())
                .await
                .unwrap();
            assert_eq!(status, StatusCode::OK, "{answer}");
            conversation = answer["conversation_id"].as_str().map(str::to_owned);
        }
        // A second conversation for each user.
        let (status, _) = stack.chat(user, "what's still open?", None).await.unwrap();
        assert_eq!(status, StatusCode::OK);
    }

    // Wait until the read models have caught up with every turn.
    let mut before = Vec::new();
    for user in ["ana", "ben"] {
        let settled = eventually(Duration::from_secs(20), "read models caught up", || async {
            let answers = answers(&stack, user).await;
            let conversations = answers.last()?["items"].as_array()?.clone();
            let messages: u64 = conversations
                .iter()
                .map(|c| c["message_count"].as_u64().unwrap_or(0))
                .sum();
            (conversations.len() == 2 && messages == 10).then_some(answers)
        })
        .await;
        before.push(settled);
    }
    let verify = stack.run_to_end("projection", &["verify"]).await.unwrap();
    assert!(
        verify.status.success(),
        "verify before: {}",
        String::from_utf8_lossy(&verify.stdout)
    );

    let pool = stack.db.pool().await;
    sqlx::query("DROP SCHEMA projection CASCADE")
        .execute(&pool)
        .await
        .unwrap();

    let replay = stack.run_to_end("projection", &["replay"]).await.unwrap();
    assert!(
        replay.status.success(),
        "replay failed: {}{}",
        String::from_utf8_lossy(&replay.stdout),
        String::from_utf8_lossy(&replay.stderr)
    );
    for (user, expected) in ["ana", "ben"].into_iter().zip(&before) {
        let after = eventually(
            Duration::from_secs(20),
            "identical answers after replay",
            || async {
                let after = answers(&stack, user).await;
                (&after == expected).then_some(after)
            },
        )
        .await;
        assert_eq!(&after, expected);
    }
    let verify = stack.run_to_end("projection", &["verify"]).await.unwrap();
    assert!(
        verify.status.success(),
        "verify after: {}",
        String::from_utf8_lossy(&verify.stdout)
    );

    // The live projector carries on from the rebuilt checkpoint.
    let (status, _) = stack
        .chat("ana", "add a task to water the plants", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    eventually(
        Duration::from_secs(20),
        "a new task after the replay",
        || async {
            let (_, tasks) = stack.get("ana", "/api/ana/tasks").await.ok()?;
            (tasks["items"].as_array()?.len() == 3).then_some(())
        },
    )
    .await;
    let verify = stack.run_to_end("projection", &["verify"]).await.unwrap();
    assert!(
        verify.status.success(),
        "verify at the end: {}",
        String::from_utf8_lossy(&verify.stdout)
    );
}
