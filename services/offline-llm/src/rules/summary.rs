//! Turns tool results into the short, friendly reply a person reads.
//!
//! The results are the task tools' reference shapes: `{"task_id","status","title"}`,
//! `{"tasks":[…],"count","filter"}` and `{"error","task_id"?}`. A result may also arrive
//! wrapped the way MCP returns it (`{"content":[{"type":"text","text":"…"}]}`,
//! `structuredContent`, `isError`).
//!
//! It never claims a success it did not see: a result that is an error (an `isError`
//! envelope, `{"error": …}` with a string or a `{"code","message"}` object, or the
//! failure text an agent framework puts in place of a result, such as the OpenAI
//! Agents SDK's "An error occurred while running the tool…" or an `Error: …` line)
//! is reported as the action failing, with the reason given; a result of no known
//! shape is quoted, not acknowledged as done.

use serde_json::{Map, Value};

use super::CalledTool;

/// One tool result, with the call that produced it when the conversation names it.
#[derive(Clone, Copy, Debug)]
pub(super) struct ToolResult<'a> {
    /// The assistant's tool call this result answers.
    pub(super) call: Option<&'a CalledTool>,
    /// The tool message's text.
    pub(super) content: &'a str,
}

/// A reply covering every result, one line (or block) per result.
pub(super) fn summarise(results: &[ToolResult<'_>]) -> String {
    let mut lines: Vec<String> = Vec::with_capacity(results.len());
    for result in results {
        let line = summarise_one(result);
        // The same line twice (two identical failures) reads as a stutter.
        if lines.last() != Some(&line) {
            lines.push(line);
        }
    }
    lines.join("\n")
}

fn summarise_one(result: &ToolResult<'_>) -> String {
    let call_args = result
        .call
        .and_then(|call| serde_json::from_str::<Map<String, Value>>(&call.arguments).ok());
    let action = Action {
        tool: result.call.map(|call| call.name.as_str()),
        args: call_args.as_ref(),
    };
    let object = match read(result.content) {
        Read::Object(object) => object,
        Read::Failed { reason, object } => {
            let task_id = object.as_ref().and_then(|o| o.get("task_id"));
            return failure_reply(&action, &reason, task_id);
        }
        Read::Other(text) => return action.unrecognised(&text),
    };
    if let Some(error) = object.get("error") {
        return failure_reply(&action, &error_message(error), object.get("task_id"));
    }
    let task_id = object
        .get("task_id")
        .or_else(|| action.arg("task_id"))
        .and_then(task_number);
    if let Some(tasks) = object.get("tasks").and_then(Value::as_array) {
        let filter = object
            .get("filter")
            .or_else(|| action.arg("status"))
            .and_then(Value::as_str)
            .unwrap_or("all");
        return list_reply(tasks, filter);
    }
    match (object.get("status").and_then(Value::as_str), task_id) {
        (Some(status), Some(task_id)) => {
            let title = object.get("title").and_then(Value::as_str);
            status_reply(status, &task_id, title)
        }
        _ => action.unrecognised(result.content.trim()),
    }
}

/// What a tool result turned out to be.
enum Read {
    /// A JSON object (success shapes, or `{"error": …}`), unwrapped from MCP's envelope.
    Object(Map<String, Value>),
    /// The tool call failed; `object` is the error's JSON object when it had one.
    Failed {
        reason: String,
        object: Option<Map<String, Value>>,
    },
    /// Text of no shape the rules know.
    Other(String),
}

/// Reads a result's text, unwrapping MCP's envelope when present.
fn read(content: &str) -> Read {
    let content = content.trim();
    let Ok(Value::Object(object)) = serde_json::from_str(content) else {
        return match failure_text(content) {
            Some(reason) => Read::Failed {
                reason,
                object: None,
            },
            None => Read::Other(content.to_owned()),
        };
    };
    let structured = match object.get("structuredContent") {
        Some(Value::Object(structured)) => Some(structured.clone()),
        _ => None,
    };
    let wrapped_text = object
        .get("content")
        .and_then(Value::as_array)
        .and_then(|parts| {
            parts
                .iter()
                .find_map(|part| part.get("text").and_then(Value::as_str))
        });
    let inner = match (structured, wrapped_text) {
        (Some(structured), _) => Read::Object(structured),
        (None, Some(text)) => read(text),
        (None, None) => Read::Object(object.clone()),
    };
    // An MCP result flagged `isError` failed whatever its text looks like.
    if object.get("isError") == Some(&Value::Bool(true)) {
        return match inner {
            Read::Object(inner) => Read::Failed {
                reason: inner
                    .get("error")
                    .map(error_message)
                    .unwrap_or_else(|| Value::Object(inner.clone()).to_string()),
                object: Some(inner),
            },
            Read::Other(text) => Read::Failed {
                reason: text,
                object: None,
            },
            failed @ Read::Failed { .. } => failed,
        };
    }
    inner
}

/// The reason, when `text` is the failure text a tool runner returns in place of a
/// result: the Agents SDK's "An error occurred while running the tool. Please try
/// again." and "Tool 'x' timed out after 5 seconds.", MCP SDKs' "Error executing tool
/// x: …", and the `Error: …` lines custom failure handlers write.
fn failure_text(text: &str) -> Option<String> {
    const OPENINGS: [&str; 8] = [
        "an error occurred",
        "error",
        "failed",
        "failure",
        "exception",
        "traceback",
        "unable to",
        "could not",
    ];
    let lower = text.to_lowercase();
    let timed_out = lower.starts_with("tool ") && lower.contains("timed out");
    if text.is_empty() || !(timed_out || OPENINGS.iter().any(|o| lower.starts_with(o))) {
        return None;
    }
    // "Error: disk full" says "disk full"; the word "Error" adds nothing to "couldn't".
    let reason = match lower.strip_prefix("error:") {
        Some(_) => text["error:".len()..].trim(),
        None => text,
    };
    Some(if reason.is_empty() { text } else { reason }.to_owned())
}

/// The text of an `error` field: a string, or the `message` of a `{"code","message"}`
/// object.
fn error_message(error: &Value) -> String {
    match error {
        Value::String(text) => text.clone(),
        Value::Object(object) => match object.get("message").and_then(Value::as_str) {
            Some(message) => message.to_owned(),
            None => error.to_string(),
        },
        other => other.to_string(),
    }
}

/// The call a result answers, in the words a reply uses.
struct Action<'a> {
    tool: Option<&'a str>,
    args: Option<&'a Map<String, Value>>,
}

