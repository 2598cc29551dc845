//! The log is the truth (invariant 1): drop every read model, replay the log, and the
//! public API answers exactly as before; `projection verify` agrees.

use std::time::Duration;

use serde_json::Value;
use system_tests::Stack;
use testkit::eventually;

/// Everything `user` can read through the gateway.
async fn answers(stack: &Stack, user: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for status in ["all", "pending", "completed"] {
        let path = format!("/api/{user}/tasks?status={status}");
        out.push(stack.get_ok(user, &path).await);
    }
    let conversations = stack
        .get_ok(user, &format!("/api/{user}/conversations"))
        .await;
    for conversation in conversations["items"].as_array().unwrap() {
        let id = conversation["conversation_id"].as_str().unwrap();
        let path = format!("/api/{user}/conversations/{id}/messages?limit=200");
        out.push(stack.get_ok(user, &path).await);
    }
    out.push(conversations);
    out
}

/// Runs `projection verify`, which must find the read models agree with the log.
async fn verify(stack: &Stack, when: &str) {
    // Shown with the failure, to tell the two verifies apart.
    eprintln!("projection verify {when}");
    stack.run_to_end("projection", &["verify"]).await;
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
            let answer = stack.chat_ok(user, message, conversation.as_deref()).await;
            conversation = answer["conversation_id"].as_str().map(str::to_owned);
        }
        // A second conversation for each user.
        stack.chat_ok(user, "what's still open?", None).await;
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
    verify(&stack, "before").await;

    let pool = stack.db.pool().await;
    sqlx::query("DROP SCHEMA projection CASCADE")
        .execute(&pool)
        .await
        .unwrap();

    stack.run_to_end("projection", &["replay"]).await;
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
    verify(&stack, "after").await;

    // The live projector carries on from the rebuilt checkpoint.
    stack
        .chat_ok("ana", "add a task to water the plants", None)
        .await;
    eventually(
        Duration::from_secs(20),
        "a new task after the replay",
        || async {
            let (_, tasks) = stack.get("ana", "/api/ana/tasks").await.ok()?;
            (tasks["items"].as_array()?.len() == 3).then_some(())
        },
    )
    .await;
    verify(&stack, "at the end").await;
}
