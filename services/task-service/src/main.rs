//! The task-service binary: settings from flags and the environment, telemetry, and
//! the app until SIGTERM or SIGINT.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser as _;
use task_service::{App, Config, SERVICE_NAME};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let (_telemetry, shutdown) = platform::start(SERVICE_NAME, &config.process)?;
    App::build(config).await?.run(shutdown).await
}
