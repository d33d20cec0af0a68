//! The Palisade gateway: Streamable HTTP in front, stdio and HTTP upstreams behind.
//!
//! Request path: hygiene (Origin/Host, overload) → body limits → JSON-RPC decode →
//! authentication (bearer/DPoP token → verified identity) → session (sealed, bound to
//! that identity) → step-up → plan (route, aggregate) → upstream → stream back.
//! Later controls (policy, inspection, audit) plug in between decode and upstream.

// Handlers return `Result<_, Response>`: the error is the HTTP answer itself, on a cold path.
#![allow(clippy::result_large_err)]

pub mod admin;
pub mod admin_api;
pub mod audit;
pub mod auth;
pub mod calls;
pub mod containment;
pub mod controls;
pub mod forward;
pub mod gateway;
pub mod handlers;
pub mod hygiene;
pub mod inspect;
pub mod integrity;
pub mod server;
pub mod session;
pub mod sse;
pub mod stateless;
pub mod stream;
pub mod trace;

pub use gateway::Gateway;
pub use server::{build_router, serve, serve_router};
