//! The tools offered to the model: the task tools' definitions compiled into
//! [`proto_schemas::tools`] (the ones task-service serves over MCP), as chat-completion
//! function tools.
//!
//! The model sees each tool's [`parameters`](ToolDefinition::parameters) view, which has
//! no `user_id` (invariant 6): the model is never asked who the user is, and the worker
//! puts the chat request's user into each command itself.

use std::collections::BTreeSet;

use async_openai::types::chat::{ChatCompletionTool, ChatCompletionTools, FunctionObject};
use proto_schemas::tools::{self, ToolDefinition};
use serde_json::Value;

/// The tools the model may call, as chat-completion function tools.
#[derive(Debug, Clone, Default)]
pub struct ToolCatalog {
    tools: Vec<ChatCompletionTools>,
    names: BTreeSet<String>,
}

impl ToolCatalog {
    /// Every task tool.
    pub fn builtin() -> Self {
        Self::from_definitions(tools::definitions())
    }

    /// Only the task tools named (names of no task tool are skipped), in the order of
    /// [`Self::builtin`].
    pub fn only(names: &[&str]) -> Self {
        Self::from_definitions(
            tools::definitions()
                .iter()
                .filter(|tool| names.contains(&tool.name)),
        )
    }

    fn from_definitions<'a>(definitions: impl IntoIterator<Item = &'a ToolDefinition>) -> Self {
        let mut catalog = Self::default();
        for definition in definitions {
            catalog.names.insert(definition.name.to_owned());
            catalog
                .tools
                .push(ChatCompletionTools::Function(ChatCompletionTool {
                    function: FunctionObject {
                        name: definition.name.to_owned(),
                        description: Some(definition.description.to_owned()),
                        parameters: Some(Value::Object(definition.parameters.clone())),
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

#[cfg(test)]
mod tests {

    use proto_schemas::tasks::TOOL_NAMES;
    use proto_schemas::tools::USER_PARAMETER;

    use super::*;

    fn function(tool: &ChatCompletionTools) -> &FunctionObject {
        let ChatCompletionTools::Function(tool) = tool else {
            panic!("a function tool")
        };
        &tool.function
    }

    #[test]
    fn every_task_tool_is_offered_without_user_id() {
        let catalog = ToolCatalog::builtin();
        assert!(!catalog.is_empty());
        let offered: Vec<&str> = catalog
            .tools()
            .iter()
            .map(|tool| function(tool).name.as_str())
            .collect();
        assert_eq!(offered, TOOL_NAMES);
        for name in TOOL_NAMES {
            assert!(catalog.contains(name), "{name}");
        }
        for tool in catalog.tools() {
            let function = function(tool);
            assert!(
                function
                    .description
                    .as_deref()
                    .is_some_and(|d| d.len() > 20)
            );
            let parameters = function.parameters.as_ref().unwrap();
            assert_eq!(parameters["type"], "object", "{}", function.name);
            let text = parameters.to_string();
            assert!(!text.contains(USER_PARAMETER), "{}: {text}", function.name);
            assert!(!text.contains("$ref"), "{}: {text}", function.name);
        }
    }

    #[test]
    fn a_catalog_can_offer_fewer_tools() {
        let catalog = ToolCatalog::only(&["add_task", "drop_tables"]);
        assert_eq!(catalog.names().collect::<Vec<_>>(), ["add_task"]);
        assert!(!catalog.contains("list_tasks"));
        assert_eq!(catalog.tools().len(), 1);
        assert_eq!(
            function(&catalog.tools()[0]).parameters.as_ref(),
            Some(&Value::Object(
                tools::definition("add_task").unwrap().parameters.clone()
            ))
        );
    }
}
