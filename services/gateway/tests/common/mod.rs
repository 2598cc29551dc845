//! Shared set-up of the gateway's integration tests: a gateway in-process on a free
//! port under a unique NATS prefix, a fake agent-worker that consumes the real
//! requests stream and answers as a test scripts it, and a fake projection answering
//! queries.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, pull};
use futures::StreamExt as _;
use gateway::{App, Cli, Command, Config};
use platform::auth::JwtKeys;
use proto_schemas::Subjects;
use proto_schemas::chat::{ChatOutcome, ChatReply, ChatRequest, ChatStreamChunk};
use testkit::{Running, TestBus, user_id};
use tokio::task::JoinHandle;

pub(crate) const SECRET: &str = "gateway-test-secret-of-at-least-32-bytes";

/// A running gateway and the bus it is on.
pub(crate) struct Gateway {
    pub addr: SocketAddr,
    pub keys: JwtKeys,
    pub bus: TestBus,
    pub http: reqwest::Client,
    running: Running,
}

/// Test settings of a gateway.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub reply_timeout_secs: u64,
    pub dev_login: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            reply_timeout_secs: 10,
            dev_login: false,
        }
    }
}

pub(crate) fn config(bus: &TestBus, options: &Options) -> Config {
    let mut args = vec![
        "gateway".to_owned(),
        "--auth-jwt-secret".to_owned(),
        SECRET.to_owned(),
        "--listen".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--reply-timeout-secs".to_owned(),
        options.reply_timeout_secs.to_string(),
        "--query-timeout-secs".to_owned(),
        "2".to_owned(),
        format!("--auth-dev-login={}", options.dev_login),
    ];
    args.push("--max-body-bytes".to_owned());
    args.push("65536".to_owned());
    let cli = <Cli as clap::Parser>::try_parse_from(args).expect("test flags parse");
    let Command::Serve(mut config) = cli.into_command() else {
        unreachable!("no subcommand given");
    };
    config.nats = bus.nats_config();
    config
}

impl Gateway {
    pub(crate) async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    pub(crate) async fn start_with(options: Options) -> Self {
        platform::telemetry::init_for_tests();
        let bus = TestBus::new().await.expect("nats is reachable");
        let app = App::build(config(&bus, &options))
            .await
            .expect("gateway builds");
        let addr = app.local_addr();
        Self {
            addr,
            keys: JwtKeys::new(SECRET.as_bytes()),
            bus,
            http: reqwest::Client::new(),
            running: Running::spawn(|token| app.run(token)),
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn token(&self, user: &str) -> String {
        self.keys.mint(&user_id(user), Duration::from_secs(600))
    }

    pub(crate) fn subjects(&self) -> &Subjects {
        &self.bus.subjects
    }

    /// `POST /api/{user}/chat` with `body` as the user's own token.
    pub(crate) fn chat(&self, user: &str, body: serde_json::Value) -> reqwest::RequestBuilder {
        self.http
            .post(self.url(&format!("/api/{user}/chat")))
            .bearer_auth(self.token(user))
            .json(&body)
    }

    /// `POST /api/{user}/chat` of `message` under an `Idempotency-Key`.
    pub(crate) fn chat_with_key(
        &self,
        user: &str,
        key: &str,
        message: &str,
    ) -> reqwest::RequestBuilder {
        self.chat(user, serde_json::json!({ "message": message }))
            .header("Idempotency-Key", key)
    }

    /// `POST /api/{user}/chat/stream` with `body` as the user's own token.
    pub(crate) fn chat_stream(
        &self,
        user: &str,
        body: serde_json::Value,
    ) -> reqwest::RequestBuilder {
        self.http
            .post(self.url(&format!("/api/{user}/chat/stream")))
            .bearer_auth(self.token(user))
            .json(&body)
    }

    pub(crate) fn get(&self, user: &str, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path)).bearer_auth(self.token(user))
    }

    /// Cancels the gateway and waits until it has stopped.
    pub(crate) async fn stop(self) {
        self.running.stop().await;
    }

    pub(crate) fn begin_shutdown(&self) {
        self.running.cancel();
    }
}

/// What the fake worker does with one request.
#[derive(Debug, Clone, Default)]
pub(crate) struct Script {
    /// Waited before anything is sent.
    pub delay: Duration,
    /// Sent on the request's stream subject, in order, before the reply.
    pub chunks: Vec<ChatStreamChunk>,
    /// The reply's outcome; `None` sends no reply at all.
    pub outcome: Option<ChatOutcome>,
}

