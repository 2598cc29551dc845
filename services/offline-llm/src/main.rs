//! The offline-llm binary: parse settings, start telemetry, serve until SIGTERM/SIGINT.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context as _;
use clap::Parser;
use platform::config::ProcessConfig;

/// Rule-based stand-in for an OpenAI-compatible language model, for demos and tests.
///
/// This is NOT a language model. It serves the OpenAI chat-completions API
/// (POST /v1/chat/completions, streaming and not; GET /v1/models; GET /healthz) and
/// answers from fixed rules: it maps plain-English task requests ("add a task to buy
/// milk", "what's open?", "mark 3 done", "delete 2", "rename 1 to ...") to calls of the
/// tools offered in the request, and summarises tool results. It lets the taskchat
/// stack run without an API key; point agent-worker at a real provider for real use.
#[derive(Debug, Parser)]
#[command(name = "offline-llm", version, verbatim_doc_comment)]
struct Cli {
    #[command(flatten)]
    config: offline_llm::Config,
    #[command(flatten)]
    process: ProcessConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (_telemetry, shutdown) = platform::start("offline-llm", &cli.process)?;

    let app = offline_llm::App::build(cli.config.clone())
        .await
        .context("failed to start offline-llm")?;
    tracing::info!(
        api_base = %app.api_base(),
        latency_ms = cli.config.latency_ms,
        "offline-llm listening (rule-based stand-in, not a language model)"
    );
    app.run(shutdown)
        .await
        .context("offline-llm stopped with an error")?;
    tracing::info!("offline-llm stopped");
    Ok(())
}
