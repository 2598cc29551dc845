//! The settings several services share, as clap `Args` structs that a service's
//! `Config` pulls in with `#[command(flatten)]`. Every setting has a flag, an
//! environment variable and a default that works on a developer machine.

use std::time::Duration;

use anyhow::Context as _;
use clap::builder::BoolishValueParser;
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
    pub async fn connect(&self) -> anyhow::Result<sqlx::PgPool> {
        PgPoolOptions::new()
            .max_connections(self.database_max_connections)
            .acquire_timeout(Self::ACQUIRE_TIMEOUT)
            .connect(&self.database_url)
            .await
            .context("failed to connect to postgres")
    }

    /// [`Self::connect`], then the event log on that pool (its migrations run).
    pub async fn open_event_store(&self) -> anyhow::Result<eventlog::EventStore> {
        let pool = self.connect().await?;
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

/// How bearer tokens are verified: a shared HS256 secret, an identity provider's
/// JWKS, or both; and whether this is a development deployment.
#[derive(clap::Args, Debug, Clone)]
pub struct AuthConfig {
    /// HS256 secret that signs and verifies local bearer tokens (`sub` = the user id):
    /// at least 32 bytes outside dev mode. Unset: no HS256 token is accepted, except in
    /// dev mode, which then uses a built-in development secret.
    #[arg(
        long,
        env = "AUTH_JWT_SECRET",
        hide_env_values = true,
        value_parser = parse_secret
    )]
    pub auth_jwt_secret: Option<SecretString>,
    /// Development mode, for a local stack only: the gateway hands a token for any user
    /// to anyone who asks (`POST /api/dev/token`), and AUTH_JWT_SECRET may be short or
    /// unset.
    #[arg(
        long,
        env = "AUTH_DEV_LOGIN",
        default_value_t = false,
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new()
    )]
    pub auth_dev_login: bool,
    /// JWKS URL of an identity provider (e.g. https://TENANT.auth0.com/.well-known/jwks.json,
    /// https://KEYCLOAK/realms/REALM/protocol/openid-connect/certs): its RS256, ES256 or
    /// EdDSA tokens are accepted. The keys are cached and fetched again when a token
    /// names an unknown key id.
    #[arg(long, env = "AUTH_JWKS_URL", value_parser = parse_jwks_url)]
    pub auth_jwks_url: Option<url::Url>,
    /// The `iss` identity-provider tokens must carry (the provider's issuer URL); also
    /// named as the authorization server in /.well-known/oauth-protected-resource.
    #[arg(long, env = "AUTH_ISSUER", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub auth_issuer: Option<String>,
    /// A value identity-provider tokens must carry in `aud` (the API identifier or
    /// client id the provider puts there).
    #[arg(long, env = "AUTH_AUDIENCE", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub auth_audience: Option<String>,
    /// The claim of identity-provider tokens that holds the taskchat user id (e.g.
    /// `sub`, `email`, `preferred_username`); its value must be a valid user id.
    #[arg(long, env = "AUTH_USER_CLAIM", default_value = "sub", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub auth_user_claim: String,
    /// Fewest seconds between two fetches of the JWKS, so that tokens with made-up key
    /// ids cannot make the service hammer the identity provider.
    #[arg(long, env = "AUTH_JWKS_MIN_REFRESH_SECS", default_value_t = 30)]
    pub auth_jwks_min_refresh_secs: u64,
}

