//! Tokens from an identity provider, end to end: the test is the provider (keys made
//! here, a JWKS served over HTTP), the stack is configured with its JWKS URL, issuer
//! and audience, and every door a person or client uses (chat, reads, the web page's
//! calls, MCP) takes its RS256, ES256 and EdDSA tokens and refuses the wrong ones with
//! a 401 that points at the protected-resource metadata.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use rmcp::ServiceExt as _;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};
use system_tests::{Stack, StackOptions, binary};
use testkit::{KeyKind, TestIdp, TestKey, eventually, expect_json, open_event_stream};

const ISSUER: &str = "https://idp.test.example/";
const AUDIENCE: &str = "taskchat-api";
/// The stack's AUTH_JWKS_MIN_REFRESH_SECS.
const MIN_REFRESH: Duration = Duration::from_secs(2);

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// What a provider puts in an access token: no `iat`, as RFC 7519 allows.
fn claims(user: &str) -> Value {
    json!({"sub": user, "exp": now() + 600, "iss": ISSUER, "aud": AUDIENCE})
}

/// `method {gateway}{path}` holding `token`, as a client with a provider's token sends it.
fn with_token(
    stack: &Stack,
    method: reqwest::Method,
    path: &str,
    token: &str,
) -> reqwest::RequestBuilder {
    stack
        .http()
        .request(method, format!("{}{path}", stack.gateway))
        .bearer_auth(token)
}

/// Sends `request`; the status and the `WWW-Authenticate` header of the answer.
async fn status_and_challenge(request: reqwest::RequestBuilder) -> (StatusCode, Option<String>) {
    let response = request.send().await.expect("answered");
    let challenge = response
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .map(|value| value.to_str().unwrap().to_owned());
    (response.status(), challenge)
}

/// `GET {url}` with `token`; the status and the `WWW-Authenticate` header.
async fn get_with(stack: &Stack, url: &str, token: &str) -> (StatusCode, Option<String>) {
    status_and_challenge(stack.http().get(url).bearer_auth(token)).await
}

/// A raw MCP `initialize` with `token`; the status and the `WWW-Authenticate` header.
async fn mcp_initialize(stack: &Stack, token: &str) -> (StatusCode, Option<String>) {
    status_and_challenge(
        stack
            .http()
            .post(&stack.mcp)
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .json(&json!({
                "jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "auth-oidc-test", "version": "1"}
                }
            })),
    )
    .await
}

/// The titles `list_tasks` returns over MCP to a client holding `user`'s `token`.
async fn mcp_task_titles(stack: &Stack, user: &str, token: &str) -> Vec<String> {
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(stack.mcp.clone())
            .auth_header(token.to_owned()),
    );
    let client = ().serve(transport).await.expect("mcp initialize");
    let result = client
        .call_tool(
            CallToolRequestParams::new("list_tasks").with_arguments(
                json!({"user_id": user})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            ),
        )
        .await
        .expect("list_tasks answered");
    client.cancel().await.expect("mcp client stops");
    assert_eq!(result.is_error, Some(false), "{result:?}");
    let tasks = result.structured_content.expect("structured content");
    tasks["tasks"]
        .as_array()
        .expect("a task list")
        .iter()
        .map(|task| task["title"].as_str().unwrap().to_owned())
        .collect()
}

/// The base URL of task-service (its MCP endpoint without `/mcp`).
fn task_service(stack: &Stack) -> String {
    stack.mcp.trim_end_matches("/mcp").to_owned()
}

/// Asserts a refusal: 401 whose challenge says the token was refused and names the
/// metadata document.
fn assert_refused(what: &str, (status, challenge): (StatusCode, Option<String>), metadata: &str) {
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
    let challenge = challenge.unwrap_or_else(|| panic!("{what}: no WWW-Authenticate"));
    assert!(
        challenge.starts_with("Bearer ") && challenge.contains("error=\"invalid_token\""),
        "{what}: {challenge}"
    );
    assert!(
        challenge.contains(&format!("resource_metadata=\"{metadata}\"")),
        "{what}: {challenge}"
    );
}

