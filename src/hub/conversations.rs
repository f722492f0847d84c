//! Conversations other than by message: opening dialogs, joining and
//! leaving rooms, and notifications published to users by another backend
//! (/dialog, /rooms/join, /rooms/leave, /api/publish).

use serde::Serialize;

use super::delivery::Committer;
use super::locks::Exclusive;
use super::membership::valid_name;
use super::{Hub, HubResult, Refusal};
use crate::auth::TokenHash;
use crate::config::MAX_ROOMS;
use crate::conversation::{dialog_id, is_dialog, Conversation, LOBBY};
use crate::event::{Event, RemovalReason};
use crate::store::{Change, StoredRoom};

/// Who got a published notification.
#[derive(Debug, Serialize)]
pub struct PublishReport {
    pub delivered: Vec<String>,
    pub offline: Vec<String>,
}

impl Hub {
    /// POST /dialog: the dialog with `with`, created if there is none.
    pub fn dialog(&self, token: &str, with: &str) -> HubResult<Conversation> {
        let token = &TokenHash::of(token);
        let mut locked = self.lock_all();
        let client = locked.client_of(token)?;
        let user = locked.user_of(client, token)?;
        if with == user {
            return Err(Refusal::DialogWithSelf);
        }
        if !locked.is_online(with) {
            return Err(Refusal::UserOffline {
                user: with.to_owned(),
            });
        }
        let (id, [first, second]) = dialog_id(&user, with);
        if let Some(existing) = locked.dir.dialogs.get(&id) {
            return Ok(existing.clone());
        }
        let conversation = Conversation::dialog(id.clone(), [first.to_owned(), second.to_owned()]);
        let event = Event::ConversationAdded {
            conversation: &conversation,
        }
        .to_bytes();
        for member in [first, second] {
            if let Some(online) = locked.online_user(member) {
                online.dialogs.insert(id.clone());
            }
            locked.deliver_to_user(member, &event);
        }
        locked.record_live(|| Change::DialogOpened {
            id: id.clone(),
            members: [first.to_owned(), second.to_owned()],
        });
        locked.dir.dialogs.insert(id, conversation.clone());
        locked.flush(Committer::Store);
        Ok(conversation)
    }

    /// POST /rooms/join: joins (creating if needed, a few an hour per
    /// user) the room `name`.
    pub fn join_room(&self, token: &str, name: &str) -> HubResult<Conversation> {
        let token = &TokenHash::of(token);
        if !valid_name(name) {
            return Err(Refusal::InvalidRoomName);
        }
        let mut locked = self.lock_all();
        let client = locked.client_of(token)?;
        let user = locked.user_of(client, token)?;
        if name == LOBBY {
            return Ok(locked.dir.lobby());
        }
        match locked.dir.rooms.get(name) {
            Some(room) if room.members.contains(&user) => return Ok(room.clone()),
            Some(_) => {}
            None if locked.dir.rooms.len() >= MAX_ROOMS => return Err(Refusal::TooManyRooms),
            None => self.shared.rates.room_creation(&user)?,
        }
        let room = locked.enter_room(&user, name);
        locked.flush(Committer::Store);
        Ok(room)
    }