/// Auth settings a service cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error(
        "AUTH_JWT_SECRET is {len} bytes; outside dev mode it must be at least {min} \
         (e.g. `openssl rand -base64 48`), or set AUTH_DEV_LOGIN=true on a development machine",
        min = crate::auth::MIN_SECRET_BYTES
    )]
    ShortSecret { len: usize },
    #[error(
        "no way to verify bearer tokens: set AUTH_JWKS_URL (an identity provider), \
         AUTH_JWT_SECRET (at least {min} bytes), or AUTH_DEV_LOGIN=true on a development machine",
        min = crate::auth::MIN_SECRET_BYTES
    )]
    NoVerifier,
    #[error(
        "no secret to sign tokens with: set AUTH_JWT_SECRET, or AUTH_DEV_LOGIN=true on a development machine"
    )]
    NoSecret,
    #[error(
        "AUTH_ISSUER and AUTH_AUDIENCE apply to identity-provider tokens: set AUTH_JWKS_URL too"
    )]
    ProviderRulesWithoutJwks,
    #[error("failed to build the HTTP client of the JWKS: {0}")]
    Client(#[source] reqwest::Error),
    #[error("AUTH_JWKS_URL cannot be used: {0}")]
    Jwks(#[source] crate::auth::JwksError),
}

impl AuthConfig {
    /// The HS256 secret of a development machine, used in dev mode when
    /// AUTH_JWT_SECRET is unset. Public, hence never accepted outside dev mode.
    pub const DEV_SECRET: &str = "taskchat-dev-secret-change-me";

    /// The HS256 keys of [`Self::auth_jwt_secret`] (the development secret in dev mode
    /// when it is unset); None when HS256 tokens are off. A short secret is refused
    /// outside dev mode.
    pub fn signing_keys(&self) -> Result<Option<crate::auth::JwtKeys>, AuthConfigError> {
        let secret = self
            .auth_jwt_secret
            .as_ref()
            .map(|secret| secret.expose_secret())
            .filter(|secret| !secret.is_empty());
        let secret = match (secret, self.auth_dev_login) {
            (Some(secret), true) => secret,
            (None, true) => Self::DEV_SECRET,
            (Some(secret), false) if secret.len() < crate::auth::MIN_SECRET_BYTES => {
                return Err(AuthConfigError::ShortSecret { len: secret.len() });
            }
            (Some(secret), false) => secret,
            (None, false) => return Ok(None),
        };
        Ok(Some(crate::auth::JwtKeys::new(secret.as_bytes())))
    }

    /// [`Self::signing_keys`] for a command that signs: an error when there are none.
    pub fn require_signing_keys(&self) -> Result<crate::auth::JwtKeys, AuthConfigError> {
        self.signing_keys()?.ok_or(AuthConfigError::NoSecret)
    }

    /// The verifier these settings describe, with the identity provider's keys loaded.
    /// Refuses settings that cannot work (a short secret outside dev mode, nothing to
    /// verify with, a JWKS URL that answers with something other than keys); a provider
    /// that is only unreachable is logged and tried again when tokens arrive.
    pub async fn verifier(&self) -> Result<crate::auth::TokenVerifier, AuthConfigError> {
        use crate::auth::{IdentityProvider, ProviderRules, TokenVerifier};

        let local = self.signing_keys()?;
        let Some(url) = &self.auth_jwks_url else {
            if self.auth_issuer.is_some() || self.auth_audience.is_some() {
                return Err(AuthConfigError::ProviderRulesWithoutJwks);
            }
            return match local {
                Some(keys) => Ok(TokenVerifier::new(Some(keys), None)),
                None => Err(AuthConfigError::NoVerifier),
            };
        };
        let rules = ProviderRules {
            issuer: self.auth_issuer.clone(),
            audience: self.auth_audience.clone(),
            user_claim: self.auth_user_claim.clone(),
        };
        if rules.issuer.is_none() {
            tracing::warn!(
                "AUTH_ISSUER is unset: tokens signed by the JWKS keys are accepted whatever their issuer"
            );
        }
        if rules.audience.is_none() {
            tracing::warn!(
                "AUTH_AUDIENCE is unset: tokens the identity provider issued for other applications are accepted too"
            );
        }
        let provider = IdentityProvider::new(
            url.clone(),
            rules,
            Duration::from_secs(self.auth_jwks_min_refresh_secs),
        )
        .map_err(AuthConfigError::Client)?;
        match provider.load().await {
            Ok(()) => {
                tracing::info!(url = %redact_urls(url.as_str()), "identity provider keys loaded")
            }
            Err(error) if error.is_transient() => tracing::warn!(
                error = %crate::error_chain(&error),
                "identity provider unreachable at start-up; its tokens are refused until its keys can be fetched"
            ),
            Err(error) => return Err(AuthConfigError::Jwks(error)),
        }
        Ok(TokenVerifier::new(local, Some(provider)))
    }
}

// clap needs a parser for types that are not `FromStr`; a secret is any string.
fn parse_secret(raw: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(raw))
}

/// Parses a service's public URL setting: an http(s) URL with no query or fragment,
/// its path without a trailing slash.
pub fn parse_public_url(raw: &str) -> Result<url::Url, String> {
    let mut url =
        url::Url::parse(raw.trim()).map_err(|error| format!("{raw:?} is not a URL: {error}"))?;
    if !matches!(url.scheme(), "http" | "https")
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(format!(
            "{raw:?} must be an http(s) URL without a query or fragment"
        ));
    }
    let path = url.path().trim_end_matches('/').to_owned();
    url.set_path(&path);
    Ok(url)
}