impl Action<'_> {
    fn arg(&self, name: &str) -> Option<&Value> {
        self.args.and_then(|args| args.get(name))
    }

    /// "add \"Buy milk\"", "mark task #3 as done", …, as in "I couldn't …".
    fn describe(&self) -> String {
        let task = self.arg("task_id").and_then(task_number);
        let task = task.as_deref();
        match (self.tool, task) {
            (Some("add_task"), _) => match self.arg("title").and_then(Value::as_str) {
                Some(title) => format!("add \"{title}\""),
                None => "add the task".to_owned(),
            },
            (Some("list_tasks"), _) => "list your tasks".to_owned(),
            (Some("complete_task"), Some(task)) => format!("mark task {task} as done"),
            (Some("delete_task"), Some(task)) => format!("delete task {task}"),
            (Some("update_task"), Some(task)) => format!("update task {task}"),
            (Some(tool), _) => format!("run {tool}"),
            (None, _) => "do that".to_owned(),
        }
    }

    /// A result of no known shape, quoted rather than taken for a success.
    fn unrecognised(&self, text: &str) -> String {
        const MAX_QUOTED_CHARS: usize = 300;
        let mut quoted: String = text.chars().take(MAX_QUOTED_CHARS).collect();
        if quoted.len() < text.len() {
            quoted.push('…');
        }
        match self.tool {
            Some(tool) => format!("The {tool} tool answered: {quoted}"),
            None => format!("The tool answered: {quoted}"),
        }
    }
}

/// "#4" from `4` or `"4"`.
fn task_number(value: &Value) -> Option<String> {
    match value {
        Value::Number(number) => Some(format!("#{number}")),
        Value::String(text) if !text.is_empty() => {
            Some(format!("#{}", text.trim_start_matches('#')))
        }
        _ => None,
    }
}

fn status_reply(status: &str, task_id: &str, title: Option<&str>) -> String {
    let quoted = title.map(|t| format!(" \"{t}\"")).unwrap_or_default();
    match status {
        "created" => match title {
            Some(title) => format!("I've added task {task_id}: {}", end_sentence(title)),
            None => format!("I've added task {task_id}."),
        },
        "completed" => format!("Marked task {task_id}{quoted} as done."),
        "deleted" => format!("Deleted task {task_id}{quoted}."),
        "updated" => match title {
            Some(title) => format!("Updated task {task_id}; it's now \"{title}\"."),
            None => format!("Updated task {task_id}."),
        },
        other => format!("Task {task_id}{quoted} is now {other}."),
    }
}

/// A failed call: "not found" with the task's number and how to see the numbers, or
/// what could not be done and why.
fn failure_reply(action: &Action<'_>, reason: &str, task_id: Option<&Value>) -> String {
    if reason.to_ascii_lowercase().contains("not found") {
        let task_id = task_id
            .or_else(|| action.arg("task_id"))
            .and_then(task_number);
        return match task_id {
            Some(task_id) => {
                format!("I couldn't find task {task_id}. Say \"show my tasks\" to see the numbers.")
            }
            None => {
                "I couldn't find that task. Say \"show my tasks\" to see the numbers.".to_owned()
            }
        };
    }
    format!(
        "Sorry, I couldn't {}: {}",
        action.describe(),
        end_sentence(reason)
    )
}

