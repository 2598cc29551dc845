//! The parts of the API description that many routes share: the path parameters of
//! `/api/{user_id}/…` routes, the `Idempotency-Key` header, and the error responses
//! that one check gives wherever it runs (the token by [`AuthUser`], a JSON body by
//! [`ApiJson`], a new turn by the admission control, the wait for a turn's answer),
//! so that each is described once and the same everywhere.
//!
//! [`AuthUser`]: crate::extract::AuthUser
//! [`ApiJson`]: crate::extract::ApiJson

use std::collections::BTreeMap;

use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, SchemaType, Type};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Required, Response, ResponseBuilder, Schema};
use utoipa::{IntoParams, IntoResponses, PartialSchema, ToSchema};

use crate::error::ErrorBody;
use crate::idempotency::MAX_KEY_CHARS;

/// The `{user_id}` of a `/api/{user_id}/…` route.
pub(crate) struct UserPath;

impl IntoParams for UserPath {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![path_parameter(
            "user_id",
            "The user; must be the token's subject",
            ObjectBuilder::new().schema_type(Type::String),
        )]
    }
}

/// The `{user_id}` and `{conversation_id}` of a route on one of the user's conversations.
pub(crate) struct ConversationPath;

impl IntoParams for ConversationPath {
    fn into_params(in_provider: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let mut params = UserPath::into_params(in_provider);
        params.push(path_parameter(
            "conversation_id",
            "The conversation",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid))),
        ));
        params
    }
}

/// A parameter of the request's path.
fn path_parameter(name: &str, description: &str, schema: impl Into<Schema>) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .description(Some(description))
        .schema(Some(schema.into()))
        .build()
}

/// The optional `Idempotency-Key` header of a route that starts a turn, as
/// [`IdempotencyKey::from_headers`] accepts it.
///
/// [`IdempotencyKey::from_headers`]: crate::idempotency::IdempotencyKey::from_headers
pub(crate) struct IdempotencyKeyHeader;

impl IntoParams for IdempotencyKeyHeader {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        // Printable ASCII, without blanks at either end (they are trimmed).
        let pattern = format!("^[!-~]([ -~]{{0,{}}}[!-~])?$", MAX_KEY_CHARS - 2);
        vec![
            ParameterBuilder::new()
                .name("Idempotency-Key")
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(format!(
                    "Retry key, 1 to {MAX_KEY_CHARS} printable ASCII characters; a retry with the same key gets the first request's turn, which runs once"
                )))
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
                        .min_length(Some(1))
                        .max_length(Some(MAX_KEY_CHARS))
                        .pattern(Some(pattern)),
                ))
                .build(),
        ]
    }
}

/// Declares each `$set` as a type whose [`IntoResponses`] are the given responses, by
/// status.
macro_rules! response_sets {
    ($($(#[$doc:meta])* $set:ident { $($status:literal => $response:expr),+ $(,)? })+) => {$(
        $(#[$doc])*
        pub(crate) struct $set;

        impl IntoResponses for $set {
            fn responses() -> BTreeMap<String, RefOr<Response>> {
                BTreeMap::from([$(($status.to_owned(), $response.build().into())),+])
            }
        }
    )+};
}

/// What a 401 says, from either token check.
const UNAUTHORIZED: &str = "Missing, invalid or expired token";

response_sets! {
    /// 401: the bearer token is missing, invalid or expired ([`TokenUser`]).
    ///
    /// [`TokenUser`]: crate::extract::TokenUser
    Unauthorized {
        "401" => error(UNAUTHORIZED),
    }

    /// 401 and 403: what a `/api/{user_id}/…` route refuses before anything else, a bad
    /// token or a token for another user than the path's ([`AuthUser`]).
    ///
    /// [`AuthUser`]: crate::extract::AuthUser
    AuthErrors {
        "401" => error(UNAUTHORIZED),
        "403" => error("The token is for another user"),
    }

    /// 400, 413 and 415: a body that is not JSON, over the gateway's size limit (on
    /// every route), or not sent as JSON ([`ApiJson`]).
    ///
    /// [`ApiJson`]: crate::extract::ApiJson
    JsonBodyErrors {
        "400" => error("The body is not JSON"),
        "413" => error("The body is over the size limit"),
        "415" => error("No body, or a body not sent as application/json"),
    }

    /// 429 and 503: a new turn refused by the admission control, or for want of the
    /// bus; both say when to try again.
    TurnRefusals {
        "429" => error("The user has too many turns running (`too_many_turns`) or sent too many messages this minute (`rate_limited`); see `Retry-After`")
            .header("Retry-After", retry_after()),
        "503" => error("The message bus is unavailable, or the queue of turns is full (`busy`); see `Retry-After`")
            .header("Retry-After", retry_after()),
    }

    /// 502 and 504: a turn the route waits for failed, or did not answer in time.
    TurnWaitErrors {
        "502" => error("The turn failed (the model or its provider); the body carries the request id"),
        "504" => error("No answer in time; the turn goes on and its answer will appear in the conversation (the body carries the request id)"),
    }
}

/// A response with the API's error body.
fn error(description: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name(ErrorBody::name())))
            .build(),
    )
}

/// The `Retry-After` header of a refusal.
fn retry_after() -> Header {
    HeaderBuilder::new()
        .schema(Some(u64::schema()))
        .description(Some("Seconds to wait before sending again"))
        .build()
}
