//! The stand-in "model": fixed rules that read a conversation and the tools it offers
//! and decide the next assistant turn. Pure: no I/O, no clock, no randomness; the HTTP
//! layer assigns ids and timestamps.
//!
//! The decision, in order:
//! 1. If tool results follow the latest user message, summarise them, and never call a
//!    tool again for that message (a real model loop would otherwise spin forever).
//! 2. Otherwise read the latest user message ([`intent::parse`]) and, when the tool it
//!    needs is offered, call it with only the arguments that tool's JSON schema
//!    declares under `properties`.
//! 3. Otherwise answer in plain text: ask for what is missing, say what cannot be done
//!    here, or say what it can do.

pub(crate) mod intent;
mod summary;
mod text;

use serde_json::{Map, Value};

use intent::{Action, Field, Intent};
use summary::ToolResult;

/// The conversation as the rules see it.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Conversation {
    /// Messages in order, oldest first.
    pub messages: Vec<Message>,
    /// The function tools offered in the request.
    pub tools: Vec<Tool>,
}

/// One message of the conversation.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Message {
    /// System or developer instructions (read by no rule, kept for completeness).
    System(String),
    /// What the person wrote.
    User(String),
    /// An earlier assistant turn.
    Assistant {
        /// Its text, if any.
        content: Option<String>,
        /// The tools it called.
        tool_calls: Vec<CalledTool>,
    },
    /// The result of one tool call.
    Tool {
        /// The id of the call this answers.
        tool_call_id: String,
        /// The result text (usually JSON).
        content: String,
    },
}

/// A tool call made in an earlier assistant turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CalledTool {
    /// The call id.
    pub id: String,
    /// The function name.
    pub name: String,
    /// The JSON arguments as sent.
    pub arguments: String,
}

/// A function tool offered in the request.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Tool {
    /// The function name.
    pub name: String,
    /// The function's JSON schema, if given.
    pub parameters: Option<Value>,
    /// `strict: true`: every property the schema lists under `required` must be sent
    /// (strict function calling, and what the Agents SDK's `convert_schemas_to_strict`
    /// asks for: it makes every property required and optional ones nullable).
    pub strict: bool,
}

/// The next assistant turn.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Reply {
    /// A plain text answer.
    Text(String),
    /// One or more tool calls (never empty).
    ToolCalls(Vec<PlannedCall>),
}

/// A tool call the assistant makes; the caller gives it an id.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PlannedCall {
    /// The function name, one of the offered tools.
    pub name: String,
    /// Arguments, restricted to the tool schema's `properties`.
    pub arguments: Map<String, Value>,
}

/// Decides the next assistant turn for `conversation`.
pub(crate) fn respond(conversation: &Conversation) -> Reply {
    if let Some(results) = latest_tool_results(&conversation.messages) {
        return Reply::Text(summary::summarise(&results));
    }
    let last_user = conversation.messages.iter().rev().find_map(|m| match m {
        Message::User(text) => Some(text.as_str()),
        _ => None,
    });
    match last_user {
        Some(text) => plan(intent::parse(text), &conversation.tools),
        None => Reply::Text(help(&conversation.tools)),
    }
}

/// The tool results answering the latest user message, if there are any.
///
/// Prefers the batch after the most recent assistant turn that called tools, matched to
/// those calls by id so the summary can fall back on the call's arguments.
fn latest_tool_results(messages: &[Message]) -> Option<Vec<ToolResult<'_>>> {
    let after_user = messages
        .iter()
        .rposition(|m| matches!(m, Message::User(_)))
        .map_or(0, |i| i + 1);
    let turn = &messages[after_user..];
    let calling = turn.iter().rposition(
        |m| matches!(m, Message::Assistant { tool_calls, .. } if !tool_calls.is_empty()),
    );
    let (calls, batch): (&[CalledTool], &[Message]) = match calling {
        Some(i) => match &turn[i] {
            Message::Assistant { tool_calls, .. } => (tool_calls, &turn[i + 1..]),
            _ => unreachable!("rposition matched an assistant message"),
        },
        None => (&[], turn),
    };
    let mut results = collect_results(batch, calls);
    if results.is_empty() {
        // Results with no matching call turn still answer this message: summarise them
        // rather than call a tool a second time.
        results = collect_results(turn, calls);
    }
    (!results.is_empty()).then_some(results)
}

