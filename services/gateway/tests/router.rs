//! The router alone (`oneshot`, no server, no NATS): auth, input checks and the
//! shape of every error, all of which are decided before the bus is touched.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode, header};
use gateway::{AppState, Settings, router};
use platform::auth::{Claims, JwtKeys};
use proto_schemas::Subjects;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

const SECRET: &[u8] = b"router-test-secret-of-at-least-32-bytes";
const MAX_BODY: usize = 16 * 1024;

/// A state whose NATS client never connects (nothing listens on port 1).
async fn state(dev_login: bool) -> AppState {
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect("nats://127.0.0.1:1")
        .await
        .expect("connect returns at once with retry_on_initial_connect");
    let settings = Settings {
        reply_timeout: Duration::from_secs(1),
        query_timeout: Duration::from_secs(1),
        max_body_bytes: MAX_BODY,
        body_read_timeout: Duration::from_secs(1),
        http: Default::default(),
        dev_login,
        dev_token_ttl: Duration::from_secs(3600),
        stream_replicas: 1,
        queue_limits: Default::default(),
        turns_per_minute: 0,
        public_url: None,
    };
    AppState::new(
        client,
        Subjects::new("router"),
        JwtKeys::new(SECRET).into(),
        settings,
        CancellationToken::new(),
    )
}

fn token(user: &str) -> String {
    JwtKeys::new(SECRET).mint(&testkit::user_id(user), Duration::from_secs(600))
}

async fn send(
    state: AppState,
    request: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let response = router(state).oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, headers, body)
}

fn chat(user: &str, token: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut request =
        Request::post(format!("/api/{user}/chat")).header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    request.body(body.into()).unwrap()
}

/// A `GET path` without a token.
fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

/// Sends `request` to a router (with dev login on or off) and asserts it is refused
/// with `status` and the JSON error `code`; returns the error body.
async fn assert_refused(
    dev_login: bool,
    request: Request<Body>,
    status: StatusCode,
    code: &str,
) -> Value {
    let (got, _, error) = send(state(dev_login).await, request).await;
    assert_eq!(got, status, "{error}");
    assert_error(&error, code);
    error
}

/// A chat body from `token`'s user that is refused with 422 `code`, the message naming
/// `mentions`.
async fn assert_unprocessable(token: &str, body: impl Into<Body>, code: &str, mentions: &str) {
    let request = chat("ada", Some(token), body);
    let error = assert_refused(false, request, StatusCode::UNPROCESSABLE_ENTITY, code).await;
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains(mentions),
        "{error}"
    );
}

