//! One model step through async-openai's chat-completions API, streamed: text deltas
//! are handed to the caller as they arrive, tool-call fragments are assembled into
//! whole calls.
//!
//! Failures are typed ([`ModelError`]) and never reach the user as such: the turn
//! turns them into a friendly reply and logs the cause. HTTP-level retries live in
//! [`crate::transport`]; a stream that breaks after it started is retried here, and
//! the whole step (retries included) is bounded by one timeout.

use std::collections::BTreeMap;
use std::time::Duration;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionRequestMessage, ChatCompletionTools, CreateChatCompletionStreamResponse,
};
use futures::StreamExt as _;
use secrecy::ExposeSecret as _;

use crate::provider::Provider;
use crate::transport::{RetryPolicy, RetryingTransport};

/// How long a connection to the model server may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a model step produced nothing usable.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model call timed out after {0:?}")]
    Timeout(Duration),
    #[error("model server answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error("model server unreachable: {0}")]
    Transport(String),
    #[error("model response stream broke: {0}")]
    Stream(String),
    #[error("model response could not be read: {0}")]
    Invalid(String),
    /// The step's text and tool arguments grew past [`MAX_STEP_BYTES`]: not asked
    /// again (the same request would grow the same way), and nothing of it recorded.
    #[error("model response is larger than {MAX_STEP_BYTES} bytes")]
    TooLarge,
}

/// The most text and tool-call arguments one model step may produce, in bytes. Well
/// under the bus's 1 MiB payload limit, so that whatever is recorded can be published
/// and read back.
pub const MAX_STEP_BYTES: usize = 256 * 1024;

impl From<OpenAIError> for ModelError {
    fn from(error: OpenAIError) -> Self {
        match error {
            OpenAIError::ApiError(response) => Self::Api {
                status: response.status_code.as_u16(),
                message: response.api_error.message,
            },
            OpenAIError::Reqwest(error) => Self::Transport(error.to_string()),
            OpenAIError::StreamError(error) => Self::Stream(error.to_string()),
            OpenAIError::Boxed(error) => Self::Transport(error.to_string()),
            other => Self::Invalid(other.to_string()),
        }
    }
}

/// A tool call as the model asked for it (arguments are the model's raw JSON text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// What one model step produced: text, tool calls, or both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelStep {
    pub text: String,
    pub calls: Vec<ModelCall>,
}

/// Settings of the model client besides the provider.
#[derive(Debug, Clone)]
pub struct ModelSettings {
    /// Bound on one whole step, retries included.
    pub timeout: Duration,
    pub retry: RetryPolicy,
}

/// A chat-completions client for the selected provider.
#[derive(Debug, Clone)]
pub struct ModelClient {
    client: Client<OpenAIConfig>,
    model: String,
    settings: ModelSettings,
}

