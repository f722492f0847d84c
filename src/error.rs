//! `ApiError`: every way a request can fail, as the client sees it — an HTTP
//! status, a stable machine-readable code and a sentence for people. The hub
//! and the HTTP layer both return it; `http::response` turns it into
//! `{"error": CODE, "message": TEXT}`.

use std::fmt;

use hyper::StatusCode;

/// A failed request. `code` is part of the API contract (clients branch on
/// it); `message` may change wording freely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn missing_param(name: &str) -> ApiError {
        ApiError::bad_request(
            "missing_param",
            format!("the `{name}` parameter is required"),
        )
    }

    pub fn invalid_param(name: &str, expected: &str) -> ApiError {
        ApiError::bad_request("invalid_param", format!("`{name}` must be {expected}"))
    }

    pub fn unknown_client() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unknown_client",
            "this client is unknown or was removed for inactivity; POST /join again",
        )
    }

    pub fn not_member(conversation: &str) -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "not_member",
            format!("you are not a member of `{conversation}`"),
        )
    }

    pub fn unknown_conversation(conversation: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_conversation",
            format!("there is no conversation `{conversation}`"),
        )
    }

    pub fn too_many(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}
