//! Builds chat-completion responses and stream chunks in OpenAI's exact wire format.
//!
//! A streamed answer is cut the way OpenAI cuts one, so clients' delta accumulation is
//! exercised for real: a first chunk with the role, then the text in word-sized pieces,
//! or per tool call a chunk with `index`, `id`, `type` and the function name followed
//! by the arguments in several pieces; then a chunk with only `finish_reason`, and, if
//! asked for, a usage chunk with no choices. The caller ends the stream with `[DONE]`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use uuid::Uuid;

use crate::rules::Reply;

/// Arguments are streamed in pieces of at most this many characters.
const ARGUMENT_PIECE_CHARS: usize = 12;

/// One finished completion, ready to send whole or as chunks.
#[derive(Clone, Debug)]
pub(crate) struct Completion {
    id: String,
    created: u64,
    model: String,
    answer: Answer,
    usage: Usage,
}

#[derive(Clone, Debug)]
enum Answer {
    Text(String),
    ToolCalls(Vec<IssuedCall>),
}

#[derive(Clone, Debug)]
struct IssuedCall {
    id: String,
    name: String,
    arguments: String,
}

/// Token counts, estimated as characters / 4: nothing is tokenised here.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub(crate) struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

impl Usage {
    fn estimate(prompt_chars: usize, completion_chars: usize) -> Self {
        let tokens = |chars: usize| (chars as u64).div_ceil(4).max(1);
        let (prompt_tokens, completion_tokens) = (tokens(prompt_chars), tokens(completion_chars));
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

impl Completion {
    /// Gives `reply` a completion id, call ids and a timestamp.
    pub(crate) fn new(model: String, reply: Reply, prompt_chars: usize) -> Self {
        let answer = match reply {
            Reply::Text(text) => Answer::Text(text),
            Reply::ToolCalls(calls) => Answer::ToolCalls(
                calls
                    .into_iter()
                    .map(|call| IssuedCall {
                        id: unique_id("call_"),
                        name: call.name,
                        arguments: serde_json::Value::Object(call.arguments).to_string(),
                    })
                    .collect(),
            ),
        };
        let completion_chars = match &answer {
            Answer::Text(text) => text.len(),
            Answer::ToolCalls(calls) => {
                calls.iter().map(|c| c.name.len() + c.arguments.len()).sum()
            }
        };
        Self {
            id: unique_id("chatcmpl-"),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model,
            answer,
            usage: Usage::estimate(prompt_chars, completion_chars),
        }
    }

    /// `stop` for text, `tool_calls` for tool calls.
    pub(crate) fn finish_reason(&self) -> &'static str {
        match self.answer {
            Answer::Text(_) => "stop",
            Answer::ToolCalls(_) => "tool_calls",
        }
    }

    /// The names of the tools called, for logs.
    pub(crate) fn tool_names(&self) -> Vec<&str> {
        match &self.answer {
            Answer::Text(_) => Vec::new(),
            Answer::ToolCalls(calls) => calls.iter().map(|c| c.name.as_str()).collect(),
        }
    }

    /// The non-streaming `chat.completion` object as a JSON value.
    #[cfg(test)]
    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("completion serialises")
    }

