//! The task tools over MCP, driven over real HTTP with rmcp's streamable HTTP client
//! (and raw requests where the client would hide what is tested).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::Harness;
use proto_schemas::tasks::TOOL_NAMES;
use rmcp::ServiceExt as _;
use rmcp::model::{CallToolRequestParams, CallToolResult, Tool};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};
use task_service::mcp::USER_MISMATCH;

/// rmcp's client, with its session.
type Client = RunningService<RoleClient, ()>;

async fn connect(url: String, token: &str) -> Client {
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url).auth_header(token.to_owned()),
    );
    ().serve(transport).await.expect("mcp initialize")
}

/// One replica, and an MCP client of it holding alice's token.
async fn alice_connected() -> (Harness, Client) {
    let h = Harness::start(1).await;
    let client = connect(h.replicas[0].mcp_url(), &h.token("alice")).await;
    (h, client)
}

/// Ends the client's session, then stops the replicas.
async fn disconnect(h: Harness, client: Client) {
    client.cancel().await.unwrap();
    h.stop().await;
}

async fn call_tool(client: &Client, name: &'static str, arguments: Value) -> CallToolResult {
    let Value::Object(arguments) = arguments else {
        panic!("arguments must be an object")
    };
    client
        .call_tool(CallToolRequestParams::new(name).with_arguments(arguments))
        .await
        .unwrap_or_else(|error| panic!("{name} failed at the protocol level: {error}"))
}

/// The structured result of a successful call; checks the text copy says the same.
fn structured(result: &CallToolResult) -> Value {
    assert_eq!(result.is_error, Some(false), "{result:?}");
    let value = result
        .structured_content
        .clone()
        .expect("structured content");
    let text = result.content[0].as_text().expect("a text block");
    assert_eq!(serde_json::from_str::<Value>(&text.text).unwrap(), value);
    value
}

/// [`structured`] of a call of `name` with `arguments`.
async fn call_structured(client: &Client, name: &'static str, arguments: Value) -> Value {
    structured(&call_tool(client, name, arguments).await)
}

/// [`refusal`] of a call of `name` with `arguments`.
async fn call_refused(client: &Client, name: &'static str, arguments: Value) -> Value {
    refusal(&call_tool(client, name, arguments).await)
}

/// The `{"error", …}` JSON of a refused call: its structured content, of the shape
/// the output schema's refusal branch declares, and the same JSON as text.
fn refusal(result: &CallToolResult) -> Value {
    assert_eq!(result.is_error, Some(true), "{result:?}");
    let value = result
        .structured_content
        .clone()
        .expect("a refusal has structured content");
    let text = &result.content[0].as_text().expect("a text block").text;
    assert_eq!(serde_json::from_str::<Value>(text).unwrap(), value);
    let fields: BTreeSet<String> = value.as_object().unwrap().keys().cloned().collect();
    assert!(fields.contains("error"), "{value}");
    assert!(
        fields.is_subset(&names(&["error", "task_id"])),
        "{value} has fields the refusal schema does not declare"
    );
    value
}

const JSON_AND_SSE: &str = "application/json, text/event-stream";

fn initialize_body() -> Value {
    json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "raw-test", "version": "1.0"}
        }
    })
}

/// A raw JSON-RPC POST to `/mcp`, with or without a bearer token.
async fn post(url: &str, token: Option<&str>, body: &Value) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", JSON_AND_SSE)
        .header("mcp-protocol-version", "2025-06-18")
        .json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("http request")
}

