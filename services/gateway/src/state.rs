//! What every handler shares: the NATS client and JetStream context, the subject
//! names, the token verifier, the settings and the shutdown token.
//!
//! Building the state touches no network, so routers can be tested without NATS;
//! [`AppState::prepare`] creates the streams and the idempotency bucket at start-up.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use platform::BusError;
use platform::auth::TokenVerifier;
use platform::streams::{QueueLimits, REPLY_RETENTION, ensure_chat_streams};
use proto_schemas::Subjects;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::admission::TurnRate;
use crate::config::Config;
use crate::error::ApiError;

/// The settings handlers read.
#[derive(Debug, Clone)]
pub struct Settings {
    pub reply_timeout: Duration,
    pub query_timeout: Duration,
    pub max_body_bytes: usize,
    /// Connection-level limits of the HTTP server.
    pub http: platform::http::HttpConfig,
    /// How long a client may take to send a request body (408 after that).
    pub body_read_timeout: Duration,
    pub dev_login: bool,
    pub dev_token_ttl: Duration,
    /// The gateway's public URL (`GATEWAY_PUBLIC_URL`); None: from each request's Host.
    pub public_url: Option<url::Url>,
    pub stream_replicas: usize,
    pub queue_limits: QueueLimits,
    /// Chat messages one user may send per minute (0: no limit).
    pub turns_per_minute: u32,
}

impl Settings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            reply_timeout: config.reply_timeout(),
            query_timeout: config.query_timeout(),
            max_body_bytes: config.max_body_bytes,
            body_read_timeout: config.body_read_timeout(),
            http: config.http,
            dev_login: config.auth.auth_dev_login,
            dev_token_ttl: config.dev_token_ttl,
            public_url: config.public_url.clone(),
            stream_replicas: config.nats.stream_replicas,
            queue_limits: QueueLimits {
                per_user: config.max_turns_per_user,
                total: config.max_queued_turns,
            },
            turns_per_minute: config.turns_per_minute,
        }
    }
}

/// Cheap to clone: one `Arc`.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    subjects: Subjects,
    verifier: TokenVerifier,
    settings: Settings,
    idempotency: OnceCell<kv::Store>,
    turn_rate: TurnRate,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("prefix", &self.inner.subjects.prefix())
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// `shutdown` ends long waits (chat replies, SSE streams) early when the server stops.
    pub fn new(
        client: async_nats::Client,
        subjects: Subjects,
        verifier: TokenVerifier,
        settings: Settings,
        shutdown: CancellationToken,
    ) -> Self {
        let jetstream = jetstream::new(client.clone());
        let turn_rate = TurnRate::per_minute(settings.turns_per_minute);
        Self {
            inner: Arc::new(Inner {
                client,
                jetstream,
                subjects,
                verifier,
                settings,
                idempotency: OnceCell::new(),
                turn_rate,
                shutdown,
            }),
        }
    }

    /// Creates the chat streams and the idempotency bucket when they are missing.
    pub async fn prepare(&self) -> Result<(), BusError> {
        ensure_chat_streams(
            &self.inner.jetstream,
            &self.inner.subjects,
            self.inner.settings.stream_replicas,
            Some(self.inner.settings.queue_limits),
        )
        .await?;
        self.idempotency_store().await?;
        Ok(())
    }

    /// Creates the progress stream if it is missing (a NATS restart loses it: it is
    /// kept in memory). Failures are logged; the caller's retry finds out.
    pub(crate) async fn restore_progress_stream(&self) {
        let restored = platform::streams::ensure_progress_stream(
            &self.inner.jetstream,
            &self.inner.subjects,
            self.inner.settings.stream_replicas,
        )
        .await;
        match restored {
            Ok(_) => tracing::info!("turn progress stream checked after a failed use"),
            Err(error) => {
                tracing::warn!(error = %platform::error_chain(&error), "failed to create the turn progress stream")
            }
        }
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.inner.jetstream
    }

    pub fn subjects(&self) -> &Subjects {
        &self.inner.subjects
    }

    pub fn verifier(&self) -> &TokenVerifier {
        &self.inner.verifier
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The per-user message rate of this replica.
    pub(crate) fn turn_rate(&self) -> &TurnRate {
        &self.inner.turn_rate
    }

    pub fn shutdown(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// The idempotency bucket, created on first use if `prepare` could not.
    pub async fn idempotency(&self) -> Result<&kv::Store, ApiError> {
        self.idempotency_store()
            .await
            .map_err(|error| ApiError::bus_unavailable(platform::error_chain(&error)))
    }

    async fn idempotency_store(&self) -> Result<&kv::Store, BusError> {
        self.inner
            .idempotency
            .get_or_try_init(|| {
                platform::bus::kv_bucket(
                    &self.inner.jetstream,
                    kv::Config {
                        bucket: self.inner.subjects.idempotency_bucket(),
                        description: "taskchat Idempotency-Key -> chat request id".to_owned(),
                        history: 1,
                        // A key is honoured as long as the reply it leads to is kept.
                        max_age: REPLY_RETENTION,
                        storage: jetstream::stream::StorageType::File,
                        num_replicas: self.inner.settings.stream_replicas.max(1),
                        ..Default::default()
                    },
                )
            })
            .await
    }
}