    fn body(&self) -> ChatCompletion<'_> {
        let (content, tool_calls) = match &self.answer {
            Answer::Text(text) => (Some(text.as_str()), None),
            Answer::ToolCalls(calls) => (
                None,
                Some(
                    calls
                        .iter()
                        .map(|call| ToolCall {
                            id: &call.id,
                            kind: "function",
                            function: FunctionCall {
                                name: &call.name,
                                arguments: &call.arguments,
                            },
                        })
                        .collect(),
                ),
            ),
        };
        ChatCompletion {
            id: &self.id,
            object: "chat.completion",
            created: self.created,
            model: &self.model,
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices: [Choice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant",
                    content,
                    refusal: None,
                    tool_calls,
                },
                logprobs: None,
                finish_reason: self.finish_reason(),
            }],
            usage: self.usage,
        }
    }

    /// The `chat.completion.chunk` objects of a streamed answer, serialised, in order.
    pub(crate) fn chunks(&self, include_usage: bool) -> Vec<String> {
        // With include_usage, OpenAI sends `"usage": null` on every chunk but the last.
        let usage_field = include_usage.then_some(None);
        let chunk = |delta: Delta<'_>, finish_reason: Option<&'static str>| {
            self.chunk(
                vec![ChunkChoice {
                    index: 0,
                    delta,
                    logprobs: None,
                    finish_reason,
                }],
                usage_field,
            )
        };
        let mut chunks = Vec::new();
        match &self.answer {
            Answer::Text(text) => {
                chunks.push(chunk(
                    Delta {
                        role: Some("assistant"),
                        content: Some(""),
                        ..Delta::default()
                    },
                    None,
                ));
                for piece in word_pieces(text) {
                    chunks.push(chunk(
                        Delta {
                            content: Some(piece),
                            ..Delta::default()
                        },
                        None,
                    ));
                }
            }
            Answer::ToolCalls(calls) => {
                chunks.push(chunk(
                    Delta {
                        role: Some("assistant"),
                        ..Delta::default()
                    },
                    None,
                ));
                for (index, call) in calls.iter().enumerate() {
                    let index = u32::try_from(index).expect("few tool calls");
                    chunks.push(chunk(
                        Delta {
                            tool_calls: Some(vec![ToolCallDelta {
                                index,
                                id: Some(&call.id),
                                kind: Some("function"),
                                function: FunctionDelta {
                                    name: Some(&call.name),
                                    arguments: Some(""),
                                },
                            }]),
                            ..Delta::default()
                        },
                        None,
                    ));
                    for piece in char_pieces(&call.arguments, ARGUMENT_PIECE_CHARS) {
                        chunks.push(chunk(
                            Delta {
                                tool_calls: Some(vec![ToolCallDelta {
                                    index,
                                    id: None,
                                    kind: None,
                                    function: FunctionDelta {
                                        name: None,
                                        arguments: Some(piece),
                                    },
                                }]),
                                ..Delta::default()
                            },
                            None,
                        ));
                    }
                }
            }
        }
        chunks.push(chunk(Delta::default(), Some(self.finish_reason())));
        if include_usage {
            chunks.push(self.chunk(Vec::new(), Some(Some(self.usage))));
        }
        chunks
    }

    fn chunk(&self, choices: Vec<ChunkChoice<'_>>, usage: Option<Option<Usage>>) -> String {
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices,
            usage,
        };
        serde_json::to_string(&chunk).expect("chunk serialises")
    }
}

/// Serialises as the non-streaming `chat.completion` object, fields in OpenAI's order.
impl Serialize for Completion {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.body().serialize(serializer)
    }
}

/// Marks every response as coming from the stand-in, for anyone reading raw traffic.
const SYSTEM_FINGERPRINT: &str = "offline-llm-rules";

fn unique_id(prefix: &str) -> String {
    format!("{prefix}{}", Uuid::now_v7().simple())
}

/// Splits text into word-sized pieces, each a word with the whitespace before it, so
/// that the pieces concatenate back to exactly the original text.
fn word_pieces(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut previous_was_space = true;
    for (i, c) in text.char_indices() {
        let is_space = c.is_whitespace();
        if is_space && !previous_was_space && i > start {
            pieces.push(&text[start..i]);
            start = i;
        }
        previous_was_space = is_space;
    }
    if start < text.len() {
        pieces.push(&text[start..]);
    }
    pieces
}

/// Splits text into pieces of at most `max_chars` characters.
fn char_pieces(text: &str, max_chars: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    for (count, (i, _)) in text.char_indices().enumerate() {
        if count > 0 && count % max_chars == 0 {
            pieces.push(&text[start..i]);
            start = i;
        }
    }
    if start < text.len() {
        pieces.push(&text[start..]);
    }
    pieces
}

#[derive(Serialize)]
struct ChatCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: [Choice<'a>; 1],
    usage: Usage,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: AssistantMessage<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct AssistantMessage<'a> {
    role: &'static str,
    content: Option<&'a str>,
    refusal: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<Vec<ToolCall<'a>>>,
}

