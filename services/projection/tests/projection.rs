//! The projection against the machine's real Postgres and NATS: events appended
//! through the event store, answers asked over NATS the way the gateway asks them.
//!
//! Each test has its own database and subject prefix, so tests run in parallel.

use std::time::Duration;

use eventlog::{Checkpoint, EventMetadata, EventStore, ExpectedVersion, NewEvent};
use projection::queries::Reader;
use projection::{App, Config, ProjectionError, ReplayOptions, VerifyOptions};
use proto_schemas::chat::{ChatErrorCode, ToolCallRecord};
use proto_schemas::events::{ConversationEvent, EventFamily, EventsAppended, StreamId, TaskEvent};
use proto_schemas::queries::{
    ConversationSummary, ConversationsQuery, MessageRole, MessageView, MessagesQuery, PageRequest,
    ProjectionHealth, QueryReply, TasksQuery,
};
use proto_schemas::tasks::{StatusFilter, TaskView};
use proto_schemas::{CommandId, ConversationId, EventId, RequestId, TaskNumber};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use testkit::{Running, TestBus, TestDatabase, user_id};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);
const ASK: Duration = Duration::from_secs(5);

fn config(db: &TestDatabase, bus: &TestBus) -> Config {
    Config {
        nats: bus.nats_config(),
        database: db.database_config(),
        process: platform::config::ProcessConfig {
            telemetry: platform::config::TelemetryConfig {
                log_format: Default::default(),
                otlp_endpoint: None,
            },
            shutdown: platform::config::ShutdownConfig {
                shutdown_grace_secs: 25,
            },
        },
        health: Default::default(),
        batch_size: 1_000,
        poll_interval_ms: 100,
        min_read_interval_ms: 20,
        standby_poll_ms: 100,
        retry_delay_ms: 100,
        query_concurrency: 16,
    }
}

/// Starts one replica.
async fn start_replica(db: &TestDatabase, bus: &TestBus) -> Running {
    let app = App::build(config(db, bus)).await.unwrap();
    Running::spawn(|token| app.run(token))
}

/// A test's database, bus, event store and (usually) one running replica.
struct Harness {
    bus: TestBus,
    store: EventStore,
    replica: Option<Running>,
    // Dropped last: its drop removes the database.
    db: TestDatabase,
}

impl Harness {
    async fn new() -> Self {
        platform::telemetry::init_for_tests();
        let db = TestDatabase::create().await.unwrap();
        let bus = TestBus::new().await.unwrap();
        let store = EventStore::connect(&db.url, 5).await.unwrap();
        Self {
            bus,
            store,
            replica: None,
            db,
        }
    }

    async fn started() -> Self {
        let mut harness = Self::new().await;
        harness.replica = Some(start_replica(&harness.db, &harness.bus).await);
        harness
    }

    /// A started harness whose replica has applied everything [`seed`] wrote: the
    /// harness, the seeded conversations' ids and the number of events.
    async fn seeded() -> (Self, Vec<ConversationId>, u64) {
        let harness = Self::started().await;
        let ids = seed(&harness).await;
        let total = harness.event_count().await;
        harness.applied(total).await;
        (harness, ids, total)
    }

    async fn append<E: EventFamily>(&self, stream: &str, user: &str, events: &[E]) {
        let metadata = EventMetadata {
            user_id: Some(user.to_owned()),
            ..EventMetadata::default()
        };
        let events: Vec<NewEvent> = events
            .iter()
            .map(|event| NewEvent::new(EventId::new(), event, metadata.clone()))
            .collect();
        let outcome = self
            .store
            .append(stream, ExpectedVersion::Any, &events)
            .await
            .unwrap();
        platform::bus::notify_appended(
            &self.bus.client,
            &self.bus.subjects,
            &EventsAppended {
                stream: stream.to_owned(),
                last_position: outcome.last_position,
            },
        )
        .await;
    }

    async fn tasks_of(&self, user: &str, events: &[TaskEvent]) {
        self.append(&StreamId::Tasks(user_id(user)).to_string(), user, events)
            .await;
    }