/// One request as the fake worker received it.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub request: ChatRequest,
    pub headers: HeaderMap,
}

/// A stand-in agent-worker: a pull consumer on the real requests stream that answers
/// each request as its script says and records what it received.
pub(crate) struct FakeWorker {
    pub received: Arc<Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
}

impl FakeWorker {
    pub(crate) async fn start<F>(gateway: &Gateway, script: F) -> Self
    where
        F: Fn(&ChatRequest) -> Script + Send + Sync + 'static,
    {
        let client = gateway.bus.client.clone();
        let jetstream = async_nats::jetstream::new(client.clone());
        let subjects = gateway.subjects().clone();
        let stream = jetstream
            .get_stream(subjects.chat_requests_stream())
            .await
            .expect("the gateway created the requests stream");
        let consumer = stream
            .get_or_create_consumer(
                &subjects.chat_workers_consumer(),
                pull::Config {
                    durable_name: Some(subjects.chat_workers_consumer()),
                    ack_policy: AckPolicy::Explicit,
                    ..Default::default()
                },
            )
            .await
            .expect("consumer");
        let mut messages = consumer.messages().await.expect("consume");
        let received = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&received);
        let script = Arc::new(script);
        let task = tokio::spawn(async move {
            while let Some(Ok(message)) = messages.next().await {
                let request: ChatRequest =
                    serde_json::from_slice(&message.payload).expect("a chat request");
                record.lock().unwrap().push(Received {
                    request: request.clone(),
                    headers: message.headers.clone().unwrap_or_default(),
                });
                let plan = script(&request);
                let client = client.clone();
                let jetstream = jetstream.clone();
                let subjects = subjects.clone();
                // Each turn on its own task, like several worker slots.
                tokio::spawn(async move {
                    tokio::time::sleep(plan.delay).await;
                    for chunk in &plan.chunks {
                        let payload = serde_json::to_vec(chunk).unwrap();
                        client
                            .publish(
                                subjects.chat_stream(&request.user_id, request.request_id),
                                payload.into(),
                            )
                            .await
                            .unwrap();
                    }
                    if let Some(outcome) = plan.outcome {
                        let reply = ChatReply {
                            request_id: request.request_id,
                            conversation_id: request.conversation_id,
                            user_id: Some(request.user_id.clone()),
                            outcome,
                        };
                        let payload = serde_json::to_vec(&reply).unwrap();
                        jetstream
                            .publish(subjects.chat_reply(request.request_id), payload.into())
                            .await
                            .unwrap()
                            .await
                            .unwrap();
                    }
                    message.ack().await.unwrap();
                });
            }
        });
        Self { received, task }
    }

    pub(crate) fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for FakeWorker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An answered outcome with one add_task call.
pub(crate) fn added(title: &str) -> ChatOutcome {
    ChatOutcome::Answered {
        response: format!("I've added \"{title}\" to your list."),
        tool_calls: vec![proto_schemas::chat::ToolCallRecord {
            name: "add_task".into(),
            arguments: serde_json::json!({ "title": title }),
            result: serde_json::json!({ "task_id": 1, "status": "created", "title": title }),
        }],
    }
}

/// A stand-in projection: answers one query subject with what `answer` returns for
/// each query, and records the queries.
pub(crate) struct FakeProjection {
    pub queries: Arc<Mutex<Vec<serde_json::Value>>>,
    task: JoinHandle<()>,
}

impl FakeProjection {
    pub(crate) async fn start<F>(gateway: &Gateway, subject: String, answer: F) -> Self
    where
        F: Fn(&serde_json::Value) -> serde_json::Value + Send + Sync + 'static,
    {
        let client = gateway.bus.client.clone();
        let mut requests = client
            .queue_subscribe(subject, "projection".to_owned())
            .await
            .unwrap();
        testkit::registered(&client).await;
        let queries = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&queries);
        let task = tokio::spawn(async move {
            while let Some(message) = requests.next().await {
                let query: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
                record.lock().unwrap().push(query.clone());
                let reply = answer(&query);
                if let Some(inbox) = message.reply {
                    client
                        .publish(inbox, serde_json::to_vec(&reply).unwrap().into())
                        .await
                        .unwrap();
                }
            }
        });
        Self { queries, task }
    }

    pub(crate) fn queries(&self) -> Vec<serde_json::Value> {
        self.queries.lock().unwrap().clone()
    }
}

impl Drop for FakeProjection {
    fn drop(&mut self) {
        self.task.abort();
    }
}
