//! Errors in OpenAI's wire shape, so OpenAI clients surface them as API errors.
//!
//! Every failure a client can cause is a 4xx with
//! `{"error": {"message", "type", "param", "code"}}`; async-openai reads exactly these
//! fields (`code` must be a string or null).

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error response in OpenAI's format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<String>,
    code: Option<&'static str>,
}

impl ApiError {
    /// A 400 `invalid_request_error`, optionally naming the offending parameter.
    pub(crate) fn invalid_request(message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_owned),
            code: None,
        }
    }

    /// A 404 for a path or model that does not exist.
    pub(crate) fn not_found(message: impl Into<String>, code: &'static str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: Some(code),
        }
    }

    /// Sets the machine-readable `code`.
    pub(crate) fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The HTTP status this error is sent with.
    #[cfg(test)]
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    /// The human-readable message.
    #[cfg(test)]
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    /// The parameter the error is about, if any.
    #[cfg(test)]
    pub(crate) fn param(&self) -> Option<&str> {
        self.param.as_deref()
    }
}

impl From<BytesRejection> for ApiError {
    /// Body-reading failures keep their status (413 for an oversized body, 400 for a
    /// broken one) but get OpenAI's error shape instead of axum's plain text.
    fn from(rejection: BytesRejection) -> Self {
        Self {
            status: rejection.status(),
            message: rejection.body_text(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        tracing::debug!(status = %self.status, message = %self.message, "request rejected");
        let body = Body {
            error: Detail {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        };
        (self.status, Json(body)).into_response()
    }
}