fn properties(schema: &serde_json::Map<String, Value>) -> BTreeSet<String> {
    schema["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .cloned()
        .collect()
}

fn required(schema: &serde_json::Map<String, Value>) -> BTreeSet<String> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|names| {
            names
                .iter()
                .map(|name| name.as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|name| (*name).to_owned()).collect()
}

#[tokio::test]
async fn initialize_and_tools_list_describe_the_five_tools() {
    let (h, client) = alice_connected().await;
    let server = client.peer_info().expect("initialized");
    assert_eq!(server.server_info.as_ref().unwrap().name, "task-service");
    assert!(server.capabilities.tools.is_some());
    assert!(
        server
            .instructions
            .as_deref()
            .unwrap_or_default()
            .contains("task_id")
    );

    let tools: Vec<Tool> = client.list_all_tools().await.unwrap();
    let listed: BTreeSet<String> = tools.iter().map(|tool| tool.name.to_string()).collect();
    assert_eq!(listed, names(&TOOL_NAMES));

    // (tool, input properties, required inputs, output properties,
    //  read-only, destructive, idempotent); `user_id` is offered but never required
    // (invariant 6).
    let expected = [
        (
            "add_task",
            &["user_id", "title", "description"][..],
            &["title"][..],
            &["task_id", "status", "title"][..],
            false,
            false,
            false,
        ),
        (
            "list_tasks",
            &["user_id", "status"],
            &[],
            &["tasks", "count", "filter"],
            true,
            false,
            true,
        ),
        (
            "complete_task",
            &["user_id", "task_id"],
            &["task_id"],
            &["task_id", "status", "title"],
            false,
            false,
            true,
        ),
        (
            "delete_task",
            &["user_id", "task_id"],
            &["task_id"],
            &["task_id", "status", "title"],
            false,
            true,
            true,
        ),
        (
            "update_task",
            &["user_id", "task_id", "title", "description"],
            &["task_id"],
            &["task_id", "status", "title"],
            false,
            true,
            true,
        ),
    ];
    for (name, inputs, needed, outputs, read_only, destructive, idempotent) in expected {
        let tool = tools.iter().find(|tool| tool.name == name).unwrap();
        assert!(
            tool.description.as_deref().is_some_and(|d| d.len() > 20),
            "{name} is described"
        );
        let input = &tool.input_schema;
        assert_eq!(input["type"], "object", "{name}");
        assert_eq!(properties(input), names(inputs), "{name} inputs");
        assert_eq!(required(input), names(needed), "{name} required inputs");
        for (property, schema) in input["properties"].as_object().unwrap() {
            assert!(
                schema.get("description").is_some(),
                "{name}.{property} is described for the model"
            );
        }
        let declared = tool
            .output_schema
            .as_ref()
            .unwrap_or_else(|| panic!("{name} has an output schema"));
        assert_eq!(declared["type"], "object", "{name}");
        let output = proto_schemas::tools::result_schema(declared)
            .unwrap_or_else(|| panic!("{name} declares its result"));
        let refused = proto_schemas::tools::refusal_schema(declared)
            .unwrap_or_else(|| panic!("{name} declares its refusal"));
        assert_eq!(properties(refused), names(&["error", "task_id"]), "{name}");
        assert_eq!(required(refused), names(&["error"]), "{name}");
        assert_eq!(properties(output), names(outputs), "{name} outputs");
        assert_eq!(
            required(output),
            names(outputs),
            "{name} always returns every output field"
        );

        let hints = tool
            .annotations
            .as_ref()
            .unwrap_or_else(|| panic!("{name} is annotated"));
        assert_eq!(hints.read_only_hint, Some(read_only), "{name} read-only");
        assert_eq!(
            hints.destructive_hint,
            Some(destructive),
            "{name} destructive"
        );
        assert_eq!(hints.idempotent_hint, Some(idempotent), "{name} idempotent");
        assert_eq!(hints.open_world_hint, Some(false), "{name} open-world");
    }
    disconnect(h, client).await;
}

/// Every subschema of `schema`, itself included.
fn subschemas(schema: &Value) -> Vec<&serde_json::Map<String, Value>> {
    let (mut found, mut unseen) = (Vec::new(), vec![schema]);
    while let Some(value) = unseen.pop() {
        match value {
            Value::Object(object) => {
                found.push(object);
                unseen.extend(object.values());
            }
            Value::Array(items) => unseen.extend(items),
            _ => {}
        }
    }
    found
}

#[tokio::test]
async fn listed_schemas_are_self_contained_and_the_user_is_optional() {
    let (h, client) = alice_connected().await;
    for tool in client.list_all_tools().await.unwrap() {
        let name = &tool.name;
        let output = tool.output_schema.clone().expect("an output schema");
        for (view, schema) in [("input", tool.input_schema.clone()), ("output", output)] {
            let schema = Value::Object((*schema).clone());
            let text = schema.to_string();
            assert!(
                !text.contains("$ref") && !text.contains("$defs"),
                "{name} {view}: {text}"
            );
            for subschema in subschemas(&schema) {
                let format = subschema.get("format").and_then(Value::as_str);
                assert!(
                    !matches!(format, Some(f) if f.starts_with("int") || f.starts_with("uint")),
                    "{name} {view} uses the nonstandard format {format:?}"
                );
            }
        }
        let user = &tool.input_schema["properties"]["user_id"];
        assert_eq!(user["type"], json!(["string", "null"]), "{name}: {user}");
        assert!(
            !required(&tool.input_schema).contains("user_id"),
            "{name} requires user_id"
        );
    }
    disconnect(h, client).await;
}

#[tokio::test]
async fn calls_without_user_id_act_for_the_tokens_user() {
    let (h, client) = alice_connected().await;
    h.tool("bob", "add_task", json!({"title": "Bob's task"}))
        .await;
    assert_eq!(
        call_structured(&client, "add_task", json!({"title": "Buy milk"})).await,
        json!({"task_id": 1, "status": "created", "title": "Buy milk"})
    );
    // The token's own id is accepted as well, as before.
    assert_eq!(
        call_structured(
            &client,
            "add_task",
            json!({"user_id": "alice", "title": "Call mum"})
        )
        .await["task_id"],
        2
    );
    let completed = call_tool(&client, "complete_task", json!({"task_id": 1})).await;
    assert_eq!(structured(&completed)["status"], "completed");
    // What a strict-schema client sends when every property is required: null for
    // the user and for the field that does not change.
    assert_eq!(
        call_structured(
            &client,
            "update_task",
            json!({"user_id": null, "task_id": 2, "title": "Call dad", "description": null})
        )
        .await["title"],
        "Call dad"
    );
    assert_eq!(
        call_structured(&client, "list_tasks", json!({})).await,
        json!({
            "tasks": [
                {"id": 1, "title": "Buy milk", "description": "", "completed": true},
                {"id": 2, "title": "Call dad", "description": "", "completed": false}
            ],
            "count": 2,
            "filter": "all"
        })
    );
    let deleted = call_tool(&client, "delete_task", json!({"task_id": 2})).await;
    assert_eq!(structured(&deleted)["status"], "deleted");

    // Alice's calls went to her list only; Bob's is untouched.
    assert_eq!(h.events("alice").await.len(), 5);
    assert_eq!(h.events("bob").await.len(), 1);
    disconnect(h, client).await;
}

#[tokio::test]
async fn every_tool_works_over_mcp() {
    let (h, client) = alice_connected().await;
    assert_eq!(
        call_structured(
            &client,
            "add_task",
            json!({"user_id": "alice", "title": "Buy milk"})
        )
        .await,
        json!({"task_id": 1, "status": "created", "title": "Buy milk"})
    );
    assert_eq!(
        call_structured(
            &client,
            "add_task",
            json!({"user_id": "alice", "title": "Call mum", "description": "Sunday"})
        )
        .await["task_id"],
        2
    );
    assert_eq!(
        call_structured(&client, "list_tasks", json!({"user_id": "alice"})).await,
        json!({
            "tasks": [
                {"id": 1, "title": "Buy milk", "description": "", "completed": false},
                {"id": 2, "title": "Call mum", "description": "Sunday", "completed": false}
            ],
            "count": 2,
            "filter": "all"
        })
    );

    // Each change answers with the task it changed.
    for (name, arguments, expected) in [
        (
            "complete_task",
            json!({"user_id": "alice", "task_id": 1}),
            json!({"task_id": 1, "status": "completed", "title": "Buy milk"}),
        ),
        (
            "update_task",
            json!({"user_id": "alice", "task_id": 2, "title": "Call dad"}),
            json!({"task_id": 2, "status": "updated", "title": "Call dad"}),
        ),
    ] {
        assert_eq!(call_structured(&client, name, arguments).await, expected);
    }
    let pending = json!({"user_id": "alice", "status": "pending"});
    assert_eq!(
        call_structured(&client, "list_tasks", pending).await["count"],
        1
    );
    assert_eq!(
        call_structured(
            &client,
            "delete_task",
            json!({"user_id": "alice", "task_id": 2})
        )
        .await,
        json!({"task_id": 2, "status": "deleted", "title": "Call dad"})
    );

    // Domain refusals are tool errors in the reference's shape.
    let missing = call_tool(
        &client,
        "complete_task",
        json!({"user_id": "alice", "task_id": 99}),
    )
    .await;
    assert_eq!(
        refusal(&missing),
        json!({"error": "Task not found", "task_id": 99})
    );
    assert_eq!(
        call_refused(
            &client,
            "add_task",
            json!({"user_id": "alice", "title": "   "})
        )
        .await,
        json!({"error": "Title must not be empty"})
    );
    // Arguments that do not fit the schema are a tool error naming the problem.
    let untitled = call_tool(&client, "add_task", json!({"user_id": "alice"})).await;
    assert_eq!(untitled.is_error, Some(true));
    let text = &untitled.content[0].as_text().unwrap().text;
    assert!(text.contains("missing field `title`"), "{text}");

    // The same list is what NATS commands see: one handler, one log.
    let over_nats = h.tool("alice", "list_tasks", json!({})).await;
    assert_eq!(
        over_nats["tasks"],
        json!([{"id": 1, "title": "Buy milk", "description": "", "completed": true}])
    );
    assert_eq!(h.events("alice").await.len(), 5);
    disconnect(h, client).await;
}

#[tokio::test]
async fn requests_without_a_valid_token_are_401() {
    let h = Harness::start(1).await;
    let url = h.replicas[0].mcp_url();
    let foreign = platform::auth::JwtKeys::new(b"another-secret")
        .mint(&testkit::user_id("alice"), Duration::from_secs(3600));
    for (token, expected) in [
        (None, "missing bearer token"),
        (Some("not-a-jwt"), "invalid bearer token"),
        (Some(foreign.as_str()), "invalid bearer token"),
    ] {
        let response = post(&url, token, &initialize_body()).await;
        assert_eq!(
            response.status(),
            reqwest::StatusCode::UNAUTHORIZED,
            "{token:?}"
        );
        let challenge = response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(challenge.starts_with("Bearer"), "{challenge}");
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            json!({"error": expected})
        );
    }
    let basic = reqwest::Client::new()
        .post(&url)
        .header("authorization", "Basic YWxpY2U6cGFzcw==")
        .header("content-type", "application/json")
        .header("accept", JSON_AND_SSE)
        .json(&initialize_body())
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), reqwest::StatusCode::UNAUTHORIZED);

    // rmcp's own client gives up too, and nothing reached the tools.
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url.clone()).auth_header("forged"),
    );
    assert!(().serve(transport).await.is_err());
    let response = post(&url, Some(&h.token("alice")), &initialize_body()).await;
    assert_eq!(response.status(), reqwest::StatusCode::OK);

    // Health needs no token.
    let health = reqwest::get(format!("http://{}/healthz", h.replicas[0].addr))
        .await
        .unwrap();
    assert_eq!(health.status(), reqwest::StatusCode::OK);
    h.stop().await;
}

