//! Admission control: one user cannot take the service from everyone. Turns beyond a
//! user's limit get 429 with `Retry-After` while other users are still answered, a full
//! queue sheds new turns with 503, and a user sending faster than the per-minute rate
//! gets 429. Refused turns are not run: nothing of them reaches the log.

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use system_tests::{Stack, StackOptions};

/// What a refused or answered chat POST brought back.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    retry_after: Option<u64>,
    body: Value,
}

impl Answer {
    /// Asserts a refusal with `status`, error `code` and a `Retry-After` in seconds.
    fn assert_refused(&self, status: StatusCode, code: &str) -> u64 {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.body["error"]["code"], code, "{self:?}");
        assert!(
            self.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{self:?}"
        );
        let seconds = self.retry_after.expect("a Retry-After header");
        assert!(seconds >= 1, "{self:?}");
        seconds
    }
}

/// A stack whose model takes `model_ms` per call, with one admission `setting`.
async fn stack_with(model_ms: u64, setting: &'static str, value: &str) -> Stack {
    Stack::start_with(StackOptions {
        llm_latency_ms: model_ms,
        env: vec![(setting, value.to_owned())],
        ..Default::default()
    })
    .await
    .unwrap()
}

async fn chat(stack: &Stack, user: &str, message: &str) -> Answer {
    chat_with_key(stack, user, message, None).await
}

/// [`chat`], with an `Idempotency-Key` when one is given.
async fn chat_with_key(stack: &Stack, user: &str, message: &str, key: Option<&str>) -> Answer {
    let mut request = stack
        .http()
        .post(format!("{}/api/{user}/chat", stack.gateway))
        .bearer_auth(stack.token(user))
        .json(&json!({ "message": message }));
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.expect("the gateway answers");
    let status = response.status();
    let retry_after = response.headers().get("retry-after").map(|value| {
        value
            .to_str()
            .unwrap()
            .parse()
            .expect("Retry-After in seconds")
    });
    let body = response.json().await.expect("a JSON body");
    Answer {
        status,
        retry_after,
        body,
    }
}

fn count(answers: &[Answer], status: StatusCode) -> usize {
    answers
        .iter()
        .filter(|answer| answer.status == status)
        .count()
}

async fn task_count(stack: &Stack, user: &str) -> usize {
    let tasks = stack.get_ok(user, &format!("/api/{user}/tasks")).await;
    tasks["items"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn a_user_over_their_limit_gets_429_while_others_are_answered() {
    // Each model call takes 1 s, so the first turns still run when the rest arrive.
    let stack = stack_with(1_000, "GATEWAY_MAX_TURNS_PER_USER", "2").await;
    let messages: Vec<String> = (0..6)
        .map(|n| format!("add a task to buy milk {n}"))
        .collect();
    let flood = join_all(
        messages
            .iter()
            .map(|message| chat(&stack, "flood", message)),
    );
    let calm = async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        chat(&stack, "calm", "add a task to water the plants").await
    };
    let (flood, calm) = tokio::join!(flood, calm);

    assert_eq!(count(&flood, StatusCode::OK), 2, "{flood:#?}");
    assert_eq!(
        count(&flood, StatusCode::TOO_MANY_REQUESTS),
        4,
        "{flood:#?}"
    );
    for refused in flood.iter().filter(|a| a.status != StatusCode::OK) {
        refused.assert_refused(StatusCode::TOO_MANY_REQUESTS, "too_many_turns");
    }
    assert_eq!(calm.status, StatusCode::OK, "{calm:?}");
    testkit::eventually(
        std::time::Duration::from_secs(10),
        "both users' tasks projected",
        || async {
            (task_count(&stack, "flood").await == 2 && task_count(&stack, "calm").await == 1)
                .then_some(())
        },
    )
    .await;

    // Once the user's turns are answered, the user may send again.
    let again = chat(&stack, "flood", "add a task to buy bread").await;
    assert_eq!(again.status, StatusCode::OK, "{again:?}");
}

#[tokio::test]
async fn a_full_queue_sheds_new_turns_with_503() {
    let stack = stack_with(1_000, "GATEWAY_MAX_QUEUED_TURNS", "2").await;
    let users = ["ann", "ben", "cat", "dan"];
    let answers = join_all(
        users
            .iter()
            .map(|user| chat(&stack, user, "add a task to call mum")),
    )
    .await;
    assert_eq!(count(&answers, StatusCode::OK), 2, "{answers:#?}");
    for refused in answers.iter().filter(|a| a.status != StatusCode::OK) {
        refused.assert_refused(StatusCode::SERVICE_UNAVAILABLE, "busy");
    }
    testkit::eventually(
        std::time::Duration::from_secs(10),
        "the two answered turns projected",
        || async {
            let mut tasks = 0;
            for user in users {
                tasks += task_count(&stack, user).await;
            }
            (tasks == 2).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_user_sending_faster_than_the_rate_gets_429_with_the_wait() {
    let stack = stack_with(0, "GATEWAY_TURNS_PER_MINUTE", "2").await;
    for n in 0..2 {
        let answer = chat(&stack, "eager", &format!("add a task to read book {n}")).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    }
    let refused = chat_with_key(&stack, "eager", "add a task to read book 2", Some("b2")).await;
    let wait = refused.assert_refused(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(wait <= 60, "{refused:?}");
    // A refused message left nothing behind: retried with its key, it is a new message
    // again, and still over the rate.
    let retried = chat_with_key(&stack, "eager", "add a task to read book 2", Some("b2")).await;
    retried.assert_refused(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    // Another user's quota is their own.
    let other = chat(&stack, "patient", "add a task to read a poem").await;
    assert_eq!(other.status, StatusCode::OK, "{other:?}");
    testkit::eventually(
        std::time::Duration::from_secs(10),
        "the refused message not run",
        || async { (task_count(&stack, "eager").await == 2).then_some(()) },
    )
    .await;
}
