//! task-service: each user's task list as an event-sourced aggregate. It answers task
//! commands on NATS (for the agent workers) and the same tools over MCP (for MCP
//! clients), and appends what they do to the Postgres event log.
//!
//! # Layout
//! - [`domain`]: the pure task-list aggregate (fold, decide, report).
//! - [`handler`]: the one command handler both transports use: idempotent by
//!   command id, optimistic appends retried from fresh state.
//! - [`nats`]: the queue-group request-reply subscription on `tasks.commands`.
//! - [`mcp`]: the five tools over MCP (rmcp, streamable HTTP, stateless).
//! - [`http`]: the axum router (`/mcp` behind bearer auth, its RFC 9728 metadata,
//!   `/healthz`).
//!
//! [`App::build`] connects and binds; [`App::run`] serves until a shutdown token is
//! cancelled. `main` and the tests drive it the same way.

mod domain;
mod handler;
mod http;
pub mod mcp;
mod nats;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use platform::config::{AuthConfig, DatabaseConfig, NatsConfig, ProcessConfig};
use platform::http::HttpConfig;
use tokio_util::sync::CancellationToken;

pub use handler::CommandHandler;

/// The name the service reports in logs, traces and its NATS connection.
pub const SERVICE_NAME: &str = "task-service";

/// How long start-up (and shutdown) wait for NATS to confirm what was sent. NATS
/// being down is not fatal (the client keeps reconnecting), only logged.
const NATS_READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Every setting of task-service.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "task-service",
    version,
    about = "Per-user task lists as events: task commands over NATS and the task tools over MCP"
)]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsConfig,
    #[command(flatten)]
    pub database: DatabaseConfig,
    #[command(flatten)]
    pub process: ProcessConfig,
    #[command(flatten)]
    pub auth: AuthConfig,
    #[command(flatten)]
    pub http: HttpConfig,
    /// Address of the HTTP server (MCP at /mcp, health at /healthz); port 0 picks a free port.
    #[arg(long, env = "TASK_SERVICE_LISTEN", default_value = "127.0.0.1:8001")]
    pub listen: SocketAddr,
    /// Host names (or host:port) accepted in the Host header of /mcp requests, comma
    /// separated; guards against DNS rebinding. Add the names an ingress forwards, or
    /// "*" to accept any host.
    #[arg(
        long,
        env = "MCP_ALLOWED_HOSTS",
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1,::1"
    )]
    pub mcp_allowed_hosts: Vec<String>,
    /// The public URL of the MCP endpoint (e.g. https://tasks.example.com/mcp), named
    /// in its OAuth protected-resource metadata and the 401 challenge that points at
    /// it; when unset, taken from each request's Host header (and X-Forwarded-Proto).
    #[arg(long, env = "MCP_PUBLIC_URL", value_parser = platform::config::parse_public_url)]
    pub mcp_public_url: Option<url::Url>,
    /// Most NATS task commands this replica handles at once.
    #[arg(
        long,
        env = "TASK_SERVICE_COMMAND_CONCURRENCY",
        default_value_t = 64,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub command_concurrency: u16,
}

/// A built, not yet serving, task-service.
#[derive(Debug)]
pub struct App {
    config: Config,
    handler: CommandHandler,
    verifier: platform::auth::TokenVerifier,
    bus: async_nats::Client,
    subscriber: async_nats::Subscriber,
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
}

