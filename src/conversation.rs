//! Conversations as clients see them: the lobby, rooms and dialogs, and how
//! their ids are made. Plain data shared by the hub (which keeps them), the
//! events that announce them, and the API answers that list them.

use serde::Serialize;

/// The global room every online user is in; also its conversation id.
pub const LOBBY: &str = "lobby";

/// Dialog ids are `dialog:A:B` with the two names sorted. `:` cannot occur
/// in a name, so a dialog id never collides with a room name.
pub const DIALOG_PREFIX: &str = "dialog:";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConversationKind {
    Room,
    Dialog,
}

/// A conversation as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conversation {
    pub id: String,
    pub kind: ConversationKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub members: Vec<String>,
    /// How many members there are, when `members` lists only the first of
    /// them (the lobby, whose members are everyone online).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member_count: Option<usize>,
}

impl Conversation {
    /// A room: its name is its id.
    pub fn room(name: &str, members: Vec<String>) -> Conversation {
        Conversation {
            id: name.to_owned(),
            kind: ConversationKind::Room,
            name: Some(name.to_owned()),
            members,
            member_count: None,
        }
    }

    /// The lobby, listing `first_members` of its `member_count` members.
    pub fn lobby(first_members: Vec<String>, member_count: usize) -> Conversation {
        Conversation {
            member_count: Some(member_count),
            ..Conversation::room(LOBBY, first_members)
        }
    }

    /// The dialog of two users, `members` sorted (see `dialog_id`).
    pub fn dialog(id: String, members: [String; 2]) -> Conversation {
        Conversation {
            id,
            kind: ConversationKind::Dialog,
            name: None,
            members: Vec::from(members),
            member_count: None,
        }
    }
}

/// Whether `id` names a dialog (else a room or the lobby).
pub fn is_dialog(id: &str) -> bool {
    id.starts_with(DIALOG_PREFIX)
}

/// The id of the dialog between two users, and the two sorted: one id
/// whichever of them opens it.
pub fn dialog_id<'a>(one: &'a str, other: &'a str) -> (String, [&'a str; 2]) {
    let members = if one < other {
        [one, other]
    } else {
        [other, one]
    };
    (
        format!("{DIALOG_PREFIX}{}:{}", members[0], members[1]),
        members,
    )
}
