//! The task tools as a model or an MCP client sees them: name, description, input and
//! output schemas and behaviour hints, generated once from the argument and result
//! types in [`crate::tasks`]. task-service serves them on MCP `tools/list` and
//! agent-worker offers them to the model, so nothing has to be discovered at run time.
//!
//! Every schema is self-contained (subschemas inlined: no `$ref` or `$defs`, which
//! several OpenAI-compatible servers reject) and uses only the formats JSON Schema
//! defines (an integer is `"type": "integer"` with a `minimum`, never `"format":
//! "uint32"`).
//!
//! The input schema has two views (invariant 6, the model never chooses the user):
//! - [`ToolDefinition::input_schema`], for MCP clients: the arguments plus an optional,
//!   nullable `user_id` ([`McpArguments`]); absent or null means the token's user, and
//!   any other value is refused.
//!
//! The output schema names both shapes a call can return (`oneOf`): the result, and
//! the refusal `{"error", "task_id"?}` sent with `isError: true`. A refusal carries
//! that JSON as `structuredContent` too, and MCP clients check structured content
//! against the output schema whether or not the call failed.
//! - [`ToolDefinition::parameters`], for the model: the arguments alone, so the model
//!   is never asked who the user is; the worker puts the chat request's user into each
//!   command.

use std::sync::LazyLock;

use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use schemars::transform::RestrictFormats;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::tasks::{
    AddTaskArgs, ListTasksArgs, TaskChange, TaskListing, TaskRefArgs, ToolError, UpdateTaskArgs,
};

/// A JSON object: the shape of every schema here (what MCP calls a `JsonObject`).
pub type JsonObject = Map<String, Value>;

/// The MCP argument naming the user, which the model's view does not have.
pub const USER_PARAMETER: &str = "user_id";

/// A tool's arguments as an MCP client sends them: the tool's own arguments and,
/// for the reference app's clients, the user they act for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct McpArguments<A> {
    // One line: schemars keeps a doc comment's line breaks in the description.
    // Nullable as well as optional: a client that makes every property required (the
    // Agents SDK's `convert_schemas_to_strict`, OpenAI's strict function calling) lets
    // the model send null here instead of making up a user.
    /// The signed-in user's id. Optional: leave it out (or null) to act for the signed-in user. Tasks of other users cannot be accessed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(flatten)]
    pub args: A,
}

/// How a tool behaves, for clients that decide what to confirm with a person (the
/// MCP tool annotations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolHints {
    /// Only reads.
    pub read_only: bool,
    /// May remove or overwrite what the user had (meaningful when not read-only).
    pub destructive: bool,
    /// Calling it again with the same arguments changes nothing more.
    pub idempotent: bool,
    /// Reaches beyond the user's task list (none of these tools does).
    pub open_world: bool,
}

/// One task tool, ready for `tools/list` or a chat-completions request.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolDefinition {
    /// The name a call uses, one of [`TOOL_NAMES`](crate::tasks::TOOL_NAMES).
    pub name: &'static str,
    /// A short human-readable name.
    pub title: &'static str,
    /// What the tool does and returns, written for the model.
    pub description: &'static str,
    pub hints: ToolHints,
    /// The MCP view of the arguments: with an optional `user_id`.
    pub input_schema: JsonObject,
    /// The model's view of the arguments: no `user_id` at all.
    pub parameters: JsonObject,
    /// What a call returns: `oneOf` the result (the reference's shape) and the refusal
    /// ([`ToolError`]).
    pub output_schema: JsonObject,
}

/// Every task tool, in the order of [`TOOL_NAMES`](crate::tasks::TOOL_NAMES).
pub fn definitions() -> &'static [ToolDefinition] {
    static DEFINITIONS: LazyLock<Vec<ToolDefinition>> = LazyLock::new(generate);
    &DEFINITIONS
}

/// The tool named `name`, if there is one.
pub fn definition(name: &str) -> Option<&'static ToolDefinition> {
    definitions().iter().find(|tool| tool.name == name)
}

