//! The gateway's command line: `gateway [serve]` (the default) runs the HTTP API,
//! `gateway token --user <id>` prints a bearer token minted from the configured secret.

use std::net::SocketAddr;
use std::time::Duration;

use platform::config::{AuthConfig, NatsConfig, ProcessConfig};
use platform::http::HttpConfig;
use proto_schemas::UserId;

/// The gateway binary's arguments. Without a subcommand it serves, taking the
/// [`Config`] flags directly (`gateway --listen 0.0.0.0:8080`).
#[derive(Debug, clap::Parser)]
#[command(
    name = "gateway",
    version,
    about = "taskchat's public HTTP API: chat turns over JetStream, reads from the projection",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: Config,
}

impl Cli {
    /// The subcommand to run, `serve` when none was named.
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Serve(self.serve))
    }
}

// Built once per process from the command line: boxing the larger variant saves nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Serve the HTTP API (the default).
    Serve(Config),
    /// Print a bearer token for a user, signed with the configured secret (local use).
    Token(TokenArgs),
}

/// Every setting of the HTTP server.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsConfig,
    #[command(flatten)]
    pub process: ProcessConfig,
    #[command(flatten)]
    pub auth: AuthConfig,
    #[command(flatten)]
    pub http: HttpConfig,
    /// Address of the HTTP server; port 0 picks a free port.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Seconds a chat POST waits for the turn's reply before answering 504 (the turn
    /// itself goes on and shows in the conversation's history).
    #[arg(
        long,
        env = "GATEWAY_REPLY_TIMEOUT_SECS",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub reply_timeout_secs: u64,
    /// Seconds a read waits for the projection before answering 503.
    #[arg(long, env = "GATEWAY_QUERY_TIMEOUT_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub query_timeout_secs: u64,
    /// Chat turns one user may have waiting or running at once, across every gateway
    /// replica (the requests stream enforces it); more get 429.
    #[arg(long, env = "GATEWAY_MAX_TURNS_PER_USER", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_turns_per_user: u32,
    /// Chat turns all users together may have waiting or running; more get 503, so
    /// that an overloaded stack sheds load instead of answering everyone late.
    #[arg(long, env = "GATEWAY_MAX_QUEUED_TURNS", default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_queued_turns: u32,
    /// Chat messages one user may send per minute to one gateway replica; more get
    /// 429 with the seconds to wait. 0 turns the limit off.
    #[arg(long, env = "GATEWAY_TURNS_PER_MINUTE", default_value_t = 60)]
    pub turns_per_minute: u32,
    /// Seconds a client may take to send a request body once its head has arrived;
    /// slower clients get 408 and the connection is closed.
    #[arg(long, env = "GATEWAY_BODY_READ_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub body_read_timeout_secs: u64,
    /// Largest request body accepted, in bytes; larger bodies get 413.
    #[arg(long, env = "GATEWAY_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// The public URL of the gateway (e.g. https://chat.example.com), named in its OAuth
    /// protected-resource metadata and the 401 challenge that points at it; when unset,
    /// taken from each request's Host header (and X-Forwarded-Proto).
    #[arg(long, env = "GATEWAY_PUBLIC_URL", value_parser = platform::config::parse_public_url)]
    pub public_url: Option<url::Url>,
    /// Lifetime of the tokens `POST /api/dev/token` mints (AUTH_DEV_LOGIN), e.g. 3600, 90m, 24h, 7d.
    #[arg(long, env = "AUTH_DEV_TOKEN_TTL", default_value = "24h", value_parser = parse_duration)]
    pub dev_token_ttl: Duration,
}

impl Config {
    pub fn reply_timeout(&self) -> Duration {
        Duration::from_secs(self.reply_timeout_secs)
    }

    pub fn query_timeout(&self) -> Duration {
        Duration::from_secs(self.query_timeout_secs)
    }

    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_secs(self.body_read_timeout_secs)
    }
}

/// `gateway token`: mint a token without running the server.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub auth: AuthConfig,
    /// The user the token acts for (its `sub`).
    #[arg(long, value_parser = parse_user)]
    pub user: UserId,
    /// How long the token is valid, e.g. 3600, 90m, 24h, 7d.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub ttl: Duration,
}

