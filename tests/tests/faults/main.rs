//! Faults and load: newt's durability and availability promises as repeatable runs.
//!
//! Each module is one scenario of RELIABILITY.md. `cargo test` (and so `make test` and
//! CI) runs the short version of each; `make faults` (`NEWT_FAULTS=full`) runs the full
//! version and prints the figures RELIABILITY.md reports. Every scenario sends traffic
//! to loopback only, is bounded in time and count, and stops by itself. Scenarios run
//! one at a time (see [`support::exclusive`]): some stop the Docker engine or load the
//! whole machine.

mod crash;
mod disk;
mod engine;
mod load;
mod shutdown;
mod slow;
mod support;
