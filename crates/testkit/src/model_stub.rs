//! A tiny OpenAI-compatible chat-completions server whose answers follow a script, for
//! failures and model behaviour offline-llm never shows.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::Running;

/// What a scripted model server does with one call.
#[derive(Debug, Clone)]
pub enum Scripted {
    /// Fails with this status (and a `Retry-After` in seconds, if given).
    Status(u16, Option<u64>),
    /// Streams a text answer.
    Text(String),
    /// Streams tool calls: (id, name, raw arguments).
    ToolCalls(Vec<(String, String, String)>),
    /// Passes the call on to the upstream server (offline-llm) unchanged.
    Proxy,
}

/// Every request body a [`ModelStub`] received, with the time it arrived.
pub type Requests = Arc<Mutex<Vec<(Instant, Value)>>>;

/// The stub server: `POST {base}/chat/completions` answers call `n` (counted from 0)
/// as `script(n)` says.
pub struct ModelStub {
    /// The OpenAI base URL (`http://…/v1`).
    pub base: String,
    pub requests: Requests,
    pub running: Running,
}

type Script = Arc<dyn Fn(usize) -> Scripted + Send + Sync>;

#[derive(Clone)]
struct Stub {
    upstream: Option<String>,
    script: Script,
    requests: Requests,
    http: reqwest::Client,
}

impl ModelStub {
    /// Starts the stub on a free port; `upstream` is the base URL [`Scripted::Proxy`]
    /// passes calls on to.
    pub async fn start(
        upstream: Option<String>,
        script: impl Fn(usize) -> Scripted + Send + Sync + 'static,
    ) -> Self {
        let requests = Requests::default();
        let stub = Stub {
            upstream,
            script: Arc::new(script),
            requests: Arc::clone(&requests),
            http: reqwest::Client::new(),
        };
        let router = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(completions))
            .with_state(stub);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the stub binds a free port");
        let base = format!("http://{}/v1", listener.local_addr().unwrap());
        let running = Running::spawn(|token| async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(token.cancelled_owned())
                .await
        });
        Self {
            base,
            requests,
            running,
        }
    }

    /// How many calls arrived so far.
    pub fn calls(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// The body of call `index`.
    pub fn request(&self, index: usize) -> Value {
        self.requests.lock().unwrap()[index].1.clone()
    }
}

async fn completions(State(stub): State<Stub>, body: axum::body::Bytes) -> Response {
    let json: Value = serde_json::from_slice(&body).unwrap_or_default();
    let call = {
        let mut requests = stub.requests.lock().unwrap();
        requests.push((Instant::now(), json));
        requests.len() - 1
    };
    match (stub.script)(call) {
        Scripted::Status(code, retry_after) => {
            let status = StatusCode::from_u16(code).unwrap();
            let body = json!({"error": {"message": "scripted failure", "type": "server_error", "param": null, "code": null}});
            let mut response = (status, axum::Json(body)).into_response();
            if let Some(secs) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, secs.to_string().parse().unwrap());
            }
            response
        }
        Scripted::Text(text) => sse(vec![json!({"role": "assistant", "content": text})]),
        Scripted::ToolCalls(calls) => sse(calls
            .into_iter()
            .enumerate()
            .map(|(index, (id, name, arguments))| {
                json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                        "function": {"name": name, "arguments": arguments}}]})
            })
            .collect()),
        Scripted::Proxy => {
            let upstream = stub.upstream.as_deref().expect("an upstream to proxy to");
            let answer = stub
                .http
                .post(format!("{upstream}/chat/completions"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(body)
                .send()
                .await
                .expect("upstream answers");
            let status = StatusCode::from_u16(answer.status().as_u16()).unwrap();
            let content_type = answer
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/json")
                .to_owned();
            let bytes = answer.bytes().await.expect("upstream body");
            (status, [(header::CONTENT_TYPE, content_type)], bytes).into_response()
        }
    }
}

/// A streamed completion: one chunk per delta, then a `stop` chunk and `[DONE]`.
fn sse(deltas: Vec<Value>) -> Response {
    let chunk = |delta: Value, finish: Option<&str>| {
        json!({"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 0,
            "model": "stub", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut body = String::new();
    for delta in deltas {
        body.push_str(&format!("data: {}\n\n", chunk(delta, None)));
    }
    body.push_str(&format!(
        "data: {}\n\ndata: [DONE]\n\n",
        chunk(json!({}), Some("stop"))
    ));
    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}