impl TokenArgs {
    /// The signed token; an error when the settings give no secret to sign with.
    pub fn mint(&self) -> Result<String, platform::config::AuthConfigError> {
        Ok(self.auth.require_signing_keys()?.mint(&self.user, self.ttl))
    }
}

fn parse_user(raw: &str) -> Result<UserId, String> {
    UserId::parse(raw).map_err(|error| error.to_string())
}

/// Parses a positive duration: plain seconds or a number with one of the suffixes
/// s, m, h, d.
pub(crate) fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (digits, unit) = raw.split_at(split);
    let amount: u64 = digits
        .parse()
        .map_err(|_| format!("{raw:?} is not a duration; use e.g. 3600, 90m, 24h or 7d"))?;
    let scale = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 60 * 60,
        "d" => 24 * 60 * 60,
        other => return Err(format!("unknown duration unit {other:?}; use s, m, h or d")),
    };
    let secs = amount
        .checked_mul(scale)
        .ok_or_else(|| format!("{raw:?} is too long"))?;
    if secs == 0 {
        return Err("the duration must be positive".to_owned());
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use secrecy::ExposeSecret as _;

    use super::*;

    const SECRET: &str = "cli-secret-of-at-least-thirty-two-bytes";

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("3w").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn serve_is_the_default_command() {
        let cli = Cli::try_parse_from([
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--reply-timeout-secs",
            "5",
        ])
        .unwrap();
        let Command::Serve(config) = cli.into_command() else {
            panic!("expected serve");
        };
        assert_eq!(config.listen.port(), 0);
        assert_eq!(config.reply_timeout(), Duration::from_secs(5));

        let cli = Cli::try_parse_from(["gateway", "serve", "--auth-dev-login"]).unwrap();
        let Command::Serve(config) = cli.into_command() else {
            panic!("expected serve");
        };
        assert!(config.auth.auth_dev_login);
    }

    #[test]
    fn dev_login_accepts_boolish_values() {
        for (value, expected) in [
            ("true", true),
            ("1", true),
            ("yes", true),
            ("false", false),
            ("0", false),
        ] {
            let cli =
                Cli::try_parse_from(["gateway", &format!("--auth-dev-login={value}")]).unwrap();
            assert_eq!(cli.serve.auth.auth_dev_login, expected, "{value}");
        }
        assert!(Cli::try_parse_from(["gateway", "--auth-dev-login=maybe"]).is_err());
    }

    #[test]
    fn token_subcommand_mints_a_verifiable_token() {
        let cli = Cli::try_parse_from([
            "gateway",
            "token",
            "--user",
            "alice",
            "--ttl",
            "1h",
            "--auth-jwt-secret",
            SECRET,
        ])
        .unwrap();
        let Command::Token(args) = cli.into_command() else {
            panic!("expected token");
        };
        assert_eq!(
            args.auth.auth_jwt_secret.as_ref().unwrap().expose_secret(),
            SECRET
        );
        let token = args.mint().unwrap();
        let keys = platform::auth::JwtKeys::new(SECRET.as_bytes());
        assert_eq!(keys.verify(&token).unwrap().as_str(), "alice");
    }

    #[test]
    fn token_subcommand_refuses_a_short_secret_outside_dev_mode() {
        let cli = Cli::try_parse_from([
            "gateway",
            "token",
            "--user",
            "alice",
            "--auth-jwt-secret",
            "short",
        ])
        .unwrap();
        let Command::Token(args) = cli.into_command() else {
            panic!("expected token");
        };
        let error = args.mint().unwrap_err().to_string();
        assert!(error.contains("at least 32"), "{error}");
    }

    #[test]
    fn token_subcommand_rejects_bad_users_and_serve_flags() {
        assert!(Cli::try_parse_from(["gateway", "token", "--user", "a b"]).is_err());
        assert!(Cli::try_parse_from(["gateway", "token"]).is_err());
        assert!(
            Cli::try_parse_from(["gateway", "--listen", "127.0.0.1:0", "token", "--user", "a"])
                .is_err()
        );
    }
}
