//! Task commands over NATS: request-reply on `tasks.commands` in a queue group, so N
//! replicas share the load, with the caller's trace context followed from the
//! message headers.

use std::time::Duration;

use proto_schemas::tasks::{TaskCommand, TaskCommandReply, ToolError, ToolOutput};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::handler::CommandHandler;

/// How long a shutting-down replica keeps answering the commands NATS had already
/// sent it before it stops anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers commands from `subscriber` until `shutdown`, at most `concurrency` at once.
///
/// On shutdown the subscription is drained: NATS stops routing new commands here
/// (the other replicas of the queue group get them), the commands already delivered
/// are answered, then this returns.
pub(crate) async fn serve(
    handler: CommandHandler,
    client: async_nats::Client,
    subscriber: async_nats::Subscriber,
    concurrency: usize,
    shutdown: CancellationToken,
) {
    platform::bus::serve(
        vec![subscriber],
        concurrency,
        shutdown,
        DRAIN_TIMEOUT,
        "task commands",
        move |message| {
            let handler = handler.clone();
            let client = client.clone();
            async move { answer(&handler, &client, &message).await }
        },
    )
    .await;
}

async fn answer(
    handler: &CommandHandler,
    client: &async_nats::Client,
    message: &async_nats::Message,
) {
    let span = tracing::info_span!("task_command", subject = %message.subject);
    platform::bus::follow_trace(&span, message.headers.as_ref());
    async {
        let reply = match serde_json::from_slice::<TaskCommand>(&message.payload) {
            Ok(command) => handler.handle(command).await,
            Err(error) => {
                tracing::warn!(%error, "malformed task command");
                malformed(&error)
            }
        };
        if let Err(error) = platform::bus::reply_json(client, message, &reply).await {
            tracing::warn!(error = %platform::error_chain(&error), "failed to reply to a task command");
        }
    }
    .instrument(span)
    .await
}

/// A request that will never be understood is refused (retrying cannot help, so it
/// is not `Unavailable`), saying what was wrong.
fn malformed(error: &serde_json::Error) -> TaskCommandReply {
    TaskCommandReply::Applied {
        output: ToolOutput::Refused(ToolError {
            error: format!("Malformed task command: {error}"),
            task_id: None,
        }),
    }
}
