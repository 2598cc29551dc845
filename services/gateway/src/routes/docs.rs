//! The parts of the API description that many routes share: the path parameters of
//! `/api/{user_id}/…` routes and the error responses that one check gives wherever it
//! runs (the token by [`AuthUser`], a JSON body by [`ApiJson`], a new turn by the
//! admission control), so that each is described once and the same everywhere.
//!
//! [`AuthUser`]: crate::extract::AuthUser
//! [`ApiJson`]: crate::extract::ApiJson

use std::collections::BTreeMap;

use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, RefOr, Required, Response};
use utoipa::openapi::{ResponseBuilder, Schema};
use utoipa::{IntoParams, IntoResponses, PartialSchema, ToSchema};

use crate::error::ErrorBody;

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

fn path_parameter(name: &str, description: &str, schema: impl Into<Schema>) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .description(Some(description))
        .schema(Some(schema.into()))
        .build()
}

/// 401: the bearer token is missing, invalid or expired.
pub(crate) struct Unauthorized;

impl IntoResponses for Unauthorized {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses([("401", "Missing, invalid or expired token")])
    }
}

/// 401 and 403: what a `/api/{user_id}/…` route refuses before anything else, a bad
/// token or a token for another user than the path's.
pub(crate) struct AuthErrors;

impl IntoResponses for AuthErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let mut responses = Unauthorized::responses();
        responses.append(&mut error_responses([(
            "403",
            "The token is for another user",
        )]));
        responses
    }
}

/// 400 and 415: a body that is not JSON, or not sent as JSON.
pub(crate) struct JsonBodyErrors;

impl IntoResponses for JsonBodyErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses([
            ("400", "The body is not JSON"),
            ("415", "No body, or a body not sent as application/json"),
        ])
    }
}

/// 413: a body over the gateway's size limit.
pub(crate) struct BodyTooLarge;

impl IntoResponses for BodyTooLarge {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        error_responses([("413", "The body is over the size limit")])
    }
}

/// 429 and 503: a new turn refused by the admission control or for want of the bus,
/// both with the `Retry-After` the client should wait.
pub(crate) struct TurnRefusals;

impl IntoResponses for TurnRefusals {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let retry_after = HeaderBuilder::new()
            .schema(Some(u64::schema()))
            .description(Some("Seconds to wait before sending again"))
            .build();
        [
            (
                "429",
                "The user has too many turns running (`too_many_turns`) or sent too many messages this minute (`rate_limited`); see `Retry-After`",
            ),
            (
                "503",
                "The message bus is unavailable, or the queue of turns is full (`busy`); see `Retry-After`",
            ),
        ]
        .into_iter()
        .map(|(status, description)| {
            let response = error_response(description).header("Retry-After", retry_after.clone());
            (status.to_owned(), response.build().into())
        })
        .collect()
    }
}

/// Responses with the API's error body, by status.
fn error_responses<const N: usize>(
    responses: [(&str, &str); N],
) -> BTreeMap<String, RefOr<Response>> {
    responses
        .into_iter()
        .map(|(status, description)| {
            (
                status.to_owned(),
                error_response(description).build().into(),
            )
        })
        .collect()
}

/// A response with the API's error body.
fn error_response(description: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name(ErrorBody::name())))
            .build(),
    )
}
