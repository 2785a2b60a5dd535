//! The host service: the one owner of deploys, policy changes, deletes, calls and
//! their records. HTTP handlers (and the seed routes, and `newt serve --deploy`) parse
//! a request, call one method here, and turn the answer into a wire type; nothing
//! here knows about HTTP beyond the status-classified [`ApiError`].
//!
//! Who owns what:
//! - [`Registry`] (in memory): each function's newest and serving version with its
//!   resolved `Arc<FunctionSpec>`, and each runtime's policy.
//! - [`Store`](crate::store::Store) (durable): versions, aliases, rollbacks,
//!   runtimes, call records.
//! - [`Invoker`] (the engine): executors, pools and instances. The service never
//!   asks which backend a runtime is; it asks the invoker.

mod calls;
mod deploy;
pub mod gc;
pub mod logs;
mod registry;
pub mod routes;
mod runtimes;
mod versions;

use newt_runtime::{ContainerRuntime, Invoker, Limits};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;

use crate::api::error::ApiError;
use crate::secrets::SecretKeys;
use crate::store::{FunctionVersion, SharedStore, VersionStatus};

pub use calls::Invoked;
pub use deploy::{ConfigChange, DeployRequest, Deployed, FunctionDetail, validate_name};
pub use logs::{CallEvent, CallFeed, LogQuery};
pub use registry::{Entry, Registry, Served, VersionLookup};
pub use versions::{
    RolledBack, Target, VersionsDetail, parse_version, split_target, validate_alias,
};

/// Limits and settings of a running server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Largest bundle accepted by a deploy, in bytes.
    pub max_bundle_bytes: usize,
    /// Largest call input accepted, in bytes.
    pub max_input_bytes: usize,
    /// The admin token: when set, every `/v1` and seed route requires
    /// `Authorization: Bearer <token>` (or an invoke token where that may do).
    pub token: Option<String>,
    /// Invoke-only tokens, `(name, token)`: they may invoke and read their own calls.
    pub invoke_tokens: Vec<(String, String)>,
    /// Async calls running at once; the rest wait, `pending`.
    pub async_concurrency: usize,
    /// Async calls accepted but not finished; beyond this new ones get 429.
    pub max_async_backlog: usize,
    /// Bytes of call payloads (input, and the output and logs each call may return)
    /// in flight at once, host-wide; a call beyond waits for room until its deadline,
    /// then gets 429. Each call reserves its input plus its function's
    /// `max_output_bytes` and `max_log_bytes`.
    pub max_inflight_bytes: usize,
}

impl Default for ServerConfig {
    /// `newt serve`'s defaults, without tokens.
    fn default() -> Self {
        ServerConfig {
            max_bundle_bytes: 64 << 20,
            max_input_bytes: 6 << 20,
            token: None,
            invoke_tokens: Vec::new(),
            async_concurrency: 16,
            max_async_backlog: 10_000,
            max_inflight_bytes: DEFAULT_MAX_INFLIGHT_BYTES,
        }
    }
}

/// Default of [`ServerConfig::max_inflight_bytes`]: 2 GiB, room for ~290 calls at the
/// default limits (6 MiB output, 1 MiB logs) returning everything they may.
pub const DEFAULT_MAX_INFLIGHT_BYTES: usize = 2 << 30;

/// The unit the in-flight budget is counted in (a semaphore counts permits).
const INFLIGHT_UNIT: usize = 4096;

/// What a function version keeps in the store's opaque `config` column.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FunctionConfig {
    /// Per-call limits.
    #[serde(default)]
    pub limits: Limits,
    /// Policy fields this function overrides over its runtime's policy (a JSON
    /// object; empty = the runtime's policy as it is).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub policy: serde_json::Map<String, serde_json::Value>,
    /// Environment variables (plain configuration; secrets are sealed apart, in the
    /// version's `secrets`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env: std::collections::BTreeMap<String, String>,
    /// Where the function may connect (`host:port`, as `AllowList::parse` takes them);
    /// empty: nowhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_outbound: Vec<String>,
}

impl FunctionConfig {
    /// A version's config column, read leniently (defaults for what is missing).
    pub fn of(version: &FunctionVersion) -> FunctionConfig {
        <FunctionConfig as serde::Deserialize>::deserialize(&version.config).unwrap_or_default()
    }
}

/// The name under which the wasm runtime's policy is kept in the runtimes table.
pub const WASM_RUNTIME: &str = "wasm";

