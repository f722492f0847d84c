//! parlor: a long-polling Comet chat and notification server.
//!
//! # Layout
//!
//! A request flows one way: HTTP in → typed parameters → endpoint → hub →
//! mailbox → HTTP out.
//!
//! - [`config`]: flags, defaults, and every bound as a named constant.
//! - [`server`]: the accept loop, connection limits (the registry of open
//!   connections, idle ones oldest first, in `server::connections`), header
//!   timeout, graceful shutdown; it starts and stops the background tasks
//!   (below).
//! - [`http`]: the hand-rolled hyper service — routing, request parsing and
//!   body limits (`http::request`), JSON responses and errors
//!   (`http::response`), the browser client's files (`http::static_files`).
//! - [`api`]: one function per endpoint, grouped by family: reads typed
//!   parameters, calls the hub, builds the JSON answer (the /join and /sync
//!   answer in `api::session`).
//! - [`hub`]: the live state and the only code that changes it, sharded by
//!   user so that no lock is shared by every request (`hub::locks`). It
//!   answers with domain values or a `hub::Refusal`, never HTTP. One file
//!   per concept, mapped in its own doc. A /poll reads or parks in
//!   `hub::poll`; the parked poll waits on its client (`hub::clients`) until
//!   woken. A /send is numbered and delivered in `hub::send`; every event
//!   enters mailboxes (`hub::mailbox`) through `hub::delivery`, which submits
//!   each operation's changes to the store under a ticket, commits a /send
//!   on its own request (`Hub::wait_durable`) and makes events visible once
//!   durable. Also the sorted online names (`hub::online`) and presence as
//!   versioned state (`hub::presence`).
//! - [`conversation`]: the lobby, rooms and dialogs as clients see them.
//! - [`event`]: event types, each serialized once (`event::Event::to_bytes`)
//!   for every mailbox, and the poll answer they are spliced into
//!   (`event::write_poll_body`).
//! - [`store`]: what outlives the process — accounts, rooms, history; the
//!   SQLite default commits through `store::sqlite`'s writer (group commit,
//!   run by the waiting request itself where it can).
//! - [`client`]: the kept-alive HTTP/1 client that `parlor-bench` and the
//!   criterion benches speak to a parlor with over loopback.
//! - [`auth`]: tokens and password hashing (a bounded queue for it), and
//!   the join JWTs of an application's backend (`auth::join_token`).
//! - [`limits`]: rate limits per client address, user or client process
//!   (sign-ups, wrong passwords, /status, /send, room creation).
//! - [`metrics`]: Prometheus counters and histograms, cheap on the hot
//!   path; scraped on `--metrics-listen`.
//! - [`access_log`]: one line per request on `parlor::access`, with the
//!   user and client the hub resolved (never a secret).
//! - [`error`]: `ApiError`, the status + code + message of a failed request,
//!   and the one each `hub::Refusal` is answered with.
//!
//! Background work, started with the server and stopped at shutdown:
//!
//! - the inactivity sweeper (`hub::sweeper::run`), which closes client
//!   processes that stopped polling;
//! - the visibility task (`hub::Hub::run_visibility`), which makes events
//!   visible and wakes their readers as the store reports them durable;
//! - the SQLite writer thread (`store::sqlite`), which commits what no
//!   waiting request committed itself;
//! - the SQLite reader threads (`store::sqlite::readers`), which answer
//!   `/history`, password and `client_msg_id` look-ups off the async
//!   workers.

pub mod access_log;
pub mod api;
pub mod auth;
pub mod client;
pub mod cluster;
pub mod config;
pub mod conversation;
pub mod engine;
pub mod error;
pub mod event;
pub mod http;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod server;
pub mod store;

pub use config::Config;
pub use server::Server;

/// Errors that end the server (startup failures). Request failures are
/// `error::ApiError` and never end up here.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
