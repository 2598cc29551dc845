//! Shared set-up of the integration tests: task-service replicas in-process against a
//! fresh database and a unique NATS prefix, and small helpers to talk to them.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser as _;
use eventlog::{EventStore, StoredEvent};
use platform::auth::JwtKeys;
use proto_schemas::CommandId;
use proto_schemas::events::StreamId;
use proto_schemas::tasks::{TaskCommand, TaskCommandReply, ToolCall};
use task_service::{App, Config};
use testkit::{Running, TestBus, TestDatabase, user_id};

pub(crate) const SECRET: &str = "task-service-test-secret-of-32-bytes-or-more";
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One running replica.
pub(crate) struct Replica {
    pub addr: SocketAddr,
    running: Running,
}

impl Replica {
    pub(crate) fn mcp_url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// Cancels the replica and waits until it has stopped cleanly.
    pub(crate) async fn stop(self) {
        self.running.stop().await;
    }
}

/// A fresh database and NATS prefix with task-service replicas on them.
pub(crate) struct Harness {
    pub replicas: Vec<Replica>,
    pub store: EventStore,
    pub keys: JwtKeys,
    pub bus: TestBus,
    pub db: TestDatabase,
}

pub(crate) fn config(db: &TestDatabase, bus: &TestBus) -> Config {
    let mut config = Config::try_parse_from(["task-service", "--auth-jwt-secret", SECRET])
        .expect("defaults parse");
    config.nats = bus.nats_config();
    config.database = db.database_config();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config
}

pub(crate) async fn spawn(config: Config) -> Replica {
    let app = App::build(config).await.expect("task-service builds");
    let addr = app.local_addr();
    Replica {
        addr,
        running: Running::spawn(|token| app.run(token)),
    }
}

impl Harness {
    pub(crate) async fn start(replicas: usize) -> Self {
        platform::telemetry::init_for_tests();
        let db = TestDatabase::create().await.expect("test database");
        let bus = TestBus::new().await.expect("test bus");
        let mut running = Vec::new();
        for _ in 0..replicas {
            running.push(spawn(config(&db, &bus)).await);
        }
        let store = EventStore::connect(&db.url, 5).await.expect("event store");
        Self {
            replicas: running,
            store,
            keys: JwtKeys::new(SECRET.as_bytes()),
            bus,
            db,
        }
    }

    /// Sends `call` for `user` over NATS with a new command id.
    pub(crate) async fn send(&self, user: &str, call: ToolCall) -> TaskCommandReply {
        self.send_command(&command(user, call)).await
    }

    pub(crate) async fn send_command(&self, command: &TaskCommand) -> TaskCommandReply {
        platform::bus::request_json(
            &self.bus.client,
            self.bus.subjects.task_commands(),
            command,
            REQUEST_TIMEOUT,
        )
        .await
        .expect("task command answered")
    }

    /// The reply to `call` as JSON (`{"outcome": …}` flattened to the output, or the
    /// whole reply when not applied).
    pub(crate) async fn output(&self, user: &str, call: ToolCall) -> serde_json::Value {
        output_json(self.send(user, call).await)
    }

    /// [`Self::output`] of the tool `name` called with `arguments` as a model gives them.
    pub(crate) async fn tool(
        &self,
        user: &str,
        name: &str,
        arguments: serde_json::Value,
    ) -> serde_json::Value {
        self.output(user, call(name, arguments)).await
    }

    pub(crate) async fn events(&self, user: &str) -> Vec<StoredEvent> {
        self.store
            .read_stream(&StreamId::Tasks(user_id(user)).to_string())
            .await
            .expect("stream read")
    }

    pub(crate) fn token(&self, user: &str) -> String {
        self.keys.mint(&user_id(user), Duration::from_secs(3600))
    }

    pub(crate) async fn stop(self) {
        for replica in self.replicas {
            replica.stop().await;
        }
    }
}

pub(crate) fn command(user: &str, call: ToolCall) -> TaskCommand {
    TaskCommand {
        command_id: CommandId::new(),
        user_id: user_id(user),
        correlation_id: None,
        call,
        notify_appended: true,
    }
}

pub(crate) fn output_json(reply: TaskCommandReply) -> serde_json::Value {
    match reply {
        TaskCommandReply::Applied { output } => serde_json::to_value(output).unwrap(),
        other => panic!("command not applied: {other:?}"),
    }
}

/// Builds a call the way a model's arguments arrive.
pub(crate) fn call(name: &str, arguments: serde_json::Value) -> ToolCall {
    ToolCall::from_name_and_arguments(name, arguments).expect("valid tool call")
}
