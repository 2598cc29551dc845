//! offline-llm over real HTTP, driven by async-openai (the client agent-worker uses) and
//! by raw reqwest where the exact bytes on the wire matter.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionMessageToolCall, ChatCompletionMessageToolCalls,
    ChatCompletionRequestAssistantMessageArgs, ChatCompletionRequestMessage,
    ChatCompletionRequestToolMessageArgs, ChatCompletionRequestUserMessage,
    ChatCompletionStreamOptions, ChatCompletionTool, ChatCompletionTools,
    CreateChatCompletionRequest, CreateChatCompletionRequestArgs, FinishReason, FunctionCall,
    FunctionObject,
};
use futures::StreamExt;
use offline_llm::{App, Config};
use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::{Running, expect_json, open_event_stream};

/// A running server on a free port; stopped when dropped.
struct Server {
    api_base: String,
    running: Running,
}

impl Server {
    async fn start() -> Self {
        Self::start_with(Config::ephemeral()).await
    }

    async fn start_with(config: Config) -> Self {
        let app = App::build(config).await.expect("offline-llm binds");
        let api_base = app.api_base();
        Self {
            api_base,
            running: Running::spawn(|token| app.run(token)),
        }
    }

    fn client(&self) -> Client<OpenAIConfig> {
        Client::with_config(
            OpenAIConfig::new()
                .with_api_base(&self.api_base)
                .with_api_key("not-needed"),
        )
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api_base)
    }
}

/// The task tools as agent-worker offers them: the compiled-in definitions, in the
/// model's view (no user_id).
fn task_tools() -> Vec<ChatCompletionTools> {
    proto_schemas::tools::definitions()
        .iter()
        .map(|tool| {
            ChatCompletionTools::Function(ChatCompletionTool {
                function: FunctionObject {
                    name: tool.name.to_owned(),
                    description: Some(tool.description.to_owned()),
                    parameters: Some(Value::Object(tool.parameters.clone())),
                    strict: None,
                },
            })
        })
        .collect()
}

fn user(text: &str) -> ChatCompletionRequestMessage {
    ChatCompletionRequestUserMessage::from(text).into()
}

fn request(messages: Vec<ChatCompletionRequestMessage>) -> CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model("offline-llm")
        .messages(messages)
        .tools(task_tools())
        .build()
        .unwrap()
}

/// [`request`] asking for a stream. Said in the request itself, as the API wants it:
/// `create_stream` only sets it when async-openai is built without its `byot` feature,
/// which agent-worker turns on for the whole workspace.
fn streamed(messages: Vec<ChatCompletionRequestMessage>) -> CreateChatCompletionRequest {
    CreateChatCompletionRequest {
        stream: Some(true),
        ..request(messages)
    }
}

/// The conversation after the model called `name` and the tool answered `result`.
fn with_tool_result(
    said: &str,
    call_id: &str,
    name: &str,
    arguments: &str,
    result: Value,
) -> Vec<ChatCompletionRequestMessage> {
    let assistant = ChatCompletionRequestAssistantMessageArgs::default()
        .tool_calls(vec![ChatCompletionMessageToolCalls::Function(
            ChatCompletionMessageToolCall {
                id: call_id.to_owned(),
                function: FunctionCall {
                    name: name.to_owned(),
                    arguments: arguments.to_owned(),
                },
            },
        )])
        .build()
        .unwrap();
    let tool = ChatCompletionRequestToolMessageArgs::default()
        .tool_call_id(call_id)
        .content(result.to_string())
        .build()
        .unwrap();
    vec![user(said), assistant.into(), tool.into()]
}