const CHANGES: ToolHints = ToolHints {
    read_only: false,
    destructive: false,
    idempotent: true,
    open_world: false,
};

fn generate() -> Vec<ToolDefinition> {
    vec![
        define::<AddTaskArgs, TaskChange>(
            "add_task",
            "Add task",
            "Add a new task to the user's todo list. Returns the new task's number \
             (task_id), status \"created\" and its title.",
            ToolHints {
                idempotent: false,
                ..CHANGES
            },
        ),
        define::<ListTasksArgs, TaskListing>(
            "list_tasks",
            "List tasks",
            "List the user's tasks, optionally only the pending or only the completed \
             ones. Returns the tasks (id, title, description, completed), their count and \
             the filter used.",
            ToolHints {
                read_only: true,
                ..CHANGES
            },
        ),
        define::<TaskRefArgs, TaskChange>(
            "complete_task",
            "Complete task",
            "Mark a task as completed. Completing a task that is already completed \
             succeeds and changes nothing.",
            CHANGES,
        ),
        define::<TaskRefArgs, TaskChange>(
            "delete_task",
            "Delete task",
            "Delete a task from the user's list for good. Its number is not reused.",
            ToolHints {
                destructive: true,
                ..CHANGES
            },
        ),
        define::<UpdateTaskArgs, TaskChange>(
            "update_task",
            "Update task",
            "Change a task's title and/or description. Give at least one of them; the \
             other keeps its current value.",
            ToolHints {
                destructive: true,
                ..CHANGES
            },
        ),
    ]
}

fn define<Args: JsonSchema, Output: JsonSchema>(
    name: &'static str,
    title: &'static str,
    description: &'static str,
    hints: ToolHints,
) -> ToolDefinition {
    let arguments = SchemaSettings::draft2020_12().for_deserialize();
    let mut parameters = schema_object::<Args>(arguments.clone());
    // The model gets the bare object; `$schema` is noise to it, and some providers
    // reject keywords they do not know.
    parameters.remove("$schema");
    ToolDefinition {
        name,
        title,
        description,
        hints,
        input_schema: schema_object::<McpArguments<Args>>(arguments),
        parameters,
        output_schema: output_schema::<Output>(),
    }
}

/// `{"type": "object", "oneOf": [result, refusal]}`: what a call of a tool returning
/// `Output` sends as structured content, success or not.
fn output_schema<Output: JsonSchema>() -> JsonObject {
    // A result is written by the server: describe what serialising produces.
    let settings = SchemaSettings::draft2020_12().for_serialize();
    let branch = |mut schema: JsonObject, description: &str| {
        let dialect = schema.remove("$schema");
        schema.insert("description".to_owned(), description.into());
        (schema, dialect)
    };
    let (result, dialect) = branch(
        schema_object::<Output>(settings.clone()),
        "The result of a call that succeeded.",
    );
    let (refusal, _) = branch(
        schema_object::<ToolError>(settings),
        "A call that did not do what was asked (sent with isError: true): why, and the \
         task it named, if any.",
    );
    let mut schema = JsonObject::new();
    if let Some(dialect) = dialect {
        schema.insert("$schema".to_owned(), dialect);
    }
    schema.insert("type".to_owned(), "object".into());
    schema.insert(
        "oneOf".to_owned(),
        Value::Array(vec![Value::Object(result), Value::Object(refusal)]),
    );
    schema
}

/// The result branch of a tool's [`ToolDefinition::output_schema`].
pub fn result_schema(output_schema: &JsonObject) -> Option<&JsonObject> {
    output_schema.get("oneOf")?.get(0)?.as_object()
}

/// The refusal branch of a tool's [`ToolDefinition::output_schema`].
pub fn refusal_schema(output_schema: &JsonObject) -> Option<&JsonObject> {
    output_schema.get("oneOf")?.get(1)?.as_object()
}

