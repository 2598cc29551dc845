//! Every setting of agent-worker: a flag, an environment variable and a default that
//! works on a developer machine (`agent-worker --help` lists them).

use platform::config::{DatabaseConfig, NatsConfig, ProcessConfig};
use platform::health::HealthConfig;

use crate::conversation::MESSAGES_KEPT;
use crate::provider::ProviderArgs;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "agent-worker",
    version,
    about = "The model loop: takes chat turns from JetStream, lets a language model run the task tools, records the conversation as events"
)]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsConfig,
    #[command(flatten)]
    pub database: DatabaseConfig,
    #[command(flatten)]
    pub process: ProcessConfig,
    #[command(flatten)]
    pub provider: ProviderArgs,
    #[command(flatten)]
    pub health: HealthConfig,

    /// Chat turns this replica runs at once.
    #[arg(long, env = "AGENT_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Deliveries of one chat request before the user gets an error instead (a
    /// setting of the shared consumer: the replica started last sets it).
    #[arg(long, env = "AGENT_MAX_DELIVER", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_deliver: u32,
    /// Seconds without an ack (or in-progress ack) before a request goes to another
    /// replica: how long a crashed worker's turn waits. A running turn sends an
    /// in-progress ack every third of it, so a slow model call never times out (a
    /// setting of the shared consumer: the replica started last sets it).
    #[arg(long, env = "AGENT_ACK_WAIT_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub ack_wait_secs: u64,
    /// Milliseconds before a failed attempt is tried again, by attempt (the last
    /// repeats), comma separated.
    #[arg(
        long,
        env = "AGENT_REDELIVERY_BACKOFF_MS",
        value_delimiter = ',',
        default_value = "2000,10000,30000"
    )]
    pub redelivery_backoff_ms: Vec<u64>,

    /// Model steps (calls) one turn may take before it ends with a friendly message.
    #[arg(long, env = "AGENT_MAX_MODEL_STEPS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_model_steps: u32,
    /// Earlier user and assistant messages of the conversation shown to the model, at
    /// most the 100 the worker keeps per conversation.
    #[arg(
        long,
        env = "AGENT_HISTORY_MESSAGES",
        default_value_t = 20,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new()
            .range(..=MESSAGES_KEPT as u64)
    )]
    pub history_messages: usize,
    /// Instructions for the model, replacing the built-in task-assistant prompt.
    #[arg(long, env = "AGENT_SYSTEM_PROMPT")]
    pub system_prompt: Option<String>,

    /// Seconds one model step may take, retries included.
    #[arg(long, env = "MODEL_TIMEOUT_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub model_timeout_secs: u64,
    /// Retries of a model call on 429, 5xx and connection errors.
    #[arg(long, env = "MODEL_RETRIES", default_value_t = 3)]
    pub model_retries: u32,
    /// Milliseconds before the first model retry (doubling, up to 8 s), unless the
    /// server's Retry-After says otherwise.
    #[arg(long, env = "MODEL_RETRY_BASE_MS", default_value_t = 500)]
    pub model_retry_base_ms: u64,

    /// Seconds one task command may take before it is sent again (same command id).
    #[arg(long, env = "AGENT_TOOL_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub tool_timeout_secs: u64,
    /// Tries of one task command before the turn is left for a later delivery.
    #[arg(long, env = "AGENT_TOOL_ATTEMPTS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub tool_attempts: u32,
    /// Tools that wait for the person's approval before they run, comma-separated
    /// (e.g. `delete_task`). Empty (the default) runs every call at once, as the
    /// reference design does.
    #[arg(long, env = "AGENT_CONFIRM_TOOLS", value_delimiter = ',')]
    pub confirm_tools: Vec<String>,
}

impl Config {
    /// The tools of `AGENT_CONFIRM_TOOLS`, each checked against `tools`: a misspelt
    /// name would silently confirm nothing, so it stops the worker instead.
    pub(crate) fn confirm_tools(
        &self,
        tools: &crate::tools::ToolCatalog,
    ) -> anyhow::Result<std::collections::BTreeSet<String>> {
        self.confirm_tools
            .iter()
            .map(|name| name.trim())
            .filter(|name| !name.is_empty())
            .map(|name| {
                if tools.contains(name) {
                    Ok(name.to_owned())
                } else {
                    let known: Vec<&str> = tools.names().collect();
                    Err(anyhow::anyhow!(
                        "AGENT_CONFIRM_TOOLS names {name:?}, which is not a tool; the tools are {}",
                        known.join(", ")
                    ))
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn flags_parse_and_validate() {
        let config = Config::try_parse_from([
            "agent-worker",
            "--concurrency",
            "3",
            "--max-deliver",
            "2",
            "--redelivery-backoff-ms",
            "100,200",
            "--llm-base-url",
            "http://127.0.0.1:1/v1",
            "--llm-model",
            "m",
            "--system-prompt",
            "be brief",
            "--confirm-tools",
            "delete_task, update_task",
        ])
        .unwrap();
        let tools = crate::tools::ToolCatalog::builtin();
        assert_eq!(
            config
                .confirm_tools(&tools)
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            ["delete_task", "update_task"]
        );
        let misspelt = Config::try_parse_from(["agent-worker", "--confirm-tools", "delete_tasks"])
            .unwrap()
            .confirm_tools(&tools)
            .unwrap_err();
        assert!(
            misspelt.to_string().contains("\"delete_tasks\""),
            "{misspelt}"
        );
        assert_eq!(config.concurrency, 3);
        assert_eq!(config.max_deliver, 2);
        assert_eq!(config.redelivery_backoff_ms, vec![100, 200]);
        assert_eq!(config.system_prompt.as_deref(), Some("be brief"));
        assert_eq!(config.provider.select().unwrap().model, "m");

        for bad in [
            ["--concurrency", "0"],
            ["--max-deliver", "0"],
            ["--max-model-steps", "0"],
            ["--history-messages", "101"],
        ] {
            let mut args = vec!["agent-worker"];
            args.extend(bad);
            assert!(Config::try_parse_from(args).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn help_lists_settings_without_secrets() {
        let help = <Config as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        for flag in [
            "--openai-api-key",
            "--gemini-api-key",
            "--llm-base-url",
            "--max-model-steps",
            "AGENT_MAX_MODEL_STEPS",
        ] {
            assert!(help.contains(flag), "{flag} missing from --help");
        }
        // The worker holds no token key: it never mints or verifies a token.
        for gone in [
            "--auth-jwt-secret",
            "AUTH_JWT_SECRET",
            "--task-service-mcp-url",
            "--max-turns",
            "AGENT_MAX_TURNS",
        ] {
            assert!(!help.contains(gone), "{gone} is still a setting");
        }
        assert!(!help.contains("taskchat-dev-secret-change-me"));
    }

    #[test]
    fn history_is_capped_at_what_the_worker_keeps() {
        let parse = |value: &str| {
            Config::try_parse_from(["agent-worker", "--history-messages", value])
                .map(|config| config.history_messages)
        };
        assert_eq!(parse("0").unwrap(), 0);
        assert_eq!(parse(&MESSAGES_KEPT.to_string()).unwrap(), MESSAGES_KEPT);
        let error = parse(&(MESSAGES_KEPT + 1).to_string()).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(error.to_string().contains("--history-messages"), "{error}");
        assert!(error.to_string().contains("100"), "{error}");
    }
}
