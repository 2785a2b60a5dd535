//! newt's engine: runs function calls in pooled, sandboxed instances.
//!
//! No HTTP and no database here: the host (`newt-host`) owns those and drives this
//! crate through one front door, the [`Invoker`]:
//!
//! ```text
//! Invoker::invoke(&Arc<FunctionSpec>, CallRequest, deadline)
//!   -> the function's pool (one per version; a newer version drains the older)
//!        acquire by the deadline: idle (warm) | runtime-level instance + load
//!        (prewarmed) | create (cold)            -- a Lease guard holds the place
//!   -> Executor::invoke(instance, call, deadline) -> CallOutcome
//! ```
//!
//! - [`Cas`]: bundles stored once by sha256, written atomically.
//! - [`Executor`]: a backend that checks uploads, prepares a function, creates
//!   instances of it (or generic runtime-level ones it can load a function into),
//!   invokes a call in one and destroys it. [`WasmExecutor`] runs WASI preview 1
//!   modules in-process on wasmtime; [`DockerExecutor`] runs container runtimes. They
//!   are peers: the host asks the invoker, never a backend by name.
//! - pools (`pool.rs`): one type for both levels (a function's instances, a runtime's
//!   generic instances), one maintainer (refill `min_warm`, evict after
//!   `keep_alive`), following a [`Policy`]. Every count a call holds is a guard, so a
//!   caller that vanishes at any await gives its place back and its mid-call instance
//!   is destroyed.
//! - One absolute deadline per call covers queueing, starting (a wasm start function,
//!   a container's start and agent init) and running.
//!
//! A function failing is a [`CallOutcome`] with [`CallResult::Failed`] or
//! [`CallResult::Timeout`]; [`Error`] is reserved for what keeps a call from running.

#![warn(missing_docs)]

mod bundle;
mod cas;
mod docker;
mod egress;
mod error;
mod executor;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod invoker;
mod limits;
mod policy;
mod pool;
#[cfg(test)]
mod testing;
mod wasm;

pub use bundle::{
    ArchiveKind, BUNDLE_CONFIG_FILE, BundleConfig, BundleLimits, Unpacked, pack, unpack,
};
pub use cas::{Cas, Digest, StoredBlob};
pub use docker::{
    AheadLimits, AheadStats, BUILD_LOG_TAIL_BYTES, BuildBoard, BuildProgress, ContainerInstance,
    ContainerPrepared, ContainerRuntime, DockerConfig, DockerExecutor, FunctionImage, RunMode,
    RuntimeMount,
};
pub use egress::{AllowList, Denied, EgressProxy, EgressStats};
pub use error::{Error, Result};
pub use executor::{
    BackendHealth, CallOutcome, CallRequest, CallResult, Env, Executor, FunctionSpec, HttpRequest,
    HttpResponse, StartKind, Timings,
};
pub use invoker::{HeldVersion, Invoker};
pub use limits::{Limits, MAX_LOG_BYTES, MAX_MEMORY_MB, MAX_OUTPUT_BYTES, MAX_TIMEOUT_MS};
pub use policy::{Policy, Preload, format_duration, parse_duration};
pub use pool::{PoolStats, RuntimePoolStats};
pub use wasm::{CachedArtifact, WasmConfig, WasmExecutor, WasmInstance, WasmPrepared};