fn function_calls(
    message_calls: &[ChatCompletionMessageToolCalls],
) -> Vec<&ChatCompletionMessageToolCall> {
    message_calls
        .iter()
        .map(|call| match call {
            ChatCompletionMessageToolCalls::Function(call) => call,
            other => panic!("expected a function call, got {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn adding_a_task_calls_add_task_with_the_clean_title() {
    let server = Server::start().await;

    let response = server
        .client()
        .chat()
        .create(request(vec![user("add a task to buy milk")]))
        .await
        .unwrap();

    assert!(response.id.starts_with("chatcmpl-"));
    assert_eq!(response.object, "chat.completion");
    assert_eq!(response.model, "offline-llm");
    let choice = &response.choices[0];
    assert_eq!(choice.finish_reason, Some(FinishReason::ToolCalls));
    let calls = function_calls(choice.message.tool_calls.as_deref().unwrap());
    assert_eq!(calls.len(), 1);
    assert!(calls[0].id.starts_with("call_"));
    assert_eq!(calls[0].function.name, "add_task");
    let arguments: Value = serde_json::from_str(&calls[0].function.arguments).unwrap();
    assert_eq!(arguments, json!({"title": "Buy milk"}));
    assert!(response.usage.unwrap().total_tokens > 0);
}

#[tokio::test]
async fn the_model_name_in_the_request_is_echoed() {
    let server = Server::start().await;
    let mut req = request(vec![user("hello")]);
    req.model = "gpt-4o-mini".to_owned();

    let response = server.client().chat().create(req).await.unwrap();

    assert_eq!(response.model, "gpt-4o-mini");
    let text = response.choices[0].message.content.as_deref().unwrap();
    assert!(text.starts_with("Hi! I can add"), "{text}");
}

#[tokio::test]
async fn tool_results_are_summarised_without_calling_again() {
    let server = Server::start().await;
    let client = server.client();

    // Round 1: the model asks for add_task; round 2: it reads the result.
    let first = client
        .chat()
        .create(request(vec![user("add a task to buy milk")]))
        .await
        .unwrap();
    let call = function_calls(first.choices[0].message.tool_calls.as_deref().unwrap())[0].clone();
    let messages = with_tool_result(
        "add a task to buy milk",
        &call.id,
        &call.function.name,
        &call.function.arguments,
        json!({"task_id": 4, "status": "created", "title": "Buy milk"}),
    );

    let second = client.chat().create(request(messages)).await.unwrap();

    let choice = &second.choices[0];
    assert_eq!(choice.finish_reason, Some(FinishReason::Stop));
    assert!(choice.message.tool_calls.is_none());
    assert_eq!(
        choice.message.content.as_deref(),
        Some("I've added task #4: Buy milk.")
    );
}

#[tokio::test]
async fn not_found_results_are_explained() {
    let server = Server::start().await;
    let messages = with_tool_result(
        "complete 7",
        "call_x",
        "complete_task",
        r#"{"task_id":7}"#,
        json!({"error": "Task not found", "task_id": 7}),
    );

    let response = server
        .client()
        .chat()
        .create(request(messages))
        .await
        .unwrap();

    assert_eq!(
        response.choices[0].message.content.as_deref(),
        Some("I couldn't find task #7. Say \"show my tasks\" to see the numbers.")
    );
}

#[tokio::test]
async fn streamed_text_deltas_add_up_to_the_whole_answer() {
    let server = Server::start().await;
    let client = server.client();
    let messages = with_tool_result(
        "show my tasks",
        "call_l",
        "list_tasks",
        r#"{"status":"all"}"#,
        json!({"tasks": [
            {"id": 1, "title": "Buy milk", "description": null, "completed": false},
            {"id": 2, "title": "Walk dog", "description": null, "completed": true}
        ], "count": 2, "filter": "all"}),
    );
    let whole = client
        .chat()
        .create(request(messages.clone()))
        .await
        .unwrap();
    let expected = whole.choices[0].message.content.clone().unwrap();
    assert_eq!(
        expected,
        "Here are your tasks:\n1. [ ] Buy milk\n2. [x] Walk dog"
    );

    let mut stream = client
        .chat()
        .create_stream(streamed(messages))
        .await
        .unwrap();
    let mut text = String::new();
    let mut content_chunks = 0;
    let mut roles = 0;
    let mut finish = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        assert_eq!(chunk.object, "chat.completion.chunk");
        for choice in chunk.choices {
            roles += usize::from(choice.delta.role.is_some());
            if let Some(piece) = choice.delta.content.filter(|p| !p.is_empty()) {
                content_chunks += 1;
                text.push_str(&piece);
            }
            finish = finish.or(choice.finish_reason);
        }
    }

    assert_eq!(text, expected);
    assert!(content_chunks > 3, "text arrives in word-sized pieces");
    assert_eq!(roles, 1, "the role is sent once, first");
    assert_eq!(finish, Some(FinishReason::Stop));
}

#[tokio::test]
async fn streamed_tool_calls_accumulate_into_name_and_valid_json() {
    let server = Server::start().await;
    let mut req = streamed(vec![user("please complete tasks 3 and 5")]);
    req.stream_options = Some(ChatCompletionStreamOptions {
        include_usage: Some(true),
        include_obfuscation: None,
    });

    let mut stream = server.client().chat().create_stream(req).await.unwrap();

    // Accumulate by index, as OpenAI clients do.
    let mut calls: BTreeMap<u32, (String, String, String)> = BTreeMap::new();
    let mut argument_deltas = 0;
    let mut finish = None;
    let mut usage = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        if let Some(u) = chunk.usage {
            assert!(chunk.choices.is_empty(), "usage comes in its own chunk");
            usage = Some(u);
        }
        for choice in chunk.choices {
            finish = finish.or(choice.finish_reason);
            for delta in choice.delta.tool_calls.unwrap_or_default() {
                let entry = calls.entry(delta.index).or_default();
                if let Some(id) = delta.id {
                    entry.0 = id;
                }
                if let Some(function) = delta.function {
                    if let Some(name) = function.name {
                        entry.1.push_str(&name);
                    }
                    if let Some(arguments) = function.arguments.filter(|a| !a.is_empty()) {
                        argument_deltas += 1;
                        entry.2.push_str(&arguments);
                    }
                }
            }
        }
    }

    assert_eq!(finish, Some(FinishReason::ToolCalls));
    assert!(usage.expect("usage chunk").total_tokens > 0);
    assert!(argument_deltas > calls.len(), "arguments arrive in pieces");
    let calls: Vec<_> = calls.into_values().collect();
    assert_eq!(calls.len(), 2);
    assert_ne!(calls[0].0, calls[1].0, "each call has its own id");
    for ((id, name, arguments), task_id) in calls.iter().zip([3, 5]) {
        assert!(id.starts_with("call_"));
        assert_eq!(name, "complete_task");
        let arguments: Value = serde_json::from_str(arguments).unwrap();
        assert_eq!(arguments, json!({"task_id": task_id}));
    }
}

#[tokio::test]
async fn models_lists_offline_llm() {
    let server = Server::start().await;
    let client = server.client();

    let models = client.models().list().await.unwrap();

    assert_eq!(models.object, "list");
    let ids: Vec<&str> = models.data.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["offline-llm"]);
    assert_eq!(
        client.models().retrieve("offline-llm").await.unwrap().id,
        "offline-llm"
    );
    match client.models().retrieve("gpt-9").await {
        Err(OpenAIError::ApiError(error)) => {
            assert_eq!(error.status_code, 404);
            assert_eq!(error.api_error.code.as_deref(), Some("model_not_found"));
        }
        other => panic!("expected a 404 API error, got {other:?}"),
    }
}

