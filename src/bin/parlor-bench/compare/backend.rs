//! The two servers as the comparison speaks to them: parlor's API (users
//! who join with a password, dialogs, the lobby) and Nchan's publisher and
//! long-poll subscriber locations (`contrib/nchan/nginx.conf.in`).
//!
//! Every message's text starts with `<run>.<stream>.<seq>-`, padded to 64
//! bytes, so that a subscriber of either server can tell which message it
//! holds and check that each arrives once and in order.

use std::rc::Rc;

use hyper::header::{
    HeaderMap, HeaderValue, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED,
};
use hyper::StatusCode;
use parlor::client::{Answer, Conn};

use crate::api::{api_error, poll_uri, send_form, DialogAnswer, Joined, PollAnswer};
use crate::Res;

/// Which server the generator drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Parlor,
    Nchan,
}

/// A message the generator sent: its stream and its number in the stream.
pub type Id = (u32, u64);

/// Where one subscriber reads from, and how far it has read.
pub enum Cursor {
    /// A parlor client process: its token and its cursor.
    Parlor { token: Rc<str>, cursor: u64 },
    /// An Nchan long-poll subscription: the channel, and the `Last-Modified`
    /// and `Etag` of the last message read (none before the first).
    Nchan {
        channel: String,
        last_modified: Option<HeaderValue>,
        etag: Option<HeaderValue>,
    },
}

/// Where one publisher sends to.
pub enum Outbox {
    /// A parlor user's `/send` to a conversation.
    Parlor {
        token: Rc<str>,
        conversation: String,
    },
    /// An Nchan channel's publisher location.
    Nchan { channel: String },
}

/// One long poll: waits for the next answer and returns the generator's
/// messages in it (other events are read and skipped).
pub async fn poll(conn: &mut Conn, cursor: &mut Cursor, run: &str) -> Res<Vec<Id>> {
    match cursor {
        Cursor::Parlor { token, cursor } => {
            let answer = conn.get(poll_uri(token, *cursor, None)).await?;
            if answer.status != StatusCode::OK {
                return Err(api_error("/poll", &answer));
            }
            let polled: PollAnswer<'_> = serde_json::from_slice(&answer.body)?;
            *cursor = polled.cursor;
            Ok(polled
                .events
                .iter()
                .filter(|event| event.kind == "message")
                .filter_map(|event| parse_id(event.client_msg_id?, run))
                .collect())
        }
        Cursor::Nchan {
            channel,
            last_modified,
            etag,
        } => {
            let mut headers = HeaderMap::new();
            if let Some(value) = last_modified {
                headers.insert(IF_MODIFIED_SINCE, value.clone());
            }
            if let Some(value) = etag {
                headers.insert(IF_NONE_MATCH, value.clone());
            }
            let (answer, headers) = conn.get_with(format!("/sub?id={channel}"), headers).await?;
            if answer.status != StatusCode::OK {
                return Err(api_error("Nchan /sub", &answer));
            }
            *last_modified = headers.get(LAST_MODIFIED).cloned();
            *etag = headers.get(ETAG).cloned();
            let text = std::str::from_utf8(&answer.body)?;
            Ok(parse_id(text, run).into_iter().collect())
        }
    }
}

/// Sends message `id`; returns once the server accepted it (parlor: once
/// stored).
pub async fn publish(conn: &mut Conn, outbox: &Outbox, run: &str, id: Id) -> Res<()> {
    let (stream, seq) = id;
    let answer = match outbox {
        Outbox::Parlor {
            token,
            conversation,
        } => {
            let form = send_form(token, conversation, run, &stream.to_string(), seq);
            conn.post("/send", form).await?
        }
        Outbox::Nchan { channel } => {
            let mut text = format!("{run}.{stream}.{seq}-");
            while text.len() < 64 {
                text.push('x');
            }
            conn.post(&format!("/pub?id={channel}"), text).await?
        }
    };
    if !answer.status.is_success() {
        return Err(api_error("publish", &answer));
    }
    Ok(())
}

/// The id in a message text or `client_msg_id` of this run.
fn parse_id(text: &str, run: &str) -> Option<Id> {
    let id = text.split('-').next()?;
    let mut parts = id.splitn(3, '.');
    if parts.next()? != run {
        return None;
    }
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// A parlor user the generator joined.
pub struct User {
    pub name: String,
    pub token: Rc<str>,
    pub cursor: u64,
}

pub async fn join(conn: &mut Conn, name: String, password: &str) -> Res<User> {
    let answer = conn
        .post("/join", format!("name={name}&password={password}"))
        .await?;
    if answer.status != StatusCode::OK {
        return Err(api_error(&format!("/join {name}"), &answer));
    }
    let joined: Joined = serde_json::from_slice(&answer.body)?;
    Ok(User {
        name,
        token: joined.token.into(),
        cursor: joined.cursor,
    })
}

/// Reads what waits for `user` (the presence of later joiners) with
/// `timeout=0` polls until nothing is new.
pub async fn catch_up(conn: &mut Conn, user: &mut User) -> Res<()> {
    loop {
        let answer = conn
            .get(poll_uri(&user.token, user.cursor, Some(0)))
            .await?;
        if answer.status != StatusCode::OK {
            return Err(api_error("catch-up /poll", &answer));
        }
        let polled: PollAnswer<'_> = serde_json::from_slice(&answer.body)?;
        if polled.cursor == user.cursor {
            return Ok(());
        }
        user.cursor = polled.cursor;
    }
}

/// Opens the dialog of `from` with `to`; returns its conversation id.
pub async fn dialog(conn: &mut Conn, from: &User, to: &User) -> Res<String> {
    let answer = conn
        .post("/dialog", format!("token={}&with={}", from.token, to.name))
        .await?;
    if answer.status != StatusCode::OK {
        return Err(api_error("/dialog", &answer));
    }
    Ok(serde_json::from_slice::<DialogAnswer>(&answer.body)?
        .conversation
        .id)
}

pub async fn leave(conn: &mut Conn, user: &User) -> Res<()> {
    let answer = conn.post("/leave", format!("token={}", user.token)).await?;
    if answer.status != StatusCode::OK {
        return Err(api_error("/leave", &answer));
    }
    Ok(())
}

/// Subscribers the server holds parked: parlor's `parlor_parked_polls`
/// gauge (on its `--metrics-listen` port), or the `subscribers` line of
/// Nchan's stub status.
pub async fn parked(kind: Kind, conn: &mut Conn) -> Res<usize> {
    let (uri, prefix) = match kind {
        Kind::Parlor => ("/metrics", "parlor_parked_polls "),
        Kind::Nchan => ("/nchan_status", "subscribers: "),
    };
    let answer: Answer = conn.get(uri.to_owned()).await?;
    if answer.status != StatusCode::OK {
        return Err(api_error(uri, &answer));
    }
    let text = std::str::from_utf8(&answer.body)?;
    text.lines()
        .find_map(|line| line.strip_prefix(prefix))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as usize)
        .ok_or_else(|| format!("no {prefix:?} in {uri}").into())
}

#[cfg(test)]
mod tests {
    use super::parse_id;

    #[test]
    fn ids_of_this_run_are_read_and_others_skipped() {
        assert_eq!(parse_id("r1.7.42-xxxx", "r1"), Some((7, 42)));
        assert_eq!(parse_id("r1.7.42", "r1"), Some((7, 42)));
        assert_eq!(parse_id("r2.7.42-xxxx", "r1"), None);
        assert_eq!(parse_id("hello", "r1"), None);
    }
}
