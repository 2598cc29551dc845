//! Task commands over NATS against the real Postgres and NATS: every tool, idempotent
//! replays, concurrent adds across replicas, user isolation, bad input, and what is
//! stored with each event.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Harness, call, command, output_json};
use futures::StreamExt as _;
use opentelemetry::trace::TraceContextExt as _;
use proto_schemas::TaskNumber;
use proto_schemas::events::{EventsAppended, TaskEvent};
use proto_schemas::tasks::TaskCommandReply;
use serde_json::json;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

fn decoded(events: &[eventlog::StoredEvent]) -> Vec<TaskEvent> {
    events.iter().map(|event| event.decode().unwrap()).collect()
}

#[tokio::test]
async fn every_tool_works_over_nats() {
    let h = Harness::start(1).await;

    // Each step: the tool, its arguments, and the whole answer.
    let completed = json!({"task_id": 1, "status": "completed", "title": "Buy milk"});
    for (tool, arguments, expected) in [
        (
            "add_task",
            json!({"title": " Buy milk ", "description": "2 litres"}),
            json!({"task_id": 1, "status": "created", "title": "Buy milk"}),
        ),
        (
            "add_task",
            json!({"title": "Call mum"}),
            json!({"task_id": 2, "status": "created", "title": "Call mum"}),
        ),
        (
            "list_tasks",
            json!({}),
            json!({
                "tasks": [
                    {"id": 1, "title": "Buy milk", "description": "2 litres", "completed": false},
                    {"id": 2, "title": "Call mum", "description": "", "completed": false}
                ],
                "count": 2,
                "filter": "all"
            }),
        ),
        ("complete_task", json!({"task_id": 1}), completed.clone()),
        // Again: the same answer, and no second event.
        ("complete_task", json!({"task_id": "1"}), completed),
        (
            "update_task",
            json!({"task_id": 2, "title": "Call dad"}),
            json!({"task_id": 2, "status": "updated", "title": "Call dad"}),
        ),
        (
            "update_task",
            json!({"task_id": 2}),
            json!({"error": "Nothing to update: give a new title or a new description", "task_id": 2}),
        ),
    ] {
        let answer = h.tool("alice", tool, arguments.clone()).await;
        assert_eq!(answer, expected, "{tool} {arguments}");
    }

    let pending = h
        .tool("alice", "list_tasks", json!({"status": "pending"}))
        .await;
    assert_eq!(pending["count"], 1);
    assert_eq!(pending["tasks"][0]["title"], "Call dad");
    let done = h
        .tool("alice", "list_tasks", json!({"status": "completed"}))
        .await;
    assert_eq!(done["tasks"][0]["id"], 1);

    let deleted = h.tool("alice", "delete_task", json!({"task_id": 1})).await;
    assert_eq!(
        deleted,
        json!({"task_id": 1, "status": "deleted", "title": "Buy milk"})
    );
    let gone = h.tool("alice", "delete_task", json!({"task_id": 1})).await;
    assert_eq!(gone, json!({"error": "Task not found", "task_id": 1}));

    // A new task after a deletion gets a new number, never the deleted one.
    let added = h
        .tool("alice", "add_task", json!({"title": "Water plants"}))
        .await;
    assert_eq!(added["task_id"], 3);

    let too_long = h
        .tool("alice", "add_task", json!({"title": "x".repeat(201)}))
        .await;
    assert_eq!(
        too_long,
        json!({"error": "Title must be at most 200 characters"})
    );

    let events = decoded(&h.events("alice").await);
    let types: Vec<&str> = events
        .iter()
        .map(|event| match event {
            TaskEvent::TaskAdded { .. } => "added",
            TaskEvent::TaskCompleted { .. } => "completed",
            TaskEvent::TaskDeleted { .. } => "deleted",
            TaskEvent::TaskUpdated { .. } => "updated",
        })
        .collect();
    assert_eq!(
        types,
        ["added", "added", "completed", "updated", "deleted", "added"]
    );
    h.stop().await;
}

