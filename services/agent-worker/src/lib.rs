//! agent-worker: the model loop. It takes chat turns off the JetStream work queue,
//! lets a language model decide which task tools to run, runs them as task commands,
//! records the conversation as events and publishes the reply. Any number of replicas
//! share one durable consumer; a turn interrupted at any point (even by SIGKILL) is
//! resumed by another replica from the events it recorded.
//!
//! # Layout
//! - [`config`]: every setting (flags with environment variables and defaults).
//! - [`provider`]: which OpenAI-compatible server and model (OpenAI, Gemini, a custom
//!   base URL, or the offline-llm stand-in).
//! - [`transport`] and [`model`]: one streamed model step through async-openai, with
//!   retries, `Retry-After` and a timeout.
//! - [`tools`]: the task tools compiled into proto-schemas, as the model sees them
//!   (without `user_id`).
//! - [`conversation`]: the conversation's bounded state (owner, message window,
//!   latest turns), a fold of its events and its snapshot.
//! - [`machine`]: the pure turn state machine: what to do next, what the model sees.
//! - [`turn`]: running a turn: model calls, task commands, appends, the reply.
//! - [`consumer`]: the pull consumer, in-progress acks, redelivery and exhausted
//!   requests.
//! - `commands`: rename and delete conversations, cancel turns (request-reply from
//!   the gateway).
//! - `running`: the turns this replica runs, stopped at once when cancelled.
//! - [`prompt`]: the default instructions and the worker's own messages.
//!
//! [`App::build`] connects and prepares; [`App::run`] works until a shutdown token
//! is cancelled. `main` and the tests drive it the same way.

mod commands;
mod config;
mod consumer;
pub mod conversation;
#[cfg(test)]
mod fixtures;
pub mod machine;
pub mod model;
pub mod prompt;
mod provider;
mod running;
pub mod tools;
pub mod transport;
mod turn;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use eventlog::{EventStore, Repository, RepositoryOptions};
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use provider::{Provider, ProviderKind};

use crate::consumer::ConsumerSettings;
use crate::model::{ModelClient, ModelSettings};
use crate::transport::RetryPolicy;
use crate::turn::{TurnSettings, Worker};

/// The name the service reports in logs, traces and its NATS connection.
pub const SERVICE_NAME: &str = "agent-worker";

/// A built, not yet working, agent-worker.
#[derive(Debug)]
pub struct App {
    config: Config,
    provider: Provider,
    store: EventStore,
    bus: async_nats::Client,
    jetstream: jetstream::Context,
    consumer: jetstream::consumer::PullConsumer,
    requests: jetstream::stream::Stream,
    advisories: async_nats::Subscriber,
    commands: async_nats::Subscriber,
    cancellations: async_nats::Subscriber,
    model: ModelClient,
}

impl App {
    /// Picks the model provider, connects to Postgres (running the event log's
    /// migrations) and NATS, and makes sure the chat streams, the shared consumer and
    /// the max-deliveries advisory subscription exist.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let provider = config
            .provider
            .select()
            .context("invalid model provider settings")?;
        let model = ModelClient::new(&provider, model_settings(&config))
            .context("failed to build the http client")?;
        tracing::info!(provider = %provider.kind, model = %provider.model, base_url = %provider.base_url, "model provider selected");
        if provider.kind == ProviderKind::Offline {
            tracing::warn!(
                "no model provider configured: using offline-llm, a rule-based stand-in, not a language model"
            );
        }