    async fn conversation(&self, id: ConversationId, user: &str, events: &[ConversationEvent]) {
        self.append(&StreamId::Conversation(id).to_string(), user, events)
            .await;
    }

    async fn ask<Q: Serialize, R: DeserializeOwned>(&self, subject: String, query: &Q) -> R {
        platform::bus::request_json(&self.bus.client, subject, query, ASK)
            .await
            .unwrap()
    }

    async fn tasks(
        &self,
        user: &str,
        status: StatusFilter,
        page: PageRequest,
    ) -> QueryReply<TaskView> {
        let query = TasksQuery {
            user_id: user_id(user),
            status,
            page,
        };
        self.ask(self.bus.subjects.query_tasks(), &query).await
    }

    async fn conversations(
        &self,
        user: &str,
        page: PageRequest,
    ) -> QueryReply<ConversationSummary> {
        let query = ConversationsQuery {
            user_id: user_id(user),
            page,
        };
        self.ask(self.bus.subjects.query_conversations(), &query)
            .await
    }

    async fn messages(
        &self,
        user: &str,
        id: ConversationId,
        page: PageRequest,
    ) -> QueryReply<MessageView> {
        let query = MessagesQuery {
            user_id: user_id(user),
            conversation_id: id,
            page,
        };
        self.ask(self.bus.subjects.query_messages(), &query).await
    }

    async fn health(&self) -> ProjectionHealth {
        self.ask(self.bus.subjects.query_health(), &json!({})).await
    }

    /// Waits until the live read models have applied `count` events.
    async fn applied(&self, count: u64) {
        testkit::eventually(WAIT, &format!("{count} events applied"), || async {
            let health: Result<ProjectionHealth, _> = platform::bus::request_json(
                &self.bus.client,
                self.bus.subjects.query_health(),
                &json!({}),
                ASK,
            )
            .await;
            health.ok().filter(|h| h.events_applied == count).map(drop)
        })
        .await;
    }

    async fn event_count(&self) -> u64 {
        self.store.size().await.unwrap().0
    }

    async fn pool(&self) -> sqlx::PgPool {
        self.db.pool().await
    }
}

fn page(limit: u32, cursor: Option<String>) -> PageRequest {
    PageRequest { limit, cursor }
}

fn items<T>(reply: QueryReply<T>) -> (Vec<T>, Option<String>) {
    match reply {
        QueryReply::Found { page } => (page.items, page.next_cursor),
        QueryReply::NotFound => panic!("expected a page, got NotFound"),
        QueryReply::Invalid { reason } => panic!("expected a page, got Invalid: {reason}"),
        QueryReply::Unavailable { reason } => panic!("expected a page, got Unavailable: {reason}"),
    }
}

fn added(n: u32, title: &str) -> TaskEvent {
    TaskEvent::TaskAdded {
        task_id: TaskNumber(n),
        title: title.into(),
        description: format!("about {title}"),
    }
}

/// A whole chat turn: the user's message, `tools` tool calls requested and completed,
/// and the reply.
fn turn(
    text: &str,
    tools: &[(&str, serde_json::Value, serde_json::Value)],
    reply: &str,
) -> Vec<ConversationEvent> {
    let request_id = RequestId::new();
    let mut events = vec![ConversationEvent::UserMessageReceived {
        request_id,
        text: text.into(),
        regenerates: None,
    }];
    for (index, (name, arguments, _)) in tools.iter().enumerate() {
        events.push(ConversationEvent::ToolCallRequested {
            request_id,
            step: 0,
            call_id: format!("call_{index}"),
            name: (*name).into(),
            arguments: arguments.clone(),
            command_id: CommandId::for_tool_call(request_id, 0, index as u32),
        });
    }
    for (index, (name, _, result)) in tools.iter().enumerate() {
        events.push(ConversationEvent::ToolCallCompleted {
            request_id,
            call_id: format!("call_{index}"),
            name: (*name).into(),
            result: result.clone(),
        });
    }
    events.push(ConversationEvent::AssistantReplied {
        request_id,
        text: reply.into(),
    });
    events
}