    /// POST /rooms/leave. The last member to leave deletes the room, with
    /// its history. (Members stay members while offline, so /leave and
    /// the sweeper never empty a room.)
    pub fn leave_room(&self, token: &str, conversation: &str) -> HubResult<()> {
        let token = &TokenHash::of(token);
        let mut locked = self.lock_all();
        let client = locked.client_of(token)?;
        let user = locked.user_of(client, token)?;
        if conversation == LOBBY {
            return Err(Refusal::CannotLeaveLobby);
        }
        if is_dialog(conversation) {
            return Err(Refusal::NotARoom);
        }
        locked.dir.require_member(conversation, &user)?;
        let mut members = locked.dir.rooms[conversation].members.clone();
        members.retain(|member| *member != user);
        if members.is_empty() {
            // Nobody is left to read it: the room and its history go, so
            // that empty rooms do not pile up against `MAX_ROOMS`.
            locked.dir.rooms.remove(conversation);
            locked.record(Change::RoomDeleted {
                name: conversation.to_owned(),
            });
        } else {
            locked.record(Change::Room(StoredRoom {
                name: conversation.to_owned(),
                members: members.clone(),
            }));
            if let Some(room) = locked.dir.rooms.get_mut(conversation) {
                room.members = members.clone();
            }
        }
        if let Some(rooms) = locked.dir.rooms_of.get_mut(&user) {
            rooms.remove(conversation);
            if rooms.is_empty() {
                locked.dir.rooms_of.remove(&user);
            }
        }
        let left = Event::MemberLeft {
            conversation,
            user: &user,
        }
        .to_bytes();
        for member in &members {
            locked.deliver_to_user(member, &left);
        }
        let removed = Event::ConversationRemoved {
            conversation,
            reason: RemovalReason::Left,
        }
        .to_bytes();
        locked.deliver_to_user(&user, &removed);
        locked.flush(Committer::Store);
        Ok(())
    }

    /// POST /api/publish: a notification to each listed user's clients.
    /// Takes the directory shared and the listed users' shards.
    pub fn publish(&self, users: &[String], data: &serde_json::Value) -> PublishReport {
        let event = Event::Notification { data }.to_bytes();
        let set = users
            .iter()
            .fold(0, |set, user| set | 1 << self.shared.shard_of_user(user));
        let mut locked = self.lock(self.directory(), set);
        let mut report = PublishReport {
            delivered: Vec::new(),
            offline: Vec::new(),
        };
        for user in users {
            if locked.deliver_to_user(user, &event) {
                report.delivered.push(user.clone());
            } else {
                report.offline.push(user.clone());
            }
        }
        locked.flush(Committer::Store);
        report
    }
}

impl Exclusive<'_> {
    /// Makes `user` a member of each of `rooms` (a JWT join's), creating
    /// those that do not exist: all or none. Like /rooms/join, creating
    /// counts against the user's room-creation rate and `MAX_ROOMS`; the
    /// lobby needs no joining.
    pub(super) fn join_rooms(&mut self, user: &str, rooms: &[String]) -> HubResult<()> {
        let mut created: Vec<&str> = Vec::new();
        for name in rooms {
            if name != LOBBY && !self.dir.rooms.contains_key(name) && !created.contains(&&**name) {
                created.push(name);
            }
        }
        if self.dir.rooms.len() + created.len() > MAX_ROOMS {
            return Err(Refusal::TooManyRooms);
        }
        for _ in &created {
            self.hub.rates.room_creation(user)?;
        }
        for name in rooms {
            if name != LOBBY {
                self.enter_room(user, name);
            }
        }
        Ok(())
    }

    /// Makes `user` a member of the room `name` (a valid name, not the
    /// lobby), creating it if there is none, and tells its members.
    fn enter_room(&mut self, user: &str, name: &str) -> Conversation {
        let mut members = match self.dir.rooms.get(name) {
            Some(room) if room.members.iter().any(|member| member == user) => return room.clone(),
            Some(room) => room.members.clone(),
            None => Vec::new(),
        };
        members.push(user.to_owned());
        self.record(Change::Room(StoredRoom {
            name: name.to_owned(),
            members: members.clone(),
        }));
        let room = Conversation::room(name, members);
        self.dir.rooms.insert(name.to_owned(), room.clone());
        self.dir
            .rooms_of
            .entry(user.to_owned())
            .or_default()
            .insert(name.to_owned());
        let joined = Event::MemberJoined {
            conversation: name,
            user,
        }
        .to_bytes();
        for member in &room.members {
            if member != user {
                self.deliver_to_user(member, &joined);
            }
        }
        let added = Event::ConversationAdded {
            conversation: &room,
        }
        .to_bytes();
        self.deliver_to_user(user, &added);
        room
    }
}