impl App {
    /// Connects to Postgres (running the event log's migrations) and NATS, subscribes
    /// to the task commands and binds the HTTP listener.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        // First, so that unusable auth settings stop the start with their reason.
        let verifier = config
            .auth
            .verifier()
            .await
            .context("refusing to start with these auth settings")?;
        let store = config.database.open_event_store().await?;
        let bus = config.nats.connect(SERVICE_NAME).await?;
        let subjects = config.nats.subjects();
        let subscriber = bus
            .queue_subscribe(
                subjects.task_commands(),
                subjects.task_service_queue_group(),
            )
            .await
            .context("failed to subscribe to task commands")?;
        // Once the server has the subscription, a command sent from any connection
        // after build() returns reaches this replica.
        platform::bus::await_subscriptions(&bus, NATS_READY_TIMEOUT, "commands").await;
        let (listener, local_addr) = platform::bind_http(config.listen).await?;
        let handler = CommandHandler::new(store, bus.clone(), subjects);
        Ok(Self {
            config,
            handler,
            verifier,
            bus,
            subscriber,
            listener,
            local_addr,
        })
    }

    /// The address the HTTP server is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The handler behind both transports.
    pub fn handler(&self) -> &CommandHandler {
        &self.handler
    }

    /// Serves NATS commands and HTTP until `shutdown` is cancelled, then finishes the
    /// work in flight and returns.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let config = &self.config;
        // Stops the NATS loop when either the caller or a failing HTTP server says so.
        let stop = shutdown.child_token();
        let commands = tokio::spawn(nats::serve(
            self.handler.clone(),
            self.bus.clone(),
            self.subscriber,
            usize::from(config.command_concurrency),
            stop.clone(),
        ));

        let mcp_shutdown = CancellationToken::new();
        let router = http::router(
            self.handler,
            http::Auth {
                verifier: self.verifier,
                public_url: config.mcp_public_url.clone(),
            },
            &config.mcp_allowed_hosts,
            mcp_shutdown.clone(),
        );
        tracing::info!(
            addr = %self.local_addr,
            subject = %config.nats.subjects().task_commands(),
            "task-service serving"
        );
        platform::http::serve(
            self.listener,
            router,
            config.http,
            stop.clone().cancelled_owned(),
        )
        .await;
        stop.cancel();
        // Only now: cancelling earlier would cut off tool calls still being answered.
        mcp_shutdown.cancel();
        commands.await.context("task command loop panicked")?;
        // Sends the last replies and notices; bounded, as NATS may be what is down.
        match tokio::time::timeout(NATS_READY_TIMEOUT, self.bus.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "failed to flush nats on shutdown"),
            Err(_) => tracing::warn!("timed out flushing nats on shutdown"),
        }
        tracing::info!("task-service stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::*;

    const OWN_ENV: [&str; 3] = [
        "TASK_SERVICE_LISTEN",
        "MCP_ALLOWED_HOSTS",
        "TASK_SERVICE_COMMAND_CONCURRENCY",
    ];

    #[test]
    fn help_documents_every_setting() {
        let help = Config::command().render_long_help().to_string();
        for setting in [
            "--listen",
            "TASK_SERVICE_LISTEN",
            "--mcp-allowed-hosts",
            "MCP_ALLOWED_HOSTS",
            "--command-concurrency",
            "TASK_SERVICE_COMMAND_CONCURRENCY",
            "--nats-url",
            "--subject-prefix",
            "--database-url",
            "--database-max-connections",
            "--log-format",
            "--otlp-endpoint",
            "--auth-jwt-secret",
            "--auth-dev-login",
            "--auth-jwks-url",
            "AUTH_ISSUER",
            "AUTH_AUDIENCE",
            "AUTH_USER_CLAIM",
            "--mcp-public-url",
            "MCP_PUBLIC_URL",
        ] {
            assert!(help.contains(setting), "--help does not mention {setting}");
        }
    }

    #[test]
    fn defaults_serve_mcp_on_localhost_8001() {
        if OWN_ENV.iter().any(|var| std::env::var_os(var).is_some()) {
            eprintln!("skipping: a task-service env var is set");
            return;
        }
        let config = Config::try_parse_from(["task-service"]).unwrap();
        assert_eq!(
            config.listen,
            "127.0.0.1:8001".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(config.mcp_allowed_hosts, ["localhost", "127.0.0.1", "::1"]);
        assert_eq!(config.command_concurrency, 64);
    }

    #[test]
    fn allowed_hosts_are_a_comma_separated_list_and_concurrency_is_positive() {
        let config = Config::try_parse_from([
            "task-service",
            "--mcp-allowed-hosts",
            "tasks.example.com,tasks.example.com:443",
        ])
        .unwrap();
        assert_eq!(
            config.mcp_allowed_hosts,
            ["tasks.example.com", "tasks.example.com:443"]
        );
        assert!(Config::try_parse_from(["task-service", "--command-concurrency", "0"]).is_err());
    }
}