fn started(user: &str) -> ConversationEvent {
    ConversationEvent::ConversationStarted {
        user_id: user_id(user),
    }
}

/// A little of everything: two users' tasks and a few conversations with tool calls
/// and a failed turn. Returns the conversation ids.
async fn seed(h: &Harness) -> Vec<ConversationId> {
    h.tasks_of(
        "ada",
        &[
            added(1, "Buy milk"),
            added(2, "Call mum"),
            added(3, "Pay rent"),
        ],
    )
    .await;
    h.tasks_of("bob", &[added(1, "Bob's task")]).await;
    h.tasks_of(
        "ada",
        &[
            TaskEvent::TaskCompleted {
                task_id: TaskNumber(1),
            },
            TaskEvent::TaskDeleted {
                task_id: TaskNumber(2),
            },
            TaskEvent::TaskUpdated {
                task_id: TaskNumber(3),
                title: Some("Pay the rent".into()),
                description: None,
            },
            added(4, "Water plants"),
        ],
    )
    .await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let id = ConversationId::new();
        let mut events = vec![started("ada")];
        events.extend(turn(
            &format!("Add a task to buy groceries, number {n}"),
            &[(
                "add_task",
                json!({"title": "Buy groceries"}),
                json!({"task_id": 5, "status": "created", "title": "Buy groceries"}),
            )],
            "Added it.",
        ));
        h.conversation(id, "ada", &events).await;
        ids.push(id);
    }
    let request_id = RequestId::new();
    h.conversation(
        ids[0],
        "ada",
        &[
            ConversationEvent::UserMessageReceived {
                request_id,
                text: "and again".into(),
                regenerates: None,
            },
            ConversationEvent::TurnFailed {
                request_id,
                code: ChatErrorCode::ModelUnavailable,
                message: "The assistant is unavailable right now.".into(),
            },
        ],
    )
    .await;
    let bobs = ConversationId::new();
    let mut events = vec![started("bob")];
    events.extend(turn("hello", &[], "Hi Bob"));
    h.conversation(bobs, "bob", &events).await;
    ids.push(bobs);
    ids
}

/// Every answer a user could get, for comparing before and after a replay.
async fn answers(h: &Harness, conversations: &[ConversationId]) -> serde_json::Value {
    let mut all = Vec::new();
    for user in ["ada", "bob"] {
        for status in [
            StatusFilter::All,
            StatusFilter::Pending,
            StatusFilter::Completed,
        ] {
            all.push(serde_json::to_value(h.tasks(user, status, page(200, None)).await).unwrap());
        }
        all.push(serde_json::to_value(h.conversations(user, page(200, None)).await).unwrap());
        for id in conversations {
            all.push(serde_json::to_value(h.messages(user, *id, page(200, None)).await).unwrap());
        }
    }
    serde_json::Value::Array(all)
}

