//! `Refusal`: every reason the hub turns a request down, as domain facts
//! with the data needed to explain them. The hub knows nothing of HTTP;
//! `crate::error` maps each variant to the status, code and message the API
//! answers.

use std::time::Duration;

use crate::store::StoreError;

/// What the hub's operations return.
pub type HubResult<T> = Result<T, Refusal>;

/// Why the hub refused a request. One variant per refusal a client can
/// branch on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A user name that is not 1 to `MAX_NAME_LEN` plain characters.
    InvalidUserName,
    /// A room name that is not 1 to `MAX_NAME_LEN` plain characters.
    InvalidRoomName,
    /// A password that is empty or over `MAX_PASSWORD_BYTES`.
    InvalidPassword,
    /// The name is claimed and the password does not match (or the name
    /// joins with a JWT, not a password).
    BadCredentials { name: String },
    /// A /join's JWT is not valid, or names a password account; `why` says
    /// which (never quoting the token).
    BadAuthToken { why: String },
    /// The user already has `MAX_CLIENTS_PER_USER` client processes.
    TooManyClients { name: String },
    /// No client has this token (never had, left, or was swept).
    UnknownClient,
    /// The cursor is older than the oldest event the mailbox keeps.
    CursorExpired { cursor: u64, oldest_cursor: u64 },
    /// The cursor is ahead of the newest event: never handed out.
    CursorAhead { cursor: u64, head: u64 },
    /// Message text that is empty or over `MAX_TEXT_BYTES`.
    InvalidText,
    /// A `client_msg_id` that is empty or over `MAX_CLIENT_MSG_ID_BYTES`.
    InvalidClientMsgId,
    /// A history page size of 0 or over `MAX_HISTORY_LIMIT`.
    InvalidHistoryLimit,
    /// No room or live dialog has this id.
    UnknownConversation { conversation: String },
    /// The conversation exists and the user is not in it.
    NotMember { conversation: String },
    /// A dialog asked for with oneself.
    DialogWithSelf,
    /// The other user of a dialog is not online.
    UserOffline { user: String },
    /// A new room would exceed `MAX_ROOMS`.
    TooManyRooms,
    /// The lobby cannot be left: every online user is in it.
    CannotLeaveLobby,
    /// /rooms/leave named a dialog.
    NotARoom,
    /// A /join or /send did not become durable in time; a retry is safe.
    NotStored,
    /// Something was done too often (see `crate::limits`); a retry after
    /// `wait` may succeed.
    RateLimited { limited: Limited, wait: Duration },
    /// Too many /join requests wait to have a password checked; a retry
    /// after `wait` may succeed.
    Busy { wait: Duration },
    /// /join with a new name while sign-ups are closed.
    SignupClosed { name: String },
    /// The store failed to read or write (logged where it happened).
    StoreUnavailable,
}

/// Which rate limit a `Refusal::RateLimited` hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// New accounts per client address.
    Signups,
    /// Wrong passwords per (name, client address).
    WrongPasswords,
    /// Invalid join JWTs per client address.
    BadJoinTokens,
    /// /status calls per client process.
    StatusChanges,
    /// Messages per user.
    Sends,
    /// Rooms created per user.
    RoomCreations,
}

impl From<StoreError> for Refusal {
    fn from(error: StoreError) -> Refusal {
        tracing::error!(%error, "store failed");
        Refusal::StoreUnavailable
    }
}
