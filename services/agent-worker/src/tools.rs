//! The tools offered to the model: discovered from task-service's MCP `tools/list`
//! at start-up, then reshaped for chat completions.
//!
//! The one reshaping that matters is invariant 6: `user_id` is removed from every
//! tool's parameters, so the model is never asked who the user is; the worker puts
//! the chat request's user into each command itself. `$ref`s into `$defs` are inlined
//! as well, because several OpenAI-compatible servers (Gemini's among them) reject
//! schemas that use them.

use std::collections::BTreeSet;
use std::time::Duration;

use async_openai::types::chat::{ChatCompletionTool, ChatCompletionTools, FunctionObject};
use proto_schemas::UserId;
use proto_schemas::tasks::TOOL_NAMES;
use rmcp::ServiceExt as _;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

/// The parameter the model must never set.
pub const USER_PARAMETER: &str = "user_id";

/// The subject of the token the worker shows task-service: a service, not a user.
pub const SERVICE_SUBJECT: &str = "agent-worker";

/// How deep `$ref`s are followed before giving up (the task schemas need one level).
const MAX_REF_DEPTH: usize = 8;

/// The tools the model may call, as chat-completion function tools.
#[derive(Debug, Clone, Default)]
pub struct ToolCatalog {
    tools: Vec<ChatCompletionTools>,
    names: BTreeSet<String>,
}

impl ToolCatalog {
    /// Reshapes MCP tools for the model, keeping only those the worker can run as
    /// task commands (any other tool would be offered but could never be executed).
    pub fn from_mcp(tools: &[rmcp::model::Tool]) -> Self {
        let mut catalog = Self::default();
        for tool in tools {
            let name = tool.name.as_ref();
            if !TOOL_NAMES.contains(&name) {
                tracing::warn!(
                    tool = name,
                    "task-service offers a tool the worker cannot run, not offered"
                );
                continue;
            }
            let parameters = model_parameters(&tool.input_schema);
            catalog.names.insert(name.to_owned());
            catalog
                .tools
                .push(ChatCompletionTools::Function(ChatCompletionTool {
                    function: FunctionObject {
                        name: name.to_owned(),
                        description: tool.description.as_ref().map(|d| d.to_string()),
                        parameters: Some(Value::Object(parameters)),
                        strict: None,
                    },
                }));
        }
        catalog
    }

    /// The tools to send with each model request.
    pub fn tools(&self) -> &[ChatCompletionTools] {
        &self.tools
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }
}