fn collect_results<'a>(messages: &'a [Message], calls: &'a [CalledTool]) -> Vec<ToolResult<'a>> {
    messages
        .iter()
        .filter_map(|m| match m {
            Message::Tool {
                tool_call_id,
                content,
            } => Some(ToolResult {
                call: calls.iter().find(|c| &c.id == tool_call_id),
                content,
            }),
            _ => None,
        })
        .collect()
}

/// What a tool is for, in the words the replies use.
struct ToolUse {
    name: &'static str,
    /// "add", as in "I can add … tasks".
    verb: &'static str,
    /// What to say to use it.
    example: &'static str,
}

const TOOL_USES: &[ToolUse] = &[
    ToolUse {
        name: "add_task",
        verb: "add",
        example: "add a task to buy milk",
    },
    ToolUse {
        name: "list_tasks",
        verb: "list",
        example: "show my tasks",
    },
    ToolUse {
        name: "complete_task",
        verb: "complete",
        example: "complete 1",
    },
    ToolUse {
        name: "delete_task",
        verb: "delete",
        example: "delete 1",
    },
    ToolUse {
        name: "update_task",
        verb: "rename",
        example: "rename 1 to buy oat milk",
    },
];

/// An argument the rules want to send, and whether the call is pointless without it.
struct Arg {
    name: &'static str,
    value: Value,
    required: bool,
}

impl Arg {
    fn required(name: &'static str, value: impl Into<Value>) -> Self {
        Self {
            name,
            value: value.into(),
            required: true,
        }
    }

    fn optional(name: &'static str, value: impl Into<Value>) -> Self {
        Self {
            name,
            value: value.into(),
            required: false,
        }
    }
}

fn plan(intent: Intent, tools: &[Tool]) -> Reply {
    match intent {
        Intent::Add { title, description } => {
            let mut args = vec![Arg::required("title", title)];
            args.extend(description.map(|d| Arg::optional("description", d)));
            call_each(tools, "add_task", "add tasks", vec![args])
        }
        Intent::List { filter } => call_each(
            tools,
            "list_tasks",
            "list tasks",
            vec![vec![Arg::optional("status", filter.as_str())]],
        ),
        Intent::Complete { task_ids } => call_each(
            tools,
            "complete_task",
            "complete tasks",
            task_ids
                .into_iter()
                .map(|id| vec![Arg::required("task_id", id)])
                .collect(),
        ),
        Intent::Delete { task_ids } => call_each(
            tools,
            "delete_task",
            "delete tasks",
            task_ids
                .into_iter()
                .map(|id| vec![Arg::required("task_id", id)])
                .collect(),
        ),
        Intent::Update {
            task_id,
            field,
            value,
        } => call_each(
            tools,
            "update_task",
            match field {
                Field::Title => "rename tasks",
                Field::Description => "change task descriptions",
            },
            vec![vec![
                Arg::required("task_id", task_id),
                Arg::required(field.as_str(), value),
            ]],
        ),
        Intent::Reopen => Reply::Text(format!(
            "Sorry, I can't mark a task as not done. {}",
            help(tools)
        )),
        Intent::MissingTaskNumber(action) => {
            let (doing, example) = match action {
                Action::Complete => ("mark as done", "complete 3"),
                Action::Delete => ("delete", "delete 3"),
                Action::Update => ("change", "rename 3 to buy oat milk"),
            };
            Reply::Text(format!(
                "Which task should I {doing}? Tell me its number, like \"{example}\". \
                 Say \"show my tasks\" to see the numbers."
            ))
        }
        Intent::MissingTitle => {
            Reply::Text("What should the task say? Try \"add a task to buy milk\".".to_owned())
        }
        Intent::MissingNewValue { task_id, field } => Reply::Text(match field {
            Field::Title => format!(
                "What should task #{task_id} be called? Try \"rename {task_id} to buy oat milk\"."
            ),
            Field::Description => format!(
                "What should the description of task #{task_id} say? \
                 Try \"update {task_id} description to before 5pm\"."
            ),
        }),
        Intent::Greeting => Reply::Text(format!("Hi! {}", help(tools))),
        Intent::Thanks => Reply::Text("You're welcome!".to_owned()),
        Intent::Unknown => Reply::Text(help(tools)),
    }
}

