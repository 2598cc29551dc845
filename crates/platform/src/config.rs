//! The settings several services share, as clap `Args` structs that a service's
//! `Config` pulls in with `#[command(flatten)]`. Every setting has a flag, an
//! environment variable and a default that works on a developer machine.

use std::time::Duration;

use anyhow::Context as _;
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgPoolOptions;

use crate::bus::BusError;

/// Where the message bus is and which names on it belong to this deployment.
#[derive(clap::Args, Debug, Clone)]
pub struct NatsConfig {
    /// NATS server URL.
    // May carry a password: --help must not print it from the environment.
    #[arg(long, env = "NATS_URL", default_value = Self::DEFAULT_URL, hide_env_values = true)]
    pub nats_url: String,
    /// Prefix of every subject, stream and bucket (lets several deployments or tests share one NATS).
    #[arg(long, env = "TASKCHAT_SUBJECT_PREFIX", default_value = proto_schemas::subjects::DEFAULT_PREFIX)]
    pub subject_prefix: String,
    /// Replicas of each JetStream stream this deployment creates (3 on a NATS cluster).
    #[arg(long, env = "NATS_STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,
}

impl NatsConfig {
    /// The server a developer machine runs (`deploy/local/services.sh`).
    pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

    /// Every subject, stream and bucket name under [`Self::subject_prefix`].
    pub fn subjects(&self) -> proto_schemas::Subjects {
        proto_schemas::Subjects::new(&self.subject_prefix)
    }

    /// The server URL(s) fit for logs: user names and passwords replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redact_urls(&self.nats_url)
    }

    /// Connects with a client name, retrying the initial connect (retry_on_initial_connect) and logging reconnects/disconnects via event_callback.
    ///
    /// Because the first connect is retried in the background, this returns as soon as
    /// the URL is accepted; publishes and subscriptions are queued until the server is
    /// reachable. That lets services start in any order.
    pub async fn connect(&self, service_name: &str) -> Result<async_nats::Client, BusError> {
        let url = self.redacted_url();
        let service = service_name.to_owned();
        async_nats::ConnectOptions::new()
            .name(service_name)
            .retry_on_initial_connect()
            .event_callback(move |event| {
                let url = url.clone();
                let service = service.clone();
                async move { log_nats_event(&service, &url, event) }
            })
            .connect(self.nats_url.as_str())
            .await
            .map_err(BusError::Connect)
    }
}

