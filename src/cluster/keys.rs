//! Every Redis key and channel parlor's cluster mode uses, in one place,
//! with what each holds and what bounds it. Rust builds keys with the
//! functions below; Lua scripts get the same builders as Lua functions
//! (`lua_prelude`, generated from the same constants), so a key's name is
//! spelled once.
//!
//! All keys start with `parlor:`. The part in `{...}` is a Redis Cluster
//! hash tag: a user's keys share a slot (`{NAME}`), as do a conversation's,
//! so that sharding can come later without renaming keys.
//!
//! | key | type | holds | bound |
//! |-----|------|-------|-------|
//! | `acct:{NAME}` | HASH | `kind` = `password` or `jwt`, `phc` = argon2 PHC string | one per account |
//! | `tok:{SHA256HEX}` | HASH | `user`, `client` (id), `gen` (poll generation), `epoch` (of the mailbox it was opened on), `parked` (generation of the poll whose last read answered `park`, if any) | one per client process; deleted when it closes |
//! | `clients:{NAME}` | HASH | client id → token sha | `MAX_CLIENTS_PER_USER` |
//! | `acks:{NAME}` | HASH | client id → highest cursor acknowledged | as `clients` |
//! | `deadlines` | ZSET | `NAME\0CLIENT` → inactivity deadline (ms, Redis `TIME`) | one per client process |
//! | `clientid`, `msgid` | STRING | counters (`INCR`) of client and message ids | — |
//! | `online` | HASH | NAME → status (`online`, `busy`, `away`) | one per online user |
//! | `pver` | STRING | presence board version counter | — |
//! | `pboard` | HASH | NAME → `VERSION:STATUS` (status may be `offline`) | one per user seen online; offline entries every mailbox has seen are pruned |
//! | `pchanges` | ZSET | NAME → VERSION of the user's newest change | as `pboard` |
//! | `poffline` | ZSET | NAME → VERSION of users whose board entry is `offline` (pruned from the board once every mailbox copied it) | as `pboard` |
//! | `pswept` | STRING | the highest presence version of an offline entry pruned from the board (a node's online list older than that is read anew, not updated) | — |
//! | `mseen` | ZSET | NAME → the presence version NAME's mailbox copied up to (`pseen`), so the sweeper finds the oldest | one per online user |
//! | `mbox:{NAME}` | LIST | events of an online user, JSON with `seq`, oldest first | `MAILBOX_CAPACITY`; deleted when the user goes offline |
//! | `mmeta:{NAME}` | HASH | `start` (seq of the newest dropped event), `head` (newest seq), `pseen` (presence version copied), `lseen` (lobby message id copied), `epoch` | as `mbox` |
//! | `rooms` | SET | room names | `MAX_ROOMS` |
//! | `members:{CONV}` | SET | a room's or dialog's members | room: its members; dialog: 2 |
//! | `udialogs:{NAME}` | SET | the user's dialog ids | one per online user it talks to |
//! | `urooms:{NAME}` | SET | the rooms the user is in | `MAX_ROOMS` |
//! | `hist:{CONV}` | ZSET | message id → message JSON | `HISTORY_PER_CONVERSATION` |
//! | `lobbylog` | ZSET | lobby message id → message event JSON **without** `seq` (`{"type":"message",...}`) | `LOBBY_LOG_CAPACITY` |
//! | `lobbytrim` | STRING | the highest lobby message id dropped from `lobbylog` | — |
//! | `cmid:{NAME}:ID` | STRING | a /send's answer JSON for `client_msg_id` ID | TTL `CLIENT_MSG_ID_TTL_SECS` |
//! | `srate:{NAME}`, `rrate:{NAME}` | STRING | when the user's send / room-creation bucket is full again (µs, Redis `TIME`) | TTL: until then |
//! | `signrate:{ADDR}`, `jwtrate:{ADDR}` | STRING | when the client address's sign-up / bad-join-JWT bucket is full again (µs) | TTL: until then |
//! | `pwrate:{NAME}:ADDR` | STRING | when the wrong-password bucket of (NAME, client address) is full again (µs) | TTL: until then |
//! | `statrate:{SHA256HEX}` | STRING | when the client process's /status bucket is full again (µs) | TTL: until then |
//!
//! Channel `parlor:wake` carries wake-ups (see `wake`): `u NAME` (the
//! user's mailbox changed), `b` (the lobby log changed: every parked poll
//! re-reads), `p` (the presence board changed: every parked poll not in its
//! coalescing window re-reads), `s CLIENT GEN` (client CLIENT's polls older
//! than generation GEN are superseded).
//!
//! The lobby log: every online user is in the lobby, so a lobby message is
//! not appended to thousands of mailboxes. It is added once to `lobbylog`
//! (by `lobby_append` in `scripts/lib.lua`, which trims it, records the
//! highest dropped id in `lobbytrim` and publishes `b`), and each mailbox
//! copies what is newer than its `lseen` at poll time, numbering it then.
//! A mailbox whose `lseen` fell behind `lobbytrim` missed lobby messages:
//! its readers get 410 `cursor_expired`, as for a full mailbox.