/// Results of the service: errors carry their HTTP class.
pub type ServiceResult<T> = Result<T, ApiError>;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Everything the handlers share.
pub struct Service {
    /// Durable state.
    pub store: SharedStore,
    /// The engine.
    pub invoker: Invoker,
    /// What every function and runtime is right now.
    pub registry: Registry,
    /// Counters for `/metrics`.
    pub metrics: crate::metrics::Metrics,
    /// The HTTP routes in force.
    pub routes: routes::RouteTable,
    /// Finished calls, for log followers and the trace exporter.
    pub call_feed: CallFeed,
    /// Retention (`newt gc`, `GET /v1/status`): set once by whoever built the service
    /// on a home directory.
    pub gc: std::sync::OnceLock<Arc<gc::Collector>>,
    /// The container executor's running image builds, for a pending version's
    /// progress: set once by whoever built the service with that executor.
    pub builds: std::sync::OnceLock<newt_runtime::BuildBoard>,
    /// Server settings.
    pub config: ServerConfig,
    /// Serialises deploys, policy changes and deletes, so versions are assigned in
    /// request order.
    deploy_lock: tokio::sync::Mutex<()>,
    async_slots: Arc<Semaphore>,
    async_backlog: Arc<AtomicUsize>,
    /// The host's budget for call payloads in flight, in [`INFLIGHT_UNIT`]s.
    inflight: Arc<Semaphore>,
    /// `true` once the server is shutting down: queued async calls are no longer
    /// started, and builds cut off by the shutdown are not recorded as failed.
    stopping: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("store", &self.store)
            .field("invoker", &self.invoker)
            .finish_non_exhaustive()
    }
}

/// The service as handlers hold it.
pub type SharedService = Arc<Service>;

impl Service {
    /// The service over an opened store and a ready invoker: loads the saved
    /// runtimes (and runtime policies) and functions, then, in the background,
    /// recovers calls and builds a dead process left unfinished.
    pub async fn start(
        store: SharedStore,
        invoker: Invoker,
        config: ServerConfig,
    ) -> anyhow::Result<Arc<Service>> {
        Service::start_with_keys(store, invoker, config, SecretKeys::none()).await
    }

    /// [`Service::start`] with the key that seals and opens functions' secrets.
    pub async fn start_with_keys(
        store: SharedStore,
        invoker: Invoker,
        config: ServerConfig,
        keys: SecretKeys,
    ) -> anyhow::Result<Arc<Service>> {
        let registry = Registry::new(Arc::new(keys));
        // Every runtime has a policy from the start: the built-ins' defaults, replaced
        // below by what was saved.
        registry.set_runtime_policy(WASM_RUNTIME, newt_runtime::Policy::default());
        let python = ContainerRuntime::builtin_python();
        registry.set_runtime_policy(&python.name, python.policy.clone().unwrap_or_default());
        for definition in store.runtimes().await? {
            let name = definition["name"].as_str().unwrap_or_default().to_string();
            let policy = serde_json::from_value(definition["policy"].clone()).ok();
            if name == WASM_RUNTIME || name == python.name {
                // Built-ins keep their definition; only their policy is saved.
                if let Some(policy) = policy {
                    registry.set_runtime_policy(&name, policy);
                }
                continue;
            }
            match serde_json::from_value::<ContainerRuntime>(definition) {
                Ok(runtime) => {
                    registry.set_runtime_policy(&name, runtime.policy.clone().unwrap_or_default());
                    // Checked when it was first registered; the engine may be down now.
                    if let Err(e) = invoker.register_runtime(runtime, false).await {
                        tracing::warn!(runtime = %name, "ignoring a saved runtime: {e}");
                    }
                }
                Err(e) => tracing::warn!("ignoring an unreadable saved runtime: {e}"),
            }
        }
        for (runtime, policy) in registry.runtime_policies() {
            invoker.set_runtime_policy(&runtime, &policy);
        }
        // Each function with all its versions: it serves the newest ready one that
        // no rollback set aside; then its aliases.
        let mut rolled_back: std::collections::HashMap<String, std::collections::BTreeSet<i64>> =
            std::collections::HashMap::new();
        for (function, version) in store.rolled_back().await? {
            rolled_back.entry(function).or_default().insert(version);
        }
        for version in store.current_versions().await? {
            let aside = rolled_back.remove(&version.name).unwrap_or_default();
            registry.load(store.versions(&version.name).await?, aside);
        }
        for alias in store.aliases().await? {
            if !registry.set_alias(alias.clone()) {
                tracing::warn!(function = %alias.function, alias = %alias.alias,
                    "ignoring an alias of a function that does not exist");
            }
        }
        let routes = routes::RouteTable::new(store.routes().await?);
        let service = Arc::new(Service {
            routes,
            store,
            invoker,
            registry,
            metrics: crate::metrics::Metrics::default(),
            call_feed: CallFeed::default(),
            gc: std::sync::OnceLock::new(),
            builds: std::sync::OnceLock::new(),
            async_slots: Arc::new(Semaphore::new(config.async_concurrency.max(1))),
            async_backlog: Arc::new(AtomicUsize::new(0)),
            inflight: Arc::new(Semaphore::new(
                (config.max_inflight_bytes / INFLIGHT_UNIT).clamp(1, Semaphore::MAX_PERMITS),
            )),
            config,
            deploy_lock: tokio::sync::Mutex::new(()),
            stopping: tokio::sync::watch::Sender::new(false),
        });
        service.recover().await?;
        Ok(service)
    }

