//! Shared set-up of the integration tests: a fresh database and NATS prefix, a
//! task-service and an offline-llm in-process, agent-worker replicas (in-process or as
//! the real binary), and helpers to send chat requests and read what came back.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_worker::{App, Config};
use async_nats::jetstream;
use clap::Parser as _;
use eventlog::EventStore;
use futures::StreamExt as _;
use proto_schemas::chat::{
    ChatError, ChatErrorCode, ChatOutcome, ChatReply, ChatRequest, ChatStreamChunk,
};
use proto_schemas::events::{ConversationEvent, EventFamily, StreamId, TaskEvent};
use proto_schemas::tasks::{
    ListTasksArgs, TaskCommand, TaskCommandReply, TaskView, ToolCall, ToolOutput,
};
use proto_schemas::{CommandId, ConversationId, RequestId};
use testkit::{ModelStub, Running, Scripted, TestBus, TestDatabase, user_id};
use tokio::task::JoinHandle;

pub(crate) const SECRET: &str = "agent-worker-test-secret-of-32-bytes-or-more";
/// Generous: the machine is small and shared.
pub(crate) const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// An offline-llm in-process.
pub(crate) async fn offline_llm(latency_ms: u64) -> (String, Running) {
    let app = offline_llm::App::build(offline_llm::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        latency_ms,
    })
    .await
    .expect("offline-llm binds");
    let base = app.api_base();
    let running = Running::spawn(|token| app.run(token));
    (base, running)
}

/// A database, a NATS prefix, task-service and offline-llm, and the workers started on them.
pub(crate) struct Stack {
    pub llm_base: String,
    pub store: EventStore,
    pub workers: Vec<Running>,
    pub services: Vec<Running>,
    pub bus: TestBus,
    pub db: TestDatabase,
}

impl Stack {
    /// Starts everything but the workers; offline-llm answers after `latency_ms`.
    pub(crate) async fn start(latency_ms: u64) -> Self {
        platform::telemetry::init_for_tests();
        Self::start_quietly(latency_ms).await
    }

    /// [`Self::start`] with one worker running, of [`Self::worker_config`]'s settings.
    pub(crate) async fn with_worker(latency_ms: u64) -> Self {
        let mut stack = Self::start(latency_ms).await;
        stack.spawn_worker(stack.worker_config()).await;
        stack
    }

    /// [`Self::start`] with one worker asking a [`ModelStub`] that answers by `script`
    /// (its `Scripted::Proxy` passes a call on to offline-llm); the stack and the stub.
    pub(crate) async fn with_model(
        script: impl Fn(usize) -> Scripted + Send + Sync + 'static,
    ) -> (Self, ModelStub) {
        let mut stack = Self::start(0).await;
        let model = ModelStub::start(Some(stack.llm_base.clone()), script).await;
        stack.spawn_worker_on(&model, |_| {}).await;
        (stack, model)
    }

    /// [`Self::start`] without installing the test log subscriber (for benchmarks).
    pub(crate) async fn start_quietly(latency_ms: u64) -> Self {
        let db = TestDatabase::create().await.expect("test database");
        let bus = TestBus::new().await.expect("test bus");
        let task_service = task_service(&db, bus.nats_config()).await;
        let (llm_base, llm) = offline_llm(latency_ms).await;
        let store = EventStore::connect(&db.url, 5).await.expect("event store");
        // The gateway's side: requests can be published before any worker runs.
        platform::streams::ensure_chat_streams(&bus.jetstream(), &bus.subjects, 1, None)
            .await
            .expect("chat streams");
        Self {
            llm_base,
            store,
            workers: Vec::new(),
            services: vec![task_service, llm],
            bus,
            db,
        }
    }

    /// Worker settings for this stack: offline-llm as an OpenAI-compatible server,
    /// short redelivery delays and retries so that tests run quickly.
    pub(crate) fn worker_config(&self) -> Config {
        let mut config = Config::try_parse_from(["agent-worker"]).expect("defaults parse");
        config.nats = self.bus.nats_config();
        config.database = self.db.database_config();
        config.provider.openai_api_key = None;
        config.provider.gemini_api_key = None;
        config.provider.model = None;
        config.provider.llm_base_url = Some(self.llm_base.clone());
        config.provider.llm_model = Some("offline-llm".into());
        config.ack_wait_secs = 5;
        config.redelivery_backoff_ms = vec![200, 500];
        config.model_retry_base_ms = 50;
        config.system_prompt = None;
        config
    }