#[derive(Serialize)]
struct ToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionCall<'a>,
}

#[derive(Serialize)]
struct FunctionCall<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: Vec<ChunkChoice<'a>>,
    /// Absent unless usage was requested; then `null` until the final usage chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<Usage>>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Default, Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<Vec<ToolCallDelta<'a>>>,
}

#[derive(Serialize)]
struct ToolCallDelta<'a> {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionDelta<'a>,
}

#[derive(Serialize)]
struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    arguments: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::rules::PlannedCall;

    fn parsed(chunks: &[String]) -> Vec<Value> {
        chunks
            .iter()
            .map(|c| serde_json::from_str(c).unwrap())
            .collect()
    }

    #[test]
    fn word_pieces_rebuild_the_text_exactly() {
        let text = "Here are your tasks:\n1. [ ] Buy milk\n2. [x]  Walk dog ";
        let pieces = word_pieces(text);
        assert!(pieces.len() > 5);
        assert_eq!(pieces.concat(), text);
        assert_eq!(word_pieces("Done."), ["Done."]);
        assert!(word_pieces("").is_empty());
    }

    #[test]
    fn char_pieces_respect_char_boundaries() {
        let text = "{\"title\":\"Crème brûlée\"}";
        let pieces = char_pieces(text, 5);
        assert_eq!(pieces.concat(), text);
        assert!(pieces.iter().all(|p| p.chars().count() <= 5));
    }

    #[test]
    fn text_answers_stream_role_then_words_then_stop() {
        let completion = Completion::new(
            "m".to_owned(),
            Reply::Text("I've added task #4: Buy milk.".to_owned()),
            10,
        );
        let chunks = parsed(&completion.chunks(false));
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "I've added task #4: Buy milk.");
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        assert!(chunks.iter().all(|c| c.get("usage").is_none()));
        assert!(
            chunks
                .iter()
                .all(|c| c["object"] == "chat.completion.chunk")
        );
    }

    #[test]
    fn tool_calls_stream_header_then_argument_pieces_and_usage_last() {
        let completion = Completion::new(
            "m".to_owned(),
            Reply::ToolCalls(vec![PlannedCall {
                name: "add_task".to_owned(),
                arguments: json!({"title": "Buy milk and eggs"})
                    .as_object()
                    .unwrap()
                    .clone(),
            }]),
            10,
        );
        let chunks = parsed(&completion.chunks(true));
        let header = &chunks[1]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(header["index"], 0);
        assert_eq!(header["type"], "function");
        assert_eq!(header["function"]["name"], "add_task");
        assert!(header["id"].as_str().unwrap().starts_with("call_"));
        let arguments: String = chunks
            .iter()
            .filter_map(|c| {
                c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
            })
            .collect();
        assert_eq!(
            serde_json::from_str::<Value>(&arguments).unwrap(),
            json!({"title": "Buy milk and eggs"})
        );
        let argument_chunks = chunks
            .iter()
            .filter(|c| c["choices"][0]["delta"]["tool_calls"][0]["id"].is_null())
            .filter(|c| c["choices"][0]["delta"]["tool_calls"].is_array())
            .count();
        assert!(argument_chunks >= 2, "arguments arrive in pieces");
        let (usage, rest) = chunks.split_last().unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert!(usage["usage"]["total_tokens"].as_u64().unwrap() > 0);
        assert!(
            rest.iter()
                .all(|c| c["usage"].is_null() && c.get("usage").is_some())
        );
        assert_eq!(
            rest.last().unwrap()["choices"][0]["finish_reason"],
            "tool_calls"
        );
    }

    #[test]
    fn whole_responses_carry_ids_and_usage() {
        let completion = Completion::new("gpt-x".to_owned(), Reply::Text("Hi".to_owned()), 40);
        let body = completion.to_json();
        assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["model"], "gpt-x");
        assert_eq!(body["choices"][0]["message"]["content"], "Hi");
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        assert_eq!(body["usage"]["prompt_tokens"], 10);
        assert_eq!(body["usage"]["total_tokens"], 11);
    }
}
