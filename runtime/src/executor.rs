//! The `Executor` trait: what every backend (wasm, containers, ...) implements.
//!
//! An executor knows how to check an upload (`check_bundle`), make a function runnable
//! (`prepare`), make an instance of it (`create`, or `create_generic` + `load` for a
//! runtime-level instance), run one call in an instance (`invoke`) and get rid of one
//! (`destroy`). It keeps no pools and decides nothing about warmth: that is the pool's
//! job (`pool.rs`), the same for every backend. Adding a backend is a new module
//! implementing this trait, registered with the [`Invoker`](crate::Invoker).
//!
//! Every operation that can take time gets the call's absolute deadline: one
//! `Instant` covers queueing, creating (a wasm start function, a container's start and
//! agent init) and running.

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::docker::ContainerRuntime;
use crate::egress::AllowList;
use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::policy::Policy;

/// Everything the engine needs to know about one version of a function, resolved
/// once per version by the host (runtime policy and function overrides merged).
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
    /// The preload policy in force: the runtime's, with the function's overrides.
    pub policy: Policy,
    /// The function's configuration and secrets, delivered when an instance is created
    /// or loaded (never to a runtime-level instance before a function claims it).
    /// Never serialized: secrets are in clear here.
    #[serde(skip)]
    pub env: Env,
    /// Where the function may connect; empty (the default): nowhere.
    #[serde(skip)]
    pub allow_outbound: Arc<AllowList>,
}

/// Environment variables of a function, secrets included. Its `Debug` shows names
/// only, so a spec in a log line or a panic message never carries a secret's value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Env(pub Arc<BTreeMap<String, String>>);

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Env {
    /// The variables, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The HTTP side of a call that came in on a route (`/fn/{name}/...` or a route
/// added with `newt route add`); its body is the call's `input`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path the function sees (after the route's prefix), starting with `/`.
    pub path: String,
    /// The query string without `?` (may be empty).
    pub query: String,
    /// Header names (lower case) and values, in order.
    pub headers: Vec<(String, String)>,
}

/// The HTTP answer a function gave (a wasi:http component, or an envelope the host
/// decoded from a function's output); its body is the outcome's `output`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Header names and values, in order.
    pub headers: Vec<(String, String)>,
}

/// One call handed to an instance.
#[derive(Clone, Debug, Default)]
pub struct CallRequest {
    /// The call's id, visible to the guest as `NEWT_CALL_ID`.
    pub call_id: String,
    /// The input bytes (stdin for wasm, the `run` message's input for containers).
    pub input: Bytes,
    /// Set when the call came in over an HTTP route; `input` is then its body.
    pub http: Option<Arc<HttpRequest>>,
}

/// How a call found its instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartKind {
    /// Nothing was ready: the instance was compiled, loaded or created for this call.
    #[default]
    Cold,
    /// A runtime-level instance was taken and the function loaded into it.
    Prewarmed,
    /// A function-level instance, already loaded with this function, was taken.
    Warm,
}

impl StartKind {
    /// Every start kind, coldest first.
    pub const ALL: [StartKind; 3] = [StartKind::Cold, StartKind::Prewarmed, StartKind::Warm];

    /// The lowercase name used in headers, records and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            StartKind::Cold => "cold",
            StartKind::Prewarmed => "prewarmed",
            StartKind::Warm => "warm",
        }
    }

    /// Parses [`StartKind::as_str`]'s names.
    pub fn parse(text: &str) -> Option<StartKind> {
        StartKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

/// How a call ended, from the function's point of view.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CallResult {
    /// The function succeeded; its output is in [`CallOutcome::output`].
    #[default]
    Done,
    /// The function failed (error exit, trap, limit hit); the message says why.
    Failed(String),
    /// The call ran past its deadline (queued, starting or running) and was stopped.
    Timeout(String),
}

impl CallResult {
    /// The failure or timeout message, `None` for success.
    pub fn message(&self) -> Option<&str> {
        match self {
            CallResult::Done => None,
            CallResult::Failed(m) | CallResult::Timeout(m) => Some(m),
        }
    }

    /// The timeout every backend reports when a call's deadline passes, `while` a
    /// phase of it (empty: while the function ran).
    pub fn deadline_passed(phase: &str, timeout: Duration) -> CallResult {
        let ms = timeout.as_millis();
        CallResult::Timeout(if phase.is_empty() {
            format!("the call ran past its deadline of {ms} ms")
        } else {
            format!("the call ran past its deadline of {ms} ms {phase}")
        })
    }
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

/// Everything a finished call produced. An executor's `invoke` fills `result`,
/// `output` and `logs`; the pool adds how the instance was found and the timings.
#[derive(Clone, Debug, Default)]
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
    /// The HTTP answer, when the function gave one (a wasi:http component).
    pub http: Option<HttpResponse>,
}

impl CallOutcome {
    /// An outcome with no output, as an executor reports a failure or timeout.
    pub fn ended(result: CallResult, logs: Bytes) -> CallOutcome {
        CallOutcome {
            result,
            logs,
            ..CallOutcome::default()
        }
    }
}

/// Whether a backend answers, for `GET /healthz`.
#[derive(Clone, Debug, Serialize)]
pub struct BackendHealth {
    /// Whether the backend can run calls now.
    pub reachable: bool,
    /// Where it is (the Docker engine's address; `in-process` for wasm).
    pub address: String,
    /// The backend's version, when reachable.
    pub version: Option<String>,
    /// Why it is not reachable.
    pub error: Option<String>,
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

