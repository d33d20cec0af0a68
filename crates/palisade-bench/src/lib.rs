//! The Palisade benchmark harness: an MCP Streamable HTTP load generator
//! (`palisade-loadgen`) and a trivial echo upstream (`palisade-echo`).
//! `bench/run` drives both; see `docs/performance.md`.

pub mod client;
pub mod parse;
pub mod report;
