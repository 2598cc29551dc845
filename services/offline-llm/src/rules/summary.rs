//! Turns tool results into the short, friendly reply a person reads.
//!
//! The results are the task tools' reference shapes: `{"task_id","status","title"}`,
//! `{"tasks":[…],"count","filter"}` and `{"error","task_id"?}`. A result may also arrive
//! wrapped the way MCP returns it (`{"content":[{"type":"text","text":"…"}]}` or
//! `structuredContent`). Anything else is acknowledged with a plain "Done.".

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
        // Several opaque results would otherwise read "Done.\nDone.".
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
    let Some(object) = result_object(result.content) else {
        return GENERIC.to_owned();
    };
    let task_id = object
        .get("task_id")
        .or_else(|| call_args.as_ref().and_then(|args| args.get("task_id")))
        .and_then(task_number);

    if let Some(error) = object.get("error") {
        return error_reply(error, task_id.as_deref());
    }
    if let Some(tasks) = object.get("tasks").and_then(Value::as_array) {
        let filter = object
            .get("filter")
            .or_else(|| call_args.as_ref().and_then(|args| args.get("status")))
            .and_then(Value::as_str)
            .unwrap_or("all");
        return list_reply(tasks, filter);
    }
    match (object.get("status").and_then(Value::as_str), task_id) {
        (Some(status), Some(task_id)) => {
            let title = object.get("title").and_then(Value::as_str);
            status_reply(status, &task_id, title)
        }
        _ => GENERIC.to_owned(),
    }
}

const GENERIC: &str = "Done.";

/// The JSON object inside a result, unwrapping MCP's envelope when present.
fn result_object(content: &str) -> Option<Map<String, Value>> {
    let Value::Object(object) = serde_json::from_str(content.trim()).ok()? else {
        return None;
    };
    if let Some(Value::Object(structured)) = object.get("structuredContent") {
        return Some(structured.clone());
    }
    let wrapped_text = object
        .get("content")
        .and_then(Value::as_array)
        .and_then(|parts| {
            parts
                .iter()
                .find_map(|part| part.get("text").and_then(Value::as_str))
        });
    match wrapped_text {
        Some(text) => result_object(text),
        None => Some(object),
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

fn error_reply(error: &Value, task_id: Option<&str>) -> String {
    let message = match error {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    if message.to_ascii_lowercase().contains("not found") {
        return match task_id {
            Some(task_id) => {
                format!("I couldn't find task {task_id}. Say \"show my tasks\" to see the numbers.")
            }
            None => {
                "I couldn't find that task. Say \"show my tasks\" to see the numbers.".to_owned()
            }
        };
    }
    format!("Sorry, that didn't work: {}", end_sentence(&message))
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
            "Sorry, that didn't work: title must not be empty."
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

    #[test]
    fn unknown_shapes_get_a_generic_acknowledgement_once() {
        let results = [
            ToolResult {
                call: None,
                content: "not json",
            },
            ToolResult {
                call: None,
                content: r#"{"weather": "sunny"}"#,
            },
        ];
        assert_eq!(summarise(&results), "Done.");
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
