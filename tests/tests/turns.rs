//! Turns people steer (issue 12): a dropped event stream picks up where it left off
//! (`Last-Event-ID`), on a restarted gateway too; a turn can be stopped while its
//! model call runs. Real services, real NATS and Postgres.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use system_tests::{Stack, StackOptions};
use testkit::{SseEvent, expect_json, open_event_stream, read_events, read_first_events};

/// `POST /api/{user}/chat/stream` with `message`.
fn chat_stream(stack: &Stack, user: &str, message: &str) -> reqwest::RequestBuilder {
    stack
        .http()
        .post(format!("{}/api/{user}/chat/stream", stack.gateway))
        .bearer_auth(stack.token(user))
        .json(&json!({ "message": message }))
}

/// `GET /api/{user}/turns/{request}/events` as `user`, with `Last-Event-ID` if given.
fn turn_events(
    stack: &Stack,
    user: &str,
    request: &str,
    last_event_id: Option<&str>,
) -> reqwest::RequestBuilder {
    let mut get = stack
        .http()
        .get(format!(
            "{}/api/{user}/turns/{request}/events",
            stack.gateway
        ))
        .bearer_auth(stack.token(user));
    if let Some(id) = last_event_id {
        get = get.header("Last-Event-ID", id);
    }
    get
}

fn cancel(stack: &Stack, user: &str, request: &str) -> reqwest::RequestBuilder {
    stack
        .http()
        .post(format!(
            "{}/api/{user}/turns/{request}/cancel",
            stack.gateway
        ))
        .bearer_auth(stack.token(user))
}

fn request_id(response: &reqwest::Response) -> String {
    response.headers()["x-request-id"]
        .to_str()
        .expect("an ASCII request id")
        .to_owned()
}

fn names(events: &[SseEvent]) -> Vec<&str> {
    events.iter().map(|event| event.event.as_str()).collect()
}

