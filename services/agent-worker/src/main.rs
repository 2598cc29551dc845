//! The agent-worker binary: settings from flags and the environment, telemetry, and
//! the app until SIGTERM or SIGINT.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use agent_worker::{App, Config, SERVICE_NAME};
use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let (_telemetry, shutdown) = platform::start(SERVICE_NAME, &config.process)?;
    App::build(config).await?.run(shutdown).await
}
