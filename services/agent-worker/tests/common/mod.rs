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
use proto_schemas::chat::{ChatOutcome, ChatReply, ChatRequest, ChatStreamChunk};
use proto_schemas::events::{ConversationEvent, StreamId, TaskEvent};
use proto_schemas::tasks::{
    ListTasksArgs, TaskCommand, TaskCommandReply, TaskView, ToolCall, ToolOutput,
};
use proto_schemas::{CommandId, ConversationId, RequestId, UserId};
use testkit::{TestBus, TestDatabase};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "agent-worker-test-secret";
/// Generous: the machine is small and shared.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Something running in-process until stopped or dropped.
pub struct Running {
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    pub fn spawn<F>(run: impl FnOnce(CancellationToken) -> F) -> Self
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(shutdown.clone()));
        Self {
            shutdown,
            task: Some(task),
        }
    }

    /// Cancels and waits until it has stopped cleanly.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let task = self.task.take().expect("stopped once");
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("did not stop in time")
            .expect("panicked")
            .expect("failed");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An offline-llm in-process.
pub async fn offline_llm(latency_ms: u64) -> (String, Running) {
    let app = offline_llm::App::build(offline_llm::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        latency_ms,
    })
    .await
    .expect("offline-llm binds");
    let base = app.api_base();
    let running =
        Running::spawn(|token| async move { app.run(token).await.map_err(anyhow::Error::from) });
    (base, running)
}

/// A database, a NATS prefix, task-service and offline-llm, and the workers started on them.
pub struct Stack {
    pub llm_base: String,
    pub store: EventStore,
    pub workers: Vec<Running>,
    pub services: Vec<Running>,
    pub bus: TestBus,
    pub db: TestDatabase,
}

impl Stack {
    /// Starts everything but the workers; offline-llm answers after `latency_ms`.
    pub async fn start(latency_ms: u64) -> Self {
        platform::telemetry::init_for_tests();
        Self::start_quietly(latency_ms).await
    }