#[tokio::test]
async fn tasks_are_listed_by_status_in_pages() {
    let h = Harness::started().await;
    h.tasks_of(
        "ada",
        &(1..=5)
            .map(|n| added(n, &format!("task {n}")))
            .collect::<Vec<_>>(),
    )
    .await;
    h.tasks_of(
        "ada",
        &[
            TaskEvent::TaskCompleted {
                task_id: TaskNumber(2),
            },
            TaskEvent::TaskCompleted {
                task_id: TaskNumber(4),
            },
            TaskEvent::TaskDeleted {
                task_id: TaskNumber(5),
            },
            TaskEvent::TaskUpdated {
                task_id: TaskNumber(1),
                title: Some("renamed".into()),
                description: None,
            },
        ],
    )
    .await;
    h.tasks_of("bob", &[added(1, "not ada's")]).await;
    h.applied(10).await;
    assert_eq!(h.health().await, ProjectionHealth { events_applied: 10 });

    let (all, next) = items(h.tasks("ada", StatusFilter::All, page(50, None)).await);
    assert_eq!(next, None);
    let ids: Vec<u32> = all.iter().map(|t| t.id.0).collect();
    assert_eq!(ids, [1, 2, 3, 4]);
    assert_eq!(
        all[0],
        TaskView {
            id: TaskNumber(1),
            title: "renamed".into(),
            description: "about task 1".into(),
            completed: false
        }
    );
    let (pending, _) = items(h.tasks("ada", StatusFilter::Pending, page(50, None)).await);
    assert_eq!(pending.iter().map(|t| t.id.0).collect::<Vec<_>>(), [1, 3]);
    let (completed, _) = items(
        h.tasks("ada", StatusFilter::Completed, page(50, None))
            .await,
    );
    assert_eq!(completed.iter().map(|t| t.id.0).collect::<Vec<_>>(), [2, 4]);
    assert!(completed.iter().all(|t| t.completed));
    let (bobs, _) = items(h.tasks("bob", StatusFilter::All, page(50, None)).await);
    assert_eq!(bobs.len(), 1);
    let (nobody, next) = items(h.tasks("carol", StatusFilter::All, page(50, None)).await);
    assert!(nobody.is_empty() && next.is_none());

    // Pages of two, following the cursor; the filter applies on every page.
    let (first, cursor) = items(h.tasks("ada", StatusFilter::All, page(2, None)).await);
    assert_eq!(first.iter().map(|t| t.id.0).collect::<Vec<_>>(), [1, 2]);
    let (second, cursor) = items(h.tasks("ada", StatusFilter::All, page(2, cursor)).await);
    assert_eq!(second.iter().map(|t| t.id.0).collect::<Vec<_>>(), [3, 4]);
    assert_eq!(cursor, None, "the last page has no cursor");
    let (first, cursor) = items(h.tasks("ada", StatusFilter::Pending, page(1, None)).await);
    assert_eq!(first[0].id.0, 1);
    let (second, cursor) = items(h.tasks("ada", StatusFilter::Pending, page(1, cursor)).await);
    assert_eq!(second[0].id.0, 3);
    assert_eq!(cursor, None);

    // Bad input is refused with a reason.
    for bad in [
        page(0, None),
        page(201, None),
        page(10, Some("not-a-cursor".into())),
    ] {
        match h.tasks("ada", StatusFilter::All, bad).await {
            QueryReply::Invalid { reason } => assert!(!reason.is_empty()),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }
    let reply: QueryReply<TaskView> = h
        .ask(h.bus.subjects.query_tasks(), &json!({"user_id": ""}))
        .await;
    assert!(matches!(reply, QueryReply::Invalid { reason } if reason.contains("malformed query")));
    h.replica.unwrap().stop().await;
}

#[tokio::test]
async fn conversations_and_messages_show_each_turn_with_its_tool_calls() {
    let (h, ids, _) = Harness::seeded().await;

    let (conversations, next) = items(h.conversations("ada", page(50, None)).await);
    assert_eq!(next, None);
    assert_eq!(conversations.len(), 3);
    // Newest first.
    assert_eq!(
        conversations
            .iter()
            .map(|c| c.conversation_id)
            .collect::<Vec<_>>(),
        [ids[2], ids[1], ids[0]]
    );
    let first = &conversations[2];
    assert_eq!(first.title, "Add a task to buy groceries, number 0");
    assert_eq!(first.message_count, 4);
    assert!(first.updated_at > first.created_at);
    let (page1, cursor) = items(h.conversations("ada", page(2, None)).await);
    let (page2, cursor) = items(h.conversations("ada", page(2, cursor)).await);
    assert_eq!(cursor, None);
    assert_eq!(
        page1
            .iter()
            .chain(&page2)
            .map(|c| c.conversation_id)
            .collect::<Vec<_>>(),
        conversations
            .iter()
            .map(|c| c.conversation_id)
            .collect::<Vec<_>>()
    );
    let (bobs, _) = items(h.conversations("bob", page(50, None)).await);
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0].conversation_id, ids[3]);

    let (messages, _) = items(h.messages("ada", ids[0], page(50, None)).await);
    let roles: Vec<MessageRole> = messages.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [
            MessageRole::User,
            MessageRole::Assistant,
            MessageRole::User,
            MessageRole::Error
        ]
    );
    assert_eq!(messages[0].content, "Add a task to buy groceries, number 0");
    assert!(messages[0].tool_calls.is_empty());
    assert_eq!(messages[1].content, "Added it.");
    assert_eq!(
        messages[1].tool_calls,
        [ToolCallRecord {
            name: "add_task".into(),
            arguments: json!({"title": "Buy groceries"}),
            result: json!({"task_id": 5, "status": "created", "title": "Buy groceries"}),
        }]
    );
    assert_eq!(messages[0].request_id, messages[1].request_id);
    assert_eq!(
        messages[3].content,
        "The assistant is unavailable right now."
    );
    // Pages of messages follow the cursor.
    let (first, cursor) = items(h.messages("ada", ids[0], page(3, None)).await);
    let (rest, cursor) = items(h.messages("ada", ids[0], page(3, cursor)).await);
    assert_eq!(cursor, None);
    assert_eq!(first.into_iter().chain(rest).collect::<Vec<_>>(), messages);

    // Another user's conversation and an unknown one look the same: not found.
    assert_eq!(
        h.messages("bob", ids[0], page(50, None)).await,
        QueryReply::NotFound
    );
    assert_eq!(
        h.messages("ada", ids[3], page(50, None)).await,
        QueryReply::NotFound
    );
    assert_eq!(
        h.messages("ada", ConversationId::new(), page(50, None))
            .await,
        QueryReply::NotFound
    );
    let tasks_cursor = items(h.tasks("ada", StatusFilter::All, page(1, None)).await).1;
    assert!(matches!(
        h.messages("ada", ids[0], page(2, tasks_cursor)).await,
        QueryReply::Invalid { .. }
    ));
    h.replica.unwrap().stop().await;
}

