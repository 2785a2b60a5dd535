//! `newt bench`: what it measures and how, apart from the command's flags.
//!
//! - [`stats`]: the pure arithmetic (nearest-rank percentiles, a summary of samples,
//!   newt's ratio to a peer), unit-tested on known inputs.
//! - [`report`]: the report's rows and JSON schema, the "skipped" row for a peer that
//!   is not installed, the figures derived from the rows (newt against its HTTP floor
//!   and `wasmtime serve`), the tables, and the Markdown section for BENCHMARKS.md.
//! - [`fixtures`]: the functions the rows run (the Rust SDK hello on wasm, a Python
//!   echo), the same for newt and its peers, so each row does the same work.
//! - [`density`]: `--density N`: N distinct wasm functions on one server, its memory,
//!   and their first calls after a restart.
//! - [`target`]: the server measured: one given by `--server`, or one started on a
//!   temporary home (`--self-host`).
//! - [`load`]: the closed-loop load generator every HTTP row goes through.
//! - [`newt`]: calls to newt over HTTP per start kind and concurrency.
//! - [`peers`]: the same work done the way a user would without newt: in-process
//!   wasmtime (the floor), `wasmtime run`, `docker run`, `docker exec`.

pub mod chart;
pub mod density;
pub mod fixtures;
pub mod load;
pub mod newt;
pub mod peers;
pub mod report;
pub mod serve;
pub mod stats;
pub mod target;