    /// [`Self::start`] without installing the test log subscriber (for benchmarks).
    pub async fn start_quietly(latency_ms: u64) -> Self {
        let db = TestDatabase::create().await.expect("test database");
        let bus = TestBus::new().await.expect("test bus");
        let task_service = task_service(&db, bus.nats_config()).await;
        let (llm_base, llm) = offline_llm(latency_ms).await;
        let store = EventStore::connect(&db.url, 5).await.expect("event store");
        // The gateway's side: requests can be published before any worker runs.
        platform::streams::ensure_chat_streams(&bus.jetstream(), &bus.subjects, 1)
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
    pub fn worker_config(&self) -> Config {
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

    /// Starts an in-process worker; the handle shares its event store's read count.
    pub async fn spawn_worker(&mut self, config: Config) -> EventStore {
        let app = App::build(config).await.expect("agent-worker builds");
        let store = app.event_store();
        self.workers.push(Running::spawn(|token| app.run(token)));
        store
    }

    /// A first message in a new conversation.
    pub fn new_chat(&self, user: &str, message: &str) -> ChatRequest {
        ChatRequest {
            request_id: RequestId::new(),
            user_id: user_id(user),
            conversation_id: ConversationId::new(),
            new_conversation: true,
            message: message.into(),
            received_at: chrono::Utc::now(),
        }
    }

    /// A follow-up message in an existing conversation.
    pub fn follow_up(
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

    pub fn jetstream(&self) -> jetstream::Context {
        self.bus.jetstream()
    }

    /// Publishes a chat request as the gateway does (message id = request id).
    pub async fn publish(&self, request: &ChatRequest) {
        publish_request(&self.jetstream(), &self.bus.subjects, request).await;
    }

    /// The reply to `request`, read from the replies stream (as a late reader would).
    pub async fn reply(&self, request: RequestId) -> ChatReply {
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
    pub async fn chat(&self, request: &ChatRequest) -> ChatReply {
        self.publish(request).await;
        self.reply(request.request_id).await
    }

    pub async fn conversation(&self, conversation: ConversationId) -> Vec<ConversationEvent> {
        self.store
            .read_stream(&StreamId::Conversation(conversation).to_string())
            .await
            .expect("stream read")
            .iter()
            .map(|event| event.decode().expect("a conversation event"))
            .collect()
    }

    pub async fn task_events(&self, user: &str) -> Vec<TaskEvent> {
        self.store
            .read_stream(&StreamId::Tasks(user_id(user)).to_string())
            .await
            .expect("stream read")
            .iter()
            .map(|event| event.decode().expect("a task event"))
            .collect()
    }

    /// The user's tasks, asked of task-service over NATS.
    pub async fn tasks(&self, user: &str) -> Vec<TaskView> {
        let command = TaskCommand {
            command_id: CommandId::new(),
            user_id: user_id(user),
            correlation_id: None,
            call: ToolCall::ListTasks(ListTasksArgs::default()),
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
    pub async fn pending_requests(&self) -> u64 {
        let mut stream = self
            .jetstream()
            .get_stream(self.bus.subjects.chat_requests_stream())
            .await
            .expect("stream");
        stream.info().await.expect("stream info").state.messages
    }

    /// Stops the workers, then the services.
    pub async fn stop(mut self) {
        for worker in self.workers.drain(..) {
            worker.stop().await;
        }
        for service in self.services.drain(..) {
            service.stop().await;
        }
    }
}

pub async fn publish_request(
    jetstream: &jetstream::Context,
    subjects: &proto_schemas::Subjects,
    request: &ChatRequest,
) {
    let publish = jetstream::message::PublishMessage::build()
        .payload(serde_json::to_vec(request).unwrap().into())
        .message_id(request.request_id.to_string());
    jetstream
        .send_publish(subjects.chat_requests(), publish)
        .await
        .expect("publish")
        .await
        .expect("the requests stream stored the request");
}

/// task-service in-process (its MCP endpoint on a free port).
pub async fn task_service(db: &TestDatabase, nats: platform::config::NatsConfig) -> Running {
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

pub fn user_id(user: &str) -> UserId {
    UserId::parse(user).expect("valid user id")
}

/// The answered text and tool calls of a reply; panics on a failure.
pub fn answered(reply: &ChatReply) -> (&str, &[proto_schemas::chat::ToolCallRecord]) {
    match &reply.outcome {
        ChatOutcome::Answered {
            response,
            tool_calls,
        } => (response, tool_calls),
        ChatOutcome::Failed { error } => panic!("turn failed: {error:?}"),
    }
}

/// Counts every reply published under the prefix (core NATS sees each publish, so a
/// turn answered twice shows up twice here).
pub struct ReplyCounter {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    task: JoinHandle<()>,
}

impl ReplyCounter {
    pub async fn start(bus: &TestBus) -> Self {
        let mut subscriber = bus
            .client
            .subscribe(bus.subjects.chat_replies_wildcard())
            .await
            .expect("subscribe");
        bus.client.flush().await.expect("flush");
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

    pub fn counts(&self) -> HashMap<String, usize> {
        self.counts.lock().unwrap().clone()
    }
}

impl Drop for ReplyCounter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Collects the live chunks of one request.
pub async fn watch_chunks(bus: &TestBus, request: RequestId) -> Arc<Mutex<Vec<ChatStreamChunk>>> {
    let mut subscriber = bus
        .client
        .subscribe(bus.subjects.chat_stream(request))
        .await
        .expect("subscribe");
    bus.client.flush().await.expect("flush");
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

/// What a scripted model server does with one call.
#[derive(Debug, Clone)]
pub enum Scripted {
    /// Fails with this status (and a `Retry-After` in seconds, if given).
    Status(u16, Option<u64>),
    /// Streams a text answer.
    Text(String),
    /// Streams tool calls: (id, name, raw arguments).
    ToolCalls(Vec<(String, String, String)>),
    /// Passes the call on to the upstream server (offline-llm) unchanged.
    Proxy,
}

/// A tiny OpenAI-compatible server whose answers follow a script, for failures and
/// model behaviour offline-llm never shows.
pub struct ModelStub {
    pub base: String,
    /// Every request body received, with the time it arrived.
    pub requests: Arc<Mutex<Vec<(std::time::Instant, serde_json::Value)>>>,
    pub running: Running,
}

impl ModelStub {
    pub async fn start(
        upstream: Option<String>,
        script: impl Fn(usize) -> Scripted + Send + Sync + 'static,
    ) -> Self {
        use axum::extract::State;
        use axum::http::{StatusCode, header};
        use axum::response::IntoResponse;

        #[derive(Clone)]
        struct Stub {
            upstream: Option<String>,
            script: Arc<dyn Fn(usize) -> Scripted + Send + Sync>,
            requests: Arc<Mutex<Vec<(std::time::Instant, serde_json::Value)>>>,
            http: reqwest::Client,
        }

        async fn completions(
            State(stub): State<Stub>,
            body: axum::body::Bytes,
        ) -> axum::response::Response {
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let call = {
                let mut requests = stub.requests.lock().unwrap();
                requests.push((std::time::Instant::now(), json));
                requests.len() - 1
            };
            match (stub.script)(call) {
                Scripted::Status(code, retry_after) => {
                    let status = StatusCode::from_u16(code).unwrap();
                    let body = serde_json::json!({"error": {"message": "scripted failure", "type": "server_error", "param": null, "code": null}});
                    let mut response = (status, axum::Json(body)).into_response();
                    if let Some(secs) = retry_after {
                        response.headers_mut().insert(header::RETRY_AFTER, secs.to_string().parse().unwrap());
                    }
                    response
                }
                Scripted::Text(text) => sse(vec![
                    serde_json::json!({"role": "assistant", "content": text}),
                ]),
                Scripted::ToolCalls(calls) => sse(
                    calls
                        .into_iter()
                        .enumerate()
                        .map(|(index, (id, name, arguments))| {
                            serde_json::json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                                "function": {"name": name, "arguments": arguments}}]})
                        })
                        .collect(),
                ),
                Scripted::Proxy => {
                    let upstream = stub.upstream.as_deref().expect("an upstream to proxy to");
                    let answer = stub
                        .http
                        .post(format!("{upstream}/chat/completions"))
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(body)
                        .send()
                        .await
                        .expect("upstream answers");
                    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap();
                    let content_type = answer
                        .headers()
                        .get(header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("application/json")
                        .to_owned();
                    let bytes = answer.bytes().await.expect("upstream body");
                    (status, [(header::CONTENT_TYPE, content_type)], bytes).into_response()
                }
            }
        }

        fn sse(deltas: Vec<serde_json::Value>) -> axum::response::Response {
            let mut body = String::new();
            let chunk = |delta: serde_json::Value, finish: Option<&str>| {
                serde_json::json!({"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 0,
                    "model": "stub", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            };
            for delta in deltas {
                body.push_str(&format!("data: {}\n\n", chunk(delta, None)));
            }
            body.push_str(&format!(
                "data: {}\n\ndata: [DONE]\n\n",
                chunk(serde_json::json!({}), Some("stop"))
            ));
            ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
        }

        let requests = Arc::new(Mutex::new(Vec::new()));
        let stub = Stub {
            upstream,
            script: Arc::new(script),
            requests: Arc::clone(&requests),
            http: reqwest::Client::new(),
        };
        let router = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(completions))
            .with_state(stub);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/v1", listener.local_addr().unwrap());
        let running = Running::spawn(|token| async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(token.cancelled_owned())
                .await?;
            Ok(())
        });
        Self {
            base,
            requests,
            running,
        }
    }

    pub fn calls(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn request(&self, index: usize) -> serde_json::Value {
        self.requests.lock().unwrap()[index].1.clone()
    }
}