/// `urls` (one, or several separated by commas, as NATS takes them) with any user
/// name, token or password replaced by `***`, for logs and error messages.
pub fn redact_urls(urls: &str) -> String {
    urls.split(',')
        .map(|raw| match url::Url::parse(raw.trim()) {
            Ok(mut parsed) => {
                if parsed.password().is_some() {
                    let _ = parsed.set_password(Some("***"));
                }
                if !parsed.username().is_empty() {
                    let _ = parsed.set_username("***");
                }
                parsed.to_string()
            }
            Err(_) => "<unreadable url>".to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn log_nats_event(service: &str, url: &str, event: async_nats::Event) {
    use async_nats::Event;
    match event {
        Event::Connected => tracing::info!(service, url, "connected to nats"),
        Event::Disconnected => tracing::warn!(service, url, "disconnected from nats, reconnecting"),
        Event::LameDuckMode => tracing::warn!(service, url, "nats server entered lame duck mode"),
        Event::Draining => tracing::info!(service, url, "draining nats connection"),
        Event::Closed => tracing::info!(service, url, "nats connection closed"),
        Event::SlowConsumer(sid) => {
            tracing::warn!(service, url, sid, "nats slow consumer, messages dropped")
        }
        Event::ServerError(error) => tracing::error!(service, url, %error, "nats server error"),
        Event::ClientError(error) => tracing::error!(service, url, %error, "nats client error"),
    }
}

/// The Postgres database that holds the event log and the read models.
#[derive(clap::Args, Debug, Clone)]
pub struct DatabaseConfig {
    /// Postgres URL of the event log and read models.
    // May carry a password: --help must not print it from the environment.
    #[arg(long, env = "DATABASE_URL", default_value = Self::DEFAULT_URL, hide_env_values = true)]
    pub database_url: String,
    /// Most connections the pool opens to Postgres.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,
}

impl DatabaseConfig {
    /// The database a developer machine runs (`deploy/local/services.sh`).
    pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/taskchat";

    /// How long a query waits for a free pooled connection before failing, so that
    /// an exhausted pool surfaces as an error instead of a hang.
    pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

    /// Opens the pool and one connection, so a wrong URL fails at start-up.
    pub async fn connect(&self) -> Result<sqlx::PgPool, sqlx::Error> {
        PgPoolOptions::new()
            .max_connections(self.database_max_connections)
            .acquire_timeout(Self::ACQUIRE_TIMEOUT)
            .connect(&self.database_url)
            .await
    }

    /// [`Self::connect`], then the event log on that pool (its migrations run).
    pub async fn open_event_store(&self) -> anyhow::Result<eventlog::EventStore> {
        let pool = self
            .connect()
            .await
            .context("failed to connect to postgres")?;
        eventlog::EventStore::open(pool)
            .await
            .context("failed to open the event store")
    }
}

/// How log lines are written to stdout.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object a line, for log collectors.
    Json,
}

/// Logging and trace export.
#[derive(clap::Args, Debug, Clone)]
pub struct TelemetryConfig {
    /// Log line format (the level filter comes from RUST_LOG).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
    /// OTLP/HTTP endpoint for traces, e.g. http://127.0.0.1:4318; tracing export is off when unset.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// What every service process is started with ([`crate::start`]): how it logs and
/// exports traces, and how it stops.
#[derive(clap::Args, Debug, Clone)]
pub struct ProcessConfig {
    #[command(flatten)]
    pub telemetry: TelemetryConfig,
    #[command(flatten)]
    pub shutdown: ShutdownConfig,
}

/// How the process stops.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct ShutdownConfig {
    /// Seconds from SIGTERM (or SIGINT) to a forced exit: in-flight work gets this long
    /// to finish, whatever NATS or Postgres are doing. Keep it under the orchestrator's
    /// grace period (Kubernetes: terminationGracePeriodSeconds, 30 by default).
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 25, value_parser = clap::value_parser!(u64).range(1..))]
    pub shutdown_grace_secs: u64,
}

impl ShutdownConfig {
    pub fn grace(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.shutdown_grace_secs)
    }
}

/// The secret behind bearer tokens.
#[derive(clap::Args, Debug, Clone)]
pub struct AuthConfig {
    /// HS256 secret that signs and verifies bearer tokens (`sub` = user id).
    #[arg(
        long,
        env = "AUTH_JWT_SECRET",
        default_value = "taskchat-dev-secret-change-me",
        hide_env_values = true,
        hide_default_value = true,
        value_parser = parse_secret
    )]
    pub auth_jwt_secret: SecretString,
}

impl AuthConfig {
    /// Signing and verifying keys for [`Self::auth_jwt_secret`].
    pub fn keys(&self) -> crate::auth::JwtKeys {
        crate::auth::JwtKeys::new(self.auth_jwt_secret.expose_secret().as_bytes())
    }
}

