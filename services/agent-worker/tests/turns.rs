//! Chat turns end to end against the real NATS, Postgres, task-service and
//! offline-llm (or a scripted model server where offline-llm is too well-behaved).

mod common;

use agent_worker::conversation::Conversation;
use common::{Stack, answered, chat_error, failed, watch_chunks};
use eventlog::{EventMetadata, Repository, RepositoryOptions, Versioned};
use proto_schemas::chat::{ChatErrorCode, ChatStreamChunk};
use proto_schemas::events::{ConversationEvent, StreamId, TaskEvent};
use proto_schemas::{CommandId, ConversationId, EventId, RequestId};
use serde_json::json;
use testkit::{ModelStub, Scripted};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_request_adds_the_task_and_is_answered() {
    let stack = Stack::with_worker(0).await;

    let request = stack.new_chat("alice", "add a task to buy milk");
    let chunks = watch_chunks(&stack.bus, &request).await;
    let reply = stack.chat(&request).await;
    assert_eq!(reply.request_id, request.request_id);
    assert_eq!(reply.conversation_id, request.conversation_id);
    let (response, calls) = answered(&reply);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].name, "add_task");
    assert_eq!(calls[0].arguments, json!({"title": "Buy milk"}));
    assert_eq!(
        calls[0].result,
        json!({"task_id": 1, "status": "created", "title": "Buy milk"})
    );
    assert!(response.contains("Buy milk"), "{response}");

    let tasks = stack.tasks("alice").await;
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].title, "Buy milk");
    assert!(!tasks[0].completed);

    // The conversation as events: who it belongs to, what was said, what was done.
    let events = stack.conversation(request.conversation_id).await;
    assert_eq!(events.len(), 5, "{events:#?}");
    assert_eq!(
        events[0],
        ConversationEvent::ConversationStarted {
            user_id: testkit::user_id("alice")
        }
    );
    assert_eq!(
        events[1],
        ConversationEvent::UserMessageReceived {
            request_id: request.request_id,
            text: "add a task to buy milk".into(),
            regenerates: None,
        }
    );
    let ConversationEvent::ToolCallRequested {
        step,
        name,
        command_id,
        call_id,
        ..
    } = &events[2]
    else {
        panic!("expected a tool call request, got {:?}", events[2]);
    };
    assert_eq!((*step, name.as_str()), (0, "add_task"));
    assert_eq!(
        *command_id,
        CommandId::for_tool_call(request.request_id, 0, 0)
    );
    assert!(
        matches!(&events[3], ConversationEvent::ToolCallCompleted { call_id: done, .. } if done == call_id)
    );
    assert_eq!(
        events[4],
        ConversationEvent::AssistantReplied {
            request_id: request.request_id,
            text: response.to_owned()
        }
    );

    // Live progress: the tool call started and finished, and the text streamed.
    let chunks = testkit::eventually(
        std::time::Duration::from_secs(10),
        "the live chunks",
        || {
            let chunks = chunks.lock().unwrap().clone();
            let finished = chunks
                .iter()
                .any(|c| matches!(c, ChatStreamChunk::ToolCallFinished { .. }));
            let text: String = chunks
                .iter()
                .filter_map(|c| match c {
                    ChatStreamChunk::TextDelta { text } => Some(text.as_str()),
                    _ => None,
                })
                .collect();
            let response = response.to_owned();
            async move { (finished && text.ends_with(&response)).then_some(chunks) }
        },
    )
    .await;
    let started = chunks.iter().position(
        |c| matches!(c, ChatStreamChunk::ToolCallStarted { name, .. } if name == "add_task"),
    );
    let finished = chunks.iter().position(
        |c| matches!(c, ChatStreamChunk::ToolCallFinished { result, .. } if result["task_id"] == 1),
    );
    assert!(started.unwrap() < finished.unwrap(), "{chunks:?}");

    // A follow-up in the same conversation lists what the first turn added.
    let follow_up = stack.follow_up("alice", request.conversation_id, "show my tasks");
    let (response, calls) = stack.chat_answered(&follow_up).await;
    assert_eq!(calls[0].name, "list_tasks");
    assert_eq!(calls[0].result["count"], 1);
    assert!(response.contains("Buy milk"), "{response}");
    assert_eq!(stack.conversation(request.conversation_id).await.len(), 9);

    assert_eq!(stack.pending_requests().await, 0, "every request was acked");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_record_nothing() {
    let stack = Stack::with_worker(0).await;

    let first = stack.new_chat("alice", "add a task to call mom");
    stack.chat_answered(&first).await;
    let before = stack.conversation(first.conversation_id).await;

    let intruder = stack.follow_up("mallory", first.conversation_id, "show my tasks");
    let reply = stack.chat(&intruder).await;
    assert_eq!(
        failed(&reply),
        &chat_error(
            ChatErrorCode::ConversationNotFound,
            "Conversation not found."
        )
    );

    let unknown = stack.follow_up(
        "alice",
        proto_schemas::ConversationId::new(),
        "show my tasks",
    );
    let reply = stack.chat(&unknown).await;
    assert_eq!(failed(&reply).code, ChatErrorCode::ConversationNotFound);

    let blank = stack.new_chat("alice", "   ");
    let reply = stack.chat(&blank).await;
    assert_eq!(failed(&reply).message, "The message is empty.");

    // Nothing was recorded anywhere by the refused requests.
    assert!(stack.conversation(blank.conversation_id).await.is_empty());
    assert_eq!(stack.conversation(first.conversation_id).await, before);
    assert!(stack.conversation(unknown.conversation_id).await.is_empty());
    assert!(stack.task_events("mallory").await.is_empty());
    assert_eq!(stack.pending_requests().await, 0);
    stack.stop().await;
}