/// A stack whose offline-llm answers each call after `latency_ms`, with `env` set for
/// every service.
async fn slow_stack(latency_ms: u64, env: Vec<(&'static str, String)>) -> Stack {
    Stack::start_with(StackOptions {
        llm_latency_ms: latency_ms,
        env,
        ..Default::default()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_dropped_stream_resumes_after_its_last_event_on_any_gateway() {
    // Slow enough that the stream is cut while the turn still runs.
    let mut stack = slow_stack(700, Vec::new()).await;
    let user = "resumer";
    let response = open_event_stream(chat_stream(&stack, user, "add a task to buy milk")).await;
    let request = request_id(&response);
    let first = read_first_events(response, 2).await;
    assert_eq!(
        names(&first),
        ["tool_call_started", "tool_call_finished"],
        "{first:?}"
    );
    let last_seen = first[1].id.clone().expect("every event has an id");

    let rest =
        read_events(open_event_stream(turn_events(&stack, user, &request, Some(&last_seen))).await)
            .await;
    let rest_names = names(&rest);
    assert!(rest_names.contains(&"delta"), "{rest_names:?}");
    assert_eq!(rest_names.last(), Some(&"final"), "{rest_names:?}");
    assert_eq!(rest.last().unwrap().id.as_deref(), Some("end"));
    assert_eq!(rest.last().unwrap().data["request_id"], request.as_str());

    // After a restart the gateway knows the turn from JetStream alone: the whole turn
    // again, the same events with the same ids, and the stream ends.
    stack.restart_gateway().await.unwrap();
    let started = Instant::now();
    let all = read_events(open_event_stream(turn_events(&stack, user, &request, None)).await).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a finished turn is replayed at once"
    );
    assert_eq!(all[..2], first[..], "the events before the cut");
    assert_eq!(all[2..], rest[..], "exactly the rest, once");
    let text: String = all
        .iter()
        .filter(|event| event.event == "delta")
        .map(|event| event.data["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, all.last().unwrap().data["response"].as_str().unwrap());

    // After the end there is nothing more; a malformed id is refused.
    let after_end = turn_events(&stack, user, &request, Some("end"))
        .send()
        .await
        .unwrap();
    assert_eq!(after_end.status(), StatusCode::NO_CONTENT);
    let error = expect_json(
        turn_events(&stack, user, &request, Some("seven")),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(error["error"]["code"], "invalid_last_event_id");
    // Resuming from the end's last chunk gives just the end.
    let last_chunk = all[all.len() - 2].id.clone().unwrap();
    let end = read_events(
        open_event_stream(turn_events(&stack, user, &request, Some(&last_chunk))).await,
    )
    .await;
    assert_eq!(end[..], all[all.len() - 1..]);

    // A finished turn cannot be stopped.
    let error = expect_json(cancel(&stack, user, &request), StatusCode::CONFLICT).await;
    assert_eq!(error["error"]["code"], "turn_finished");

    // Another user's turn and an unknown one are not found, on both routes.
    let unknown = uuid::Uuid::now_v7().to_string();
    for (who, id) in [("intruder", request.as_str()), (user, unknown.as_str())] {
        let error = expect_json(turn_events(&stack, who, id, None), StatusCode::NOT_FOUND).await;
        assert_eq!(error["error"]["code"], "not_found", "{who} {id}");
        expect_json(cancel(&stack, who, id), StatusCode::NOT_FOUND).await;
    }
    let error = expect_json(
        turn_events(&stack, user, "not-a-turn", None),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(error["error"]["code"], "invalid_request_id");

    // Once the progress has expired (purged here), the stored reply still tells whose
    // the turn is: its end event alone is replayed, and it still cannot be stopped.
    stack
        .bus
        .jetstream()
        .get_stream(stack.bus.subjects.chat_progress_stream())
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    let end_only =
        read_events(open_event_stream(turn_events(&stack, user, &request, None)).await).await;
    assert_eq!(end_only[..], all[all.len() - 1..]);
    let error = expect_json(cancel(&stack, user, &request), StatusCode::CONFLICT).await;
    assert_eq!(error["error"]["code"], "turn_finished");
    expect_json(
        turn_events(&stack, "intruder", &request, None),
        StatusCode::NOT_FOUND,
    )
    .await;

    // The token's user must be the path's.
    let forbidden = stack
        .http()
        .get(format!(
            "{}/api/{user}/turns/{request}/events",
            stack.gateway
        ))
        .bearer_auth(stack.token("intruder"))
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_cancel_stops_a_slow_model_call_at_once_and_no_tool_call_runs() {
    // One turn at a time: the worker is free for the next turn only once the
    // cancelled one has let go of its model call.
    let stack = slow_stack(3000, vec![("AGENT_CONCURRENCY", "1".to_owned())]).await;
    let user = "stopper";
    let response = open_event_stream(chat_stream(&stack, user, "add a task to buy milk")).await;
    let request = request_id(&response);
    let events = tokio::spawn(read_events(response));
    // Into the first model call, which would ask for add_task after 3 s.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let cancelled_at = Instant::now();
    let answer = expect_json(cancel(&stack, user, &request), StatusCode::ACCEPTED).await;
    assert_eq!(
        answer,
        json!({"request_id": request, "status": "cancelling"})
    );
    let events = events.await.unwrap();
    let took = cancelled_at.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "the stream ended {took:?} after the cancel"
    );
    assert_eq!(names(&events), ["error"], "{events:?}");
    assert_eq!(events[0].data["error"]["code"], "cancelled");
    assert_eq!(events[0].data["error"]["request_id"], request.as_str());
    assert_eq!(events[0].id.as_deref(), Some("end"));

    // The worker dropped the model call: the next turn (one model call of 3 s) does
    // not wait for the 2.5 s the cancelled call had left.
    let started = Instant::now();
    let next = stack.chat_ok(user, "hello there", None).await;
    let took = started.elapsed();
    assert!(next["response"].is_string(), "{next}");
    assert!(
        took < Duration::from_millis(4500),
        "the next turn took {took:?}: the cancelled model call went on"
    );

    // Past the model's answer: the tool call it would have asked for never ran, and
    // the turn stays cancelled for every reader.
    let tasks = stack.get_ok(user, &format!("/api/{user}/tasks")).await;
    assert_eq!(tasks["items"], json!([]), "{tasks}");
    let replay =
        read_events(open_event_stream(turn_events(&stack, user, &request, None)).await).await;
    assert_eq!(replay, events);
    let error = expect_json(cancel(&stack, user, &request), StatusCode::CONFLICT).await;
    assert_eq!(error["error"]["code"], "turn_finished");
}
