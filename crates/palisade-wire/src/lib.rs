//! JSON-RPC 2.0 framing for MCP, as the gateway sees it.
//!
//! The gateway owns the wire: it decodes only the envelope (`id`, `method`)
//! and keeps `params`, `result` and `error` as raw JSON, so unknown methods and
//! fields pass through untouched. Every decode is bounded by [`Limits`], checked
//! by a single allocation-free pre-scan before `serde_json` sees the bytes.

mod limits;
mod message;
mod unique;
pub mod version;

pub use limits::{LimitError, Limits, prescan};
pub use message::{DecodeError, ErrorObject, Id, Kind, Message, codes, error_response, parse_message};
pub use unique::has_unique_keys;
