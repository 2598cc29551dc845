//! The task tools over MCP (rmcp, streamable HTTP): the reference app's five tools
//! with its argument names and result shapes, run through the same
//! [`CommandHandler`] as the NATS commands.
//!
//! The server is stateless (no MCP session is kept between requests), so any replica
//! behind a load balancer can answer any request. The user comes from the bearer
//! token checked by [`crate::http`]; the `user_id` argument is kept for compatibility
//! with the reference's clients, and a value naming anyone else is refused
//! (invariant 6).

use std::sync::Arc;

use http::request::Parts;
use proto_schemas::tasks::{
    AddTaskArgs, ListTasksArgs, TaskChange, TaskCommand, TaskCommandReply, TaskListing,
    TaskRefArgs, ToolCall, ToolError, ToolOutput, UpdateTaskArgs,
};
use proto_schemas::{CommandId, UserId};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::{Extension, IntoCallToolResult};
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResponse, CallToolResult, ContentBlock, Implementation, ServerCapabilities,
    ServerConfig,
};
use rmcp::{Json, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::handler::CommandHandler;

/// What a tool answers when `user_id` names someone other than the token's subject.
pub const USER_MISMATCH: &str = "user_id does not match the signed-in user";

/// What the server tells the model about itself at initialisation.
const INSTRUCTIONS: &str = "Manages the signed-in user's todo list. Tasks are referred to by \
their number (task_id), as returned by add_task and list_tasks; numbers are never reused. \
Pass the signed-in user's id as user_id.";

/// Arguments of `add_task`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct AddTaskInput {
    /// The signed-in user's id. Tasks of other users cannot be accessed.
    pub user_id: String,
    #[serde(flatten)]
    pub args: AddTaskArgs,
}

/// Arguments of `list_tasks`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct ListTasksInput {
    /// The signed-in user's id. Tasks of other users cannot be accessed.
    pub user_id: String,
    #[serde(flatten)]
    pub args: ListTasksArgs,
}

/// Arguments of `complete_task` and `delete_task`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct TaskRefInput {
    /// The signed-in user's id. Tasks of other users cannot be accessed.
    pub user_id: String,
    #[serde(flatten)]
    pub args: TaskRefArgs,
}

/// Arguments of `update_task`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct UpdateTaskInput {
    /// The signed-in user's id. Tasks of other users cannot be accessed.
    pub user_id: String,
    #[serde(flatten)]
    pub args: UpdateTaskArgs,
}

/// A tool call that did not do what was asked: a domain refusal ("Task not found"),
/// a wrong `user_id`, or storage being unavailable. Sent as a tool error (`isError`)
/// whose text is the reference's `{"error", "task_id"}` JSON.
///
/// It carries no `structuredContent`: that is reserved for results matching the
/// tool's `outputSchema`, which a refusal does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolFailure(pub ToolError);

impl ToolFailure {
    fn new(error: impl Into<String>) -> Self {
        Self(ToolError {
            error: error.into(),
            task_id: None,
        })
    }
}

impl IntoCallToolResult for ToolFailure {
    fn into_call_tool_result(self) -> Result<CallToolResponse, rmcp::ErrorData> {
        let text = serde_json::to_string(&self.0).map_err(|error| {
            rmcp::ErrorData::internal_error(format!("failed to encode a tool error: {error}"), None)
        })?;
        Ok(CallToolResult::error(vec![ContentBlock::text(text)]).into())
    }
}

/// The MCP server: one per request (the service is stateless), sharing the handler
/// and the tool router.
#[derive(Debug, Clone)]
pub struct TaskTools {
    handler: CommandHandler,
    tool_router: Arc<ToolRouter<Self>>,
}

impl TaskTools {
    pub fn new(handler: CommandHandler) -> Self {
        Self {
            handler,
            tool_router: Arc::new(Self::tool_router()),
        }
    }