/// A batch and its checkpoint commit together: a batch that fails half-way leaves no
/// trace, a batch read from a stale checkpoint is refused, and the retry from the
/// stored checkpoint applies every event exactly once.
#[tokio::test]
async fn a_batch_and_its_checkpoint_commit_together_or_not_at_all() {
    let h = Harness::new().await;
    projection::ensure_live_tables(h.store.pool())
        .await
        .unwrap();
    let sql = projection::schema::Sql::for_schema(projection::schema::LIVE_SCHEMA);
    h.tasks_of("ada", &[added(1, "one"), added(2, "two")]).await;
    let conversation = ConversationId::new();
    h.conversation(conversation, "ada", &[started("ada")]).await;
    h.conversation(conversation, "ada", &turn("hi", &[], "hello"))
        .await;
    // Transactions of other tests on this Postgres hold the reading horizon back a moment.
    let events = testkit::eventually(WAIT, "5 events readable", || async {
        let events = h.store.read_all(Checkpoint::START, 100).await.unwrap();
        (events.len() == 5).then_some(events)
    })
    .await;

    // The same events with the last one unreadable (a schema version from the future).
    let mut poisoned = events.clone();
    poisoned.last_mut().unwrap().schema_version = 99;
    let pool = h.pool().await;
    let mut conn = pool.acquire().await.unwrap();
    let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
    let error = projection::store::apply_batch(&mut tx, &sql, Checkpoint::START, &poisoned)
        .await
        .unwrap_err();
    assert!(matches!(error, ProjectionError::Decode { .. }), "{error}");
    drop(tx);
    let reader = Reader::new(
        pool.clone(),
        std::sync::Arc::new(projection::schema::Sql::for_schema("projection")),
    );
    assert_eq!(reader.health().await.unwrap().events_applied, 0);
    let tasks = TasksQuery {
        user_id: user_id("ada"),
        status: StatusFilter::All,
        page: PageRequest::default(),
    };
    assert!(
        items(reader.tasks(&tasks).await).0.is_empty(),
        "nothing of the failed batch is visible"
    );

    // A write that fails after the checkpoint moved rolls the checkpoint back too:
    // the messages' primary key refuses a message that exists already.
    sqlx::query(
        "INSERT INTO projection.messages VALUES ($1, 3, 'user', 'squatter', '[]', gen_random_uuid(), now())",
    )
    .bind(conversation.as_uuid())
    .execute(&pool)
    .await
    .unwrap();
    let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
    assert!(
        projection::store::apply_batch(&mut tx, &sql, Checkpoint::START, &events)
            .await
            .is_err()
    );
    drop(tx);
    assert_eq!(reader.health().await.unwrap().events_applied, 0);
    assert!(items(reader.tasks(&tasks).await).0.is_empty());
    sqlx::query("DELETE FROM projection.messages")
        .execute(&pool)
        .await
        .unwrap();

    // Apply the first two events and commit.
    let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
    let applied = projection::store::apply_batch(&mut tx, &sql, Checkpoint::START, &events[..2])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(applied.events_applied, 2);
    assert_eq!(applied.checkpoint, events[1].checkpoint());

    // A writer that still believes it is at the start (a crash before it learned of
    // its commit, or a second writer) cannot apply them again.
    let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
    let error = projection::store::apply_batch(&mut tx, &sql, Checkpoint::START, &events)
        .await
        .unwrap_err();
    assert!(
        matches!(error, ProjectionError::CheckpointMoved { .. }),
        "{error}"
    );
    drop(tx);

    // Resuming from the stored checkpoint applies the rest, once.
    let stored = projection::store::read_checkpoint(&mut conn, &sql)
        .await
        .unwrap();
    assert_eq!(stored.checkpoint, events[1].checkpoint());
    let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
    let applied = projection::store::apply_batch(&mut tx, &sql, stored.checkpoint, &events[2..])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(applied.events_applied, 5);
    assert_eq!(items(reader.tasks(&tasks).await).0.len(), 2);
    let messages = MessagesQuery {
        user_id: user_id("ada"),
        conversation_id: conversation,
        page: PageRequest::default(),
    };
    assert_eq!(items(reader.messages(&messages).await).0.len(), 2);
    let report = projection::verify(&pool, &VerifyOptions::default())
        .await
        .unwrap();
    assert!(report.is_identical(), "{report}");
}

