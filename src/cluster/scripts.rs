//! The Lua scripts that make every cluster operation atomic, and the one
//! way to run them.
//!
//! Each script is the key prelude (`keys::lua_prelude`), then the shared
//! helpers of `scripts/lib.lua`, then its own body from `scripts/NAME.lua`,
//! built once (`ClusterScript::new`, behind a `LazyLock`). `redis::Script`
//! sends `EVALSHA` and loads the script again after `NOSCRIPT` (a restarted
//! Redis has an empty script cache).
//!
//! A script answers a table: `{'ok', ...}` with its answer, or a refusal
//! `{CODE, ARG...}` (lib.lua's `refuse`), which `run` turns into the
//! `Refusal` single-node answers with. Every Redis error or timeout becomes
//! `Refusal::StoreUnavailable` (HTTP 503 `store_unavailable`).

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{FromRedisValue, ToRedisArgs, Value};

use super::keys;
use crate::hub::{HubResult, Refusal};

/// The longest any Redis round trip may take before the request answers
/// 503: above the connection's own response timeout, so that a command
/// waiting for a reconnect is bounded too.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(3);

/// The helpers every script starts with.
const LIB: &str = include_str!("scripts/lib.lua");

/// One script: its name (for logs) and the loaded `redis::Script`.
pub struct ClusterScript {
    name: &'static str,
    script: redis::Script,
}

