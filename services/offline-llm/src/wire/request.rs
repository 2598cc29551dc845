//! Parses a `POST /v1/chat/completions` body into what the rules read.
//!
//! Validation follows OpenAI: a body that is not JSON, or lacks `model` or a non-empty
//! `messages` array, is a 400 naming the parameter. Fields the stand-in has no use for
//! (temperature, max_tokens, tool_choice, …) are accepted and ignored, so real clients'
//! requests work unchanged.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::rules::{CalledTool, Conversation, Message, Tool};

/// A validated chat-completion request.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ChatRequest {
    /// Echoed back as the response's `model`.
    pub model: String,
    /// The messages and tools, as the rules read them.
    pub conversation: Conversation,
    /// Whether to answer with server-sent events.
    pub stream: bool,
    /// `stream_options.include_usage`: send a final usage chunk.
    pub include_usage: bool,
    /// Rough prompt size, for `usage`.
    pub prompt_chars: usize,
}

/// Parses and validates a request body.
pub(crate) fn parse(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid_request(
            format!("We could not parse the JSON body of your request: {e}"),
            None,
        )
    })?;
    let Value::Object(mut body) = value else {
        return Err(ApiError::invalid_request(
            "The request body must be a JSON object.",
            None,
        ));
    };

    let model = match body.remove("model") {
        Some(Value::String(model)) => model,
        Some(_) => return Err(invalid("'model' must be a string.", "model")),
        None => return Err(missing("model")),
    };
    let raw_messages = match body.remove("messages") {
        Some(Value::Array(messages)) => messages,
        Some(_) => return Err(invalid("'messages' must be an array.", "messages")),
        None => return Err(missing("messages")),
    };
    if raw_messages.is_empty() {
        return Err(invalid(
            "'messages' must contain at least one message.",
            "messages",
        ));
    }
    let messages: Vec<WireMessage> = raw_messages
        .into_iter()
        .enumerate()
        .map(|(i, raw)| element(raw, &format!("messages[{i}]")))
        .collect::<Result<_, _>>()?;

    let tools: Vec<WireTool> = match body.remove("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tools)) => tools
            .into_iter()
            .enumerate()
            .map(|(i, raw)| element(raw, &format!("tools[{i}]")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(invalid("'tools' must be an array.", "tools")),
    };
    let stream = optional::<bool>(&mut body, "stream")?.unwrap_or(false);
    let include_usage = optional::<StreamOptions>(&mut body, "stream_options")?
        .and_then(|options| options.include_usage)
        .unwrap_or(false);
    if let Some(n) = optional::<u64>(&mut body, "n")?
        && n != 1
    {
        return Err(invalid(
            "offline-llm returns exactly one choice; 'n' must be 1.",
            "n",
        ));
    }

    let prompt_chars = messages.iter().map(WireMessage::chars).sum();
    let tools = tools
        .into_iter()
        .enumerate()
        .map(|(i, tool)| tool.into_rules(i))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    Ok(ChatRequest {
        model,
        conversation: Conversation {
            messages: messages.into_iter().map(WireMessage::into_rules).collect(),
            tools,
        },
        stream,
        include_usage,
        prompt_chars,
    })
}

fn invalid(message: &str, param: &str) -> ApiError {
    ApiError::invalid_request(message, Some(param))
}

fn missing(param: &str) -> ApiError {
    ApiError::invalid_request(
        format!("Missing required parameter: '{param}'."),
        Some(param),
    )
    .with_code("missing_required_parameter")
}

fn element<T: DeserializeOwned>(raw: Value, param: &str) -> Result<T, ApiError> {
    serde_json::from_value(raw)
        .map_err(|e| ApiError::invalid_request(format!("Invalid '{param}': {e}."), Some(param)))
}

/// An optional field; `null` counts as absent, as it does for OpenAI.
fn optional<T: DeserializeOwned>(
    body: &mut Map<String, Value>,
    param: &str,
) -> Result<Option<T>, ApiError> {
    match body.remove(param) {
        None | Some(Value::Null) => Ok(None),
        Some(raw) => element(raw, param).map(Some),
    }
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// A message as OpenAI clients send it, tagged by `role`.
#[derive(Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
enum WireMessage {
    System {
        content: Content,
    },
    Developer {
        content: Content,
    },
    User {
        content: Content,
    },
    Assistant {
        #[serde(default)]
        content: Option<Content>,
        #[serde(default)]
        tool_calls: Option<Vec<WireToolCall>>,
    },
    Tool {
        content: Content,
        tool_call_id: String,
    },
    /// The deprecated function-calling result message; read as a tool result.
    Function {
        #[serde(default)]
        content: Option<String>,
        name: String,
    },
}

impl WireMessage {
    fn chars(&self) -> usize {
        match self {
            Self::System { content } | Self::Developer { content } | Self::User { content } => {
                content.text().len()
            }
            Self::Assistant {
                content,
                tool_calls,
            } => {
                content.as_ref().map_or(0, |c| c.text().len())
                    + tool_calls
                        .iter()
                        .flatten()
                        .map(|c| {
                            c.function
                                .as_ref()
                                .map_or(0, |f| f.name.len() + f.arguments.len())
                        })
                        .sum::<usize>()
            }
            Self::Tool { content, .. } => content.text().len(),
            Self::Function { content, .. } => content.as_ref().map_or(0, String::len),
        }
    }

    fn into_rules(self) -> Message {
        match self {
            Self::System { content } | Self::Developer { content } => {
                Message::System(content.text())
            }
            Self::User { content } => Message::User(content.text()),
            Self::Assistant {
                content,
                tool_calls,
            } => Message::Assistant {
                content: content.map(|c| c.text()),
                tool_calls: tool_calls
                    .into_iter()
                    .flatten()
                    .filter_map(|call| {
                        let function = call.function?;
                        Some(CalledTool {
                            id: call.id,
                            name: function.name,
                            arguments: function.arguments,
                        })
                    })
                    .collect(),
            },
            Self::Tool {
                content,
                tool_call_id,
            } => Message::Tool {
                tool_call_id,
                content: content.text(),
            },
            Self::Function { content, name } => Message::Tool {
                tool_call_id: name,
                content: content.unwrap_or_default(),
            },
        }
    }
}

/// Message content: a string, or an array of typed parts of which text is read.
#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

impl Content {
    fn text(&self) -> String {
        match self {
            Self::Text(text) => text.clone(),
            Self::Parts(parts) => parts
                .iter()
                .filter(|p| p.kind == "text")
                .filter_map(|p| p.text.as_deref())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

#[derive(Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct WireToolCall {
    id: String,
    /// Absent for custom (non-function) tool calls, which no rule reads.
    #[serde(default)]
    function: Option<WireFunctionCall>,
}

#[derive(Deserialize)]
struct WireFunctionCall {
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Deserialize)]
struct WireTool {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    function: Option<WireFunction>,
}

#[derive(Deserialize)]
struct WireFunction {
    name: String,
    #[serde(default)]
    parameters: Option<Value>,
    /// `null` counts as absent, as it does for OpenAI.
    #[serde(default)]
    strict: Option<bool>,
}

impl WireTool {
    /// The function tool, `None` for other tool kinds, an error for a function tool
    /// without its definition.
    fn into_rules(self, index: usize) -> Result<Option<Tool>, ApiError> {
        if self.kind != "function" {
            return Ok(None);
        }
        let function = self.function.ok_or_else(|| {
            let param = format!("tools[{index}].function");
            ApiError::invalid_request(
                format!("Missing required parameter: '{param}'."),
                Some(&param),
            )
            .with_code("missing_required_parameter")
        })?;
        Ok(Some(Tool {
            name: function.name,
            parameters: function.parameters,
            strict: function.strict.unwrap_or(false),
        }))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse_json(body: Value) -> Result<ChatRequest, ApiError> {
        parse(body.to_string().as_bytes())
    }

    #[test]
    fn a_full_openai_request_is_read() {
        let request = parse_json(json!({
            "model": "offline-llm",
            "stream": true,
            "stream_options": {"include_usage": true},
            "temperature": 0.2,
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "add milk"}]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "add_task", "arguments": "{\"title\":\"Milk\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "{\"task_id\":1}"}
            ],
            "tools": [
                {"type": "function", "function": {"name": "add_task", "strict": true,
                  "parameters": {"type": "object", "properties": {"title": {}}}}},
                {"type": "custom", "custom": {"name": "grammar"}}
            ]
        }))
        .unwrap();
        assert_eq!(request.model, "offline-llm");
        assert!(request.stream && request.include_usage);
        assert_eq!(request.conversation.tools.len(), 1);
        assert!(request.conversation.tools[0].strict);
        assert_eq!(
            request.conversation.messages,
            vec![
                Message::System("be brief".to_owned()),
                Message::User("add milk".to_owned()),
                Message::Assistant {
                    content: None,
                    tool_calls: vec![CalledTool {
                        id: "call_1".to_owned(),
                        name: "add_task".to_owned(),
                        arguments: "{\"title\":\"Milk\"}".to_owned(),
                    }],
                },
                Message::Tool {
                    tool_call_id: "call_1".to_owned(),
                    content: "{\"task_id\":1}".to_owned(),
                },
            ]
        );
    }

    #[test]
    fn bad_bodies_name_what_is_wrong() {
        let error = parse(b"{not json").unwrap_err();
        assert_eq!(error.status(), 400);
        assert!(error.message().contains("could not parse the JSON"));

        let error = parse_json(json!({"model": "m"})).unwrap_err();
        assert_eq!(error.param(), Some("messages"));

        let error = parse_json(json!({"model": "m", "messages": []})).unwrap_err();
        assert_eq!(error.param(), Some("messages"));

        let error =
            parse_json(json!({"messages": [{"role": "user", "content": "hi"}]})).unwrap_err();
        assert_eq!(error.param(), Some("model"));

        let error =
            parse_json(json!({"model": "m", "messages": [{"role": "robot", "content": "x"}]}))
                .unwrap_err();
        assert_eq!(error.param(), Some("messages[0]"));
        assert!(error.message().contains("robot"), "{}", error.message());

        let error = parse_json(json!({"model": "m", "stream": "yes",
            "messages": [{"role": "user", "content": "hi"}]}))
        .unwrap_err();
        assert_eq!(error.param(), Some("stream"));

        let error = parse_json(json!({"model": "m", "n": 2,
            "messages": [{"role": "user", "content": "hi"}]}))
        .unwrap_err();
        assert_eq!(error.param(), Some("n"));

        let error = parse_json(json!({"model": "m", "tools": [{"type": "function"}],
            "messages": [{"role": "user", "content": "hi"}]}))
        .unwrap_err();
        assert_eq!(error.param(), Some("tools[0].function"));
    }

    #[test]
    fn nulls_count_as_absent() {
        let request = parse_json(json!({"model": "m", "stream": null, "tools": null,
            "stream_options": null, "messages": [{"role": "user", "content": "hi"}]}))
        .unwrap();
        assert!(!request.stream);
        assert!(request.conversation.tools.is_empty());
    }
}