/// A projector killed mid-flight (its task aborted, its connections dropped) and
/// started again continues from its checkpoint: every event once, none skipped.
#[tokio::test]
async fn a_restarted_projector_continues_from_its_checkpoint_without_duplicates() {
    let (mut h, ids, _) = Harness::seeded().await;
    h.replica.take().unwrap().abort().await;

    // Events appended while no projector runs.
    h.tasks_of("ada", &[added(5, "after the crash")]).await;
    h.conversation(
        ids[1],
        "ada",
        &turn(
            "more",
            &[("list_tasks", json!({}), json!({"count": 3}))],
            "Three tasks.",
        ),
    )
    .await;
    let total = h.event_count().await;
    h.replica = Some(start_replica(&h.db, &h.bus).await);
    h.applied(total).await;

    let (messages, _) = items(h.messages("ada", ids[1], page(50, None)).await);
    assert_eq!(messages.len(), 4, "two turns, each message once");
    assert_eq!(messages[3].tool_calls.len(), 1);
    let (tasks, _) = items(h.tasks("ada", StatusFilter::All, page(50, None)).await);
    assert_eq!(
        tasks.iter().map(|t| t.id.0).collect::<Vec<_>>(),
        [1, 3, 4, 5]
    );
    let report = projection::verify(&h.pool().await, &VerifyOptions::default())
        .await
        .unwrap();
    assert!(report.is_identical(), "{report}");
    assert_eq!(report.events_folded, total);
    h.replica.take().unwrap().stop().await;
}

