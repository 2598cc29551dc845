//! The gateway binary: `gateway [serve]` runs the HTTP API until SIGTERM or SIGINT;
//! `gateway token --user <id>` prints a bearer token signed with the configured secret.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser as _;
use gateway::{App, Cli, Command, SERVICE_NAME};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().into_command() {
        Command::Token(args) => {
            // Only the token on stdout, so `TOKEN=$(gateway token --user demo)` works.
            println!("{}", args.mint()?);
            Ok(())
        }
        Command::Serve(config) => {
            let (_telemetry, shutdown) = platform::start(SERVICE_NAME, &config.process)?;
            App::build(config).await?.run(shutdown).await
        }
    }
}