impl ModelClient {
    pub fn new(provider: &Provider, settings: ModelSettings) -> Result<Self, reqwest::Error> {
        let mut config = OpenAIConfig::new()
            .with_api_base(&provider.base_url)
            // Servers without auth ignore the header; async-openai always sends one.
            .with_api_key(
                provider
                    .api_key
                    .as_ref()
                    .map(|key| key.expose_secret())
                    .unwrap_or(""),
            );
        // `OpenAIConfig::new` reads OPENAI_ORG_ID / OPENAI_PROJECT_ID, which only mean
        // something to OpenAI itself.
        if provider.kind != crate::provider::ProviderKind::OpenAi {
            config = config.with_org_id("").with_project_id("");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()?;
        let client = Client::with_config(config)
            .with_http_service(RetryingTransport::new(http, settings.retry.clone()));
        Ok(Self {
            client,
            model: provider.model.clone(),
            settings,
        })
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// Runs one step: sends `messages` with `tools` offered, hands each text delta to
    /// `on_text` as it streams in (it must not block), and returns the whole step.
    pub async fn step(
        &self,
        messages: &[ChatCompletionRequestMessage],
        tools: &[ChatCompletionTools],
        mut on_text: impl FnMut(String) + Send,
    ) -> Result<ModelStep, ModelError> {
        let request = StepRequest {
            model: &self.model,
            messages,
            tools,
            stream: true,
        };
        let timeout = self.settings.timeout;
        tokio::time::timeout(timeout, self.stream_with_retries(&request, &mut on_text))
            .await
            .map_err(|_| ModelError::Timeout(timeout))?
    }

    async fn stream_with_retries(
        &self,
        request: &StepRequest<'_>,
        on_text: &mut (impl FnMut(String) + Send),
    ) -> Result<ModelStep, ModelError> {
        use backon::BackoffBuilder as _;

        // Not `Retryable`: each attempt borrows `on_text` mutably, which a retried
        // closure cannot lend out; the schedule is the same.
        let mut pauses = self.settings.retry.backoff().build();
        loop {
            match self.stream_once(request, on_text).await {
                // A stream that broke half-way is asked again from the start. Text
                // already streamed is streamed again: the deltas are a live preview,
                // the final reply is what counts.
                Err(ModelError::Stream(reason)) => match pauses.next() {
                    Some(wait) => {
                        tracing::warn!(%reason, "model stream broke, asking again");
                        tokio::time::sleep(wait).await;
                    }
                    None => return Err(ModelError::Stream(reason)),
                },
                other => return other,
            }
        }
    }

    async fn stream_once(
        &self,
        request: &StepRequest<'_>,
        on_text: &mut (impl FnMut(String) + Send),
    ) -> Result<ModelStep, ModelError> {
        let mut stream = self
            .client
            .chat()
            .create_stream_byot::<_, CreateChatCompletionStreamResponse>(request)
            .await?;
        let mut assembler = StepAssembler::default();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|error| match ModelError::from(error) {
                // A transport error after the response started is a broken stream.
                ModelError::Transport(reason) => ModelError::Stream(reason),
                other => other,
            })?;
            if let Some(text) = assembler.push(&chunk) {
                on_text(text);
            }
            if assembler.size() > MAX_STEP_BYTES {
                return Err(ModelError::TooLarge);
            }
        }
        Ok(assembler.finish())
    }
}

/// The body of one streamed chat-completions request: what
/// [`CreateChatCompletionRequest`](async_openai::types::chat::CreateChatCompletionRequest) would send for it (model, messages, tools, stream),
/// borrowed from the turn rather than copied into a request per attempt.
#[derive(Debug, serde::Serialize)]
struct StepRequest<'a> {
    model: &'a str,
    messages: &'a [ChatCompletionRequestMessage],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    tools: &'a [ChatCompletionTools],
    stream: bool,
}

/// Folds streamed chunks into one step. Tool calls arrive as fragments keyed by their
/// index: the first carries the id and name, later ones append to the arguments.
#[derive(Debug, Default)]
pub struct StepAssembler {
    text: String,
    calls: BTreeMap<u32, ModelCall>,
}

impl StepAssembler {
    /// Takes one chunk; returns its text delta, if any.
    pub fn push(&mut self, chunk: &CreateChatCompletionStreamResponse) -> Option<String> {
        // Only the first choice is used (the request never asks for more).
        let choice = chunk.choices.iter().find(|choice| choice.index == 0)?;
        for fragment in choice.delta.tool_calls.iter().flatten() {
            let call = self
                .calls
                .entry(fragment.index)
                .or_insert_with(|| ModelCall {
                    id: String::new(),
                    name: String::new(),
                    arguments: String::new(),
                });
            if let Some(id) = fragment.id.as_deref().filter(|id| !id.is_empty()) {
                call.id = id.to_owned();
            }
            if let Some(function) = &fragment.function {
                if let Some(name) = function.name.as_deref() {
                    // Most servers send the whole name once; some repeat it in
                    // every fragment, which must not double it.
                    if call.name != name {
                        call.name.push_str(name);
                    }
                }
                if let Some(arguments) = function.arguments.as_deref() {
                    call.arguments.push_str(arguments);
                }
            }
        }
        let text = choice
            .delta
            .content
            .as_deref()
            .filter(|text| !text.is_empty())?;
        self.text.push_str(text);
        Some(text.to_owned())
    }