        // Checked before connecting: a misspelt tool name is a configuration error.
        config.confirm_tools(&tools::ToolCatalog::builtin())?;
        let store = config.database.open_event_store().await?;
        let bus = config.nats.connect(SERVICE_NAME).await?;
        let jetstream = jetstream::new(bus.clone());
        let subjects = config.nats.subjects();
        let (requests, _replies) = platform::streams::ensure_chat_streams(
            &jetstream,
            &subjects,
            config.nats.stream_replicas,
            None,
        )
        .await
        .context("failed to create the chat streams")?;
        let consumer_name = subjects.chat_workers_consumer();
        let consumer = consumer::ensure_consumer(
            &requests,
            consumer::consumer_config(
                &subjects,
                Duration::from_secs(config.ack_wait_secs),
                i64::from(config.max_deliver),
            ),
        )
        .await
        .context("failed to create the chat workers consumer")?;
        let advisories = bus
            .queue_subscribe(
                consumer::max_deliveries_subject(&subjects.chat_requests_stream(), &consumer_name),
                // One replica of the group handles each advisory.
                subjects.agent_workers_queue_group(),
            )
            .await
            .context("failed to subscribe to max-deliveries advisories")?;
        let commands = bus
            .queue_subscribe(
                subjects.conversation_commands(),
                subjects.agent_workers_queue_group(),
            )
            .await
            .context("failed to subscribe to conversation commands")?;
        // Every replica: only the one running a turn can stop it.
        let cancellations = bus
            .subscribe(subjects.turns_cancelled())
            .await
            .context("failed to subscribe to turn cancellations")?;
        Ok(Self {
            config,
            provider,
            store,
            bus,
            jetstream,
            consumer,
            requests,
            advisories,
            commands,
            cancellations,
            model,
        })
    }

    /// The selected model provider.
    pub fn provider(&self) -> &Provider {
        &self.provider
    }

    /// A handle on the event store the worker reads and writes; it shares the
    /// worker's read count ([`EventStore::events_read`]).
    pub fn event_store(&self) -> EventStore {
        self.store.clone()
    }

    /// Takes chat turns until `shutdown` is cancelled; then stops pulling, finishes the
    /// turns in flight and returns.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let config = &self.config;
        platform::health::spawn(config.health, self.bus.clone(), shutdown.child_token()).await?;
        let tools = tools::ToolCatalog::builtin();
        tracing::info!(tools = ?tools.names().collect::<Vec<_>>(), "task tools compiled in");
        let confirm_tools = config.confirm_tools(&tools)?;
        if !confirm_tools.is_empty() {
            tracing::info!(tools = ?confirm_tools, "these tools wait for the person's approval");
        }

        let worker = Arc::new(Worker {
            replica: replica_name(),
            conversations: Repository::new(self.store, RepositoryOptions::default()),
            bus: self.bus.clone(),
            jetstream: self.jetstream,
            subjects: config.nats.subjects(),
            model: self.model,
            tools,
            running: Arc::default(),
            settings: TurnSettings {
                max_model_steps: config.max_model_steps,
                history_messages: config.history_messages,
                system_prompt: config
                    .system_prompt
                    .clone()
                    .unwrap_or_else(|| prompt::DEFAULT_SYSTEM_PROMPT.to_owned()),
                tool_timeout: Duration::from_secs(config.tool_timeout_secs),
                tool_attempts: config.tool_attempts,
                confirm_tools,
            },
        });
        let exhausted = tokio::spawn(consumer::answer_exhausted(
            Arc::clone(&worker),
            self.requests,
            self.advisories,
            shutdown.clone(),
        ));
        let commands = tokio::spawn(commands::serve(
            Arc::clone(&worker),
            self.commands,
            shutdown.clone(),
        ));
        let cancellations = tokio::spawn(running::listen(
            Arc::clone(&worker.running),
            self.cancellations,
            shutdown.clone(),
        ));
        let info = &self.consumer.cached_info().config;
        tracing::info!(
            replica = %worker.replica,
            consumer = %info.durable_name.clone().unwrap_or_default(),
            concurrency = config.concurrency,
            max_deliver = info.max_deliver,
            ack_wait_ms = info.ack_wait.as_millis() as u64,
            "agent-worker taking chat turns"
        );
        consumer::run(
            worker,
            self.consumer,
            ConsumerSettings {
                concurrency: usize::from(config.concurrency),
                redelivery_backoff: config
                    .redelivery_backoff_ms
                    .iter()
                    .map(|ms| Duration::from_millis(*ms))
                    .collect(),
            },
            shutdown,
        )
        .await;
        exhausted
            .await
            .context("the exhausted-requests loop panicked")?;
        commands
            .await
            .context("the conversation commands loop panicked")?;
        cancellations
            .await
            .context("the turn cancellations loop panicked")?;
        if let Err(error) = self.bus.flush().await {
            tracing::warn!(%error, "failed to flush nats on shutdown");
        }
        tracing::info!("agent-worker stopped");
        Ok(())
    }
}

/// The host name (a pod's name on Kubernetes) and a random suffix, so that several
/// replicas in one process or on one host are told apart too.
fn replica_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".to_owned());
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    format!("{host}-{}", &suffix[suffix.len() - 6..])
}

fn model_settings(config: &Config) -> ModelSettings {
    ModelSettings {
        timeout: Duration::from_secs(config.model_timeout_secs),
        retry: RetryPolicy {
            max_retries: config.model_retries,
            base_delay: Duration::from_millis(config.model_retry_base_ms),
            max_delay: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(config.model_timeout_secs / 2),
        },
    }
}