/// What every key starts with.
pub const PREFIX: &str = "parlor:";
/// The pub/sub channel of wake-ups.
pub const WAKE_CHANNEL: &str = "parlor:wake";
/// Lobby messages kept in `lobbylog` for mailboxes to copy.
pub const LOBBY_LOG_CAPACITY: usize = 4096;
/// Messages kept per conversation in `hist:{CONV}`.
pub const HISTORY_PER_CONVERSATION: usize = 10_000;
/// How long a /send's answer is kept for a retry with its `client_msg_id`.
pub const CLIENT_MSG_ID_TTL_SECS: u64 = 24 * 60 * 60;

/// The keys that depend on one name, as (Rust function, Lua function,
/// text before the name, text after it). Each becomes `fn name(x) ->
/// String` here and `local function k_name(x)` in Lua.
macro_rules! named_keys {
    ($($rust:ident, $lua:literal, $before:literal, $after:literal;)*) => {
        $(
            #[doc = concat!("`parlor:", $before, "NAME", $after, "`")]
            pub fn $rust(name: &str) -> String {
                format!("{PREFIX}{}{name}{}", $before, $after)
            }
        )*
        /// The Lua builders of the named keys, `k_NAME(x)`.
        const NAMED_LUA: &[(&str, &str, &str)] = &[$(($lua, $before, $after)),*];
    };
}

named_keys! {
    account, "acct", "acct:{", "}";
    token, "tok", "tok:{", "}";
    clients, "clients", "clients:{", "}";
    acks, "acks", "acks:{", "}";
    mailbox, "mbox", "mbox:{", "}";
    mailbox_meta, "mmeta", "mmeta:{", "}";
    members, "members", "members:{", "}";
    user_dialogs, "udialogs", "udialogs:{", "}";
    user_rooms, "urooms", "urooms:{", "}";
    history, "hist", "hist:{", "}";
    send_rate, "srate", "srate:{", "}";
    room_rate, "rrate", "rrate:{", "}";
    signup_rate, "signrate", "signrate:{", "}";
    bad_join_token_rate, "jwtrate", "jwtrate:{", "}";
    status_rate, "statrate", "statrate:{", "}";
}

/// The keys with no name in them, as (Rust constant, Lua variable).
macro_rules! fixed_keys {
    ($($rust:ident, $lua:literal, $suffix:literal;)*) => {
        $(
            #[doc = concat!("`parlor:", $suffix, "`")]
            pub const $rust: &str = concat!("parlor:", $suffix);
        )*
        const FIXED_LUA: &[(&str, &str)] = &[$(($lua, $suffix)),*];
    };
}

fixed_keys! {
    DEADLINES, "K_DEADLINES", "deadlines";
    CLIENT_ID, "K_CLIENTID", "clientid";
    MESSAGE_ID, "K_MSGID", "msgid";
    ONLINE, "K_ONLINE", "online";
    PRESENCE_VERSION, "K_PVER", "pver";
    PRESENCE_BOARD, "K_PBOARD", "pboard";
    PRESENCE_CHANGES, "K_PCHANGES", "pchanges";
    ROOMS, "K_ROOMS", "rooms";
    LOBBY_LOG, "K_LOBBYLOG", "lobbylog";
    LOBBY_TRIMMED, "K_LOBBYTRIM", "lobbytrim";
    MAILBOX_SEEN, "K_MSEEN", "mseen";
    PRESENCE_OFFLINE, "K_POFFLINE", "poffline";
    PRESENCE_SWEPT, "K_PSWEPT", "pswept";
}