impl ClusterScript {
    /// The script made of the prelude, lib.lua and `body`.
    pub fn new(name: &'static str, body: &str) -> ClusterScript {
        let source = format!("{}{LIB}\n-- {name}\n{body}", keys::lua_prelude());
        ClusterScript {
            name,
            script: redis::Script::new(&source),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// Declares a script from `src/cluster/scripts/FILE.lua` (usable in any
/// module of `cluster`: `script!(SEND, "send");`).
macro_rules! script {
    ($static:ident, $file:literal) => {
        pub(crate) static $static: std::sync::LazyLock<$crate::cluster::scripts::ClusterScript> =
            std::sync::LazyLock::new(|| {
                $crate::cluster::scripts::ClusterScript::new(
                    $file,
                    include_str!(concat!(
                        env!("CARGO_MANIFEST_DIR"),
                        "/src/cluster/scripts/",
                        $file,
                        ".lua"
                    )),
                )
            });
    };
}

script!(PING_SCRIPT, "ping");

/// A script's arguments (`ARGV`), each as Redis would send it.
#[derive(Default)]
pub struct Args(Vec<Vec<u8>>);

impl Args {
    pub fn new() -> Args {
        Args::default()
    }

    /// Adds one argument (a string, number or bytes).
    pub fn arg(mut self, value: impl ToRedisArgs) -> Args {
        self.0.extend(value.to_redis_args());
        self
    }
}

/// Runs `script` with `keys` (`KEYS`) and `args` (`ARGV`): its answer after
/// the `'ok'`, a refusal it answered, or `StoreUnavailable` for any Redis
/// error or after `COMMAND_DEADLINE`.
pub async fn run(
    connection: &ConnectionManager,
    script: &ClusterScript,
    keys: &[&str],
    args: Args,
) -> HubResult<Vec<Value>> {
    run_once(connection, script, keys, &args, false).await
}

/// `run` for a script that may run twice (running it again after it
/// applied changes nothing a client sees): when the connection turns out
/// to have dropped (Redis restarted since the last command), it runs once
/// more on the connection the manager makes again, so the first request
/// after Redis comes back does not answer 503.
pub async fn run_repeatable(
    connection: &ConnectionManager,
    script: &ClusterScript,
    keys: &[&str],
    args: Args,
) -> HubResult<Vec<Value>> {
    run_once(connection, script, keys, &args, true).await
}

async fn run_once(
    connection: &ConnectionManager,
    script: &ClusterScript,
    keys: &[&str],
    args: &Args,
    repeatable: bool,
) -> HubResult<Vec<Value>> {
    let mut invocation = script.script.prepare_invoke();
    for key in keys {
        invocation.key(*key);
    }
    for arg in &args.0 {
        invocation.arg(arg.as_slice());
    }
    let started = tokio::time::Instant::now();
    let mut retried = !repeatable;
    let value = loop {
        let mut connection = connection.clone();
        let left = COMMAND_DEADLINE.saturating_sub(started.elapsed());
        let answer =
            tokio::time::timeout(left, invocation.invoke_async::<Value>(&mut connection)).await;
        match answer {
            Ok(Ok(value)) => break value,
            Ok(Err(error)) if !retried && error.is_connection_dropped() => {
                tracing::info!(script = script.name, %error, "redis connection dropped; running again");
                retried = true;
            }
            Ok(Err(error)) => {
                tracing::warn!(script = script.name, %error, "redis script failed");
                return Err(Refusal::StoreUnavailable);
            }
            Err(_) => {
                tracing::warn!(script = script.name, "redis script timed out");
                return Err(Refusal::StoreUnavailable);
            }
        }
    };
    answer_of(script.name, value)
}

/// One answer of script `name` (a table: `'ok'` then the answer, or a
/// refusal): the answer after the `'ok'`, or the refusal.
pub fn answer_of(name: &str, value: Value) -> HubResult<Vec<Value>> {
    let Value::Array(mut items) = value else {
        tracing::error!(script = name, ?value, "script answered no table");
        return Err(Refusal::StoreUnavailable);
    };
    let tag = items.first().map(text).unwrap_or_default();
    if tag == "ok" {
        items.remove(0);
        return Ok(items);
    }
    Err(refusal(name, &tag, &items[1..]))
}

/// Runs one plain command with the same deadline and error mapping as
/// `run` (for reads that need no script: run again once on a dropped
/// connection, as `run_repeatable`).
pub async fn command<T: FromRedisValue>(
    connection: &ConnectionManager,
    command: &redis::Cmd,
) -> HubResult<T> {
    let started = tokio::time::Instant::now();
    let mut retried = false;
    loop {
        let mut connection = connection.clone();
        let left = COMMAND_DEADLINE.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, command.query_async(&mut connection)).await {
            Ok(Err(error)) if !retried && error.is_connection_dropped() => retried = true,
            answer => return settle(answer, "redis command"),
        }
    }
}

/// A read's outcome, with `run`'s error mapping.
fn settle<T>(
    answer: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    what: &str,
) -> HubResult<T> {
    match answer {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => {
            tracing::warn!(%error, "{what} failed");
            Err(Refusal::StoreUnavailable)
        }
        Err(_) => {
            tracing::warn!("{what} timed out");
            Err(Refusal::StoreUnavailable)
        }
    }
}

/// Runs a pipeline with the same deadline and error mapping as `run`
/// (read-only pipelines: run again once on a dropped connection).
pub async fn pipeline<T: FromRedisValue>(
    connection: &ConnectionManager,
    pipeline: &redis::Pipeline,
) -> HubResult<T> {
    let started = tokio::time::Instant::now();
    let mut retried = false;
    loop {
        let mut connection = connection.clone();
        let left = COMMAND_DEADLINE.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, pipeline.query_async(&mut connection)).await {
            Ok(Err(error)) if !retried && error.is_connection_dropped() => retried = true,
            answer => return settle(answer, "redis pipeline"),
        }
    }
}

/// The `Refusal` a script's refusal code stands for. `args` are what the
/// script gave after the code.
fn refusal(script: &str, code: &str, args: &[Value]) -> Refusal {
    let arg = |index: usize| args.get(index).map(text).unwrap_or_default();
    let number = |index: usize| args.get(index).and_then(integer).unwrap_or(0);
    match code {
        "unknown_client" => Refusal::UnknownClient,
        "too_many_clients" => Refusal::TooManyClients { name: arg(0) },
        "bad_credentials" => Refusal::BadCredentials { name: arg(0) },
        "cursor_expired" => Refusal::CursorExpired {
            cursor: number(0),
            oldest_cursor: number(1),
        },
        "cursor_ahead" => Refusal::CursorAhead {
            cursor: number(0),
            head: number(1),
        },
        "unknown_conversation" => Refusal::UnknownConversation {
            conversation: arg(0),
        },
        "not_member" => Refusal::NotMember {
            conversation: arg(0),
        },
        "dialog_with_self" => Refusal::DialogWithSelf,
        "user_offline" => Refusal::UserOffline { user: arg(0) },
        "too_many_rooms" => Refusal::TooManyRooms,
        "cannot_leave_lobby" => Refusal::CannotLeaveLobby,
        "not_a_room" => Refusal::NotARoom,
        "invalid_room_name" => Refusal::InvalidRoomName,
        "signup_closed" => Refusal::SignupClosed { name: arg(0) },
        _ => {
            tracing::error!(script, code, "script answered an unknown refusal");
            Refusal::StoreUnavailable
        }
    }
}

/// A reply element as text (bulk or simple strings; numbers in decimal).
pub fn text(value: &Value) -> String {
    match value {
        Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Value::SimpleString(text) => text.clone(),
        Value::VerbatimString { text, .. } => text.clone(),
        Value::Int(number) => number.to_string(),
        _ => String::new(),
    }
}

/// A reply element as bytes (a bulk string), for JSON spliced as is.
pub fn bytes(value: &Value) -> &[u8] {
    match value {
        Value::BulkString(bytes) => bytes,
        Value::SimpleString(text) => text.as_bytes(),
        _ => b"",
    }
}

/// A reply element as a non-negative integer (an integer reply, or digits).
pub fn integer(value: &Value) -> Option<u64> {
    match value {
        Value::Int(number) => u64::try_from(*number).ok(),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::SimpleString(text) => text.parse().ok(),
        _ => None,
    }
}

/// A reply element that is a table, as its elements (empty otherwise).
pub fn array(value: &Value) -> &[Value] {
    match value {
        Value::Array(items) => items,
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_codes_carry_their_data() {
        let args = [Value::Int(3), Value::BulkString(b"9".to_vec())];
        assert_eq!(
            refusal("t", "cursor_expired", &args),
            Refusal::CursorExpired {
                cursor: 3,
                oldest_cursor: 9
            }
        );
        let room = [Value::BulkString(b"tea".to_vec())];
        assert_eq!(
            refusal("t", "not_member", &room),
            Refusal::NotMember {
                conversation: "tea".into()
            }
        );
        assert_eq!(refusal("t", "nonsense", &[]), Refusal::StoreUnavailable);
    }

    #[test]
    fn scripts_are_prelude_lib_and_body() {
        let script = ClusterScript::new("x", "return {'ok'}");
        assert_eq!(script.name(), "x");
        assert!(LIB.contains("local function append_event(user, body)"));
    }
}
