//! The `parlor` binary as a child process, for tests of what an operator
//! sees: flags, environment, the announced address, logs, and shutdown on
//! SIGTERM. Children are killed if a test fails (`kill_on_drop`), and every
//! wait is bounded so a broken build fails fast instead of hanging the
//! suite.

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdout, Command};

/// Longest any one step may take before the test fails. Generous: the
/// machine is shared and a debug binary starts slowly under load.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A `parlor` command with no `PARLOR_*` settings inherited from whoever
/// runs the tests, so only what a test sets applies.
pub fn parlor() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_parlor"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PARLOR_") {
            command.env_remove(name);
        }
    }
    command.env("RUST_LOG", "warn").kill_on_drop(true);
    command
}

/// A running server process.
pub struct Running {
    pub child: Child,
    pub addr: SocketAddr,
    /// Held so the child never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

/// Starts `parlor` with `args` and waits for its `listening on` line.
pub async fn start(command: Command, args: &[&str]) -> Running {
    start_with_stderr(command, args, Stdio::null()).await
}

/// `start`, with the child's stderr (its log) sent to `stderr`.
pub async fn start_with_stderr(mut command: Command, args: &[&str], stderr: Stdio) -> Running {
    let mut child = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("the parlor binary starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
    let mut line = String::new();
    tokio::time::timeout(PATIENCE, stdout.read_line(&mut line))
        .await
        .expect("parlor did not announce its address in time")
        .expect("stdout is readable");
    let addr = line
        .trim_end()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line of stdout: {line:?}"))
        .parse::<SocketAddr>()
        .unwrap_or_else(|error| panic!("no address in {line:?}: {error}"));
    Running {
        child,
        addr,
        _stdout: stdout,
    }
}

/// Runs `parlor` to completion (for flags that exit at once).
pub async fn run_to_exit(mut command: Command, args: &[&str]) -> (ExitStatus, String, String) {
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = tokio::time::timeout(PATIENCE, command.output())
        .await
        .expect("parlor should exit at once")
        .expect("the parlor binary runs");
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// One HTTP/1.1 exchange on its own connection (`Connection: close`):
/// returns the status and the body parsed as JSON.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    form: Option<&str>,
) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).await.expect("connect to parlor");
    let body = form.unwrap_or("");
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    parse(&response)
}

pub fn parse(response: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Joins as `name` and returns the /join answer.
pub async fn join(addr: SocketAddr, name: &str) -> Value {
    let form = format!("name={name}&password=pw-{name}");
    let (status, answer) = tokio::time::timeout(PATIENCE, http(addr, "POST", "/join", Some(&form)))
        .await
        .expect("/join answers");
    assert_eq!(status, 200, "join: {answer}");
    answer
}

pub fn kill_term(child: &Child) {
    let pid = child.id().expect("the child is still running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill(1) runs");
    assert!(status.success(), "kill -TERM {pid} failed");
}

/// SIGTERM, and the exit status must be success.
pub async fn stop_cleanly(server: &mut Running) {
    kill_term(&server.child);
    let status = tokio::time::timeout(PATIENCE, server.child.wait())
        .await
        .expect("parlor exits after SIGTERM")
        .expect("the exit status is readable");
    assert!(status.success(), "exit after SIGTERM: {status}");
}