/// `parlor:cmid:{NAME}:ID`: the answer of `name`'s /send with
/// `client_msg_id` ID (the id may hold any byte, so it stays outside the
/// hash tag).
pub fn client_msg_id(name: &str, id: &str) -> String {
    format!("{PREFIX}cmid:{{{name}}}:{id}")
}

/// `parlor:pwrate:{NAME}:ADDR`: the wrong-password bucket of `name` tried
/// from client address `addr`.
pub fn password_rate(name: &str, addr: &str) -> String {
    format!("{PREFIX}pwrate:{{{name}}}:{addr}")
}

/// The hex SHA-256 of a client token: what `tok:{...}` and `clients:{...}`
/// hold (Redis never sees a usable token).
pub fn token_sha(token: &str) -> String {
    use std::fmt::Write;
    let hash = crate::auth::TokenHash::of(token);
    hash.as_bytes()
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// The member of `deadlines` for one client process: `NAME\0CLIENT`.
pub fn deadline_member(name: &str, client: u64) -> String {
    format!("{name}\0{client}")
}

/// Lua definitions of every key, prepended to each script: `K_*` variables
/// for the fixed keys, `k_*(name)` functions for the named ones,
/// `k_cmid(name, id)`, and the constants the scripts share.
pub fn lua_prelude() -> String {
    use std::fmt::Write;
    let mut lua = String::with_capacity(2048);
    let quote = |text: &str| format!("{text:?}");
    for (variable, suffix) in FIXED_LUA {
        let key = format!("{PREFIX}{suffix}");
        let _ = writeln!(lua, "local {variable} = {}", quote(&key));
    }
    for (function, before, after) in NAMED_LUA {
        let _ = writeln!(
            lua,
            "local function k_{function}(x) return {} .. x .. {} end",
            quote(&format!("{PREFIX}{before}")),
            quote(after),
        );
    }
    let _ = writeln!(
        lua,
        "local function k_cmid(name, id) return {} .. name .. '}}:' .. id end",
        quote(&format!("{PREFIX}cmid:{{"))
    );
    let _ = writeln!(lua, "local WAKE_CHANNEL = {}", quote(WAKE_CHANNEL));
    let constants = [
        ("MAILBOX_CAPACITY", crate::config::MAILBOX_CAPACITY),
        ("MAILBOX_MAX_BYTES", crate::config::MAILBOX_MAX_BYTES),
        ("MAX_EVENTS_PER_POLL", crate::config::MAX_EVENTS_PER_POLL),
        (
            "PRESENCE_CHANGES_PER_POLL",
            crate::config::PRESENCE_CHANGES_PER_POLL,
        ),
        ("MAX_CLIENTS_PER_USER", crate::config::MAX_CLIENTS_PER_USER),
        ("MAX_ROOMS", crate::config::MAX_ROOMS),
        ("LOBBY_LOG_CAPACITY", LOBBY_LOG_CAPACITY),
        ("HISTORY_PER_CONVERSATION", HISTORY_PER_CONVERSATION),
    ];
    for (name, value) in constants {
        let _ = writeln!(lua, "local {name} = {value}");
    }
    let _ = writeln!(lua, "local CLIENT_MSG_ID_TTL = {CLIENT_MSG_ID_TTL_SECS}");
    lua
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_keys_carry_the_name_as_hash_tag() {
        assert_eq!(mailbox("ann"), "parlor:mbox:{ann}");
        assert_eq!(members("dialog:ann:bob"), "parlor:members:{dialog:ann:bob}");
        assert_eq!(client_msg_id("ann", "x}y"), "parlor:cmid:{ann}:x}y");
        assert_eq!(password_rate("ann", "::1"), "parlor:pwrate:{ann}:::1");
        assert_eq!(LOBBY_LOG, "parlor:lobbylog");
    }

    #[test]
    fn the_lua_prelude_builds_the_same_names() {
        let lua = lua_prelude();
        assert!(lua.contains(r#"local K_LOBBYLOG = "parlor:lobbylog""#));
        assert!(lua.contains(r#"local function k_mbox(x) return "parlor:mbox:{" .. x .. "}" end"#));
        assert!(lua.contains(
            r#"local function k_cmid(name, id) return "parlor:cmid:{" .. name .. '}:' .. id end"#
        ));
    }
}