    /// Checks an upload before anything is stored (the wasm magic, a safe archive
    /// with what the runtime needs), so a deploy that can never run is refused at once.
    async fn check_bundle(&self, runtime: &str, bundle: &Bytes) -> Result<()>;

    /// Whether `prepare` takes long enough (building an image) that a deploy answers
    /// `pending` and prepares in the background. Otherwise it prepares before answering.
    fn prepares_in_background(&self) -> bool {
        false
    }

    /// Whether the function whose bundle is at `bundle` takes an HTTP request as
    /// itself (a wasi:http component) rather than as a JSON envelope on its input.
    fn takes_http(&self, _bundle: &Path) -> bool {
        false
    }

    /// Whether creating an instance of an already-prepared function is as cheap as
    /// taking a warm one, so such a call counts as `warm` (wasm: instantiating a
    /// linked module takes microseconds). A new container is always `cold`.
    fn creating_is_warm(&self) -> bool {
        false
    }

    /// Makes a function runnable from its bundle on disk. May be slow (compiling,
    /// building); done once per version and process.
    async fn prepare(&self, spec: &FunctionSpec, bundle: &Path) -> Result<Self::Prepared>;

    /// Creates an instance of a prepared function, by `deadline` (then
    /// [`Error::Deadline`]).
    async fn create(
        &self,
        spec: &FunctionSpec,
        prepared: &Arc<Self::Prepared>,
        deadline: Instant,
    ) -> Result<Self::Instance>;

    /// Whether `runtime` has generic runtime-level instances that functions can load
    /// themselves into. `false` for wasm, whose runtime level (engine and linker) is
    /// always ready.
    fn has_runtime_instances(&self, _runtime: &str) -> bool {
        false
    }

    /// Creates a generic runtime-level instance of `runtime`, by `deadline`.
    async fn create_generic(&self, runtime: &str, _deadline: Instant) -> Result<Self::Instance> {
        Err(Error::UnknownRuntime(format!(
            "{runtime} (no runtime-level instances)"
        )))
    }

    /// Whether a runtime-level instance can be given this function (the function may
    /// need its own image, or limits a generic instance was not started with).
    fn can_load(&self, _spec: &FunctionSpec, _prepared: &Self::Prepared) -> bool {
        false
    }

    /// Loads a function into a runtime-level instance, by `deadline`; the instance
    /// then belongs to that function.
    async fn load(
        &self,
        spec: &FunctionSpec,
        _prepared: &Arc<Self::Prepared>,
        _instance: &mut Self::Instance,
        _deadline: Instant,
    ) -> Result<()> {
        Err(Error::UnknownRuntime(format!(
            "{} (no runtime-level instances)",
            spec.runtime
        )))
    }

    /// Runs one call in an instance, within the spec's limits and by `deadline`.
    async fn invoke(
        &self,
        spec: &FunctionSpec,
        instance: &mut Self::Instance,
        call: &CallRequest,
        deadline: Instant,
    ) -> Result<CallOutcome>;

    /// Whether an instance may serve another call: `false` after anything that may
    /// have left it in a bad state, and always for single-use instances.
    fn reusable(&self, instance: &Self::Instance) -> bool;

    /// Whether an idle instance can still take a call, asked before one is handed out
    /// and by the pool's maintainer: `false` when what it runs in went away while it
    /// waited (a container whose engine was lost). A cheap check, no I/O.
    fn alive(&self, _instance: &Self::Instance) -> bool {
        true
    }

    /// Gets rid of an instance and everything it holds. A pool calls it in the
    /// background once the call has answered; the instance counts against
    /// `max_instances` until it returns.
    async fn destroy(&self, instance: Self::Instance);

    /// Whether the backend answers.
    async fn health(&self) -> BackendHealth;

    /// What this backend's egress proxies counted (for `/metrics`); `None` when it
    /// has none.
    fn egress_stats(&self) -> Option<Arc<crate::egress::EgressStats>> {
        None
    }

    /// The container runtimes this executor runs (none for wasm).
    fn runtimes(&self) -> Vec<ContainerRuntime> {
        Vec::new()
    }

    /// Whether this executor takes container runtime definitions.
    fn takes_runtimes(&self) -> bool {
        false
    }

    /// Registers (or replaces) a runtime; with `check`, after checking it can run
    /// here (its image is on the engine). Runtimes restored from the store at start
    /// are not checked again: the engine may not be up yet.
    async fn register_runtime(&self, runtime: ContainerRuntime, _check: bool) -> Result<()> {
        Err(Error::InvalidRuntime(format!(
            "{} takes no runtime definitions",
            runtime.name
        )))
    }

    /// Forgets a runtime; `false` if it was not registered.
    fn remove_runtime(&self, _name: &str) -> bool {
        false
    }

    /// The compiled artifacts this backend keeps on disk by bundle digest (wasm's
    /// module cache), for retention; none by default.
    fn cached_artifacts(&self) -> Result<Vec<crate::wasm::CachedArtifact>> {
        Ok(Vec::new())
    }

    /// Removes one compiled artifact by its file name; `false` if there was none.
    fn remove_cached_artifact(&self, _file: &str) -> Result<bool> {
        Ok(false)
    }
}

/// Milliseconds since the Unix epoch (deadlines handed to guests).
pub(crate) fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
