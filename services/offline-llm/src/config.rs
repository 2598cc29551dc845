//! Settings for the server; `main` flattens this into its command line.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// How offline-llm listens and how slow it pretends to be.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct Config {
    /// Address to serve the OpenAI-compatible API on (use port 0 for any free port).
    #[arg(long, env = "OFFLINE_LLM_LISTEN", default_value_t = Config::DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Milliseconds added to every chat-completion call, to imitate a real model's
    /// latency in benchmarks.
    #[arg(long, env = "OFFLINE_LLM_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,
}

impl Config {
    /// 127.0.0.1:8089, where agent-worker looks when no provider is configured.
    pub const DEFAULT_LISTEN: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 8089);

    /// A config for tests: any free port on localhost, no added latency.
    pub fn ephemeral() -> Self {
        Self {
            listen: SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            latency_ms: 0,
        }
    }

    /// The added latency per completion call.
    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: Self::DEFAULT_LISTEN,
            latency_ms: 0,
        }
    }
}