/// base64url without padding, for hand-made tokens.
fn b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_provider_tokens_work_everywhere_and_wrong_ones_are_refused() {
    let idp = TestIdp::start().await.expect("the provider serves");
    let rsa = TestKey::generate(KeyKind::Rsa, "rsa-1");
    let ec = TestKey::generate(KeyKind::P256, "ec-1");
    let ed = TestKey::generate(KeyKind::Ed25519, "ed-1");
    for key in [&rsa, &ec, &ed] {
        idp.publish(key);
    }
    let options = StackOptions {
        dev_login: false,
        env: vec![
            ("AUTH_JWKS_URL", idp.jwks_url().to_owned()),
            ("AUTH_ISSUER", ISSUER.to_owned()),
            ("AUTH_AUDIENCE", AUDIENCE.to_owned()),
            (
                "AUTH_JWKS_MIN_REFRESH_SECS",
                MIN_REFRESH.as_secs().to_string(),
            ),
        ],
        ..StackOptions::default()
    };
    let stack = Stack::start_with(options).await.expect("the stack starts");
    let gateway_metadata = format!("{}/.well-known/oauth-protected-resource", stack.gateway);
    let mcp_metadata = format!(
        "{}/.well-known/oauth-protected-resource/mcp",
        task_service(&stack)
    );

    // An RS256 token without `iat` chats, reads and lists over MCP.
    let ada = rsa.sign(&claims("ada"));
    let answer = expect_json(
        with_token(&stack, Method::POST, "/api/ada/chat", &ada)
            .json(&json!({"message": "add a task to buy milk"})),
        StatusCode::OK,
    )
    .await;
    assert_eq!(answer["tool_calls"][0]["name"], "add_task", "{answer}");
    let title = answer["tool_calls"][0]["result"]["title"]
        .as_str()
        .expect("the added task's title")
        .to_owned();
    let tasks_url = format!("{}/api/ada/tasks", stack.gateway);
    eventually(
        Duration::from_secs(15),
        "the task in the read model",
        || async {
            let response = stack
                .http()
                .get(&tasks_url)
                .bearer_auth(&ada)
                .send()
                .await
                .ok()?;
            let body: Value = response.json().await.ok()?;
            (body["items"][0]["title"] == title.as_str()).then_some(())
        },
    )
    .await;
    assert_eq!(
        mcp_task_titles(&stack, "ada", &ada).await,
        vec![title.clone()]
    );

    // What the web page does with a pasted token: ask who it is, load the page's
    // lists, stream a turn.
    let me = expect_json(
        with_token(&stack, Method::GET, "/api/me", &ada),
        StatusCode::OK,
    )
    .await;
    assert_eq!(me, json!({"user_id": "ada"}));
    expect_json(
        with_token(&stack, Method::GET, "/api/ada/conversations", &ada),
        StatusCode::OK,
    )
    .await;
    let stream = open_event_stream(
        with_token(&stack, Method::POST, "/api/ada/chat/stream", &ada)
            .json(&json!({"message": "what is still open?"})),
    )
    .await;
    let events = testkit::read_events(stream).await;
    assert_eq!(
        events.last().map(|event| event.event.as_str()),
        Some("final"),
        "{events:?}"
    );

    // ES256 and EdDSA tokens work the same, each user seeing their own list.
    for (key, user) in [(&ec, "eve"), (&ed, "edd")] {
        let token = key.sign(&claims(user));
        let url = format!("{}/api/{user}/tasks", stack.gateway);
        assert_eq!(
            get_with(&stack, &url, &token).await.0,
            StatusCode::OK,
            "{user}"
        );
        assert!(
            mcp_task_titles(&stack, user, &token).await.is_empty(),
            "{user}"
        );
    }

    // Wrong tokens are 401 on the gateway and on MCP, pointing at the metadata.
    let mut wrong_issuer = claims("ada");
    wrong_issuer["iss"] = "https://evil.example/".into();
    let mut wrong_audience = claims("ada");
    wrong_audience["aud"] = "another-app".into();
    let mut expired = claims("ada");
    expired["exp"] = (now() - 600).into();
    let unknown_kid = TestKey::generate(KeyKind::Ed25519, "not-published");
    let payload = b64(claims("ada").to_string().as_bytes());
    // Algorithm confusion: HS256 with the provider's public key as the secret.
    let hs256_with_public_key = rsa.forge_hs256_with_public_key(&claims("ada"));
    let alg_none = format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
    let refused = [
        ("wrong issuer", rsa.sign(&wrong_issuer)),
        ("wrong audience", ec.sign(&wrong_audience)),
        ("expired", ed.sign(&expired)),
        ("unknown kid", unknown_kid.sign(&claims("ada"))),
        ("HS256 signed with the public key", hs256_with_public_key),
        ("alg none", alg_none),
    ];
    // Past the refresh interval since start-up, so that the unknown kid may refetch.
    tokio::time::sleep(MIN_REFRESH + Duration::from_millis(100)).await;
    let fetches_before = idp.fetches();
    for (what, token) in &refused {
        assert_refused(
            what,
            get_with(&stack, &tasks_url, token).await,
            &gateway_metadata,
        );
        assert_refused(what, mcp_initialize(&stack, token).await, &mcp_metadata);
    }
    // The unknown kid made each service fetch the document again, once: more tokens
    // with unknown kids within the refresh interval cost the provider nothing.
    let burst = TestKey::generate(KeyKind::Ed25519, "burst");
    for _ in 0..20 {
        let token = burst.sign(&claims("ada"));
        assert_eq!(
            get_with(&stack, &tasks_url, &token).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    let refetched = idp.fetches() - fetches_before;
    assert!(
        (1..=4).contains(&refetched),
        "{refetched} fetches for 1 + 20 tokens with unknown kids"
    );

    // Key rotation: a key published after start is picked up on its first token.
    let rotated = TestKey::generate(KeyKind::Ed25519, "ed-2");
    idp.publish(&rotated);
    tokio::time::sleep(MIN_REFRESH + Duration::from_millis(100)).await;
    let token = rotated.sign(&claims("ada"));
    assert_eq!(get_with(&stack, &tasks_url, &token).await.0, StatusCode::OK);
    assert_eq!(mcp_task_titles(&stack, "ada", &token).await, vec![title]);

    // The metadata documents name the resource and the issuer.
    let document = expect_json(stack.http().get(&mcp_metadata), StatusCode::OK).await;
    assert_eq!(
        document,
        json!({
            "resource": stack.mcp,
            "authorization_servers": [ISSUER],
            "bearer_methods_supported": ["header"],
            "resource_name": "taskchat",
        })
    );
    let root = format!(
        "{}/.well-known/oauth-protected-resource",
        task_service(&stack)
    );
    assert_eq!(
        expect_json(stack.http().get(&root), StatusCode::OK).await,
        document
    );
    let document = expect_json(stack.http().get(&gateway_metadata), StatusCode::OK).await;
    assert_eq!(document["resource"], format!("{}/", stack.gateway));
    assert_eq!(document["authorization_servers"], json!([ISSUER]));

    // HS256 tokens of the stack's secret still work next to the provider's, `iat` or not.
    let local = stack.keys.sign(&platform::auth::Claims {
        sub: "ada".into(),
        exp: now() + 600,
        iat: None,
        nbf: None,
    });
    assert_eq!(get_with(&stack, &tasks_url, &local).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_short_secret_outside_dev_mode_stops_the_start_with_the_reason() {
    for service in ["gateway", "task-service"] {
        let output = tokio::process::Command::new(binary(service))
            .args(["--auth-jwt-secret", "too-short", "--listen", "127.0.0.1:0"])
            .env_remove("AUTH_DEV_LOGIN")
            .env_remove("AUTH_JWKS_URL")
            .env("NATS_URL", testkit::nats_url())
            .output()
            .await
            .expect("the binary runs");
        assert!(!output.status.success(), "{service} started");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("AUTH_JWT_SECRET is 9 bytes") && stderr.contains("at least 32"),
            "{service}: {stderr}"
        );
    }
}