/// The model never chooses the user (invariant 6), and whatever it gets wrong comes
/// back to it as a tool result, not as a failed turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_mistakes_become_tool_results_and_never_change_the_user() {
    let (stack, model) = Stack::with_model(|call| match call {
        0 => Scripted::ToolCalls(vec![
            (
                "call_1".into(),
                "add_task".into(),
                r#"{"title":"Pay rent","user_id":"mallory"}"#.into(),
            ),
            ("call_2".into(), "drop_tables".into(), "{}".into()),
            (
                "call_3".into(),
                "complete_task".into(),
                r#"{"task_id":"abc"}"#.into(),
            ),
            // The same id again (some servers reuse ids) and arguments that are not JSON.
            ("call_1".into(), "add_task".into(), "{not json".into()),
        ]),
        _ => Scripted::Text("Done, with some trouble.".into()),
    })
    .await;

    let request = stack.new_chat("alice", "do several things");
    let (response, calls) = stack.chat_answered(&request).await;
    assert_eq!(response, "Done, with some trouble.");
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert_eq!(
        calls[0].result,
        json!({"task_id": 1, "status": "created", "title": "Pay rent"})
    );
    for (call, error) in [
        (&calls[1], "Unknown tool: drop_tables"),
        (&calls[2], "Invalid arguments for complete_task"),
    ] {
        let said = call.result["error"].as_str().unwrap();
        assert!(said.starts_with(error), "{call:?}");
    }
    assert_eq!(calls[3].arguments, json!("{not json"));
    assert!(
        calls[3].result["error"]
            .as_str()
            .unwrap()
            .contains("expected a JSON object"),
        "{:?}",
        calls[3]
    );

    assert_eq!(stack.tasks("alice").await.len(), 1);
    assert!(
        stack.task_events("mallory").await.is_empty(),
        "the model's user_id was ignored"
    );

    // What the model was shown: tools without user_id, then one result per call id.
    let first = model.request(0);
    for tool in first["tools"].as_array().unwrap() {
        let parameters = &tool["function"]["parameters"];
        assert!(
            parameters["properties"].get("user_id").is_none(),
            "{parameters}"
        );
        assert!(
            !parameters["required"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|name| name == "user_id")
        );
    }
    assert!(
        first["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("task management assistant")
    );
    let second = model.request(1);
    let messages = second["messages"].as_array().unwrap();
    let tool_messages: Vec<&str> = messages
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["tool_call_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        tool_messages,
        vec!["call_1", "call_2", "call_3", "call_0_3"]
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_never_stops_calling_tools_gets_a_friendly_ending() {
    let mut stack = Stack::start(0).await;
    let model = ModelStub::start(None, |call| {
        Scripted::ToolCalls(vec![(
            format!("call_{call}"),
            "list_tasks".into(),
            "{}".into(),
        )])
    })
    .await;
    stack
        .spawn_worker_on(&model, |config| {
            config.max_model_steps = 3;
        })
        .await;

    let request = stack.new_chat("alice", "keep going");
    let (response, calls) = stack.chat_answered(&request).await;
    assert_eq!(response, agent_worker::prompt::MAX_TURNS_MESSAGE);
    assert_eq!(calls.len(), 3);
    assert_eq!(model.calls(), 3);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_gives_the_model_earlier_turns_within_the_window() {
    let mut stack = Stack::start(0).await;
    let llm_base = stack.llm_base.clone();
    let model = ModelStub::start(Some(llm_base), |_| Scripted::Proxy).await;
    stack
        .spawn_worker_on(&model, |config| {
            config.history_messages = 2;
        })
        .await;

    let first = stack.new_chat("alice", "add a task to buy milk");
    stack.chat_answered(&first).await;
    let second = stack.follow_up("alice", first.conversation_id, "add a task to buy bread");
    stack.chat_answered(&second).await;
    let calls_before = model.calls();
    let third = stack.follow_up("alice", first.conversation_id, "show my tasks");
    stack.chat_answered(&third).await;

    // Two earlier messages at most: the second turn's user message and reply.
    let request = model.request(calls_before);
    let messages = request["messages"].as_array().unwrap();
    let said: Vec<(&str, &str)> = messages
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap(),
                m["content"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(said.len(), 4, "{said:?}");
    assert_eq!(said[0].0, "system");
    assert_eq!(said[1], ("user", "add a task to buy bread"));
    assert_eq!(said[2].0, "assistant");
    assert!(said[2].1.contains("Buy bread"), "{said:?}");
    assert_eq!(said[3], ("user", "show my tasks"));

    let events = stack.task_events("alice").await;
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, TaskEvent::TaskAdded { .. }))
            .count(),
        2
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_turns_in_flight() {
    let mut stack = Stack::with_worker(1000).await;
    let request = stack.new_chat("alice", "add a task to buy milk");
    stack.publish(&request).await;
    testkit::eventually(
        std::time::Duration::from_secs(60),
        "the turn to start",
        || async {
            let events = stack.conversation(request.conversation_id).await;
            (!events.is_empty()).then_some(())
        },
    )
    .await;

    // Stopping waits for the turn (two 1 s model steps) instead of abandoning it.
    for worker in stack.workers.drain(..) {
        worker.stop().await;
    }
    let events = stack.conversation(request.conversation_id).await;
    assert!(
        matches!(
            events.last(),
            Some(ConversationEvent::AssistantReplied { .. })
        ),
        "{events:#?}"
    );
    let replies = stack
        .jetstream()
        .get_stream(stack.bus.subjects.chat_replies_stream())
        .await
        .unwrap();
    let reply = replies
        .get_last_raw_message_by_subject(&stack.bus.subjects.chat_reply(request.request_id))
        .await
        .expect("the reply was published before the worker stopped");
    let reply: proto_schemas::chat::ChatReply = serde_json::from_slice(&reply.payload).unwrap();
    answered(&reply);
    assert_eq!(
        stack.pending_requests().await,
        0,
        "the request was acked, not left for redelivery"
    );
    stack.stop().await;
}

/// Invariant 11: a turn costs the same at message 1 and message 10,000. Counted, not
/// timed: the events a worker reads for a turn in a 10,000-event conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_in_a_ten_thousand_event_conversation_reads_a_bounded_number_of_events() {
    let mut stack = Stack::start(0).await;
    // The conversation is written as a worker writes it, through the typed core
    // (which leaves snapshots behind), in 500-event appends to go fast.
    let conversation = ConversationId::new();
    let stream = StreamId::Conversation(conversation);
    let writer = Repository::<Conversation>::new(stack.store.clone(), RepositoryOptions::default());
    let mut state = Versioned::default();
    let mut events = vec![(
        EventId::new(),
        ConversationEvent::ConversationStarted {
            user_id: testkit::user_id("alice"),
        },
    )];
    for turn in 0..5_000 {
        let request_id = RequestId::new();
        events.push((
            EventId::new(),
            ConversationEvent::UserMessageReceived {
                request_id,
                text: format!("message {turn}"),
                regenerates: None,
            },
        ));
        events.push((
            EventId::new(),
            ConversationEvent::AssistantReplied {
                request_id,
                text: format!("reply {turn}"),
            },
        ));
        if events.len() >= 500 {
            let appended = writer
                .append(
                    &stream,
                    &mut state,
                    &std::mem::take(&mut events),
                    &EventMetadata::default(),
                )
                .await
                .unwrap();
            assert!(
                matches!(appended, eventlog::Appended::Written(_)),
                "{appended:?}"
            );
        }
    }
    if !events.is_empty() {
        let _ = writer
            .append(&stream, &mut state, &events, &EventMetadata::default())
            .await
            .unwrap();
    }
    assert!(state.version >= 10_000, "{}", state.version);

    // A worker that has never seen the conversation: one snapshot and the events after it.
    let store = stack.spawn_worker(stack.worker_config()).await;
    let before = store.events_read();
    let request = stack.follow_up("alice", conversation, "add a task to buy milk");
    let (_, calls) = stack.chat_answered(&request).await;
    assert_eq!(calls[0].result["status"], "created");
    let cold = store.events_read() - before;
    assert!(
        cold <= 100,
        "a cold turn read {cold} events of a 10,001-event conversation"
    );

    // The next turn on the same worker starts from its cache: it reads nothing back.
    let before = store.events_read();
    let request = stack.follow_up("alice", conversation, "show my tasks");
    let (response, calls) = stack.chat_answered(&request).await;
    assert_eq!(calls[0].result["count"], 1);
    assert!(response.contains("Buy milk"), "{response}");
    let warm = store.events_read() - before;
    assert!(warm <= 5, "a warm turn read {warm} events");
    stack.stop().await;
}

/// Invariant 9: what a model says is made storable before it is recorded. A NUL
/// character (which Postgres cannot store) in tool arguments or in the reply used to
/// fail every attempt to record the turn; now the turn completes once, without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_characters_from_the_model_are_dropped_not_retried() {
    let (stack, model) = Stack::with_model(|call| match call {
        0 => Scripted::ToolCalls(vec![(
            "call_\u{0}1".into(),
            "add_task".into(),
            r#"{"title":"Pay\u0000 rent"}"#.into(),
        )]),
        _ => Scripted::Text("Added\u{0} it.".into()),
    })
    .await;

    let request = stack.new_chat("alice", "add a task to pay rent");
    let (response, calls) = stack.chat_answered(&request).await;
    assert_eq!(response, "Added it.");
    assert_eq!(
        calls[0].result,
        json!({"task_id": 1, "status": "created", "title": "Pay rent"})
    );
    let events = stack.conversation(request.conversation_id).await;
    assert!(
        matches!(events.last(), Some(ConversationEvent::AssistantReplied { text, .. }) if text == "Added it."),
        "{events:#?}"
    );
    // Once: two model calls, no retried turn.
    assert_eq!(model.requests.lock().unwrap().len(), 2);
    stack.stop().await;
}

/// Invariant 9: a model answer larger than the worker keeps ends the turn once with a
/// clear error; nothing of it is recorded, so the conversation stays readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_model_answer_ends_the_turn_with_a_clear_error() {
    let (stack, model) =
        Stack::with_model(|_| Scripted::Text("x".repeat(agent_worker::model::MAX_STEP_BYTES + 1)))
            .await;

    let request = stack.new_chat("alice", "write me a novel");
    let reply = stack.chat(&request).await;
    assert_eq!(
        failed(&reply).message,
        agent_worker::prompt::MODEL_REPLY_TOO_LARGE_MESSAGE
    );
    let events = stack.conversation(request.conversation_id).await;
    assert_eq!(events.len(), 3, "{events:#?}");
    assert!(matches!(events[2], ConversationEvent::TurnFailed { .. }));
    // Not asked again: the same request would grow the same way.
    assert_eq!(model.requests.lock().unwrap().len(), 1);
    stack.stop().await;
}