    /// Starts an in-process worker that asks `model` instead of offline-llm, with its
    /// settings changed by `adjust`.
    pub(crate) async fn spawn_worker_on(
        &mut self,
        model: &ModelStub,
        adjust: impl FnOnce(&mut Config),
    ) -> EventStore {
        let mut config = self.worker_config();
        config.provider.llm_base_url = Some(model.base.clone());
        adjust(&mut config);
        self.spawn_worker(config).await
    }

    /// Starts an in-process worker; the handle shares its event store's read count.
    pub(crate) async fn spawn_worker(&mut self, config: Config) -> EventStore {
        let app = App::build(config).await.expect("agent-worker builds");
        let store = app.event_store();
        self.workers.push(Running::spawn(|token| app.run(token)));
        store
    }

    /// A first message in a new conversation.
    pub(crate) fn new_chat(&self, user: &str, message: &str) -> ChatRequest {
        ChatRequest {
            request_id: RequestId::new(),
            user_id: user_id(user),
            conversation_id: ConversationId::new(),
            new_conversation: true,
            message: message.into(),
            received_at: chrono::Utc::now(),
            kind: Default::default(),
        }
    }

    /// A follow-up message in an existing conversation.
    pub(crate) fn follow_up(
        &self,
        user: &str,
        conversation: ConversationId,
        message: &str,
    ) -> ChatRequest {
        ChatRequest {
            conversation_id: conversation,
            new_conversation: false,
            ..self.new_chat(user, message)
        }
    }

    pub(crate) fn jetstream(&self) -> jetstream::Context {
        self.bus.jetstream()
    }

    /// Publishes a chat request as the gateway does (message id = request id).
    pub(crate) async fn publish(&self, request: &ChatRequest) {
        publish_request(&self.jetstream(), &self.bus.subjects, request).await;
    }

    /// The reply to `request`, read from the replies stream (as a late reader would).
    pub(crate) async fn reply(&self, request: RequestId) -> ChatReply {
        let jetstream = self.jetstream();
        let subject = self.bus.subjects.chat_reply(request);
        let stream_name = self.bus.subjects.chat_replies_stream();
        testkit::eventually(REPLY_TIMEOUT, &format!("the reply to {request}"), || {
            let jetstream = jetstream.clone();
            let subject = subject.clone();
            let stream_name = stream_name.clone();
            async move {
                let stream = jetstream.get_stream_no_info(&stream_name).await.ok()?;
                let message = stream
                    .get_last_raw_message_by_subject(&subject)
                    .await
                    .ok()?;
                Some(serde_json::from_slice(&message.payload).expect("a reply"))
            }
        })
        .await
    }

    /// Sends `request` and waits for its reply.
    pub(crate) async fn chat(&self, request: &ChatRequest) -> ChatReply {
        self.publish(request).await;
        self.reply(request.request_id).await
    }

    /// [`Self::chat`] for a turn that must be answered: the answer's text and tool
    /// calls (see [`answered`]).
    pub(crate) async fn chat_answered(
        &self,
        request: &ChatRequest,
    ) -> (String, Vec<proto_schemas::chat::ToolCallRecord>) {
        let reply = self.chat(request).await;
        let (response, calls) = answered(&reply);
        (response.to_owned(), calls.to_vec())
    }

    pub(crate) async fn conversation(
        &self,
        conversation: ConversationId,
    ) -> Vec<ConversationEvent> {
        self.events(StreamId::Conversation(conversation)).await
    }

    pub(crate) async fn task_events(&self, user: &str) -> Vec<TaskEvent> {
        self.events(StreamId::Tasks(user_id(user))).await
    }

    /// Every event of `stream`, decoded.
    async fn events<E: EventFamily>(&self, stream: StreamId) -> Vec<E> {
        self.store
            .read_stream(&stream.to_string())
            .await
            .expect("stream read")
            .iter()
            .map(|event| {
                event
                    .decode()
                    .unwrap_or_else(|error| panic!("an event of {stream}: {error}"))
            })
            .collect()
    }

    /// The user's tasks, asked of task-service over NATS.
    pub(crate) async fn tasks(&self, user: &str) -> Vec<TaskView> {
        let command = TaskCommand {
            command_id: CommandId::new(),
            user_id: user_id(user),
            correlation_id: None,
            call: ToolCall::ListTasks(ListTasksArgs::default()),
            notify_appended: true,
        };
        let reply: TaskCommandReply = platform::bus::request_json(
            &self.bus.client,
            self.bus.subjects.task_commands(),
            &command,
            Duration::from_secs(10),
        )
        .await
        .expect("task-service answers");
        match reply {
            TaskCommandReply::Applied {
                output: ToolOutput::Listing(listing),
            } => listing.tasks,
            other => panic!("unexpected list reply {other:?}"),
        }
    }

