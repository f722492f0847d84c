//! The `parlor` binary: parse flags, set up logging, open the store, bind,
//! announce the address, serve until Ctrl-C or SIGTERM.

use std::io::{BufWriter, IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use tokio::net::{TcpListener, TcpSocket};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use parlor::config::LogFormat;
use parlor::{Config, Server};

/// jemalloc rather than glibc malloc: a faster request path and less RSS
/// per freshly parked poll; docs/performance.md has the measurements.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once when it starts (the symbol is the
/// `malloc_conf` of its build's `_rjem_` prefix). Without a background
/// thread, jemalloc returns freed pages to the kernel only while the
/// thread that freed them keeps allocating, so the memory of a burst
/// (a join storm, a fan-out's answers) stayed resident long after it was
/// freed. A background thread purges unused dirty pages within about a
/// second (`dirty_decay_ms`), and straight to the kernel (`muzzy_decay_ms:0`:
/// no lazily-freed middle stage, whose pages still count as resident).
/// `_RJEM_MALLOC_CONF=stats_print:true` prints the options in effect at
/// exit; the thread shows as `jemalloc_bg_thd`.
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &[u8; 60] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> ExitCode {
    let mut config = Config::parse();
    let secrets = config
        .read_admin_token_file()
        .and_then(|()| config.read_join_secret_file());
    if let Err(error) = secrets {
        eprintln!("parlor: {error}");
        return ExitCode::FAILURE;
    }
    // Flushes the log's last lines when main returns.
    let _log_flushed_on_drop = init_logging(config.log_format);

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("parlor: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(config))
}

/// Lines waiting for the log's writer thread, at most; a request that logs
/// when they are all waiting waits too (nothing is dropped).
const LOG_QUEUE_LINES: usize = 65_536;

/// Logs to stderr at RUST_LOG's levels (default `info`), from a thread of
/// its own: a request never waits on a slow stderr (a pipe to a busy
/// journal, a disk), and lines that queue up while it writes go out in one
/// `write`. Colour codes only reach a terminal: in a file or a journal they
/// would be noise.
fn init_logging(format: LogFormat) -> WorkerGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, flushed_on_drop) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("parlor-log")
        .finish(BufWriter::with_capacity(64 * 1024, std::io::stderr()));
    parlor::access_log::write_to(format == LogFormat::Json, writer.clone());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().with_ansi(false).init(),
    }
    flushed_on_drop
}

async fn serve(config: Config) -> ExitCode {
    let listen = config.listen;
    let server = match Server::connect(config).await {
        Ok(server) => server,
        Err(error) => {
            eprintln!("parlor: {error}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match bind(listen) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("parlor: cannot listen on {listen}: {error}");
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(address) => {
            // Scripts and tests wait for this exact line to learn the port.
            println!("listening on http://{address}");
            let _ = std::io::stdout().flush();
            tracing::info!(%address, "parlor is serving");
        }
        Err(error) => {
            eprintln!("parlor: cannot read the bound address: {error}");
            return ExitCode::FAILURE;
        }
    }
    match server.run(listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("parlor: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

/// Room in the kernel's queue of connections not yet accepted. After a
/// restart every poller reconnects at once; tokio's default (1024) would
/// drop the excess SYNs, and clients would retry only after 1 s, then 3 s.
/// The kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

fn bind(address: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As std and tokio do: a restarted parlor can bind while connections of
    // the previous one linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}