#[tokio::test]
async fn an_empty_conversation_is_a_400_api_error() {
    let server = Server::start().await;

    let result = server.client().chat().create(request(Vec::new())).await;

    match result {
        Err(OpenAIError::ApiError(error)) => {
            assert_eq!(error.status_code, 400);
            assert_eq!(
                error.api_error.r#type.as_deref(),
                Some("invalid_request_error")
            );
            assert_eq!(error.api_error.param.as_deref(), Some("messages"));
        }
        other => panic!("expected a 400 API error, got {other:?}"),
    }
}

#[tokio::test]
async fn malformed_or_incomplete_bodies_get_openai_error_json() {
    let server = Server::start().await;
    let http = reqwest::Client::new();
    let url = server.url("/chat/completions");

    let body = expect_json(
        http.post(&url)
            .header("content-type", "application/json")
            .body("{\"model\": \"offline-llm\", \"messages\": ["),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("could not parse the JSON body"),
        "{body}"
    );
    assert!(body["error"].get("param").is_some() && body["error"].get("code").is_some());

    let body = expect_json(
        http.post(&url).json(&json!({"model": "offline-llm"})),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(body["error"]["param"], "messages");
    assert_eq!(body["error"]["code"], "missing_required_parameter");

    let body = expect_json(http.get(server.url("/nope")), StatusCode::NOT_FOUND).await;
    assert_eq!(body["error"]["code"], "unknown_url");
}

#[tokio::test]
async fn the_raw_event_stream_is_openai_sse_ending_in_done() {
    let server = Server::start().await;

    let response = open_event_stream(
        reqwest::Client::new()
            .post(server.url("/chat/completions"))
            .json(&json!({
                "model": "offline-llm",
                "stream": true,
                "messages": [{"role": "user", "content": "what can you do?"}]
            })),
    )
    .await;

    let body = response.text().await.unwrap();
    let events: Vec<&str> = body
        .split("\n\n")
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    assert!(events.iter().all(|e| e.starts_with("data: ")), "{body}");
    assert_eq!(events.last(), Some(&"data: [DONE]"));
    for event in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(&event["data: ".len()..]).unwrap();
        assert_eq!(chunk["object"], "chat.completion.chunk");
    }
    assert!(body.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn configured_latency_delays_each_completion() {
    let server = Server::start_with(Config {
        latency_ms: 300,
        ..Config::ephemeral()
    })
    .await;
    let client = server.client();

    let started = Instant::now();
    client
        .chat()
        .create(request(vec![user("show my tasks")]))
        .await
        .unwrap();
    let elapsed = started.elapsed();

    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    // Listing models is not a completion call and is not slowed down.
    let started = Instant::now();
    client.models().list().await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(300));
}

#[tokio::test]
async fn health_answers_and_shutdown_stops_the_server() {
    let server = Server::start().await;
    let health_url = server.api_base.replace("/v1", "/healthz");
    let health = expect_json(reqwest::Client::new().get(&health_url), StatusCode::OK).await;
    assert_eq!(health["status"], "ok");

    // Stops promptly.
    server.running.stop_within(Duration::from_secs(5)).await;
    assert!(
        reqwest::get(&health_url).await.is_err(),
        "nothing listens any more"
    );
}
