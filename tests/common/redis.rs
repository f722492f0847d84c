//! A real `redis-server` for cluster-mode tests: started on a free port of
//! 127.0.0.1 with its own temporary directory (an append-only file fsynced on
//! every write, no snapshots), killed with SIGKILL when dropped. A test can
//! kill it, restart it on the same directory (Redis reloads its AOF) or
//! restart it empty. Never the Redis that may run on the machine's 6379.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Longest a start or restart may take (an AOF reload included): the box
/// is shared and loaded while the suite runs.
const START_PATIENCE: Duration = Duration::from_secs(20);
/// The port a system Redis listens on; tests never use it.
const SYSTEM_REDIS_PORT: u16 = 6379;

pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    /// Whether the directory is this server's own, removed on drop.
    owns_dir: bool,
    process: Option<Child>,
}

/// The redis-server binary: `PARLOR_REDIS_SERVER`, else `redis-server` on
/// the PATH.
fn binary() -> PathBuf {
    std::env::var_os("PARLOR_REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("redis-server"))
}

fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = listener.local_addr().expect("bound address").port();
        if port != SYSTEM_REDIS_PORT {
            return port;
        }
    }
}

/// A directory of its own per server, even for servers started in the same
/// test process at the same time.
fn fresh_dir() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "parlor-redis-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("redis directory");
    dir
}

impl RedisServer {
    /// Starts a Redis with an empty directory and waits until it answers
    /// PING. Retries on another port if the chosen one was taken meanwhile.
    pub fn start() -> RedisServer {
        RedisServer::start_with_dir(None)
    }

    /// Starts a Redis on `dir`, created if missing and kept on drop: a
    /// later Redis started on it finds what this one wrote (its AOF).
    pub fn start_in(dir: &Path) -> RedisServer {
        std::fs::create_dir_all(dir).expect("redis directory");
        RedisServer::start_with_dir(Some(dir))
    }

    fn start_with_dir(dir: Option<&Path>) -> RedisServer {
        let mut last_failure = String::new();
        for _ in 0..5 {
            let mut server = RedisServer {
                port: free_port(),
                dir: dir.map_or_else(fresh_dir, Path::to_path_buf),
                owns_dir: dir.is_none(),
                process: None,
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(failure) => last_failure = failure,
            }
        }
        panic!("redis-server did not start: {last_failure}");
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills Redis with SIGKILL (no shutdown save: what it fsynced to its
    /// AOF is all that survives) and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Starts Redis again on the same port and directory: it reloads its
    /// AOF. Kills it first if it still runs.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn()
            .unwrap_or_else(|failure| panic!("redis-server did not restart: {failure}"));
    }

    /// Starts Redis again on the same port with nothing in it, as a Redis
    /// that lost its data would come back.
    pub fn restart_empty(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir).expect("redis directory");
        self.restart();
    }

    /// Runs one command given as words (no spaces inside a word) and
    /// returns the raw RESP reply, for a test's own checks.
    pub fn command(&self, words: &[&str]) -> String {
        let mut stream = TcpStream::connect(self.addr()).expect("connect to redis");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let mut request = format!("*{}\r\n", words.len());
        for word in words {
            request.push_str(&format!("${}\r\n{word}\r\n", word.len()));
        }
        stream.write_all(request.as_bytes()).expect("send to redis");
        read_reply(&mut stream).unwrap_or_else(|error| panic!("{words:?}: {error}"))
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = self.dir.join("redis.log");
        let process = Command::new(binary())
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", ""])
            .args(["--appendonly", "yes"])
            .args(["--appendfsync", "always"])
            .args(["--protected-mode", "no"])
            .args(["--daemonize", "no"])
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|error| {
                format!(
                    "cannot run {}: {error} (install redis-server; scripts/test.sh does)",
                    binary().display()
                )
            })?;
        self.process = Some(process);
        let started = Instant::now();
        loop {
            if let Some(Ok(Some(status))) = self.process.as_mut().map(Child::try_wait) {
                self.process = None;
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("redis-server exited with {status}: {log}"));
            }
            if self.answers_ping() {
                return Ok(());
            }
            if started.elapsed() > START_PATIENCE {
                self.kill();
                return Err(format!(
                    "no PONG on port {} within {START_PATIENCE:?}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True once Redis answers PING with PONG (not while it loads its AOF).
    fn answers_ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(self.addr()) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        if stream.write_all(b"PING\r\n").is_err() {
            return false;
        }
        matches!(read_reply(&mut stream), Ok(reply) if reply.starts_with("+PONG"))
    }
}

/// Reads one whole RESP reply (nested arrays included) as text.
fn read_reply(stream: &mut TcpStream) -> Result<String, String> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = reply_end(&buffer, 0) {
            buffer.truncate(end);
            return Ok(String::from_utf8_lossy(&buffer).into_owned());
        }
        let read = stream.read(&mut chunk).map_err(|error| error.to_string())?;
        if read == 0 {
            return Err(format!(
                "connection closed after {:?}",
                String::from_utf8_lossy(&buffer)
            ));
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// Where the RESP value starting at `at` ends, if it is complete.
fn reply_end(buffer: &[u8], at: usize) -> Option<usize> {
    let line_end = at + buffer.get(at..)?.windows(2).position(|w| w == b"\r\n")? + 2;
    let line = std::str::from_utf8(&buffer[at + 1..line_end - 2]).ok()?;
    match buffer[at] {
        b'$' => {
            let length: i64 = line.parse().ok()?;
            if length < 0 {
                return Some(line_end);
            }
            let end = line_end + length as usize + 2;
            (buffer.len() >= end).then_some(end)
        }
        b'*' => {
            let count: i64 = line.parse().ok()?;
            let mut end = line_end;
            for _ in 0..count.max(0) {
                end = reply_end(buffer, end)?;
            }
            Some(end)
        }
        _ => Some(line_end),
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
