//! The endpoints, one function each, grouped by what they act on. Each takes
//! typed parameters from `http::request::Params`, calls the engine (`crate::engine`), and shapes
//! the JSON answer; rules about state live in the hub or the cluster, not here.

pub mod conversations;
pub mod health;
pub mod publish;
pub mod session;
