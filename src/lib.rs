//! parlor: a long-polling Comet chat and notification server.
//!
//! # Layout
//!
//! A request flows one way: HTTP in → typed parameters → hub → mailbox →
//! HTTP out.
//!
//! - [`config`]: flags, defaults, and every bound as a named constant.
//! - [`server`]: the accept loop, connection limits, header timeout, graceful
//!   shutdown.
//! - [`http`]: the hand-rolled hyper service — routing (`http::handle`),
//!   request parsing and body limits (`http::request`), JSON responses and
//!   errors (`http::response`), the browser client's files
//!   (`http::static_files`).
//! - [`api`]: one function per endpoint, grouped by family.
//! - [`hub`]: the live state and the only code that changes it, sharded
//!   by user so that no lock is shared by every request: users,
//!   client processes (`hub::clients`), per-user mailboxes where polls read
//!   and park (`hub::mailbox`), the sorted online names (`hub::online`),
//!   presence as versioned state (`hub::presence`), and the inactivity
//!   sweeper (`hub::sweeper`).
//! - [`event`]: event types and their serialization, once per event.
//! - [`store`]: what outlives the process — accounts, rooms, history; the
//!   SQLite default commits through `store::sqlite`'s writer (group commit,
//!   run by the waiting request itself where it can).
//! - [`auth`]: tokens and password hashing.
//! - [`error`]: `ApiError`, the status + code + message of a failed request.

pub mod api;
pub mod auth;
pub mod client;
pub mod config;
pub mod error;
pub mod event;
pub mod http;
pub mod hub;
pub mod server;
pub mod store;

pub use config::Config;
pub use server::Server;

/// Errors that end the server (startup failures). Request failures are
/// `error::ApiError` and never end up here.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
