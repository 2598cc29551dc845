//! offline-llm: a **rule-based stand-in** for a language model, for demos and tests.
//!
//! It is not a language model. It serves the OpenAI chat-completions API
//! (`POST /v1/chat/completions`, streaming and not, and `GET /v1/models`) so that the
//! taskchat stack runs, and is tested end to end, with no API key and no network. It
//! reads the tools offered in each request and maps a fixed set of plain-English
//! phrasings ("add a task to buy milk", "what's open?", "mark 3 done", "delete 2",
//! "rename 1 to …") to calls of those tools, using only the arguments each tool's schema
//! declares; after tool results it writes a short summary of them. Anything else gets a
//! plain reply saying what it can do. A real provider is one setting away in
//! agent-worker.
//!
//! # Layout
//! - [`rules`]: the pure decision (intent parsing, tool-result summaries).
//! - [`wire`]: OpenAI's JSON shapes, in and out.
//! - [`routes`]: the axum handlers; [`error`]: OpenAI-style error bodies.
//! - [`server`]: [`App::build`] binds, [`App::run`] serves until cancelled.
//!
//! ```no_run
//! # async fn demo() -> Result<(), offline_llm::Error> {
//! let app = offline_llm::App::build(offline_llm::Config::ephemeral()).await?;
//! println!("OpenAI base URL: {}", app.api_base());
//! app.run(tokio_util::sync::CancellationToken::new()).await
//! # }
//! ```

mod config;
mod error;
mod routes;
mod rules;
mod server;
mod wire;

pub use config::Config;
pub use routes::router;
pub use server::{App, Error, run};