/// A tool's input schema as the model sees it: `$ref`s inlined, `$defs` dropped and
/// `user_id` removed from `properties` and `required`.
pub fn model_parameters(schema: &Map<String, Value>) -> Map<String, Value> {
    let defs = schema
        .get("$defs")
        .or_else(|| schema.get("definitions"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut root = Value::Object(schema.clone());
    inline_refs(&mut root, &defs, 0);
    let Value::Object(mut root) = root else {
        unreachable!("an object stays an object")
    };
    root.remove("$defs");
    root.remove("definitions");
    root.remove("$schema");
    if let Some(Value::Object(properties)) = root.get_mut("properties") {
        properties.remove(USER_PARAMETER);
    }
    if let Some(Value::Array(required)) = root.get_mut("required") {
        required.retain(|name| name.as_str() != Some(USER_PARAMETER));
        if required.is_empty() {
            root.remove("required");
        }
    }
    root.entry("type")
        .or_insert_with(|| Value::String("object".into()));
    root.entry("properties")
        .or_insert_with(|| Value::Object(Map::new()));
    root
}

fn inline_refs(value: &mut Value, defs: &Map<String, Value>, depth: usize) {
    match value {
        Value::Object(object) => {
            let target = object
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|reference| {
                    reference
                        .strip_prefix("#/$defs/")
                        .or_else(|| reference.strip_prefix("#/definitions/"))
                })
                .and_then(|name| defs.get(name))
                .filter(|_| depth < MAX_REF_DEPTH)
                .cloned();
            if let Some(Value::Object(mut target)) = target {
                object.remove("$ref");
                // Keywords next to the $ref (a field's description) win over the
                // definition's own.
                for (key, field) in std::mem::take(object) {
                    target.insert(key, field);
                }
                *object = target;
                inline_refs(value, defs, depth + 1);
                return;
            }
            for field in object.values_mut() {
                inline_refs(field, defs, depth);
            }
        }
        Value::Array(items) => {
            for item in items {
                inline_refs(item, defs, depth);
            }
        }
        _ => {}
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("failed to initialise the mcp session with task-service")]
    Initialize(#[source] Box<rmcp::service::ClientInitializeError>),
    #[error("task-service did not list its tools")]
    List(#[source] rmcp::ServiceError),
    #[error("task-service lists none of the task tools")]
    NoTools,
}

/// Asks task-service's MCP endpoint for its tools once.
pub async fn discover_once(url: &str, token: &str) -> Result<ToolCatalog, DiscoveryError> {
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url.to_owned()).auth_header(token.to_owned()),
    );
    let client = ().serve(transport).await.map_err(|e| DiscoveryError::Initialize(Box::new(e)))?;
    let listed = client.list_all_tools().await.map_err(DiscoveryError::List);
    if let Err(error) = client.cancel().await {
        tracing::debug!(%error, "closing the mcp session failed");
    }
    let catalog = ToolCatalog::from_mcp(&listed?);
    if catalog.is_empty() {
        return Err(DiscoveryError::NoTools);
    }
    Ok(catalog)
}

/// Asks until task-service answers (it may start after the worker), backing off up
/// to 10 s between attempts. `None` when `shutdown` came first.
pub async fn discover(
    url: &str,
    keys: &platform::auth::JwtKeys,
    shutdown: &CancellationToken,
) -> Option<ToolCatalog> {
    let subject = UserId::parse(SERVICE_SUBJECT).expect("the service subject is a valid id");
    let mut wait = Duration::from_millis(200);
    let mut attempt = 1u32;
    loop {
        // A fresh token each time: a long outage must not leave the worker holding an
        // expired one.
        let token = keys.mint(&subject, Duration::from_secs(300));
        match discover_once(url, &token).await {
            Ok(catalog) => return Some(catalog),
            Err(error) => tracing::warn!(
                url,
                attempt,
                retry_in_ms = wait.as_millis() as u64,
                error = %error_chain(&error),
                "task-service tools not available yet, retrying"
            ),
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(10));
        attempt += 1;
    }
}

/// An error and its sources on one line, for logs.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => panic!("not an object"),
        }
    }

    fn mcp_tool(name: &'static str, schema: Value) -> rmcp::model::Tool {
        rmcp::model::Tool::new(name, "does things to tasks", Arc::new(object(schema)))
    }

    #[test]
    fn user_id_is_removed_from_properties_and_required() {
        let schema = object(json!({
            "type": "object",
            "properties": {
                "user_id": {"type": "string", "description": "The signed-in user's id."},
                "title": {"type": "string"},
                "description": {"type": "string", "default": ""}
            },
            "required": ["user_id", "title"]
        }));
        let parameters = model_parameters(&schema);
        assert_eq!(
            Value::Object(parameters),
            json!({
                "type": "object",
                "properties": {
                    "title": {"type": "string"},
                    "description": {"type": "string", "default": ""}
                },
                "required": ["title"]
            })
        );
    }

    #[test]
    fn a_tool_whose_only_required_field_was_user_id_requires_nothing() {
        let schema = object(json!({
            "type": "object",
            "properties": {"user_id": {"type": "string"}},
            "required": ["user_id"]
        }));
        assert_eq!(
            Value::Object(model_parameters(&schema)),
            json!({"type": "object", "properties": {}})
        );
    }

    #[test]
    fn refs_are_inlined_and_defs_dropped() {
        let schema = object(json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "user_id": {"type": "string"},
                "status": {"$ref": "#/$defs/StatusFilter", "description": "Which tasks to list."}
            },
            "required": ["user_id"],
            "$defs": {
                "StatusFilter": {"type": "string", "enum": ["all", "pending", "completed"], "description": "old"}
            }
        }));
        assert_eq!(
            Value::Object(model_parameters(&schema)),
            json!({
                "type": "object",
                "properties": {
                    "status": {"type": "string", "enum": ["all", "pending", "completed"], "description": "Which tasks to list."}
                }
            })
        );
    }

    #[test]
    fn recursive_refs_stop_instead_of_looping() {
        let schema = object(json!({
            "type": "object",
            "properties": {"node": {"$ref": "#/$defs/Node"}},
            "$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}}
        }));
        let parameters = model_parameters(&schema);
        assert!(parameters["properties"]["node"]["properties"]["next"].is_object());
    }

    #[test]
    fn only_runnable_task_tools_are_offered() {
        let tools = vec![
            mcp_tool(
                "add_task",
                json!({"type": "object", "properties": {"user_id": {}, "title": {}}, "required": ["user_id", "title"]}),
            ),
            mcp_tool("drop_tables", json!({"type": "object", "properties": {}})),
        ];
        let catalog = ToolCatalog::from_mcp(&tools);
        assert!(catalog.contains("add_task"));
        assert!(!catalog.contains("drop_tables"));
        assert_eq!(catalog.tools().len(), 1);
        let ChatCompletionTools::Function(tool) = &catalog.tools()[0] else {
            panic!("a function tool")
        };
        assert_eq!(tool.function.name, "add_task");
        assert_eq!(
            tool.function.description.as_deref(),
            Some("does things to tasks")
        );
        let parameters = tool.function.parameters.as_ref().unwrap();
        assert!(parameters["properties"].get("user_id").is_none());
        assert_eq!(parameters["required"], json!(["title"]));
    }
}