/// `T`'s schema with `settings`, inlined, with standard formats only and without the
/// root's title and description (a Rust type's name and doc comment; the tool's own
/// name and description say it for the reader).
fn schema_object<T: JsonSchema>(settings: SchemaSettings) -> JsonObject {
    let generator = settings
        .with(|settings| settings.inline_subschemas = true)
        .with_transform(RestrictFormats::default())
        .into_generator();
    match generator.into_root_schema_for::<T>().to_value() {
        Value::Object(mut object) => {
            object.remove("title");
            object.remove("description");
            object
        }
        other => unreachable!("a struct's schema is an object, not {other}"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::json;

    use super::*;
    use crate::tasks::{TOOL_NAMES, ToolCall};

    /// Every subschema of `value`, depth first.
    fn walk<'a>(value: &'a Value, seen: &mut Vec<&'a JsonObject>) {
        match value {
            Value::Object(object) => {
                seen.push(object);
                object.values().for_each(|field| walk(field, seen));
            }
            Value::Array(items) => items.iter().for_each(|item| walk(item, seen)),
            _ => {}
        }
    }

    fn schemas(tool: &ToolDefinition) -> [(&'static str, &JsonObject); 3] {
        [
            ("input_schema", &tool.input_schema),
            ("parameters", &tool.parameters),
            ("output_schema", &tool.output_schema),
        ]
    }

    fn names(schema: &JsonObject, keyword: &str) -> BTreeSet<String> {
        match schema.get(keyword) {
            Some(Value::Object(properties)) => properties.keys().cloned().collect(),
            Some(Value::Array(required)) => required
                .iter()
                .map(|name| name.as_str().unwrap().to_owned())
                .collect(),
            _ => BTreeSet::new(),
        }
    }

    #[test]
    fn every_tool_name_is_defined_in_order() {
        let defined: Vec<&str> = definitions().iter().map(|tool| tool.name).collect();
        assert_eq!(defined, TOOL_NAMES);
        for name in TOOL_NAMES {
            assert_eq!(definition(name).unwrap().name, name);
        }
        assert!(definition("drop_tables").is_none());
    }

    #[test]
    fn schemas_are_inlined_and_use_only_standard_formats() {
        const STANDARD: [&str; 19] = [
            "date-time",
            "date",
            "time",
            "duration",
            "email",
            "idn-email",
            "hostname",
            "idn-hostname",
            "ipv4",
            "ipv6",
            "uri",
            "uri-reference",
            "iri",
            "iri-reference",
            "uuid",
            "uri-template",
            "json-pointer",
            "relative-json-pointer",
            "regex",
        ];
        for tool in definitions() {
            for (view, schema) in schemas(tool) {
                assert_eq!(schema["type"], "object", "{}.{view}", tool.name);
                let root = Value::Object(schema.clone());
                let text = root.to_string();
                assert!(
                    !text.contains("$ref") && !text.contains("$defs"),
                    "{}.{view} is not inlined: {text}",
                    tool.name
                );
                let mut subschemas = Vec::new();
                walk(&root, &mut subschemas);
                for subschema in subschemas {
                    if let Some(format) = subschema.get("format").and_then(Value::as_str) {
                        assert!(
                            STANDARD.contains(&format),
                            "{}.{view} uses the nonstandard format {format}",
                            tool.name
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_model_view_has_no_user_id_and_the_mcp_view_an_optional_one() {
        for tool in definitions() {
            let (mcp, model) = (&tool.input_schema, &tool.parameters);
            assert!(
                !Value::Object(model.clone())
                    .to_string()
                    .contains(USER_PARAMETER),
                "{}: the model is asked for the user",
                tool.name
            );
            assert!(
                !names(mcp, "required").contains(USER_PARAMETER),
                "{}",
                tool.name
            );
            let user = &mcp["properties"][USER_PARAMETER];
            assert_eq!(user["type"], json!(["string", "null"]), "{}", tool.name);
            assert!(
                user["description"]
                    .as_str()
                    .is_some_and(|text| text.contains("Optional")),
                "{}: {user}",
                tool.name
            );
            // Otherwise the two views are the same arguments.
            let mut without_user = names(mcp, "properties");
            without_user.remove(USER_PARAMETER);
            assert_eq!(without_user, names(model, "properties"), "{}", tool.name);
            assert_eq!(
                names(mcp, "required"),
                names(model, "required"),
                "{}",
                tool.name
            );
        }
    }

    #[test]
    fn every_argument_and_result_field_is_described_for_the_model() {
        for tool in definitions() {
            assert!(tool.description.len() > 20, "{}", tool.name);
            // Results are read by programs; the arguments are what the model must fill.
            for (view, schema) in &schemas(tool)[..2] {
                for (field, property) in schema["properties"].as_object().unwrap() {
                    assert!(
                        property.get("description").is_some(),
                        "{}.{view}.{field} has no description",
                        tool.name
                    );
                }
            }
        }
    }

    #[test]
    fn the_schemas_say_what_the_types_accept_and_return() {
        let complete = definition("complete_task").unwrap();
        assert_eq!(
            complete.parameters["properties"]["task_id"]["type"],
            "integer"
        );
        assert_eq!(complete.parameters["properties"]["task_id"]["minimum"], 1);
        assert_eq!(
            names(&complete.parameters, "required"),
            ["task_id".into()].into()
        );
        let list = definition("list_tasks").unwrap();
        assert_eq!(
            list.parameters["properties"]["status"]["enum"],
            json!(["all", "pending", "completed"])
        );
        assert!(names(&list.parameters, "required").is_empty());
        let listing = result_schema(&list.output_schema).unwrap();
        assert_eq!(
            names(listing, "required"),
            ["tasks", "count", "filter"].map(String::from).into()
        );
        assert_eq!(listing["properties"]["count"]["type"], "integer");
        for tool in definitions() {
            assert_eq!(tool.output_schema["type"], "object", "{}", tool.name);
            let refusal = refusal_schema(&tool.output_schema).unwrap();
            assert_eq!(names(refusal, "required"), ["error".into()].into());
            assert_eq!(
                names(refusal, "properties"),
                ["error", "task_id"].map(String::from).into()
            );
            // The two shapes cannot be mistaken for each other: each requires a field
            // the other does not have.
            let result = result_schema(&tool.output_schema).unwrap();
            assert!(
                !names(result, "properties").contains("error"),
                "{}",
                tool.name
            );
        }

        // What the model is told it may send parses into the tool call.
        for (name, arguments) in [
            ("add_task", json!({"title": "Buy milk"})),
            ("list_tasks", json!({})),
            ("complete_task", json!({"task_id": 1})),
            ("delete_task", json!({"task_id": 1})),
            (
                "update_task",
                json!({"task_id": 1, "title": "Buy oat milk"}),
            ),
        ] {
            let call = ToolCall::from_name_and_arguments(name, arguments.clone()).unwrap();
            assert_eq!(call.name(), name);
            for argument in arguments.as_object().unwrap().keys() {
                assert!(
                    definition(name).unwrap().parameters["properties"]
                        .get(argument)
                        .is_some(),
                    "{name}.{argument}"
                );
            }
        }
    }

    #[test]
    fn mcp_arguments_take_an_optional_user() {
        let without: McpArguments<AddTaskArgs> =
            serde_json::from_value(json!({"title": "Buy milk"})).unwrap();
        assert_eq!(without.user_id, None);
        assert_eq!(without.args.title, "Buy milk");
        let with: McpArguments<TaskRefArgs> =
            serde_json::from_value(json!({"user_id": "alice", "task_id": "3"})).unwrap();
        assert_eq!(with.user_id.as_deref(), Some("alice"));
        assert_eq!(with.args.task_id.0, 3);
        let null: McpArguments<ListTasksArgs> =
            serde_json::from_value(json!({"user_id": null})).unwrap();
        assert_eq!(null.user_id, None);
        let listed: McpArguments<ListTasksArgs> = serde_json::from_value(json!({})).unwrap();
        assert_eq!(listed.args, ListTasksArgs::default());
    }
}