#[tokio::test]
async fn a_replayed_command_id_gets_the_first_reply_and_appends_nothing() {
    let h = Harness::start(1).await;

    let first_add = command("alice", call("add_task", json!({"title": "Buy milk"})));
    let reply = h.send_command(&first_add).await;
    assert_eq!(
        output_json(reply.clone()),
        json!({"task_id": 1, "status": "created", "title": "Buy milk"})
    );

    // The list moves on; the replay still answers what the first delivery did.
    h.tool("alice", "add_task", json!({"title": "Call mum"}))
        .await;
    let rename = command(
        "alice",
        call(
            "update_task",
            json!({"task_id": 1, "title": "Buy oat milk"}),
        ),
    );
    let renamed = h.send_command(&rename).await;
    h.tool(
        "alice",
        "update_task",
        json!({"task_id": 1, "title": "Buy soy milk"}),
    )
    .await;
    let delete = command("alice", call("delete_task", json!({"task_id": 2})));
    let deleted = h.send_command(&delete).await;

    assert_eq!(h.send_command(&first_add).await, reply);
    assert_eq!(h.send_command(&rename).await, renamed);
    assert_eq!(
        output_json(h.send_command(&rename).await),
        json!({"task_id": 1, "status": "updated", "title": "Buy oat milk"})
    );
    assert_eq!(h.send_command(&delete).await, deleted);
    assert_eq!(h.events("alice").await.len(), 5);

    // The same id with a different call is refused, not mistaken for the first call.
    let mut reused = first_add.clone();
    reused.call = call("complete_task", json!({"task_id": 1}));
    assert_eq!(
        output_json(h.send_command(&reused).await),
        json!({"error": "This command id was already used for a different command"})
    );
    // ...and so is the same id sent for another user.
    let mut other_user = first_add.clone();
    other_user.user_id = testkit::user_id("bob");
    assert_eq!(
        output_json(h.send_command(&other_user).await)["error"],
        "This command id was already used for a different command"
    );
    assert!(h.events("bob").await.is_empty());
    assert_eq!(h.events("alice").await.len(), 5);
    h.stop().await;
}

#[tokio::test]
async fn duplicates_racing_on_two_replicas_are_applied_once() {
    let h = Harness::start(2).await;
    h.tool("alice", "add_task", json!({"title": "first"})).await;

    let add = command("alice", call("add_task", json!({"title": "Buy milk"})));
    let replies = futures::future::join_all((0..12).map(|_| h.send_command(&add))).await;
    for reply in &replies {
        assert_eq!(
            output_json(reply.clone()),
            json!({"task_id": 2, "status": "created", "title": "Buy milk"})
        );
    }
    assert_eq!(h.events("alice").await.len(), 2);
    h.stop().await;
}

#[tokio::test]
async fn fifty_concurrent_adds_get_fifty_consecutive_numbers() {
    // Two replicas in the queue group: commands for one user race across processes'
    // worth of handlers, so the optimistic append and its retry are really exercised.
    let h = Harness::start(2).await;
    let adds = (0..50).map(|i| {
        h.send(
            "alice",
            call("add_task", json!({"title": format!("task {i}")})),
        )
    });
    let replies = futures::future::join_all(adds).await;

    let mut numbers = BTreeSet::new();
    for reply in replies {
        let output = output_json(reply);
        assert_eq!(output["status"], "created", "{output}");
        numbers.insert(output["task_id"].as_u64().unwrap());
    }
    assert_eq!(numbers, (1..=50).collect::<BTreeSet<u64>>());

    let events = h.events("alice").await;
    assert_eq!(
        events.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        (1..=50).collect::<Vec<u64>>()
    );
    let stored: BTreeSet<u32> = decoded(&events)
        .into_iter()
        .map(|event| match event {
            TaskEvent::TaskAdded {
                task_id: TaskNumber(n),
                ..
            } => n,
            other => panic!("unexpected event {other:?}"),
        })
        .collect();
    assert_eq!(stored, (1..=50).collect::<BTreeSet<u32>>());
    h.stop().await;
}

#[tokio::test]
async fn users_cannot_see_or_change_each_others_tasks() {
    let h = Harness::start(1).await;
    h.tool("alice", "add_task", json!({"title": "Alice's secret"}))
        .await;

    let listed = h.tool("bob", "list_tasks", json!({})).await;
    assert_eq!(listed, json!({"tasks": [], "count": 0, "filter": "all"}));
    for (tool, arguments) in [
        ("complete_task", json!({"task_id": 1})),
        ("delete_task", json!({"task_id": 1})),
        ("update_task", json!({"task_id": 1, "title": "mine now"})),
    ] {
        let refused = h.tool("bob", tool, arguments).await;
        assert_eq!(
            refused,
            json!({"error": "Task not found", "task_id": 1}),
            "{tool}"
        );
    }
    // Bob's own numbering starts at 1 and does not touch Alice's.
    let bobs = h.tool("bob", "add_task", json!({"title": "Bob's"})).await;
    assert_eq!(bobs["task_id"], 1);

    let alices = h.tool("alice", "list_tasks", json!({})).await;
    assert_eq!(
        alices["tasks"],
        json!([{"id": 1, "title": "Alice's secret", "description": "", "completed": false}])
    );
    assert_eq!(h.events("alice").await.len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn malformed_commands_get_a_clear_refusal() {
    let h = Harness::start(1).await;
    let subject = h.bus.subjects.task_commands();
    let ask = |payload: &'static str| {
        let client = h.bus.client.clone();
        let subject = subject.clone();
        async move {
            let reply = client
                .request(subject, payload.into())
                .await
                .expect("answered");
            serde_json::from_slice::<TaskCommandReply>(&reply.payload)
                .expect("a task command reply")
        }
    };
    for payload in [
        "not json",
        r#"{"command_id": "0190f0c8-7c1e-7000-8000-000000000000", "user_id": "a/b",
            "call": {"tool": "list_tasks", "arguments": {}}}"#,
        r#"{"command_id": "0190f0c8-7c1e-7000-8000-000000000000", "user_id": "alice",
            "call": {"tool": "drop_tables", "arguments": {}}}"#,
    ] {
        let output = output_json(ask(payload).await);
        let error = output["error"].as_str().unwrap();
        assert!(
            error.starts_with("Malformed task command: "),
            "{payload}: {error}"
        );
    }
    // The service is still there.
    assert_eq!(h.tool("alice", "list_tasks", json!({})).await["count"], 0);
    h.stop().await;
}

