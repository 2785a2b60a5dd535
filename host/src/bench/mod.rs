//! `newt bench`: what it measures and how, apart from the command's flags.
//!
//! - [`stats`]: the pure arithmetic (nearest-rank percentiles, a summary of samples,
//!   newt's ratio to a peer), unit-tested on known inputs.
//! - [`report`]: the report's rows and JSON schema, the "skipped" row for a peer that
//!   is not installed, and the table for people.
//! - [`fixtures`]: the built-in trivial functions (a WAT echo, a Python echo) that
//!   every backend and every peer runs, so each row does the same work.
//! - [`target`]: the server measured: one given by `--server`, or one started on a
//!   temporary home (`--self-host`).
//! - [`load`]: the closed-loop load generator every HTTP row goes through.
//! - [`newt`]: calls to newt over HTTP per start kind and concurrency.
//! - [`peers`]: the same work done the way a user would without newt: in-process
//!   wasmtime (the floor), `wasmtime run`, `docker run`, `docker exec`.

pub mod chart;
pub mod fixtures;
pub mod load;
pub mod newt;
pub mod peers;
pub mod report;
pub mod serve;
pub mod stats;
pub mod target;