/// Runs the projection binary's `command` (with `args`) on the test database, its
/// log at `warn`.
fn projection_cli(db: &TestDatabase, command: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_projection"))
        .args([command, "--database-url", &db.url])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[tokio::test]
async fn replay_after_dropping_the_read_models_gives_identical_answers() {
    let (h, ids, total) = Harness::seeded().await;
    let before = answers(&h, &ids).await;

    let pool = h.pool().await;
    sqlx::query("DROP SCHEMA projection CASCADE")
        .execute(&pool)
        .await
        .unwrap();
    let output = projection_cli(&h.db, "replay", &["--batch-size", "7"]);
    testkit::assert_success("projection replay", &output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("replayed {total} events")),
        "{stdout}"
    );

    h.applied(total).await;
    assert_eq!(answers(&h, &ids).await, before);
    let output = projection_cli(&h.db, "verify", &[]);
    testkit::assert_success("projection verify", &output);
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("identical"));

    // And a replay over live read models replaces them with the same answers.
    let summary = projection::replay(
        &pool,
        &ReplayOptions {
            batch_size: 3,
            ..ReplayOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(summary.replaced);
    assert_eq!(summary.events, total);
    assert_eq!(answers(&h, &ids).await, before);
    let leftovers: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'projection_%'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(leftovers, 0, "the replaced generation is dropped");
    h.replica.unwrap().stop().await;
}

#[tokio::test]
async fn verify_finds_a_tampered_read_model() {
    let (h, ids, total) = Harness::seeded().await;
    let pool = h.pool().await;
    let report = projection::verify(&pool, &VerifyOptions::default())
        .await
        .unwrap();
    assert!(report.is_identical(), "{report}");
    assert_eq!(
        (report.events_folded, report.events_applied),
        (total, total)
    );

    sqlx::query(
        "UPDATE projection.tasks SET title = 'tampered' WHERE user_id = 'ada' AND task_id = 3",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("DELETE FROM projection.messages WHERE conversation_id = $1 AND role = 'error'")
        .bind(ids[0].as_uuid())
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO projection.tasks VALUES ('mallory', 1, 'planted', '', false)")
        .execute(&pool)
        .await
        .unwrap();

    let report = projection::verify(&pool, &VerifyOptions::default())
        .await
        .unwrap();
    assert!(!report.is_identical());
    assert_eq!(report.difference_count, 3, "{report}");
    let text = report.to_string();
    assert!(
        text.contains("task ada#3 differs") && text.contains("tampered"),
        "{text}"
    );
    assert!(
        text.contains("task mallory#1 is in the read models but not in the log"),
        "{text}"
    );
    assert!(
        text.contains("is missing from the read models") && text.contains("unavailable right now"),
        "{text}"
    );

    let output = projection_cli(&h.db, "verify", &[]);
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.starts_with("different") && stdout.contains("tampered"),
        "{stdout}"
    );

    // A replay repairs them.
    projection::replay(&pool, &ReplayOptions::default())
        .await
        .unwrap();
    assert!(
        projection::verify(&pool, &VerifyOptions::default())
            .await
            .unwrap()
            .is_identical()
    );
    assert_eq!(projection_cli(&h.db, "verify", &[]).status.code(), Some(0));
    h.replica.unwrap().stop().await;
}

/// Queries are answered all through a replay; the live writer carries on from the
/// rebuilt checkpoint after the swap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_keep_being_answered_during_a_replay() {
    let h = Harness::started().await;
    let ids = seed(&h).await;
    // Enough history for the replay to take a while in small batches.
    for n in 0..40u32 {
        let id = ConversationId::new();
        let mut events = vec![started("carol")];
        for t in 0..10 {
            events.extend(turn(
                &format!("turn {t} of {n}"),
                &[(
                    "add_task",
                    json!({"title": format!("t{t}")}),
                    json!({"task_id": t}),
                )],
                "ok",
            ));
        }
        h.conversation(id, "carol", &events).await;
    }
    let total = h.event_count().await;
    h.applied(total).await;
    let before = answers(&h, &ids).await;

    // Meanwhile another user keeps adding tasks, so the live writer and the replay
    // race for the tip and the writer has to pick up the rebuilt checkpoint.
    let appending = CancellationToken::new();
    let appender = tokio::spawn({
        let store = h.store.clone();
        let appending = appending.clone();
        async move {
            let mut added_tasks = 0;
            while !appending.is_cancelled() {
                added_tasks += 1;
                let event = NewEvent::new(
                    EventId::new(),
                    &added(added_tasks, "busy"),
                    EventMetadata::default(),
                );
                store
                    .append("tasks-dave", ExpectedVersion::Any, &[event])
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            added_tasks
        }
    });
    let pool = h.pool().await;
    let replay = tokio::spawn(async move {
        projection::replay(
            &pool,
            &ReplayOptions {
                batch_size: 50,
                ..ReplayOptions::default()
            },
        )
        .await
    });
    let mut asked = 0;
    let verify_pool = h.pool().await;
    while !replay.is_finished() {
        assert_eq!(answers(&h, &ids).await, before, "answers during the replay");
        // A verification that overlaps the swap still sees one generation.
        let report = projection::verify(&verify_pool, &VerifyOptions::default())
            .await
            .unwrap();
        assert!(report.is_identical(), "{report}");
        asked += 1;
    }
    let summary = replay.await.unwrap().unwrap();
    appending.cancel();
    let added_tasks = appender.await.unwrap();
    assert!(summary.replaced);
    assert!(asked > 0);
    assert_eq!(answers(&h, &ids).await, before);
    let total = total + u64::from(added_tasks);
    h.applied(total).await;
    let (daves, _) = items(h.tasks("dave", StatusFilter::All, page(200, None)).await);
    assert_eq!(
        daves.len(),
        added_tasks as usize,
        "every task added during the replay, once"
    );

    // The live writer follows on from the rebuilt read models.
    h.tasks_of("ada", &[added(6, "after the replay")]).await;
    h.applied(total + 1).await;
    let (tasks, _) = items(h.tasks("ada", StatusFilter::All, page(50, None)).await);
    assert!(tasks.iter().any(|t| t.title == "after the replay"));
    let report = projection::verify(&h.pool().await, &VerifyOptions::default())
        .await
        .unwrap();
    assert!(report.is_identical(), "{report}");
    h.replica.unwrap().stop().await;
}

/// Two replicas: both answer queries, one writes; when it stops, the other takes over.
#[tokio::test]
async fn a_standby_replica_takes_over_when_the_writer_stops() {
    let mut h = Harness::started().await;
    h.tasks_of("ada", &[added(1, "first")]).await;
    h.applied(1).await;
    let standby = start_replica(&h.db, &h.bus).await;
    for n in 2..=20 {
        h.tasks_of("ada", &[added(n, &format!("task {n}"))]).await;
    }
    h.applied(20).await;
    // Queries are shared by the queue group; every one is answered.
    for _ in 0..20 {
        assert_eq!(
            items(h.tasks("ada", StatusFilter::All, page(50, None)).await)
                .0
                .len(),
            20
        );
    }
    h.replica.take().unwrap().stop().await;
    h.tasks_of("ada", &[added(21, "after the handover")]).await;
    h.applied(21).await;
    let (tasks, _) = items(h.tasks("ada", StatusFilter::All, page(50, None)).await);
    assert_eq!(tasks.last().unwrap().title, "after the handover");
    assert!(
        projection::verify(&h.pool().await, &VerifyOptions::default())
            .await
            .unwrap()
            .is_identical()
    );
    standby.stop().await;
}

#[tokio::test]
async fn a_second_replay_at_once_is_refused() {
    let h = Harness::new().await;
    let pool = h.pool().await;
    let mut holder = pool.acquire().await.unwrap();
    assert!(
        projection::schema::try_session_lock(&mut holder, projection::schema::REPLAY_LOCK)
            .await
            .unwrap()
    );
    let error = projection::replay(&pool, &ReplayOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(error, ProjectionError::ReplayRunning), "{error}");
    holder.detach();
}