#[tokio::test]
async fn a_user_id_naming_someone_else_is_refused_and_changes_nothing() {
    let (h, client) = alice_connected().await;
    h.tool("bob", "add_task", json!({"title": "Bob's task"}))
        .await;

    for (tool, arguments) in [
        ("add_task", json!({"user_id": "bob", "title": "injected"})),
        ("list_tasks", json!({"user_id": "bob"})),
        ("complete_task", json!({"user_id": "bob", "task_id": 1})),
        ("delete_task", json!({"user_id": "bob", "task_id": 1})),
        (
            "update_task",
            json!({"user_id": "bob", "task_id": 1, "title": "hijacked"}),
        ),
    ] {
        assert_eq!(
            call_refused(&client, tool, arguments).await,
            json!({"error": USER_MISMATCH}),
            "{tool}"
        );
    }
    assert_eq!(h.events("bob").await.len(), 1);
    assert!(h.events("alice").await.is_empty());
    let bobs = h.tool("bob", "list_tasks", json!({})).await;
    assert_eq!(
        bobs["tasks"],
        json!([{"id": 1, "title": "Bob's task", "description": "", "completed": false}])
    );
    disconnect(h, client).await;
}

#[tokio::test]
async fn any_replica_answers_any_request_without_a_session() {
    let h = Harness::start(2).await;
    let token = h.token("alice");
    let initialized = post(&h.replicas[0].mcp_url(), Some(&token), &initialize_body()).await;
    assert_eq!(initialized.status(), reqwest::StatusCode::OK);
    assert!(
        initialized.headers().get("mcp-session-id").is_none(),
        "no session to keep"
    );

    // The next requests go to the other replica, which never saw the initialize.
    let add = json!({
        "jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "add_task", "arguments": {"user_id": "alice", "title": "Buy milk"}}
    });
    let response = post(&h.replicas[1].mcp_url(), Some(&token), &add).await;
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], 2);
    assert_eq!(
        body["result"]["structuredContent"],
        json!({"task_id": 1, "status": "created", "title": "Buy milk"})
    );

    let list = json!({
        "jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "list_tasks", "arguments": {"user_id": "alice"}}
    });
    let body: Value = post(&h.replicas[0].mcp_url(), Some(&token), &list)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["result"]["structuredContent"]["count"], 1);
    h.stop().await;
}