fn list_reply(tasks: &[Value], filter: &str) -> String {
    if tasks.is_empty() {
        return match filter {
            "pending" => "You have no pending tasks.".to_owned(),
            "completed" => "You haven't completed any tasks yet.".to_owned(),
            _ => "Your task list is empty. Try \"add a task to buy milk\".".to_owned(),
        };
    }
    let heading = match filter {
        "pending" => "Here are your pending tasks:",
        "completed" => "Here are your completed tasks:",
        _ => "Here are your tasks:",
    };
    let mut reply = heading.to_owned();
    for task in tasks {
        // The task's own number leads each line, never its position in the list:
        // people answer with "complete 3", which must mean task #3.
        let id = task
            .get("id")
            .or_else(|| task.get("task_id"))
            .map(|id| match id {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            })
            .unwrap_or_else(|| "?".to_owned());
        let done = task
            .get("completed")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let title = task
            .get("title")
            .and_then(Value::as_str)
            .unwrap_or("(untitled)");
        reply.push_str(&format!(
            "\n{id}. [{}] {title}",
            if done { 'x' } else { ' ' }
        ));
        if let Some(description) = task
            .get("description")
            .and_then(Value::as_str)
            .filter(|d| !d.trim().is_empty())
        {
            reply.push_str(&format!(" ({})", description.trim()));
        }
    }
    reply
}