#[tokio::test]
async fn events_record_cause_user_and_trace_and_wake_tailers_unless_told_not_to() {
    let h = Harness::start(1).await;
    let mut notices = testkit::subscribe(&h.bus.client, h.bus.subjects.events_appended()).await;

    // A chat turn's command: its worker wakes the tailers when the turn settles.
    let mut quiet = command("alice", call("add_task", json!({"title": "Buy bread"})));
    quiet.notify_appended = false;
    h.send_command(&quiet).await;

    let mut add = command("alice", call("add_task", json!({"title": "Buy milk"})));
    add.correlation_id = Some(uuid::Uuid::now_v7());
    let span = tracing::info_span!("test_caller");
    let trace_id = span.context().span().span_context().trace_id();
    h.send_command(&add).instrument(span).await;

    let events = h.events("alice").await;
    assert_eq!(events.len(), 2);
    let metadata = &events[1].metadata;
    assert_eq!(metadata.causation_id, Some(add.command_id.as_uuid()));
    assert_eq!(metadata.correlation_id, add.correlation_id);
    assert_eq!(metadata.user_id.as_deref(), Some("alice"));
    let traceparent = metadata.traceparent.as_deref().expect("traceparent stored");
    assert!(
        traceparent.contains(&trace_id.to_string()),
        "{traceparent} is not in trace {trace_id}"
    );

    let notice = tokio::time::timeout(Duration::from_secs(5), notices.next())
        .await
        .expect("a notice in time")
        .expect("subscription open");
    // The first notice is the second command's: task-service (one replica here)
    // sends a command's notice before its reply, on one connection, and the second
    // command went out after the first's reply, so a notice of the first would have
    // come before it.
    let notice: EventsAppended = serde_json::from_slice(&notice.payload).unwrap();
    assert_eq!(
        notice,
        EventsAppended {
            stream: "tasks-alice".into(),
            last_position: events[1].position
        }
    );
    h.stop().await;
}

#[tokio::test]
async fn store_failures_are_unavailable_and_the_command_can_be_retried() {
    let h = Harness::start(1).await;
    let add = command("alice", call("add_task", json!({"title": "Buy milk"})));
    // Take the events table away from under the running service.
    sqlx::query("ALTER TABLE events RENAME TO events_away")
        .execute(h.store.pool())
        .await
        .unwrap();
    let reply = h.send_command(&add).await;
    assert!(
        matches!(&reply, TaskCommandReply::Unavailable { reason } if !reason.contains("events")),
        "{reply:?}"
    );
    sqlx::query("ALTER TABLE events_away RENAME TO events")
        .execute(h.store.pool())
        .await
        .unwrap();
    // The same command id, retried, is applied once.
    assert_eq!(output_json(h.send_command(&add).await)["task_id"], 1);
    assert_eq!(output_json(h.send_command(&add).await)["task_id"], 1);
    assert_eq!(h.events("alice").await.len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn a_replica_that_stops_leaves_the_commands_to_the_others() {
    let mut h = Harness::start(2).await;
    h.tool("alice", "add_task", json!({"title": "before"}))
        .await;
    let stopping = h.replicas.remove(0);
    // Commands keep flowing while one replica drains and stops.
    let adds = futures::future::join_all((0..10).map(|i| {
        h.send(
            "alice",
            call("add_task", json!({"title": format!("during {i}")})),
        )
    }));
    let (replies, ()) = tokio::join!(adds, stopping.stop());
    for reply in replies {
        assert_eq!(output_json(reply)["status"], "created");
    }
    let after = h.tool("alice", "add_task", json!({"title": "after"})).await;
    assert_eq!(after["task_id"], 12);
    h.stop().await;
}
