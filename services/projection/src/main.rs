//! The projection binary: `projection [run]` projects and answers queries until SIGTERM
//! or SIGINT; `projection replay` rebuilds the read models; `projection verify` checks
//! them against the log (exit 0 identical, 1 different, 2 could not check);
//! `projection migrate` brings the database's schema up to date and exits.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use projection::{App, Cli, Command, SERVICE_NAME};

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().into_command() {
        Command::Run(config) => {
            let (_telemetry, shutdown) = platform::start(SERVICE_NAME, &config.process)?;
            App::build(config).await?.run(shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay(config) => {
            let _telemetry = platform::telemetry::init(SERVICE_NAME, &config.telemetry)?;
            let pool = config.database.connect().await?;
            let summary = projection::replay(&pool, &config.options())
                .await
                .context("replay failed")?;
            println!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate(config) => {
            let _telemetry = platform::telemetry::init(SERVICE_NAME, &config.telemetry)?;
            let store = config.database.open_event_store().await?;
            projection::ensure_live_tables(store.pool())
                .await
                .context("failed to create the read model tables")?;
            println!("schema up to date");
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify(config) => {
            let _telemetry = platform::telemetry::init(SERVICE_NAME, &config.telemetry)?;
            let checked = async {
                let pool = config.database.connect().await?;
                projection::verify(&pool, &config.options())
                    .await
                    .context("verify failed")
            }
            .await;
            match checked {
                Ok(report) => {
                    print!("{report}");
                    if report.is_identical() {
                        println!();
                        Ok(ExitCode::SUCCESS)
                    } else {
                        Ok(ExitCode::from(1))
                    }
                }
                Err(error) => {
                    eprintln!("projection verify could not check the read models: {error:#}");
                    Ok(ExitCode::from(2))
                }
            }
        }
    }
}