/// A tool result larger than a turn keeps is not recorded: the model reads an error
/// asking for less, once, and the turn goes on and is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_tool_result_becomes_an_error_the_model_reads() {
    const ADD_STEPS: usize = 7;
    // 7 steps of 16 tasks with 2,000-character descriptions: listing them all is
    // about 230 KB.
    let (stack, model) = Stack::with_model(|call| match call {
        step if step < ADD_STEPS => Scripted::ToolCalls(
            (0..agent_worker::machine::MAX_CALLS_PER_STEP)
                .map(|index| {
                    let arguments = json!({
                        "title": format!("Task {step}-{index}"),
                        "description": "d".repeat(2_000),
                    });
                    (
                        format!("call_{step}_{index}"),
                        "add_task".to_owned(),
                        arguments.to_string(),
                    )
                })
                .collect(),
        ),
        step if step == ADD_STEPS => {
            Scripted::ToolCalls(vec![("call_list".into(), "list_tasks".into(), "{}".into())])
        }
        _ => Scripted::Text("Your list is too long to show at once.".into()),
    })
    .await;

    let request = stack.new_chat("alice", "add lots of tasks, then list them");
    let (response, calls) = stack.chat_answered(&request).await;
    assert_eq!(response, "Your list is too long to show at once.");
    let listed = calls.last().unwrap();
    assert_eq!(listed.name, "list_tasks");
    let error = listed.result["error"].as_str().unwrap();
    assert!(error.contains("131072 bytes"), "{error}");
    // What was recorded is the error, not the list.
    let events = stack.conversation(request.conversation_id).await;
    let recorded = events.iter().rev().find_map(|event| match event {
        ConversationEvent::ToolCallCompleted { result, .. } => Some(result.clone()),
        _ => None,
    });
    assert_eq!(recorded.as_ref(), Some(&listed.result));
    // Once: the adding steps, the listing step and the answer, nothing asked again.
    assert_eq!(model.requests.lock().unwrap().len(), ADD_STEPS + 2);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_left_by_an_older_version_is_brought_up_to_date_and_loses_nothing() {
    use async_nats::jetstream::consumer::{AckPolicy, pull};
    use std::time::Duration;

    let mut stack = Stack::start(0).await;
    let subjects = stack.bus.subjects.clone();
    let requests = stack
        .jetstream()
        .get_stream(subjects.chat_requests_stream())
        .await
        .unwrap();
    // What an older worker made: a subject filter and a 30 s ack wait.
    requests
        .create_consumer(pull::Config {
            durable_name: Some(subjects.chat_workers_consumer()),
            filter_subject: subjects.chat_requests(),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .unwrap();
    let waiting = stack.new_chat("alice", "add a task to buy milk");
    stack.publish(&waiting).await;

    stack.spawn_worker(stack.worker_config()).await;
    let reply = stack.reply(waiting.request_id).await;
    let (_, calls) = answered(&reply);
    assert_eq!(calls.len(), 1, "{calls:?}");
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = requests
        .get_consumer(&subjects.chat_workers_consumer())
        .await
        .unwrap();
    let config = &consumer.info().await.unwrap().config;
    assert_eq!(config.filter_subject, "");
    assert_eq!(config.ack_wait, Duration::from_secs(5));

    // The replica started last sets the timings.
    let mut later = stack.worker_config();
    later.ack_wait_secs = 7;
    stack.spawn_worker(later).await;
    let config = &consumer.info().await.unwrap().config;
    assert_eq!(config.ack_wait, Duration::from_secs(7));
}