    /// Bytes of text and tool-call arguments so far.
    pub fn size(&self) -> usize {
        self.text.len()
            + self
                .calls
                .values()
                .map(|call| call.id.len() + call.name.len() + call.arguments.len())
                .sum::<usize>()
    }

    pub fn finish(self) -> ModelStep {
        ModelStep {
            text: self.text,
            calls: self
                .calls
                .into_values()
                .filter(|call| !call.name.is_empty())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn chunk(delta: serde_json::Value) -> CreateChatCompletionStreamResponse {
        serde_json::from_value(json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
            "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": null}]
        }))
        .unwrap()
    }

    #[test]
    fn text_deltas_accumulate_and_are_passed_on() {
        let mut assembler = StepAssembler::default();
        assert_eq!(
            assembler.push(&chunk(json!({"role": "assistant", "content": ""}))),
            None
        );
        assert_eq!(
            assembler
                .push(&chunk(json!({"content": "Hello"})))
                .as_deref(),
            Some("Hello")
        );
        assert_eq!(
            assembler
                .push(&chunk(json!({"content": ", world"})))
                .as_deref(),
            Some(", world")
        );
        let step = assembler.finish();
        assert_eq!(step.text, "Hello, world");
        assert!(step.calls.is_empty());
    }

    #[test]
    fn tool_call_fragments_are_joined_by_index() {
        let mut assembler = StepAssembler::default();
        assembler.push(&chunk(json!({"tool_calls": [
            {"index": 0, "id": "call_a", "type": "function", "function": {"name": "add_task", "arguments": ""}}
        ]})));
        assembler.push(&chunk(json!({"tool_calls": [
            {"index": 0, "function": {"arguments": "{\"title\":"}},
            {"index": 1, "id": "call_b", "type": "function", "function": {"name": "list_tasks", "arguments": "{}"}}
        ]})));
        assembler.push(&chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Buy milk\"}"}}]}),
        ));
        let step = assembler.finish();
        assert_eq!(
            step.calls,
            vec![
                ModelCall {
                    id: "call_a".into(),
                    name: "add_task".into(),
                    arguments: "{\"title\":\"Buy milk\"}".into()
                },
                ModelCall {
                    id: "call_b".into(),
                    name: "list_tasks".into(),
                    arguments: "{}".into()
                },
            ]
        );
    }

    #[test]
    fn usage_only_chunks_and_nameless_calls_are_ignored() {
        let mut assembler = StepAssembler::default();
        let usage: CreateChatCompletionStreamResponse = serde_json::from_value(json!({
            "id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        }))
        .unwrap();
        assert_eq!(assembler.push(&usage), None);
        assembler.push(&chunk(
            json!({"tool_calls": [{"index": 3, "function": {"arguments": "{}"}}]}),
        ));
        assert!(assembler.finish().calls.is_empty());
    }

    #[test]
    fn api_errors_keep_their_status() {
        let error = OpenAIError::ApiError(async_openai::error::ApiErrorResponse {
            status_code: reqwest::StatusCode::SERVICE_UNAVAILABLE,
            api_error: async_openai::error::ApiError {
                message: "overloaded".into(),
                ..Default::default()
            },
        });
        match ModelError::from(error) {
            ModelError::Api { status, message } => {
                assert_eq!(status, 503);
                assert_eq!(message, "overloaded");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_step_request_is_the_body_async_openai_would_send() {
        use async_openai::types::chat::{
            ChatCompletionRequestUserMessage, CreateChatCompletionRequest,
        };

        let messages = vec![ChatCompletionRequestMessage::User(
            ChatCompletionRequestUserMessage::from("add a task"),
        )];
        let tools = crate::tools::ToolCatalog::builtin().tools().to_vec();
        for offered in [&tools[..], &[]] {
            let borrowed = StepRequest {
                model: "m",
                messages: &messages,
                tools: offered,
                stream: true,
            };
            let owned = CreateChatCompletionRequest {
                model: "m".into(),
                messages: messages.clone(),
                tools: (!offered.is_empty()).then(|| offered.to_vec()),
                stream: Some(true),
                ..Default::default()
            };
            assert_eq!(
                serde_json::to_value(&borrowed).unwrap(),
                serde_json::to_value(&owned).unwrap()
            );
        }
    }
}
