//! Task tools as commands: what the model (through the worker) or an MCP client asks
//! task-service to do, and the results in the reference app's shapes.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{CommandId, TaskNumber, UserId};

/// Which tasks a listing shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StatusFilter {
    #[default]
    All,
    Pending,
    Completed,
}

impl StatusFilter {
    pub fn admits(self, completed: bool) -> bool {
        match self {
            Self::All => true,
            Self::Pending => !completed,
            Self::Completed => completed,
        }
    }
}

/// Arguments of `add_task`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AddTaskArgs {
    /// Short title of the task, 1 to 200 characters, e.g. "Buy groceries".
    pub title: String,
    /// Optional longer description, up to 2,000 characters.
    #[serde(default)]
    pub description: String,
}

/// Arguments of `list_tasks`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct ListTasksArgs {
    /// Which tasks to list: "all" (default), "pending" or "completed".
    #[serde(default)]
    pub status: StatusFilter,
}

/// Arguments of `complete_task` and `delete_task`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskRefArgs {
    /// The task's number as shown in task lists (1, 2, 3 …).
    #[schemars(range(min = 1))]
    pub task_id: TaskNumber,
}

/// Arguments of `update_task`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UpdateTaskArgs {
    /// The task's number as shown in task lists (1, 2, 3 …).
    #[schemars(range(min = 1))]
    pub task_id: TaskNumber,
    /// The new title, if it changes (1 to 200 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The new description, if it changes (up to 2,000 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// One task tool invocation, named as in the reference app's MCP server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "tool", content = "arguments", rename_all = "snake_case")]
pub enum ToolCall {
    AddTask(AddTaskArgs),
    ListTasks(ListTasksArgs),
    CompleteTask(TaskRefArgs),
    DeleteTask(TaskRefArgs),
    UpdateTask(UpdateTaskArgs),
}

/// The tool names, in the order they are offered.
pub const TOOL_NAMES: [&str; 5] = [
    "add_task",
    "list_tasks",
    "complete_task",
    "delete_task",
    "update_task",
];

impl ToolCall {
    /// Builds a call from a tool name and the JSON arguments a model produced.
    /// Unknown argument names (such as a `user_id` the model made up) are ignored.
    pub fn from_name_and_arguments(
        name: &str,
        arguments: serde_json::Value,
    ) -> Result<Self, serde_json::Error> {
        let arguments = match arguments {
            serde_json::Value::Null => serde_json::json!({}),
            other => other,
        };
        serde_json::from_value(serde_json::json!({ "tool": name, "arguments": arguments }))
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::AddTask(_) => "add_task",
            Self::ListTasks(_) => "list_tasks",
            Self::CompleteTask(_) => "complete_task",
            Self::DeleteTask(_) => "delete_task",
            Self::UpdateTask(_) => "update_task",
        }
    }
}

/// A task command on the bus: the tool call plus who asks (from a verified token) and
/// the command id that makes it idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskCommand {
    pub command_id: CommandId,
    pub user_id: UserId,
    /// The chat turn (request id) or MCP session the command belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<uuid::Uuid>,
    pub call: ToolCall,
    /// Whether task-service publishes the `events.appended` wake-up after appending
    /// this command's events (true when absent). A chat turn's worker sends false: it
    /// publishes one when the turn settles, which brings this append in too.
    #[serde(default = "notify_by_default", skip_serializing_if = "is_true")]
    pub notify_appended: bool,
}

fn notify_by_default() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

/// One task as the tools and the read API show it (the reference's shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskView {
    pub id: TaskNumber,
    pub title: String,
    pub description: String,
    pub completed: bool,
}

/// What a changing tool did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeStatus {
    Created,
    Completed,
    Deleted,
    Updated,
}

/// Result of add/complete/delete/update: `{"task_id", "status", "title"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskChange {
    pub task_id: TaskNumber,
    pub status: ChangeStatus,
    pub title: String,
}

/// Result of list_tasks: `{"tasks", "count", "filter"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskListing {
    pub tasks: Vec<TaskView>,
    pub count: usize,
    pub filter: StatusFilter,
}

/// A refused tool call: `{"error": "Task not found", "task_id": 3}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ToolError {
    /// What went wrong, e.g. "Task not found".
    pub error: String,
    /// The task the call named, when it named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<TaskNumber>,
}

/// The result of one tool call, in the reference app's JSON shapes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ToolOutput {
    Changed(TaskChange),
    Listing(TaskListing),
    Refused(ToolError),
}

impl ToolOutput {
    pub fn is_error(&self) -> bool {
        matches!(self, Self::Refused(_))
    }
}

/// task-service's answer to a [`TaskCommand`]: the tool's output (which may be a
/// domain refusal such as "Task not found"), or a failure to run it at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum TaskCommandReply {
    Applied {
        output: ToolOutput,
    },
    /// The store or the service failed; the same command id may be retried.
    Unavailable {
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tool_calls_parse_from_model_arguments() {
        let call = ToolCall::from_name_and_arguments(
            "add_task",
            json!({"title": "Buy milk", "user_id": "mallory"}),
        )
        .unwrap();
        assert_eq!(
            call,
            ToolCall::AddTask(AddTaskArgs {
                title: "Buy milk".into(),
                description: String::new()
            })
        );
        let call =
            ToolCall::from_name_and_arguments("list_tasks", serde_json::Value::Null).unwrap();
        assert_eq!(
            call,
            ToolCall::ListTasks(ListTasksArgs {
                status: StatusFilter::All
            })
        );
        assert!(ToolCall::from_name_and_arguments("drop_tables", json!({})).is_err());
        assert!(ToolCall::from_name_and_arguments("complete_task", json!({})).is_err());
    }

    #[test]
    fn commands_notify_unless_they_say_not_to() {
        let sent = json!({
            "command_id": "0190f0c8-7c1e-7000-8000-000000000000",
            "user_id": "alice",
            "call": {"tool": "list_tasks", "arguments": {"status": "all"}},
        });
        let mut command: TaskCommand = serde_json::from_value(sent.clone()).unwrap();
        assert!(command.notify_appended);
        // The default is not written, so earlier readers see the same commands.
        assert_eq!(serde_json::to_value(&command).unwrap(), sent);
        command.notify_appended = false;
        let quiet = serde_json::to_value(&command).unwrap();
        assert_eq!(quiet["notify_appended"], false);
        let read: TaskCommand = serde_json::from_value(quiet).unwrap();
        assert!(!read.notify_appended);
    }

    #[test]
    fn outputs_have_the_reference_shapes() {
        let added = ToolOutput::Changed(TaskChange {
            task_id: TaskNumber(4),
            status: ChangeStatus::Created,
            title: "Buy milk".into(),
        });
        assert_eq!(
            serde_json::to_value(&added).unwrap(),
            json!({"task_id": 4, "status": "created", "title": "Buy milk"})
        );
        let missing = ToolOutput::Refused(ToolError {
            error: "Task not found".into(),
            task_id: Some(TaskNumber(9)),
        });
        assert_eq!(
            serde_json::to_value(&missing).unwrap(),
            json!({"error": "Task not found", "task_id": 9})
        );
        let listing: ToolOutput =
            serde_json::from_value(json!({"tasks": [], "count": 0, "filter": "pending"})).unwrap();
        assert!(matches!(listing, ToolOutput::Listing(_)));
    }
}