    /// Checks the caller, then runs `call` as a new command for the token's user.
    async fn run(
        &self,
        parts: &Parts,
        claimed_user: &str,
        call: ToolCall,
    ) -> Result<ToolOutput, ToolFailure> {
        let span = tracing::info_span!("mcp_tool_call", tool = call.name());
        // MCP clients that trace send a W3C traceparent header; join their trace.
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&HeaderExtractor(&parts.headers))
        });
        if opentelemetry::trace::TraceContextExt::span(&parent)
            .span_context()
            .is_valid()
        {
            let _ = span.set_parent(parent);
        }
        async {
            let Some(user) = parts.extensions.get::<UserId>() else {
                // The auth middleware puts it there; without it nothing may run.
                tracing::error!("mcp request reached a tool without an authenticated user");
                return Err(ToolFailure::new("Not authenticated"));
            };
            if claimed_user != user.as_str() {
                tracing::warn!(%user, claimed_user, "mcp tool call names another user, refused");
                return Err(ToolFailure::new(USER_MISMATCH));
            }
            let command = TaskCommand {
                command_id: CommandId::new(),
                user_id: user.clone(),
                correlation_id: None,
                call,
            };
            match self.handler.handle(command).await {
                TaskCommandReply::Applied {
                    output: ToolOutput::Refused(error),
                } => Err(ToolFailure(error)),
                TaskCommandReply::Applied { output } => Ok(output),
                TaskCommandReply::Unavailable { reason } => Err(ToolFailure::new(reason)),
            }
        }
        .instrument(span)
        .await
    }

    async fn change(
        &self,
        parts: &Parts,
        user: &str,
        call: ToolCall,
    ) -> Result<Json<TaskChange>, ToolFailure> {
        match self.run(parts, user, call).await? {
            ToolOutput::Changed(change) => Ok(Json(change)),
            other => Err(unexpected(&other)),
        }
    }
}

fn unexpected(output: &ToolOutput) -> ToolFailure {
    tracing::error!(
        ?output,
        "task command answered with an unexpected output shape"
    );
    ToolFailure::new("Unexpected result from the task service")
}

#[tool_router]
impl TaskTools {
    #[tool(
        description = "Add a new task to the user's todo list. Returns the new task's number \
                       (task_id), status \"created\" and its title.",
        annotations(
            title = "Add task",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn add_task(
        &self,
        Parameters(input): Parameters<AddTaskInput>,
        Extension(parts): Extension<Parts>,
    ) -> Result<Json<TaskChange>, ToolFailure> {
        self.change(&parts, &input.user_id, ToolCall::AddTask(input.args))
            .await
    }

    #[tool(
        description = "List the user's tasks, optionally only the pending or only the \
                       completed ones. Returns the tasks (id, title, description, completed), \
                       their count and the filter used.",
        annotations(
            title = "List tasks",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn list_tasks(
        &self,
        Parameters(input): Parameters<ListTasksInput>,
        Extension(parts): Extension<Parts>,
    ) -> Result<Json<TaskListing>, ToolFailure> {
        match self
            .run(&parts, &input.user_id, ToolCall::ListTasks(input.args))
            .await?
        {
            ToolOutput::Listing(listing) => Ok(Json(listing)),
            other => Err(unexpected(&other)),
        }
    }

    #[tool(
        description = "Mark a task as completed. Completing a task that is already completed \
                       succeeds and changes nothing.",
        annotations(
            title = "Complete task",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn complete_task(
        &self,
        Parameters(input): Parameters<TaskRefInput>,
        Extension(parts): Extension<Parts>,
    ) -> Result<Json<TaskChange>, ToolFailure> {
        self.change(&parts, &input.user_id, ToolCall::CompleteTask(input.args))
            .await
    }

    #[tool(
        description = "Delete a task from the user's list for good. Its number is not reused.",
        annotations(
            title = "Delete task",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn delete_task(
        &self,
        Parameters(input): Parameters<TaskRefInput>,
        Extension(parts): Extension<Parts>,
    ) -> Result<Json<TaskChange>, ToolFailure> {
        self.change(&parts, &input.user_id, ToolCall::DeleteTask(input.args))
            .await
    }

    #[tool(
        description = "Change a task's title and/or description. Give at least one of them; \
                       the other keeps its current value.",
        annotations(
            title = "Update task",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn update_task(
        &self,
        Parameters(input): Parameters<UpdateTaskInput>,
        Extension(parts): Extension<Parts>,
    ) -> Result<Json<TaskChange>, ToolFailure> {
        self.change(&parts, &input.user_id, ToolCall::UpdateTask(input.args))
            .await
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for TaskTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "task-service",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(INSTRUCTIONS)
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}
