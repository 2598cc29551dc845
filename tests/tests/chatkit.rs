//! ChatKit's server protocol at `POST /chatkit`, judged by the `openai-chatkit`
//! package's own pydantic types: tests/python/test_chatkit.py holds one conversation
//! (add, list and complete tasks; page through the items; list threads; feedback;
//! regenerate; rename; delete), checks another user's not-found answers and the
//! refusals of bad requests, and validates every event and answer it gets. Here, the
//! feedback it gave is checked in the event log.

use std::time::Duration;

use system_tests::{Stack, repo_file, run_checked, venv_program};
use tokio::process::Command;

#[tokio::test]
async fn a_chatkit_client_holds_a_conversation_and_every_answer_is_the_protocols() {
    let stack = Stack::start().await.unwrap();
    let output = run_checked(
        "the ChatKit protocol conversation",
        Command::new(venv_program("python"))
            .arg(repo_file("tests/python/test_chatkit.py"))
            .env("TASKCHAT_GATEWAY_URL", &stack.gateway)
            .env("TASKCHAT_TOKEN", stack.token("chatkit-user"))
            .env("TASKCHAT_OTHER_TOKEN", stack.token("chatkit-other"))
            .env("PYTHONUNBUFFERED", "1"),
        Duration::from_secs(180),
    )
    .await;
    println!("{output}");
    assert!(
        output.contains("chatkit conversation passed"),
        "the conversation did not run to its end:\n{output}"
    );

    // items.feedback is history: one event in the conversation's stream, naming the
    // rated item.
    let pool = stack.db.pool().await;
    let feedback: Vec<serde_json::Value> = sqlx::query_scalar(
        "SELECT payload FROM events WHERE event_type = 'FeedbackGiven' ORDER BY position",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(feedback.len(), 1, "{feedback:?}");
    assert_eq!(feedback[0]["kind"], "positive");
    let rated = feedback[0]["item_ids"][0].as_str().unwrap();
    assert!(rated.starts_with("assistant_"), "{rated}");
}