    /// How many chat requests are still in the work queue.
    pub(crate) async fn pending_requests(&self) -> u64 {
        let mut stream = self
            .jetstream()
            .get_stream(self.bus.subjects.chat_requests_stream())
            .await
            .expect("stream");
        stream.info().await.expect("stream info").state.messages
    }

    /// Waits until no chat request is left in the work queue (each was acked or
    /// terminated, none is stuck).
    pub(crate) async fn wait_queue_empty(&self) {
        testkit::eventually(Duration::from_secs(10), "an empty work queue", || async {
            (self.pending_requests().await == 0).then_some(())
        })
        .await;
    }

    /// Stops the workers, then the services.
    pub(crate) async fn stop(mut self) {
        for worker in self.workers.drain(..) {
            worker.stop().await;
        }
        for service in self.services.drain(..) {
            service.stop().await;
        }
    }
}

pub(crate) async fn publish_request(
    jetstream: &jetstream::Context,
    subjects: &proto_schemas::Subjects,
    request: &ChatRequest,
) {
    let publish = jetstream::message::PublishMessage::build()
        .payload(serde_json::to_vec(request).unwrap().into())
        .message_id(request.request_id.to_string());
    jetstream
        .send_publish(subjects.chat_request(&request.user_id), publish)
        .await
        .expect("publish")
        .await
        .expect("the requests stream stored the request");
}

/// task-service in-process (its MCP endpoint on a free port).
pub(crate) async fn task_service(db: &TestDatabase, nats: platform::config::NatsConfig) -> Running {
    let mut config =
        task_service::Config::try_parse_from(["task-service", "--auth-jwt-secret", SECRET])
            .expect("task-service defaults parse");
    config.nats = nats;
    config.database = db.database_config();
    config.listen = "127.0.0.1:0".parse().unwrap();
    let app = task_service::App::build(config)
        .await
        .expect("task-service builds");
    Running::spawn(|token| app.run(token))
}

/// The answered text and tool calls of a reply; panics on a failure.
pub(crate) fn answered(reply: &ChatReply) -> (&str, &[proto_schemas::chat::ToolCallRecord]) {
    match &reply.outcome {
        ChatOutcome::Answered {
            response,
            tool_calls,
        } => (response, tool_calls),
        ChatOutcome::Failed { error } => panic!("turn failed: {error:?}"),
        ChatOutcome::PendingApproval { approval, .. } => {
            panic!("turn waits for approval: {approval:?}")
        }
    }
}

/// The error of a failed reply; panics on an answer.
pub(crate) fn failed(reply: &ChatReply) -> &ChatError {
    match &reply.outcome {
        ChatOutcome::Failed { error } => error,
        ChatOutcome::Answered { .. } | ChatOutcome::PendingApproval { .. } => {
            panic!("expected a failed turn: {reply:?}")
        }
    }
}

/// The error a failed turn answers with: `code`, and `message` for the user.
pub(crate) fn chat_error(code: ChatErrorCode, message: &str) -> ChatError {
    ChatError {
        code,
        message: message.to_owned(),
    }
}

/// Counts every reply published under the prefix (core NATS sees each publish, so a
/// turn answered twice shows up twice here).
pub(crate) struct ReplyCounter {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    task: JoinHandle<()>,
}

impl ReplyCounter {
    pub(crate) async fn start(bus: &TestBus) -> Self {
        let mut subscriber =
            testkit::subscribe(&bus.client, bus.subjects.chat_replies_wildcard()).await;
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let sink = Arc::clone(&counts);
        let task = tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                *sink
                    .lock()
                    .unwrap()
                    .entry(message.subject.to_string())
                    .or_insert(0) += 1;
            }
        });
        Self { counts, task }
    }

    pub(crate) fn counts(&self) -> HashMap<String, usize> {
        self.counts.lock().unwrap().clone()
    }
}

impl Drop for ReplyCounter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Collects the live chunks of one request.
pub(crate) async fn watch_chunks(
    bus: &TestBus,
    request: &ChatRequest,
) -> Arc<Mutex<Vec<ChatStreamChunk>>> {
    let stream = bus
        .subjects
        .chat_stream(&request.user_id, request.request_id);
    let mut subscriber = testkit::subscribe(&bus.client, stream).await;
    let chunks = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&chunks);
    tokio::spawn(async move {
        while let Some(message) = subscriber.next().await {
            sink.lock()
                .unwrap()
                .push(serde_json::from_slice(&message.payload).expect("a chunk"));
        }
    });
    chunks
}