/// Adds a full stop unless the text already ends a sentence.
fn end_sentence(text: &str) -> String {
    let text = text.trim();
    if text.ends_with(['.', '!', '?']) {
        text.to_owned()
    } else {
        format!("{text}.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, arguments: &str) -> CalledTool {
        CalledTool {
            id: "call_1".to_owned(),
            name: name.to_owned(),
            arguments: arguments.to_owned(),
        }
    }

    fn summary_of(content: &str) -> String {
        summarise(&[ToolResult {
            call: None,
            content,
        }])
    }

    #[test]
    fn task_changes_read_as_sentences() {
        assert_eq!(
            summary_of(r#"{"task_id": 4, "status": "created", "title": "Buy milk"}"#),
            "I've added task #4: Buy milk."
        );
        assert_eq!(
            summary_of(r#"{"task_id": 3, "status": "completed", "title": "Buy milk"}"#),
            "Marked task #3 \"Buy milk\" as done."
        );
        assert_eq!(
            summary_of(r#"{"task_id": 2, "status": "deleted", "title": "Walk dog"}"#),
            "Deleted task #2 \"Walk dog\"."
        );
        assert_eq!(
            summary_of(r#"{"task_id": 1, "status": "updated", "title": "Buy oat milk"}"#),
            "Updated task #1; it's now \"Buy oat milk\"."
        );
        assert_eq!(
            summary_of(r#"{"task_id": "5", "status": "created", "title": "Call mom!"}"#),
            "I've added task #5: Call mom!"
        );
    }

    #[test]
    fn lists_use_task_numbers_and_checkboxes() {
        let content = r#"{"tasks": [
            {"id": 1, "title": "Buy milk", "description": null, "completed": false},
            {"id": 4, "title": "Walk dog", "description": "before 9", "completed": true}
        ], "count": 2, "filter": "all"}"#;
        assert_eq!(
            summary_of(content),
            "Here are your tasks:\n1. [ ] Buy milk\n4. [x] Walk dog (before 9)"
        );
    }

    #[test]
    fn empty_lists_say_so_for_each_filter() {
        assert_eq!(
            summary_of(r#"{"tasks": [], "count": 0, "filter": "pending"}"#),
            "You have no pending tasks."
        );
        assert_eq!(
            summary_of(r#"{"tasks": [], "count": 0, "filter": "completed"}"#),
            "You haven't completed any tasks yet."
        );
        assert_eq!(
            summary_of(r#"{"tasks": [], "count": 0, "filter": "all"}"#),
            "Your task list is empty. Try \"add a task to buy milk\"."
        );
    }

    #[test]
    fn not_found_is_explained_with_the_number() {
        assert_eq!(
            summary_of(r#"{"error": "Task not found", "task_id": 7}"#),
            "I couldn't find task #7. Say \"show my tasks\" to see the numbers."
        );
        // Without task_id in the result, the call's argument supplies it.
        let complete = call("complete_task", r#"{"task_id": 9}"#);
        let reply = summarise(&[ToolResult {
            call: Some(&complete),
            content: r#"{"error": "Task not found"}"#,
        }]);
        assert_eq!(
            reply,
            "I couldn't find task #9. Say \"show my tasks\" to see the numbers."
        );
        assert_eq!(
            summary_of(r#"{"error": "title must not be empty"}"#),
            "Sorry, I couldn't do that: title must not be empty."
        );
    }

    #[test]
    fn mcp_envelopes_are_unwrapped() {
        let wrapped = r#"{"content": [{"type": "text",
            "text": "{\"task_id\": 4, \"status\": \"created\", \"title\": \"Buy milk\"}"}]}"#;
        assert_eq!(summary_of(wrapped), "I've added task #4: Buy milk.");
        let structured = r#"{"structuredContent": {"tasks": [], "count": 0, "filter": "pending"}}"#;
        assert_eq!(summary_of(structured), "You have no pending tasks.");
    }

    fn after(call: &CalledTool, content: &str) -> String {
        summarise(&[ToolResult {
            call: Some(call),
            content,
        }])
    }

    #[test]
    fn the_agents_sdk_failure_texts_are_failures_with_their_reason() {
        let add = call("add_task", r#"{"title": "Buy milk"}"#);
        assert_eq!(
            after(
                &add,
                "An error occurred while running the tool. Please try again."
            ),
            "Sorry, I couldn't add \"Buy milk\": An error occurred while running the tool. \
             Please try again."
        );
        let complete = call("complete_task", r#"{"task_id": 3}"#);
        assert_eq!(
            after(&complete, "Error: connection refused"),
            "Sorry, I couldn't mark task #3 as done: connection refused."
        );
        assert_eq!(
            after(
                &complete,
                "Error invoking MCP tool complete_task on server 'tasks': 401 Unauthorized"
            ),
            "Sorry, I couldn't mark task #3 as done: Error invoking MCP tool complete_task on \
             server 'tasks': 401 Unauthorized."
        );
        let delete = call("delete_task", r#"{"task_id": 2}"#);
        assert_eq!(
            after(&delete, "Tool 'delete_task' timed out after 5 seconds."),
            "Sorry, I couldn't delete task #2: Tool 'delete_task' timed out after 5 seconds."
        );
    }

    #[test]
    fn mcp_is_error_results_are_failures_whatever_their_text() {
        let add = call("add_task", r#"{"title": "Buy milk"}"#);
        let refused = r#"{"content": [{"type": "text",
            "text": "user_id does not match the signed-in user"}], "isError": true}"#;
        assert_eq!(
            after(&add, refused),
            "Sorry, I couldn't add \"Buy milk\": user_id does not match the signed-in user."
        );
        let structured = r#"{"content": [], "isError": true,
            "structuredContent": {"error": "Task not found", "task_id": 7}}"#;
        assert_eq!(
            summary_of(structured),
            "I couldn't find task #7. Say \"show my tasks\" to see the numbers."
        );
        // A result flagged as an error is never read as the success it resembles.
        let looks_done = r#"{"content": [{"type": "text",
            "text": "{\"task_id\": 4, \"status\": \"created\", \"title\": \"Buy milk\"}"}],
            "isError": true}"#;
        let reply = after(&add, looks_done);
        assert!(reply.starts_with("Sorry, I couldn't add"), "{reply}");
    }

    #[test]
    fn error_objects_give_their_message() {
        let list = call("list_tasks", r#"{"status": "all"}"#);
        assert_eq!(
            after(
                &list,
                r#"{"error": {"code": "rate_limited", "message": "Too many requests"}}"#
            ),
            "Sorry, I couldn't list your tasks: Too many requests."
        );
        let rename = call("update_task", r#"{"task_id": 1, "title": ""}"#);
        assert_eq!(
            after(
                &rename,
                r#"{"error": "title must not be empty", "task_id": 1}"#
            ),
            "Sorry, I couldn't update task #1: title must not be empty."
        );
    }

    #[test]
    fn results_of_no_known_shape_are_quoted_never_called_done() {
        let weather = call("get_weather", "{}");
        assert_eq!(
            after(&weather, r#"{"weather": "sunny"}"#),
            r#"The get_weather tool answered: {"weather": "sunny"}"#
        );
        assert_eq!(summary_of("all good"), "The tool answered: all good");
        let long = "x".repeat(400);
        let reply = summary_of(&long);
        assert!(reply.ends_with('…') && reply.len() < 330, "{reply}");
    }

    #[test]
    fn several_results_become_several_lines() {
        let results = [
            ToolResult {
                call: None,
                content: r#"{"task_id": 3, "status": "completed", "title": "A"}"#,
            },
            ToolResult {
                call: None,
                content: r#"{"error": "Task not found", "task_id": 4}"#,
            },
        ];
        assert_eq!(
            summarise(&results),
            "Marked task #3 \"A\" as done.\nI couldn't find task #4. Say \"show my tasks\" to see the numbers."
        );
    }
}
