//! newt's engine: runs function calls in pooled, sandboxed instances.
//!
//! No HTTP and no database here: the host (`newt-host`) owns those and drives this
//! crate through four pieces.
//!
//! - [`Cas`]: bundles stored once by sha256, written atomically.
//! - [`Executor`]: a backend that can prepare a function, create instances of it,
//!   invoke a call in one and destroy it. [`WasmExecutor`] runs WASI preview 1 modules
//!   in-process on wasmtime; containers are a peer behind the same trait.
//! - pools (`pool.rs`): where a call finds its instance, how it started
//!   ([`StartKind`]), and how warm they are kept ([`Policy`]: `none`, `runtime`,
//!   `function`, with `min_warm`, `max_instances`, `keep_alive`).
//! - [`Invoker`]: maps a function to the executor of its runtime and the pool of its
//!   current version; the host calls [`Invoker::invoke`] with a [`FunctionSpec`] and a
//!   [`CallRequest`] and gets a [`CallOutcome`].
//!
//! A function failing is a [`CallOutcome`] with [`CallResult::Failed`] or
//! [`CallResult::Timeout`]; [`Error`] is reserved for what keeps a call from running.

mod bundle;
mod cas;
mod docker;
mod error;
mod executor;
mod invoker;
mod limits;
mod policy;
mod pool;
mod wasm;

pub use bundle::{ArchiveKind, BundleLimits, Unpacked, pack, unpack};
pub use cas::{Cas, Digest};
pub use docker::{
    ContainerInstance, ContainerPrepared, ContainerRuntime, DockerConfig, DockerExecutor, RunMode,
};
pub use error::{Error, Result};
pub use executor::{
    BackendHealth, CallOutcome, CallRequest, CallResult, Executor, FunctionSpec, StartKind, Timings,
};
pub use invoker::Invoker;
pub use limits::{Limits, MAX_LOG_BYTES, MAX_MEMORY_MB, MAX_OUTPUT_BYTES, MAX_TIMEOUT_MS};
pub use policy::{Policy, Preload, format_duration, parse_duration};
pub use pool::{PoolStats, RuntimePoolStats};
pub use wasm::{WasmConfig, WasmExecutor, WasmInstance, WasmPrepared};