// clap needs a parser for types that are not `FromStr`; a secret is any string.
fn parse_secret(raw: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(raw))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct TestConfig {
        #[command(flatten)]
        nats: NatsConfig,
        #[command(flatten)]
        database: DatabaseConfig,
        #[command(flatten)]
        telemetry: TelemetryConfig,
        #[command(flatten)]
        auth: AuthConfig,
    }

    // The environment may set these on a developer machine or in CI; `try_parse_from`
    // reads env vars, so tests that check defaults only run when they are unset.
    const ENV_VARS: [&str; 7] = [
        "NATS_URL",
        "TASKCHAT_SUBJECT_PREFIX",
        "DATABASE_URL",
        "DATABASE_MAX_CONNECTIONS",
        "LOG_FORMAT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "AUTH_JWT_SECRET",
    ];

    fn env_is_clean() -> bool {
        ENV_VARS.iter().all(|var| std::env::var_os(var).is_none())
    }

    #[test]
    fn defaults_work_on_a_developer_machine() {
        if !env_is_clean() {
            eprintln!("skipping: a config env var is set");
            return;
        }
        let config = TestConfig::try_parse_from(["svc"]).unwrap();
        assert_eq!(config.nats.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(config.nats.subject_prefix, "taskchat");
        assert_eq!(
            config.nats.subjects().chat_requests(),
            "taskchat.chat.requests.*"
        );
        assert_eq!(
            config.database.database_url,
            "postgres://postgres@127.0.0.1:5432/taskchat"
        );
        assert_eq!(config.database.database_max_connections, 10);
        assert_eq!(config.telemetry.log_format, LogFormat::Plain);
        assert_eq!(config.telemetry.otlp_endpoint, None);
        assert_eq!(
            config.auth.auth_jwt_secret.expose_secret(),
            "taskchat-dev-secret-change-me"
        );
    }

    #[test]
    fn flags_override_defaults() {
        let config = TestConfig::try_parse_from([
            "svc",
            "--nats-url",
            "nats://bus:4222",
            "--subject-prefix",
            "staging",
            "--database-url",
            "postgres://db/other",
            "--database-max-connections",
            "3",
            "--log-format",
            "json",
            "--otlp-endpoint",
            "http://collector:4318",
            "--auth-jwt-secret",
            "s3cret",
        ])
        .unwrap();
        assert_eq!(config.nats.nats_url, "nats://bus:4222");
        assert_eq!(
            config.nats.subjects().task_commands(),
            "staging.tasks.commands"
        );
        assert_eq!(config.database.database_url, "postgres://db/other");
        assert_eq!(config.database.database_max_connections, 3);
        assert_eq!(config.telemetry.log_format, LogFormat::Json);
        assert_eq!(
            config.telemetry.otlp_endpoint.as_deref(),
            Some("http://collector:4318")
        );
        assert_eq!(config.auth.auth_jwt_secret.expose_secret(), "s3cret");
    }

    #[test]
    fn bad_values_are_rejected() {
        let error = TestConfig::try_parse_from(["svc", "--log-format", "xml"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::InvalidValue);
        let error =
            TestConfig::try_parse_from(["svc", "--database-max-connections", "many"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
    }

    #[test]
    fn secrets_stay_out_of_debug_output_and_help() {
        let config = TestConfig::try_parse_from(["svc", "--auth-jwt-secret", "s3cret"]).unwrap();
        assert!(!format!("{config:?}").contains("s3cret"));
        assert!(!format!("{:?}", config.auth.keys()).contains("s3cret"));

        let help = <TestConfig as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        assert!(help.contains("--auth-jwt-secret"));
        assert!(!help.contains("taskchat-dev-secret-change-me"));

        // URLs may carry passwords: --help never prints their values from the
        // environment.
        let command = <TestConfig as clap::CommandFactory>::command();
        for id in ["nats_url", "database_url", "auth_jwt_secret"] {
            let argument = command
                .get_arguments()
                .find(|argument| argument.get_id() == id)
                .unwrap();
            assert!(argument.is_hide_env_values_set(), "{id}");
        }
    }

    #[test]
    fn urls_in_logs_carry_no_credentials() {
        assert_eq!(
            redact_urls("nats://app:s3cret@nats-1:4222,nats://tok3n@nats-2:4222"),
            "nats://***:***@nats-1:4222,nats://***@nats-2:4222"
        );
        assert_eq!(
            redact_urls("nats://127.0.0.1:4222"),
            "nats://127.0.0.1:4222"
        );
        assert_eq!(redact_urls("::not a url"), "<unreadable url>");
        let config =
            TestConfig::try_parse_from(["svc", "--nats-url", "nats://u:pw@h:4222"]).unwrap();
        assert!(!config.nats.redacted_url().contains("pw"));
    }

    #[test]
    fn keys_from_config_verify_their_own_tokens() {
        let config = TestConfig::try_parse_from(["svc", "--auth-jwt-secret", "abc"]).unwrap();
        let user = proto_schemas::UserId::parse("ada").unwrap();
        let token = config.auth.keys().mint(&user, Duration::from_secs(60));
        assert_eq!(config.auth.keys().verify(&token).unwrap(), user);
    }
}
