//! `ApiError`: every way a request can fail, as the client sees it — an HTTP
//! status, a stable machine-readable code and a sentence for people. The
//! HTTP layer and the endpoints return it; the hub's domain refusals
//! (`hub::Refusal`) become one here, each with its own status, code and
//! message; `http::response` turns it into `{"error": CODE, "message": TEXT}`.

use std::fmt;
use std::time::Duration;

use hyper::StatusCode;

use crate::config::{
    MAX_CLIENTS_PER_USER, MAX_CLIENT_MSG_ID_BYTES, MAX_HISTORY_LIMIT, MAX_NAME_LEN,
    MAX_PASSWORD_BYTES, MAX_ROOMS, MAX_TEXT_BYTES,
};
use crate::hub::{Limited, Refusal};
use crate::limits::retry_after_secs;
use crate::store::StoreError;

/// A failed request. `code` is part of the API contract (clients branch on
/// it); `message` may change wording freely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds after which a retry may succeed (`Retry-After`), for a 429
    /// or 503 that knows.
    pub retry_after: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error, telling the client to retry after `wait`.
    pub fn retry_after(mut self, wait: Duration) -> ApiError {
        self.retry_after = Some(retry_after_secs(wait));
        self
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

    /// A /join's `auth` JWT was refused; `why` never quotes the token.
    pub fn bad_auth_token(why: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "bad_auth_token", why)
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

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> ApiError {
        match refusal {
            Refusal::InvalidUserName => ApiError::bad_request(
                "invalid_name",
                format!("a name is 1 to {MAX_NAME_LEN} letters, digits, `_`, `-` or `.`"),
            ),
            Refusal::InvalidRoomName => ApiError::bad_request(
                "invalid_name",
                format!("a room name is 1 to {MAX_NAME_LEN} letters, digits, `_`, `-` or `.`"),
            ),
            Refusal::InvalidPassword => ApiError::bad_request(
                "invalid_password",
                format!("a password is 1 to {MAX_PASSWORD_BYTES} bytes"),
            ),
            Refusal::BadCredentials { name } => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bad_credentials",
                format!("`{name}` is taken and the password does not match"),
            ),
            Refusal::BadAuthToken { why } => ApiError::bad_auth_token(why),
            Refusal::TooManyClients { name } => ApiError::too_many(
                "too_many_clients",
                format!(
                    "`{name}` already has {MAX_CLIENTS_PER_USER} client processes; /leave one first"
                ),
            ),
            Refusal::UnknownClient => ApiError::unknown_client(),
            Refusal::CursorExpired {
                cursor,
                oldest_cursor,
            } => ApiError::new(
                StatusCode::GONE,
                "cursor_expired",
                format!(
                    "events after cursor {cursor} were dropped (oldest kept: {oldest_cursor}); GET /sync and reload history"
                ),
            ),
            Refusal::CursorAhead { cursor, head } => ApiError::bad_request(
                "invalid_cursor",
                format!("cursor {cursor} is ahead of the newest event ({head})"),
            ),
            Refusal::InvalidText => ApiError::bad_request(
                "invalid_text",
                format!("text must be 1 to {MAX_TEXT_BYTES} bytes of UTF-8"),
            ),
            Refusal::InvalidClientMsgId => ApiError::invalid_param(
                "client_msg_id",
                &format!("1 to {MAX_CLIENT_MSG_ID_BYTES} bytes"),
            ),
            Refusal::InvalidHistoryLimit => {
                ApiError::invalid_param("limit", &format!("between 1 and {MAX_HISTORY_LIMIT}"))
            }
            Refusal::UnknownConversation { conversation } => {
                ApiError::unknown_conversation(&conversation)
            }
            Refusal::NotMember { conversation } => ApiError::not_member(&conversation),
            Refusal::DialogWithSelf => {
                ApiError::bad_request("invalid_user", "a dialog needs another user")
            }
            Refusal::UserOffline { user } => ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_user",
                format!("`{user}` is not online"),
            ),
            Refusal::TooManyRooms => ApiError::too_many(
                "too_many_rooms",
                format!("the server holds its maximum of {MAX_ROOMS} rooms"),
            ),
            Refusal::CannotLeaveLobby => {
                ApiError::bad_request("cannot_leave_lobby", "every online user is in the lobby")
            }
            Refusal::NotARoom => ApiError::bad_request(
                "not_a_room",
                "dialogs end when a member goes offline; only rooms can be left",
            ),
            Refusal::NotStored => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_stored",
                "the change could not be stored in time; retry (a /send with the same client_msg_id)",
            ),
            Refusal::RateLimited { limited, wait } => {
                ApiError::too_many("rate_limited", limited_message(limited)).retry_after(wait)
            }
            Refusal::Busy { wait } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "the server is checking too many passwords; retry shortly",
            )
            .retry_after(wait),
            Refusal::SignupClosed { name } => ApiError::new(
                StatusCode::FORBIDDEN,
                "signup_closed",
                format!("there is no account `{name}` and this server creates none"),
            ),
            Refusal::StoreUnavailable => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the server could not store or read data; retry later",
            ),
        }
    }
}

/// What a 429 `rate_limited` says was done too often.
fn limited_message(limited: Limited) -> &'static str {
    match limited {
        Limited::Signups => "too many new accounts from your address; retry later",
        Limited::WrongPasswords => {
            "too many wrong passwords for this name from your address; retry later"
        }
        Limited::BadJoinTokens => {
            "too many invalid JWTs from your address; retry later with a fresh one"
        }
        Limited::StatusChanges => "too many status changes; retry later",
        Limited::Sends => "sending too fast; retry later with the same client_msg_id",
        Limited::RoomCreations => "too many rooms created; retry later",
    }
}

/// A store failure met outside the hub: logged, and answered like the
/// hub's `Refusal::StoreUnavailable`.
impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        Refusal::from(error).into()
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