/// Calls `name` once per argument set, or explains why it cannot.
fn call_each(tools: &[Tool], name: &str, doing: &str, arg_sets: Vec<Vec<Arg>>) -> Reply {
    let Some(tool) = tools.iter().find(|t| t.name == name) else {
        return Reply::Text(format!(
            "Sorry, I can't {doing} here: no {name} tool is available. {}",
            help(tools)
        ));
    };
    let mut calls = Vec::with_capacity(arg_sets.len());
    for args in arg_sets {
        match fit_to_schema(tool, args) {
            Some(arguments) => calls.push(PlannedCall {
                name: name.to_owned(),
                arguments,
            }),
            None => {
                return Reply::Text(format!(
                    "Sorry, I can't {doing} here: the {name} tool takes different \
                     arguments than I know how to give."
                ));
            }
        }
    }
    Reply::ToolCalls(calls)
}

/// Keeps only the arguments the tool declares; `None` when a required one is not
/// declared (or its value is outside the declared `enum`), since the call would be
/// meaningless without it. For a strict tool, every property the schema requires and
/// the rules have no value for is sent as null where the schema allows null (never a
/// made-up value: a `user_id` stays null), else as the schema's `default`; a required
/// property with neither makes the call impossible (`None`).
fn fit_to_schema(tool: &Tool, args: Vec<Arg>) -> Option<Map<String, Value>> {
    let properties = tool
        .parameters
        .as_ref()
        .and_then(|p| p.get("properties"))
        .and_then(Value::as_object);
    let mut fitted = Map::new();
    for arg in args {
        let accepted = properties
            .and_then(|props| props.get(arg.name))
            .is_some_and(|schema| allowed_by_enum(schema, &arg.value));
        if accepted {
            fitted.insert(arg.name.to_owned(), arg.value);
        } else if arg.required {
            return None;
        }
    }
    if tool.strict {
        let required = tool
            .parameters
            .as_ref()
            .and_then(|p| p.get("required"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str);
        for name in required {
            if fitted.contains_key(name) {
                continue;
            }
            let schema = properties.and_then(|props| props.get(name))?;
            let value = if allows_null(schema) {
                Value::Null
            } else {
                schema.get("default")?.clone()
            };
            fitted.insert(name.to_owned(), value);
        }
    }
    Some(fitted)
}

/// Whether `schema` admits null: `"type": "null"` or a type list with "null", or an
/// `anyOf`/`oneOf` branch that does.
fn allows_null(schema: &Value) -> bool {
    let by_type = match schema.get("type") {
        Some(Value::String(kind)) => kind == "null",
        Some(Value::Array(kinds)) => kinds.iter().any(|kind| kind == "null"),
        _ => false,
    };
    by_type
        || ["anyOf", "oneOf"].iter().any(|keyword| {
            schema
                .get(keyword)
                .and_then(Value::as_array)
                .is_some_and(|branches| branches.iter().any(allows_null))
        })
}

fn allowed_by_enum(schema: &Value, value: &Value) -> bool {
    match schema.get("enum").and_then(Value::as_array) {
        Some(allowed) => allowed.contains(value),
        None => true,
    }
}

/// What it can do with the tools on offer.
fn help(tools: &[Tool]) -> String {
    let offered: Vec<&ToolUse> = TOOL_USES
        .iter()
        .filter(|use_| tools.iter().any(|t| t.name == use_.name))
        .collect();
    let Some(first) = offered.first() else {
        return "I'm a rule-based stand-in model, and no task tools are available here, \
                so there is nothing I can do for you yet."
            .to_owned();
    };
    let verbs: Vec<&str> = offered.iter().map(|u| u.verb).collect();
    let verbs = match verbs.as_slice() {
        [only] => (*only).to_owned(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
        [] => unreachable!("offered is not empty"),
    };
    format!("I can {verbs} tasks. Try \"{}\".", first.example)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The five task tools as task-service offers them, without user_id.
    fn task_tools() -> Vec<Tool> {
        let tool = |name: &str, parameters: Value| Tool {
            name: name.to_owned(),
            parameters: Some(parameters),
            strict: false,
        };
        vec![
            tool(
                "add_task",
                json!({"type": "object", "properties": {
                    "title": {"type": "string"}, "description": {"type": "string"}},
                    "required": ["title"]}),
            ),
            tool(
                "list_tasks",
                json!({"type": "object", "properties": {
                    "status": {"type": "string", "enum": ["all", "pending", "completed"]}}}),
            ),
            tool(
                "complete_task",
                json!({"type": "object", "properties": {"task_id": {"type": "integer"}},
                    "required": ["task_id"]}),
            ),
            tool(
                "delete_task",
                json!({"type": "object", "properties": {"task_id": {"type": "integer"}},
                    "required": ["task_id"]}),
            ),
            tool(
                "update_task",
                json!({"type": "object", "properties": {
                    "task_id": {"type": "integer"}, "title": {"type": "string"},
                    "description": {"type": "string"}}, "required": ["task_id"]}),
            ),
        ]
    }

    fn user(text: &str) -> Message {
        Message::User(text.to_owned())
    }

    fn said(text: &str, tools: Vec<Tool>) -> Reply {
        respond(&Conversation {
            messages: vec![Message::System("Be helpful.".to_owned()), user(text)],
            tools,
        })
    }

    fn one_call(name: &str, arguments: Value) -> Reply {
        Reply::ToolCalls(vec![PlannedCall {
            name: name.to_owned(),
            arguments: arguments.as_object().unwrap().clone(),
        }])
    }

    #[test]
    fn given_task_tools_when_user_adds_then_add_task_is_called_with_the_title() {
        assert_eq!(
            said("add a task to buy milk", task_tools()),
            one_call("add_task", json!({"title": "Buy milk"}))
        );
    }

    #[test]
    fn given_task_tools_when_user_lists_then_status_follows_the_words() {
        assert_eq!(
            said("what's open?", task_tools()),
            one_call("list_tasks", json!({"status": "pending"}))
        );
        assert_eq!(
            said("show my tasks", task_tools()),
            one_call("list_tasks", json!({"status": "all"}))
        );
    }

    #[test]
    fn given_task_tools_when_user_completes_two_then_two_calls_are_made() {
        let Reply::ToolCalls(calls) = said("complete 3 and 4", task_tools()) else {
            panic!("expected tool calls");
        };
        let ids: Vec<&Value> = calls.iter().map(|c| &c.arguments["task_id"]).collect();
        assert_eq!(ids, [&json!(3), &json!(4)]);
        assert!(calls.iter().all(|c| c.name == "complete_task"));
    }

    #[test]
    fn given_task_tools_when_user_renames_or_redescribes_then_update_task_is_called() {
        assert_eq!(
            said("rename 2 to walk the dog", task_tools()),
            one_call(
                "update_task",
                json!({"task_id": 2, "title": "Walk the dog"})
            )
        );
        assert_eq!(
            said("update 2 description to before 9", task_tools()),
            one_call(
                "update_task",
                json!({"task_id": 2, "description": "before 9"})
            )
        );
        assert_eq!(
            said("delete task 5", task_tools()),
            one_call("delete_task", json!({"task_id": 5}))
        );
    }

    #[test]
    fn given_a_schema_without_description_when_adding_with_one_then_it_is_left_out() {
        let tools = vec![Tool {
            name: "add_task".to_owned(),
            parameters: Some(json!({"type": "object", "properties": {"title": {}}})),
            strict: false,
        }];
        assert_eq!(
            said("add buy milk with description two litres", tools),
            one_call("add_task", json!({"title": "Buy milk"}))
        );
    }

    #[test]
    fn given_a_list_tool_without_status_when_listing_then_no_status_is_sent() {
        let tools = vec![Tool {
            name: "list_tasks".to_owned(),
            parameters: None,
            strict: false,
        }];
        assert_eq!(
            said("what's pending?", tools),
            one_call("list_tasks", json!({}))
        );
    }

    #[test]
    fn given_a_user_id_in_the_schema_when_calling_then_the_model_never_sets_it() {
        let tools = vec![Tool {
            name: "add_task".to_owned(),
            parameters: Some(json!({"properties": {"user_id": {}, "title": {}}})),
            strict: false,
        }];
        assert_eq!(
            said("add buy milk", tools),
            one_call("add_task", json!({"title": "Buy milk"}))
        );
    }

    #[test]
    fn given_strict_tools_when_calling_then_every_required_property_is_sent() {
        // What the Agents SDK sends for task-service's tools with
        // convert_schemas_to_strict: every property required, additionalProperties false.
        let strict = |name: &str, parameters: Value| Tool {
            name: name.to_owned(),
            parameters: Some(parameters),
            strict: true,
        };
        let tools = vec![
            strict(
                "add_task",
                json!({"type": "object", "additionalProperties": false,
                    "properties": {"title": {"type": "string"},
                        "description": {"type": "string", "default": ""},
                        "user_id": {"type": ["string", "null"]}},
                    "required": ["title", "description", "user_id"]}),
            ),
            strict(
                "update_task",
                json!({"type": "object", "additionalProperties": false,
                    "properties": {"task_id": {"type": "integer"},
                        "title": {"type": ["string", "null"]},
                        "description": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                        "user_id": {"type": ["string", "null"]}},
                    "required": ["task_id", "title", "description", "user_id"]}),
            ),
            strict(
                "delete_task",
                json!({"type": "object", "properties": {"task_id": {"type": "integer"},
                    "reason": {"type": "string"}}, "required": ["task_id", "reason"]}),
            ),
        ];
        assert_eq!(
            said("add a task to buy milk", tools.clone()),
            one_call(
                "add_task",
                json!({"title": "Buy milk", "description": "", "user_id": null})
            )
        );
        assert_eq!(
            said("rename 2 to walk the dog", tools.clone()),
            one_call(
                "update_task",
                json!({"task_id": 2, "title": "Walk the dog", "description": null, "user_id": null})
            )
        );
        // A required value it has no way to know is not made up: it declines.
        let Reply::Text(text) = said("delete 2", tools) else {
            panic!("expected text");
        };
        assert!(text.contains("delete_task"), "{text}");
    }

    #[test]
    fn given_a_tool_missing_a_needed_argument_when_asked_then_it_declines_in_text() {
        let tools = vec![Tool {
            name: "complete_task".to_owned(),
            parameters: Some(json!({"properties": {"id": {"type": "integer"}}})),
            strict: false,
        }];
        let Reply::Text(text) = said("complete 3", tools) else {
            panic!("expected text");
        };
        assert!(text.contains("complete_task"), "{text}");
    }

    #[test]
    fn given_no_matching_tool_when_asked_then_it_says_it_cannot() {
        let tools: Vec<Tool> = task_tools()
            .into_iter()
            .filter(|t| t.name != "delete_task")
            .collect();
        assert_eq!(
            said("delete 3", tools),
            Reply::Text(
                "Sorry, I can't delete tasks here: no delete_task tool is available. \
                 I can add, list, complete and rename tasks. Try \"add a task to buy milk\"."
                    .to_owned()
            )
        );
    }

    #[test]
    fn given_anything_else_then_it_lists_what_it_can_do() {
        assert_eq!(
            said("tell me a joke", task_tools()),
            Reply::Text(
                "I can add, list, complete, delete and rename tasks. \
                 Try \"add a task to buy milk\"."
                    .to_owned()
            )
        );
        let Reply::Text(text) = said("add milk", Vec::new()) else {
            panic!("expected text");
        };
        assert!(text.contains("no add_task tool"), "{text}");
        assert!(text.contains("stand-in"), "{text}");
    }

    #[test]
    fn given_tool_results_after_the_user_message_then_it_summarises_and_never_calls_again() {
        let call = CalledTool {
            id: "call_a".to_owned(),
            name: "add_task".to_owned(),
            arguments: r#"{"title":"Buy milk"}"#.to_owned(),
        };
        let conversation = Conversation {
            messages: vec![
                user("add a task to buy milk"),
                Message::Assistant {
                    content: None,
                    tool_calls: vec![call],
                },
                Message::Tool {
                    tool_call_id: "call_a".to_owned(),
                    content: r#"{"task_id": 4, "status": "created", "title": "Buy milk"}"#
                        .to_owned(),
                },
            ],
            tools: task_tools(),
        };
        assert_eq!(
            respond(&conversation),
            Reply::Text("I've added task #4: Buy milk.".to_owned())
        );
    }

    #[test]
    fn given_results_from_an_earlier_turn_then_the_new_message_is_answered_afresh() {
        let conversation = Conversation {
            messages: vec![
                user("add a task to buy milk"),
                Message::Assistant {
                    content: None,
                    tool_calls: vec![CalledTool {
                        id: "call_a".to_owned(),
                        name: "add_task".to_owned(),
                        arguments: "{}".to_owned(),
                    }],
                },
                Message::Tool {
                    tool_call_id: "call_a".to_owned(),
                    content: r#"{"task_id": 4, "status": "created", "title": "Buy milk"}"#
                        .to_owned(),
                },
                Message::Assistant {
                    content: Some("I've added task #4: Buy milk.".to_owned()),
                    tool_calls: Vec::new(),
                },
                user("show my tasks"),
            ],
            tools: task_tools(),
        };
        assert_eq!(
            respond(&conversation),
            one_call("list_tasks", json!({"status": "all"}))
        );
    }

    #[test]
    fn given_only_the_latest_batch_then_older_results_of_the_same_turn_are_not_repeated() {
        let calls = |id: &str| Message::Assistant {
            content: None,
            tool_calls: vec![CalledTool {
                id: id.to_owned(),
                name: "complete_task".to_owned(),
                arguments: r#"{"task_id": 7}"#.to_owned(),
            }],
        };
        let result = |id: &str, content: &str| Message::Tool {
            tool_call_id: id.to_owned(),
            content: content.to_owned(),
        };
        let conversation = Conversation {
            messages: vec![
                user("complete 7"),
                calls("call_1"),
                result("call_1", r#"{"weather": "ignored"}"#),
                calls("call_2"),
                result("call_2", r#"{"error": "Task not found"}"#),
            ],
            tools: task_tools(),
        };
        assert_eq!(
            respond(&conversation),
            Reply::Text(
                "I couldn't find task #7. Say \"show my tasks\" to see the numbers.".to_owned()
            )
        );
    }

    #[test]
    fn given_no_user_message_then_it_offers_help() {
        let conversation = Conversation {
            messages: vec![Message::System("You manage tasks.".to_owned())],
            tools: task_tools(),
        };
        let Reply::Text(text) = respond(&conversation) else {
            panic!("expected text");
        };
        assert!(text.starts_with("I can add"), "{text}");
    }

    #[test]
    fn given_a_question_without_a_number_then_it_asks_for_one() {
        let Reply::Text(text) = said("delete the one about milk", task_tools()) else {
            panic!("expected text");
        };
        assert!(text.starts_with("Which task should I delete?"), "{text}");
    }
}