fn parse_jwks_url(raw: &str) -> Result<url::Url, String> {
    let url =
        url::Url::parse(raw.trim()).map_err(|error| format!("{raw:?} is not a URL: {error}"))?;
    match url.scheme() {
        "https" | "http" => Ok(url),
        other => Err(format!(
            "the JWKS is fetched over https (or http), not {other}"
        )),
    }
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
    const ENV_VARS: [&str; 13] = [
        "NATS_URL",
        "TASKCHAT_SUBJECT_PREFIX",
        "DATABASE_URL",
        "DATABASE_MAX_CONNECTIONS",
        "LOG_FORMAT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "AUTH_JWT_SECRET",
        "AUTH_DEV_LOGIN",
        "AUTH_JWKS_URL",
        "AUTH_ISSUER",
        "AUTH_AUDIENCE",
        "AUTH_USER_CLAIM",
        "AUTH_JWKS_MIN_REFRESH_SECS",
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
        // No secret is built in outside dev mode: a public default would let anyone
        // sign tokens.
        assert!(config.auth.auth_jwt_secret.is_none());
        assert!(!config.auth.auth_dev_login);
        assert_eq!(config.auth.auth_user_claim, "sub");
        assert_eq!(config.auth.auth_jwks_min_refresh_secs, 30);
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
        assert_eq!(
            config.auth.auth_jwt_secret.unwrap().expose_secret(),
            "s3cret"
        );
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
        assert!(!format!("{:?}", config.auth.signing_keys()).contains("s3cret"));

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
    fn public_urls_are_http_origins_or_paths() {
        assert_eq!(
            parse_public_url("https://chat.example.com/")
                .unwrap()
                .as_str(),
            "https://chat.example.com/"
        );
        assert_eq!(
            parse_public_url("https://example.com/chat/")
                .unwrap()
                .as_str(),
            "https://example.com/chat"
        );
        for bad in [
            "chat.example.com",
            "ftp://h",
            "https://h/?q",
            "https://h/#f",
        ] {
            assert!(parse_public_url(bad).is_err(), "{bad}");
        }
    }

    fn auth(args: &[&str]) -> AuthConfig {
        TestConfig::try_parse_from(std::iter::once("svc").chain(args.iter().copied()))
            .unwrap()
            .auth
    }

    const LONG_SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[tokio::test]
    async fn keys_from_config_verify_their_own_tokens() {
        let user = proto_schemas::UserId::parse("ada").unwrap();
        for args in [
            &["--auth-jwt-secret", LONG_SECRET][..],
            &["--auth-dev-login"],
            &["--auth-dev-login", "--auth-jwt-secret", "short"],
        ] {
            let config = auth(args);
            let token = config
                .require_signing_keys()
                .unwrap()
                .mint(&user, Duration::from_secs(60));
            let verifier = config.verifier().await.unwrap();
            assert_eq!(verifier.verify(&token).await, Ok(user.clone()), "{args:?}");
        }
    }

    #[tokio::test]
    async fn unusable_auth_settings_refuse_to_start_with_a_reason() {
        let short = &LONG_SECRET[1..];
        let error = auth(&["--auth-jwt-secret", short])
            .verifier()
            .await
            .unwrap_err();
        assert!(
            matches!(error, AuthConfigError::ShortSecret { len: 31 }),
            "{error}"
        );
        assert!(error.to_string().contains("at least 32"), "{error}");

        let error = auth(&[]).verifier().await.unwrap_err();
        assert!(matches!(error, AuthConfigError::NoVerifier), "{error}");
        assert!(matches!(
            auth(&[]).require_signing_keys(),
            Err(AuthConfigError::NoSecret)
        ));

        let error = auth(&[
            "--auth-jwt-secret",
            LONG_SECRET,
            "--auth-issuer",
            "https://idp",
        ])
        .verifier()
        .await
        .unwrap_err();
        assert!(
            matches!(error, AuthConfigError::ProviderRulesWithoutJwks),
            "{error}"
        );

        for bad in ["not a url", "ftp://idp/jwks"] {
            assert!(
                TestConfig::try_parse_from(["svc", "--auth-jwks-url", bad]).is_err(),
                "{bad:?}"
            );
        }
        for flag in ["--auth-user-claim", "--auth-issuer", "--auth-audience"] {
            assert!(
                TestConfig::try_parse_from(["svc", flag, ""]).is_err(),
                "{flag}"
            );
        }
    }
}