    /// Room for one call's payloads in the host's budget, waiting until `deadline`.
    /// The permit is held until the call's outcome is recorded.
    pub(crate) async fn reserve_payloads(
        &self,
        spec: &newt_runtime::FunctionSpec,
        input_len: usize,
        deadline: std::time::Instant,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, newt_runtime::Error> {
        let bytes = input_len
            .saturating_add(spec.limits.max_output_bytes as usize)
            .saturating_add(spec.limits.max_log_bytes as usize);
        let total = self.config.max_inflight_bytes / INFLIGHT_UNIT;
        let units = bytes.div_ceil(INFLIGHT_UNIT).clamp(1, total.max(1)) as u32;
        let full = || newt_runtime::Error::AtCapacity {
            function: spec.name.clone(),
            reason: format!(
                "the host's budget of {} MiB for call payloads in flight is taken",
                self.config.max_inflight_bytes >> 20
            ),
        };
        match tokio::time::timeout_at(
            deadline.into(),
            self.inflight.clone().acquire_many_owned(units),
        )
        .await
        {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(full()),
        }
    }

    /// Hands a function's resolved spec to its pool, and starts filling `min_warm`
    /// now when the policy asks for instances ahead of calls.
    fn apply(self: &Arc<Self>, spec: Arc<newt_runtime::FunctionSpec>) {
        let fill =
            spec.policy.min_warm > 0 && spec.policy.preload == newt_runtime::Preload::Function;
        // The registry decided which version serves (newer or, after a rollback,
        // older): the function's pool is that version's from now on.
        self.invoker.serve(&spec);
        if fill {
            let service = self.clone();
            tokio::spawn(async move {
                if let Err(e) = service.invoker.preload(&spec).await {
                    tracing::warn!(function = %spec.name, "could not preload: {e}");
                }
            });
        }
    }

    /// At start: fails the sync calls a dead process left running, runs the accepted
    /// async calls it left unfinished (again, as their next attempt, for those it
    /// left running), fills warm pools and restarts unfinished builds.
    async fn recover(self: &Arc<Self>) -> anyhow::Result<()> {
        let recovery = self.store.recover().await?;
        if recovery.interrupted > 0 {
            tracing::warn!(
                calls = recovery.interrupted,
                "sync calls interrupted by the previous process marked failed"
            );
        }
        if recovery.retried > 0 {
            tracing::warn!(
                calls = recovery.retried,
                "async calls interrupted by the previous process run again"
            );
        }
        if recovery.exhausted > 0 {
            tracing::warn!(
                calls = recovery.exhausted,
                attempts = crate::store::MAX_ASYNC_ATTEMPTS,
                "async calls interrupted on their last attempt marked failed"
            );
        }
        let pending = recovery.pending.len();
        for record in recovery.pending {
            self.resume_async(record);
        }
        if pending > 0 {
            tracing::info!(calls = pending, "resuming accepted async calls");
        }
        for name in self.registry.serving_names() {
            if let Some(spec) = self.registry.serving(&name) {
                self.apply(spec);
            }
        }
        for version in self.registry.list() {
            if version.status == VersionStatus::Pending {
                let service = self.clone();
                tokio::spawn(async move { service.build_version(version).await });
            }
        }
        Ok(())
    }

    /// The first step of a shutdown: async calls waiting for their turn are not
    /// started any more (they stay `pending` in the store and run after the
    /// restart); calls already running go on.
    pub fn begin_shutdown(&self) {
        if !self.stopping.send_replace(true) {
            tracing::info!("shutting down: queued async calls stay pending for the next start");
        }
    }

    /// Whether [`Service::begin_shutdown`] was called.
    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Resolves once no async call is running; meant for after
    /// [`Service::begin_shutdown`], when no new one starts.
    pub async fn async_calls_finished(&self) {
        // Every running async call holds one of the slots: all of them free means
        // none runs.
        let slots = self.config.async_concurrency.clamp(1, u32::MAX as usize) as u32;
        let _all = self.async_slots.acquire_many(slots).await;
    }

    /// The last step of a shutdown, once calls finished or the grace period ended:
    /// writes every queued record and closes the store, then drains every pool. In
    /// that order, so an async call still running stays `running` in the store (its
    /// late outcome, even one caused by its instance being destroyed, is not
    /// recorded) and the next start runs it again as its next attempt.
    pub async fn shut_down(&self) {
        self.begin_shutdown();
        self.store.close().await;
        self.invoker.drain_all().await;
    }
}
