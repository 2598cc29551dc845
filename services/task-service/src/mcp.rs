//! The task tools over MCP (rmcp, streamable HTTP): the reference app's five tools
//! with its argument names and result shapes, run through the same
//! [`CommandHandler`] as the NATS commands. What `tools/list` says about them (the
//! descriptions, input and output schemas and hints) comes from
//! [`proto_schemas::tools`], the definitions the worker offers the model as well.
//!
//! The server is stateless (no MCP session is kept between requests), so any replica
//! behind a load balancer can answer any request. The user comes from the bearer
//! token checked by [`crate::http`]; the optional `user_id` argument is kept for
//! compatibility with the reference's clients: left out it means the token's user, and
//! a value naming anyone else is refused (invariant 6).

use std::sync::Arc;

use http::request::Parts;
use proto_schemas::tasks::{
    AddTaskArgs, ListTasksArgs, TaskChange, TaskCommand, TaskCommandReply, TaskListing,
    TaskRefArgs, ToolCall, ToolError, ToolOutput, UpdateTaskArgs,
};
use proto_schemas::tools::{self, McpArguments, ToolDefinition};
use proto_schemas::{CommandId, UserId};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::{Extension, IntoCallToolResult};
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResponse, CallToolResult, Implementation, ServerCapabilities, ServerConfig, Tool,
    ToolAnnotations,
};
use rmcp::{Json, ServerHandler, tool, tool_handler, tool_router};
use tracing::Instrument as _;

use crate::handler::CommandHandler;

/// What a tool answers when `user_id` names someone other than the token's subject.
pub const USER_MISMATCH: &str = "user_id does not match the signed-in user";

/// What the server tells the model about itself at initialisation.
const INSTRUCTIONS: &str = "Manages the signed-in user's todo list. Tasks are referred to by \
their number (task_id), as returned by add_task and list_tasks; numbers are never reused. \
user_id is optional: leave it out (or null) to act for the signed-in user.";

/// A tool call that did not do what was asked: a domain refusal ("Task not found"),
/// a wrong `user_id`, or storage being unavailable. Sent as a tool error (`isError`)
/// whose structured content, and text, is the reference's `{"error", "task_id"}` JSON:
/// the refusal branch of every tool's output schema (MCP clients validate structured
/// content against it, failed call or not).
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
        let value = serde_json::to_value(&self.0).map_err(|error| {
            rmcp::ErrorData::internal_error(format!("failed to encode a tool error: {error}"), None)
        })?;
        Ok(CallToolResult::structured_error(value).into())
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
            tool_router: Arc::new(Self::router()),
        }
    }

    /// The handlers of [`Self::tool_router`], each listed as its compiled
    /// [`ToolDefinition`] says.
    fn router() -> ToolRouter<Self> {
        let mut router = Self::tool_router();
        for definition in tools::definitions() {
            let route = router
                .map
                .get_mut(definition.name)
                .unwrap_or_else(|| panic!("no handler for the tool {}", definition.name));
            route.attr = mcp_tool(definition);
        }
        router
    }

    /// Checks the caller, then runs `call` as a new command for the token's user.
    async fn run(
        &self,
        parts: &Parts,
        claimed_user: Option<&str>,
        call: ToolCall,
    ) -> Result<ToolOutput, ToolFailure> {
        let span = tracing::info_span!("mcp_tool_call", tool = call.name());
        // MCP clients that trace send a W3C traceparent header; join their trace.
        platform::trace::follow_http_trace(&span, &parts.headers);
        async {
            let Some(user) = parts.extensions.get::<UserId>() else {
                // The auth middleware puts it there; without it nothing may run.
                tracing::error!("mcp request reached a tool without an authenticated user");
                return Err(ToolFailure::new("Not authenticated"));
            };
            if let Some(claimed_user) = claimed_user
                && claimed_user != user.as_str()
            {
                tracing::warn!(%user, claimed_user, "mcp tool call names another user, refused");
                return Err(ToolFailure::new(USER_MISMATCH));
            }
            let command = TaskCommand {
                command_id: CommandId::new(),
                user_id: user.clone(),
                correlation_id: None,
                call,
                notify_appended: true,
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
        user: Option<&str>,
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

/// The tool as `tools/list` shows it.
fn mcp_tool(definition: &ToolDefinition) -> Tool {
    let hints = definition.hints;
    Tool::new(
        definition.name,
        definition.description,
        Arc::new(definition.input_schema.clone()),
    )
    .with_title(definition.title)
    .with_raw_output_schema(Arc::new(definition.output_schema.clone()))
    .with_annotations(ToolAnnotations::from_raw(
        Some(definition.title.to_owned()),
        Some(hints.read_only),
        Some(hints.destructive),
        Some(hints.idempotent),
        Some(hints.open_world),
    ))
}

// The handlers only: names, descriptions, schemas and hints come from
// `proto_schemas::tools` (see `TaskTools::router`).
#[tool_router]
impl TaskTools {
    #[tool]
    async fn add_task(
        &self,
        Parameters(input): Parameters<McpArguments<AddTaskArgs>>,
        Extension(parts): Extension<Parts>,
    ) -> Result<Json<TaskChange>, ToolFailure> {
        self.change(
            &parts,
            input.user_id.as_deref(),
            ToolCall::AddTask(input.args),
        )
        .await
    }

    #[tool]
    async fn list_tasks(
        &self,
        Parameters(input): Parameters<McpArguments<ListTasksArgs>>,
        Extension(parts): Extension<Parts>,
    ) -> Result<Json<TaskListing>, ToolFailure> {
        match self
            .run(
                &parts,
                input.user_id.as_deref(),
                ToolCall::ListTasks(input.args),
            )
            .await?
        {
            ToolOutput::Listing(listing) => Ok(Json(listing)),
            other => Err(unexpected(&other)),
        }
    }

    #[tool]
    async fn complete_task(
        &self,
        Parameters(input): Parameters<McpArguments<TaskRefArgs>>,
        Extension(parts): Extension<Parts>,
    ) -> Result<Json<TaskChange>, ToolFailure> {
        self.change(
            &parts,
            input.user_id.as_deref(),
            ToolCall::CompleteTask(input.args),
        )
        .await
    }

    #[tool]
    async fn delete_task(
        &self,
        Parameters(input): Parameters<McpArguments<TaskRefArgs>>,
        Extension(parts): Extension<Parts>,
    ) -> Result<Json<TaskChange>, ToolFailure> {
        self.change(
            &parts,
            input.user_id.as_deref(),
            ToolCall::DeleteTask(input.args),
        )
        .await
    }

    #[tool]
    async fn update_task(
        &self,
        Parameters(input): Parameters<McpArguments<UpdateTaskArgs>>,
        Extension(parts): Extension<Parts>,
    ) -> Result<Json<TaskChange>, ToolFailure> {
        self.change(
            &parts,
            input.user_id.as_deref(),
            ToolCall::UpdateTask(input.args),
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_compiled_tool_is_listed_with_its_definition() {
        let router = TaskTools::router();
        let listed = router.list_all();
        assert_eq!(listed.len(), tools::definitions().len());
        for definition in tools::definitions() {
            let tool = router.get(definition.name).expect("listed");
            assert_eq!(*tool, mcp_tool(definition));
            assert_eq!(tool.description.as_deref(), Some(definition.description));
            assert_eq!(*tool.input_schema, definition.input_schema);
        }
    }
}