fn assert_error(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn tokens_are_required_and_checked() {
    let body = json!({"message": "hi"}).to_string();
    let (status, headers, error) = send(state(false).await, chat("ada", None, body.clone())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_error(&error, "missing_token");
    assert!(
        headers[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );

    let forged =
        JwtKeys::new(b"another-secret").mint(&testkit::user_id("ada"), Duration::from_secs(600));
    let now = chrono::Utc::now().timestamp();
    let expired = jsonwebtoken_encode(&Claims {
        sub: "ada".into(),
        exp: now - 3600,
        iat: Some(now - 7200),
        nbf: None,
    });
    for (bad, code) in [
        ("not.a.jwt", "invalid_token"),
        (forged.as_str(), "invalid_token"),
        (expired.as_str(), "expired_token"),
    ] {
        let request = chat("ada", Some(bad), body.clone());
        assert_refused(false, request, StatusCode::UNAUTHORIZED, code).await;
    }

    // A valid token for someone else: 403, even with a bad body.
    assert_refused(
        false,
        chat("bob", Some(&token("ada")), "{"),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;

    // Reads are guarded the same way.
    let request = Request::get("/api/bob/tasks")
        .header(header::AUTHORIZATION, format!("Bearer {}", token("ada")))
        .body(Body::empty())
        .unwrap();
    let (status, _, _) = send(state(false).await, request).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let request = Request::get("/api/ada/conversations")
        .body(Body::empty())
        .unwrap();
    let (status, _, _) = send(state(false).await, request).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A path that is not UTF-8 once decoded is the client's mistake: 400, not 500.
    let request = Request::get("/api/%FF/tasks")
        .header(header::AUTHORIZATION, format!("Bearer {}", token("ada")))
        .body(Body::empty())
        .unwrap();
    assert_refused(false, request, StatusCode::BAD_REQUEST, "invalid_path").await;
}

#[tokio::test]
async fn oversized_headers_get_431_with_the_error_body() {
    let ada = token("ada");
    let mut many =
        Request::get("/api/ada/tasks").header(header::AUTHORIZATION, format!("Bearer {ada}"));
    for index in 0..120 {
        many = many.header(format!("x-filler-{index}"), "1");
    }
    let error = assert_refused(
        false,
        many.body(Body::empty()).unwrap(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
    )
    .await;
    assert!(
        error["error"]["message"].as_str().unwrap().contains("100"),
        "{error}"
    );

    let big = Request::get("/api/ada/tasks")
        .header(header::AUTHORIZATION, format!("Bearer {ada}"))
        .header("x-filler", "x".repeat(20 * 1024))
        .body(Body::empty())
        .unwrap();
    assert_refused(
        false,
        big,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
    )
    .await;
}

#[tokio::test]
async fn me_names_the_token_user_and_refusals_point_at_the_resource_metadata() {
    let request = Request::get("/api/me")
        .header(header::AUTHORIZATION, format!("Bearer {}", token("ada")))
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = send(state(false).await, request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"user_id": "ada"}));

    // Refused with or without a token: the challenge says where the metadata is.
    for (token, invalid) in [(None, false), (Some("not.a.jwt"), true)] {
        let mut request = Request::get("/api/me").header(header::HOST, "chat.example:8080");
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let (status, headers, _) =
            send(state(false).await, request.body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let challenge = headers[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(
            challenge.starts_with("Bearer realm=\"taskchat\""),
            "{challenge}"
        );
        assert_eq!(
            challenge.contains("error=\"invalid_token\""),
            invalid,
            "{challenge}"
        );
        assert!(
            challenge.contains(
                "resource_metadata=\"http://chat.example:8080/.well-known/oauth-protected-resource\""
            ),
            "{challenge}"
        );
    }

    // The document names the gateway; no issuer is configured, so no authorization server.
    let request = Request::get("/.well-known/oauth-protected-resource")
        .header(header::HOST, "chat.example:8080")
        .header("x-forwarded-proto", "https")
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = send(state(false).await, request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["resource"], "https://chat.example:8080/");
    assert_eq!(body["bearer_methods_supported"], json!(["header"]));
    assert!(body.get("authorization_servers").is_none(), "{body}");
}

/// An HS256 token with arbitrary claims, signed with the test secret.
fn jsonwebtoken_encode(claims: &Claims) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

#[tokio::test]
async fn bad_bodies_get_400_413_415_and_422() {
    let ada = token("ada");
    let refused = |body: &str, status, code: &'static str| {
        assert_refused(
            false,
            chat("ada", Some(&ada), body.to_owned()),
            status,
            code,
        )
    };
    refused("{\"message\": ", StatusCode::BAD_REQUEST, "malformed_json").await;

    assert_unprocessable(&ada, "{\"text\": \"hi\"}", "invalid_body", "message").await;

    for empty in ["", "   \n"] {
        let body = json!({"message": empty}).to_string();
        refused(&body, StatusCode::UNPROCESSABLE_ENTITY, "empty_message").await;
    }

    let body = json!({"message": "x".repeat(4001)}).to_string();
    assert_unprocessable(&ada, body, "message_too_long", "4000").await;

    // A struct could be read from an array (fields by position): bodies are objects.
    assert_unprocessable(&ada, r#"["add milk", null]"#, "invalid_body", "JSON object").await;

    // U+0000 cannot be stored by Postgres: refused where it enters.
    let body = json!({"message": "add milk\u{0}"}).to_string();
    assert!(body.contains("\\u0000"), "{body}");
    assert_unprocessable(&ada, body, "invalid_message", "NUL").await;

    let body = json!({"message": "hi", "conversation_id": "not-a-uuid"}).to_string();
    let code = "invalid_conversation_id";
    refused(&body, StatusCode::UNPROCESSABLE_ENTITY, code).await;

    let body = json!({"message": "x".repeat(MAX_BODY)}).to_string();
    let error = refused(&body, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&MAX_BODY.to_string())
    );

    let request = Request::post("/api/ada/chat")
        .header(header::AUTHORIZATION, format!("Bearer {ada}"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("message=hi"))
        .unwrap();
    assert_refused(
        false,
        request,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;

    for key in [String::new(), "k".repeat(201)] {
        let request = Request::post("/api/ada/chat/stream")
            .header(header::AUTHORIZATION, format!("Bearer {ada}"))
            .header(header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", key)
            .body(Body::from(json!({"message": "hi"}).to_string()))
            .unwrap();
        assert_refused(
            false,
            request,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_idempotency_key",
        )
        .await;
    }

    // One request, several mistakes: the body's is reported first, then the key's,
    // then the message's.
    for (body, status, code) in [
        (
            "not json".to_owned(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            json!({"message": ""}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_idempotency_key",
        ),
    ] {
        let mut request = chat("ada", Some(&ada), body);
        request
            .headers_mut()
            .insert("Idempotency-Key", HeaderValue::from_static(""));
        assert_refused(false, request, status, code).await;
    }
}

#[tokio::test]
async fn bad_read_parameters_are_422() {
    let ada = token("ada");
    for (path, code) in [
        ("/api/ada/tasks?status=done", "invalid_query"),
        ("/api/ada/tasks?limit=0", "invalid_limit"),
        ("/api/ada/tasks?limit=many", "invalid_query"),
        ("/api/ada/conversations?limit=201", "invalid_limit"),
        (
            "/api/ada/conversations/42/messages",
            "invalid_conversation_id",
        ),
    ] {
        let request = Request::get(path)
            .header(header::AUTHORIZATION, format!("Bearer {ada}"))
            .body(Body::empty())
            .unwrap();
        assert_refused(false, request, StatusCode::UNPROCESSABLE_ENTITY, code).await;
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    assert_refused(false, get("/nope"), StatusCode::NOT_FOUND, "not_found").await;
    assert_refused(
        false,
        get("/api/ada/chat"),
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
}

#[tokio::test]
async fn readyz_is_503_without_nats_and_healthz_is_200() {
    assert_refused(
        false,
        get("/readyz"),
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
    )
    .await;
    let (status, _, body) = send(state(false).await, get("/healthz")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"status": "ok", "service": "gateway"}));
}

/// `POST /api/dev/token` asking a token for `user`.
fn dev_token_request(user: &str) -> Request<Body> {
    Request::post("/api/dev/token")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({ "user_id": user }).to_string()))
        .unwrap()
}

#[tokio::test]
async fn dev_token_route_exists_only_when_enabled() {
    assert_refused(
        false,
        dev_token_request("alice"),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    let (status, _, body) = send(state(true).await, dev_token_request("alice")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    let user = JwtKeys::new(SECRET)
        .verify(body["token"].as_str().unwrap())
        .unwrap();
    assert_eq!(user.as_str(), "alice");

    assert_refused(
        true,
        dev_token_request("a/b"),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_user_id",
    )
    .await;

    // A user named "dev" still reaches the chat route next to /api/dev/token.
    assert_refused(
        true,
        chat(
            "dev",
            Some(&token("dev")),
            json!({"message": ""}).to_string(),
        ),
        StatusCode::UNPROCESSABLE_ENTITY,
        "empty_message",
    )
    .await;
}

#[tokio::test]
async fn openapi_lists_every_route() {
    let (status, headers, doc) = send(state(false).await, get("/openapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/{user_id}/chat", "post"),
        ("/api/{user_id}/chat/stream", "post"),
        ("/api/{user_id}/conversations", "get"),
        (
            "/api/{user_id}/conversations/{conversation_id}/messages",
            "get",
        ),
        ("/api/{user_id}/tasks", "get"),
        ("/api/{user_id}/turns/{request_id}/events", "get"),
        ("/api/{user_id}/turns/{request_id}/cancel", "post"),
        ("/api/me", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|item| item.get(method)).is_some(),
            "{method} {path} missing"
        );
    }
    assert!(paths.get("/api/dev/token").is_none(), "dev login is off");
    let answer = &doc["components"]["schemas"]["ChatAnswer"]["properties"];
    for field in ["conversation_id", "response", "tool_calls"] {
        assert!(answer.get(field).is_some(), "ChatAnswer.{field}");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );

    let (_, _, doc) = send(state(true).await, get("/openapi.json")).await;
    assert!(doc["paths"]["/api/dev/token"]["post"].is_object());
}

#[tokio::test]
async fn the_root_serves_the_chat_page() {
    let response = router(state(false).await)
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&bytes).contains("/assets/app.js"));
}
