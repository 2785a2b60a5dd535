//! End-to-end tests: the real `newt` binary over loopback, the real wasmtime engine
//! and the real SQLite database. One binary, a module per area.

mod api;
mod auth;
mod bench;
mod builds;
mod bundle_config;
mod cancel;
mod cli;
mod components;
mod config;
mod containers;
mod devloop;
mod egress;
mod gc;
mod hardening;
mod hostile;
mod limits;
mod logs;
mod openapi;
mod pools;
mod pools_python;
mod python_starts;
mod restart;
mod routes;
mod seed;
mod support;
mod versions;