#[tokio::test]
async fn only_allowed_hosts_reach_mcp() {
    let h = Harness::start(1).await;
    let token = h.token("alice");
    let with_host = |url: String, host: &'static str| {
        let token = token.clone();
        async move {
            reqwest::Client::new()
                .post(url)
                .header("host", host)
                .header("content-type", "application/json")
                .header("accept", JSON_AND_SSE)
                .bearer_auth(token)
                .json(&initialize_body())
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // The default allows loopback names only: a rebinding attacker's name is refused.
    let refused = with_host(h.replicas[0].mcp_url(), "evil.example").await;
    assert_eq!(refused, reqwest::StatusCode::FORBIDDEN);

    // Behind an ingress, its public name is configured.
    let mut config = common::config(&h.db, &h.bus);
    config.mcp_allowed_hosts = vec!["tasks.example.com".into()];
    let replica = common::spawn(config).await;
    assert_eq!(
        with_host(replica.mcp_url(), "tasks.example.com").await,
        reqwest::StatusCode::OK
    );
    assert_eq!(
        with_host(replica.mcp_url(), "evil.example").await,
        reqwest::StatusCode::FORBIDDEN
    );
    replica.stop().await;
    h.stop().await;
}

#[tokio::test]
async fn a_tool_call_joins_the_callers_trace() {
    let h = Harness::start(1).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let add = json!({
        "jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "add_task", "arguments": {"user_id": "alice", "title": "Traced"}}
    });
    let response = reqwest::Client::new()
        .post(h.replicas[0].mcp_url())
        .header("content-type", "application/json")
        .header("accept", JSON_AND_SSE)
        .header("mcp-protocol-version", "2025-06-18")
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .bearer_auth(h.token("alice"))
        .json(&add)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let events = h.events("alice").await;
    assert_eq!(events.len(), 1);
    let traceparent = events[0]
        .metadata
        .traceparent
        .as_deref()
        .expect("traceparent stored");
    assert!(
        traceparent.starts_with(&format!("00-{trace_id}-")),
        "{traceparent}"
    );
    h.stop().await;
}
