//! The `Executor` trait: what every backend (wasm, containers, ...) implements.
//!
//! An executor knows how to make a function runnable (`prepare`), how to make an
//! instance of it (`create`), run one call in an instance (`invoke`) and get rid of
//! one (`destroy`). It keeps no pools and decides nothing about warmth: that is the
//! pool's job (`pool.rs`), the same for every backend. Adding a backend is a new module
//! implementing this trait, registered with the [`Invoker`](crate::Invoker).

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::limits::Limits;

/// Everything the engine needs to know about one version of a function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionSpec {
    /// The function's name (validated by the host).
    pub name: String,
    /// The version number; a new deploy is a new version.
    pub version: i64,
    /// The runtime that runs it (`wasm`, or a container runtime's name).
    pub runtime: String,
    /// sha256 of the bundle in the content store.
    pub digest: String,
    /// Limits for each call.
    pub limits: Limits,
}

/// One call handed to an instance.
#[derive(Clone, Debug)]
pub struct CallRequest {
    /// The call's id, visible to the guest as `NEWT_CALL_ID`.
    pub call_id: String,
    /// The input bytes (stdin for wasm).
    pub input: Bytes,
}

/// How a call found its instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartKind {
    /// Nothing was ready: the instance was compiled, loaded or created for this call.
    Cold,
    /// A runtime-level instance was taken and the function loaded into it.
    Prewarmed,
    /// A function-level instance, already loaded with this function, was taken.
    Warm,
}

impl StartKind {
    /// The lowercase name used in headers, records and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            StartKind::Cold => "cold",
            StartKind::Prewarmed => "prewarmed",
            StartKind::Warm => "warm",
        }
    }
}

/// How a call ended, from the function's point of view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallResult {
    /// The function succeeded; its output is in [`CallOutcome::output`].
    Done,
    /// The function failed (error exit, trap, limit hit); the message says why.
    Failed(String),
    /// The call ran past its deadline and was stopped.
    Timeout(String),
}

/// Where the time of a call went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timings {
    /// Waiting for an instance.
    pub queue: Duration,
    /// Creating or loading the instance (zero for a warm one).
    pub init: Duration,
    /// Running the call.
    pub exec: Duration,
}

/// Everything a finished call produced.
#[derive(Clone, Debug)]
pub struct CallOutcome {
    /// Success, failure or timeout.
    pub result: CallResult,
    /// What the function wrote to stdout (its result).
    pub output: Bytes,
    /// What the function wrote to stderr, up to its log limit.
    pub logs: Bytes,
    /// How the instance was found.
    pub start: StartKind,
    /// Where the time went.
    pub timings: Timings,
}

/// What one `invoke` on an instance produced.
#[derive(Debug)]
pub struct Invocation {
    /// Success, failure or timeout.
    pub result: CallResult,
    /// stdout.
    pub output: Bytes,
    /// stderr, capped.
    pub logs: Bytes,
    /// Whether the instance may serve another call. `false` after any failure that may
    /// have left it in a bad state, and always for single-use instances.
    pub reusable: bool,
}

/// A backend that runs functions.
#[async_trait]
pub trait Executor: Send + Sync + 'static {
    /// A function made runnable: a compiled and linked module, a built image.
    type Prepared: Send + Sync + 'static;
    /// One unit that runs one call at a time.
    type Instance: Send + 'static;

    /// A short name for logs and errors (`wasm`, `docker`).
    fn name(&self) -> &'static str;

    /// Whether this executor runs functions of `runtime`.
    fn can_handle(&self, runtime: &str) -> bool;

    /// Whether creating an instance of an already-prepared function is as cheap as
    /// taking a warm one, so such a call counts as `warm` (wasm: instantiating a
    /// linked module takes microseconds). A new container is always `cold`.
    fn creating_is_warm(&self) -> bool {
        false
    }

    /// Makes a function runnable from its bundle on disk. May be slow (compiling,
    /// building); done once per version and process.
    async fn prepare(&self, spec: &FunctionSpec, bundle: &Path) -> Result<Self::Prepared>;

    /// Takes a generic runtime-level instance, if one is ready, and loads the function
    /// into it (`prewarmed`). `None` when there is none to take (the caller then
    /// creates one); the default for executors without runtime-level instances.
    async fn take_prewarmed(
        &self,
        _spec: &FunctionSpec,
        _prepared: &Arc<Self::Prepared>,
    ) -> Option<Self::Instance> {
        None
    }

    /// Creates an instance of a prepared function.
    async fn create(
        &self,
        spec: &FunctionSpec,
        prepared: &Arc<Self::Prepared>,
    ) -> Result<Self::Instance>;

    /// Runs one call in an instance, within the spec's limits.
    async fn invoke(
        &self,
        spec: &FunctionSpec,
        instance: &mut Self::Instance,
        call: &CallRequest,
    ) -> Result<Invocation>;

    /// Gets rid of an instance and everything it holds.
    async fn destroy(&self, instance: Self::Instance);

    /// Whether `destroy` is quick enough to run before a call answers (wasm: freeing
    /// a slot). When it is not (removing a container), the pool answers first and
    /// destroys in the background, still counting the instance against
    /// `max_instances` until it is gone.
    fn destroying_is_cheap(&self) -> bool {
        false
    }
}

/// Milliseconds since the Unix epoch (deadlines handed to guests).
pub(crate) fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
